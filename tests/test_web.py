"""The web app (correspond.web) in a real Chromium (Debian's /usr/bin/chromium driven by
Playwright, never a downloaded browser), served by uvicorn on a loopback port over the test
store with a mailbox mirrored from the real Dovecot fixture, on SQLite and PostgreSQL.

Journeys: first run, the inbox, a thread, mark read, thread order saved at once and kept after
a reload, sign-out and sign-in; the CSP on every page, a form without its CSRF token refused;
every hostile HTML body of ../shared/corpus/xss (when present) plus inline samples shown in a
thread: no script runs, no dialog opens, no request leaves for a remote host, no navigation.
The HTTP-level guarantees (first run once, throttled sign-in, a teammate's 404) are checked
with a TestClient beside them.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.blobs import BlobStore
from correspond.store.messages import MessageStore
from correspond.sync.engine import AccountSyncer
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.mirror import PNG_BYTES, SeededMirror, seed_mirror
from correspond.testing.net import free_port
from correspond.testing.store import sync_once
from correspond.web.csrf import session_token
from helpers import API_BASE_URL, user_client
from web_screenshots import watch_pages

CHROMIUM = Path("/usr/bin/chromium")
XSS_DIR = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "xss"
XSS_FILES = sorted(XSS_DIR.glob("*.html")) if XSS_DIR.is_dir() else []
ADMIN = ("ada@example.test", "correct horse battery")
# Inline hostile samples (the corpus may be absent): each would set the marker if it ran.
INLINE_HOSTILE = (
    "<p>hi</p><script>window.__pwned = 1; top.__pwned = 1</script>"
    '<img src="x" onerror="top.__pwned = 1">'
    '<img src="https://attacker.example/pixel.png">'
    '<a href="javascript:top.__pwned = 1">click</a>'
    '<meta http-equiv="refresh" content="0;url=https://attacker.example/">'
    "<style>@import url(https://attacker.example/x.css); body { background: "
    "url(https://tracker.example/bg.png) }</style>"
    '<form action="https://attacker.example/"><input name="q"></form>'
)


# --- the app and its mailbox ------------------------------------------------------------------


@pytest.fixture
def store_url(sqlite_store_url: str) -> str:
    """SQLite only here (see ``conftest_store.sqlite_store_url``)."""
    return sqlite_store_url


def _html_mail(n: int, html: bytes, to: str) -> bytes:
    """One hostile sample; all of them are one thread ("hostile samples"), so one page shows
    every sample in its own sandboxed frame."""
    when = datetime.now(UTC) - timedelta(days=20) + timedelta(minutes=n)
    thread = "" if n == 0 else "In-Reply-To: <hostile-0@example.test>\r\n"
    thread += "" if n == 0 else "References: <hostile-0@example.test>\r\n"
    subject = "hostile samples" if n == 0 else "Re: hostile samples"
    return (
        f"Message-ID: <hostile-{n}@example.test>\r\nDate: {email.utils.format_datetime(when)}\r\n"
        f"{thread}"
        f"From: Mallory <mallory@example.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + base64.encodebytes(html).replace(b"\n", b"\r\n")


@pytest.fixture
def settings(store_settings: Settings) -> Settings:
    return store_settings.clone(password_hash_time_cost=1, password_hash_memory_kib=1024)


@pytest.fixture
def mirror(
    store: Store, settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> SeededMirror:
    """The seeded mailbox, plus one thread of HTML mails, one per hostile sample."""
    samples = [("inline", INLINE_HOSTILE.encode())]
    samples += [(path.stem, path.read_bytes()) for path in XSS_FILES]
    for n, (_name, html) in enumerate(samples):
        dovecot.deliver(imap_user, _html_mail(n, html, imap_user.address))
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one,
    # and the backfill runs its own (asyncio.run).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(seed_mirror, store, settings, dovecot, imap_user).result()


@pytest.fixture
def app(store: Store, settings: Settings, mirror: SeededMirror) -> FastAPI:
    return create_app(settings, store=store)


@pytest.fixture
def served(app: FastAPI) -> Iterator[str]:
    """The app under uvicorn on a free loopback port (lifespan on: notifications run)."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for this module's tests (all the browser tests): Debian's, never
    one Playwright downloads. Module-scoped, not session: Playwright's sync API keeps an event
    loop running in the main thread while it is started, and the other modules' tests call
    asyncio.run there."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (Debian package chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class Watched:
    """A page with its dialogs, requests to other hosts and main-frame navigations recorded."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.dialogs: list[str] = []
        self.remote: list[str] = []
        self.navigations: list[str] = []
        own = urlsplit(base).netloc
        page.on("dialog", self._dialog)
        page.on(
            "request",
            lambda r: None if urlsplit(r.url).netloc in (own, "") else self.remote.append(r.url),
        )
        page.on(
            "framenavigated",
            lambda f: self.navigations.append(f.url) if f == page.main_frame else None,
        )

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture
def web(browser: Any, served: str) -> Iterator[Watched]:
    context = browser.new_context(base_url=served, java_script_enabled=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    watch_pages(page)  # one screenshot of each main page per run (tests/web_screenshots.py)
    try:
        yield Watched(page, served)
    finally:
        context.close()


def _first_run(web: Watched) -> None:
    page = web.page
    page.goto("/")
    assert page.url.endswith("/welcome")
    page.fill("input[name=name]", "Ada")
    page.fill("input[name=email]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.fill("input[name=confirm]", ADMIN[1])
    page.click("button[type=submit]")
    page.wait_for_url(f"{web.base}/")


# --- in the browser ---------------------------------------------------------------------------


@pytest.mark.dovecot
def test_first_run_inbox_thread_read_and_thread_order(web: Watched) -> None:
    page = web.page
    _first_run(web)
    # The first admin took the mirrored (ownerless) account: its threads are the inbox.
    kickoff = page.locator("li.thread", has_text="Project kickoff")
    kickoff.wait_for()
    assert "unread" in (kickoff.get_attribute("class") or "")
    assert int(kickoff.locator(".badge").inner_text()) >= 1
    assert "Alice Example" in kickoff.inner_text()
    assert page.locator("#unread-badge").inner_text().strip() != "0"
    with_attachment = page.locator("li.thread", has=page.locator(".clip"))
    assert with_attachment.count() >= 1
    # The thread, oldest first by default (newest at the bottom).
    kickoff.locator("a").click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    thread_url = page.url
    senders = page.locator("section.message").all_inner_texts()
    assert len(senders) == 2 and "Alice Example" in senders[0]
    first_ids = page.locator("section.message").evaluate_all(
        "els => els.map(e => e.dataset.message)"
    )
    # Mark read: the CRM copy changes at once; the inbox no longer shows it unread.
    page.click("button[value=read]")
    page.wait_for_url(re.compile(r"\?done=read$"))
    assert page.locator("button[value=unread]").is_visible()
    assert page.locator("section.message.unread").count() == 0
    page.goto("/")
    kickoff = page.locator("li.thread", has_text="Project kickoff")
    assert "unread" not in (kickoff.get_attribute("class") or "")
    # Thread order: saved the moment it is chosen, confirmed, kept after a reload.
    page.goto("/preferences")
    page.check("input[value=newest_first]")
    page.locator("#saved", has_text="Saved: newest emails on top.").wait_for()
    assert page.locator("form#thread-order button").count() == 0  # no Save button
    page.reload()
    assert page.is_checked("input[value=newest_first]")
    page.goto(thread_url)
    reversed_ids = page.locator("section.message").evaluate_all(
        "els => els.map(e => e.dataset.message)"
    )
    assert reversed_ids == list(reversed(first_ids))
    # The report's cid: logo shows inside its sandboxed frame (written in as a data: URL: the
    # frame's own requests carry no session).
    page.goto("/")
    page.locator("li.thread", has_text="Q3").locator("a").click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    logo = page.frame_locator("iframe").first.locator("img[alt=logo]")
    logo.wait_for()
    assert logo.evaluate("img => img.complete && img.naturalWidth > 0")
    # Sign out, a wrong password, then in again.
    page.click("form.signout button")
    page.wait_for_url(f"{web.base}/login")
    page.goto("/")
    assert page.url == f"{web.base}/login"
    page.fill("input[name=email]", ADMIN[0])
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text() == "Wrong e-mail address or password."
    page.fill("input[name=password]", ADMIN[1])
    page.click("button[type=submit]")
    page.wait_for_url(f"{web.base}/")
    assert not web.dialogs and not web.remote


@pytest.mark.dovecot
def test_a_new_message_appears_live_with_an_unread_badge(
    web: Watched,
    store: Store,
    settings: Settings,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    mirror: SeededMirror,
) -> None:
    page = web.page
    _first_run(web)
    page.locator("li.thread").first.wait_for()
    page.wait_for_function("() => document.body.dataset.live === 'inbox'")
    # Delivered to the mailbox, then fetched by an incremental sync of the account: the
    # app's notification fan-out puts it on /notifications/stream, and the open page shows it.
    new = plain_message(
        "live-1@example.test",
        when=datetime.now(UTC),
        subject="Live arrival",
        body="Just now.\r\n",
        sender="Zed <zed@example.test>",
        to=imap_user.address,
    )
    dovecot.deliver(imap_user, new)
    syncer = AccountSyncer(
        store, MessageStore(store.engine), BlobStore.from_settings(settings), settings
    )
    account = store.get_account(mirror.account)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(sync_once(syncer, account))).result()
    arrived = page.locator("li.thread", has_text="Live arrival")
    arrived.wait_for(timeout=15_000)
    assert "unread" in (arrived.get_attribute("class") or "")
    assert arrived.locator(".badge").inner_text() == "1"
    page.locator(".toast", has_text="Live arrival").wait_for()
    assert web.navigations[-1] == f"{web.base}/"  # updated in place, not reloaded


@pytest.mark.dovecot
def test_csp_on_every_page_and_forms_refused_without_their_token(web: Watched) -> None:
    page = web.page
    _first_run(web)
    for path in ("/", "/preferences", "/login"):
        answer = page.goto(path)
        assert answer is not None
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp.split("style-src")[0]  # never for scripts
    page.goto("/")
    thread = page.locator("li.thread a").first.get_attribute("href")
    # A POST from the page itself (same origin, session cookie sent) without the token.
    statuses = page.evaluate(
        """async (thread) => {
            const post = (url, body) =>
                fetch(url, {method: "POST", body: new URLSearchParams(body)}).then(r => r.status);
            return [
                await post("/preferences", {thread_order: "newest_first"}),
                await post(thread + "/action", {action: "read", csrf: "0".repeat(64)}),
                await post("/logout", {}),
            ];
        }""",
        thread,
    )
    assert statuses == [403, 403, 403]
    page.goto("/preferences")
    assert page.is_checked("input[value=oldest_first]")  # nothing was saved
    page.goto("/")
    assert page.url == f"{web.base}/"  # still signed in


@pytest.mark.dovecot
def test_hostile_bodies_run_no_script_and_fetch_nothing_remote(web: Watched, store: Store) -> None:
    if store.dialect != "sqlite":
        pytest.skip("what the browser is shown does not depend on the database (SQLite run)")
    page = web.page
    _first_run(web)
    names = ["inline"] + [p.stem for p in XSS_FILES]
    page.locator("li.thread a", has_text="hostile samples").click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    web.navigations.clear()
    # page.click waited for the load event, which waits for every frame's.
    assert page.locator("section.message").count() == len(names)
    frames = [f for f in page.frames if f != page.main_frame]
    assert len(frames) == len(names) and all("/frame" in f.url for f in frames)
    for element in page.locator("iframe.body").all():
        assert element.get_attribute("sandbox") == "allow-popups allow-popups-to-escape-sandbox"
    assert page.evaluate("typeof window.__pwned") == "undefined"
    for frame in frames:
        assert frame.evaluate("typeof window.__pwned") == "undefined", frame.url
    csp = page.request.get(frames[0].url).headers["content-security-policy"]
    assert csp.startswith("default-src 'none'")
    page.wait_for_timeout(300)  # a meta refresh at 0 s, or a late timer, would have fired
    assert web.navigations == [], web.navigations
    assert not web.dialogs, web.dialogs
    assert not web.remote, web.remote
    first = page.locator("section.message").first
    assert "1 remote image blocked" in first.inner_text()
    # "Show images" lets that message (only) load its remote images: the request is tried.
    first.locator("a", has_text="Show images").click()
    page.wait_for_load_state("load")
    assert first.locator("iframe.body").get_attribute("src", timeout=5000) is not None
    shown = [f.url for f in page.frames if f.url.endswith("?images=true")]
    assert len(shown) == 1, shown
    assert any(urlsplit(u).netloc == "attacker.example" for u in web.remote), web.remote
    assert not web.dialogs and page.evaluate("typeof window.__pwned") == "undefined"


@pytest.mark.dovecot
def test_email_settings_mark_default_and_an_smtp_identity_refused(
    web: Watched, app: FastAPI, mirror: SeededMirror
) -> None:
    page = web.page
    _first_run(web)
    # A second address of the mailbox (an alias, through the identities' store): two to
    # choose from, the mailbox's own the default.
    ada = app.state.auth.users.get_user(ADMIN[0])
    assert len(app.state.composer.identities.list(ada)) == 1  # the mailbox's own address
    alias = app.state.composer.identities.create_for_account(
        ada, account_name=mirror.account, address="sales@example.test", display_name="Sales"
    )
    page.click("nav >> text=Email Settings")
    page.wait_for_url(f"{web.base}/settings/smtp")
    tabs = page.locator("nav.tabs a").all_inner_texts()
    assert tabs == ["Full Email Sync", "SMTP & BCC", "Email Preferences"]
    default = page.locator("li.identity.default")
    assert default.count() == 1 and mirror.address in default.inner_text()
    row = page.locator(f"li.identity[data-identity='{alias.id}']")
    row.locator("button", has_text="Mark Default").click()
    page.wait_for_url(f"{web.base}/settings/smtp?done=default")
    page.reload()
    default = page.locator("li.identity.default")
    assert default.count() == 1 and "sales@example.test" in default.inner_text()
    assert app.state.composer.identities.default(ada).id == alias.id
    # The composer preselects the new default.
    page.click("nav >> text=Compose")
    page.wait_for_url(f"{web.base}/compose")
    chosen = page.locator("#identity option:checked")
    assert chosen.get_attribute("value") == str(alias.id)
    assert "sales@example.test" in chosen.inner_text() and "(default)" in chosen.inner_text()
    page.go_back()
    # An SMTP identity whose server does not answer: the test's sentence beside the form,
    # what was typed kept (not the password), nothing saved.
    closed = free_port()
    before = len(app.state.composer.identities.list(ada))
    page.fill("#add-smtp input[name=address]", "out@example.test")
    page.fill("#add-smtp input[name=name]", "Outbound")
    page.fill("#add-smtp input[name=host]", "127.0.0.1")
    page.fill("#add-smtp input[name=port]", str(closed))
    page.check("#add-smtp input[value=tls]")
    page.fill("#add-smtp input[name=password]", "secret")
    page.click("#add-smtp button[type=submit]")
    error = page.locator("#smtp-error")
    error.wait_for()
    message = error.inner_text()
    assert message and ("127.0.0.1" in message or "connect" in message.lower()), message
    assert page.input_value("#add-smtp input[name=port]") == str(closed)
    assert page.input_value("#add-smtp input[name=password]") == ""
    assert len(app.state.composer.identities.list(ada)) == before
    # The other tabs: Full Email Sync (tests/test_web_sync.py), and the preferences page.
    page.click("nav.tabs >> text=Full Email Sync")
    page.locator(f"article.sync-account[data-account='{mirror.account}']").wait_for()
    page.click("nav.tabs >> text=Email Preferences")
    page.wait_for_url(f"{web.base}/preferences")
    assert page.locator("input[value=oldest_first]").is_checked()
    assert not web.dialogs and not web.remote


@pytest.mark.dovecot
def test_a_template_created_edited_and_previewed_for_a_contact(web: Watched, app: FastAPI) -> None:
    page = web.page
    _first_run(web)
    grace = app.state.composer.crm.create_contact(
        name="Grace Hopper", emails=["grace@example.test"]
    )
    nameless = app.state.composer.crm.create_contact(emails=["someone@example.test"])
    support = app.state.auth.teams.create("Support")
    page.click("nav >> text=Templates")
    page.wait_for_url(f"{web.base}/email-templates")
    page.click("text=New template")
    page.fill("input[name=name]", "Welcome")
    page.fill("input[name=subject]", "Hello {{contact.first_name}}")
    page.fill("textarea[name=text]", "Dear {{contact.first_name}},\nwelcome.")
    page.fill("textarea[name=html]", "<p>Dear {{contact.first_name}}</p>")
    page.click("#template-form button[type=submit]")
    page.wait_for_url(re.compile(r"/email-templates/\d+\?saved=1$"))
    # An unknown merge field is shown and not saved; then shared with the team.
    page.fill("input[name=subject]", "Hello {{contact.nickname}}")
    page.click("#template-form button[type=submit]")
    assert "contact.nickname" in page.locator("#template-error").inner_text()
    page.fill("input[name=subject]", "Hello {{contact.first_name}}")
    page.select_option("select[name=team_id]", str(support.id))
    page.click("#template-form button[type=submit]")
    page.wait_for_url(re.compile(r"\?saved=1$"))
    # The preview for a chosen contact, through the merge service.
    page.select_option("select[name=contact_id]", str(grace.id))
    page.click("#preview-form button[type=submit]")
    preview = page.locator("#preview")
    preview.wait_for()
    assert preview.locator(".subject").inner_text() == "Hello Grace"
    assert "Dear Grace," in preview.locator("pre.text").inner_text()
    # The HTML body rendered in a sandboxed frame (tests/test_web_records.py has more).
    html = page.frame_locator("iframe#preview-html").locator("p")
    assert html.inner_text() == "Dear Grace"
    # A contact without a first name: the field is named, never blanked.
    page.select_option("select[name=contact_id]", str(nameless.id))
    page.click("#preview-form button[type=submit]")
    problem = page.locator("#preview-error").inner_text()
    assert "{{contact.first_name}}" in problem and page.locator("#preview").count() == 0
    page.click("text=← Templates")
    listed = page.locator("li.template", has_text="Welcome")
    assert "Shared with Support" in listed.inner_text()
    assert not web.dialogs and not web.remote


def _crm_records(app: FastAPI, store: Store) -> tuple[Any, Any, Any]:
    """Alice (whose address is on the mirrored mail), her company and an open deal, with the
    linker run over the mirror: her messages are on her timeline."""
    from correspond.store.linker import LinkerStore
    from correspond.sync.linker import link_policy

    crm = app.state.crm
    acme = crm.create_company(name="Acme", domains=["acme.test"])
    alice = crm.create_contact(
        name="Alice Example", emails=["alice@example.test"], company_id=acme.id
    )
    deal = crm.create_deal(name="Acme renewal", company_id=acme.id, contact_ids=[alice.id])
    crm.create_activity(kind="call", title="Intro call", participants=["alice@example.test"])
    crm.create_activity(kind="meeting", title="Site visit", participants=["ops@acme.test"])
    LinkerStore(store.engine, link_policy(app.state.settings)).run_until_idle()
    return acme, alice, deal


@pytest.mark.dovecot
def test_contact_page_shows_its_mail_newest_first_and_a_thread_linked_to_a_deal(
    web: Watched, app: FastAPI, store: Store
) -> None:
    page = web.page
    _first_run(web)
    _acme, alice, deal = _crm_records(app, store)
    page.click("nav >> text=CRM")
    page.wait_for_url(f"{web.base}/crm/contacts")
    page.fill("input[name=q]", "alice@")
    page.click("form.search button")
    page.wait_for_url(re.compile(r"/crm/contacts\?q=alice%40$"))
    assert page.locator("li.record").count() == 1
    page.click("li.record a")
    page.wait_for_url(f"{web.base}/crm/contacts/{alice.id}")
    assert page.locator("h1").inner_text() == "Alice Example"
    assert page.locator("dd.addresses").inner_text() == "alice@example.test"
    assert page.locator("dd.company").inner_text() == "Acme"
    assert page.locator("dd.deals").inner_text() == "Acme renewal"
    # Her activities beside her mail (a call with her; a meeting at her company's domain is
    # the company's, not hers).
    assert page.locator("#activities li.activity .subject").all_inner_texts() == ["Intro call"]
    in_inbox = page.locator("a.in-inbox").get_attribute("href")
    assert in_inbox == f"/?contact_id={alice.id}"
    # Her mail, newest first: the reply to her (Inbox and Sent copies), her kickoff, the
    # fillers (6, an hour apart, the oldest last).
    entries = page.locator("#timeline li.entry")
    subjects = entries.locator(".subject").all_inner_texts()
    assert subjects[0] == "Re: Project kickoff" and "Project kickoff" in subjects
    assert subjects[-6:] == [f"Filler {n}" for n in range(6)]
    times = entries.locator("time").evaluate_all("els => els.map(e => e.dateTime)")
    assert times == sorted(times, reverse=True) and len(times) == len(subjects)
    # Each entry opens its thread.
    kickoff = entries.filter(has_text="Project kickoff").last
    message_id = kickoff.get_attribute("data-message")
    kickoff.locator("a").click()
    page.wait_for_url(re.compile(rf"/conversation/\d+#m{message_id}$"))
    assert "Project kickoff" in page.locator("h1").inner_text()
    assert page.locator(f"section.message[data-message='{message_id}']").count() == 1
    # The report (from Bob: not on the deal) linked to the deal by hand from its thread page.
    page.goto("/")
    page.locator("li.thread", has_text="Q3").locator("a").click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    thread_url = page.url
    assert page.locator("li.linked-deal").count() == 0
    page.select_option("#link-deal select[name=deal_id]", str(deal.id))
    page.click("#link-deal button")
    page.wait_for_url(re.compile(r"\?done=linked$"))
    linked = page.locator(f"li.linked-deal[data-deal='{deal.id}']")
    assert linked.inner_text().startswith("Acme renewal")
    linked.locator("a").click()
    page.wait_for_url(f"{web.base}/crm/deals/{deal.id}")
    assert page.locator("dd.status").inner_text() == "open"
    assert page.locator("dd.contacts").inner_text() == "Alice Example"
    assert page.locator("#activities li.activity .subject").all_inner_texts() == ["Intro call"]
    assert page.locator("#timeline li.entry", has_text="Q3").count() == 1
    # Unlinked: off the deal's page again.
    page.goto(thread_url)
    page.click(f"li.linked-deal[data-deal='{deal.id}'] button")
    page.wait_for_url(re.compile(r"\?done=unlinked$"))
    page.goto(f"/crm/deals/{deal.id}")
    assert page.locator("#timeline li.entry", has_text="Q3").count() == 0
    assert not web.dialogs and not web.remote


# --- over HTTP ------------------------------------------------------------------------------


def _signed_in(app: FastAPI, email: str, password: str) -> TestClient:
    client = TestClient(app, base_url=API_BASE_URL, follow_redirects=False)
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    answer = client.post(
        "/login", data={"csrf": token.group(1), "email": email, "password": password}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
    return client


@pytest.mark.dovecot
def test_first_run_once_throttled_sign_in_and_a_teammate_sees_nothing(
    app: FastAPI, mirror: SeededMirror
) -> None:
    anonymous = TestClient(app, base_url=API_BASE_URL, follow_redirects=False)
    assert anonymous.get("/").headers["location"] == "/login"
    assert anonymous.get("/login").headers["location"] == "/welcome"
    form = anonymous.get("/welcome")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    fields = {"csrf": token.group(1), "email": ADMIN[0], "password": ADMIN[1]}
    # A forged token, then mismatched passwords: no user yet.
    assert anonymous.post("/welcome", data={**fields, "csrf": "forged"}).status_code == 403
    assert anonymous.post("/welcome", data={**fields, "confirm": "other"}).status_code == 422
    assert app.state.auth.users.count_users() == 0
    made = anonymous.post("/welcome", data={**fields, "confirm": ADMIN[1]})
    assert made.status_code == 303
    # Once a user exists the first-run page is gone, for everyone.
    assert anonymous.get("/welcome").status_code == 404
    again = anonymous.post("/welcome", data={**fields, "email": "eve@example.test"})
    assert again.status_code in (403, 404)  # its form token went with the first run
    assert [u.email for u in app.state.auth.users.list_users()] == [ADMIN[0]]
    # The session cookie: HttpOnly, SameSite=Lax (not Secure over plain HTTP).
    cookie = made.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    admin = _signed_in(app, *ADMIN)
    thread_id = int(admin.get("/").text.split('href="/conversation/', 1)[1].split('"', 1)[0])
    thread = admin.get(f"/conversation/{thread_id}")
    assert thread.status_code == 200
    frames = re.findall(r'src="(/message/\d+/frame)"', admin.get("/").text + thread.text)
    # A member with a session: the admin's thread and bodies are 404, as things that do not
    # exist; their own inbox is empty.
    app.state.auth.create_user("mo@example.test", "another good password")
    member = _signed_in(app, "mo@example.test", "another good password")
    hidden = member.get(f"/conversation/{thread_id}")
    ghost = member.get("/conversation/987654321")
    assert hidden.status_code == ghost.status_code == 404
    assert mirror.address not in hidden.text
    assert "No conversations here yet." in member.get("/").text
    for frame in frames:
        assert member.get(frame).status_code == 404
    # A team inbox: the account moved into team Support (through the API) leaves the admin's
    # personal inbox for the team's page; a member sees it once in the team, not before.
    support = app.state.auth.teams.create("Support").id
    api = user_client(app, ADMIN[0])
    assert api.patch(f"/accounts/{mirror.account}", json={"team_id": support}).status_code == 200
    team_page = admin.get(f"/team/{support}")
    assert team_page.status_code == 200 and f'href="/conversation/{thread_id}"' in team_page.text
    assert f'href="/conversation/{thread_id}"' not in admin.get("/").text
    assert member.get(f"/team/{support}").status_code == 404
    app.state.auth.teams.add_member(support, app.state.auth.users.get_user("mo@example.test").id)
    seen = member.get(f"/team/{support}")
    assert seen.status_code == 200 and f'href="/conversation/{thread_id}"' in seen.text
    assert f'href="/team/{support}">Support</a>' in seen.text
    assert member.get(f"/conversation/{thread_id}").status_code == 200
    # The member's CSRF token is theirs: the admin's does not pass with the member's session.
    admin_token = session_token(admin.cookies["correspond_session"])
    forged = {"csrf": admin_token, "thread_order": "newest_first"}
    refused = member.post("/preferences", data=forged)
    assert refused.status_code == 403
    # Sign-in uses the API's limiter: after the limit, even the right password waits.
    limit = app.state.settings.login_max_failures_per_user
    for _ in range(limit):
        anonymous.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', anonymous.get("/login").text)
        assert token is not None
        bad = {"csrf": token.group(1), "email": ADMIN[0], "password": "nope"}
        assert anonymous.post("/login", data=bad).status_code in (401, 429)
    throttled = anonymous.post("/login", data={**bad, "password": ADMIN[1]})
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0


def test_sign_in_returns_to_the_page_asked_for_and_nowhere_else(app: FastAPI) -> None:
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    anonymous = TestClient(app, base_url=API_BASE_URL, follow_redirects=False)
    asked = anonymous.get("/crm/contacts?q=ann")
    assert asked.status_code == 303
    assert asked.headers["location"] == "/login?next=%2Fcrm%2Fcontacts%3Fq%3Dann"
    form = anonymous.get(asked.headers["location"]).text
    assert 'name="next" value="/crm/contacts?q=ann"' in form

    def sign_in(back: str) -> str:
        page = anonymous.get("/login").text
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        fields = {"csrf": token.group(1), "email": ADMIN[0], "password": ADMIN[1], "next": back}
        answer = anonymous.post("/login", data=fields)
        assert answer.status_code == 303
        return str(answer.headers["location"])

    assert sign_in("/crm/contacts?q=ann") == "/crm/contacts?q=ann"
    # An open redirect is what a hostile link would make of it: every other site is refused.
    for hostile in ("//evil.example/", "https://evil.example/", "/\\evil.example", "/a\r\nb"):
        assert sign_in(hostile) == "/", hostile
    hostile_form = anonymous.get("/login", params={"next": "//evil.example/"}).text
    assert "evil.example" not in hostile_form


@pytest.mark.dovecot
def test_message_frame_is_sanitised_under_its_own_csp(app: FastAPI, mirror: SeededMirror) -> None:
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    admin = _signed_in(app, *ADMIN)
    inbox = admin.get("/").text
    report = re.search(r'href="/conversation/(\d+)"[^>]*>(?:(?!</a>).)*Q3', inbox, re.S)
    assert report is not None
    thread = admin.get(f"/conversation/{report.group(1)}").text
    frame_url = re.search(r'src="(/message/(\d+)/frame)"', thread)
    assert frame_url is not None
    frame = admin.get(frame_url.group(1))
    csp = frame.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'") and "frame-ancestors 'self'" in csp
    assert "sandbox" in csp and "allow-scripts" not in csp and "https:" not in csp
    assert "<script" not in frame.text.lower() and "onerror" not in frame.text.lower()
    # The attachments are the API's downloads (attachment, nosniff).
    links = re.findall(r'href="(/messages/\d+/attachments/\d+)" download', thread)
    assert links
    download = admin.get(links[0])
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.headers["x-content-type-options"] == "nosniff"
    # The inline cid: image is in the frame as a data: URL of its own bytes.
    assert f'src="data:image/png;base64,{base64.b64encode(PNG_BYTES).decode()}"' in frame.text
    # Show images: only when asked, and then only for that message.
    shown = admin.get(frame_url.group(1), params={"images": "true"})
    assert "https:" in shown.headers["content-security-policy"]


@pytest.mark.dovecot
def test_settings_and_template_forms_refused_without_their_token(
    app: FastAPI, mirror: SeededMirror
) -> None:
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    admin = _signed_in(app, *ADMIN)
    ada = app.state.auth.users.get_user(ADMIN[0])
    assert len(app.state.composer.identities.list(ada)) == 1  # the mailbox's own address
    alias = app.state.composer.identities.create_for_account(
        ada, account_name=mirror.account, address="sales@example.test", display_name="Sales"
    )
    page = admin.get("/settings/smtp")
    assert page.status_code == 200 and "sales@example.test" in page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    made = admin.post("/email-templates", data={"csrf": token.group(1), "name": "T", "text": "Hi"})
    assert made.status_code == 303
    template_id = int(made.headers["location"].split("/")[-1].split("?")[0])
    forms = {
        f"/settings/smtp/{alias.id}/default": {"go": "1"},
        "/settings/smtp": {"address": "x@example.test", "host": "127.0.0.1", "password": "p"},
        "/email-templates": {"name": "Forged", "text": "x"},
        f"/email-templates/{template_id}": {"name": "Forged"},
        f"/email-templates/{template_id}/preview": {"contact_id": ""},
    }
    for path, fields in forms.items():
        for csrf in (None, "0" * 64):
            data = fields if csrf is None else {**fields, "csrf": csrf}
            assert admin.post(path, data=data).status_code == 403, (path, csrf)
    assert not app.state.composer.identities.get(ada, alias.id).is_default
    assert [t.name for t in app.state.composer.templates.list(ada)] == ["T"]
    # With the token, Mark Default works over plain HTTP too (no script needed).
    done = admin.post(f"/settings/smtp/{alias.id}/default", data={"csrf": token.group(1)})
    assert done.status_code == 303 and done.headers["location"] == "/settings/smtp?done=default"
    assert app.state.composer.identities.get(ada, alias.id).is_default
    # Another user's identity and template are 404 pages, as ones that do not exist.
    app.state.auth.create_user("mo@example.test", "another good password")
    member = _signed_in(app, "mo@example.test", "another good password")
    member_token = session_token(member.cookies["correspond_session"])
    assert member.get(f"/email-templates/{template_id}").status_code == 404
    hidden = member.post(f"/settings/smtp/{alias.id}/default", data={"csrf": member_token})
    assert hidden.status_code == 404 and "sales@example.test" not in hidden.text
    assert "sales@example.test" not in member.get("/settings/smtp").text


@pytest.mark.dovecot
def test_crm_pages_hide_mail_a_teammate_may_not_see_and_forms_need_their_token(
    app: FastAPI, store: Store, mirror: SeededMirror
) -> None:
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    acme, alice, deal = _crm_records(app, store)
    admin = _signed_in(app, *ADMIN)
    mine = admin.get(f"/crm/contacts/{alice.id}")
    assert mine.status_code == 200 and "Project kickoff" in mine.text
    # A teammate without access to the account: the records, not the mail.
    app.state.auth.create_user("mo@example.test", "another good password")
    member = _signed_in(app, "mo@example.test", "another good password")
    for path, name in (
        (f"/crm/contacts/{alice.id}", "Alice Example"),
        (f"/crm/companies/{acme.id}", "Acme"),
        (f"/crm/deals/{deal.id}", "Acme renewal"),
    ):
        seen = member.get(path)
        assert seen.status_code == 200 and name in seen.text, path
        assert "No emails you can see." in seen.text and "kickoff" not in seen.text, path
        assert "/conversation/" not in seen.text, path
    assert "alice@example.test" in member.get("/crm/contacts?q=alice").text
    assert member.get("/crm/contacts/987654321").status_code == 404
    # Their own thread-deal link: the admin's thread is a 404, as one that does not exist.
    report = re.search(
        r'href="/conversation/(\d+)"[^>]*>(?:(?!</a>).)*Q3', admin.get("/").text, re.S
    )
    assert report is not None  # Bob's report: not Alice's, not on the deal
    thread_id = int(report.group(1))
    member_token = session_token(member.cookies["correspond_session"])
    form = {"csrf": member_token, "deal_id": str(deal.id)}
    assert member.post(f"/conversation/{thread_id}/deals", data=form).status_code == 404
    # Without the token (or with another session's), refused; nothing linked.
    for csrf in (None, "0" * 64, member_token):
        data = (
            {"deal_id": str(deal.id)} if csrf is None else {"deal_id": str(deal.id), "csrf": csrf}
        )
        assert admin.post(f"/conversation/{thread_id}/deals", data=data).status_code == 403
    on_deal = f'href="/conversation/{thread_id}#m'
    assert on_deal not in admin.get(f"/crm/deals/{deal.id}").text
    # With it: linked, and the deal's page lists the thread.
    token = session_token(admin.cookies["correspond_session"])
    done = admin.post(
        f"/conversation/{thread_id}/deals", data={"csrf": token, "deal_id": str(deal.id)}
    )
    assert done.status_code == 303 and done.headers["location"].endswith("?done=linked")
    assert on_deal in admin.get(f"/crm/deals/{deal.id}").text
    bad = admin.post(f"/conversation/{thread_id}/deals", data={"csrf": token, "deal_id": "x"})
    assert bad.status_code == 422
