"""Exactly once across a SIGKILL of the sending process (SQLite and PostgreSQL).

The sender runs in a child process (the account's outbox pass, as the live session runs it),
stopped by the test hook of ``correspond.sync.sender`` at one stage and killed there with
SIGKILL: before the SMTP transaction, midway through DATA, and after the server's 250 before
anything is recorded. A restart (another outbox pass) must leave the recipient with exactly one
copy, Sent with exactly one copy and no receipt in INBOX.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from correspond.outgoing import Compose
from correspond.store.sends import SendStore
from correspond.sync.sender import PAUSE_ENV, PAUSE_FILE_ENV
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.postfix import PostfixServer
from mirror_helpers import BACKENDS, Env, make_env
from mirror_helpers import pg_engine as pg_engine  # a fixture, used through make_env
from test_send import apply, mailbox, mid_of, owner, point_at_postfix, service, with_id
from test_sync_dovecot import KEY

pytestmark = pytest.mark.dovecot

CHILD = """
import asyncio, sys
from correspond.store.secrets import SecretBox
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.engine import create_store_engine
from correspond.store.messages import MessageStore
from correspond.store.repository import Store
from correspond.sync.engine import AccountSyncer

url, key, blobs, name, data_dir = sys.argv[1:6]
engine = create_store_engine(url)
store = Store(engine, SecretBox(key.encode()))
settings = Settings(data_dir=data_dir, secret_key=None, send_undo_seconds=0,
                    send_probe_seconds=1.0, send_receipt_wait_seconds=1.0)
syncer = AccountSyncer(store, MessageStore(engine), BlobStore(blobs), settings)

async def main():
    account = store.get_account(name)
    client = await syncer.connect(account)
    await syncer.apply_outbox(client, account)
    await client.logout()

asyncio.run(main())
"""


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    tmp_path: Path,
    postfix: PostfixServer,
) -> Iterator[Env]:
    for world in make_env(request, dovecot, imap_user, tmp_path, key=KEY):
        point_at_postfix(world, postfix, send_receipt_wait_seconds=1.0)
        yield world


def kill_at(env: Env, stage: str, tmp_path: Path) -> None:
    """Run the outbox pass in a child that stops at ``stage``; SIGKILL it there."""
    marker = tmp_path / f"paused-{stage}"
    url = env.store.engine.url.render_as_string(hide_password=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            url,
            KEY.decode(),
            str(env.blobs.root),
            env.account.name,
            str(env.settings.data_dir),
        ],
        env={**os.environ, PAUSE_ENV: stage, PAUSE_FILE_ENV: str(marker)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the sender exited: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the sender never reached the stage"
            time.sleep(0.02)
        if stage == "data":
            time.sleep(0.2)  # the first half of the message on its way to the server
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("stage", ["before_smtp", "data", "after_250"])
async def test_a_send_killed_at_any_stage_goes_exactly_once(
    env: Env, dovecot: DovecotServer, postfix: PostfixServer, tmp_path: Path, stage: str
) -> None:
    contact = dovecot.add_user()
    await env.sync()
    record = service(env).send_new(
        owner(env),
        env.account.name,
        Compose(to=(("", contact.address),), subject=f"killed at {stage}", text="once"),
    )
    kill_at(env, stage, tmp_path)
    sends = SendStore(env.store.engine)
    assert sends.get(record.outbox.id).stage == "smtp"  # in flight when it died
    # Restart: outbox passes until the send settles (waiting for a receipt, then resending,
    # where the server never took it).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while sends.get(record.outbox.id).outbox.state != "applied":
        assert loop.time() < deadline, sends.get(record.outbox.id)
        await apply(env)
        await asyncio.sleep(0.2)
    postfix.wait_queue_empty()
    mid = mid_of(record)
    assert len(with_id(mailbox(dovecot, contact, "INBOX"), mid)) == 1
    assert len(with_id(mailbox(dovecot, env.user, "Sent"), mid)) == 1
    assert with_id(mailbox(dovecot, env.user, "INBOX"), mid) == []


@pytest.mark.parametrize("stage", ["before_smtp", "data", "after_250"])
async def test_an_outbound_only_identity_killed_never_sends_twice_by_itself(
    env: Env,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
) -> None:
    """No mailbox to look in: killed before DATA it is sent again; killed during DATA or after
    the 250 its fate is ``unknown`` and nothing more goes until the user decides."""
    from test_send_identities import smtp_identity, trust_test_certificate

    contact, login = dovecot.add_user(), dovecot.add_user()
    await env.sync()
    user = owner(env)
    trust_test_certificate(monkeypatch, postfix, tmp_path)
    identity = smtp_identity(env, user, postfix, login)
    record = service(env).send_new(
        user,
        None,
        Compose(to=(("", contact.address),), subject=f"killed at {stage}", text="once"),
        identity_id=identity.id,
    )
    kill_at(env, stage, tmp_path)
    sends = SendStore(env.store.engine)
    await apply(env)  # the restart
    postfix.wait_queue_empty()
    mid = mid_of(record)
    after = sends.get(record.outbox.id)
    if stage == "before_smtp":
        assert after.status == "sent", after  # DATA never began: sent again, once
        assert len(with_id(mailbox(dovecot, contact, "INBOX"), mid)) == 1
        return
    assert after.status == "unknown" and "whether it went" in (after.error or ""), after
    copies = len(with_id(mailbox(dovecot, contact, "INBOX"), mid))
    assert copies == (1 if stage == "after_250" else 0)
    await apply(env)  # more passes send nothing
    postfix.wait_queue_empty()
    assert len(with_id(mailbox(dovecot, contact, "INBOX"), mid)) == copies
    # The user decides: it went (after the 250), or send it again (cut midway through DATA).
    resolved = sends.resolve_unknown(record.outbox.id, went=stage == "after_250")
    if stage == "data":
        assert resolved.status == "sending"
        await apply(env)
        postfix.wait_queue_empty()
    assert sends.get(record.outbox.id).status == "sent"
    assert len(with_id(mailbox(dovecot, contact, "INBOX"), mid)) == 1
    assert with_id(mailbox(dovecot, env.user, "Sent"), mid) == []
