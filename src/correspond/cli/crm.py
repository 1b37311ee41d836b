"""``correspond import`` and ``correspond relink``: CRM records and their links to mail."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from correspond.cli.base import (
    CliContext,
    CliError,
    _Command,
    _print_json,
    pass_cli,
)
from correspond.cli.output import safe
from correspond.rules.crm_import import IMPORT_KINDS, parse_rows
from correspond.store.crm import CrmStore
from correspond.store.linker import LinkerStore
from correspond.sync.linker import link_policy

# -- CRM records -------------------------------------------------------------------------------


@click.command("import", cls=_Command)
@click.argument("kind", type=click.Choice(IMPORT_KINDS))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json"]),
    help="The file's format (default: from its extension).",
)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def import_records(
    cli: CliContext, kind: str, file: Path, fmt: str | None, as_json_output: bool
) -> None:
    """Create or update contacts, companies or deals from a CSV or JSON FILE, idempotently:
    a row is matched by external_id, else by address (contacts) or domain (companies). A bad
    row is reported by number and the others go in (exit status 1 when a row failed)."""
    fmt = fmt or ("json" if file.suffix.lower() == ".json" else "csv")
    try:
        rows = parse_rows(kind, file.read_bytes(), fmt)
    except ValueError as exc:
        raise CliError(f"{file}: {exc}", 2) from exc
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}", 2) from exc
    singular = {"contacts": "contact", "companies": "company", "deals": "deal"}[kind]
    report = CrmStore(cli.store.engine).import_records(singular, rows)
    if as_json_output:
        _print_json(
            {
                "created": report.created,
                "updated": report.updated,
                "errors": [{"row": e.row, "error": e.error} for e in report.errors],
            }
        )
    else:
        click.echo(f"{kind}: {report.created} created, {report.updated} updated")
        for error in report.errors:
            click.echo(f"row {error.row}: {safe(error.error)}", err=True)
    if report.errors:
        sys.exit(1)


@click.command("relink", cls=_Command)
@pass_cli
def relink(cli: CliContext) -> None:
    """Index and link every message to the CRM timelines again, now (manual links stay).
    Run it after changing organisation_domains, link_blocklist or link_internal_mail: the
    linker applies them to new mail only."""
    links = LinkerStore(
        cli.store.engine, link_policy(cli.settings), batch=cli.settings.linker_batch_size
    )
    links.reset()
    indexed, relinked = links.run_until_idle()
    click.echo(f"Linked {indexed} messages ({relinked} more from record changes).")
