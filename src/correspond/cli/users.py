"""``correspond users`` and ``correspond tokens``: the people who use the API and their tokens."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from correspond.auth import check_password
from correspond.cli import base
from correspond.cli.base import (
    CliContext,
    _console,
    _fail,
    _Group,
    _print_json,
    _when,
    pass_cli,
)
from correspond.store.users import ApiToken, User

# -- users and tokens ---------------------------------------------------------------------------


@click.group(cls=_Group)
def users() -> None:
    """People who use the API: create (the first with --admin), list, passwd, disable, enable."""


def _new_password(password_stdin: bool, prompt: str = "Password") -> str:
    """A new user password: the first line of stdin, or asked twice on a terminal; never argv."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("missing: a password on standard input (it was empty)", 2)
    elif base._stdin_is_tty():
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


@click.group(cls=_Group)
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
