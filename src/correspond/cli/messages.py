"""``correspond messages`` and ``correspond threads``: read synced mail, save originals and
attachments, and the two-way verbs (read, unread, star, archive, delete, move...)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from correspond.api.message_schemas import (
    GONE_WORDS,
    message_page_public,
    message_public,
    thread_public,
)
from correspond.api.routes.actions import outcome_public
from correspond.api.schemas import as_json
from correspond.cli.base import (
    CliContext,
    _console,
    _fail,
    _Group,
    _plain,
    _print_json,
    pass_cli,
)
from correspond.cli.output import cell, safe, safe_lines
from correspond.errors import ConfigError, NotFound
from correspond.mailbox import MailboxReader
from correspond.search import OPERATOR, SearchService
from correspond.store.message_queries import MAX_PAGE, AddressView, MessagePage, MessageView
from correspond.store.outbox import MAX_BULK, ActionOutcome, OutboxStore

# -- reading synced mail ---------------------------------------------------------------------


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


@click.group(cls=_Group)
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


def _act(
    cli: CliContext,
    message_ids: tuple[int, ...],
    action: str,
    as_json_output: bool,
    folder_id: int | None = None,
) -> None:
    """Record ``action`` on every id the bulk way (``POST /messages/bulk``'s store function:
    one transaction per :data:`MAX_BULK` ids, not one per id) and print each id's result; an
    id that failed (no such message, a folder refused) is said on its own line, and the
    command then exits with that error's code (3 not found, 2 refused) after the others were
    done."""
    outbox = OutboxStore(cli.store.engine)
    ids = list(dict.fromkeys(message_ids))  # an id given twice is acted on once
    results: list[tuple[int, ActionOutcome | NotFound | ConfigError]] = []
    for start in range(0, len(ids), MAX_BULK):
        chunk = ids[start : start + MAX_BULK]
        found = outbox.record_many(chunk, action, user_id=None, to_folder_id=folder_id)  # type: ignore[arg-type]
        results.extend(zip(chunk, found, strict=True))
    failed = [(mid, r) for mid, r in results if not isinstance(r, ActionOutcome)]
    if as_json_output:
        _print_json(
            [
                as_json(outcome_public(r))
                if isinstance(r, ActionOutcome)
                else {"id": mid, "error": str(r)}
                for mid, r in results
            ]
        )
    else:
        for mid, r in results:
            if isinstance(r, ActionOutcome):
                _print_outcome(r)
            else:
                click.echo(f"Message {mid}: {safe(str(r))}", err=True)
    if failed:
        code = 3 if any(isinstance(r, NotFound) for _mid, r in failed) else 2
        done = len(results) - len(failed)
        _fail(f"{action}: {done} of {len(results)} message(s) done, {len(failed)} failed", code)


def _message_action_command(action: str, help_text: str) -> None:
    @messages.command(action, help=help_text + " The account's syncer applies it.")
    @click.argument("message_ids", metavar="ID...", type=int, nargs=-1, required=True)
    @click.option("--json", "as_json_output", is_flag=True)
    @pass_cli
    def act(cli: CliContext, message_ids: tuple[int, ...], as_json_output: bool) -> None:
        _act(cli, message_ids, action, as_json_output)


for _action, _help in _MESSAGE_ACTIONS.items():
    _message_action_command(_action, _help)


@messages.command("move")
@click.argument("message_ids", metavar="ID...", type=int, nargs=-1, required=True)
@click.option("--folder-id", type=int, required=True, help="The folder to move them to.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def messages_move(
    cli: CliContext, message_ids: tuple[int, ...], folder_id: int, as_json_output: bool
) -> None:
    """Move message(s) ID... to another folder of their account (see `account folders`)."""
    _act(cli, message_ids, "move", as_json_output, folder_id)


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


@click.group(cls=_Group)
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
