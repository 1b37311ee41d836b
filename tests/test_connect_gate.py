"""correspond.sync.gate: live sync's connection attempts take turns per IMAP host."""

from __future__ import annotations

import asyncio

import pytest

from correspond.settings import Settings
from correspond.store import Store
from correspond.store.blobs import BlobStore
from correspond.store.messages import MessageStore
from correspond.sync.engine import AccountSyncer
from correspond.sync.gate import HostGate, host_gate
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.store import add_dovecot_account


async def test_attempts_to_one_host_take_turns_and_other_hosts_do_not_wait() -> None:
    gate = HostGate()
    running: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}

    async def attempt(host: str) -> None:
        async with gate.turn(host, 3):
            key = host.lower()[0]
            running[key] += 1
            most[key] = max(most[key], running[key])
            await asyncio.sleep(0.01)
            running[key] -= 1

    await asyncio.gather(
        *(attempt("A.example") for _ in range(10)), *(attempt("b.example") for _ in range(2))
    )
    assert most == {"a": 3, "b": 2}  # case-insensitive host: one entry for A/a
    assert len(gate) == 0  # nothing kept for hosts with no attempt


async def test_a_failed_or_cancelled_attempt_gives_its_turn_back() -> None:
    gate = HostGate()
    with pytest.raises(OSError):
        async with gate.turn("h", 1):
            raise OSError("refused")
    holder = asyncio.Event()

    async def hold() -> None:
        async with gate.turn("h", 1):
            holder.set()
            await asyncio.sleep(60)

    held = asyncio.create_task(hold())
    await holder.wait()
    waiting = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    waiting.cancel()  # waiting for its turn
    held.cancel()  # holding it
    await asyncio.gather(held, waiting, return_exceptions=True)
    assert len(gate) == 0
    async with gate.turn("h", 1):  # free again
        pass
    with pytest.raises(ValueError):
        async with gate.turn("h", 0):
            pass


@pytest.mark.dovecot
async def test_the_engine_connects_only_with_a_turn_for_the_host(
    store: Store, store_settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    settings = store_settings.clone(imap_connects_per_host=1)
    account = add_dovecot_account(store, dovecot, imap_user)
    syncer = AccountSyncer(
        store, MessageStore(store.engine), BlobStore.from_settings(settings), settings
    )
    gate = host_gate()
    taken = asyncio.Event()
    release = asyncio.Event()

    async def someone_else() -> None:
        async with gate.turn(dovecot.host.upper(), 1):
            taken.set()
            await release.wait()

    other = asyncio.create_task(someone_else())
    await taken.wait()
    connecting = asyncio.create_task(syncer.connect(account))
    await asyncio.sleep(0.5)
    assert not connecting.done()  # waits for the host's one turn
    assert syncer.stats.logins == 0
    release.set()
    client = await asyncio.wait_for(connecting, 20)
    try:
        assert client.authenticated
    finally:
        await client.logout()
    await other
    assert len(gate) == 0
