"""Sending through a private Postfix into a private Dovecot (issue 10's benchmark).

Two figures, on a fresh SQLite store (or ``--database-url``):

1. **Throughput**: ``--count`` small sends queued at once and sent by one outbox pass of the
   account (``AccountSyncer.apply_outbox``: SMTP submission with STARTTLS and AUTH per message,
   APPEND of the Sent copy), after one warm-up send (the probe of who files the Sent copy):
   sends per second, and the time until every receipt is removed too. Beside it, the floor of
   SMTP alone (``smtp.client.submit`` in a loop, one connection per message).
2. **Latency**: ``--latency`` sends one after the other while the account's live session runs
   (``run_account``, as the runner runs it, told of each send at once: in ``serve`` the
   runner's lease round adds up to ``poll_seconds``, 5 s by default), each timed from
   ``SendService.send_new`` (the API's call) to: the send ``sent`` (the server took it and the
   copy is in Sent), the copy seen in Sent by another IMAP client, and the copy back in the
   CRM (the Sent folder's poll joined it to the CRM row: ``--poll-seconds``). p50/p99.

    .venv/bin/python bench/send_bench.py --count 200 --latency 200
    .venv/bin/python bench/send_bench.py --count 20 --latency 20      # a quick look

No undo grace (``send_undo_seconds=0``). The machine's load average is printed with the
figures: a busy machine makes every number worse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from correspond.auth import AuthService
from correspond.outgoing import Compose, SendService
from correspond.settings import Settings
from correspond.smtp.client import submit
from correspond.store.blobs import BlobStore
from correspond.store.engine import create_store_engine, migrate
from correspond.store.message_tables import MessageLocationRow
from correspond.store.messages import MessageStore
from correspond.store.repository import Store
from correspond.store.secrets import SecretBox
from correspond.store.sends import SendStore
from correspond.store.tables import AccountRow, FolderRow
from correspond.sync.engine import AccountSyncer
from correspond.sync.sender import smtp_endpoint
from correspond.testing.dovecot import DovecotServer
from correspond.testing.postfix import PostfixServer
from correspond.testing.store import add_dovecot_account, sync_once


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def show(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(
        f"  {name:<34} p50 {pct(ms, 50):8.1f} ms   p99 {pct(ms, 99):8.1f} ms   "
        f"mean {statistics.fmean(ms):8.1f} ms   (n={len(ms)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="sends for the throughput run")
    parser.add_argument("--latency", type=int, default=200, help="sends timed one by one")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="live poll of Sent")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="send-bench-"))
    dovecot = DovecotServer().start()
    postfix = PostfixServer(dovecot).start()
    engine = create_store_engine(args.database_url or f"sqlite:///{work / 'store.db'}")
    try:
        migrate(engine)
        from cryptography.fernet import Fernet

        settings = Settings(
            data_dir=work / "data",
            secret_key=None,
            send_undo_seconds=0,
            send_probe_seconds=1.0,
            password_hash_time_cost=1,
            password_hash_memory_kib=1024,
        )
        store = Store(engine, SecretBox(Fernet.generate_key()))
        user, contact = dovecot.add_user(), dovecot.add_user()
        account = add_dovecot_account(store, dovecot, user)
        with Session(engine) as s, s.begin():
            s.execute(
                update(AccountRow)
                .where(AccountRow.id == account.id)
                .values(smtp_host=postfix.host, smtp_port=postfix.port, smtp_security="starttls")
            )
        account = store.get_account(account.name)
        auth = AuthService(store, settings)
        owner, _ = auth.create_user("bench@crm.test", None)
        auth.users.set_account_owner(account.name, owner.id)
        messages, blobs = MessageStore(engine), BlobStore.from_settings(settings)
        syncer = AccountSyncer(store, messages, blobs, settings)
        await sync_once(syncer, account)
        service = SendService(store, settings, blobs)
        sends = SendStore(engine)
        to = (("Bench Contact", contact.address),)

        # -- SMTP alone: the floor -------------------------------------------------------
        raw = (
            f"From: <{user.address}>\r\nTo: <{contact.address}>\r\nSubject: floor\r\n\r\nsmall\r\n"
        ).encode()
        n_floor = max(1, min(args.count, 100))
        started = time.perf_counter()
        for _ in range(n_floor):
            await submit(
                smtp_endpoint(account),
                username=user.username,
                secret=user.password,
                envelope_from=user.address,
                recipients=[contact.address],
                data=raw,
            )
        floor = n_floor / (time.perf_counter() - started)
        postfix.wait_queue_empty(60)

        # -- warm-up: the first send finds out who files the Sent copy (the probe) ----------
        service.send_new(owner, account.name, Compose(to=to, subject="warm-up", text="small"))
        client = await syncer.connect(account)
        await syncer.apply_outbox(client, store.get_account(account.name))
        await client.logout()
        print(f"who files the Sent copy (the probe's finding): {sends.sent_copy(account.id)}")

        # -- throughput: queue N, one outbox pass --------------------------------------------
        records = [
            service.send_new(
                owner, account.name, Compose(to=to, subject=f"bench {i}", text="small")
            )
            for i in range(args.count)
        ]
        client = await syncer.connect(account)
        started = time.perf_counter()
        await syncer.apply_outbox(client, store.get_account(account.name))
        seconds = time.perf_counter() - started
        await client.logout()
        done = sum(sends.get(r.outbox.id).status == "sent" for r in records)
        # Then passes until every row is done (the receipts that came after filing removed).
        while True:
            client = await syncer.connect(account)
            await syncer.apply_outbox(client, store.get_account(account.name))
            await client.logout()
            if all(sends.get(r.outbox.id).outbox.state == "applied" for r in records):
                break
            await asyncio.sleep(0.05)
        settled = time.perf_counter() - started
        print(
            f"throughput: {done}/{args.count} sent in {seconds:.2f} s = "
            f"{done / seconds:.1f} sends/s (each: SMTP submission + APPEND to Sent); every "
            f"receipt removed after {settled:.2f} s; SMTP alone: {floor:.1f} messages/s"
        )
        postfix.wait_queue_empty(120)

        # -- latency: one by one, the live session running ------------------------------------
        stop, changed = asyncio.Event(), asyncio.Event()
        synced: list[object] = []
        live = AccountSyncer(store, messages, blobs, settings)
        task = asyncio.create_task(
            live.run_account(
                account.name,
                stop=stop,
                poll_seconds=args.poll_seconds,
                changed=changed,
                on_synced=synced.append,
            )
        )
        while not synced:
            await asyncio.sleep(0.05)
        sent_folder = next(
            f for f in store.list_folders(account.name) if f.role == "sent"
        )  # the CRM's Sent
        watcher = dovecot.imaplib_client(user)
        watcher.select('"Sent"', readonly=True)
        to_sent, to_imap, to_crm = [], [], []
        try:
            for i in range(args.latency):
                t0 = time.perf_counter()
                record = service.send_new(
                    owner, account.name, Compose(to=to, subject=f"latency {i}", text="small")
                )
                changed.set()
                mid = str(record.outbox.payload["message_id_header"])
                t_sent = t_imap = t_crm = None
                while t_sent is None or t_imap is None or t_crm is None:
                    now = time.perf_counter()
                    if t_sent is None and sends.get(record.outbox.id).status == "sent":
                        t_sent = now - t0
                    if t_imap is None:
                        watcher.noop()
                        typ, data = watcher.uid("SEARCH", "HEADER", "Message-ID", f"<{mid}>")
                        if typ == "OK" and data[0]:
                            t_imap = now - t0
                    if t_crm is None:
                        with Session(engine) as s:
                            found = s.scalar(
                                select(MessageLocationRow.id).where(
                                    MessageLocationRow.message_id == record.message_id,
                                    MessageLocationRow.folder_id == sent_folder.id,
                                )
                            )
                        if found is not None:
                            t_crm = now - t0
                    if now - t0 > 60:
                        raise TimeoutError(f"send {i} not settled in 60 s")
                    await asyncio.sleep(0.005)
                to_sent.append(t_sent)
                to_imap.append(t_imap)
                to_crm.append(t_crm)
        finally:
            watcher.logout()
            stop.set()
            await asyncio.wait_for(task, 30)
        print(f"latency over {args.latency} sends (live session, poll {args.poll_seconds} s):")
        show("send -> sent (copy in Sent)", to_sent)
        show("send -> seen in Sent by IMAP", to_imap)
        show("send -> Sent copy joined in CRM", to_crm)
        with Session(engine) as s:
            folders = s.scalars(select(FolderRow.name).where(FolderRow.account_id == account.id))
            assert "Sent" in list(folders)
        print(f"load average after: {os.getloadavg()}")
    finally:
        engine.dispose()
        postfix.stop()
        dovecot.stop()


if __name__ == "__main__":
    asyncio.run(main())
