"""Reading the mirror through the JSON API, on SQLite and PostgreSQL.

The data is real: mail is put on the private Dovecot and backfilled by the sync engine
(:func:`correspond.testing.mirror.seed_mirror`); what the API returns is checked against the
server (read with the stdlib ``imaplib``) and against the bytes that were sent.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from correspond.api import create_app
from correspond.api.downloads import content_disposition, download_content_type, safe_filename
from correspond.errors import ConfigError
from correspond.rules.folders import FolderSpec
from correspond.rules.presets import draft_from_preset
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.message_queries import MessageQueries, decode_cursor, encode_cursor
from correspond.store.messages import (
    AttachmentData,
    FolderCheckpointUpdate,
    IncomingMessage,
    MessageData,
    MessageStore,
)
from correspond.sync.engine import default_thread_chooser
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mirror import (
    HOSTILE_SUBJECT,
    PDF_BYTES,
    PNG_BYTES,
    SEEDED_MESSAGES,
    SeededMirror,
    seed_mirror,
)
from helpers import authed_client

TOTAL = SEEDED_MESSAGES


@pytest.fixture
def mirror(
    store: Store, store_settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> SeededMirror:
    return seed_mirror(store, store_settings, dovecot, imap_user)


@pytest.fixture
def client(store: Store, store_settings: Settings, mirror: SeededMirror) -> Iterator[TestClient]:
    with authed_client(create_app(store_settings, store=store)) as c:
        yield c


def by_mid(client: TestClient, mirror: SeededMirror, mid: str) -> dict[str, Any]:
    """The full message whose Message-ID is ``mid`` (found through the list endpoint)."""
    page = client.get(f"/accounts/{mirror.account}/messages", params={"limit": 100}).json()
    for item in page["messages"]:
        full = client.get(f"/messages/{item['id']}").json()
        if full["message_id"] == mid:
            return full
    raise AssertionError(f"{mid} not listed")


def server_raw(server: DovecotServer, user: ImapUser, mid: str) -> bytes:
    """The message's bytes as the server has them (an independent client)."""
    conn = server.imaplib_client(user)
    try:
        conn.select("INBOX", readonly=True)
        typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", mid)
        assert typ == "OK" and data[0], data
        uid = data[0].split()[0].decode()
        typ, data = conn.uid("FETCH", uid, "(BODY.PEEK[])")
        assert typ == "OK"
        return next(part[1] for part in data if isinstance(part, tuple))
    finally:
        with contextlib.suppress(Exception):
            conn.logout()


@pytest.mark.dovecot
def test_folders_carry_counts(
    client: TestClient, mirror: SeededMirror, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    folders = client.get(f"/accounts/{mirror.account}/folders").json()
    by_role = {f["role"]: f for f in folders if f["role"]}
    inbox, sent = by_role["inbox"], by_role["sent"]
    assert inbox["counts"] == {
        "messages": TOTAL,
        "locations": TOTAL,
        "unread": TOTAL,  # delivered mail is unseen
        "server": TOTAL,
    }
    assert sent["counts"] == {"messages": 1, "locations": 1, "unread": 0, "server": 1}
    # Folders with nothing stored still say so, rather than leaving counts out.
    others = [f for f in folders if f["role"] not in ("inbox", "sent")]
    assert others and all(f["counts"]["messages"] == 0 for f in others)
    # The server agrees with what the store says (read with an independent client).
    conn = dovecot.imaplib_client(imap_user)
    try:
        typ, data = conn.select("INBOX", readonly=True)
        assert typ == "OK" and int(data[0]) == inbox["counts"]["locations"]
    finally:
        conn.logout()
    assert client.get("/accounts/nope/folders").status_code == 404


@pytest.mark.dovecot
def test_list_pages_filters_and_search(client: TestClient, mirror: SeededMirror) -> None:
    url = f"/accounts/{mirror.account}/messages"
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["before"] = cursor
        r = client.get(url, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        seen.extend(body["messages"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == -(-TOTAL // 4)
    assert len(seen) == TOTAL and len({m["id"] for m in seen}) == TOTAL
    dates = [m["date"] for m in seen]
    assert dates == sorted(dates, reverse=True), "newest first across pages"
    assert seen[0]["subject"] == HOSTILE_SUBJECT and seen[0]["has_attachments"] is True
    assert seen[0]["from"] == {"name": "Bob <script>", "email": "bob@example.test"}

    sent = client.get(url, params={"folder": "Sent"}).json()["messages"]
    assert [m["subject"] for m in sent] == ["Re: Project kickoff"]
    assert sent[0]["direction"] == "outbound"
    folders = client.get(f"/accounts/{mirror.account}/folders").json()
    sent_id = next(f["id"] for f in folders if f["role"] == "sent")
    by_id = client.get(url, params={"folder": str(sent_id)}).json()["messages"]
    assert [m["id"] for m in by_id] == [m["id"] for m in sent]

    thread_id = sent[0]["thread_id"]
    thread = client.get(url, params={"thread": thread_id}).json()["messages"]
    assert [m["subject"] for m in thread] == ["Re: Project kickoff", "Project kickoff"]

    found = client.get(url, params={"q": "KICKOFF"}).json()["messages"]
    assert {m["subject"] for m in found} == {"Project kickoff", "Re: Project kickoff"}
    assert client.get(url, params={"q": "alice@example"}).json()["messages"]
    # LIKE wildcards in the query are literal text, not patterns.
    assert client.get(url, params={"q": "%"}).json()["messages"] == []
    assert client.get(url, params={"q": "Filler_"}).json()["messages"] == []

    assert client.get(url, params={"before": "not-a-cursor"}).status_code == 400
    assert client.get(url, params={"limit": 0}).status_code == 422
    assert client.get(url, params={"folder": "Nope"}).status_code == 404
    assert client.get("/accounts/nope/messages").status_code == 404


@pytest.mark.dovecot
def test_message_html_is_sanitised(client: TestClient, mirror: SeededMirror) -> None:
    msg = by_mid(client, mirror, mirror.html_mid)
    assert msg["subject"] == HOSTILE_SUBJECT  # data, never markup: JSON escapes it
    assert msg["cc"] == [{"name": "Carol", "email": "carol@example.test"}]
    assert msg["reply_to"] == [{"name": None, "email": "replies@example.test"}]
    assert msg["text"].strip() == "Quarterly numbers (text)."
    html = msg["html"]["html"]
    lowered = html.lower()
    for bad in ("<script", "onload", "onclick", "javascript:", "tracker.example", "<base", "fixed"):
        assert bad not in lowered, bad
    assert "<b>numbers</b>" in html
    assert 'href="https://example.com/report"' in html
    assert msg["html"]["remote_images_blocked"] == 1
    assert msg["html"]["remote_images_allowed"] is False

    # The cid: image points at this message's own inline part, and that URL serves the PNG.
    logo = next(a for a in msg["attachments"] if a["content_id"] == "logo@example.test")
    assert f'src="{logo["url"]}"' in html
    png = client.get(logo["url"])
    assert png.status_code == 200 and png.content == PNG_BYTES

    loaded = client.get(f"/messages/{msg['id']}", params={"remote_images": 1}).json()["html"]
    assert 'src="https://tracker.example/open.gif"' in loaded["html"]
    assert loaded["remote_images_blocked"] == 0 and loaded["remote_images_allowed"] is True
    assert "<script" not in loaded["html"].lower()

    assert client.get("/messages/999999").status_code == 404


@pytest.mark.dovecot
def test_raw_is_the_servers_bytes_as_a_download(
    client: TestClient, mirror: SeededMirror, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    msg = by_mid(client, mirror, mirror.html_mid)
    r = client.get(f"/messages/{msg['id']}/raw")
    assert r.status_code == 200
    assert r.content == server_raw(dovecot, imap_user, mirror.html_mid)
    assert r.headers["content-type"] == "message/rfc822"
    assert r.headers["content-disposition"] == f'attachment; filename="message-{msg["id"]}.eml"'
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]
    assert client.get("/messages/999999/raw").status_code == 404


@pytest.mark.dovecot
def test_attachments_are_downloads_only(client: TestClient, mirror: SeededMirror) -> None:
    msg = by_mid(client, mirror, mirror.html_mid)
    atts = {a["filename"]: a for a in msg["attachments"] if a["filename"]}
    pdf = next(a for name, a in atts.items() if name.endswith(".pdf"))
    r = client.get(pdf["url"])
    assert r.status_code == 200 and r.content == PDF_BYTES
    assert r.headers["content-type"] == "application/pdf"
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=")
    assert "/" not in disposition.split("filename*=")[0] and ".." not in disposition
    encoded = re.search(r"filename\*=UTF-8''(\S+)", disposition)
    assert encoded is not None
    name = unquote(encoded.group(1))
    assert name.endswith(".pdf") and "\u202e" not in name and "/" not in name
    assert r.headers["x-content-type-options"] == "nosniff"

    # Active types are never served as themselves: no HTML or SVG in this origin.
    for filename in ("page.html", "pic.svg"):
        r = client.get(atts[filename]["url"])
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"] == f'attachment; filename="{filename}"'
        assert b"alert" in r.content  # the bytes are intact; only how they are served changes

    # An attachment id is only valid under its own message.
    other = by_mid(client, mirror, mirror.kickoff_mid)
    assert client.get(f"/messages/{other['id']}/attachments/{pdf['id']}").status_code == 404
    assert client.get(f"/messages/{msg['id']}/attachments/999999").status_code == 404


@pytest.mark.dovecot
def test_thread_in_order(client: TestClient, mirror: SeededMirror) -> None:
    reply = by_mid(client, mirror, mirror.reply_mid)
    # One message filed in INBOX and Sent is one message with two locations.
    assert sorted(loc["role"] for loc in reply["locations"]) == ["inbox", "sent"]
    assert all(loc["uid"] >= 1 for loc in reply["locations"])
    tid = reply["thread_id"]
    oldest = client.get(f"/threads/{tid}").json()
    assert oldest["order"] == "oldest_first" and oldest["message_count"] == 2
    assert [m["message_id"] for m in oldest["messages"]] == [mirror.kickoff_mid, mirror.reply_mid]
    assert oldest["messages"][0]["text"].startswith("Hello,")
    newest = client.get(f"/threads/{tid}", params={"order": "newest_first"}).json()
    assert [m["id"] for m in newest["messages"]] == [m["id"] for m in oldest["messages"]][::-1]
    assert client.get(f"/threads/{tid}", params={"order": "sideways"}).status_code == 422
    assert client.get("/threads/999999").status_code == 404


@pytest.mark.dovecot
def test_openapi_lists_read_endpoints(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {
        "/accounts/{name}/messages",
        "/messages/{message_id}",
        "/messages/{message_id}/raw",
        "/messages/{message_id}/attachments/{attachment_id}",
        "/threads/{thread_id}",
    } <= paths


# --- keyset paging on the store, without a server ------------------------------------------------


def test_paging_breaks_date_ties_by_id_and_keeps_undated_mail(store: Store) -> None:
    """Equal dates page by id; undated mail sorts by arrival; no item is skipped or repeated."""
    draft = draft_from_preset("other", name="ties", email="me@example.test", imap_host="h")
    account = store.add_account(draft, "pw")
    store.sync_folders(
        "ties",
        [FolderSpec(b"INBOX", "INBOX", "/", (), "inbox", selectable=True)],
    )
    folder = store.list_folders("ties")[0]
    same = datetime(2026, 1, 1, 9, 30, tzinfo=UTC)
    items = [
        IncomingMessage(
            uid=n + 1,
            # Even ones are seen; "$NotSeen" must not count as \Seen.
            flags=frozenset({"\\Seen", "\\Flagged"} if n % 2 == 0 else {"$NotSeen"}),
            data=MessageData(
                dedupe_key=f"mid:t{n}@example.test",
                message_id=f"t{n}@example.test",
                subject=f"tie {n}",
                normalized_subject=f"tie {n}",
                date=same if n < 5 else None,
            ),
        )
        for n in range(8)
    ]
    MessageStore(store.engine).ingest_batch(
        account.id, folder.id, items, FolderCheckpointUpdate(), chooser=default_thread_chooser
    )
    queries = MessageQueries(store.engine)
    everything = queries.list_messages(account.id, limit=100).items
    assert len(everything) == 8
    # Undated messages arrived now, after 2026-01-01: they come first; ties go by id, newest
    # (highest id) first.
    assert [m.date for m in everything[:3]] == [None, None, None]
    dated = [m.id for m in everything[3:]]
    assert dated == sorted(dated, reverse=True)
    for size in (1, 2, 3):
        paged: list[int] = []
        cursor = None
        while True:
            page = queries.list_messages(account.id, limit=size, before=cursor)
            paged.extend(m.id for m in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert paged == [m.id for m in everything], size
    assert queries.list_messages(account.id, folder_id=folder.id, limit=5).next_cursor
    counts = queries.folder_counts(account.id)[folder.id]
    assert (counts.messages, counts.locations, counts.unread) == (8, 8, 4)
    with pytest.raises(ConfigError):
        queries.list_messages(account.id, limit=0)


def test_message_kept_without_original_or_attachment_body(
    store: Store, store_settings: Settings
) -> None:
    """Above the size limit only headers and text are kept: the API says so instead of failing."""
    draft = draft_from_preset("other", name="big", email="me@example.test", imap_host="h")
    account = store.add_account(draft, "pw")
    store.sync_folders("big", [FolderSpec(b"INBOX", "INBOX", "/", (), "inbox", selectable=True)])
    folder = store.list_folders("big")[0]
    data = MessageData(
        dedupe_key="mid:big@example.test",
        message_id="big@example.test",
        subject="Large",
        text="Only the text was kept.",
        truncated=True,
        attachments=(
            AttachmentData(
                filename="video.mp4", content_type="video/mp4", size=90_000_000, section="2"
            ),
        ),
    )
    MessageStore(store.engine).ingest_batch(
        account.id,
        folder.id,
        [IncomingMessage(uid=1, flags=frozenset(), data=data)],
        FolderCheckpointUpdate(),
        chooser=default_thread_chooser,
    )
    with authed_client(create_app(store_settings, store=store)) as client:
        listed = client.get("/accounts/big/messages").json()["messages"]
        msg = client.get(f"/messages/{listed[0]['id']}").json()
        assert (msg["truncated"], msg["has_raw"], msg["html"]) == (True, False, None)
        (att,) = msg["attachments"]
        assert (att["downloaded"], att["url"], att["size"]) == (False, None, 90_000_000)
        raw = client.get(f"/messages/{msg['id']}/raw")
        assert raw.status_code == 404 and "size limit" in raw.json()["detail"]
        body = client.get(f"/messages/{msg['id']}/attachments/{att['id']}")
        assert body.status_code == 404 and "not downloaded" in body.json()["detail"]


@pytest.mark.parametrize(
    "cursor", ["", "x", encode_cursor(datetime(2026, 1, 1, tzinfo=UTC), 5)[:-3], "bm9waXBl"]
)
def test_bad_cursors_are_input_errors(cursor: str) -> None:
    with pytest.raises(ConfigError):
        decode_cursor(cursor)


def test_cursor_round_trip() -> None:
    when = datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)
    assert decode_cursor(encode_cursor(when, 42)) == (when, 42)


# --- download headers (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("   ", "fallback"),
        (None, "fallback"),
        (".bashrc", "bashrc"),
        ("CON.txt", "_CON.txt"),
        ('x"y<z>|?.txt', "x_y_z___.txt"),
        ("tab\there\x00.txt", "tabhere.txt"),
        ("a" * 300 + ".pdf", "a" * 146 + ".pdf"),
    ],
)
def test_safe_filename(name: str | None, expected: str) -> None:
    assert safe_filename(name, "fallback") == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", 'attachment; filename="report.pdf"'),
        (
            "r\u00e9sum\u00e9.pdf",
            "attachment; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
        ),
        ('a"b;c.txt', "attachment; filename=\"a_b_c.txt\"; filename*=UTF-8''a%22b%3Bc.txt"),
        (
            "\u65e5\u672c.txt",
            "attachment; filename=\".txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt",
        ),
    ],
)
def test_content_disposition_rfc6266(name: str, expected: str) -> None:
    assert content_disposition(name) == expected


@pytest.mark.parametrize(
    ("stored", "served"),
    [
        ("application/pdf", "application/pdf"),
        ("image/png", "image/png"),
        ("text/plain; charset=utf-8", "text/plain"),
        ("TEXT/HTML; charset=utf-8", "application/octet-stream"),
        ("image/svg+xml", "application/octet-stream"),
        ("application/xhtml+xml", "application/octet-stream"),
        ("application/rss+xml", "application/octet-stream"),
        ("text/xml", "application/octet-stream"),
        ("application/javascript", "application/octet-stream"),
        ("multipart/related", "application/octet-stream"),
        ("garbage", "application/octet-stream"),
        ("text/plain\r\nX-Evil: 1", "application/octet-stream"),
        (None, "application/octet-stream"),
    ],
)
def test_download_content_type(stored: str | None, served: str) -> None:
    assert download_content_type(stored) == served
