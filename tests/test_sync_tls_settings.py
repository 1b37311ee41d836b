"""A running sync whose TLS cannot work with the account's settings: the connection test's
sentence as the state detail, and no endless transient retries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from correspond.store.tables import AccountRow
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.net import FakeImapServer
from test_sync_dovecot import Env, _sqlite

pytestmark = pytest.mark.dovecot


@pytest.fixture
def env(dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path) -> Iterator[Env]:
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path)


def set_endpoint(env: Env, port: int, security: str) -> None:
    with Session(env.messages.engine) as s, s.begin():
        s.execute(
            update(AccountRow)
            .where(AccountRow.id == env.account.id)
            .values(imap_port=port, imap_security=security)
        )
    env.account = env.store.get_account(env.account.name)


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_wrong_security_stops_at_once_with_the_connection_test_sentence(
    env: Env, security: str
) -> None:
    # STARTTLS against the implicit-TLS port (before: a GreetingTimeout after 20 s, retried as
    # transient for ever), and implicit TLS against the STARTTLS port (before: a TlsError with
    # OpenSSL's words, retried for ever).
    port = env.server.tls_port if security == "starttls" else env.server.port
    set_endpoint(env, port, security)
    syncer = env.syncer(backoff_base=0.05, backoff_cap=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(syncer.run_account(env.account.name, stop=asyncio.Event()), 15)
    assert loop.time() - started < 8
    account = env.store.get_account(env.account.name)
    assert account.state == "error"
    if security == "starttls":
        assert account.state_detail == (
            f"127.0.0.1:{port} expects implicit TLS, not starttls: set the security to tls (or "
            "use the STARTTLS port, usually 143)."
        )
    else:
        assert account.state_detail == (
            f"127.0.0.1:{port} speaks plaintext IMAP, not implicit TLS: set the security to "
            "starttls (or use the implicit TLS port, usually 993)."
        )
    assert syncer.stats.retries == 0


async def test_a_failing_handshake_is_retried_a_few_times_then_held(env: Env) -> None:
    # A port that answers a ClientHello with something that is neither TLS nor an IMAP
    # greeting: each attempt is a TlsError, transient on its own, but not for ever.
    async with FakeImapServer(b"HTTP/1.1 400 Bad Request\r\n\r\n") as fake:
        set_endpoint(env, fake.port, "tls")
        syncer = env.syncer(backoff_base=0.01, backoff_cap=0.02, max_tls_failures=3)
        await asyncio.wait_for(syncer.run_account(env.account.name, stop=asyncio.Event()), 30)
    account = env.store.get_account(env.account.name)
    assert account.state == "error"
    assert account.state_detail.startswith(f"The TLS handshake with 127.0.0.1:{fake.port} failed")
    assert "check that the port matches the security setting" in account.state_detail
    assert "Stopped after 3 failed TLS handshakes in a row" in account.state_detail
    assert syncer.stats.connects == 3
