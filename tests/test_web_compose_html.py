"""The web composer's HTML body, inline images and drafts (correspond.web.composer,
correspond.web.compose_drafts) in a real Chromium over the private Postfix and Dovecot, as
tests/test_web_composer.py (its fixtures).

Journeys: bold text, a link, a bulleted list and an inline image typed and chosen in the
editor, sent: the recipient's Dovecot INBOX holds a multipart/alternative with a text part and
the HTML in multipart/related with the image, its bytes intact, by cid:; a hostile body (the
XSS corpus' script, onerror, javascript: link) sanitised before sending; a draft saved (with an
inline image and a file), autosaved, listed, reopened, sent (and gone), another deleted. Over
HTTP: the autosave endpoint and the delete form need their CSRF token; another user's draft is
a 404 everywhere.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from correspond.settings import Settings
from correspond.store import Store
from correspond.store.draft_tables import DraftRow
from correspond.store.message_tables import MessageRow
from correspond.store.sends import SendStore
from correspond.testing.dovecot import DovecotServer
from correspond.testing.mirror import SeededMirror
from correspond.testing.postfix import PostfixServer
from test_web import ADMIN, Watched, _first_run, _signed_in
from test_web import app as app  # fixtures, used by name
from test_web import browser as browser
from test_web import mirror as mirror
from test_web import served as served
from test_web import store_url as store_url  # SQLite only: conftest_store.sqlite_store_url
from test_web import web as web
from test_web_composer import SEND_LIMIT, _inbox_subjects, _outbox_id, _send_now
from test_web_composer import settings as settings
from test_web_composer import via_postfix as via_postfix
from web_screenshots import screenshot_dir

pytestmark = pytest.mark.dovecot

XSS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "xss"


def _png(width: int = 12, height: int = 9) -> bytes:
    """A real PNG (RGB, every pixel different), so the bytes that arrive can be compared."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(
        b"\x00"
        + b"".join(bytes((x * 20 % 256, y * 27 % 256, x * y * 7 % 256)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _type_rich_body(web: Watched, image: Path) -> None:
    """Bold (Ctrl+B), a link, a bulleted item and an inline image, typed into the editor."""
    page = web.page
    assert page.locator("#field-text").is_hidden() and page.locator("#editor").is_visible()
    page.click("#editor")
    page.keyboard.type("Hello ")
    page.keyboard.press("Control+b")
    page.keyboard.type("bold words")
    page.keyboard.press("Control+b")
    page.keyboard.type(" and ")
    page.click("#link-button")
    page.fill("#link-url", "https://example.com/deal")
    page.press("#link-url", "Enter")
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    page.click("button[data-command=insertUnorderedList]")
    page.keyboard.type("first point")
    page.set_input_files("#inline-image", str(image))
    page.locator("#editor img").wait_for()
    assert page.locator("#editor img").evaluate("i => i.naturalWidth") == 12
    assert "Inline images:" in page.inner_text("#inline-size")
    assert "not saved" not in page.inner_text("#compose-form").lower()


def _arrived(dovecot: DovecotServer, user: object, subject: str) -> list:  # type: ignore[type-arg]
    return [m for m in _inbox_subjects(dovecot, user) if m["Subject"] == subject]  # type: ignore[arg-type]


def test_bold_link_list_and_inline_image_arrive_as_alternative_and_related(
    web: Watched,
    store: Store,
    settings: Settings,
    mirror: SeededMirror,
    dovecot: DovecotServer,
    via_postfix: PostfixServer,
    tmp_path: Path,
) -> None:
    page = web.page
    _first_run(web)
    contact = dovecot.add_user()
    image = tmp_path / "chart.png"
    png = _png()
    image.write_bytes(png)
    page.goto("/compose")
    page.fill("#field-to", contact.address)
    page.fill("#field-subject", "Rich from the browser")
    _type_rich_body(web, image)
    # A second image pasted (a clipboard holding an image file).
    pasted = _png(5, 3)
    page.evaluate(
        """bytes => {
            const file = new File([new Uint8Array(bytes)], "pasted.png", {type: "image/png"});
            const data = new DataTransfer();
            data.items.add(file);
            const editor = document.getElementById("editor");
            editor.dispatchEvent(new ClipboardEvent("paste", {
                clipboardData: data, bubbles: true, cancelable: true}));
        }""",
        list(pasted),
    )
    page.locator("#editor img[alt='pasted.png']").wait_for()
    directory = screenshot_dir()  # the editor with its content, for a reviewer
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / "composer-html.png"), full_page=True)
    page.click("#send-button")
    page.wait_for_url(re.compile(r"/conversation/\d+\?sent=\d+$"))
    _send_now(store, settings, mirror, _outbox_id(page.url))
    via_postfix.wait_queue_empty()
    got = _arrived(dovecot, contact, "Rich from the browser")
    assert len(got) == 1
    message = got[0]
    assert message.get_content_type() == "multipart/alternative"
    plain, related = message.get_payload()
    assert plain.get_content_type() == "text/plain"
    text = plain.get_content()
    assert "bold words" in text and "first point" in text and "<b>" not in text
    assert related.get_content_type() == "multipart/related"
    html_part, picture, second = related.get_payload()
    html = html_part.get_content()
    assert re.search(r"<(b|strong)>bold words</(b|strong)>", html), html
    assert 'href="https://example.com/deal"' in html
    assert "<ul>" in html and "first point" in html
    cid = re.search(r'src="cid:([^"]+)"', html)
    assert cid is not None, html
    assert picture["Content-ID"] == f"<{cid.group(1)}>"
    assert picture.get_content_type() == "image/png"
    assert picture.get_content() == png  # the bytes intact
    assert second.get_filename() == "pasted.png" and second.get_content() == pasted
    assert f'src="cid:{second["Content-ID"].strip("<>")}"' in html
    assert "data:" not in html  # the editor's preview did not travel
    assert not web.dialogs and not web.remote


def test_a_hostile_body_is_sanitised_before_it_is_sent(
    web: Watched,
    store: Store,
    settings: Settings,
    mirror: SeededMirror,
    dovecot: DovecotServer,
    via_postfix: PostfixServer,
) -> None:
    page = web.page
    _first_run(web)
    contact = dovecot.add_user()
    hostile = "".join(
        (XSS / name).read_text()
        for name in ("img-onerror.html", "a-javascript-url.html", "body-onload.html")
    )
    hostile += "<script>alert(2)</script><p>Kind <b>regards</b></p>"
    page.goto("/compose")
    page.fill("#field-to", contact.address)
    page.fill("#field-subject", "Hostile body")
    # What a paste or a crafted post could put in the editor: the server must clean it.
    page.evaluate(
        "html => { const e = document.getElementById('editor'); e.innerHTML = html; }", hostile
    )
    page.click("#send-button")
    page.wait_for_url(re.compile(r"/conversation/\d+\?sent=\d+$"))
    _send_now(store, settings, mirror, _outbox_id(page.url))
    via_postfix.wait_queue_empty()
    got = _arrived(dovecot, contact, "Hostile body")
    assert len(got) == 1
    html_part = got[0].get_body(("html",))
    assert html_part is not None
    html = html_part.get_content().lower()
    for bad in ("<script", "onerror", "onload", "javascript:", "alert("):
        assert bad not in html, (bad, html)
    assert "<b>regards</b>" in html and "open invoice" in html
    assert got[0].get_body(("plain",)) is not None
    assert not web.dialogs and not web.remote


def test_draft_saved_reopened_autosaved_sent_and_another_deleted(
    web: Watched,
    store: Store,
    settings: Settings,
    mirror: SeededMirror,
    dovecot: DovecotServer,
    via_postfix: PostfixServer,
    tmp_path: Path,
) -> None:
    page = web.page
    _first_run(web)
    contact = dovecot.add_user()
    image = tmp_path / "logo.png"
    png = _png(7, 5)
    image.write_bytes(png)
    notes = tmp_path / "notes.txt"
    notes.write_text("draft notes\n")
    page.goto("/compose")
    page.fill("#field-to", contact.address)
    page.fill("#field-subject", "Draft to finish")
    page.click("#editor")
    page.keyboard.type("First ")
    page.keyboard.press("Control+b")
    page.keyboard.type("draft")
    page.keyboard.press("Control+b")
    page.set_input_files("#inline-image", str(image))
    page.locator("#editor img").wait_for()
    page.set_input_files("#field-attachments", str(notes))
    page.click("#save-draft")
    page.wait_for_url(re.compile(r"/compose\?draft=\d+&saved=1$"))
    draft_id = int(re.search(r"draft=(\d+)", page.url).group(1))  # type: ignore[union-attr]
    assert "Draft saved" in page.inner_text("#compose-notice")
    # Reopened: the fields, the bold text, the image shown from the draft's file, the file.
    assert page.input_value("#field-to") == contact.address
    assert page.input_value("#field-subject") == "Draft to finish"
    assert page.locator("#editor b, #editor strong").inner_text() == "draft"
    shown = page.locator("#editor img")
    assert re.fullmatch(rf"/compose/drafts/{draft_id}/files/\d+", shown.get_attribute("src") or "")
    assert shown.evaluate("i => i.complete && i.naturalWidth") == 7
    assert page.locator("#draft-files li").inner_text().startswith("notes.txt")
    # Listed on the Drafts page; opened from there.
    page.click("#drafts-link")
    page.wait_for_url(f"{web.base}/compose/drafts")
    row = page.locator(f"li.draft[data-draft='{draft_id}']")
    assert "Draft to finish" in row.inner_text() and contact.address in row.inner_text()
    row.locator("a").click()
    page.wait_for_url(f"{web.base}/compose?draft={draft_id}")
    # Typing is saved by itself (every ~10 s) through the JSON endpoint.
    page.click("#editor")
    page.keyboard.press("Control+End")
    page.keyboard.type(" and more text")
    deadline = time.monotonic() + 25
    while "and more text" not in (_draft_html(store, draft_id) or ""):
        assert time.monotonic() < deadline, _draft_html(store, draft_id)
        page.wait_for_timeout(500)
    assert page.input_value("#field-draft-id") == str(draft_id)
    assert "Draft saved" in page.inner_text("#draft-status")
    # Sent: the draft goes with its image and its file, and is gone.
    page.click("#send-button")
    page.wait_for_url(re.compile(r"/conversation/\d+\?sent=\d+$"))
    _send_now(store, settings, mirror, _outbox_id(page.url))
    via_postfix.wait_queue_empty()
    got = _arrived(dovecot, contact, "Draft to finish")
    assert len(got) == 1
    html_part = got[0].get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert re.search(r"<(b|strong)>draft", html) and "and more text" in html
    cid = re.search(r'src="cid:([^"]+)"', html)
    assert cid is not None, html
    images = [p for p in got[0].walk() if p["Content-ID"] == f"<{cid.group(1)}>"]
    assert len(images) == 1 and images[0].get_content() == png
    assert [a.get_filename() for a in got[0].iter_attachments()] == ["notes.txt"]
    page.goto("/compose/drafts")
    assert page.locator("#drafts-empty").is_visible()
    assert _draft_html(store, draft_id) is None  # sent: hidden from everything
    opened = page.goto(f"/compose/drafts/{draft_id}/open")
    assert opened is not None and opened.status == 404
    # Another draft, deleted from the list.
    page.goto("/compose")
    page.fill("#field-subject", "Never mind")
    page.click("#save-draft")
    page.wait_for_url(re.compile(r"/compose\?draft=\d+&saved=1$"))
    page.goto("/compose/drafts")
    page.locator("li.draft", has_text="Never mind").locator("button", has_text="Delete").click()
    page.wait_for_url(f"{web.base}/compose/drafts?deleted=1")
    assert "Draft deleted." in page.inner_text("#drafts-notice")
    assert page.locator("li.draft").count() == 0
    assert not web.dialogs and not web.remote


def _draft_html(store: Store, draft_id: int) -> str | None:
    with Session(store.engine) as s:
        return s.scalar(
            select(DraftRow.html_body).where(
                DraftRow.id == draft_id, DraftRow.sent_outbox_id.is_(None)
            )
        )


def test_draft_endpoints_need_the_token_and_are_the_owners_own(
    app: FastAPI, store: Store, mirror: SeededMirror
) -> None:
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    admin = _signed_in(app, *ADMIN)
    token = re.search(r'name="csrf" value="([^"]+)"', admin.get("/compose").text)
    assert token is not None
    fields = {"to": "ann@example.test", "subject": "Saved over HTTP", "html": "<p>Hi <b>x</b></p>"}
    empty = {"attachments": ("", b"", "application/octet-stream")}
    # The autosave: refused without the header, with a forged one, or with the token as a field.
    for headers, data in (
        ({}, fields),
        ({"X-CSRF-Token": "0" * 64}, fields),
        ({}, {**fields, "csrf": token.group(1)}),
    ):
        refused = admin.post("/compose/draft", data=data, files=empty, headers=headers)
        assert refused.status_code == 403, (headers, data)
    with Session(store.engine) as s:
        assert s.scalar(select(func.count()).select_from(DraftRow)) == 0
    made = admin.post(
        "/compose/draft", data=fields, files=empty, headers={"X-CSRF-Token": token.group(1)}
    )
    assert made.status_code == 200, made.text
    draft_id = made.json()["id"]
    # Saved again over the same draft (not a second one), the hostile part cleaned.
    again = admin.post(
        "/compose/draft",
        data={
            **fields,
            "draft_id": str(draft_id),
            "html": '<p onclick="x()">Hi</p><script>1</script>',
        },
        files=empty,
        headers={"X-CSRF-Token": token.group(1)},
    )
    assert again.status_code == 200 and again.json()["id"] == draft_id
    stored = _draft_html(store, draft_id)
    assert stored is not None and "onclick" not in stored and "<script" not in stored
    listed = admin.get("/compose/drafts").text
    assert f'data-draft="{draft_id}"' in listed and "Saved over HTTP" in listed
    # Another user: not listed, and every way to it is a 404.
    app.state.auth.create_user("mo@example.test", "another good password")
    member = _signed_in(app, "mo@example.test", "another good password")
    member_token = re.search(r'name="csrf" value="([^"]+)"', member.get("/compose").text)
    assert member_token is not None
    assert f'data-draft="{draft_id}"' not in member.get("/compose/drafts").text
    assert member.get(f"/compose?draft={draft_id}").status_code == 404
    assert member.get(f"/compose/drafts/{draft_id}/open").status_code == 404
    assert member.get(f"/compose/drafts/{draft_id}/files/1").status_code == 404
    stolen = member.post(
        "/compose/draft",
        data={**fields, "draft_id": str(draft_id), "subject": "taken"},
        files=empty,
        headers={"X-CSRF-Token": member_token.group(1)},
    )
    assert stolen.status_code == 404
    delete = f"/compose/drafts/{draft_id}/delete"
    assert member.post(delete, data={"csrf": member_token.group(1)}).status_code == 404
    sent = member.post(
        "/compose",
        data={**fields, "csrf": member_token.group(1), "draft_id": str(draft_id)},
        files=empty,
    )
    assert sent.status_code == 404
    assert SendStore(store.engine).open_sends() == []
    # The delete form: refused without its token, with a forged one or another session's.
    for csrf in (None, "0" * 64, member_token.group(1)):
        data = {"go": "1"} if csrf is None else {"csrf": csrf}
        assert admin.post(delete, data=data).status_code == 403, csrf
    assert _draft_html(store, draft_id) is not None
    done = admin.post(delete, data={"csrf": token.group(1)})
    assert done.status_code == 303 and done.headers["location"] == "/compose/drafts?deleted=1"
    assert _draft_html(store, draft_id) is None
    assert admin.get(f"/compose?draft={draft_id}").status_code == 404
    # Inline images count against the send limit, as attachments do.
    cid = "img-1@inline.correspond"
    big = admin.post(
        "/compose",
        data={
            "csrf": token.group(1),
            "to": "ann@example.test",
            "html": f'<p>Chart</p><img src="cid:{cid}">',
            "inline_cid": cid,
        },
        files=[
            ("attachments", ("", b"", "application/octet-stream")),
            ("inline", ("chart.png", b"\x89PNG" + b"x" * SEND_LIMIT, "image/png")),
        ],
    )
    assert big.status_code == 422
    assert f"the limit is {SEND_LIMIT:,} bytes" in big.text and 'id="error-attachments"' in big.text
    assert SendStore(store.engine).open_sends() == []
    # A reply saved as a draft ("Save draft" without script): reopened on its thread's reply
    # page, and sent as that reply.
    with Session(store.engine) as s:
        message_id, thread_id = s.execute(
            select(MessageRow.id, MessageRow.thread_id).where(
                MessageRow.message_id_header.contains(mirror.kickoff_mid)
            )
        ).one()
    reply_url = f"/conversation/{thread_id}/reply?message={message_id}&mode=reply"
    saved = admin.post(
        reply_url,
        data={"csrf": token.group(1), "action": "draft", "text": "Noted, thanks."},
        files=empty,
    )
    assert saved.status_code == 303, saved.text
    found = re.search(r"&draft=(\d+)&saved=1$", saved.headers["location"])
    assert found is not None and saved.headers["location"].startswith(reply_url)
    reply_draft = int(found.group(1))
    opened = admin.get(f"/compose/drafts/{reply_draft}/open")
    assert opened.status_code == 303 and opened.headers["location"] == (
        f"{reply_url}&draft={reply_draft}"
    )
    page = admin.get(opened.headers["location"])
    assert page.status_code == 200 and "Noted, thanks." in page.text
    sent = admin.post(
        reply_url,
        data={"csrf": token.group(1), "text": "Noted, thanks.", "draft_id": str(reply_draft)},
        files=empty,
    )
    assert sent.status_code == 303, sent.text
    assert sent.headers["location"].startswith(f"/conversation/{thread_id}?sent=")
    record = SendStore(store.engine).get(_outbox_id(sent.headers["location"]))
    assert record.thread_id == thread_id
    with Session(store.engine) as s:
        assert s.scalar(select(DraftRow.sent_outbox_id).where(DraftRow.id == reply_draft)) == (
            record.outbox.id
        )
    assert admin.get(f"/compose/drafts/{reply_draft}/open").status_code == 404
