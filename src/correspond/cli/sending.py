"""``correspond send``: send a message from an account (``--from``, as the operator: the
account's owner's name on From), or as an identity (``--identity``: its owner sends, with its
signature; ``--template`` with ``--contact`` / ``--deal`` fills a template first, and a merge
field without a value stops the send before anything is queued). It is queued on the outbox
like a send from the API; the account's syncer (a running ``worker``, ``serve`` or ``sync``)
sends it after the undo grace, or at ``--at``.
``correspond outbox cancel ID``: take a send back before it goes (undo, or a scheduled send
called off), as ``POST /outbox/{id}/cancel``. ``correspond outbox list [--user EMAIL]``: the
sends not done (scheduled, sending, failed with the server's words, unknown).
``correspond outbox mark-sent ID`` / ``resend ID``: the decision on a send whose fate is
``unknown`` (an outbound-only identity's send cut during DATA: ``sync.sender``), as
``POST /outbox/{id}/mark-sent`` / ``resend``: it went, or send it again (the same message and
Message-ID)."""

from __future__ import annotations

import mimetypes
from datetime import datetime
from pathlib import Path

import click
from rich.table import Table

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
from correspond.composer import RecordMissing
from correspond.errors import NotFound
from correspond.mail.merge import MissingMergeFields
from correspond.mail.outgoing import uploaded
from correspond.outgoing import Compose, SendService, parse_recipients

__all__ = ["outbox", "send"]

#: Files one send may attach from the command line.
MAX_ATTACHMENTS = 50
_ID = click.IntRange(1, 2**63 - 1)


@click.command("send", cls=_Command)
@click.option("--from", "account_name", metavar="ACCOUNT", help="Send as this account.")
@click.option(
    "--identity", "identity_id", type=_ID, metavar="ID", help="Send as this identity (its owner)."
)
@click.option("--template", "template_id", type=_ID, metavar="ID", help="Fill this template.")
@click.option("--contact", "contact_id", type=_ID, metavar="ID", help="The template's contact.")
@click.option("--deal", "deal_id", type=_ID, metavar="ID", help="The template's deal.")
@click.option("--to", multiple=True, metavar="ADDRESS", help="A recipient (repeatable).")
@click.option("--cc", multiple=True, metavar="ADDRESS")
@click.option("--bcc", multiple=True, metavar="ADDRESS", help="Kept on the CRM copy only.")
@click.option("--subject", default="", show_default=False)
@click.option("--text", help="The text body.")
@click.option("--html", help="The HTML body (a text part is derived when --text is not given).")
@click.option(
    "--attach",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file to attach (repeatable).",
)
@click.option(
    "--at",
    "send_at",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]),
    help="Send at this time (UTC unless an offset is given); default: now plus the undo grace.",
)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def send(
    cli: CliContext,
    account_name: str | None,
    identity_id: int | None,
    template_id: int | None,
    contact_id: int | None,
    deal_id: int | None,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    subject: str,
    text: str | None,
    html: str | None,
    attach: tuple[Path, ...],
    send_at: datetime | None,
    as_json_output: bool,
) -> None:
    """Send a message from an account or as an identity (queued on the outbox; the
    account's syncer sends it)."""
    if account_name is None and identity_id is None:
        _fail("say who sends: --from ACCOUNT or --identity ID", 2)
    if template_id is not None and identity_id is None:
        _fail("a template is a user's: give --identity (its owner sends)", 2)
    if len(attach) > MAX_ATTACHMENTS:
        _fail(f"at most {MAX_ATTACHMENTS} attachments", 2)
    files = tuple(
        uploaded(
            path.name,
            mimetypes.guess_type(path.name)[0] or "application/octet-stream",
            path.read_bytes(),
        )
        for path in attach
    )
    compose = Compose(
        to=parse_recipients(to),
        cc=parse_recipients(cc),
        bcc=parse_recipients(bcc),
        subject=subject,
        text=text,
        html=html,
        attachments=files,
        send_at=send_at,
        template_id=template_id,
        contact_id=contact_id,
        deal_id=deal_id,
    )
    service = SendService(cli.store, cli.settings)
    user = None
    if identity_id is not None:
        owner_id = service.composer.identities.owner_of(identity_id)
        user = None if owner_id is None else service.users.get_user_by_id(owner_id)
        if user is None:
            raise NotFound(f"no identity with id {identity_id}")
    try:
        record = service.send_new(user, account_name, compose, identity_id=identity_id)
    except MissingMergeFields as exc:
        _fail(f"not sent: {exc}", 2)
    except RecordMissing as exc:
        _fail(f"not sent: {exc}", 2)
    if as_json_output:
        _print_json(as_json(send_public(record)))
        return
    when = record.send_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    click.echo(
        f"Message {record.message_id} queued ({record.status}, goes at {when}); "
        f"outbox row {record.outbox.id}"
    )
    click.echo(safe(f"To take it back before then: correspond outbox cancel {record.outbox.id}"))


@click.group(cls=_Group)
def outbox() -> None:
    """The outbox: sends not done (list), taken back (cancel), or decided when their fate is
    unknown (mark-sent, resend)."""


@outbox.command("cancel", cls=_Command)
@click.argument("outbox_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def outbox_cancel(cli: CliContext, outbox_id: int, as_json_output: bool) -> None:
    """Take a send back before it goes (undo, or call off a scheduled send). Exit 2 once it
    is being sent (too late), 3 for no such send."""
    record = SendService(cli.store, cli.settings).cancel(outbox_id)
    if as_json_output:
        _print_json(as_json(send_public(record)))
        return
    click.echo(f"Send {outbox_id} cancelled: message {record.message_id} will not go.")


@outbox.command("list", cls=_Command)
@click.option("--user", "email", help="Only this user's sends (e-mail address).")
@click.option("--limit", type=click.IntRange(1, 500), default=100, show_default=True)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def outbox_list(cli: CliContext, email: str | None, limit: int, as_json_output: bool) -> None:
    """Sends not done, the newest first: scheduled, sending, failed (with the server's
    words) and unknown (decide with mark-sent or resend)."""
    user_id = None if email is None else cli.auth.users.get_user(email).id
    found = SendService(cli.store, cli.settings).sends.open_sends(user_id=user_id, limit=limit)
    if as_json_output:
        _print_json(
            [
                {**as_json(send_public(f.record)), "subject": f.subject, "to": list(f.to)}
                for f in found
            ]
        )
        return
    if not found:
        click.echo("No sends waiting, failed or unknown" + (f" for {email}." if email else "."))
        return
    table = Table(box=None)
    for column in ("Outbox", "Message", "Status", "At", "To", "Subject", "Error"):
        table.add_column(column)
    for f in found:
        r = f.record
        table.add_row(
            str(r.outbox.id),
            str(r.message_id),
            cell(r.status, "red" if r.status in ("failed", "unknown") else "white"),
            r.send_at.strftime("%Y-%m-%d %H:%M"),
            cell(", ".join(f.to)),
            cell(f.subject or ""),
            cell(r.error or ""),
        )
    _console().print(table)
    if any(f.record.status == "unknown" for f in found):
        click.echo(
            "An unknown send may have gone: check with its recipients, then "
            "`correspond outbox mark-sent ID` (it went) or `correspond outbox resend ID`."
        )


def _resolve(cli: CliContext, outbox_id: int, *, went: bool, as_json_output: bool) -> None:
    record = SendService(cli.store, cli.settings).sends.resolve_unknown(outbox_id, went=went)
    if as_json_output:
        _print_json(as_json(send_public(record)))
    elif went:
        click.echo(f"Send {outbox_id} marked sent: message {record.message_id} shows as sent.")
    else:
        click.echo(
            f"Send {outbox_id} queued again: message {record.message_id} goes now (the same "
            "Message-ID), when the account's syncer runs."
        )


@outbox.command("mark-sent", cls=_Command)
@click.argument("outbox_id", type=_ID)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def outbox_mark_sent(cli: CliContext, outbox_id: int, as_json_output: bool) -> None:
    """A send whose fate is unknown went: show it as sent (as POST /outbox/{id}/mark-sent).
    Exit 2 for a send in any other status, 3 for no such send."""
    _resolve(cli, outbox_id, went=True, as_json_output=as_json_output)


@outbox.command("resend", cls=_Command)
@click.argument("outbox_id", type=_ID)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def outbox_resend(cli: CliContext, outbox_id: int, as_json_output: bool) -> None:
    """A send whose fate is unknown did not go: send it again now, the same message and
    Message-ID (as POST /outbox/{id}/resend). Exit 2 for a send in any other status, 3 for
    no such send."""
    _resolve(cli, outbox_id, went=False, as_json_output=as_json_output)
