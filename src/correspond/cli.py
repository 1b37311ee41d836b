"""The ``correspond`` command line.

Settings are built once, from ``--data-dir`` / the environment, and passed to every command.
Every command that shows data takes ``--json``. Secrets are read from a hidden prompt or from
standard input (``--password-stdin``), never from argv, and never printed.

Exit codes: 0 success, 1 a failed connection test or unexpected error, 2 bad input (ConfigError
or usage), 3 not found, 4 the mail server failed or refused, 5 the database failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import EllipsisType
from typing import Any, NoReturn

import click
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from correspond import __version__
from correspond.accounts import STATE_MESSAGES, AccountService, report_to_dict
from correspond.api.message_schemas import (
    folder_with_counts_public,
    message_page_public,
    message_public,
    thread_public,
)
from correspond.api.progress_schemas import ProgressPublic, progress_public
from correspond.api.schemas import account_public, as_json, folder_public
from correspond.errors import (
    ConfigError,
    CorrespondError,
    ImapError,
    NotFound,
    StoreError,
)
from correspond.mailbox import FolderWithCounts, MailboxReader
from correspond.rules.presets import (
    PRESETS,
    SECURITIES,
    AccountChanges,
    AccountDraft,
    Side,
    check_account_name,
    check_certificate_pem,
    check_email,
    check_host,
    check_username,
    draft_from_preset,
    get_preset,
    missing_fields,
    port_security_conflict,
    preset_help,
    preset_host_mismatch,
)
from correspond.settings import Settings, ensure_data_dir
from correspond.store import Account, Store, open_store
from correspond.store.leases import RUNNABLE_STATES, AccountLeases
from correspond.store.message_queries import MAX_PAGE, AddressView, MessageView
from correspond.store.progress import AccountProgress, ProgressReader
from correspond.sync.runner import (
    SyncRunner,
    default_parse_processes,
    make_parse_executor,
    sync_account_once,
)

__all__ = ["CliContext", "main"]

_FLAG_FOR_FIELD = {"name": "NAME", "email": "--email", "imap_host": "--imap-host"}


class CliError(click.ClickException):
    """A message for the user and an exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


def _exit_code_for(exc: CorrespondError) -> int:
    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, NotFound):
        return 3
    if isinstance(exc, ImapError):
        return 4
    if isinstance(exc, StoreError):
        return 5
    return 1


def _one_line(message: str) -> str:
    """A message on one line: drivers (psycopg, SQLAlchemy) write several, with a link to their
    own error pages that says nothing to a user of this command."""
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith("(Background on this error")]
    return " ".join(kept)


class _Group(click.Group):
    """Turns our errors into clean one-line messages with meaningful exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CorrespondError as exc:
            raise CliError(_one_line(str(exc)), _exit_code_for(exc)) from exc
        except OSError as exc:
            # A file or directory the user named (or ./var) could not be used: say which.
            where = f": {exc.filename}" if exc.filename else ""
            raise CliError(f"{exc.strerror or exc}{where}", 1) from exc


def _settings_error(exc: ValidationError) -> str:
    """Settings errors as one line naming the environment variable to fix."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(x) for x in error["loc"]) or "settings"
        shown = (
            "--data-dir (CORRESPOND_DATA_DIR)"
            if field == "data_dir"
            else f"CORRESPOND_{field.upper()}"
        )
        parts.append(f"{shown}: {error['msg']} (got {error.get('input')!r})")
    return "invalid settings: " + "; ".join(parts)


class CliContext:
    """What every command shares: the settings, and the store opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            ensure_data_dir(self.settings)  # 0700, or a clear error naming the directory
            self._store = open_store(self.settings)  # runs migrations
        return self._store

    @property
    def service(self) -> AccountService:
        return AccountService(self.store, self.settings)

    @property
    def reader(self) -> MailboxReader:
        return MailboxReader(self.store, self.settings)

    @property
    def progress(self) -> ProgressReader:
        return ProgressReader(self.store.engine)

    @property
    def leases(self) -> AccountLeases:
        return AccountLeases(self.store.engine)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _console(stderr: bool = False) -> Console:
    # Rich reads the terminal width; when output is captured or piped, use a width that keeps
    # tables readable instead of folding every column.
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=160)
    return console


def _stdin_is_tty() -> bool:
    """Whether a person can answer prompts (separate so tests can say so)."""
    return sys.stdin.isatty()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False))


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextmanager
def _status(message: str, enabled: bool) -> Iterator[None]:
    """A spinner on stderr while something slow runs (silent for --json or when piped)."""
    console = _console(stderr=True)
    if enabled and console.is_terminal:
        with console.status(message):
            yield
    else:
        yield


def _fail(message: str, code: int) -> NoReturn:
    raise CliError(message, code)


# ------------------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CORRESPOND_DATA_DIR",
    help="Folder of the store, blobs and key (default ./var; env CORRESPOND_DATA_DIR).",
)
@click.version_option(__version__, prog_name="correspond")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None) -> None:
    """Correspond: two-way email sync for CRMs."""
    try:
        settings = Settings() if data_dir is None else Settings(data_dir=data_dir)
    except ValidationError as exc:
        raise CliError(_settings_error(exc), 2) from exc
    cli = CliContext(settings)
    ctx.obj = cli
    ctx.call_on_close(cli.close)


pass_cli = click.make_pass_decorator(CliContext)


@main.group(cls=_Group)
def account() -> None:
    """Add, test, list and remove mail accounts; choose their folders."""


class _PresetType(click.ParamType):
    """A preset key, any case, or an alias such as ``gmail`` or ``exchange-office``."""

    name = "preset"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return get_preset(str(value)).key
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(PRESETS) + "]"


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """A prompt's value check: a ConfigError makes click say why and ask again."""

    def run(value: str) -> str:
        try:
            return check(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None

    return run


def _read_cert(path: Path) -> str:
    """A PEM certificate file's text, checked, or a clear error (a DER or other binary file
    must not end in a traceback)."""
    try:
        pem = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        _fail(
            f"{path} is not a PEM certificate (it is binary; for a DER file convert it with: "
            f"openssl x509 -inform der -in {path} -out server.pem)",
            2,
        )
    return check_certificate_pem(pem)


def _from_default(ctx: click.Context, param: str) -> bool:
    return ctx.get_parameter_source(param) in (
        click.core.ParameterSource.DEFAULT,
        click.core.ParameterSource.DEFAULT_MAP,
    )


@account.command("add")
@click.argument("name", required=False)
@click.option(
    "--preset",
    type=_PresetType(),
    default="other",
    show_default=True,
    help=f"Provider preset that fills servers, ports and security ({preset_help()}).",
)
@click.option("--email", help="The account's e-mail address.")
@click.option("--username", help="IMAP/SMTP user name (default: the e-mail address).")
@click.option(
    "--imap-host", help="IMAP server name (the google and Microsoft 365 presets fill it)."
)
@click.option(
    "--imap-port",
    type=click.IntRange(1, 65535),
    help="IMAP port (default: the preset's, or 993 for tls and 143 for starttls; 993 alone "
    "means tls).",
)
@click.option(
    "--imap-security",
    type=click.Choice(SECURITIES, case_sensitive=False),
    help="tls (implicit TLS, 993) or starttls (143); plain needs --allow-plaintext.",
)
@click.option(
    "--smtp-host",
    help="SMTP server name, for sending (default: the preset's; for exchange and other, the "
    "IMAP host).",
)
@click.option(
    "--smtp-port",
    type=click.IntRange(1, 65535),
    help="SMTP port (default: 465 for tls, 587 for starttls; 465 alone means tls).",
)
@click.option(
    "--smtp-security",
    type=click.Choice(SECURITIES, case_sensitive=False),
    help="tls or starttls (default: the preset's; for other, the IMAP one).",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
@click.option("--allow-plaintext", is_flag=True, help="Permit unencrypted connections.")
@click.option(
    "--trust-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate to trust for this server (self-signed servers).",
)
@click.option("--window-days", type=click.IntRange(1, 36500), help="How far back to sync.")
@click.option("--json", "as_json_output", is_flag=True, help="Print the account as JSON.")
@click.pass_context
def account_add(
    ctx: click.Context,
    name: str | None,
    preset: str,
    email: str | None,
    username: str | None,
    imap_host: str | None,
    imap_port: int | None,
    imap_security: str | None,
    smtp_host: str | None,
    smtp_port: int | None,
    smtp_security: str | None,
    password_stdin: bool,
    allow_plaintext: bool,
    trust_cert: Path | None,
    window_days: int | None,
    as_json_output: bool,
) -> None:
    """Add an account NAME (a short handle you choose, e.g. "work").

    Every field can be given as a flag (for scripts). On a terminal, whatever is missing is
    asked for. The password comes from a hidden prompt, or with --password-stdin from standard
    input; it is stored encrypted and never shown.

    \b
    Examples:
      correspond account add work --preset google --email me@gmail.com
      echo "$PW" | correspond account add lab --email me@lab.example \\
          --imap-host mail.lab.example --imap-security tls --password-stdin
    """
    cli = ctx.find_object(CliContext)
    assert cli is not None  # made by main() for every command
    interactive = _stdin_is_tty() and not password_stdin
    missing = missing_fields(preset, name=name, email=email, imap_host=imap_host)
    if missing and interactive:
        # A guided set-up: ask for what the flags left out, each answer checked as it is given.
        if "name" in missing:
            name = click.prompt(
                "Account name (a short handle, e.g. work)", value_proc=_checked(check_account_name)
            )
        server_given = imap_host or imap_port or imap_security
        if _from_default(ctx, "preset") and not server_given:
            click.echo("Providers:")
            for key, known in PRESETS.items():
                click.echo(f"  {key:<16} {known.label}")
            preset = click.prompt(
                "Provider",
                type=_PresetType(),
                default=preset,
            )
        if not email:
            email = click.prompt("E-mail address", value_proc=_checked(check_email))
        p = get_preset(preset)
        if p.imap_host is None:
            if not imap_host:
                imap_host = click.prompt(
                    "IMAP server host",
                    value_proc=_checked(lambda v: check_host(v, "imap_host")),
                )
            if imap_security is None and imap_port is None:
                imap_security = click.prompt(
                    "IMAP security (tls: port 993, starttls: port 143)",
                    type=click.Choice(["tls", "starttls"], case_sensitive=False),
                    default=p.imap_security,
                )
            if p.ask_smtp_host and not smtp_host:
                smtp_host = click.prompt(
                    "SMTP server host (for sending)",
                    default=imap_host,
                    value_proc=_checked(lambda v: check_host(v, "smtp_host")),
                )
        missing = missing_fields(preset, name=name, email=email, imap_host=imap_host)
    problems = [_FLAG_FOR_FIELD.get(m, m) for m in missing]
    if not password_stdin and not interactive:
        problems.append("--password-stdin (with the password written to standard input)")
    if problems:
        if interactive:
            how = ""
        elif password_stdin and _stdin_is_tty():
            how = " (standard input carries the password, so nothing is asked)"
        else:
            how = " (no terminal to ask on)"
        _fail(f"missing{how}: " + ", ".join(problems), 2)
    assert name is not None
    # Everything is checked before the password is asked for, so nothing is typed in vain.
    draft = draft_from_preset(
        preset,
        name=name,
        email=email,
        username=username,
        imap_host=imap_host,
        imap_port=imap_port,
        imap_security=imap_security,
        smtp_host=smtp_host,
        smtp_port=smtp_port,
        smtp_security=smtp_security,
        allow_plaintext=allow_plaintext,
        trusted_cert_pem=_read_cert(trust_cert) if trust_cert else None,
        window_days=window_days,
    )
    service = cli.service
    if service.account_exists(draft.name):
        _fail(f"an account named {draft.name!r} already exists", 2)
    if interactive and username is None:
        # Asked, not assumed: servers with short sign-in names refuse the e-mail address.
        draft = draft.with_changes(
            username=click.prompt(
                "User name for signing in",
                default=draft.username,
                value_proc=_checked(check_username),
            )
        )
    _warn_port_conflicts(draft, ("imap", "smtp"))
    mismatch = preset_host_mismatch(draft.preset, draft.imap_host, draft.smtp_host)
    if mismatch:
        click.echo(f"Warning: {mismatch}.", err=True)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("missing: a password on standard input (it was empty)", 2)
    else:
        password = click.prompt("Password", hide_input=True)
    service.add_account(draft, password)
    summary = service.get_account(draft.name)
    if as_json_output:
        progress = _progress_json(cli.progress.account(draft.name))
        _print_json(as_json(account_public(summary, progress=progress)))
        return
    a = summary.account
    click.echo(
        f"Added account {a.name} <{a.email}>: IMAP {a.imap_host}:{a.imap_port} ({a.imap_security})"
    )
    smtp = f"{a.smtp_host}:{a.smtp_port} ({a.smtp_security})" if a.smtp_host else "not set"
    click.echo(f"SMTP {smtp}; user name {a.username}")
    click.echo(f"Next: correspond account test {a.name}")


def _warn_port_conflicts(draft: AccountDraft | Account, sides: tuple[Side, ...]) -> None:
    """One warning line (stderr) per side whose security contradicts a well-known port; the
    account is stored as asked (some servers do odd things)."""
    for side in sides:
        if side == "smtp" and not draft.smtp_host:
            continue  # no SMTP server: its port and security are not used
        port = draft.imap_port if side == "imap" else draft.smtp_port
        security = draft.imap_security if side == "imap" else draft.smtp_security
        conflict = port_security_conflict(side, port, security)
        if conflict:
            click.echo(f"Warning: {conflict}.", err=True)


def _endpoints_line(a: Account | AccountDraft) -> str:
    imap = f"IMAP {a.imap_host}:{a.imap_port} ({a.imap_security})"
    smtp = f"{a.smtp_host}:{a.smtp_port} ({a.smtp_security})" if a.smtp_host else "not set"
    return f"{imap}; SMTP {smtp}; user name {a.username}"


@account.command("update")
@click.argument("name")
@click.option("--email", help="The account's e-mail address.")
@click.option(
    "--username",
    help="IMAP/SMTP user name (follows --email when it was the old address).",
)
@click.option("--imap-host", help="IMAP server name.")
@click.option(
    "--imap-port",
    type=click.IntRange(1, 65535),
    help="IMAP port (993 alone means tls, 143 starttls).",
)
@click.option(
    "--imap-security",
    type=click.Choice(SECURITIES, case_sensitive=False),
    help="tls or starttls (a standard port follows: 993 or 143); plain needs --allow-plaintext.",
)
@click.option("--smtp-host", help="SMTP server name.")
@click.option(
    "--smtp-port",
    type=click.IntRange(1, 65535),
    help="SMTP port (465 alone means tls, 587 and 25 starttls).",
)
@click.option(
    "--smtp-security",
    type=click.Choice(SECURITIES, case_sensitive=False),
    help="tls or starttls (a standard port follows: 465 or 587).",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read a new password from the first line of stdin."
)
@click.option("--password", "password_prompt", is_flag=True, help="Ask for a new password.")
@click.option(
    "--trust-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate to trust for this server (self-signed servers).",
)
@click.option("--no-trust-cert", is_flag=True, help="Forget the trusted certificate.")
@click.option(
    "--allow-plaintext/--no-allow-plaintext",
    default=None,
    help="Permit (or stop permitting) unencrypted connections.",
)
@click.option("--window-days", type=click.IntRange(1, 36500), help="How far back to sync.")
@click.option("--json", "as_json_output", is_flag=True, help="Print the account as JSON.")
@pass_cli
def account_update(
    cli: CliContext,
    name: str,
    email: str | None,
    username: str | None,
    imap_host: str | None,
    imap_port: int | None,
    imap_security: str | None,
    smtp_host: str | None,
    smtp_port: int | None,
    smtp_security: str | None,
    password_stdin: bool,
    password_prompt: bool,
    trust_cert: Path | None,
    no_trust_cert: bool,
    allow_plaintext: bool | None,
    window_days: int | None,
    as_json_output: bool,
) -> None:
    """Change any setting of NAME: address, user name, servers, ports, security, password,
    trusted certificate, plaintext permission, sync window. Fields left out stay as they are.

    A well-known port given alone brings its security (993: tls), and a security given alone
    moves a standard port with it (143 to 993 for tls). The whole account is checked before
    anything is written: a refused change changes nothing. Changing how NAME connects resumes
    it when a refused password, an error or an unreachable server stopped it; synced mail is
    kept.

    \b
    Examples:
      correspond account update work --imap-security tls --imap-port 993
      correspond account update work --trust-cert server.pem
      echo "$PW" | correspond account update work --password-stdin
    """
    if trust_cert and no_trust_cert:
        _fail("--trust-cert and --no-trust-cert contradict each other", 2)
    if password_stdin and password_prompt:
        _fail("--password and --password-stdin contradict each other", 2)
    cert: str | EllipsisType | None = ...
    if trust_cert is not None:
        cert = _read_cert(trust_cert)
    elif no_trust_cert:
        cert = None
    changes = AccountChanges(
        email=email,
        username=username,
        imap_host=imap_host,
        imap_port=imap_port,
        imap_security=imap_security.lower() if imap_security else None,
        smtp_host=smtp_host,
        smtp_port=smtp_port,
        smtp_security=smtp_security.lower() if smtp_security else None,
        allow_plaintext=allow_plaintext,
        trusted_cert_pem=cert,
        window_days=window_days,
    )
    if changes.is_empty() and not (password_stdin or password_prompt):
        _fail(
            "nothing to change: give a setting to change (see --help), or a new password "
            "with --password-stdin or --password",
            2,
        )
    service = cli.service
    # An unknown name or a bad value fails here, before a password is asked for.
    service.check_update(name, changes)
    password: str | None = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("missing: a password on standard input (it was empty)", 2)
    elif password_prompt:
        if not _stdin_is_tty():
            _fail("--password needs a terminal to ask on; use --password-stdin", 2)
        password = click.prompt("New password", hide_input=True)
    updated = service.update_account(name, changes, password)
    sides: tuple[Side, ...] = ("imap", "smtp")
    _warn_port_conflicts(updated, tuple(side for side in sides if changes.touches(side)))
    if as_json_output:
        progress = _progress_json(cli.progress.account(name))
        _print_json(as_json(account_public(service.get_account(name), progress=progress)))
        return
    click.echo(f"Updated {name}: {_endpoints_line(updated)}; state {updated.state}.")
    click.echo(f"Check it with: correspond account test {name}")


@account.command("test")
@click.argument("name")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def account_test(cli: CliContext, name: str, as_json_output: bool) -> None:
    """Connect to NAME's server and sign in; exit 1 when that fails."""
    service = cli.service
    with _status(f"Testing {name}: DNS, TCP, TLS, sign-in...", not as_json_output):
        report = _run(service.test_account(name))
    data = report_to_dict(report)
    if as_json_output:
        _print_json(data)
    elif data["ok"]:
        click.echo(f"OK: {data['message']}")
    else:
        click.echo(f"FAILED ({data['problem']}): {data['message']}", err=True)
    if not data["ok"]:
        sys.exit(1)


_STATE_STYLE = {
    "live": "green",
    "backfilling": "cyan",
    "connecting": "cyan",
    "paused": "yellow",
    "disconnected": "yellow",
    "auth_failed": "red",
    "error": "red",
}


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "never"


@account.command("list")
@click.option(
    "--folders",
    "all_folders",
    is_flag=True,
    help="A progress row per selected folder for every account (default: while backfilling).",
)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def account_list(cli: CliContext, all_folders: bool, as_json_output: bool) -> None:
    """Show every account with its state, counts, backfill progress (done/total, rate, ETA)
    and last successful sync."""
    summaries = cli.service.list_accounts()
    progress = {p.name: p for p in cli.progress.all()}
    if as_json_output:
        _print_json(
            [
                as_json(account_public(s, progress=_progress_json(progress.get(s.account.name))))
                for s in summaries
            ]
        )
        return
    console = _console()
    if not summaries:
        console.print("No accounts yet. Add one with: correspond account add NAME --email ...")
        return
    table = Table(title="Accounts")
    for column in ("Name", "E-mail", "State", "Detail"):
        table.add_column(column, overflow="fold")
    for column in ("Folders", "Selected", "Messages", "Backfill", "Rate", "ETA"):
        table.add_column(column, justify="right")
    table.add_column("Last sync")
    for s in summaries:
        a = s.account
        p = progress.get(a.name)
        table.add_row(
            escape(a.name),
            escape(a.email),
            f"[{_STATE_STYLE.get(a.state, 'white')}]{a.state}[/]",
            escape(a.state_detail or STATE_MESSAGES.get(a.state, "")),
            str(s.folder_count),
            str(s.selected_folder_count),
            str(s.message_count),
            _backfill_cell(p),
            _rate(p.rate if p else None),
            _eta(p.eta_seconds if p else None),
            _when(a.last_sync_at),
        )
        if p is not None and (all_folders or not p.complete):
            for f in p.folders:
                done = "done" if f.complete else ""
                total = "?" if f.total is None else str(f.total)
                table.add_row(
                    "  " + escape(_plain(f.name)),
                    "",
                    done,
                    "",
                    "",
                    "",
                    "",
                    f"{f.done}/{total}",
                    _rate(f.rate),
                    _eta(f.eta_seconds),
                    "",
                )
    console.print(table)


def _progress_json(p: AccountProgress | None) -> ProgressPublic | None:
    return None if p is None else progress_public(p)


def _backfill_cell(p: AccountProgress | None) -> str:
    """``done/total (pct)``; a ``+`` after the total while some folder is still uncounted."""
    if p is None or not p.folders:
        return "-"
    more = "" if p.total_known else "+"
    pct = f" ({100 * p.done / p.total:.0f}%)" if p.total and p.total_known else ""
    return f"{p.done}/{p.total}{more}{pct}"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}/s"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@account.command("pause")
@click.argument("name")
@pass_cli
def account_pause(cli: CliContext, name: str) -> None:
    """Stop syncing NAME until it is resumed (the worker running it lets go within seconds)."""
    a = cli.leases.pause(name)
    click.echo(f"Paused {a.name}. Resume with: correspond account resume {a.name}")


@account.command("resume")
@click.argument("name")
@pass_cli
def account_resume(cli: CliContext, name: str) -> None:
    """Sync NAME again after a pause (or after fixing what stopped it): a running worker picks
    it up within seconds."""
    before = cli.store.get_account(name).state
    a = cli.leases.resume(name)
    if before != a.state:
        click.echo(f"Resumed {a.name}: a running worker picks it up (or: correspond sync {a.name})")
    else:
        click.echo(f"{a.name} is not paused or stopped (state {a.state}); nothing to resume.")


def _folder_table(folders: list[FolderWithCounts], title: str) -> Table:
    table = Table(title=title)
    for column in ("ID", "Folder", "Role", "Selected", "Remote name", "Flags"):
        table.add_column(column, overflow="fold")
    for column in ("Messages", "Unread", "Server"):
        table.add_column(column, justify="right")
    for item in folders:
        f = item.folder
        public = folder_public(f)
        selected = "yes" if f.selected else ("no" if f.selectable else "-")
        name = f"{f.name} (removed)" if f.removed else f.name
        table.add_row(
            escape(str(f.id)),
            escape(name),
            f.role or "",
            selected,
            escape(public.remote_name),
            escape(" ".join(f.flags)),
            str(item.counts.messages),
            str(item.counts.unread),
            "?" if item.server_count is None else str(item.server_count),
        )
    return table


@account.command("folders")
@click.argument("name")
@click.option("--refresh", is_flag=True, help="List the folders on the server first.")
@click.option(
    "--select",
    "select",
    multiple=True,
    metavar="NAME_OR_ID",
    help="Sync exactly these folders (repeat; by display name, or id as 7 or id:7).",
)
@click.option("--all", "select_all", is_flag=True, help="Sync all folders, including new ones.")
@click.option("--include-removed", is_flag=True, help="Also show folders gone from the server.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def account_folders(
    cli: CliContext,
    name: str,
    refresh: bool,
    select: tuple[str, ...],
    select_all: bool,
    include_removed: bool,
    as_json_output: bool,
) -> None:
    """Show NAME's folders (role, selected, name, messages stored, unread, the server's count);
    optionally refresh and choose them."""
    if select and select_all:
        _fail("use either --select or --all, not both", 2)
    service = cli.service
    if refresh:
        with _status(f"Listing folders of {name}...", not as_json_output):
            result = _run(service.refresh_folders(name))
        if not as_json_output:
            click.echo(
                f"Refreshed: {result.added} new, {result.updated} changed, "
                f"{result.removed} removed."
            )
    if select or select_all:
        service.select_folders(name, all_folders=select_all, refs=list(select))
    folders = cli.reader.folders_with_counts(name, include_removed=include_removed)
    if as_json_output:
        _print_json([as_json(folder_with_counts_public(f)) for f in folders])
        return
    if not folders:
        click.echo(f"No folders known for {name}; run: correspond account folders {name} --refresh")
        return
    mode = service.get_account(name).account.folders_mode
    title = (
        f"Folders of {name} ({'all folders sync' if mode == 'all' else 'selected folders sync'})"
    )
    _console().print(_folder_table(folders, title))


@account.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def account_remove(cli: CliContext, name: str, yes: bool) -> None:
    """Delete account NAME and everything synced for it (the mailbox itself is untouched)."""
    service = cli.service
    service.get_account(name)  # NotFound before asking
    if not yes:
        if not _stdin_is_tty():
            _fail("pass --yes to remove an account without a terminal to confirm on", 2)
        click.confirm(f"Remove account {name} and all its synced data?", abort=True)
    service.remove_account(name)
    click.echo(f"Removed account {name}.")


# -- reading synced mail ---------------------------------------------------------------------

# Terminal control sequences in mail text could rewrite the screen or the title bar: keep
# newlines and tabs, drop every other C0/C1 control and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _plain(text: str | None) -> str:
    """Mail-derived text made safe to print on a terminal."""
    return _CONTROL.sub("", text or "")


def _address(a: AddressView | None) -> str:
    """``Name <email>``, the name quoted when it holds RFC 5322 specials (§3.2.3), so a name
    such as ``x <y@z>`` cannot pass for an address."""
    if a is None:
        return ""
    if not a.name:
        return _plain(a.email)
    name = a.name
    if re.search(r'[()<>\[\]:;@\\,."]', name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _plain(f"{name} <{a.email}>")


def _addresses(items: tuple[AddressView, ...]) -> str:
    return ", ".join(_address(a) for a in items)


def _date(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


def _api_attachment_url(message_id: int, attachment_id: int) -> str:
    return f"/messages/{message_id}/attachments/{attachment_id}"


def _message_json(reader: MailboxReader, m: MessageView, remote_images: bool) -> dict[str, Any]:
    html = reader.render_html(m, remote_images=remote_images)
    public = message_public(
        m, html, remote_images=remote_images, attachment_url=_api_attachment_url
    )
    return as_json(public)


def _write_output(path: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to exactly ``path`` (never a name taken from the mail); refuse to replace
    an existing file unless ``force``."""
    try:
        with path.open("wb" if force else "xb") as fh:
            fh.write(data)
    except FileExistsError:
        _fail(f"{path} exists; pass --force to replace it", 2)
    except OSError as exc:
        _fail(f"could not write {path}: {exc.strerror or exc}", 1)


def _echo_message(
    reader: MailboxReader, m: MessageView, *, html: bool, remote_images: bool
) -> None:
    lines = [
        f"Message {m.id}" + (f" (thread {m.thread_id})" if m.thread_id is not None else ""),
        f"From:     {_address(m.from_)}",
        f"To:       {_addresses(m.to)}",
    ]
    for label, items in (("Cc", m.cc), ("Bcc", m.bcc), ("Reply-To", m.reply_to)):
        if items:
            lines.append(f"{label + ':':<10}{_addresses(items)}")
    lines += [
        f"Date:     {_date(m.date or m.internaldate)}",
        f"Subject:  {_plain(m.subject)}",
        "Folders:  "
        + ", ".join(f"{_plain(loc.folder_name)} (UID {loc.uid})" for loc in m.locations),
        f"Flags:    {' '.join(m.flags)}",
    ]
    if m.attachments:
        lines.append("Attachments:")
        for a in m.attachments:
            where = "" if a.downloaded else ", not downloaded"
            cid = f", cid:{_plain(a.content_id)}" if a.content_id else ""
            lines.append(
                f"  [{a.id}] {_plain(a.filename) or '(no name)'} "
                f"({_plain(a.content_type)}, {a.size} bytes{cid}{where})"
            )
    if m.defects:
        lines.append("Defects:  " + "; ".join(_plain(d) for d in m.defects))
    click.echo("\n".join(lines))
    click.echo("")
    if html:
        rendered = reader.render_html(m, remote_images=remote_images)
        if rendered is None:
            click.echo("(no HTML part)")
        else:
            if rendered.remote_images_blocked:
                click.echo(
                    f"({rendered.remote_images_blocked} remote images blocked; "
                    "--remote-images to allow)",
                    err=True,
                )
            click.echo(_plain(rendered.html))
    elif m.text is not None:
        click.echo(_plain(m.text).rstrip("\n"))
    elif m.html is not None:
        click.echo("(HTML only: use --html)")
    else:
        click.echo("(no text)")


@main.group(cls=_Group)
def messages() -> None:
    """List and read synced messages; save originals and attachments."""


@messages.command("list")
@click.argument("account_name", metavar="ACCOUNT")
@click.option("--folder", metavar="NAME_OR_ID", help="Only messages in this folder.")
@click.option("--thread", "thread_id", type=int, help="Only messages of this thread.")
@click.option("-q", "--query", help="Only messages whose subject, sender or snippet has this text.")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=50, show_default=True)
@click.option("--before", metavar="CURSOR", help="The cursor a previous page printed.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def messages_list(
    cli: CliContext,
    account_name: str,
    folder: str | None,
    thread_id: int | None,
    query: str | None,
    limit: int,
    before: str | None,
    as_json_output: bool,
) -> None:
    """Show ACCOUNT's messages, newest first."""
    page = cli.reader.list_messages(
        account_name, folder=folder, thread_id=thread_id, q=query, limit=limit, before=before
    )
    if as_json_output:
        _print_json(as_json(message_page_public(page)))
        return
    if not page.items:
        click.echo("No messages.")
        return
    table = Table(title=f"Messages of {escape(account_name)}")
    table.add_column("ID", justify="right")
    for column in ("Date", "From", "Subject"):
        table.add_column(column, overflow="fold")
    table.add_column("Thread", justify="right")
    table.add_column("", no_wrap=True)
    for m in page.items:
        marks = ("" if "\\Seen" in m.flags else "*") + ("@" if m.has_attachments else "")
        table.add_row(
            str(m.id),
            _date(m.date or m.sort_at),
            escape(_address(m.from_)),
            escape(_plain(m.subject)),
            "" if m.thread_id is None else str(m.thread_id),
            marks,
        )
    _console().print(table)
    if page.next_cursor:
        click.echo(f"More: --before {page.next_cursor}")


@messages.command("show")
@click.argument("message_id", metavar="ID", type=int)
@click.option("--html", "show_html", is_flag=True, help="Print the sanitised HTML body.")
@click.option("--remote-images", is_flag=True, help="Keep remote images in the HTML.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def messages_show(
    cli: CliContext, message_id: int, show_html: bool, remote_images: bool, as_json_output: bool
) -> None:
    """Show message ID: headers, folders, attachments and its text (or sanitised HTML)."""
    reader = cli.reader
    m = reader.get_message(message_id)
    if as_json_output:
        _print_json(_message_json(reader, m, remote_images))
        return
    _echo_message(reader, m, html=show_html, remote_images=remote_images)


@messages.command("raw")
@click.argument("message_id", metavar="ID", type=int)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE."
)
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@pass_cli
def messages_raw(cli: CliContext, message_id: int, output: Path | None, force: bool) -> None:
    """Write message ID exactly as fetched (RFC 5322) to standard output, or to FILE."""
    raw = cli.reader.raw(message_id)
    if output is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    _write_output(output, raw, force)
    click.echo(f"Wrote {len(raw)} bytes to {output}", err=True)


@messages.command("attachment")
@click.argument("message_id", metavar="ID", type=int)
@click.argument("attachment_id", metavar="ATTACHMENT_ID", type=int)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file to write (the attachment's own name is never used as a path).",
)
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@pass_cli
def messages_attachment(
    cli: CliContext, message_id: int, attachment_id: int, output: Path, force: bool
) -> None:
    """Save attachment ATTACHMENT_ID of message ID to the file given with -o."""
    view, data = cli.reader.attachment(message_id, attachment_id)
    _write_output(output, data, force)
    shown = _plain(view.filename) or f"attachment {attachment_id}"
    click.echo(
        f"Wrote {shown} ({len(data)} bytes, {_plain(view.content_type)}) to {output}", err=True
    )


@main.group(cls=_Group)
def threads() -> None:
    """Read conversations."""


@threads.command("show")
@click.argument("thread_id", metavar="ID", type=int)
@click.option("--newest-first", is_flag=True, help="Newest message first.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def threads_show(cli: CliContext, thread_id: int, newest_first: bool, as_json_output: bool) -> None:
    """Show thread ID's messages, oldest first."""
    reader = cli.reader
    thread = reader.get_thread(thread_id, newest_first=newest_first)
    order = "newest_first" if newest_first else "oldest_first"
    if as_json_output:
        public = [
            message_public(
                m,
                reader.render_html(m),
                remote_images=False,
                attachment_url=_api_attachment_url,
            )
            for m in thread.messages
        ]
        _print_json(as_json(thread_public(thread, public, order=order)))
        return
    click.echo(f"Thread {thread.id}: {_plain(thread.subject)} ({thread.message_count} messages)")
    for m in thread.messages:
        click.echo("\n" + "-" * 72)
        _echo_message(reader, m, html=False, remote_images=False)


# -- running the sync --------------------------------------------------------------------------

_PROGRESS_SECONDS = 0.5
# How often ``worker`` reads every account's state for its log lines: the states this worker
# records reach the log at once through the runner's listener; this read only catches what
# others change (a pause...). It reads every account's progress (0.38 s of CPU at 1,000
# accounts), so every second it was most of an idle worker's CPU (7 of 9.5 % of a core at 200).
_WORKER_POLL_SECONDS = 60.0
_STOP_CODES = {"paused": 0, "auth_failed": 4, "error": 1}


def _default_parse_processes() -> int:
    return default_parse_processes()


_PARSE_OPTION = click.option(
    "--parse-processes",
    type=click.IntRange(0, 64),
    default=_default_parse_processes,
    show_default="one per CPU, at most 4; none on one CPU",
    help="Processes that parse MIME, shared by every account (0: a thread of this process).",
)


class _RateColumn(ProgressColumn):
    """Messages per second, from rich's own samples of the done count."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("    - msg/s", style="progress.data.speed")
        return Text(f"{speed:5.1f} msg/s", style="progress.data.speed")


class _SyncDisplay:
    """What a running sync shows, read from the store every half second (no engine hook): a bar
    per selected folder and one for the total (done/total, rate, ETA), and one line per state
    change (connecting, backfilling, live, sign-in failed with the server's words, ...)."""

    def __init__(
        self,
        reader: ProgressReader,
        console: Console,
        *,
        names: list[str] | None,
        bars: bool,
    ) -> None:
        self.reader = reader
        self.console = console
        self.names = names
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not bars,
            auto_refresh=console.is_terminal,
        )
        self._tasks: dict[tuple[str, int | None], TaskID] = {}
        self._states: dict[str, tuple[str, str]] = {}
        self.last: dict[str, AccountProgress] = {}

    def __enter__(self) -> _SyncDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def say(self, message: str) -> None:
        self.progress.console.print(message, highlight=False)

    async def poll(self) -> dict[str, AccountProgress]:
        """Read the store once and update the bars and state lines."""
        if self.names is None:
            items = await asyncio.to_thread(self.reader.all)
        else:
            items = [await asyncio.to_thread(self.reader.account, n) for n in self.names]
        for p in items:
            self._state_line(p)
            self._bars(p)
            self.last[p.name] = p
        return self.last

    def listener(self) -> Callable[[str, str, str], None]:
        """A state listener for the runner: every state it records is shown at once, even
        one that lasts less than a polling interval. Safe to call from any thread."""
        loop = asyncio.get_running_loop()

        def on_state(name: str, state: str, detail: str) -> None:
            loop.call_soon_threadsafe(self.state_line, name, state, detail)

        return on_state

    def _state_line(self, p: AccountProgress) -> None:
        self.state_line(p.name, p.state, p.state_detail)

    def state_line(self, name: str, state: str, detail: str) -> None:
        """One line for a state change (repeats of the current state are not shown)."""
        key = (state, detail)
        if self._states.get(name) == key:
            return
        self._states[name] = key
        style = _STATE_STYLE.get(state, "white")
        words = {"auth_failed": "sign-in failed"}.get(state, state)
        shown = detail or STATE_MESSAGES.get(state, "")
        stamp = time.strftime("%H:%M:%S")
        self.say(f"{stamp} {escape(name)}: [{style}]{words}[/] {escape(_plain(shown))}")

    def _bars(self, p: AccountProgress) -> None:
        if self.progress.disable or not p.folders:
            return
        total_key = (p.name, None)
        if total_key not in self._tasks:
            label = f"{p.name}: all folders" if self.names is None or len(self.names) > 1 else "All"
            self._tasks[total_key] = self.progress.add_task(escape(label), total=None)
        self.progress.update(
            self._tasks[total_key],
            completed=p.done,
            total=p.total if p.total_known else None,
        )
        for f in p.folders:
            key = (p.name, f.folder_id)
            if key not in self._tasks:
                self._tasks[key] = self.progress.add_task(
                    "  " + escape(_plain(f.name)), total=f.total
                )
            total = f.total if f.total is not None else (f.done if f.complete else None)
            self.progress.update(self._tasks[key], completed=f.done, total=total)


@contextmanager
def _signals(handler: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call ``handler`` (a clean stop) instead of raising KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _prepare_account(cli: CliContext, name: str) -> None:
    """Refuse a paused account; retry one stopped on an error (the user asks for a sync)."""
    account = cli.store.get_account(name)
    if account.state == "paused":
        _fail(f"account {name} is paused; resume it first: correspond account resume {name}", 2)
    if account.state in ("auth_failed", "error"):
        cli.leases.resume(name, "Retrying on request.")


def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()


async def _sync_once(cli: CliContext, name: str, processes: int, display: _SyncDisplay) -> int:
    executor = make_parse_executor(processes)
    try:
        with display:
            job = asyncio.create_task(
                sync_account_once(
                    cli.store,
                    cli.settings,
                    name,
                    parse_executor=executor,
                    on_state=display.listener(),
                )
            )
            with _signals(lambda: _cancel(job)):
                while not job.done():
                    await display.poll()
                    await asyncio.wait({job}, timeout=_PROGRESS_SECONDS)
            await display.poll()
            try:
                result = job.result()
            except asyncio.CancelledError:
                display.say(f"Interrupted; {escape(name)}'s lease is released.")
                return 130
    finally:
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
    a = result.account
    if result.ok and result.report is not None:
        r = result.report
        errors = [f for f in r.folders if f.error]
        for f in errors:
            display.say(f"[yellow]folder {f.folder_id} skipped[/]: {escape(_plain(f.error))}")
        display.say(
            f"Synced {escape(name)}: {r.created} new messages, {r.linked} more locations "
            f"in {r.seconds:.1f} s."
        )
        return 0
    display.say(f"[red]{escape(_plain(STATE_MESSAGES.get(a.state, a.state)))}[/]")
    click.echo(f"{name}: {a.state}: {a.state_detail}", err=True)
    return _STOP_CODES.get(a.state, 4 if a.state == "disconnected" else 1)


async def _sync_live(cli: CliContext, name: str, processes: int, display: _SyncDisplay) -> int:
    runner = SyncRunner(
        cli.store,
        cli.settings,
        names=[name],
        parse_processes=processes,
        on_state=display.listener(),
    )
    stop = asyncio.Event()
    code = 0
    waiting_said = False
    with _signals(stop.set):
        main_task = asyncio.create_task(runner.run(stop))
        try:
            with display:
                display.say(f"Syncing {escape(name)} (owner {runner.owner}); Ctrl-C to stop.")
                while not stop.is_set() and not main_task.done():
                    p = (await display.poll())[name]
                    if p.state not in RUNNABLE_STATES and name not in runner.running:
                        code = _STOP_CODES.get(p.state, 1)
                        break
                    if name not in runner.running and not waiting_said:
                        holder = await asyncio.to_thread(cli.leases.holder, name)
                        if holder is not None and holder[0] != runner.owner:
                            display.say(f"Waiting: {escape(name)} is being synced by {holder[0]}.")
                            waiting_said = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=_PROGRESS_SECONDS)
                stop.set()
                await main_task
                await display.poll()
        finally:
            stop.set()
            if not main_task.done():
                await main_task
    click.echo(f"Stopped syncing {name}; its lease is released.")
    return code


@main.command("sync")
@click.argument("account_name", metavar="ACCOUNT")
@click.option("--once", is_flag=True, help="Backfill and catch up, then exit.")
@_PARSE_OPTION
@click.option("--no-progress", is_flag=True, help="State lines only, no progress bars.")
@pass_cli
def sync(
    cli: CliContext, account_name: str, once: bool, parse_processes: int, no_progress: bool
) -> None:
    """Sync ACCOUNT: backfill the window, then stay live (IDLE) until Ctrl-C; with --once, exit
    when caught up (0 on success; otherwise the account's state and the reason, and exit 4 when
    the server refused or could not be reached, 1 for other errors)."""
    _prepare_account(cli, account_name)
    display = _SyncDisplay(cli.progress, _console(), names=[account_name], bars=not no_progress)
    if once:
        code = _run(_sync_once(cli, account_name, parse_processes, display))
    else:
        code = _run(_sync_live(cli, account_name, parse_processes, display))
    if code:
        sys.exit(code)


@main.command("worker")
@_PARSE_OPTION
@click.option("--max-accounts", type=click.IntRange(1), help="Hold at most this many accounts.")
@click.option("--poll-seconds", type=click.FloatRange(0.1), default=5.0, show_default=True)
@click.option("--lease-seconds", type=click.FloatRange(1.0), default=60.0, show_default=True)
@pass_cli
def worker(
    cli: CliContext,
    parse_processes: int,
    max_accounts: int | None,
    poll_seconds: float,
    lease_seconds: float,
) -> None:
    """Sync every active account (no API), sharing them with other workers through leases;
    Ctrl-C stops cleanly and releases the leases."""
    display = _SyncDisplay(cli.progress, _console(), names=None, bars=False)

    async def work() -> str:
        runner = SyncRunner(
            cli.store,
            cli.settings,
            parse_processes=parse_processes,
            max_accounts=max_accounts,
            poll_seconds=poll_seconds,
            lease_seconds=lease_seconds,
            on_state=display.listener(),
        )
        stop = asyncio.Event()
        with _signals(stop.set):
            main_task = asyncio.create_task(runner.run(stop))
            display.say(f"Worker {runner.owner} running; Ctrl-C to stop.")
            try:
                while not stop.is_set() and not main_task.done():
                    await display.poll()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=_WORKER_POLL_SECONDS)
            finally:
                stop.set()
                await main_task
                await display.poll()
        return runner.owner

    owner = _run(work())
    click.echo(f"Worker {owner} stopped; its leases are released.")


def _check_port_free(host: str, port: int) -> None:
    """Fail with a hint, before anything starts, when the address is taken or unknown (uvicorn
    would log it among its start-up lines and exit with its own code)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        _fail(f"cannot listen on {host}: {exc.strerror or exc}", 2)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            _fail(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(another server running? choose another with --port)",
                1,
            )


@main.command("serve")
@click.option("--host", help="Address to listen on (default from settings).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default from settings).")
@click.option("--no-sync", is_flag=True, help="Serve the API only (run `correspond worker`s).")
@_PARSE_OPTION
@pass_cli
def serve(
    cli: CliContext, host: str | None, port: int | None, no_sync: bool, parse_processes: int
) -> None:
    """Run the API and the sync engine (every active account) in one process and event loop."""
    import uvicorn

    from correspond.api import create_app

    settings = cli.settings.clone(**{k: v for k, v in (("host", host), ("port", port)) if v})
    _check_port_free(settings.host, settings.port)
    store = cli.store  # migrations run here, before the first request
    runner = None if no_sync else SyncRunner(store, settings, parse_processes=parse_processes)
    app = create_app(settings, store=store, runner=runner)
    what = "API only" if runner is None else f"API and sync (owner {runner.owner})"
    click.echo(f"Serving on http://{settings.host}:{settings.port}: {what}; API docs at /docs")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":  # pragma: no cover - `python -m correspond.cli`
    main()
