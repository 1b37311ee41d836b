"""``correspond identities`` and ``correspond templates``: what a user composes with.

The CLI is the operator's (it needs no sign-in), but identities and templates are a user's:
each command names the user with ``--user`` and acts as them, through the same rule as the API
(another user's identity or template is not found). Passwords come from a hidden prompt or
``--password-stdin``, never from argv; an SMTP identity is tested before it is saved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from correspond.cli import base
from correspond.cli.base import CliContext, _console, _fail, _Group, _print_json, _run, pass_cli
from correspond.cli.output import cell, safe, safe_lines
from correspond.composer import ComposeService, IdentityRefused, RecordMissing
from correspond.mail.merge import MissingMergeFields
from correspond.store.compose import Identity, Template, TemplateFields
from correspond.store.users import User

_ID = click.IntRange(1, 2**63 - 1)


def _service(cli: CliContext) -> ComposeService:
    return ComposeService(cli.store, cli.settings)


def _user(cli: CliContext, email: str) -> User:
    user = cli.auth.users.get_user(email)
    if user.disabled:
        _fail(f"user {user.email} is disabled; enable them first", 2)
    return user


def _password(password_stdin: bool, *, required: bool) -> str | None:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("missing: a password on standard input (it was empty)", 2)
        return password
    if not required:
        return None
    if not base._stdin_is_tty():
        _fail("the SMTP password is needed: give it on a terminal or with --password-stdin", 2)
    return str(click.prompt("SMTP password", hide_input=True, err=True))


def _identity_json(i: Identity) -> dict[str, Any]:
    return {
        "id": i.id,
        "kind": i.kind,
        "account": i.account_name,
        "address": i.address,
        "display_name": i.display_name,
        "signature": i.signature,
        "is_default": i.is_default,
        "smtp": {
            "host": i.smtp_host,
            "port": i.smtp_port,
            "security": i.smtp_security,
            "username": i.smtp_username,
        },
        "has_password": i.has_secret,
    }


def _say_identity(identity: Identity, as_json_output: bool, line: str) -> None:
    if as_json_output:
        _print_json(_identity_json(identity))
    else:
        click.echo(line)


def _refused(exc: IdentityRefused) -> None:
    _fail(f"not saved: {exc.report.message}", 1)


@click.group(cls=_Group)
def identities() -> None:
    """A user's outbound identities (the addresses they send as): list, add-smtp, add-alias,
    update, default, delete. Every account a user may send from is one."""


@identities.command("list")
@click.option("--user", "email", required=True, help="Whose identities (e-mail address).")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def identities_list(cli: CliContext, email: str, as_json_output: bool) -> None:
    """The user's identities, the default first. Never a password."""
    found = _service(cli).identities.list(_user(cli, email))
    if as_json_output:
        _print_json([_identity_json(i) for i in found])
        return
    if not found:
        click.echo(f"No identities for {email}: add an account or an SMTP identity.")
        return
    table = Table(box=None)
    for column in ("ID", "Default", "Address", "Name", "Sends through", "Password"):
        table.add_column(column)
    for i in found:
        through = (
            f"account {i.account_name}"
            if i.kind == "account"
            else f"{i.smtp_host}:{i.smtp_port} ({i.smtp_security})"
        )
        table.add_row(
            str(i.id), "yes" if i.is_default else "", cell(i.address), cell(i.display_name),
            cell(through), "yes" if i.has_secret else "no",
        )  # fmt: skip
    _console().print(table)


@identities.command("add-smtp")
@click.option("--user", "email", required=True, help="Whose identity (e-mail address).")
@click.option("--address", required=True, help="The address to send as.")
@click.option("--name", "display_name", default="", help="The display name.")
@click.option("--host", required=True, help="The SMTP server.")
@click.option("--port", type=click.IntRange(1, 65535), help="Default: 587 starttls, 465 tls.")
@click.option(
    "--security", type=click.Choice(["starttls", "tls"]), default="starttls", show_default=True
)
@click.option("--username", help="The SMTP user name (default: the address).")
@click.option("--signature", default="", help="Plain text, added below messages.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default identity.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def identities_add_smtp(
    cli: CliContext,
    email: str,
    address: str,
    display_name: str,
    host: str,
    port: int | None,
    security: str,
    username: str | None,
    signature: str,
    make_default: bool,
    password_stdin: bool,
    as_json_output: bool,
) -> None:
    """Add an outbound-only SMTP identity; its settings are tested first (TLS or STARTTLS,
    then AUTH) and nothing is saved when the test fails (exit 1, saying why)."""
    user = _user(cli, email)
    password = _password(password_stdin, required=True)
    assert password is not None
    try:
        identity = _run(
            _service(cli).create_smtp_identity(
                user,
                address=address,
                display_name=display_name,
                host=host,
                port=port,
                security=security,
                username=username,
                password=password,
                signature=signature,
                make_default=make_default,
            )
        )
    except IdentityRefused as exc:
        _refused(exc)
    _say_identity(
        identity, as_json_output, f"Added identity {identity.id}: {safe(identity.address)}."
    )


@identities.command("add-alias")
@click.option("--user", "email", required=True, help="Whose identity (e-mail address).")
@click.option("--account", "account_name", required=True, help="The account it sends through.")
@click.option("--address", required=True, help="The alias address to send as.")
@click.option("--name", "display_name", default="", help="The display name.")
@click.option("--signature", default="", help="Plain text, added below messages.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default identity.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def identities_add_alias(
    cli: CliContext,
    email: str,
    account_name: str,
    address: str,
    display_name: str,
    signature: str,
    make_default: bool,
    as_json_output: bool,
) -> None:
    """Send as ADDRESS through an account the user may send from (theirs, or a team inbox)."""
    identity = _service(cli).identities.create_for_account(
        _user(cli, email),
        account_name=account_name,
        address=address,
        display_name=display_name,
        signature=signature,
        make_default=make_default,
    )
    _say_identity(
        identity, as_json_output, f"Added identity {identity.id}: {safe(identity.address)}."
    )


@identities.command("update")
@click.argument("identity_id", type=_ID)
@click.option("--user", "email", required=True, help="Whose identity (e-mail address).")
@click.option("--name", "display_name", help="The display name.")
@click.option("--signature", help="Plain text, added below messages.")
@click.option("--host", help="The SMTP server.")
@click.option("--port", type=click.IntRange(1, 65535))
@click.option("--security", type=click.Choice(["starttls", "tls"]))
@click.option("--username", help="The SMTP user name.")
@click.option("--password", "password_prompt", is_flag=True, help="Ask for a new password.")
@click.option("--password-stdin", is_flag=True, help="Read a new password from standard input.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def identities_update(
    cli: CliContext,
    identity_id: int,
    email: str,
    display_name: str | None,
    signature: str | None,
    host: str | None,
    port: int | None,
    security: str | None,
    username: str | None,
    password_prompt: bool,
    password_stdin: bool,
    as_json_output: bool,
) -> None:
    """Change an identity. New SMTP settings without a password drop the stored one (it was
    entered for the old server); a new password is tested before it is saved."""
    user = _user(cli, email)
    password = _password(password_stdin, required=password_prompt)
    try:
        identity = _run(
            _service(cli).update_identity(
                user,
                identity_id,
                display_name=display_name,
                signature=signature,
                host=host,
                port=port,
                security=security,
                username=username,
                password=password,
            )
        )
    except IdentityRefused as exc:
        _refused(exc)
    note = "" if identity.has_secret else " It has no password now: set one with --password."
    _say_identity(identity, as_json_output, f"Updated identity {identity.id}.{note}")


@identities.command("default")
@click.argument("identity_id", type=_ID)
@click.option("--user", "email", required=True, help="Whose identity (e-mail address).")
@pass_cli
def identities_default(cli: CliContext, identity_id: int, email: str) -> None:
    """Mark IDENTITY_ID the user's default (preselected in the composer); no other is."""
    identity = _service(cli).identities.set_default(_user(cli, email), identity_id)
    click.echo(f"{safe(identity.address)} is the default identity of {email}.")


@identities.command("delete")
@click.argument("identity_id", type=_ID)
@click.option("--user", "email", required=True, help="Whose identity (e-mail address).")
@pass_cli
def identities_delete(cli: CliContext, identity_id: int, email: str) -> None:
    """Remove an SMTP identity or an alias (an account's own address stays)."""
    _service(cli).identities.delete(_user(cli, email), identity_id)
    click.echo(f"Deleted identity {identity_id}.")


# -- templates -----------------------------------------------------------------------------


def _template_json(t: Template) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "subject": t.subject,
        "text": t.text,
        "html": t.html,
        "team_id": t.team_id,
        "owner_id": t.owner_id,
        "can_edit": t.can_edit,
    }


def _body(text: str | None, path: Path | None, what: str) -> str | None:
    if text is not None and path is not None:
        _fail(f"give --{what} or --{what}-file, not both", 2)
    if path is not None:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read {path}: {exc}", 2)
    return text


def _team_id(cli: CliContext, team: str | None) -> int | None:
    if team is None:
        return None
    if team.lower() in ("none", "personal"):
        return 0
    return cli.auth.teams.get(team).id


@click.group(cls=_Group)
def templates() -> None:
    """Message templates with merge fields such as {{contact.first_name}}: list, create,
    update, delete, render. Personal, or shared with one of the owner's teams."""


@templates.command("list")
@click.option("--user", "email", required=True, help="As whom (their own and their teams').")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def templates_list(cli: CliContext, email: str, as_json_output: bool) -> None:
    """The templates the user sees (an admin: all)."""
    found = _service(cli).templates.list(_user(cli, email))
    if as_json_output:
        _print_json([_template_json(t) for t in found])
        return
    if not found:
        click.echo("No templates. Create one: correspond templates create --user EMAIL --name N")
        return
    table = Table(box=None)
    for column in ("ID", "Name", "Subject", "Shared with team", "Can edit"):
        table.add_column(column)
    for t in found:
        table.add_row(
            str(t.id), cell(t.name), cell(t.subject), str(t.team_id or "-"),
            "yes" if t.can_edit else "no",
        )  # fmt: skip
    _console().print(table)


_PATH = click.Path(dir_okay=False, path_type=Path)


@templates.command("create")
@click.option("--user", "email", required=True, help="The owner (e-mail address).")
@click.option("--name", required=True)
@click.option("--subject", default="")
@click.option("--text", help="The text body.")
@click.option("--text-file", type=_PATH, help="Read the text body from a file.")
@click.option("--html", help="The HTML body.")
@click.option("--html-file", type=_PATH, help="Read the HTML body from a file.")
@click.option("--team", help="Share with this team (a name or id the owner is in).")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def templates_create(
    cli: CliContext,
    email: str,
    name: str,
    subject: str,
    text: str | None,
    text_file: Path | None,
    html: str | None,
    html_file: Path | None,
    team: str | None,
    as_json_output: bool,
) -> None:
    """Create a template; a merge field that is not documented is refused, naming it."""
    fields = TemplateFields(
        name=name,
        subject=subject,
        text=_body(text, text_file, "text"),
        html=_body(html, html_file, "html"),
        team_id=_team_id(cli, team) or None,
    )
    made = _service(cli).templates.create(_user(cli, email), fields)
    if as_json_output:
        _print_json(_template_json(made))
    else:
        click.echo(f"Created template {made.id} ({safe(made.name)}).")


@templates.command("update")
@click.argument("template_id", type=_ID)
@click.option("--user", "email", required=True, help="As whom (its owner, or an admin).")
@click.option("--name")
@click.option("--subject")
@click.option("--text")
@click.option("--text-file", type=_PATH)
@click.option("--html")
@click.option("--html-file", type=_PATH)
@click.option("--team", help="Share with this team; 'personal' to stop sharing.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def templates_update(
    cli: CliContext,
    template_id: int,
    email: str,
    name: str | None,
    subject: str | None,
    text: str | None,
    text_file: Path | None,
    html: str | None,
    html_file: Path | None,
    team: str | None,
    as_json_output: bool,
) -> None:
    """Change the fields given."""
    fields = TemplateFields(
        name=name,
        subject=subject,
        text=_body(text, text_file, "text"),
        html=_body(html, html_file, "html"),
        team_id=_team_id(cli, team),
    )
    changed = _service(cli).templates.update(_user(cli, email), template_id, fields)
    if as_json_output:
        _print_json(_template_json(changed))
    else:
        click.echo(f"Updated template {changed.id} ({safe(changed.name)}).")


@templates.command("delete")
@click.argument("template_id", type=_ID)
@click.option("--user", "email", required=True, help="As whom (its owner, or an admin).")
@pass_cli
def templates_delete(cli: CliContext, template_id: int, email: str) -> None:
    _service(cli).templates.delete(_user(cli, email), template_id)
    click.echo(f"Deleted template {template_id}.")


@templates.command("render")
@click.argument("template_id", type=_ID)
@click.option("--user", "email", required=True, help="As whom (the user sending).")
@click.option("--contact", "contact_id", type=_ID)
@click.option("--company", "company_id", type=_ID)
@click.option("--deal", "deal_id", type=_ID)
@click.option("--identity", "identity_id", type=_ID, help="Default: the user's default.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def templates_render(
    cli: CliContext,
    template_id: int,
    email: str,
    contact_id: int | None,
    company_id: int | None,
    deal_id: int | None,
    identity_id: int | None,
    as_json_output: bool,
) -> None:
    """Preview the template filled with the records' fields. A field without a value is an
    error naming it (exit 2), never a blank."""
    user = _user(cli, email)
    try:
        rendered = _service(cli).render(
            user,
            template_id,
            contact_id=contact_id,
            company_id=company_id,
            deal_id=deal_id,
            identity_id=identity_id,
            user_name=user.display_name,
            user_email=user.email,
        )
    except (MissingMergeFields, RecordMissing) as exc:
        _fail(str(exc), 2)
    if as_json_output:
        _print_json({"subject": rendered.subject, "text": rendered.text, "html": rendered.html})
        return
    click.echo(f"Subject: {safe(rendered.subject)}")
    if rendered.text is not None:
        click.echo("")
        click.echo(safe_lines(rendered.text))
    if rendered.html is not None:
        click.echo("\n--- HTML ---")
        click.echo(safe_lines(rendered.html))
