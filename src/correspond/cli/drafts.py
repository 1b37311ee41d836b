"""``correspond drafts``: a user's drafts saved in the CRM (list, show, delete, send).

The CLI is the operator's, but a draft is its owner's alone: each command names the user with
``--user`` and acts as them, through the same rule as the API (another user's draft is not
found). ``send`` queues the draft as ``POST /drafts/{id}/send`` does; the account's syncer (a
running ``worker``, ``serve`` or ``sync``) sends it after the undo grace.
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from correspond.api.routes.drafts import draft_public
from correspond.api.routes.sending import send_public
from correspond.api.schemas import as_json
from correspond.cli.base import (
    CliContext,
    _Command,
    _console,
    _fail,
    _Group,
    _print_json,
    pass_cli,
)
from correspond.cli.output import cell, safe
from correspond.drafts import DraftService
from correspond.outgoing import SendService
from correspond.store.drafts import Draft
from correspond.store.users import User

__all__ = ["drafts"]

_ID = click.IntRange(1, 2**63 - 1)


def _service(cli: CliContext) -> DraftService:
    return DraftService(cli.store, SendService(cli.store, cli.settings))


def _user(cli: CliContext, email: str) -> User:
    user = cli.auth.users.get_user(email)
    if user.disabled:
        _fail(f"user {user.email} is disabled; enable them first", 2)
    return user


def _json(draft: Draft) -> Any:
    return as_json(draft_public(draft))


@click.group(cls=_Group)
def drafts() -> None:
    """A user's drafts saved in the CRM: list, show, delete, send."""


@drafts.command("list", cls=_Command)
@click.option("--user", "email", required=True, help="Whose drafts (e-mail address).")
@click.option("--limit", type=click.IntRange(1, 500), default=100, show_default=True)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def drafts_list(cli: CliContext, email: str, limit: int, as_json_output: bool) -> None:
    """The user's drafts, the last changed first."""
    found = _service(cli).list(_user(cli, email), limit=limit)
    if as_json_output:
        _print_json([_json(d) for d in found])
        return
    if not found:
        click.echo(f"No drafts for {email}.")
        return
    table = Table(box=None)
    for column in ("ID", "Changed", "To", "Subject", "Files", "Size"):
        table.add_column(column)
    for d in found:
        table.add_row(
            str(d.id), d.updated_at.strftime("%Y-%m-%d %H:%M"), cell(", ".join(d.fields.to)),
            cell(d.fields.subject or ""), str(len(d.files) + len(d.fields.attachments)),
            f"{d.size:,}",
        )  # fmt: skip
    _console().print(table)


@drafts.command("show", cls=_Command)
@click.argument("draft_id", type=_ID)
@click.option("--user", "email", required=True, help="Whose draft (e-mail address).")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def drafts_show(cli: CliContext, draft_id: int, email: str, as_json_output: bool) -> None:
    """One draft: recipients, subject, bodies, files."""
    d = _service(cli).get(_user(cli, email), draft_id)
    if as_json_output:
        _print_json(_json(d))
        return
    f = d.fields
    for label, value in (
        ("To", ", ".join(f.to)),
        ("Cc", ", ".join(f.cc)),
        ("Bcc", ", ".join(f.bcc)),
        ("Subject", f.subject or ""),
        ("Answers", f"message {f.in_reply_to_id} ({f.reply_mode or 'reply'})"
         if f.in_reply_to_id else ""),
    ):  # fmt: skip
        if value:
            click.echo(safe(f"{label}: {value}"))
    for file in d.files:
        inline = f" inline as cid:{file.content_id}" if file.content_id else ""
        click.echo(
            safe(f"File: {file.filename} ({file.content_type}, {file.size:,} bytes){inline}")
        )
    for ref in f.attachments:
        inline = f" inline as cid:{ref.content_id}" if ref.content_id else ""
        click.echo(f"Attachment: stored attachment {ref.attachment_id}{inline}")
    if f.text:
        click.echo("")
        click.echo(safe(f.text))
    elif f.html:
        click.echo("")
        click.echo(safe(f.html))


@drafts.command("delete", cls=_Command)
@click.argument("draft_id", type=_ID)
@click.option("--user", "email", required=True, help="Whose draft (e-mail address).")
@pass_cli
def drafts_delete(cli: CliContext, draft_id: int, email: str) -> None:
    """Delete a draft."""
    _service(cli).delete(_user(cli, email), draft_id)
    click.echo(f"Draft {draft_id} deleted.")


@drafts.command("send", cls=_Command)
@click.argument("draft_id", type=_ID)
@click.option("--user", "email", required=True, help="Whose draft (e-mail address).")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def drafts_send(cli: CliContext, draft_id: int, email: str, as_json_output: bool) -> None:
    """Queue a draft for sending (as the user); the draft is then gone."""
    try:
        record = _service(cli).send(_user(cli, email), draft_id)
    except PermissionError as exc:
        _fail(str(exc), 2)
    if as_json_output:
        _print_json(as_json(send_public(record)))
        return
    when = record.send_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    click.echo(
        f"Draft {draft_id} queued as message {record.message_id} ({record.status}, goes at "
        f"{when}); outbox row {record.outbox.id}"
    )
    click.echo(f"To take it back before then: correspond outbox cancel {record.outbox.id}")
