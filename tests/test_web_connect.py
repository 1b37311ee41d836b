"""Connecting a mailbox through Email Settings → Full Email Sync, end to end, in a real Chromium
(the fixtures of tests/test_web.py), with the sync engine running in the app's process as
``correspond serve`` runs it (a :class:`~correspond.sync.runner.SyncRunner` in the lifespan),
against the real Dovecot, on SQLite and PostgreSQL.

The journey: connect (the connection test passes), the folders are listed with their roles and
checked as the product selects them by default, one of them is unchecked, "Start syncing"; the
progress bar fills folder by folder without a reload and says when the backfill is complete;
the store then holds the mail of the chosen folders and nothing of the others.
"""

# The fixtures of tests/test_web.py are imported by name, so test arguments "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Folder, Store
from correspond.store.blobs import BlobStore
from correspond.store.messages import MessageStore
from correspond.sync.engine import AccountSyncer
from correspond.sync.runner import SyncRunner
from correspond.testing.dovecot import DovecotServer
from correspond.testing.mail import plain_message
from correspond.web.settings_sync import AWAITING_FOLDERS
from test_web import (  # noqa: F401  (fixtures, used by name)
    Watched,
    _first_run,
    browser,
    served,
    settings,
    web,
)
from test_web import store_url as store_url  # SQLite only: conftest_store.sqlite_store_url

# What the mailbox holds: folder -> messages (Drafts and Trash stay empty).
MAILBOX = {"INBOX": 3, "Sent": 2, "Archive": 1, "Projects": 2, "Newsletters": 2, "Junk": 1}
CHOSEN = {"INBOX", "Sent", "Archive", "Projects"}  # the defaults, Newsletters unchecked


class Gates:
    """Two gates in front of the real engine's folder syncs, opened by the test: ``first``
    holds the first folder (INBOX: the engine backfills INBOX and Sent first), ``rest`` every
    other one. The test sees the bar at 0, then after one folder, then complete: each state
    reached by the page's polling, not by a reload (``gated`` opens both when the test
    ends)."""

    def __init__(self) -> None:
        self.first = threading.Event()
        self.rest = threading.Event()
        self.seen: list[str] = []

    def factory(
        self,
        store: Store,
        messages: MessageStore,
        blobs: BlobStore,
        settings: Settings,
        executor: Executor | None,
        batch_size: int,
    ) -> AccountSyncer:
        gates = self

        class Gated(AccountSyncer):
            async def sync_folder(  # type: ignore[override]
                self, client: Any, account: Any, folder: Folder, **kw: Any
            ) -> Any:
                if folder.name not in gates.seen:
                    gates.seen.append(folder.name)
                gate = gates.first if gates.seen[0] == folder.name else gates.rest
                await asyncio.to_thread(gate.wait, 30)
                return await super().sync_folder(client, account, folder, **kw)

        return Gated(
            store, messages, blobs, settings, parse_executor=executor, batch_size=batch_size
        )


@pytest.fixture
def gates() -> Gates:
    return Gates()


@pytest.fixture
def gated(gates: Gates, web: Watched) -> Iterator[Gates]:
    """``gates``, opened when the test ends, before the app stops (its runner's shutdown
    would otherwise wait for a folder held at a gate)."""
    try:
        yield gates
    finally:
        gates.first.set()
        gates.rest.set()


@pytest.fixture
def app(store: Store, settings: Settings, gates: Gates) -> FastAPI:
    """The app with the sync engine in its process (as ``correspond serve``): it picks up an
    account the moment it is resumed (the wake-up), else every second."""
    runner = SyncRunner(
        store, settings, poll_seconds=1.0, lease_seconds=10.0, syncer_factory=gates.factory
    )
    return create_app(settings, store=store, runner=runner)


def _status(page: Any) -> str:
    text: str = page.locator("#account .progress-summary").inner_text()
    return text


@pytest.mark.dovecot
def test_connect_choose_folders_and_watch_the_backfill_finish(
    web: Watched, app: FastAPI, dovecot: DovecotServer, gated: Gates
) -> None:
    gates = gated
    page = web.page
    service = app.state.accounts
    user = dovecot.add_user()
    now = datetime.now(UTC)
    n = 0
    for folder, count in MAILBOX.items():
        if folder not in ("INBOX", "Sent", "Archive", "Junk"):
            dovecot.create_mailbox(user, folder)
        for _ in range(count):
            n += 1
            raw = plain_message(
                f"connect-{n}@example.test",
                when=now - timedelta(days=n),
                subject=f"{folder} {n}",
                body=f"message {n} in {folder}\r\n",
                to=user.address,
            )
            dovecot.append(user, folder, raw, date=now - timedelta(days=n))
    _first_run(web)
    # Connect: the connection test passes and the folders are listed at once.
    page.goto("/settings/sync")
    page.click("#connect-link")
    page.wait_for_url(f"{web.base}/settings/sync/new")
    page.fill("#connect input[name=email]", user.address)
    page.fill("#connect input[name=name]", user.username)
    page.fill("#connect input[name=username]", user.username)
    page.fill("#connect input[name=password]", user.password)
    page.fill("#connect input[name=imap_host]", dovecot.host)
    page.fill("#connect input[name=imap_port]", str(dovecot.port))
    page.select_option("#connect select[name=imap_security]", "starttls")
    page.fill("#connect textarea[name=trusted_cert_pem]", dovecot.cert_pem)
    page.click("#connect button[type=submit]")
    page.wait_for_url(f"{web.base}/settings/sync/{user.username}/folders?new=1")
    # Each folder with its role, checked as the product selects by default.
    rows = page.locator("#choose-folders tbody tr")
    shown = {
        rows.nth(i).get_attribute("data-folder"): (
            rows.nth(i).locator(".role").inner_text(),
            rows.nth(i).locator("input[type=checkbox]").is_checked(),
        )
        for i in range(rows.count())
    }
    assert shown == {
        "INBOX": ("Inbox", True),
        "Sent": ("Sent", True),
        "Drafts": ("Drafts", False),
        "Archive": ("Archive", True),
        "Junk": ("Junk", False),
        "Trash": ("Trash", False),
        "Newsletters": ("", True),
        "Projects": ("", True),
    }
    assert page.locator("#choose-folders input[name=mode][value=selected]").is_checked()
    # Nothing syncs before the choice: the account waits, paused.
    account = service.get_account(user.username).account
    assert (account.state, account.state_detail) == ("paused", AWAITING_FOLDERS)
    assert service.get_account(user.username).message_count == 0
    # Uncheck one and start.
    page.locator("#choose-folders tr[data-folder=Newsletters] input[type=checkbox]").uncheck()
    page.click("#save-folders")
    page.wait_for_url(f"{web.base}/settings/sync/accounts/{user.username}?done=started")
    # The bar is updated in place (no reload: the marker set now survives): nothing yet...
    page.evaluate("window.__sameDocument = true")
    summary = page.locator("#account .progress-summary")
    summary.filter(has_text=f"0/{len(CHOSEN)} folders done, 0/").wait_for()
    # ... then INBOX, folder by folder ...
    gates.first.set()
    summary.filter(has_text=f"1/{len(CHOSEN)} folders done").wait_for(timeout=15_000)
    inbox = page.locator("#account .sync-progress li", has_text="INBOX")
    assert inbox.locator(".count").inner_text() == f"{MAILBOX['INBOX']}/{MAILBOX['INBOX']}"
    assert gates.seen[0] == "INBOX" and not gates.rest.is_set()
    # ... then the others, until the bar says the backfill is complete.
    gates.rest.set()
    done = sum(MAILBOX[f] for f in CHOSEN)
    summary.filter(has_text="Backfill complete").wait_for(timeout=20_000)
    assert _status(page) == f"Backfill complete: {done} messages from {len(CHOSEN)} folders."
    assert page.evaluate("window.__sameDocument") is True
    assert sorted(gates.seen) == sorted(CHOSEN)
    items = page.locator("#account .sync-progress li")
    bars = {
        items.nth(i).locator(".name").inner_text(): items.nth(i).locator(".count").inner_text()
        for i in range(items.count())
    }
    assert bars == {f: f"{MAILBOX[f]}/{MAILBOX[f]}" for f in CHOSEN}
    overall = page.locator("#account .overall progress")
    assert overall.get_attribute("value") == overall.get_attribute("max") == str(done)
    assert page.locator("#account .overall .count").inner_text() == f"{done}/{done}"
    # The store: the chosen folders selected and synced in full, nothing of the others.
    folders = app.state.reader.folders_with_counts(user.username)
    selected = {f.folder.name for f in folders if f.folder.selected}
    assert selected == CHOSEN
    stored = {f.folder.name: f.counts.messages for f in folders}
    assert stored == {f: MAILBOX.get(f, 0) if f in CHOSEN else 0 for f in stored}
    assert service.get_account(user.username).message_count == done
    assert service.get_account(user.username).account.folders_mode == "selected"
    assert not web.dialogs and not web.remote
