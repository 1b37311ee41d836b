"""``correspond doctor`` and ``correspond info``: the store's health and whereabouts."""

from __future__ import annotations

import dataclasses
import sys

import click

from correspond import __version__
from correspond.cli.base import (
    CliContext,
    _Command,
    _print_json,
    _size,
    _status,
    pass_cli,
)
from correspond.cli.output import safe
from correspond.settings import key_file_path
from correspond.store.blob_gc import check_blobs
from correspond.store.blobs import BlobStore
from correspond.store.location import store_location
from correspond.store.purge import PurgeReport, purge_all, purgeable


@click.command("doctor", cls=_Command)
@click.option("--fix", is_flag=True, help="Remove what is found (orphans, stale temp files).")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def doctor(cli: CliContext, fix: bool, as_json_output: bool) -> None:
    """Check the blob store against the database: orphaned blobs (raw messages and attachments
    no message references, e.g. left by a crash during `account remove`), temporary files
    left by a killed sync, files others can read, referenced blobs that are missing, and
    deleted messages past their retention (`deleted_retention_days`). Reports counts and
    bytes; --fix removes and repairs (and purges those messages with the blobs only they
    used). Exits 1 when something needs fixing (without --fix) or a referenced blob is
    missing."""
    settings = cli.settings
    blobs = BlobStore.from_settings(settings)
    retention = settings.deleted_retention_days
    due = purgeable(cli.store.engine, retention_days=retention)
    purged = PurgeReport()
    if fix and due:
        with _status("Purging deleted messages...", not as_json_output):
            purged = purge_all(
                cli.store.engine,
                blobs,
                retention_days=retention,
                batch=settings.purge_batch_size,
                max_batches=1_000_000,
            )
    with _status("Checking the blob store...", not as_json_output):
        check = check_blobs(
            cli.store.engine,
            blobs,
            fix=fix,
            orphan_grace_seconds=settings.blob_orphan_grace_seconds,
            temp_stale_seconds=settings.blob_temp_stale_seconds,
        )
    needs_fix = bool(
        check.orphaned or check.temp_files or check.set_aside or check.not_private or due
    )
    if as_json_output:
        data = dataclasses.asdict(check)
        data["blob_dir"] = str(settings.blob_dir)
        data["deleted_past_retention"] = due
        data["purged"] = dataclasses.asdict(purged)
        _print_json(data)
    else:
        grace = f"{settings.blob_orphan_grace_seconds:g} s"
        lines = [
            f"Blob store {settings.blob_dir}: {check.blobs} blobs, {_size(check.blob_bytes)}.",
            f"Orphaned blobs (no message uses them): {check.orphaned}, "
            f"{_size(check.orphaned_bytes)}.",
            f"Temporary files left by crashes: {check.temp_files}, {_size(check.temp_bytes)}.",
        ]
        if check.recent_unreferenced or check.recent_temp_files:
            lines.append(
                f"Left alone as possibly in use by a running sync: {check.recent_unreferenced} "
                f"unreferenced blobs younger than {grace}, {check.recent_temp_files} recent "
                "temporary files."
            )
        if check.set_aside:
            lines.append(f"Blobs set aside by an interrupted deletion: {check.set_aside}.")
        if check.not_private:
            lines.append(f"Files or directories others could read: {check.not_private}.")
        if check.missing:
            lines.append(
                f"Referenced blobs missing from disk: {check.missing} (e.g. "
                f"{', '.join(check.missing_keys[:3])}); those messages' raw source is lost."
            )
        if due:
            lines.append(
                f"Deleted messages past their {retention}-day retention: {due}."
                + (
                    f" Purged {purged.messages}, with {purged.blobs_deleted} blobs "
                    f"({_size(purged.bytes_freed)}) only they used."
                    if fix
                    else ""
                )
            )
        if fix:
            lines.append(f"Fixed: removed {check.removed} files, {_size(check.removed_bytes)}.")
        elif needs_fix:
            lines.append("Run `correspond doctor --fix` to remove them.")
        else:
            lines.append("Nothing to fix.")
        for line in lines:
            click.echo(line)
    if check.missing or (needs_fix and not fix):
        sys.exit(1)


@click.command("info", cls=_Command)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def info(cli: CliContext, as_json_output: bool) -> None:
    """Show the version, the data directory, the database (without its password), the blob
    folder, the secret key's file and the number of accounts. An SQLite store that does not
    exist yet is not created."""
    settings = cli.settings
    where = store_location(settings)
    exists = where.exists()
    accounts = len(cli.store.list_accounts()) if exists is not False else 0
    key_file = key_file_path(settings)
    data = {
        "version": __version__,
        "data_dir": str(settings.data_dir),
        "database": {"backend": where.backend, "url": where.url},
        "store_exists": exists is not False,
        "blob_dir": str(settings.blob_dir),
        "key_file": None if key_file is None else str(key_file),
        "key_source": "file" if key_file is not None else "CORRESPOND_SECRET_KEY",
        "accounts": accounts,
    }
    if as_json_output:
        _print_json(data)
        return
    key = f"{key_file}" if key_file is not None else "from CORRESPOND_SECRET_KEY"
    if key_file is not None and not key_file.exists():
        key += " (made on first use)"
    count = str(accounts) if exists is not False else "0 (no store yet: made on first use)"
    rows = [
        ("version", __version__),
        ("data directory", str(settings.data_dir)),
        ("database", where.url),
        ("blobs", str(settings.blob_dir)),
        ("secret key", key),
        ("accounts", count),
    ]
    for label, value in rows:
        click.echo(f"{label + ':':<16}{safe(value)}")
