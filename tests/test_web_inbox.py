"""The inbox's filters and search box, the thread page's Move, desktop notifications, the
thread order in a team inbox, and archive/delete reaching the mailbox, in a real Chromium
(the fixtures of tests/test_web.py: Debian's /usr/bin/chromium, one per module; the app under
uvicorn over the test store with a mailbox mirrored from the real Dovecot), on SQLite and
PostgreSQL.

What a page lists is compared with what the JSON API answers for the same view (``GET
/inbox``, ``GET /search``): the pages use the same services. What reaches the mailbox is
read back from Dovecot with imaplib after the account's syncer applied the outbox.
"""

# The fixtures of tests/test_web.py are imported by name, so test arguments "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from correspond.settings import Settings
from correspond.store import Store
from correspond.store.blobs import BlobStore
from correspond.store.messages import MessageStore
from correspond.sync.engine import AccountSyncer
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.mirror import SeededMirror
from correspond.testing.store import add_dovecot_account, sync_once
from correspond.web.csrf import session_token
from helpers import user_client
from test_web import (  # noqa: F401  (fixtures, used by name)
    ADMIN,
    Watched,
    _crm_records,
    _first_run,
    _signed_in,
    app,
    browser,
    mirror,
    served,
    settings,
    web,
)
from test_web import store_url as store_url  # SQLite only: conftest_store.sqlite_store_url

pytestmark = pytest.mark.dovecot


# --- helpers ----------------------------------------------------------------------------------


def _api(app: FastAPI) -> TestClient:
    return user_client(app, ADMIN[0])


def _api_threads(app: FastAPI, path: str = "/inbox", **params: Any) -> list[int]:
    """Every thread id of the JSON API's view, following its cursor."""
    api = _api(app)
    ids: list[int] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = api.get(path, params=query)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        ids += [t["thread_id"] for t in body["threads"]]
        cursor = body["next_cursor"]
        if not cursor:
            return ids


def _listed(page: Any) -> list[int]:
    return [int(x) for x in page.locator("#threads li.thread").evaluate_all(
        "els => els.map(e => e.dataset.thread)"
    )]  # fmt: skip


def _params(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def _syncer(store: Store, settings: Settings) -> AccountSyncer:
    return AccountSyncer(
        store, MessageStore(store.engine), BlobStore.from_settings(settings), settings
    )


def _in_thread(run: Any) -> Any:
    """A coroutine run in a thread of its own (Playwright's sync API keeps a loop in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run).result()


def _apply_outbox(store: Store, settings: Settings, account_name: str) -> Any:
    """What the account's live session does with the outbox: connect, apply, log out."""

    async def run() -> Any:
        syncer = _syncer(store, settings)
        account = store.get_account(account_name)
        client = await syncer.connect(account)
        try:
            return await syncer.apply_outbox(client, account)
        finally:
            await client.logout()

    return _in_thread(run())


def _sync(store: Store, settings: Settings, account_name: str) -> None:
    _in_thread(sync_once(_syncer(store, settings), store.get_account(account_name)))


def _mailbox_has(dovecot: DovecotServer, user: ImapUser, mailbox: str, message_id: str) -> bool:
    """Whether ``mailbox`` on the server holds the message (imaplib, a client of its own)."""
    conn = dovecot.imaplib_client(user)
    try:
        assert conn.select(f'"{mailbox}"', readonly=True)[0] == "OK", mailbox
        typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", message_id)  # type: ignore[arg-type]
        assert typ == "OK"
        return bool(data[0].split())
    finally:
        conn.logout()


def _thread_with(page: Any, subject: str) -> Any:
    return page.locator("#threads li.thread", has_text=subject)


def _message_order(page: Any) -> list[str]:
    ids: list[str] = page.locator("section.message").evaluate_all(
        "els => els.map(e => e.dataset.message)"
    )
    return ids


# --- filters and search -------------------------------------------------------------------------


def test_filters_live_in_the_url_and_paging_keeps_them(
    web: Watched, app: FastAPI, store: Store, mirror: SeededMirror
) -> None:
    page = web.page
    _first_run(web)
    _acme, alice, _deal = _crm_records(app, store)
    page.goto("/")
    everything = _listed(page)
    assert everything == _api_threads(app)
    # Unread: a chip that is a link; the list is the API's for the same filter.
    page.click("#filters a[data-filter=unread]")
    page.wait_for_url(re.compile(r"/\?unread=true$"))
    assert page.locator("#filters a[data-filter=unread]").get_attribute("aria-pressed") == "true"
    unread = _listed(page)
    assert unread and unread == _api_threads(app, unread="true")
    assert page.locator("#threads li.thread:not(.unread)").count() == 0
    # And has an attachment: both stay in the URL; only Bob's report.
    page.click("#filters a[data-filter=has_attachment]")
    page.wait_for_url(re.compile(r"/\?unread=true&has_attachment=true$"))
    both = _listed(page)
    assert both == _api_threads(app, unread="true", has_attachment="true")
    assert len(both) == 1 and "Q3" in page.locator("#threads").inner_text()
    # The chip again: that filter off, the other kept.
    page.click("#filters a[data-filter=has_attachment]")
    page.wait_for_url(re.compile(r"/\?unread=true$"))
    # Paging by cursor keeps the filters: two a page, "Older" to the end.
    page.goto("/?unread=true&limit=2")
    seen: list[int] = []
    while True:
        listed = _listed(page)
        assert 0 < len(listed) <= 2
        seen += listed
        older = page.locator("nav.paging a[rel=next]")
        if older.count() == 0:
            break
        href = older.get_attribute("href") or ""
        assert _params(href)["unread"] == ["true"] and _params(href)["limit"] == ["2"], href
        assert "cursor" in _params(href)
        older.click()
        page.wait_for_url(re.compile(r"cursor="))
        assert page.locator("#threads li.thread:not(.unread)").count() == 0
    assert seen == unread and len(seen) > 2
    newest = page.locator("nav.paging a", has_text="Newest").get_attribute("href") or ""
    assert _params(newest) == {"unread": ["true"], "limit": ["2"]}
    # A folder by role (chip), then the same folder by id (the filter form's select).
    page.goto("/")
    page.locator("#filters a.folder", has_text="Sent").click()
    page.wait_for_url(re.compile(r"/\?folder=sent$"))
    sent = _listed(page)
    assert sent == _api_threads(app, folder="sent") and len(sent) == 1
    assert "Project kickoff" in page.locator("#threads").inner_text()
    folder = next(f for f in store.list_folders(mirror.account) if f.role == "sent")
    page.select_option("#filter-form select[name=folder]", str(folder.id))
    page.wait_for_url(re.compile(rf"/\?folder={folder.id}$"))
    assert _listed(page) == sent
    # A contact's chip on a thread filters by that contact; the active filter removes itself.
    page.goto("/")
    page.locator(f"#threads a.chip.contact[data-contact='{alice.id}']").first.click()
    page.wait_for_url(re.compile(rf"/\?contact_id={alice.id}$"))
    hers = _listed(page)
    assert hers and hers == _api_threads(app, contact_id=alice.id)
    assert len(hers) < len(everything)
    active = page.locator("#filters a.record.contact")
    assert active.inner_text() == "Contact: Alice Example \u00d7"
    active.click()
    page.wait_for_url(f"{web.base}/")
    assert _listed(page) == everything
    # Starred: nothing yet; star a thread from its page and it is the one listed.
    page.click("#filters a[data-filter=starred]")
    page.wait_for_url(re.compile(r"/\?starred=true$"))
    assert _listed(page) == [] and "No conversations match" in page.inner_text("#threads")
    page.goto("/")
    _thread_with(page, "Filler 3").locator("a").first.click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    page.click("button[value=star]")
    page.wait_for_url(re.compile(r"\?done=star$"))
    page.goto("/?starred=true")
    assert len(_listed(page)) == 1 and "Filler 3" in page.inner_text("#threads")
    assert not web.dialogs and not web.remote


def _index_all(app: FastAPI) -> None:
    """Index every stored message now (the app's background indexer does it on its own time)."""
    for _ in range(100):
        if app.state.search.index.index_batch().caught_up:
            return
    raise AssertionError("the search index did not catch up")


def test_the_search_box_uses_the_search_service_and_links_to_threads(
    web: Watched, app: FastAPI
) -> None:
    page = web.page
    _first_run(web)
    _index_all(app)
    api = _api(app)
    query = "from:bob@example.test has:attachment quarterly"
    page.fill("#inbox-search input[name=q]", query)
    page.click("#inbox-search button[type=submit]")
    page.wait_for_url(re.compile(r"/\?q=from%3Abob%40example.test"))
    results = page.locator("#results li.result")
    expected = api.get("/search", params={"q": query}).json()["messages"]
    assert len(expected) == 1
    assert results.count() == 1
    assert results.first.get_attribute("data-message") == str(expected[0]["id"])
    assert "Q3" in results.first.inner_text()
    # The thread list and its chips are not shown under a search; the box keeps the query.
    assert page.locator("#threads").count() == 0
    assert page.input_value("#inbox-search input[name=q]") == query
    results.first.locator("a").click()
    page.wait_for_url(
        re.compile(rf"/conversation/{expected[0]['thread_id']}#m{expected[0]['id']}$")
    )
    assert page.locator(f"section.message[data-message='{expected[0]['id']}']").count() == 1
    # Nothing matches: said so.
    page.goto("/?q=" + "from:alice@example.test has:attachment".replace(" ", "+"))
    assert page.locator("#results li.result").count() == 0
    assert "No messages match." in page.inner_text("#results")
    # A query that cannot be searched: the search's sentence beside the box (422).
    answer = page.goto("/?q=before:2024-13-45")
    assert answer is not None and answer.status == 422
    error = page.locator("#search-error").inner_text()
    assert error == "before: needs a date as YYYY-MM-DD", error
    # Paging through the results keeps the query: the API's order, nothing twice.
    alice = "from:alice@example.test"
    everything = [m["id"] for m in api.get("/search", params={"q": alice}).json()["messages"]]
    assert len(everything) > 3
    page.goto("/?" + f"q={alice}&limit=2".replace(":", "%3A").replace("@", "%40"))
    seen: list[int] = []
    while True:
        seen += [int(x) for x in page.locator("#results li.result").evaluate_all(
            "els => els.map(e => e.dataset.message)"
        )]  # fmt: skip
        older = page.locator("nav.paging a[rel=next]")
        if older.count() == 0:
            break
        href = older.get_attribute("href") or ""
        assert _params(href)["q"] == [alice] and _params(href)["limit"] == ["2"], href
        older.click()
        page.wait_for_url(re.compile(r"cursor="))
    assert seen == everything
    # "Clear search" goes back to the threads (the page size kept).
    page.click("#search-results a.clear")
    page.wait_for_url(f"{web.base}/?limit=2")
    assert len(_listed(page)) > 0
    assert not web.dialogs and not web.remote


# --- the thread page's Move ---------------------------------------------------------------------


def test_move_by_folder_id_reaches_the_mailbox(
    web: Watched,
    app: FastAPI,
    store: Store,
    settings: Settings,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    mirror: SeededMirror,
) -> None:
    page = web.page
    _first_run(web)
    # A folder of the user's own, found by a folder refresh (synced: the account syncs all).
    dovecot.create_mailbox(imap_user, "Projects")
    _in_thread(app.state.accounts.refresh_folders(mirror.account))
    page.goto("/")
    _thread_with(page, "Filler 2").locator("a").first.click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    thread_url = page.url
    # The choices are the account's folders by id (the store's row for each remote name).
    folders = [f for f in store.list_folders(mirror.account) if f.selectable and not f.removed]
    options = page.locator("#move-thread select[name=folder_id] option:not([value=''])")
    values = options.evaluate_all("els => els.map(e => e.value)")
    assert values == [str(f.id) for f in folders]
    labels = [f.name + ("" if f.selected else " (not synced)") for f in folders]
    assert options.all_inner_texts() == labels and "Junk (not synced)" in labels
    projects = next(f for f in folders if f.name == "Projects")
    assert projects.selected
    page.select_option("#move-thread select[name=folder_id]", str(projects.id))
    page.click("#move-thread button[type=submit]")
    page.wait_for_url(re.compile(r"\?done=moved$"))
    assert page.locator(".confirm", has_text="Done: moved.").count() == 1
    # The mailbox: by the account's syncer, through the outbox (two-way).
    assert _mailbox_has(dovecot, imap_user, "INBOX", "<filler2@example.test>")
    report = _apply_outbox(store, settings, mirror.account)
    assert report.applied >= 1 and report.failed == 0, report
    assert _mailbox_has(dovecot, imap_user, "Projects", "<filler2@example.test>")
    assert not _mailbox_has(dovecot, imap_user, "INBOX", "<filler2@example.test>")
    # Then the inbox no longer lists it; the folder's view (by id, the filter's select) does.
    _sync(store, settings, mirror.account)
    page.goto("/")
    assert _thread_with(page, "Filler 2").count() == 0
    page.select_option("#filter-form select[name=folder]", str(projects.id))
    page.wait_for_url(re.compile(rf"/\?folder={projects.id}$"))
    assert _listed(page) == [int(urlsplit(thread_url).path.rsplit("/", 1)[1])]
    # A folder of another account (or none) is refused beside nothing moved; no token, 403.
    client = _signed_in(app, *ADMIN)
    token = session_token(client.cookies["correspond_session"])
    path = urlsplit(thread_url).path + "/move"
    assert client.post(path, data={"folder_id": str(projects.id)}).status_code == 403
    assert client.post(path, data={"csrf": token, "folder_id": "987654"}).status_code == 422
    assert client.post(path, data={"csrf": token, "folder_id": "x"}).status_code == 422
    # Another user without access: a 404, as a thread that does not exist.
    app.state.auth.create_user("mo@example.test", "another good password")
    member = _signed_in(app, "mo@example.test", "another good password")
    member_token = session_token(member.cookies["correspond_session"])
    refused = member.post(path, data={"csrf": member_token, "folder_id": str(projects.id)})
    assert refused.status_code == 404
    assert not web.dialogs and not web.remote


# --- desktop notifications ------------------------------------------------------------------------

#: Records each desktop notification the page creates (Playwright's init script: not part of
#: the page, so not under its CSP), then lets the browser's own constructor run.
RECORD_NOTIFICATIONS = """
(() => {
  const Real = window.Notification;
  if (!Real) return;
  window.__notes = [];
  class Recorded extends Real {
    constructor(title, options) {
      window.__notes.push({ title, body: (options || {}).body || "" });
      super(title, options);
    }
  }
  window.Notification = Recorded;
})();
"""


def test_desktop_notifications_after_permission_on_each_new_message(
    web: Watched,
    store: Store,
    settings: Settings,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    mirror: SeededMirror,
) -> None:
    page = web.page
    page.context.grant_permissions(["notifications"], origin=web.base)
    page.add_init_script(RECORD_NOTIFICATIONS)
    _first_run(web)
    button = page.locator("#desktop-notify")
    button.wait_for()
    # Granted already (the browser context's permission): the button says so, disabled.
    assert page.evaluate("Notification.permission") == "granted"
    page.wait_for_function("() => document.body.dataset.live === 'inbox'")
    assert button.inner_text() == "Desktop notifications on" and button.is_disabled()
    new = plain_message(
        "notify-1@example.test",
        when=datetime.now(UTC),
        subject="<b>Desk</b> alert",
        body="Now.\r\n",
        sender="Zed <zed@example.test>",
        to=imap_user.address,
    )
    dovecot.deliver(imap_user, new)
    _sync(store, settings, mirror.account)
    page.wait_for_function("() => window.__notes.length > 0", timeout=15_000)
    notes = page.evaluate("window.__notes")
    assert notes == [{"title": "<b>Desk</b> alert", "body": "From Zed"}]
    page.locator(".toast", has_text="Desk").wait_for()
    assert not web.dialogs and not web.remote


def test_the_notifications_button_asks_for_permission(web: Watched, store: Store) -> None:
    if store.dialect != "sqlite":
        pytest.skip("the browser's permission prompt does not depend on the database")
    page = web.page
    _first_run(web)
    button = page.locator("#desktop-notify")
    button.wait_for()
    assert page.evaluate("Notification.permission") == "default"
    assert button.inner_text() == "Enable desktop notifications" and button.is_enabled()
    # No one is there to answer a prompt in headless Chromium: the context grants it, and
    # the click's requestPermission() resolves with that answer, which the button shows.
    page.context.grant_permissions(["notifications"], origin=web.base)
    button.click()
    page.wait_for_function(
        "() => document.getElementById('desktop-notify').dataset.permission === 'granted'"
    )
    assert button.inner_text() == "Desktop notifications on"


# --- thread order in the personal and a team inbox ------------------------------------------------


def _seed_team_mailbox(
    store: Store, settings: Settings, dovecot: DovecotServer
) -> tuple[str, ImapUser]:
    """A second mailbox with a two-message thread ("Team question"), synced."""
    user = dovecot.add_user()
    now = datetime.now(UTC).replace(microsecond=0)
    first = plain_message(
        "team-q@example.test",
        when=now - timedelta(days=2),
        subject="Team question",
        body="Who takes this?\r\n",
        sender="Carol <carol@example.test>",
        to=user.address,
    )
    second = plain_message(
        "team-a@example.test",
        when=now - timedelta(days=1),
        subject="Re: Team question",
        body="I do.\r\n",
        sender="Dan <dan@example.test>",
        to=user.address,
        extra_headers="In-Reply-To: <team-q@example.test>\r\nReferences: <team-q@example.test>\r\n",
    )
    dovecot.deliver(user, first)
    dovecot.deliver(user, second)
    account = add_dovecot_account(store, dovecot, user)
    _in_thread(sync_once(_syncer(store, settings), account))
    return account.name, user


def test_thread_order_reverses_threads_in_the_personal_and_a_team_inbox(
    web: Watched,
    app: FastAPI,
    store: Store,
    settings: Settings,
    dovecot: DovecotServer,
) -> None:
    page = web.page
    _first_run(web)
    name, _user = _seed_team_mailbox(store, settings, dovecot)
    support = app.state.auth.teams.create("Support")
    answer = _api(app).patch(f"/accounts/{name}", json={"team_id": support.id})
    assert answer.status_code == 200, answer.text
    # The threads, oldest first (the default): one in the personal inbox, one in the team's.
    page.goto("/")
    _thread_with(page, "Project kickoff").locator("a").first.click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    personal_url, personal = page.url, _message_order(page)
    page.goto("/")
    page.click(f"header.top nav a[href='/team/{support.id}']")
    page.wait_for_url(f"{web.base}/team/{support.id}")
    assert page.locator("h1").inner_text().startswith("Support inbox")
    assert _thread_with(page, "Project kickoff").count() == 0
    _thread_with(page, "Team question").locator("a").first.click()
    page.wait_for_url(re.compile(r"/conversation/\d+$"))
    team_url, team = page.url, _message_order(page)
    assert len(personal) == 2 and len(team) == 2
    assert "Carol" in page.locator("section.message").first.inner_text()
    # Newest on top: saved the moment it is chosen; both threads reversed.
    for order, saved in (
        ("newest_first", "Saved: newest emails on top."),
        ("oldest_first", "Saved: newest emails at the bottom."),
    ):
        page.goto("/preferences")
        page.check(f"input[value={order}]")
        page.locator("#saved", has_text=saved).wait_for()
        flip = order == "newest_first"
        for url, first in ((personal_url, personal), (team_url, team)):
            page.goto(url)
            assert _message_order(page) == (list(reversed(first)) if flip else first), url
            assert page.locator("article.conversation").get_attribute("data-order") == order
    assert not web.dialogs and not web.remote


# --- archive and delete, with the toggles on, reach the mailbox ---------------------------------


def test_archive_and_delete_with_toggles_on_move_the_mail_in_the_mailbox(
    web: Watched,
    app: FastAPI,
    store: Store,
    settings: Settings,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    mirror: SeededMirror,
) -> None:
    page = web.page
    _first_run(web)
    # The two toggles on, through Email Settings → Full Email Sync.
    page.goto("/settings/sync")
    row = page.locator(f"article.sync-account[data-account='{mirror.account}']")
    for toggle in ("archive_remote_on_crm_archive", "delete_remote_on_crm_delete"):
        row.locator(f"input[name={toggle}]").check()
    row.locator("button", has_text="Save toggles").click()
    page.wait_for_url(f"{web.base}/settings/sync?done=saved")
    toggles = app.state.accounts.get_account(mirror.account).account.toggles
    assert toggles["archive_remote_on_crm_archive"] and toggles["delete_remote_on_crm_delete"]
    # Archive one thread and delete another from their pages: back to the inbox each time.
    for subject, action in (("Filler 0", "archive"), ("Filler 1", "delete")):
        page.goto("/")
        _thread_with(page, subject).locator("a").first.click()
        page.wait_for_url(re.compile(r"/conversation/\d+$"))
        page.click(f"form.actions button[value={action}]")
        page.wait_for_url(f"{web.base}/")
        assert _thread_with(page, subject).count() == 0
    for mid in ("<filler0@example.test>", "<filler1@example.test>"):
        assert _mailbox_has(dovecot, imap_user, "INBOX", mid)  # not applied yet
    # The account's syncer applies the outbox: the mailbox follows.
    report = _apply_outbox(store, settings, mirror.account)
    assert report.applied == 2 and report.failed == 0, report
    assert _mailbox_has(dovecot, imap_user, "Archive", "<filler0@example.test>")
    assert not _mailbox_has(dovecot, imap_user, "INBOX", "<filler0@example.test>")
    assert _mailbox_has(dovecot, imap_user, "Trash", "<filler1@example.test>")
    assert not _mailbox_has(dovecot, imap_user, "INBOX", "<filler1@example.test>")
    # The next sync sees the mailbox as the CRM left it: the archived thread in the Archive
    # view, the deleted one nowhere, the inbox without either.
    _sync(store, settings, mirror.account)
    page.goto("/?folder=archive")
    assert _thread_with(page, "Filler 0").count() == 1
    page.goto("/")
    assert _thread_with(page, "Filler 0").count() == 0
    assert _thread_with(page, "Filler 1").count() == 0
    assert not web.dialogs and not web.remote


# --- over HTTP ------------------------------------------------------------------------------------


def test_filter_parameters_are_checked_and_a_team_page_filters_too(
    app: FastAPI, store: Store, settings: Settings, dovecot: DovecotServer, mirror: SeededMirror
) -> None:
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    admin = _signed_in(app, *ADMIN)
    plain = admin.get("/")
    assert plain.status_code == 200
    # The filter form's "Any" sends empty values: the same page as none at all.
    empty = admin.get("/", params={"folder": "", "contact_id": "", "deal_id": ""})
    ids = re.findall(r'data-thread="(\d+)"', plain.text)
    assert ids and re.findall(r'data-thread="(\d+)"', empty.text) == ids
    # What is not a filter is an error page, never a list of something else.
    assert admin.get("/", params={"contact_id": "abc"}).status_code == 422
    assert admin.get("/", params={"unread": "maybe"}).status_code == 422
    assert admin.get("/", params={"limit": "0"}).status_code == 422
    assert admin.get("/", params={"contact_id": "987654"}).status_code == 404
    assert admin.get("/", params={"folder": "987654"}).status_code == 404
    assert admin.get("/", params={"cursor": "not a cursor"}).status_code == 400  # as the API
    # A team inbox takes the same filters (its own accounts' folders, the API's answer).
    name, _user = _seed_team_mailbox(store, settings, dovecot)
    support = app.state.auth.teams.create("Support")
    assert _api(app).patch(f"/accounts/{name}", json={"team_id": support.id}).status_code == 200
    team = admin.get(f"/team/{support.id}", params={"unread": "true"})
    assert team.status_code == 200
    listed = [int(x) for x in re.findall(r'data-thread="(\d+)"', team.text)]
    assert listed == _api_threads(app, f"/teams/{support.id}/inbox", unread="true")
    assert len(listed) == 1
    folders = {f.id for f in store.list_folders(name) if f.selected}
    offered = {int(x) for x in re.findall(r'<option value="(\d+)"', team.text)}
    assert offered == folders  # the team's account's folders only (no contacts, no deals yet)
    chip = re.search(r'href="([^"]*)" aria-pressed="true"', team.text)
    assert chip is not None and chip.group(1) == f"/team/{support.id}"  # Unread off again
    # The team page's search box searches the team's inboxes only; the personal page's, all
    # the caller may see (the admin: both mailboxes).
    app.state.search.index.index_all()
    team_account = store.get_account(name).id

    def found(path: str) -> dict[int, int]:
        page = admin.get(path, params={"q": "example"})
        assert page.status_code == 200
        ids = [int(x) for x in re.findall(r'#m(\d+)"', page.text)]
        return {i: app.state.reader.get_message(i).account_id for i in ids}

    in_team = found(f"/team/{support.id}")
    everywhere = found("/")
    assert in_team and set(in_team.values()) == {team_account}
    assert set(everywhere.values()) > {team_account}
