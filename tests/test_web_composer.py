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
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from correspond.settings import Settings
from correspond.store import Store
from correspond.store.blobs import BlobStore
from correspond.store.crm import CrmStore
from correspond.store.messages import MessageStore
from correspond.store.sends import SendStore
from correspond.store.tables import AccountRow, utcnow
from correspond.sync.engine import AccountSyncer
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mirror import SeededMirror
from correspond.testing.postfix import PostfixServer
from test_web import Watched, _first_run
from test_web import app as app  # fixtures, used by name
from test_web import browser as browser
from test_web import mirror as mirror
from test_web import served as served
from test_web import web as web

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
    page.fill("#field-text", "Hello from the composer.")
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
    # Files over the send limit: the limit said beside Attachments.
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (SEND_LIMIT + 1))
    page.fill("#field-to", "ann@example.test")
    page.set_input_files("#field-attachments", str(big))
    page.click("button[value=send]")
    assert f"{SEND_LIMIT:,} bytes" in page.locator("#error-attachments").inner_text()
    assert page.locator("#error-to").count() == 0
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
    page.fill("#field-text", "Sounds good.")
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
