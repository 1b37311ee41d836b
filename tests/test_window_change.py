"""``account update --window-days``: a wider window backfills the newly covered days at the next
sync; a narrower one keeps what is stored and says so. End to end on Dovecot."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from correspond.rules.presets import AccountChanges
from correspond.settings import Settings
from correspond.store.messages import MessageStore
from correspond.testing.dovecot import DovecotServer, ImapUser
from helpers import StoreCli
from test_sync_dovecot import NOW, Env, _sqlite, append_many

KEY = Fernet.generate_key()


@pytest.fixture
def env(dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path) -> Iterator[Env]:
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path, key=KEY)


def subjects(env: Env) -> set[str]:
    messages = MessageStore(env.store.engine)
    inbox = env.folder("inbox")
    return set(messages.folder_contents(inbox.id).values())


def test_wider_window_backfills_the_newly_covered_days(env: Env) -> None:
    append_many(
        env,
        "INBOX",
        [
            ("d10", NOW - timedelta(days=10)),
            ("d45", NOW - timedelta(days=45)),
            ("d100", NOW - timedelta(days=100)),
        ],
    )
    # A message of 45 days filed later than a newer one: UIDs are not in date order.
    append_many(
        env, "INBOX", [("d40-late", NOW - timedelta(days=40)), ("d2", NOW - timedelta(days=2))]
    )
    env.store.update_account(env.account.name, AccountChanges(window_days=30))
    url = env.store.engine.url.render_as_string(hide_password=False)
    cli = StoreCli(Settings(data_dir=env.settings.data_dir, secret_key=KEY.decode()), url)
    name = env.account.name

    first = cli("sync", name, "--once", "--parse-processes", "0", "--no-progress")
    assert first.exit_code == 0, first.output
    assert subjects(env) == {"mid:md10@example.test", "mid:md2@example.test"}

    wider = cli("account", "update", name, "--window-days", "60")
    assert wider.exit_code == 0, wider.output
    assert "30 -> 60 days" in wider.output and "next sync fetches" in wider.output
    second = cli("sync", name, "--once", "--parse-processes", "0", "--no-progress")
    assert second.exit_code == 0, second.output
    assert "3 new messages" not in second.output  # nothing fetched twice
    assert subjects(env) == {
        "mid:md10@example.test",
        "mid:md2@example.test",
        "mid:md45@example.test",
        "mid:md40-late@example.test",
    }
    assert "2 new messages" in second.output

    narrower = cli("account", "update", name, "--window-days", "5")
    assert narrower.exit_code == 0, narrower.output
    assert "60 -> 5 days" in narrower.output and "is kept" in narrower.output
    third = cli("sync", name, "--once", "--parse-processes", "0", "--no-progress")
    assert third.exit_code == 0, third.output
    assert len(subjects(env)) == 4  # kept


async def test_a_live_session_backfills_a_wider_window_without_restart(env: Env) -> None:
    """The running session notices the wider window at its next selection check."""
    import asyncio
    import contextlib

    from correspond.store.message_tables import MessageRow

    append_many(env, "INBOX", [("d3", NOW - timedelta(days=3)), ("d50", NOW - timedelta(days=50))])
    env.store.update_account(env.account.name, AccountChanges(window_days=30))
    syncer = env.syncer(selection_check_interval=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(syncer.run_account(env.account.name, stop=stop, poll_seconds=60))

    def count() -> int:
        with env.store.transaction() as s:
            return len(
                list(s.scalars(MessageRow.__table__.select().with_only_columns(MessageRow.id)))
            )

    async def until(check: object, what: str) -> None:
        for _ in range(300):
            if await asyncio.to_thread(check):  # type: ignore[arg-type]
                return
            await asyncio.sleep(0.1)
        raise AssertionError(what)

    try:
        await until(lambda: env.store.get_account(env.account.name).state == "live", "live")
        assert count() == 1
        env.store.update_account(env.account.name, AccountChanges(window_days=60))
        await until(lambda: count() == 2, "the 50-day-old message after the window grew")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
