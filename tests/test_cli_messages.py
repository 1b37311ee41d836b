"""Reading the mirror from the command line (``messages``, ``threads``, ``account folders``), on
SQLite and PostgreSQL, over mail really synced from the private Dovecot."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from correspond.api import create_app
from correspond.cli import base as cli_base
from correspond.cli.output import safe_lines
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.outbox import OutboxStore
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mirror import (
    FILLERS,
    HOSTILE_SUBJECT,
    PDF_BYTES,
    SEEDED_MESSAGES,
    SeededMirror,
    seed_mirror,
)
from helpers import StoreCli, authed_client

TOTAL = SEEDED_MESSAGES


@pytest.fixture
def mirror(
    store: Store, store_settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> SeededMirror:
    return seed_mirror(store, store_settings, dovecot, imap_user)


@pytest.fixture
def cli(
    store_settings: Settings, store_url: str, mirror: SeededMirror, monkeypatch: pytest.MonkeyPatch
) -> StoreCli:
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    return StoreCli(store_settings, store_url)


@pytest.fixture
def api(store: Store, store_settings: Settings, mirror: SeededMirror) -> Iterator[TestClient]:
    with authed_client(create_app(store_settings, store=store)) as c:
        yield c


def ids_by_mid(cli: StoreCli, account: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in cli.json("messages", "list", account, "--limit", "100")["messages"]:
        out[cli.json("messages", "show", str(item["id"]))["message_id"]] = item["id"]
    return out


@pytest.mark.dovecot
def test_account_folders_show_counts(cli: StoreCli, mirror: SeededMirror) -> None:
    folders = cli.json("account", "folders", mirror.account)
    inbox = next(f for f in folders if f["role"] == "inbox")
    assert inbox["counts"] == {
        "messages": TOTAL,
        "locations": TOTAL,
        "unread": TOTAL,
        "server": TOTAL,
    }
    table = cli("account", "folders", mirror.account)
    assert table.exit_code == 0, table.output
    assert "Messages" in table.output and "Unread" in table.output and "Server" in table.output
    row = next(line for line in table.output.splitlines() if " INBOX " in line)
    assert re.search(rf"\b{TOTAL}\b.*\b{TOTAL}\b.*\b{TOTAL}\b", row), row
    sent_row = next(line for line in table.output.splitlines() if " Sent " in line)
    assert re.search(r"\b1\b\s+\S*\s*\b0\b\s+\S*\s*\b1\b", sent_row), sent_row


@pytest.mark.dovecot
def test_messages_list_pages_and_filters(cli: StoreCli, mirror: SeededMirror) -> None:
    seen: list[dict[str, Any]] = []
    args = ["messages", "list", mirror.account, "--limit", "4"]
    page = cli.json(*args)
    seen.extend(page["messages"])
    while page["next_cursor"]:
        page = cli.json(*args, "--before", page["next_cursor"])
        seen.extend(page["messages"])
    assert len(seen) == TOTAL and len({m["id"] for m in seen}) == TOTAL
    assert [m["date"] for m in seen] == sorted((m["date"] for m in seen), reverse=True)

    table = cli(*args)
    assert table.exit_code == 0, table.output
    # Mail text is printed as text: rich markup in a subject is not interpreted.
    assert "[bold]Q3" in table.output and "<img src=x" in table.output
    assert "More: --before " in table.output

    sent = cli.json("messages", "list", mirror.account, "--folder", "Sent")["messages"]
    assert [m["subject"] for m in sent] == ["Re: Project kickoff"]
    in_thread = cli.json("messages", "list", mirror.account, "--thread", str(sent[0]["thread_id"]))[
        "messages"
    ]
    assert [m["subject"] for m in in_thread] == ["Re: Project kickoff", "Project kickoff"]
    found = cli.json("messages", "list", mirror.account, "-q", "filler")["messages"]
    assert len(found) == FILLERS

    bad = cli("messages", "list", mirror.account, "--before", "garbage")
    assert bad.exit_code == 2 and "cursor" in bad.output
    assert cli("messages", "list", "nope").exit_code == 3
    assert cli("messages", "list", mirror.account, "--folder", "Nope").exit_code == 3


@pytest.mark.dovecot
def test_messages_show_text_html_and_json(
    cli: StoreCli, mirror: SeededMirror, api: TestClient
) -> None:
    ids = ids_by_mid(cli, mirror.account)
    reply = cli("messages", "show", str(ids[mirror.reply_mid]))
    assert reply.exit_code == 0, reply.output
    assert "Subject:  Re: Project kickoff" in reply.output
    assert "INBOX (UID" in reply.output and "Sent (UID" in reply.output
    assert "this is Re: Project kickoff." in reply.output

    report_id = str(ids[mirror.html_mid])
    text = cli("messages", "show", report_id)
    assert text.exit_code == 0, text.output
    assert f"Subject:  {HOSTILE_SUBJECT}" in text.output
    assert "Quarterly numbers (text)." in text.output
    assert "application/pdf" in text.output and "cid:logo@example.test" in text.output

    html = cli("messages", "show", report_id, "--html")
    assert html.exit_code == 0, html.output
    headers, body = html.stdout.split("\n\n", 1)
    assert 'From:     "Bob <script>" <bob@example.test>' in headers  # a name, shown as text
    assert "<b>numbers</b>" in body
    for bad in ("<script", "onload", "javascript:", "tracker.example"):
        assert bad not in body.lower()
    assert "1 remote images blocked" in html.stderr

    # The CLI's JSON is the API's JSON.
    assert cli.json("messages", "show", report_id) == api.get(f"/messages/{report_id}").json()
    assert cli("messages", "show", "999999").exit_code == 3


@pytest.mark.dovecot
def test_raw_and_attachment_go_only_where_told(
    cli: StoreCli,
    mirror: SeededMirror,
    api: TestClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = ids_by_mid(cli, mirror.account)
    report_id = str(ids[mirror.html_mid])
    raw = cli("messages", "raw", report_id)
    assert raw.exit_code == 0
    assert raw.stdout_bytes == api.get(f"/messages/{report_id}/raw").content
    assert b"Message-ID: <report@example.test>" in raw.stdout_bytes

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(out_dir)  # a name taken from the mail would land here
    target = out_dir / "copy.eml"
    assert cli("messages", "raw", report_id, "-o", str(target)).exit_code == 0
    assert target.read_bytes() == raw.stdout_bytes
    again = cli("messages", "raw", report_id, "-o", str(target))
    assert again.exit_code == 2 and "--force" in again.output
    assert cli("messages", "raw", report_id, "-o", str(target), "--force").exit_code == 0

    message = cli.json("messages", "show", report_id)
    pdf = next(a for a in message["attachments"] if a["content_type"] == "application/pdf")
    missing_o = cli("messages", "attachment", report_id, str(pdf["id"]))
    assert missing_o.exit_code == 2
    saved = out_dir / "statement.bin"
    result = cli("messages", "attachment", report_id, str(pdf["id"]), "-o", str(saved))
    assert result.exit_code == 0, result.output
    assert saved.read_bytes() == PDF_BYTES
    assert sorted(p.name for p in out_dir.iterdir()) == ["copy.eml", "statement.bin"]
    assert not list(tmp_path.rglob("*.pdf"))

    other = str(ids[mirror.kickoff_mid])
    wrong = cli("messages", "attachment", other, str(pdf["id"]), "-o", str(out_dir / "x"))
    assert wrong.exit_code == 3 and not (out_dir / "x").exists()


@pytest.mark.dovecot
def test_threads_show(cli: StoreCli, mirror: SeededMirror) -> None:
    ids = ids_by_mid(cli, mirror.account)
    thread_id = cli.json("messages", "show", str(ids[mirror.reply_mid]))["thread_id"]
    oldest = cli.json("threads", "show", str(thread_id))
    assert [m["message_id"] for m in oldest["messages"]] == [mirror.kickoff_mid, mirror.reply_mid]
    newest = cli.json("threads", "show", str(thread_id), "--newest-first")
    assert [m["message_id"] for m in newest["messages"]] == [mirror.reply_mid, mirror.kickoff_mid]
    text = cli("threads", "show", str(thread_id))
    assert text.exit_code == 0, text.output
    assert "(2 messages)" in text.output
    first = text.output.index("this is Project kickoff.")
    assert first < text.output.index("this is Re: Project kickoff.")
    assert cli("threads", "show", "999999").exit_code == 3


def test_terminal_controls_are_printed_as_escapes() -> None:
    hostile = "\x1b]0;owned\x07Hi\x9b2J\tthere\u202eevil\x7f\n"
    assert cli_base._plain(hostile) == "\\x1b]0;owned\\x07Hi\\x9b2J\\tthere\\u202eevil\\x7f\\n"
    assert safe_lines(hostile) == "\\x1b]0;owned\\x07Hi\\x9b2J\tthere\\u202eevil\\x7f\n"


@pytest.mark.dovecot
def test_message_actions_and_the_outbox_in_account_list(
    cli: StoreCli, mirror: SeededMirror
) -> None:
    mid = ids_by_mid(cli, mirror.account)[mirror.kickoff_mid]
    done = cli("messages", "read", str(mid))
    assert done.exit_code == 0, done.output
    assert f"Message {mid}: active, flags" in done.output and "\\Seen" in done.output
    assert "1 action(s) waiting for the mailbox" in done.output
    [starred] = cli.json("messages", "star", str(mid))
    assert "\\Flagged" in starred["flags"]
    assert [a["kind"] for a in starred["pending_actions"]] == ["star", "read"]
    listed = next(a for a in cli.json("account", "list") if a["name"] == mirror.account)
    assert listed["outbox"] == {"pending": 2, "failed": 0}
    table = cli("account", "list")
    assert "Outbox" in table.output and "2 pending" in table.output
    refused = cli("messages", "move", str(mid), "--folder-id", "987654321")
    assert refused.exit_code == 2 and "no such folder" in refused.output
    assert cli("messages", "read", "987654321").exit_code != 0


@pytest.mark.dovecot
def test_message_actions_on_many_ids_use_the_bulk_path(
    cli: StoreCli, mirror: SeededMirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many ids: one ``record_many`` (the bulk request's store function), never one ``record``
    per id; each id's result printed, an unknown id said on its own line and in the exit
    code, the others done all the same."""

    def one_at_a_time(*_a: object, **_k: object) -> None:
        raise AssertionError("the CLI recorded an action one id at a time")

    monkeypatch.setattr(OutboxStore, "record", one_at_a_time)
    ids = sorted(ids_by_mid(cli, mirror.account).values())[:3]
    done = cli("messages", "star", *map(str, ids), str(ids[0]))  # an id twice: once
    assert done.exit_code == 0, done.output
    lines = [line for line in done.stdout.splitlines() if line.startswith("Message ")]
    assert [int(line.split()[1].rstrip(":")) for line in lines] == ids
    assert all("\\Flagged" in line for line in lines)

    mixed = cli("messages", "unstar", str(ids[0]), "987654321", str(ids[1]))
    assert mixed.exit_code == 3
    assert "Message 987654321: no message with id 987654321" in mixed.output
    assert "unstar: 2 of 3 message(s) done, 1 failed" in mixed.output
    entries = json.loads(cli("messages", "unstar", str(ids[2]), "987654321", "--json").stdout)
    assert entries[1] == {"id": 987654321, "error": "no message with id 987654321"}
    assert entries[0]["id"] == ids[2] and "\\Flagged" not in entries[0]["flags"]
    for mid in ids:
        assert "\\Flagged" not in cli.json("messages", "show", str(mid))["flags"]

    # move takes many ids too; a folder it cannot go to is refused for each (exit 2).
    refused = cli("messages", "move", str(ids[0]), str(ids[1]), "--folder-id", "987654321")
    assert refused.exit_code == 2
    assert refused.output.count("no such folder") == 2
    folders = cli.json("account", "folders", mirror.account)
    archive = next(f["id"] for f in folders if f["role"] == "archive")
    moved = cli.json("messages", "move", str(ids[0]), str(ids[1]), "--folder-id", str(archive))
    assert [m["id"] for m in moved] == ids[:2]
    assert all(m["pending_actions"][0]["kind"] == "move" for m in moved)
