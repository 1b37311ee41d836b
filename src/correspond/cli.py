"""The ``correspond`` command line.

Settings are built once, from ``--data-dir`` / the environment, and passed to every command.
Every command that shows data takes ``--json``. Secrets are read from a hidden prompt or from
standard input (``--password-stdin``), never from argv, and never printed.

Exit codes: 0 success, 1 a failed connection test or unexpected error, 2 bad input (ConfigError
or usage), 3 not found, 4 the mail server failed or refused, 5 the database failed, 6 a sync
finished but skipped some folder for an error. Output to a closed pipe ends with 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
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
    GONE_WORDS,
    folder_with_counts_public,
    message_page_public,
    message_public,
    thread_public,
)
from correspond.api.progress_schemas import ProgressPublic, progress_public
from correspond.api.routes.actions import outcome_public
from correspond.api.schemas import account_public, as_json, folder_public
from correspond.auth import AuthService, check_password
from correspond.cli_output import QuietConsole, cell, dumps_json, safe, safe_lines, stdout_closed
from correspond.errors import (
    ConfigError,
    CorrespondError,
    ImapError,
    NotFound,
    StoreError,
)
from correspond.mailbox import FolderWithCounts, MailboxReader
from correspond.memory import limit_malloc_arenas
from correspond.rules.crm_import import IMPORT_KINDS, parse_rows
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
from correspond.rules.two_way import TOGGLE_DEFAULTS, TOGGLE_HELP
from correspond.rules.webhooks import EVENT_TYPES, UnsafeWebhookUrl, check_webhook_url
from correspond.search import OPERATOR, SearchService
from correspond.settings import Settings, ensure_data_dir, key_file_path
from correspond.store import Account, Store, open_store
from correspond.store.blob_gc import check_blobs
from correspond.store.blobs import BlobStore
from correspond.store.crm import CrmStore
from correspond.store.leases import RUNNABLE_STATES, AccountLeases
from correspond.store.linker import LinkerStore
from correspond.store.location import store_location
from correspond.store.message_queries import MAX_PAGE, AddressView, MessagePage, MessageView
from correspond.store.notifications import NotificationStore
from correspond.store.outbox import ActionOutcome, OutboxStore
from correspond.store.progress import AccountProgress, ProgressReader
from correspond.store.records import TOGGLES, draft_of
from correspond.store.tables import ACCOUNT_SHARING
from correspond.store.teams import Team
from correspond.store.users import ApiToken, User
from correspond.store.webhooks import Webhook, WebhookStore
from correspond.sync.linker import link_policy
from correspond.sync.runner import (
    OnceResult,
    SyncRunner,
    default_parse_processes,
    make_parse_executor,
    sync_account_once,
)
from correspond.waiting import wait_set

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


class _Command(click.Command):
    """A command that also takes ``--data-dir`` after its name (``correspond account list
    --data-dir X``), and ``--json`` given before it (``correspond --json account list``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not any("--data-dir" in p.opts for p in self.params):
            self.params.append(_data_dir_option())

    def invoke(self, ctx: click.Context) -> Any:
        cli = ctx.find_object(CliContext)
        if cli is not None and cli.json_output:
            json_param = next((p for p in self.params if "--json" in p.opts), None)
            if json_param is None or json_param.name is None:
                raise click.UsageError(f"{ctx.command_path} has no --json output", ctx)
            ctx.params[json_param.name] = True
        return super().invoke(ctx)


class _Group(click.Group):
    """Turns our errors into clean one-line messages with meaningful exit codes."""

    command_class = _Command
    group_class = type  # subgroups are _Groups too, whoever declares them

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CorrespondError as exc:
            raise CliError(safe(_one_line(str(exc))), _exit_code_for(exc)) from exc
        except BrokenPipeError:
            raise  # the entry point's business (_MainGroup)
        except OSError as exc:
            # A file or directory the user named (or ./var) could not be used: say which.
            where = f": {exc.filename}" if exc.filename else ""
            raise CliError(safe(f"{exc.strerror or exc}{where}"), 1) from exc


class _MainGroup(_Group):
    """The entry point: output to a closed pipe (``correspond ... | head -1``) ends the command
    quietly with status 0, whether it happens while parsing (``--help``) or running."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            stdout_closed()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            stdout_closed()


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

    def __init__(self, settings: Settings, *, json_output: bool = False) -> None:
        self.settings = settings
        self.json_output = json_output  # --json before the command
        self._store: Store | None = None
        self._auth: AuthService | None = None

    def use_data_dir(self, data_dir: Path) -> None:
        """``--data-dir`` given after the command: it replaces the one given before it (or the
        environment's); the store is not open yet."""
        assert self._store is None, "the data directory changed after the store was opened"
        try:
            self.settings = self.settings.clone(data_dir=data_dir)
        except ValidationError as exc:
            raise CliError(_settings_error(exc), 2) from exc

    @property
    def store(self) -> Store:
        if self._store is None:
            where = store_location(self.settings)
            had_dir = self.settings.data_dir.is_dir()
            existed = where.exists()
            ensure_data_dir(self.settings)  # 0700, or a clear error naming the directory
            self._store = open_store(self.settings)  # runs migrations
            if existed is False:
                click.echo(
                    f"Created a new store: {where.url} (data directory {self.settings.data_dir})",
                    err=True,
                )
            elif not had_dir:
                click.echo(
                    f"Created the data directory {self.settings.data_dir} (store: {where.url})",
                    err=True,
                )
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

    @property
    def auth(self) -> AuthService:
        if self._auth is None:
            self._auth = AuthService(self.store, self.settings)
        return self._auth

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _console(stderr: bool = False) -> Console:
    # Rich reads the terminal width; when output is captured or piped, use a width that keeps
    # tables readable instead of folding every column.
    console: Console = QuietConsole(stderr=stderr)
    if not console.is_terminal:
        console = QuietConsole(stderr=stderr, width=160)
    return console


def _stdin_is_tty() -> bool:
    """Whether a person can answer prompts (separate so tests can say so)."""
    return sys.stdin.isatty()


def _print_json(data: Any) -> None:
    click.echo(dumps_json(data))


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


_DATA_DIR_HELP = (
    "Folder of the store, blobs and key (default ./var of the current directory, made absolute "
    "once at start; env CORRESPOND_DATA_DIR). Accepted before or after the command."
)


def _use_data_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    cli = ctx.find_object(CliContext)
    if value is not None and cli is not None:
        cli.use_data_dir(value)


def _data_dir_option() -> click.Option:
    """``--data-dir`` after a command's name (the group's, before it, also reads the env)."""
    return click.Option(
        ["--data-dir"],
        type=click.Path(file_okay=False, path_type=Path),
        expose_value=False,
        callback=_use_data_dir,
        help=_DATA_DIR_HELP,
    )


@click.group(
    cls=_MainGroup,
    invoke_without_command=True,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CORRESPOND_DATA_DIR",
    help=_DATA_DIR_HELP,
)
@click.option(
    "--json",
    "as_json_output",
    is_flag=True,
    help="Print JSON (the same as --json after a command that has it).",
)
@click.option(
    "--version", "show_version", is_flag=True, help="Show the version and data directory."
)
@click.pass_context
def main(
    ctx: click.Context, data_dir: Path | None, as_json_output: bool, show_version: bool
) -> None:
    """Correspond: two-way email sync for CRMs."""
    if show_version:
        click.echo(f"correspond, version {__version__}")
    try:
        settings = Settings() if data_dir is None else Settings(data_dir=data_dir)
    except ValidationError as exc:
        raise CliError(_settings_error(exc), 2) from exc
    if show_version:
        click.echo(f"data directory: {settings.data_dir}")
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        raise click.UsageError("Missing command.", ctx)
    cli = CliContext(settings, json_output=as_json_output)
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


_TOGGLES_META = "correspond.toggles"


def _remember_toggle(ctx: click.Context, param: click.Parameter, value: bool | None) -> None:
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_TOGGLES_META, {})[param.name] = value


def _toggle_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--NAME/--no-NAME`` for each of the four two-way toggles (left out: unchanged; the
    defaults are rules.two_way.TOGGLE_DEFAULTS). Read with :func:`_given_toggles`."""
    for name in reversed(TOGGLES):
        flag = name.replace("_", "-")
        default = "on" if TOGGLE_DEFAULTS[name] else "off"
        command = click.option(
            f"--{flag}/--no-{flag}",
            name,
            default=None,
            expose_value=False,
            callback=_remember_toggle,
            help=f"{TOGGLE_HELP[name]} (default for a new account: {default}).",
        )(command)
    return command


def _given_toggles() -> dict[str, bool]:
    """The toggles given on the command line (name -> value)."""
    return dict(click.get_current_context().meta.get(_TOGGLES_META, {}))


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
@click.option(
    "--owner",
    metavar="EMAIL",
    help="The user who owns the account (default: the first admin; with no users yet, the "
    "first admin created).",
)
@_toggle_options
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
    owner: str | None,
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
    # The owner is checked first: a wrong address fails before anything is asked for.
    owner_user = cli.auth.default_owner(owner)
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
        toggles=_given_toggles(),
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
    service.add_account(draft, password, owner_id=owner_user.id if owner_user else None)
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
    if owner_user is None:
        click.echo(
            "Owner: none yet (no users exist); the first admin you create takes it: "
            "correspond users create EMAIL --admin"
        )
    else:
        click.echo(f"Owner: {owner_user.email}")
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
    "--trust-presented-cert",
    "trust_presented",
    metavar="SHA256",
    help=(
        "Trust the certificate the IMAP server presents now, if its SHA-256 fingerprint (shown "
        "by `account test`) is this one; no openssl needed."
    ),
)
@click.option(
    "--allow-plaintext/--no-allow-plaintext",
    default=None,
    help="Permit (or stop permitting) unencrypted connections.",
)
@click.option("--window-days", type=click.IntRange(1, 36500), help="How far back to sync.")
@click.option(
    "--sharing",
    type=click.Choice(ACCOUNT_SHARING, case_sensitive=False),
    help=(
        "Who else sees it: private (owner; admins see all), team (the owner's teams, in full) "
        "or metadata (the owner's teams see participants, subject, date; no bodies)."
    ),
)
@click.option("--team", "team_ref", metavar="TEAM", help="Make it a team inbox of TEAM.")
@click.option("--no-team", is_flag=True, help="Make a team inbox a personal account again.")
@_toggle_options
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
    trust_presented: str | None,
    allow_plaintext: bool | None,
    window_days: int | None,
    sharing: str | None,
    team_ref: str | None,
    no_team: bool,
    as_json_output: bool,
) -> None:
    """Change any setting of NAME: address, user name, servers, ports, security, password,
    trusted certificate, plaintext permission, sync window, sharing, team inbox, the four
    two-way toggles. Fields left out stay as they are.

    A well-known port given alone brings its security (993: tls), and a security given alone
    moves a standard port with it (143 to 993 for tls). The whole account is checked before
    anything is written: a refused change changes nothing. Changing how NAME connects resumes
    it when a refused password, an error or an unreachable server stopped it; synced mail is
    kept.

    \b
    Examples:
      correspond account update work --imap-security tls --imap-port 993
      correspond account update work --trust-cert server.pem
      correspond account update work --trust-presented-cert AB:CD:...:EF
      echo "$PW" | correspond account update work --password-stdin
      correspond account update work --sharing metadata
      correspond account update support --team Support
      correspond account update work --delete-remote-on-crm-delete
    """
    if team_ref is not None and no_team:
        _fail("--team and --no-team contradict each other", 2)
    if sum(bool(x) for x in (trust_cert, no_trust_cert, trust_presented)) > 1:
        _fail("--trust-cert, --trust-presented-cert and --no-trust-cert contradict each other", 2)
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
        toggles=_given_toggles(),
    )
    shares = sharing is not None or team_ref is not None or no_team
    settings_change = not changes.is_empty() or password_stdin or password_prompt
    if not (settings_change or trust_presented or shares):
        _fail(
            "nothing to change: give a setting to change (see --help), or a new password "
            "with --password-stdin or --password",
            2,
        )
    service = cli.service
    # An unknown account or team fails before anything changes.
    service.store.get_account(name)
    team_id = cli.auth.teams.get(team_ref).id if team_ref is not None else None
    if shares and not (settings_change or trust_presented):
        cli.auth.teams.set_account_sharing(
            name, sharing=sharing.lower() if sharing else None, team_id=team_id, clear_team=no_team
        )
        if as_json_output:
            _print_account_json(cli, name)
            return
        _say_sharing(cli, name)
        return
    # An unknown name or a bad value fails here, before a password is asked for.
    after = service.check_update(name, changes)
    if trust_presented:
        # The certificate of the endpoint as it will be (a new host or port given with it).
        pem = _run(
            service.presented_certificate_pem(
                after.imap_host, after.imap_port, after.imap_security, trust_presented
            )
        )
        changes = dataclasses.replace(changes, trusted_cert_pem=pem)
        after = service.check_update(name, changes)
    before = service.store.get_account(name)
    moves = after.connection() != draft_of(before).connection() and before.has_secret
    password: str | None = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("missing: a password on standard input (it was empty)", 2)
    elif password_prompt or (moves and _stdin_is_tty()):
        if not _stdin_is_tty():
            _fail("--password needs a terminal to ask on; use --password-stdin", 2)
        if not password_prompt:
            click.echo(
                "The connection settings change: the stored password is only sent to the "
                "server it was entered for, so enter it again for the new settings.",
                err=True,
            )
        # On stderr: with --json, standard output carries only the JSON.
        password = click.prompt("Password", hide_input=True, err=True)
    updated = service.update_account(name, changes, password)
    if shares:
        cli.auth.teams.set_account_sharing(
            name, sharing=sharing.lower() if sharing else None, team_id=team_id, clear_team=no_team
        )
    if moves and password is None:
        click.echo(
            f"The stored password was dropped (the connection settings changed); give it "
            f"again with: correspond account update {name} --password-stdin",
            err=True,
        )
    sides: tuple[Side, ...] = ("imap", "smtp")
    _warn_port_conflicts(updated, tuple(side for side in sides if changes.touches(side)))
    if as_json_output:
        progress = _progress_json(cli.progress.account(name))
        _print_json(as_json(account_public(service.get_account(name), progress=progress)))
        return
    click.echo(f"Updated {name}: {_endpoints_line(updated)}; state {updated.state}.")
    if shares:
        _say_sharing(cli, name)
    for toggle, value in changes.toggles.items():
        click.echo(f"{TOGGLE_HELP[toggle]}: {'on' if value else 'off'}.")
    if window_days is not None and window_days != before.window_days:
        if window_days > before.window_days:
            click.echo(
                f"Sync window: {before.window_days} -> {window_days} days. The next sync "
                f"fetches the mail of the {window_days - before.window_days} days now covered "
                f"(`correspond sync {name}`, or a running worker within seconds)."
            )
        else:
            click.echo(
                f"Sync window: {before.window_days} -> {window_days} days. Mail already synced "
                "is kept, also what is now older than the window: the window only limits what "
                "is fetched from now on."
            )
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
        click.echo(f"OK: {safe(data['message'])}")
    else:
        click.echo(f"FAILED ({data['problem']}): {safe(data['message'])}", err=True)
    if not as_json_output and data.get("certificate_sha256"):
        click.echo(
            f"Server certificate SHA-256: {safe(data['certificate_sha256'])}", err=not data["ok"]
        )
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
    # CRM actions waiting for the mailbox, and those that failed (never dropped silently).
    outbox = OutboxStore(cli.store.engine).counts_by_account()
    if as_json_output:
        _print_json(
            [
                {
                    **as_json(
                        account_public(s, progress=_progress_json(progress.get(s.account.name)))
                    ),
                    "outbox": outbox.get(s.account.id, {"pending": 0, "failed": 0}),
                }
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
    table.add_column("Outbox")
    for s in summaries:
        a = s.account
        p = progress.get(a.name)
        waiting = outbox.get(a.id, {})
        outbox_cell = (
            ", ".join(f"{n} {what}" for what, n in sorted(waiting.items(), reverse=True) if n)
            or "-"
        )
        table.add_row(
            cell(a.name),
            cell(a.email),
            cell(a.state, _STATE_STYLE.get(a.state, "white")),
            cell(a.state_detail or STATE_MESSAGES.get(a.state, "")),
            str(s.folder_count),
            str(s.selected_folder_count),
            str(s.message_count),
            _backfill_cell(p),
            _rate(p.rate if p else None),
            _eta(p.eta_seconds if p else None),
            _when(a.last_sync_at),
            cell(outbox_cell, "red" if waiting.get("failed") else "white"),
        )
        if p is not None and (all_folders or not p.complete):
            for f in p.folders:
                done = "done" if f.complete else ""
                total = "?" if f.total is None else str(f.total)
                table.add_row(
                    cell("  " + f.name),
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


def _say_sharing(cli: CliContext, name: str) -> None:
    account = cli.service.store.get_account(name)
    team = f"team inbox of {cli.auth.teams.get(account.team_id).name}" if account.team_id else ""
    click.echo(f"{name}: sharing {account.sharing}" + (f"; {safe(team)}" if team else "; personal"))


def _print_account_json(cli: CliContext, name: str) -> None:
    progress = _progress_json(cli.progress.account(name))
    _print_json(as_json(account_public(cli.service.get_account(name), progress=progress)))


@account.command("pause")
@click.argument("name")
@click.option("--json", "as_json_output", is_flag=True, help="Print the account as JSON.")
@pass_cli
def account_pause(cli: CliContext, name: str, as_json_output: bool) -> None:
    """Stop syncing NAME until it is resumed (the worker running it lets go within seconds)."""
    a = cli.leases.pause(name)
    if as_json_output:
        _print_account_json(cli, a.name)
        return
    click.echo(f"Paused {a.name}. Resume with: correspond account resume {a.name}")


@account.command("resume")
@click.argument("name")
@click.option("--json", "as_json_output", is_flag=True, help="Print the account as JSON.")
@pass_cli
def account_resume(cli: CliContext, name: str, as_json_output: bool) -> None:
    """Sync NAME again after a pause (or after fixing what stopped it): a running worker picks
    it up within seconds."""
    before = cli.store.get_account(name).state
    a = cli.leases.resume(name)
    if as_json_output:
        _print_account_json(cli, a.name)
        return
    if before != a.state:
        click.echo(f"Resumed {a.name}: a running worker picks it up (or: correspond sync {a.name})")
    else:
        click.echo(f"{a.name} is not paused or stopped (state {a.state}); nothing to resume.")


def _folder_table(folders: list[FolderWithCounts], title: str) -> Table:
    table = Table(title=Text(title))
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
            cell(f.id),
            cell(name),
            cell(f.role or ""),
            selected,
            cell(public.remote_name),
            cell(" ".join(f.flags)),
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
    help="Also sync these folders (repeat; by display name, or id as 7 or id:7).",
)
@click.option("--only", is_flag=True, help="With --select: sync exactly those folders, no others.")
@click.option(
    "--unselect",
    multiple=True,
    metavar="NAME_OR_ID",
    help="Stop syncing these folders (repeat); mail already synced is kept.",
)
@click.option(
    "--all", "select_all", is_flag=True, help="Sync every folder (Junk and Trash too) and new ones."
)
@click.option("--include-removed", is_flag=True, help="Also show folders gone from the server.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def account_folders(
    cli: CliContext,
    name: str,
    refresh: bool,
    select: tuple[str, ...],
    only: bool,
    unselect: tuple[str, ...],
    select_all: bool,
    include_removed: bool,
    as_json_output: bool,
) -> None:
    """Show NAME's folders (role, selected, name, messages stored, unread, the server's count);
    optionally refresh and choose them.

    A new account syncs INBOX, Sent, Archive and the user's own folders, and new folders as
    they appear, but not Junk, Trash or Drafts (their mail must not reach customer timelines):
    `--select Junk` adds one. `--select` adds to the selection, `--only` makes it exactly the
    folders named, `--unselect` takes folders out."""
    if (select or unselect) and select_all:
        _fail("use either --select/--unselect or --all, not both", 2)
    if only and not select:
        _fail("--only needs the folders to keep: --select NAME --only", 2)
    if only and unselect:
        _fail("--only already drops every folder not named; leave out --unselect", 2)
    service = cli.service
    if refresh:
        with _status(f"Listing folders of {name}...", not as_json_output):
            result = _run(service.refresh_folders(name))
        if not as_json_output:
            click.echo(
                f"Refreshed: {result.added} new, {result.updated} changed, "
                f"{result.removed} removed."
            )
    changed = bool(select or unselect or select_all)
    if changed:
        service.select_folders(
            name,
            all_folders=select_all,
            refs=list(select),
            add=not only and not select_all,
            remove=list(unselect),
        )
    folders = cli.reader.folders_with_counts(name, include_removed=include_removed)
    if as_json_output:
        _print_json([as_json(folder_with_counts_public(f)) for f in folders])
        return
    if changed:
        chosen = [f.folder for f in folders if f.folder.selected and not f.folder.removed]
        left = [
            f.folder
            for f in folders
            if f.folder.selectable and not f.folder.selected and not f.folder.removed
        ]
        click.echo(
            f"Now syncing {len(chosen)} folder(s): "
            + (", ".join(_plain(f.name) for f in chosen) or "none")
            + (f"; not synced: {', '.join(_plain(f.name) for f in left)}" if left else "")
            + "."
        )
    if not folders:
        click.echo(f"No folders known for {name}; run: correspond account folders {name} --refresh")
        return
    mode = service.get_account(name).account.folders_mode
    title = f"Folders of {name} " + (
        "(new folders sync too; Junk, Trash and Drafts only when selected)"
        if mode == "all"
        else "(only the selected folders sync)"
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
    removed = service.remove_account(name)
    kept = f"; {removed.blobs_kept} kept (still used)" if removed.blobs_kept else ""
    click.echo(
        f"Removed account {name} and its synced mail: {removed.blobs_deleted} stored files "
        f"deleted ({_size(removed.bytes_freed)}){kept}."
    )


def _size(n: int) -> str:
    """Bytes for a person: 0 B, 12.3 KB, 373.0 MB (powers of 1000, as file managers show)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


@main.command("doctor")
@click.option("--fix", is_flag=True, help="Remove what is found (orphans, stale temp files).")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def doctor(cli: CliContext, fix: bool, as_json_output: bool) -> None:
    """Check the blob store against the database: orphaned blobs (raw messages and attachments
    no message references, e.g. left by a crash during `account remove`), temporary files
    left by a killed sync, files others can read, referenced blobs that are missing. Reports
    counts and bytes; --fix removes and repairs. Exits 1 when something needs fixing (without
    --fix) or a referenced blob is missing."""
    settings = cli.settings
    with _status("Checking the blob store...", not as_json_output):
        check = check_blobs(
            cli.store.engine,
            BlobStore.from_settings(settings),
            fix=fix,
            orphan_grace_seconds=settings.blob_orphan_grace_seconds,
            temp_stale_seconds=settings.blob_temp_stale_seconds,
        )
    needs_fix = bool(check.orphaned or check.temp_files or check.set_aside or check.not_private)
    if as_json_output:
        data = dataclasses.asdict(check)
        data["blob_dir"] = str(settings.blob_dir)
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


# -- CRM records -------------------------------------------------------------------------------


@main.command("import")
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


@main.command("relink")
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


# -- reading synced mail ---------------------------------------------------------------------

# Terminal control sequences in server or mail text could rewrite the screen or the title
# bar: every such character is printed as a visible escape (correspond.cli_output).
_plain = safe  # one line: subjects, names, flags, folder names, details


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


def _gone_line(m: MessageView) -> str:
    """What a message in no synced folder shows instead of its folders."""
    if m.gone_from_mailbox_at is None:
        return "none"
    why = GONE_WORDS.get(m.gone_reason or "", "not yet known why")
    return f"none: gone from the mailbox since {_date(m.gone_from_mailbox_at)} ({why})"


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
        + (
            ", ".join(f"{_plain(loc.folder_name)} (UID {loc.uid})" for loc in m.locations)
            or _gone_line(m)
        ),
        f"Flags:    {_plain(' '.join(m.flags))}",
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
            click.echo(safe_lines(rendered.html))
    elif m.text is not None:
        click.echo(safe_lines(m.text).rstrip("\n"))
    elif m.html is not None:
        click.echo("(HTML only: use --html)")
    else:
        click.echo("(no text)")


@main.command("info")
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
        if page.next_cursor:
            # A search examines a bounded number of messages per page; older ones remain.
            click.echo(f"Search older messages: --before {page.next_cursor}")
        return
    _print_message_page(page, f"Messages of {safe(account_name)}", "--before")


def _print_message_page(page: MessagePage, title: str, cursor_option: str) -> None:
    """A page of messages as a table, and the option that shows the next page."""
    table = Table(title=Text(title))
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
            cell(_address(m.from_)),
            cell(m.subject),
            "" if m.thread_id is None else str(m.thread_id),
            marks,
        )
    _console().print(table)
    if page.next_cursor:
        click.echo(f"More: {cursor_option} {page.next_cursor}")


@messages.command("search")
@click.argument("query", metavar="QUERY")
@click.option("--account", "account_name", metavar="ACCOUNT", help="Only this account's mail.")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=50, show_default=True)
@click.option("--cursor", metavar="CURSOR", help="The cursor a previous page printed.")
@click.option(
    "--index/--no-index",
    default=True,
    show_default=True,
    help="Index mail not yet indexed before searching.",
)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def messages_search(
    cli: CliContext,
    query: str,
    account_name: str | None,
    limit: int,
    cursor: str | None,
    index: bool,
    as_json_output: bool,
) -> None:
    """Search the mail of every account (or ACCOUNT's): words, "phrases", -word, from:,
    to:, cc:, bcc:, subject:, filename:, has:attachment, is:unread, is:read, is:starred,
    in:FOLDER, before:YYYY-MM-DD, after:YYYY-MM-DD. Newest first."""
    service = SearchService(cli.store.engine, cli.settings)
    if index:
        indexed = service.index.index_all()
        if indexed:
            click.echo(f"Indexed {indexed} message(s) for search.", err=True)
    page = service.search(query, OPERATOR, account=account_name, limit=limit, cursor=cursor)
    if as_json_output:
        _print_json(as_json(message_page_public(page)))
        return
    if not page.items:
        click.echo("No messages.")
        return
    _print_message_page(page, f"Messages matching {safe(query)}", "--cursor")


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


_MESSAGE_ACTIONS: dict[str, str] = {
    "read": "Mark message(s) read: \\Seen on every copy in the mailbox.",
    "unread": "Mark message(s) unread everywhere.",
    "star": "Star message(s): \\Flagged on every copy in the mailbox.",
    "unstar": "Unstar message(s) everywhere.",
    "archive": "Archive message(s) (INBOX to Archive when the account's toggle says so).",
    "unarchive": "Put archived message(s) back in the inbox view.",
    "delete": "Delete message(s) (to the mailbox's Trash when the account's toggle says so).",
    "restore": "Undo the delete of message(s).",
}


def _print_outcome(outcome: ActionOutcome) -> None:
    waiting = [a for a in outcome.actions if a.state == "pending"]
    failed = [a for a in outcome.actions if a.state == "failed"]
    line = f"Message {outcome.message_id}: {outcome.state}, flags {' '.join(outcome.flags) or '-'}"
    if waiting:
        line += f"; {len(waiting)} action(s) waiting for the mailbox"
    click.echo(line)
    for a in failed:
        click.echo(f"  failed: {a.kind}: {safe(a.last_error or '')}", err=True)


def _message_action_command(action: str, help_text: str) -> None:
    @messages.command(action, help=help_text + " The account's syncer applies it.")
    @click.argument("message_ids", metavar="ID...", type=int, nargs=-1, required=True)
    @click.option("--json", "as_json_output", is_flag=True)
    @pass_cli
    def act(cli: CliContext, message_ids: tuple[int, ...], as_json_output: bool) -> None:
        outbox = OutboxStore(cli.store.engine)
        outcomes = [outbox.record(mid, action, user_id=None) for mid in message_ids]  # type: ignore[arg-type]
        if as_json_output:
            _print_json([as_json(outcome_public(o)) for o in outcomes])
            return
        for outcome in outcomes:
            _print_outcome(outcome)


for _action, _help in _MESSAGE_ACTIONS.items():
    _message_action_command(_action, _help)


@messages.command("move")
@click.argument("message_id", metavar="ID", type=int)
@click.option("--folder-id", type=int, required=True, help="The folder to move it to.")
@pass_cli
def messages_move(cli: CliContext, message_id: int, folder_id: int) -> None:
    """Move message ID to another folder of its account (see `account folders`)."""
    outbox = OutboxStore(cli.store.engine)
    _print_outcome(outbox.record(message_id, "move", user_id=None, to_folder_id=folder_id))


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
_FOLDERS_SKIPPED = 6  # the pass finished, but some folder was skipped for an error
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
    """What a running sync shows, read from the store every half second (no engine hook): one
    line per state change (connecting, backfilling, live, sign-in failed with the server's
    words, ...) and the backfill's progress. On a terminal the progress is a bar per selected
    folder and one for the total (done/total, rate, ETA); without one (a log, a pipe) it is a
    plain line per folder that moved, every ``every`` seconds: folder, done/total, rate."""

    def __init__(
        self,
        reader: ProgressReader,
        console: Console,
        *,
        names: list[str] | None,
        bars: bool,
        lines: bool = False,
        every: float = 5.0,
    ) -> None:
        self.reader = reader
        self.console = console
        self.names = names
        bars = bars and console.is_terminal
        self.lines = lines and not bars
        self.every = every
        self._lines_at: float | None = None
        self._printed: dict[tuple[str, int], tuple[int, int | None]] = {}
        self._seen_accounts: set[str] = set()
        self._started_at = datetime.now(UTC)
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

    async def poll(self, *, final: bool = False) -> dict[str, AccountProgress]:
        """Read the store once and update the bars, progress lines and state lines (``final``:
        the progress lines are due now, whatever the interval)."""
        if self.names is None:
            items = await asyncio.to_thread(self.reader.all)
        else:
            items = [await asyncio.to_thread(self.reader.account, n) for n in self.names]
        now = time.monotonic()
        lines_due = self.lines and (
            final or self._lines_at is None or now - self._lines_at >= self.every
        )
        if lines_due:
            self._lines_at = now
        for p in items:
            self._state_line(p)
            self._bars(p)
            if lines_due:
                self._progress_lines(p)
            self.last[p.name] = p
        return self.last

    def _progress_lines(self, p: AccountProgress) -> None:
        """A line for each folder whose backfill moved since its last line. A folder already
        complete before this display started watching, not started yet, or empty says
        nothing."""
        stamp = time.strftime("%H:%M:%S")
        first_look = p.name not in self._seen_accounts
        self._seen_accounts.add(p.name)
        # A pass that began after the display started is news, even if the first look at it
        # comes after it finished.
        watched = p.connected_at is not None and p.connected_at >= self._started_at
        for f in p.folders:
            key = (p.name, f.folder_id)
            now = (f.done, f.total)
            before = self._printed.get(key)
            self._printed[key] = now
            if before == now or f.total is None or (f.complete and f.done == 0):
                continue
            if before is None and f.complete and first_look and not watched:
                continue
            total = "?" if f.total is None else str(f.total)
            rate = "" if not f.rate else f", {f.rate:.1f} msg/s"
            end = ", done" if f.complete else ""
            self.say(
                f"{stamp} {escape(p.name)}: {escape(safe(f.name))} {f.done}/{total}{rate}{end}"
            )

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


def _once_json(cli: CliContext, name: str, result: OnceResult | None, code: int) -> dict[str, Any]:
    """What ``sync --once --json`` prints: per folder the new messages, new locations (copies
    and labels of messages already stored) and the error that made it skip; totals."""
    folders: list[dict[str, Any]] = []
    if result is not None and result.report is not None:
        names = {f.id: f.name for f in cli.store.list_folders(name, include_removed=True)}
        for f in result.report.folders:
            folders.append(
                {
                    "id": f.folder_id,
                    "name": names.get(f.folder_id),
                    "new_messages": f.created,
                    "new_locations": f.linked,
                    "error": f.error,
                }
            )
    account = cli.store.get_account(name) if result is None else result.account
    errors = [f for f in folders if f["error"]]
    return {
        "account": name,
        "ok": code == 0,
        "exit_code": code,
        "state": account.state,
        "state_detail": account.state_detail,
        "seconds": None if result is None or result.report is None else result.report.seconds,
        "folders": folders,
        "totals": {
            "folders": len(folders),
            "new_messages": sum(f["new_messages"] for f in folders),
            "new_locations": sum(f["new_locations"] for f in folders),
            "errors": len(errors),
        },
    }


async def _sync_once(
    cli: CliContext, name: str, processes: int, display: _SyncDisplay
) -> tuple[int, OnceResult | None]:
    """Run one pass with its display; the exit code and how it ended (None: interrupted)."""
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
            await display.poll(final=True)
            try:
                result = job.result()
            except asyncio.CancelledError:
                display.say(f"Interrupted; {escape(name)}'s lease is released.")
                return 130, None
    finally:
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
    a = result.account
    if result.ok and result.report is not None:
        r = result.report
        errors = [f for f in r.folders if f.error]
        folder_names = {f.id: f.name for f in cli.store.list_folders(name, include_removed=True)}
        for f in errors:
            shown = folder_names.get(f.folder_id, f"folder {f.folder_id}")
            display.say(f"[yellow]{escape(safe(shown))} skipped[/]: {escape(safe(f.error))}")
        display.say(
            f"Synced {escape(name)}: {r.created} new messages, {r.linked} more locations "
            f"in {r.seconds:.1f} s."
        )
        if errors:
            display.say(
                f"[yellow]{len(errors)} of {len(r.folders)} folders were skipped for an "
                "error[/] (listed above); they are tried again at the next sync."
            )
            return _FOLDERS_SKIPPED, result
        return 0, result
    display.say(f"[red]{escape(_plain(STATE_MESSAGES.get(a.state, a.state)))}[/]")
    click.echo(f"{name}: {a.state}: {safe(a.state_detail)}", err=True)
    return _STOP_CODES.get(a.state, 4 if a.state == "disconnected" else 1), result


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
                            display.say(
                                f"Waiting: {escape(name)} is being synced by "
                                f"{escape(safe(holder[0]))}."
                            )
                            waiting_said = True
                    await wait_set(stop, _PROGRESS_SECONDS)
                stop.set()
                await main_task
                await display.poll()
        finally:
            stop.set()
            if not main_task.done():
                await main_task
    click.echo(f"Stopped syncing {name}; its lease is released.", err=display.console.stderr)
    return code


_PROGRESS_EVERY_OPTION = click.option(
    "--progress-every",
    type=click.FloatRange(0.1, 3600.0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Without a terminal: a progress line per folder that moved, this often.",
)


@main.command("sync")
@click.argument("account_name", metavar="ACCOUNT")
@click.option("--once", is_flag=True, help="Backfill and catch up, then exit.")
@_PARSE_OPTION
@click.option("--no-progress", is_flag=True, help="State lines only, no progress bars or lines.")
@_PROGRESS_EVERY_OPTION
@click.option(
    "--json",
    "as_json_output",
    is_flag=True,
    help="Print the result as JSON (state and progress lines go to stderr).",
)
@pass_cli
def sync(
    cli: CliContext,
    account_name: str,
    once: bool,
    parse_processes: int,
    no_progress: bool,
    progress_every: float,
    as_json_output: bool,
) -> None:
    """Sync ACCOUNT: backfill the window, then stay live (IDLE) until Ctrl-C; with --once, exit
    when caught up.

    Progress: bars on a terminal; otherwise a line per folder every few seconds. With --once
    the result says, per folder, the new messages and new locations (copies of messages
    already stored) and any error that made it skip the folder. Exit 0 when every folder
    synced; 6 when the pass finished but some folder was skipped for an error; otherwise the
    account's state and the reason, and 4 when the server refused or could not be reached,
    1 for other errors, 130 when interrupted.
    """
    _prepare_account(cli, account_name)
    display = _SyncDisplay(
        cli.progress,
        _console(stderr=as_json_output),
        names=[account_name],
        bars=not no_progress,
        lines=not no_progress,
        every=progress_every,
    )
    if once:
        code, result = _run(_sync_once(cli, account_name, parse_processes, display))
        if as_json_output:
            _print_json(_once_json(cli, account_name, result, code))
    else:
        code = _run(_sync_live(cli, account_name, parse_processes, display))
        if as_json_output:
            _print_account_json(cli, account_name)
    if code:
        sys.exit(code)


@main.command("worker")
@_PARSE_OPTION
@click.option("--max-accounts", type=click.IntRange(1), help="Hold at most this many accounts.")
@click.option("--poll-seconds", type=click.FloatRange(0.1), default=5.0, show_default=True)
@click.option("--lease-seconds", type=click.FloatRange(1.0), default=60.0, show_default=True)
@_PROGRESS_EVERY_OPTION
@pass_cli
def worker(
    cli: CliContext,
    parse_processes: int,
    max_accounts: int | None,
    poll_seconds: float,
    lease_seconds: float,
    progress_every: float,
) -> None:
    """Sync every active account (no API), sharing them with other workers through leases;
    Ctrl-C stops cleanly and releases the leases. Backfill progress is a line per folder that
    moved, every few seconds."""
    limit_malloc_arenas(cli.settings.malloc_arenas)  # before any thread starts
    display = _SyncDisplay(
        cli.progress, _console(), names=None, bars=False, lines=True, every=progress_every
    )
    _configure_logging()

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
                    await wait_set(stop, _WORKER_POLL_SECONDS)
            finally:
                stop.set()
                await main_task
                await display.poll()
        return runner.owner

    owner = _run(work())
    click.echo(f"Worker {owner} stopped; its leases are released.")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _configure_logging() -> None:
    """``worker`` and ``serve``: Correspond's log lines (account state changes, sync errors,
    lease rounds) on standard error, INFO and up, with a timestamp. Once per process."""
    logger = logging.getLogger("correspond")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


_STATE_LOG = logging.getLogger("correspond.sync.state")


def _log_state(name: str, state: str, detail: str) -> None:
    """A runner's state listener for ``serve``: one log line per state it records (any
    thread: logging is thread-safe). Server-supplied text is printed with controls removed."""
    level = logging.WARNING if state in ("auth_failed", "error", "disconnected") else logging.INFO
    _STATE_LOG.log(level, "%s: %s: %s", _plain(name), state, _plain(detail))


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


# -- users and tokens ---------------------------------------------------------------------------


@main.group(cls=_Group)
def users() -> None:
    """People who use the API: create (the first with --admin), list, passwd, disable, enable."""


def _new_password(password_stdin: bool, prompt: str = "Password") -> str:
    """A new user password: the first line of stdin, or asked twice on a terminal; never argv."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("missing: a password on standard input (it was empty)", 2)
    elif _stdin_is_tty():
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
    else:
        _fail("no terminal to ask for the password on: give it with --password-stdin", 2)
    return check_password(password)


def _user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "role": user.role,
        "disabled": user.disabled,
        "has_password": user.has_password,
        "created_at": user.created_at.isoformat(),
    }


@users.command("create")
@click.argument("email")
@click.option("--admin", is_flag=True, help="An admin sees and manages every account.")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def users_create(
    cli: CliContext, email: str, admin: bool, display_name: str, password_stdin: bool,
    as_json_output: bool,
) -> None:  # fmt: skip
    """Create the user EMAIL (asks for the password twice, or --password-stdin).

    The first admin created becomes the owner of every account that has none (accounts
    added before any user existed).
    """
    password = _new_password(password_stdin)
    user, taken = cli.auth.create_user(email, password, admin=admin, display_name=display_name)
    if as_json_output:
        _print_json({**_user_json(user), "accounts_taken": taken})
        return
    click.echo(f"Created {user.role} {user.email}.")
    if taken:
        click.echo(f"{user.email} now owns the {taken} account(s) that had no owner.")
    click.echo(
        f"An API token: correspond tokens create --user {user.email} --name NAME; "
        "or sign in with POST /session."
    )


@users.command("list")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def users_list(cli: CliContext, as_json_output: bool) -> None:
    """Every user: address, role, disabled."""
    found = cli.auth.users.list_users()
    if as_json_output:
        _print_json([_user_json(u) for u in found])
        return
    if not found:
        click.echo("No users yet. Create the first admin: correspond users create EMAIL --admin")
        return
    table = Table(box=None)
    for column in ("ID", "E-mail", "Name", "Role", "Status"):
        table.add_column(column)
    for u in found:
        table.add_row(
            str(u.id), escape(u.email), escape(u.display_name), u.role,
            "disabled" if u.disabled else "active",
        )  # fmt: skip
    _console().print(table)


@users.command("passwd")
@click.argument("email")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
@pass_cli
def users_passwd(cli: CliContext, email: str, password_stdin: bool) -> None:
    """Set a new password for EMAIL (their sign-in sessions end; tokens stay)."""
    cli.auth.users.get_user(email)  # an unknown user fails before the prompt
    user = cli.auth.set_password(email, _new_password(password_stdin, "New password"))
    click.echo(f"Password changed for {user.email}; their sessions were ended.")


@users.command("disable")
@click.argument("email")
@pass_cli
def users_disable(cli: CliContext, email: str) -> None:
    """Refuse EMAIL's sign-ins, sessions and tokens (until enabled again)."""
    user = cli.auth.users.set_disabled(email, True)
    click.echo(f"Disabled {user.email}.")


@users.command("enable")
@click.argument("email")
@pass_cli
def users_enable(cli: CliContext, email: str) -> None:
    """Let a disabled user sign in again (their tokens work again)."""
    user = cli.auth.users.set_disabled(email, False)
    click.echo(f"Enabled {user.email}.")


@main.group(cls=_Group)
def tokens() -> None:
    """Personal API tokens (Authorization: Bearer ...): create, list, revoke."""


def _token_json(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "user": t.user_email,
        "name": t.name,
        "prefix": t.prefix,
        "created_at": t.created_at.isoformat(),
        "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
        "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
    }


@tokens.command("create")
@click.option("--user", "email", required=True, help="Whose token (their e-mail address).")
@click.option("--name", required=True, help="What the token is for, e.g. 'crm-import'.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def tokens_create(cli: CliContext, email: str, name: str, as_json_output: bool) -> None:
    """Create an API token for a user; it is printed once and never shown again."""
    user = cli.auth.users.get_user(email)
    if user.disabled:
        _fail(f"user {user.email} is disabled; enable them first", 2)
    created = cli.auth.create_token(user, name)
    if as_json_output:
        _print_json({**_token_json(created.info), "token": created.token})
        return
    click.echo(created.token)
    click.echo(
        f"Token {created.info.id} ({created.info.name}) for {user.email}: shown this once, "
        "keep it safe. Use it as: Authorization: Bearer <token>",
        err=True,
    )


@tokens.command("list")
@click.option("--user", "email", help="Only this user's tokens.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def tokens_list(cli: CliContext, email: str | None, as_json_output: bool) -> None:
    """API tokens (prefix, user, name, last use), never the tokens themselves."""
    user_id = cli.auth.users.get_user(email).id if email else None
    found = cli.auth.users.list_tokens(user_id)
    if as_json_output:
        _print_json([_token_json(t) for t in found])
        return
    table = Table(box=None)
    for column in ("ID", "Prefix", "User", "Name", "Created", "Last used", "Status"):
        table.add_column(column)
    for t in found:
        table.add_row(
            str(t.id), t.prefix + "...", escape(t.user_email), escape(t.name),
            _when(t.created_at), _when(t.last_used_at),
            "revoked" if t.revoked_at else "active",
        )  # fmt: skip
    _console().print(table)


@tokens.command("revoke")
@click.argument("token_id", type=click.IntRange(1, 2**63 - 1))
@pass_cli
def tokens_revoke(cli: CliContext, token_id: int) -> None:
    """Revoke token TOKEN_ID (see `tokens list`): it stops working at once."""
    t = cli.auth.users.revoke_token(token_id)
    click.echo(f"Revoked token {t.id} ({t.name}) of {t.user_email}.")


@main.group(cls=_Group)
def teams() -> None:
    """Teams of users (admins manage them here): create, list, add-member, remove-member,
    delete. A team's members see its team inboxes, and what its people share with it."""


def _team_json(team: Team) -> dict[str, Any]:
    return {
        "id": team.id,
        "name": team.name,
        "created_at": team.created_at.isoformat(),
        "members": [
            {"id": m.user_id, "email": m.email, "display_name": m.display_name}
            for m in team.members
        ],
        "accounts": list(team.accounts),
    }


def _say_team(team: Team, as_json_output: bool, line: str) -> None:
    if as_json_output:
        _print_json(_team_json(team))
    else:
        click.echo(line)


@teams.command("create")
@click.argument("name")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_create(cli: CliContext, name: str, as_json_output: bool) -> None:
    """Create the team NAME (unique whatever its letter case)."""
    team = cli.auth.teams.create(name)
    _say_team(team, as_json_output, f"Created team {safe(team.name)} (id {team.id}).")


@teams.command("list")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_list(cli: CliContext, as_json_output: bool) -> None:
    """Every team with its members and team inboxes."""
    found = cli.auth.teams.list()
    if as_json_output:
        _print_json([_team_json(t) for t in found])
        return
    if not found:
        click.echo("No teams yet. Create one: correspond teams create NAME")
        return
    table = Table(box=None)
    for column in ("ID", "Name", "Members", "Team inboxes"):
        table.add_column(column)
    for t in found:
        table.add_row(
            str(t.id), cell(t.name), cell(", ".join(m.email for m in t.members) or "-"),
            cell(", ".join(t.accounts) or "-"),
        )  # fmt: skip
    _console().print(table)


@teams.command("add-member")
@click.argument("team")
@click.argument("email")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_add_member(cli: CliContext, team: str, email: str, as_json_output: bool) -> None:
    """Put the user EMAIL in TEAM (a name or an id)."""
    user = cli.auth.users.get_user(email)
    found = cli.auth.teams.add_member(team, user.id)
    _say_team(found, as_json_output, f"{user.email} is in team {safe(found.name)}.")


@teams.command("remove-member")
@click.argument("team")
@click.argument("email")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_remove_member(cli: CliContext, team: str, email: str, as_json_output: bool) -> None:
    """Take the user EMAIL out of TEAM: they stop seeing its inboxes and what it shares."""
    user = cli.auth.users.get_user(email)
    found = cli.auth.teams.remove_member(team, user.id)
    _say_team(found, as_json_output, f"{user.email} left team {safe(found.name)}.")


@teams.command("delete")
@click.argument("team")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_delete(cli: CliContext, team: str, as_json_output: bool) -> None:
    """Delete TEAM; its team inboxes become their owners' personal accounts again."""
    gone = cli.auth.teams.delete(team)
    _say_team(gone, as_json_output, f"Deleted team {safe(gone.name)}.")


@main.group(cls=_Group)
def webhooks() -> None:
    """Webhooks (signed event deliveries to URLs the admin allowed): list, create, delete,
    deliveries."""


def _webhook_store(cli: CliContext) -> WebhookStore:
    return WebhookStore(cli.store.engine, cli.store.secrets)


def _webhook_json(w: Webhook, owners: dict[int, str]) -> dict[str, Any]:
    return {
        "id": w.id,
        "user": owners.get(w.user_id),
        "url": w.url,
        "description": w.description,
        "events": list(w.events),
        "created_at": w.created_at.isoformat(),
    }


def _user_emails(cli: CliContext) -> dict[int, str]:
    return {u.id: u.email for u in cli.auth.users.list_users()}


@webhooks.command("list")
@click.option("--user", "email", help="Only this user's webhooks.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def webhooks_list(cli: CliContext, email: str | None, as_json_output: bool) -> None:
    """Every webhook (or one user's): id, owner, URL, events. Never the secrets."""
    user_id = cli.auth.users.get_user(email).id if email else None
    found = _webhook_store(cli).webhooks(user_id)
    owners = _user_emails(cli)
    if as_json_output:
        _print_json([_webhook_json(w, owners) for w in found])
        return
    if not found:
        click.echo("No webhooks. Create one: correspond webhooks create --user EMAIL URL")
        return
    table = Table(box=None)
    for column in ("ID", "User", "URL", "Events", "Created"):
        table.add_column(column)
    for w in found:
        table.add_row(
            str(w.id), cell(owners.get(w.user_id, "?")), cell(w.url),
            ", ".join(w.events), _when(w.created_at),
        )  # fmt: skip
    _console().print(table)


@webhooks.command("create")
@click.argument("url")
@click.option("--user", "email", required=True, help="Whose webhook (their e-mail address).")
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(list(EVENT_TYPES)),
    help="An event to deliver (repeat it; default: every event).",
)
@click.option("--description", default="", help="What the webhook is for.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def webhooks_create(
    cli: CliContext,
    url: str,
    email: str,
    events: tuple[str, ...],
    description: str,
    as_json_output: bool,
) -> None:
    """Subscribe URL to events for a user: it hears of the accounts that user may see. The
    URL's host must be in CORRESPOND_WEBHOOK_ALLOWED_HOSTS. Prints the signing secret once."""
    user = cli.auth.users.get_user(email)
    if user.disabled:
        _fail(f"user {user.email} is disabled; enable them first", 2)
    settings = cli.settings
    try:
        check_webhook_url(
            url, settings.webhook_allowed_hosts, allow_internal=settings.webhook_allow_internal
        )
    except UnsafeWebhookUrl as exc:
        _fail(f"refused: {exc}", 2)
    webhook, secret = _webhook_store(cli).create(
        user.id, url, list(events or EVENT_TYPES), description
    )
    if as_json_output:
        _print_json({**_webhook_json(webhook, {user.id: user.email}), "secret": secret})
        return
    click.echo(secret)
    click.echo(
        f"Webhook {webhook.id} for {user.email}: {safe(webhook.url)} "
        f"({', '.join(webhook.events)}). The signing secret above is shown this once.",
        err=True,
    )


@webhooks.command("delete")
@click.argument("webhook_id", type=click.IntRange(1, 2**63 - 1))
@pass_cli
def webhooks_delete(cli: CliContext, webhook_id: int) -> None:
    """Delete webhook WEBHOOK_ID and its delivery log: nothing more is sent to it."""
    hooks = _webhook_store(cli)
    webhook = hooks.get(webhook_id, user_id=None)
    hooks.delete(webhook_id, user_id=None)
    click.echo(f"Deleted webhook {webhook.id} ({safe(webhook.url)}).")


@webhooks.command("deliveries")
@click.argument("webhook_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def webhooks_deliveries(cli: CliContext, webhook_id: int, limit: int, as_json_output: bool) -> None:
    """The delivery log of WEBHOOK_ID, newest first: event, status, attempts, last answer."""
    hooks = _webhook_store(cli)
    hooks.get(webhook_id, user_id=None)
    items, _ = hooks.deliveries(webhook_id, limit=limit)
    if as_json_output:
        _print_json([dataclasses.asdict(d) | _iso_times(dataclasses.asdict(d)) for d in items])
        return
    if not items:
        click.echo(f"No deliveries for webhook {webhook_id} yet.")
        return
    table = Table(box=None)
    for column in ("ID", "Event", "Type", "Status", "Attempts", "Last answer", "Created", "Next"):
        table.add_column(column)
    for d in items:
        answer = d.last_error or (str(d.response_status) if d.response_status else "-")
        table.add_row(
            str(d.id), d.event_id, d.event_type, d.status, str(d.attempts), cell(answer),
            _when(d.created_at), _when(d.next_attempt_at) if d.status == "pending" else "-",
        )  # fmt: skip
    _console().print(table)


def _iso_times(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() for k, v in values.items() if isinstance(v, datetime)}


@main.group(cls=_Group)
def notifications() -> None:
    """A user's notifications (new mail in the mailboxes they follow)."""


@notifications.command("list")
@click.option("--user", "email", required=True, help="Whose notifications (e-mail address).")
@click.option("--unread", is_flag=True, help="Only unread ones.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def notifications_list(
    cli: CliContext, email: str, unread: bool, limit: int, as_json_output: bool
) -> None:
    """The user's notifications, newest first, as the API shows them to that user (the
    visibility rule applies: no snippet from an account shared as metadata only)."""
    from correspond.api.notify_schemas import notification_public

    user = cli.auth.users.get_user(email)
    page = NotificationStore(cli.store.engine).page(
        user.id, is_admin=user.is_admin, unread_only=unread, limit=limit
    )
    if as_json_output:
        _print_json(
            {
                "user": user.email,
                "unread_count": page.unread,
                "notifications": [
                    notification_public(n).model_dump(mode="json") for n in page.items
                ],
            }
        )
        return
    if not page.items:
        click.echo(f"No {'unread ' if unread else ''}notifications for {user.email}.")
        return
    table = Table(box=None)
    for column in ("ID", "Account", "From", "Subject", "Date", "Read"):
        table.add_column(column)
    for n in page.items:
        table.add_row(
            str(n.id), cell(n.account), cell(n.from_email or "-"), cell(n.subject),
            _when(n.message_date), "no" if n.read_at is None else _when(n.read_at),
        )  # fmt: skip
    _console().print(table)
    click.echo(f"{page.unread} unread for {user.email}.")


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is only reachable from this machine."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
    if settings.host not in settings.allowed_hosts:
        # The API answers to the name it listens on, besides the configured ones.
        settings = settings.clone(allowed_hosts=[*settings.allowed_hosts, settings.host])
    if not _is_loopback(settings.host):
        click.echo(
            f"Warning: listening on {settings.host}, not loopback: the API (every account's "
            "mail and settings, to whoever holds a token or a session) is reachable from the "
            "network, over plain HTTP unless a TLS proxy is in front. Host names answered: "
            f"{', '.join(settings.allowed_hosts)} (set CORRESPOND_ALLOWED_HOSTS to the names "
            "clients use).",
            err=True,
        )
    _check_port_free(settings.host, settings.port)
    limit_malloc_arenas(settings.malloc_arenas)  # before any thread starts
    store = cli.store  # migrations run here, before the first request
    _configure_logging()
    runner = (
        None
        if no_sync
        else SyncRunner(store, settings, parse_processes=parse_processes, on_state=_log_state)
    )
    app = create_app(settings, store=store, runner=runner)
    what = "API only" if runner is None else f"API and sync (owner {runner.owner})"
    click.echo(f"Serving on http://{settings.host}:{settings.port}: {what}; API docs at /docs")
    if cli.auth.users.count_users() == 0:
        click.echo(
            "No users yet: every API call but /health answers 401. Create the first admin "
            "and a token:\n  correspond users create you@example.com --admin\n"
            "  correspond tokens create --user you@example.com --name cli\n"
            "then call the API with: Authorization: Bearer <token>"
        )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":  # pragma: no cover - `python -m correspond.cli`
    main()
