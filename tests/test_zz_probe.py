from __future__ import annotations

import asyncio

import pytest

from correspond.sync.engine import AccountSyncer
from test_sync_live import Env, Running, sqlite_env, wait_until

__all__ = ["sqlite_env"]
pytestmark = pytest.mark.dovecot


async def test_probe(sqlite_env: Env) -> None:
    env = sqlite_env
    syncer = env.syncer()
    calls: list[str] = []
    orig = AccountSyncer.sync_folder

    async def counting(self, client, account, folder, **kw):  # type: ignore[no-untyped-def]
        calls.append(folder.name)
        return await orig(self, client, account, folder, **kw)

    AccountSyncer.sync_folder = counting  # type: ignore[method-assign]
    try:
        async with Running(env, syncer, poll_seconds=0.3) as run:
            await run.live()
            inbox = env.folder("inbox")
            await wait_until(lambda: syncer.stats.idle_commands.get(inbox.id, 0) >= 1, 5)
            await asyncio.sleep(2.0)
            calls.clear()
            idles = dict(syncer.stats.idle_commands)
            await asyncio.sleep(3.0)
            print("SYNCS", calls, "IDLES", idles, dict(syncer.stats.idle_commands), len(run.reports))
    finally:
        AccountSyncer.sync_folder = orig  # type: ignore[method-assign]
