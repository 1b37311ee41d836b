"""``correspond account``: add, update, test, list, pause, resume and remove mail accounts, and
choose their folders."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from types import EllipsisType
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from correspond.accounts import STATE_MESSAGES, LifecyclePlan, lifecycle_plan, report_to_dict
from correspond.api.message_schemas import (
    folder_with_counts_public,
)
from correspond.api.progress_schemas import ProgressPublic, progress_public
from correspond.api.schemas import account_public, as_json, folder_public
from correspond.cli import base
from correspond.cli.base import (
    CliContext,
    _console,
    _fail,
    _Group,
    _plain,
    _print_json,
    _run,
    _size,
    _status,
    _when,
    pass_cli,
)
from correspond.cli.output import cell, safe
from correspond.errors import (
    ConfigError,
)
from correspond.mailbox import FolderWithCounts
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
from correspond.store import Account
from correspond.store.outbox import OutboxStore
from correspond.store.progress import AccountProgress
from correspond.store.records import TOGGLES, draft_of
from correspond.store.tables import ACCOUNT_SHARING

_FLAG_FOR_FIELD = {"name": "NAME", "email": "--email", "imap_host": "--imap-host"}


@click.group(cls=_Group)
def account() -> None:
    """Add, test, list, pause, disconnect and remove mail accounts; choose their folders."""


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
    interactive = base._stdin_is_tty() and not password_stdin
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
        elif password_stdin and base._stdin_is_tty():
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
    elif password_prompt or (moves and base._stdin_is_tty()):
        if not base._stdin_is_tty():
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
    """Stop syncing NAME until it is resumed: the worker running it closes its connections
    within a second. Its mail stays; CRM actions wait and reach the mailbox after the resume."""
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
    it up at once, catches up from where it stopped, then applies the waiting CRM actions."""
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


def _plan_json(plan: LifecyclePlan) -> dict[str, Any]:
    return {
        "account": plan.account,
        "action": plan.action,
        "dry_run": plan.dry_run,
        "removed": plan.removed,
        "kept": plan.kept,
        "summary": plan.summary,
    }


def _show_plan(plan: LifecyclePlan, as_json_output: bool) -> None:
    if as_json_output:
        _print_json(_plan_json(plan))
    else:
        click.echo(safe(plan.summary))


def _confirm_plan(plan: LifecyclePlan, question: str, yes: bool) -> None:
    """Say what will go (on stderr: standard output is the result's), then ask unless
    ``--yes``; without a terminal to ask on, ``--yes`` is required."""
    click.echo(safe(plan.summary), err=True)
    if yes:
        return
    if not base._stdin_is_tty():
        _fail(f"pass --yes to {plan.action} an account without a terminal to confirm on", 2)
    click.confirm(question, abort=True, err=True)


@account.command("disconnect")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed and kept.")
@click.option("--json", "as_json_output", is_flag=True, help="Print what it removed as JSON.")
@pass_cli
def account_disconnect(
    cli: CliContext, name: str, yes: bool, dry_run: bool, as_json_output: bool
) -> None:
    """Stop syncing NAME and delete its stored password, folders and message locations; its
    messages stay in the CRM (threads, timelines) as history, marked as from a disconnected
    account. Says what it removes and asks first (--yes in scripts). `account reconnect NAME`
    brings it back without duplicates; `account remove NAME` deletes everything instead."""
    service = cli.service
    preview = lifecycle_plan("disconnect", service.footprint(name), dry_run=True)
    if dry_run:
        _show_plan(preview, as_json_output)
        return
    _confirm_plan(preview, f"Disconnect account {name}?", yes)
    done = lifecycle_plan("disconnect", service.disconnect_account(name), dry_run=False)
    _show_plan(done, as_json_output)
    if not as_json_output:
        click.echo(f"Reconnect it with: correspond account reconnect {name}")


@account.command("reconnect")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--json", "as_json_output", is_flag=True, help="Print the account as JSON.")
@pass_cli
def account_reconnect(
    cli: CliContext, name: str, password_stdin: bool, as_json_output: bool
) -> None:
    """Reconnect the disconnected NAME with its password: a sync backfills the account's window
    before now, and the messages the CRM kept are found again (same ids, no duplicates, their
    timeline links intact). The password comes from the prompt or --password-stdin."""
    account_now = cli.store.get_account(name)  # NotFound before asking
    if account_now.disconnected_at is None:
        _fail(
            f"account {name} is not disconnected; to change its password: "
            f"correspond account update {name} --password",
            2,
        )
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("missing: a password on standard input (it was empty)", 2)
    elif base._stdin_is_tty():
        # On stderr: with --json, standard output carries only the JSON.
        password = click.prompt("Password", hide_input=True, err=True)
    else:
        _fail("no terminal to ask for the password on: give it with --password-stdin", 2)
    a = cli.service.reconnect_account(name, password)
    if as_json_output:
        _print_account_json(cli, a.name)
        return
    click.echo(
        f"Reconnected {a.name}: a running worker backfills the last {a.window_days} days "
        f"(or: correspond sync {a.name})."
    )


@account.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json_output", is_flag=True, help="With --dry-run: print it as JSON.")
@pass_cli
def account_remove(
    cli: CliContext, name: str, yes: bool, dry_run: bool, as_json_output: bool
) -> None:
    """Delete account NAME and everything synced for it, its CRM history included (the mailbox
    itself is untouched). Says what it removes and asks first (--yes in scripts). To stop
    syncing and keep the history: `account disconnect NAME`."""
    service = cli.service
    preview = lifecycle_plan("remove", service.footprint(name), dry_run=True)
    if dry_run:
        _show_plan(preview, as_json_output)
        return
    if as_json_output:
        _fail("--json goes with --dry-run (a removal prints one line)", 2)
    _confirm_plan(preview, f"Remove account {name} and all its synced data?", yes)
    removed = service.remove_account(name)
    kept = f"; {removed.blobs_kept} kept (still used)" if removed.blobs_kept else ""
    click.echo(
        f"Removed account {name} and its synced mail: {removed.blobs_deleted} stored files "
        f"deleted ({_size(removed.bytes_freed)}){kept}."
    )
