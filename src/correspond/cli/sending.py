"""``correspond send``: send a message from an account, as the operator (the account's owner's
name on From). It is queued on the outbox like a send from the API; the account's syncer (a
running ``worker``, ``serve`` or ``sync``) sends it after the undo grace, or at ``--at``.
``correspond outbox cancel ID``: take a send back before it goes (undo, or a scheduled send
called off), as ``POST /outbox/{id}/cancel``."""

from __future__ import annotations

import mimetypes
from datetime import datetime
from pathlib import Path

import click

from correspond.api.routes.sending import send_public
from correspond.api.schemas import as_json
from correspond.cli.base import CliContext, _Command, _fail, _Group, _print_json, pass_cli
from correspond.cli.output import safe
from correspond.mail.outgoing import OutgoingAttachment
from correspond.outgoing import Compose, SendService, parse_recipients

__all__ = ["outbox", "send"]

#: Files one send may attach from the command line.
MAX_ATTACHMENTS = 50


@click.command("send", cls=_Command)
@click.option("--from", "account_name", metavar="ACCOUNT", required=True, help="Send as it.")
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
    account_name: str,
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
    """Send a message from an account (queued on its outbox; its syncer sends it)."""
    if len(attach) > MAX_ATTACHMENTS:
        _fail(f"at most {MAX_ATTACHMENTS} attachments", 2)
    files = tuple(
        OutgoingAttachment(
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
    )
    record = SendService(cli.store, cli.settings).send_new(None, account_name, compose)
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
    """The outbox: sends waiting to go (cancel)."""


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
