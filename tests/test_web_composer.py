"""The web composer (correspond.web.composer) in a real Chromium, as tests/test_web.py (its
fixtures: the served app over the mirrored mailbox, a module-scoped Debian Chromium), on SQLite
and PostgreSQL, sending through the private Postfix into the private Dovecot.

Journeys: a new message from the default identity (preselected) with an attachment, confirmed
with Undo, then sent (its grace cut short) and arrived in a second Dovecot user's INBOX; a bad
recipient named beside To, files over the send limit named beside Attachments, a form without
its CSRF token refused, Undo taking a send back; Reply from a thread prefilled (To, ``Re:``,
the quoted original), sent into the thread; Forward prefilled with ``Fwd:``.
"""

from __future__ import annotations

import asyncio
import email
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from correspond.settings import Settings
from correspond.store import Store
from correspond.store.blobs import BlobStore
from correspond.store.compose import TemplateFields
from correspond.store.crm import CrmStore
from correspond.store.messages import MessageStore
from correspond.store.sends import SendStore
from correspond.store.tables import AccountRow, utcnow
from correspond.sync.engine import AccountSyncer
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.mirror import SeededMirror
from correspond.testing.postfix import PostfixServer
from correspond.testing.store import sync_once
from helpers import API_BASE_URL
from test_web import ADMIN, Watched, _first_run, _signed_in
from test_web import app as app  # fixtures, used by name
from test_web import browser as browser
from test_web import mirror as mirror
from test_web import served as served
from test_web import store_url as store_url  # SQLite only: conftest_store.sqlite_store_url
from test_web import web as web
from web_screenshots import watch_pages

pytestmark = pytest.mark.dovecot
#: A low send limit, so an upload over it is cheap.
SEND_LIMIT = 64 * 1024


@pytest.fixture
def settings(store_settings: Settings) -> Settings:
    return store_settings.clone(
        password_hash_time_cost=1,
        password_hash_memory_kib=1024,
        send_max_bytes=SEND_LIMIT,
        send_probe_seconds=1.0,
        send_receipt_wait_seconds=5.0,
    )


@pytest.fixture
def via_postfix(store: Store, mirror: SeededMirror, postfix: PostfixServer) -> PostfixServer:
    """The mirrored account submits through the private Postfix."""
    with Session(store.engine) as s, s.begin():
        s.execute(
            update(AccountRow)
            .where(AccountRow.name == mirror.account)
            .values(smtp_host=postfix.host, smtp_port=postfix.port, smtp_security="starttls")
        )
    return postfix


def _send_now(store: Store, settings: Settings, mirror: SeededMirror, outbox_id: int) -> None:
    """End the send's undo grace and run the account's outbox until it is done (what the
    account's live session does), in a thread of its own (Playwright's loop runs in this
    one)."""
    sends = SendStore(store.engine)
    sends.set_due(outbox_id, utcnow())
    syncer = AccountSyncer(
        store, MessageStore(store.engine), BlobStore.from_settings(settings), settings
    )

    async def apply() -> None:
        account = store.get_account(mirror.account)
        client = await syncer.connect(account)
        try:
            await syncer.apply_outbox(client, account)
        finally:
            await client.logout()

    deadline = time.monotonic() + 20
    with ThreadPoolExecutor(1) as pool:
        while sends.get(outbox_id).outbox.state == "pending":
            assert time.monotonic() < deadline, sends.get(outbox_id)
            pool.submit(lambda: asyncio.run(apply())).result()
    assert sends.get(outbox_id).status == "sent", sends.get(outbox_id)


def _inbox_subjects(dovecot: DovecotServer, user: ImapUser) -> list[email.message.EmailMessage]:
    conn = dovecot.imaplib_client(user)
    try:
        conn.select("INBOX", readonly=True)
        _typ, data = conn.uid("FETCH", "1:*", "(BODY.PEEK[])")
        return [
            email.message_from_bytes(item[1], policy=policy.default)  # type: ignore[misc]
            for item in data
            if isinstance(item, tuple)
        ]
    finally:
        conn.logout()


def _outbox_id(url: str) -> int:
    found = re.search(r"[?&]sent=(\d+)", url)
    assert found, url
    return int(found.group(1))


def test_compose_sends_from_the_default_identity_and_it_arrives(
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
    page.click("nav >> text=Compose")
    page.wait_for_url(f"{web.base}/compose")
    # The default identity (the account the first admin took) is preselected.
    chosen = page.locator("#identity option:checked")
    assert "(default)" in chosen.inner_text() and mirror.address in chosen.inner_text()
    assert f"{SEND_LIMIT:,}" in page.locator("#size-limit").inner_text()
    page.fill("#field-to", f"Cy Contact <{contact.address}>")
    page.fill("#field-subject", "Composed in the browser")
    page.fill("#editor", "Hello from the composer.")
    note = tmp_path / "notes.txt"
    note.write_text("attached notes\n")
    page.set_input_files("#field-attachments", str(note))
    page.click("button[value=send]")
    page.wait_for_url(re.compile(r"/conversation/\d+\?sent=\d+$"))
    notice = page.locator("#sent-notice")
    assert "Sending at" in notice.inner_text() and page.locator("#undo-send").is_visible()
    assert "Composed in the browser" in page.locator("h1").inner_text()
    # The grace cut short, the account's outbox sends it: it arrives through Postfix.
    _send_now(store, settings, mirror, _outbox_id(page.url))
    via_postfix.wait_queue_empty()
    got = [
        m for m in _inbox_subjects(dovecot, contact) if m["Subject"] == "Composed in the browser"
    ]
    assert len(got) == 1
    assert mirror.address in str(got[0]["From"])
    body = got[0].get_body(("plain",))
    assert body is not None and "Hello from the composer." in body.get_content()
    assert [a.get_filename() for a in got[0].iter_attachments()] == ["notes.txt"]
    page.reload()
    assert page.locator("#sent-notice").inner_text().strip() == "Message sent."
    assert page.locator("#undo-send").count() == 0
    assert not web.dialogs and not web.remote


def test_errors_beside_their_fields_csrf_and_undo(
    web: Watched, store: Store, mirror: SeededMirror, tmp_path: Path
) -> None:
    page = web.page
    _first_run(web)
    page.goto("/compose")
    # A bad recipient: named beside To; the rest of the form kept.
    page.fill("#field-to", "ann@example.test, not an address")
    page.fill("#field-subject", "Kept")
    page.click("button[value=send]")
    error = page.locator("#error-to")
    assert "not an address" in error.inner_text()
    assert page.input_value("#field-subject") == "Kept"
    assert page.locator("#error-attachments").count() == 0
    # Files over the send limit: each listed with its size, the browser says the limit and
    # will not submit; a browser that does submit them (no validation here) gets the server's
    # check, beside Attachments.
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (SEND_LIMIT + 1))
    small = tmp_path / "small.txt"
    small.write_bytes(b"y" * 2048)
    page.fill("#field-to", "ann@example.test")
    page.set_input_files("#field-attachments", str(small))
    page.set_input_files("#field-attachments", str(big))  # a second choice adds to the first
    files = page.locator("#attachment-list li.file")
    assert files.all_inner_texts() == ["small.txt 2.0 KB Remove", "big.bin 64.0 KB Remove"]
    assert "66.0 KB in all" in page.locator("#attachment-list li.total").inner_text()
    check = page.locator("#attachments-check")
    assert check.is_visible() and "the limit is 64.0 KB" in check.inner_text()
    page.click("button[value=send]")
    assert not page.evaluate("document.getElementById('field-attachments').validity.valid")
    assert page.url == f"{web.base}/compose" and page.locator("#error-to").count() == 1
    # Removing the big one is under the limit again; choosing it again is over it.
    files.nth(1).locator("button.remove").click()
    assert files.all_inner_texts() == ["small.txt 2.0 KB Remove"] and check.is_hidden()
    page.set_input_files("#field-attachments", str(big))
    assert check.is_visible()
    page.evaluate("document.getElementById('compose-form').noValidate = true")
    page.click("button[value=send]")
    assert f"{SEND_LIMIT:,} bytes" in page.locator("#error-attachments").inner_text()
    assert page.locator("#error-to").count() == 0
    # The files were not kept (a browser cannot refill a file field): said so.
    assert "small.txt, big.bin" in page.locator("#attachments-dropped").inner_text()
    assert SendStore(store.engine).open_sends() == []
    # Without its CSRF token (same origin, session cookie sent): refused, nothing queued.
    status = page.evaluate(
        """async () => {
            const body = new FormData();
            body.append("to", "ann@example.test");
            body.append("subject", "forged");
            return (await fetch("/compose", {method: "POST", body})).status;
        }"""
    )
    assert status == 403
    assert SendStore(store.engine).open_sends() == []
    # A send taken back with Undo during its grace.
    page.goto("/compose")
    page.fill("#field-to", "ann@example.test")
    page.fill("#field-subject", "Second thoughts")
    page.click("button[value=send]")
    page.wait_for_url(re.compile(r"\?sent=\d+$"))
    outbox_id = _outbox_id(page.url)
    page.click("#undo-send")
    page.wait_for_url(re.compile(r"/compose\?undone=\d+$"))
    assert "Undone" in page.locator("#compose-notice").inner_text()
    assert SendStore(store.engine).get(outbox_id).status == "cancelled"


def test_reply_and_forward_from_a_thread_are_prefilled(
    web: Watched, store: Store, mirror: SeededMirror
) -> None:
    page = web.page
    _first_run(web)
    page.locator("li.thread", has_text="Project kickoff").locator("a").click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    thread_url = page.url
    first = page.locator("section.message").first
    first.locator("nav.respond >> text=Reply").first.click()
    page.wait_for_url(re.compile(r"/reply\?message=\d+&mode=reply$"))
    assert "alice@example.test" in page.input_value("#field-to")
    assert page.input_value("#field-subject") == "Re: Project kickoff"
    assert page.locator("#quoted").inner_text().startswith("On ")
    assert "> " in page.locator("#quoted").inner_text()
    assert "(default)" in page.locator("#identity option:checked").inner_text()
    page.fill("#editor", "Sounds good.")
    page.click("button[value=send]")
    page.wait_for_url(re.compile(r"/conversation/\d+\?sent=\d+$"))
    assert page.url.split("?")[0] == thread_url  # the reply joined the thread
    assert page.locator("#undo-send").is_visible()
    record = SendStore(store.engine).get(_outbox_id(page.url))
    assert record.status == "scheduled"
    # Forward: Fwd:, nobody yet, the forwarded block below.
    page.goto(thread_url)
    page.locator("section.message").first.locator("nav.respond >> text=Forward").click()
    page.wait_for_url(re.compile(r"mode=forward$"))
    assert page.input_value("#field-subject") == "Fwd: Project kickoff"
    assert page.input_value("#field-to") == ""
    assert "Forwarded message" in page.locator("#quoted").inner_text()
    page.click("button[value=send]")
    assert "no recipient" in page.locator("#error-to").inner_text()
    assert page.input_value("#field-subject") == "Fwd: Project kickoff"


def test_a_template_filled_for_a_contact_and_its_missing_field_named(
    web: Watched, store: Store, mirror: SeededMirror
) -> None:
    page = web.page
    _first_run(web)
    contact = CrmStore(store.engine).create_contact(name="Cy Contact", emails=["cy@example.test"])
    page.goto("/email-templates/new")
    page.fill("input[name=name]", "Greeting")
    page.fill("input[name=subject]", "Hello {{contact.first_name}}")
    page.fill("textarea[name=text]", "Dear {{contact.name}}, welcome.")
    page.click("#template-form button[type=submit]")
    page.wait_for_url(re.compile(r"/email-templates/\d+\?saved=1$"))
    page.goto("/compose")
    page.select_option("#field-template", label="Greeting")
    # No contact chosen: the missing merge field is named beside the template picker.
    page.click("button[value=fill]")
    assert "{{contact.first_name}}" in page.locator("#error-template_id").inner_text()
    page.click("button[value=send]")
    assert "{{contact.first_name}}" in page.locator("#error-template_id").inner_text()
    assert SendStore(store.engine).open_sends() == []
    # With the contact: filled by the same render as the API; the address offered in To.
    page.select_option("#field-contact", str(contact.id))
    page.click("button[value=fill]")
    assert page.input_value("#field-subject") == "Hello Cy"
    assert page.input_value("#field-text") == "Dear Cy Contact, welcome."
    offered = page.locator("#contact-addresses option").evaluate_all("os => os.map(o => o.value)")
    assert "cy@example.test" in offered


def test_send_later_in_the_browsers_time_zone_listed_and_cancelled(
    browser: Any, served: str, store: Store, mirror: SeededMirror, tmp_path: Path
) -> None:
    """The "Send later" field in a browser five and a half hours ahead of UTC (no daylight
    saving): the time typed is that zone's; a past one is refused beside the field; the
    scheduled send is on the thread's confirmation and on /compose/scheduled, and cancelled
    there."""
    zone = ZoneInfo("Asia/Kolkata")
    context = browser.new_context(base_url=served, timezone_id="Asia/Kolkata")
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        watch_pages(page)
        web = Watched(page, served)
        _first_run(web)
        page.goto("/compose")
        page.fill("#field-to", "ann@example.test")
        page.fill("#field-subject", "Quarterly numbers")
        note = tmp_path / "q3.txt"
        note.write_text("numbers\n")
        page.set_input_files("#field-attachments", str(note))
        assert page.inner_text("#send-button") == "Send"
        page.fill("#field-send-at", "2020-01-31T09:00")
        assert page.inner_text("#send-button") == "Schedule"
        page.click("#send-button")
        assert "That time has passed" in page.locator("#error-send_at").inner_text()
        assert page.input_value("#field-send-at") == "2020-01-31T09:00"
        assert "q3.txt" in page.locator("#attachments-dropped").inner_text()
        assert SendStore(store.engine).open_sends() == []
        # Two days ahead, 09:30 in the browser's zone: 04:00 UTC.
        day = (datetime.now(zone) + timedelta(days=2)).date()
        page.fill("#field-send-at", f"{day.isoformat()}T09:30")
        page.click("#send-button")
        page.wait_for_url(re.compile(r"/conversation/\d+\?sent=\d+$"))
        outbox_id = _outbox_id(page.url)
        record = SendStore(store.engine).get(outbox_id)
        assert record.status == "scheduled"
        assert record.send_at == datetime(day.year, day.month, day.day, 4, 0, tzinfo=UTC)
        notice = page.locator("#sent-notice")
        assert "Scheduled for" in notice.inner_text()
        shown = notice.locator("time")
        assert shown.inner_text() == f"{day.isoformat()} 09:30"  # in the browser's zone
        assert shown.get_attribute("title") == f"{day.isoformat()} 04:00 UTC"
        assert page.inner_text("#undo-send") == "Cancel send"
        # Listed with the other unsent ones, and called off there.
        page.click("#scheduled-link")
        page.wait_for_url(f"{served}/compose/scheduled")
        row = page.locator(f"li.send[data-outbox='{outbox_id}']")
        assert "Quarterly numbers" in row.inner_text() and "ann@example.test" in row.inner_text()
        assert "09:30" in row.locator("time").inner_text()
        row.locator("button", has_text="Cancel send").click()
        page.wait_for_url(re.compile(r"/compose/scheduled\?cancelled=\d+$"))
        assert "will not be sent" in page.locator("#scheduled-notice").inner_text()
        assert page.locator(f"li.send[data-outbox='{outbox_id}']").count() == 0
        assert SendStore(store.engine).get(outbox_id).status == "cancelled"
        # Too late to cancel (already cancelled): a 409 page saying what it is.
        status = page.evaluate(
            """async ([id, token]) => (await fetch(`/compose/scheduled/${id}/cancel`, {
                method: "POST", body: new URLSearchParams({csrf: token})})).status""",
            [outbox_id, page.locator("form.signout input[name=csrf]").input_value()],
        )
        assert status == 409
        assert not web.dialogs and not web.remote
    finally:
        context.close()


def test_recipients_suggested_from_contacts_by_keyboard(
    web: Watched, store: Store, mirror: SeededMirror
) -> None:
    page = web.page
    _first_run(web)
    crm = CrmStore(store.engine)
    crm.create_contact(name="Grace Hopper", emails=["grace@example.test"])
    crm.create_contact(name="Hopper, Admiral", emails=["hopper@navy.test"])
    crm.create_contact(name="Ada", emails=["ada@example.test"])
    found = page.request.get("/compose/contacts?q=navy").json()
    assert found == {"items": [{"name": "Hopper, Admiral", "email": "hopper@navy.test"}]}
    page.goto("/compose")
    to = page.locator("#field-to")
    box = page.locator("#field-to-suggestions")
    assert to.get_attribute("role") == "combobox" and to.get_attribute("list") is None
    to.press_sequentially("ann@example.test, hop")
    options = box.locator("li[role=option]")
    options.nth(1).wait_for()
    assert options.all_inner_texts() == [
        "Grace Hopper <grace@example.test>",
        '"Hopper, Admiral" <hopper@navy.test>',
    ]
    assert to.get_attribute("aria-expanded") == "true"
    to.press("ArrowDown")
    assert options.nth(1).get_attribute("aria-selected") == "true"
    assert to.get_attribute("aria-activedescendant") == "field-to-suggestions-1"
    to.press("Enter")  # takes the suggestion; the form is not sent
    assert to.input_value() == 'ann@example.test, "Hopper, Admiral" <hopper@navy.test>, '
    assert box.is_hidden() and page.url == f"{web.base}/compose"
    # Escape closes the list and leaves what was typed; Tab takes the highlighted one.
    to.press_sequentially("gra")
    options.first.wait_for()
    to.press("Escape")
    assert box.is_hidden() and to.input_value().endswith(", gra")
    to.press("ArrowDown")  # opens it again
    options.first.wait_for()
    to.press("Tab")
    assert to.input_value().endswith(", Grace Hopper <grace@example.test>, ")
    assert page.evaluate("document.activeElement.id") == "field-to"
    # Nothing matches: no list.
    page.locator("#field-cc").press_sequentially("zzz")
    page.wait_for_function("() => !document.getElementById('field-cc-suggestions').children.length")
    page.fill("#field-cc", "")
    page.fill("#field-subject", "Suggested")
    page.click("#send-button")
    page.wait_for_url(re.compile(r"\?sent=\d+$"))
    [sent] = SendStore(store.engine).open_sends()
    assert sent.to == ("ann@example.test", "hopper@navy.test", "grace@example.test")
    assert not web.dialogs and not web.remote


def _sent_copies(dovecot: DovecotServer, user: ImapUser, message_id: str) -> int:
    conn = dovecot.imaplib_client(user)
    try:
        conn.select("Sent", readonly=True)
        _typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", message_id)
        return len(data[0].split()) if data and data[0] else 0
    finally:
        conn.logout()


def test_reply_with_a_template_and_an_attachment_reaches_the_mailbox_and_sent_once(
    web: Watched,
    store: Store,
    settings: Settings,
    app: FastAPI,
    mirror: SeededMirror,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    via_postfix: PostfixServer,
    tmp_path: Path,
) -> None:
    """The issue's journey: a message from a real mailbox user arrives and is synced; Reply
    from its thread, a template filled for the contact, a binary attachment; sent through
    Postfix it is in the recipient's INBOX once with the attachment's bytes, and in the
    sender's Sent folder exactly once (also after another sync pass)."""
    page = web.page
    _first_run(web)
    customer = dovecot.add_user()
    crm = CrmStore(store.engine)
    contact = crm.create_contact(name="Cy Customer", emails=[customer.address])
    ada = app.state.auth.users.get_user(ADMIN[0])
    app.state.composer.templates.create(
        ada,
        TemplateFields(
            name="Quote attached",
            subject="Your quote",
            text="Dear {{contact.first_name}},\nthe quote is attached.",
        ),
    )
    dovecot.deliver(
        imap_user,
        plain_message(
            "quote-request@example.test",
            when=datetime.now(UTC),
            subject="Quote please",
            body="Could you send a quote?\r\n",
            sender=f"Cy Customer <{customer.address}>",
            to=imap_user.address,
        ),
    )
    syncer = AccountSyncer(
        store, MessageStore(store.engine), BlobStore.from_settings(settings), settings
    )
    account = store.get_account(mirror.account)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(sync_once(syncer, account))).result()
    page.goto("/")
    page.locator("li.thread", has_text="Quote please").locator("a").click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    thread_url = page.url
    page.locator("section.message").first.locator("nav.respond >> text=Reply").first.click()
    page.wait_for_url(re.compile(r"mode=reply$"))
    assert customer.address in page.input_value("#field-to")
    page.select_option("#field-template", label="Quote attached")
    page.select_option("#field-contact", str(contact.id))
    page.click("button[value=fill]")
    assert page.input_value("#field-text") == "Dear Cy,\nthe quote is attached."
    assert page.input_value("#field-subject") == "Re: Quote please"  # a reply keeps it
    payload = bytes(range(256)) * 40 + b"\x00\r\n\x1a"  # binary: every byte value, CR/LF
    quote = tmp_path / "quote.bin"
    quote.write_bytes(payload)
    page.set_input_files("#field-attachments", str(quote))
    assert "quote.bin 10.0 KB" in page.locator("#attachment-list").inner_text()
    page.click("#send-button")
    page.wait_for_url(re.compile(r"/conversation/\d+\?sent=\d+$"))
    assert page.url.split("?")[0] == thread_url
    _send_now(store, settings, mirror, _outbox_id(page.url))
    via_postfix.wait_queue_empty()
    got = [m for m in _inbox_subjects(dovecot, customer) if m["Subject"] == "Re: Quote please"]
    assert len(got) == 1
    reply = got[0]
    assert mirror.address in str(reply["From"])
    assert "<quote-request@example.test>" in str(reply["In-Reply-To"])
    body = reply.get_body(("plain",))
    assert body is not None
    text = body.get_content().replace("\r\n", "\n")
    assert text.startswith("Dear Cy,\nthe quote is attached.\n") and "> Could you send" in text
    [attachment] = list(reply.iter_attachments())
    assert attachment.get_filename() == "quote.bin"
    assert attachment.get_payload(decode=True) == payload
    message_id = str(reply["Message-ID"])
    assert _sent_copies(dovecot, imap_user, message_id) == 1
    # Another sync pass finds the Sent copy as the CRM's own message: still one of each.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(sync_once(syncer, account))).result()
    assert _sent_copies(dovecot, imap_user, message_id) == 1
    page.goto(thread_url)
    assert page.locator("section.message", has_text="the quote is attached").count() == 1
    assert not web.dialogs and not web.remote


def test_scheduled_sends_over_http_are_the_senders_own_and_need_the_token(
    app: FastAPI, store: Store, mirror: SeededMirror
) -> None:
    """Without a browser (no script: the time is UTC): a send scheduled by the form; a year
    and more ahead refused beside the field; a teammate neither sees nor cancels it (404);
    the cancel form refused without its token; suggestions need a session."""
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    admin = _signed_in(app, *ADMIN)
    token = re.search(r'name="csrf" value="([^"]+)"', admin.get("/compose").text)
    assert token is not None
    when = (datetime.now(UTC) + timedelta(days=3)).replace(second=0, microsecond=0)
    fields = {"csrf": token.group(1), "to": "ann@example.test", "subject": "Later, over HTTP"}
    far = admin.post(
        "/compose",
        data={**fields, "send_at": (when + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M")},
        files={"attachments": ("", b"", "application/octet-stream")},
    )
    assert far.status_code == 422 and 'id="error-send_at">At most a year ahead.' in far.text
    made = admin.post(
        "/compose",
        data={**fields, "send_at": when.strftime("%Y-%m-%dT%H:%M")},
        files={"attachments": ("", b"", "application/octet-stream")},
    )
    assert made.status_code == 303, made.text
    outbox_id = _outbox_id(made.headers["location"])
    assert SendStore(store.engine).get(outbox_id).send_at == when
    listed = admin.get("/compose/scheduled").text
    assert f'data-outbox="{outbox_id}"' in listed and "Later, over HTTP" in listed
    assert "Scheduled and unsent (1)" in admin.get("/compose").text
    # A teammate: not on their list, and cancelling it is a 404 (as a send that is not).
    app.state.auth.create_user("mo@example.test", "another good password")
    member = _signed_in(app, "mo@example.test", "another good password")
    assert f'data-outbox="{outbox_id}"' not in member.get("/compose/scheduled").text
    member_token = re.search(r'name="csrf" value="([^"]+)"', member.get("/compose").text)
    assert member_token is not None
    cancel = f"/compose/scheduled/{outbox_id}/cancel"
    assert member.post(cancel, data={"csrf": member_token.group(1)}).status_code == 404
    # The cancel form: refused without its token, with a forged one or another session's.
    for csrf in (None, "0" * 64, member_token.group(1)):
        data = {"go": "1"} if csrf is None else {"csrf": csrf}
        assert admin.post(cancel, data=data).status_code == 403, csrf
    assert SendStore(store.engine).get(outbox_id).status == "scheduled"
    done = admin.post(cancel, data={"csrf": token.group(1)})
    assert done.status_code == 303
    assert done.headers["location"] == f"/compose/scheduled?cancelled={outbox_id}"
    assert SendStore(store.engine).get(outbox_id).status == "cancelled"
    # Suggestions are for a signed-in user only.
    anonymous = TestClient(app, base_url=API_BASE_URL, follow_redirects=False)
    refused = anonymous.get("/compose/contacts?q=a")
    assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
    assert admin.get("/compose/contacts?q=").json() == {"items": []}
