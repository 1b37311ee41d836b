"""Run the sync engine for every active account: leases, one asyncio task per account.

:class:`SyncRunner` is what ``correspond serve`` (beside the API, in the same event loop) and
``correspond worker`` run. Every ``poll_seconds`` it does one *lease round*
(:meth:`SyncRunner.poll_once`):

1. claim or renew the leases of every runnable account that is free, expired or already its own
   (:meth:`~correspond.store.leases.AccountLeases.claim`; ``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL), so accounts added or resumed while it runs are picked up within a round;
2. start :meth:`~correspond.sync.engine.AccountSyncer.run_account` as a task for each held
   account that has none;
3. stop the tasks of accounts it no longer holds (paused, removed, failed for good, or a lease
   lost to another worker), then give those leases up.

A pause, resume, disconnect or removal announces itself (``store.wakeups``: NOTIFY on
PostgreSQL, a stamp file beside an SQLite database) and the runner does a round at once instead
of waiting for the next one; the task of an account it no longer holds gets
``gone_grace_seconds`` (0.3 s) to end its IDLE and log out, then is cancelled (each backfill
batch commits atomically with its cursor, and an outbox row re-reads the mailbox before acting,
so a cancel loses nothing): its IMAP connections are closed within a second of the pause.

On shutdown every task is asked to stop (IDLE notices within a second), cancelled after a grace
period if it is in the middle of a backfill (each batch commits atomically with its cursor, so a
cancel loses nothing), the accounts are left in ``connecting`` ("waiting for a worker") and the
leases are released so another worker takes over at once instead of after the lease expiry.

The engine writes account states through :class:`LeaseGuardedStore`, which writes only while
this worker holds the lease and the account is runnable: a user's ``pause`` is never overwritten
by a pass that ends a moment later, and a worker that lost its lease cannot overwrite the new
holder's state.

:func:`sync_account_once` is the one-off ``correspond sync ACCOUNT --once``: claim, backfill and
catch up, record the state, release.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import secrets
import socket
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from correspond.errors import (
    AuthenticationFailed,
    ConfigError,
    CorrespondError,
    NotFound,
    TlsError,
)
from correspond.imap.client import release_clients
from correspond.memory import trim_heap
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.engine import database_failure, is_database_error, log_database_failure
from correspond.store.leases import RESUMABLE_STATES, AccountLeases, process_identity
from correspond.store.messages import (
    FolderCheckpointUpdate,
    IncomingMessage,
    IngestResult,
    MessageStore,
    ThreadChooser,
)
from correspond.store.purge import purge_deleted
from correspond.store.records import Account
from correspond.store.repository import Store
from correspond.store.tables import utcnow
from correspond.store.wakeups import listen_for_outbox, watch_account_changes
from correspond.sync.engine import AccountSyncer, AccountSyncReport, tls_failure_detail
from correspond.sync.flag import Flag, Waitable, wait_any
from correspond.sync.folder_sync import DEFAULT_BATCH_SIZE
from correspond.sync.linker import Linker
from correspond.sync.prepare import init_worker

__all__ = [
    "LeaseGuardedStore",
    "OnceResult",
    "StateListener",
    "SyncRunner",
    "SyncerFactory",
    "default_owner",
    "default_parse_processes",
    "make_parse_executor",
    "sync_account_once",
]

log = logging.getLogger(__name__)

#: Builds the engine for one account: ``(store, messages, blobs, settings, parse_executor,
#: batch_size) -> AccountSyncer``. Tests pass one that instruments the real engine.
SyncerFactory = Callable[
    [Store, MessageStore, BlobStore, Settings, Executor | None, int], AccountSyncer
]

#: Told of every state this worker records: ``(account name, state, detail)``. Called from a
#: worker thread (the store's calls run in threads): hand it over to the loop thread-safely.
StateListener = Callable[[str, str, str], None]

HEAP_TRIM_SECONDS = 60.0
"""How often a lease round also gives the C heap's free pages back (:func:`trim_heap`)."""

STOPPED_DETAIL = "Sync stopped ({owner} shut down); it resumes when a sync worker runs."
ONCE_DETAIL = (
    "Synced at {at}; not watching for new mail (no sync process running): "
    "`correspond sync NAME`, a worker or `serve` keeps it live."
)


def default_owner() -> str:
    """A lease owner name unique to this process: host, pid and a random suffix, then (on
    Linux) ``/boot.pidns.start`` so that a restart on this host can tell this process is gone
    after a crash (:func:`~correspond.store.leases.holder_is_gone`)."""
    name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    ident = process_identity()
    return f"{name}/{ident}" if ident else name


def _default_factory(
    store: Store,
    messages: MessageStore,
    blobs: BlobStore,
    settings: Settings,
    parse_executor: Executor | None,
    batch_size: int,
) -> AccountSyncer:
    return AccountSyncer(
        store, messages, blobs, settings, parse_executor=parse_executor, batch_size=batch_size
    )


def default_parse_processes() -> int:
    """How many parse processes to run by default: one per CPU (at most 4), none on one CPU.

    Parse workers also write the blobs, so they share the cores with the event loop and the
    database: on 2 cores two workers backfilled fastest (with one, the commit stage waited on
    it); a single core gains nothing from a pool.
    """
    cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(4, cpus)


def make_parse_executor(processes: int) -> ProcessPoolExecutor | None:
    """A process pool for MIME parsing shared by every account (None for ``processes <= 0``).

    ``spawn``, not ``fork``: the parent runs an event loop and database threads, and forking a
    multi-threaded process can copy a held lock into the child. The workers ignore SIGINT and
    exit when this process dies, even by SIGKILL (:func:`~correspond.sync.prepare.init_worker`).
    """
    if processes <= 0:
        return None
    return ProcessPoolExecutor(
        max_workers=processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(os.getpid(),),
    )


class _NotifyingMessageStore(MessageStore):
    """The message store, telling ``notify`` after each ingest commit (the linker's wake-up:
    the participant index is built off the ingest path, never inside its transaction)."""

    def __init__(self, engine: Any, linker: Linker) -> None:
        super().__init__(engine)
        self._linker = linker

    def ingest_batch(
        self,
        account_id: int,
        folder_id: int,
        items: Sequence[IncomingMessage],
        checkpoint: FolderCheckpointUpdate,
        *,
        chooser: ThreadChooser,
    ) -> IngestResult:
        result = super().ingest_batch(account_id, folder_id, items, checkpoint, chooser=chooser)
        if result.linked:
            # A Sent copy of a message already indexed may have brought its Bcc recipients.
            self._linker.links.requeue_sent_copies(folder_id, result.linked)
        self._linker.wake()
        return result


class LeaseGuardedStore(Store):
    """The store handed to the engine: the same database, but account states are written only
    while ``owner`` holds the account's lease and the account is runnable
    (:meth:`AccountLeases.set_state_if_held`)."""

    def __init__(
        self,
        base: Store,
        leases: AccountLeases,
        owner: str,
        *,
        on_state: StateListener | None = None,
    ) -> None:
        # Share the base store's engine, session factory and secrets (no second pool).
        self.__dict__.update(base.__dict__)
        self._leases = leases
        self._owner = owner
        self._on_state = on_state

    def set_account_state(
        self,
        name: str,
        state: str,
        detail: str = "",
        *,
        connected_at: datetime | None = None,
        last_sync_at: datetime | None = None,
    ) -> Account:
        written = self._leases.set_state_if_held(
            name,
            self._owner,
            state,
            detail,
            connected_at=connected_at,
            last_sync_at=last_sync_at,
        )
        if not written:
            log.info("state %s for %s not written: lease lost or account paused", state, name)
        elif self._on_state is not None:
            self._on_state(name, state, detail)
        return self.get_account(name)


@dataclass(slots=True)
class _Running:
    name: str
    stop: Flag
    task: asyncio.Task[None]
    expires_at: datetime
    #: Set when the account's row changed since the task started (its ``updated_at``).
    changed: Flag = field(default_factory=Flag)
    updated_at: datetime | None = None


@dataclass(slots=True)
class _Retry:
    failures: int = 0
    not_before: float = 0.0


@dataclass(slots=True)
class _Stats:
    """What a runner did, for logs and tests: lease rounds, task starts and stops by name."""

    rounds: int = 0
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)


class SyncRunner:
    """Keeps every runnable account (or only ``names``) in sync, one task per account.

    ``owner`` names this worker in the leases (default: host, pid, random); ``lease_seconds``
    is how long a claim lasts without renewal and ``poll_seconds`` how often leases are renewed
    and new, resumed, paused or removed accounts noticed; ``max_accounts`` caps what one worker
    holds; ``live_poll_seconds`` overrides the engine's poll of folders without IDLE (default:
    ``settings.poll_interval_seconds``); ``parse_processes`` > 0 gives every account one shared
    MIME-parsing process pool (or pass a ``parse_executor``); ``stop_grace_seconds`` is how
    long a stopping task may finish its step before it is cancelled; ``on_state`` hears every
    state this worker records.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        owner: str | None = None,
        names: Collection[str] | None = None,
        lease_seconds: float = 60.0,
        poll_seconds: float = 5.0,
        live_poll_seconds: float | None = None,
        max_accounts: int | None = None,
        parse_processes: int = 0,
        parse_executor: Executor | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        stop_grace_seconds: float = 3.0,
        gone_grace_seconds: float = 0.3,
        syncer_factory: SyncerFactory | None = None,
        on_state: StateListener | None = None,
    ) -> None:
        if lease_seconds <= 2 * poll_seconds:
            # A lease must outlive a couple of missed rounds, or it lapses while running.
            raise ConfigError("the lease must last more than two lease rounds")
        self.store = store
        self.settings = settings
        self.owner = owner or default_owner()
        self.names = None if names is None else frozenset(names)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.live_poll_seconds = live_poll_seconds
        self.max_accounts = max_accounts
        self.batch_size = batch_size
        self.stop_grace_seconds = stop_grace_seconds
        self.gone_grace_seconds = gone_grace_seconds
        self.leases = AccountLeases(store.engine)
        self.guarded = LeaseGuardedStore(store, self.leases, self.owner, on_state=on_state)
        #: Links messages to CRM timelines in the background of this process.
        self.linker = Linker(store, settings)
        self.messages: MessageStore = _NotifyingMessageStore(store.engine, self.linker)
        self.blobs = BlobStore.from_settings(settings)
        self._factory = syncer_factory or _default_factory
        self._own_executor = parse_executor is None and parse_processes > 0
        self._parse_processes = parse_processes
        self._executor: Executor | None = parse_executor
        self._running: dict[str, _Running] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # set by run(), for wake()
        self._retry: dict[str, _Retry] = {}
        self._stop = Flag()
        self._trim_at = 0.0  # loop time of the next malloc_trim (correspond.memory)
        # Set when another process announced an account change: a lease round at once.
        self._kick = Flag()
        self._main: asyncio.Task[None] | None = None
        self.stats = _Stats()

    # -- what is running -------------------------------------------------------------------

    @property
    def running(self) -> frozenset[str]:
        """Names of the accounts with a live sync task."""
        return frozenset(n for n, r in self._running.items() if not r.task.done())

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run in the background of the current event loop (FastAPI lifespan)."""
        if self._main is None:
            self._main = asyncio.create_task(self.run(), name=f"sync-runner {self.owner}")
        return self._main

    async def shutdown(self) -> None:
        """Stop every account task, leave the accounts waiting for a worker, release leases."""
        self._stop.set()
        if self._main is not None:
            await self._main

    def wake(self, account_name: str) -> None:
        """Tell the session of ``account_name``, if this runner holds it, that its row changed
        (a CRM action queued for it: ``OutboxStore(on_recorded=...)`` in ``correspond serve``),
        without waiting for the next lease round. Safe from any thread; a no-op when not
        running or not holding the account."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def wake_now() -> None:
            running = self._running.get(account_name)
            if running is not None:
                running.changed.set()

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(wake_now)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Lease rounds every ``poll_seconds`` until ``stop`` (or :meth:`shutdown`)."""
        self._loop = asyncio.get_running_loop()
        if self._own_executor and self._executor is None:
            self._executor = make_parse_executor(self._parse_processes)
        # A writer killed between writing a blob and renaming it leaves a temp file; sweep the
        # stale ones once per start, off the event loop (it walks the fan-out directories).
        sweep = asyncio.create_task(asyncio.to_thread(self.blobs.sweep_temporary))
        linker_stop = asyncio.Event()
        linker = asyncio.create_task(self.linker.run(linker_stop), name="crm-linker")
        # A CRM action queued by another process (the API) wakes its session at once.
        outbox_listener = (
            asyncio.create_task(listen_for_outbox(self.store.engine, self.wake))
            if self.store.engine.dialect.name == "postgresql"
            else None
        )
        watcher = asyncio.create_task(
            watch_account_changes(self.store.engine, self._kick.set), name="account-changes"
        )
        purger = asyncio.create_task(self._purge_deleted(linker_stop), name="purge-deleted")
        try:
            while not self._stop.is_set() and not (stop is not None and stop.is_set()):
                self._kick.clear()
                try:
                    await self.poll_once()
                except CorrespondError as exc:
                    # The database is away: keep the tasks whose lease is still safely ours.
                    log.warning("lease round failed: %s", exc)
                    await self._stop_expiring()
                now = self._loop.time()
                if now >= self._trim_at:
                    # The first passes' freed buffers leave free pages inside the C heap:
                    # hand them back (correspond.memory; well under a millisecond).
                    self._trim_at = now + HEAP_TRIM_SECONDS
                    await asyncio.to_thread(trim_heap)
                wake: list[Waitable] = [self._stop, self._kick]
                if stop is not None:
                    wake.append(stop)
                await wait_any(wake, self.poll_seconds)
        finally:
            if outbox_listener is not None:
                outbox_listener.cancel()
                with contextlib.suppress(BaseException):
                    await outbox_listener
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            linker_stop.set()
            await self._stop_all(reason="shutdown")
            with contextlib.suppress(OSError, CorrespondError):
                await sweep
            with contextlib.suppress(CorrespondError):
                await linker
            await purger
            if self._own_executor and self._executor is not None:
                executor, self._executor = self._executor, None
                await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def _purge_deleted(self, stop: asyncio.Event) -> None:
        """Every ``purge_interval_seconds``, purge the messages deleted for longer than
        ``deleted_retention_days`` (store.purge), a bounded batch at a time, off the event
        loop. Several workers may do it at once: each DELETE re-checks, each blob is
        re-asked before it goes."""
        settings = self.settings
        delay = settings.purge_interval_seconds
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                return
            delay = settings.purge_interval_seconds
            try:
                report = await asyncio.to_thread(
                    purge_deleted,
                    self.store.engine,
                    self.blobs,
                    retention_days=settings.deleted_retention_days,
                    batch=settings.purge_batch_size,
                )
            except (CorrespondError, OSError) as exc:
                log.warning("purging deleted messages failed: %s", type(exc).__name__)
                continue
            if report.messages >= settings.purge_batch_size:
                delay = 1.0  # more waiting: the next batch soon, not in an hour

    # -- one lease round -------------------------------------------------------------------

    async def poll_once(self) -> None:
        """Claim/renew leases, start tasks for held accounts, stop the others."""
        held = await asyncio.to_thread(
            self.leases.claim,
            self.owner,
            self.lease_seconds,
            names=self.names,
            limit=self.max_accounts,
        )
        self.stats.rounds += 1
        held_by_name = {h.name: h for h in held}
        # Tasks of accounts no longer ours (paused, removed, lost): stop, then release.
        gone = [n for n in self._running if n not in held_by_name]
        if gone:
            await asyncio.gather(*(self._stop_one(n, reason="gone") for n in gone))
        loop = asyncio.get_running_loop()
        for h in held:
            current = self._running.get(h.name)
            if current is not None and not current.task.done():
                current.expires_at = h.expires_at
                if h.updated_at != current.updated_at:
                    # Edited (by the CLI, the API, another process): that one session re-reads
                    # its account and folders; the others never query on their own.
                    current.updated_at = h.updated_at
                    current.changed.set()
                continue
            if current is not None:
                self._reap(current)
            retry = self._retry.get(h.name)
            if retry is not None and loop.time() < retry.not_before:
                continue
            self._launch(h.name, h.expires_at, h.updated_at)

    def _launch(self, name: str, expires_at: datetime, updated_at: datetime | None = None) -> None:
        # Flags, not asyncio.Events: two per live account, waited on in every IDLE.
        stop = Flag()
        changed = Flag()
        task = asyncio.create_task(self._account_task(name, stop, changed), name=f"sync {name}")
        self._running[name] = _Running(
            name=name,
            stop=stop,
            task=task,
            expires_at=expires_at,
            changed=changed,
            updated_at=updated_at,
        )
        self.stats.started.append(name)
        log.info("%s: syncing %s", self.owner, name)

    def _reap(self, r: _Running) -> None:
        """A task that ended on its own: schedule its restart with a growing delay."""
        self._running.pop(r.name, None)
        retry = self._retry.setdefault(r.name, _Retry())
        retry.failures += 1
        delay = min(300.0, self.poll_seconds * 2 ** min(retry.failures - 1, 8))
        retry.not_before = asyncio.get_running_loop().time() + delay

    async def _account_task(self, name: str, stop: Flag, changed: Flag) -> None:
        executor = self._executor
        try:
            syncer = self._factory(
                self.guarded,
                self.messages,
                self.blobs,
                self.settings,
                executor,
                self.batch_size,
            )

            def synced(_report: AccountSyncReport) -> None:
                self._retry.pop(name, None)

            await syncer.run_account(
                name,
                stop=stop,
                poll_seconds=self.live_poll_seconds,
                on_synced=synced,
                changed=changed,
            )
        except asyncio.CancelledError:
            raise
        except NotFound:
            return  # removed while running
        except CorrespondError as exc:
            # Raised outside the engine's retry loop (the database between passes): the next
            # round restarts the account after a delay.
            log.warning("%s: %s", name, exc)
        except BrokenExecutor as exc:
            # A parse worker died (killed, out of memory): a new pool for every account, and
            # this one restarts after a delay. Not the account's fault.
            log.warning("%s: parse pool broken (%s); replacing it", name, exc)
            self._replace_executor(executor)
        except Exception as exc:
            if stop.is_set():
                return  # stopping anyway: whatever broke on the way out is not the account's
            # A bug must not spin: record it on the account and stop syncing it. A database
            # error that escaped the store says only its kind (its text quotes SQL and values).
            if is_database_error(exc):
                log_database_failure(log, f"sync of {name} failed", exc)
                why = database_failure(exc)
            else:
                log.exception("sync of %s failed", name)
                why = f"{exc.__class__.__name__}: {exc}"
            with contextlib.suppress(CorrespondError):
                await asyncio.to_thread(
                    self.guarded.set_account_state, name, "error", f"Internal error: {why}"
                )

    def _replace_executor(self, broken_one: Executor | None) -> None:
        # Several accounts see the same broken pool: only the first replaces it.
        if not self._own_executor or self._executor is not broken_one:
            return
        broken, self._executor = self._executor, make_parse_executor(self._parse_processes)
        if broken is not None:
            broken.shutdown(wait=False, cancel_futures=True)

    async def _stop_one(self, name: str, *, reason: str) -> None:
        r = self._running.get(name)
        if r is None:
            return
        r.stop.set()
        # An account that is no longer ours (paused, disconnected, removed) must let go of the
        # server at once; a shutdown lets a backfill batch finish.
        grace = self.gone_grace_seconds if reason == "gone" else self.stop_grace_seconds
        done, _pending = await asyncio.wait({r.task}, timeout=grace)
        if not done:
            # Mid-backfill: each batch commits with its cursor, so cancelling loses nothing.
            r.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await r.task
        self._running.pop(name, None)
        self.stats.stopped.append(name)
        try:
            if reason == "shutdown":
                await asyncio.to_thread(
                    self.leases.set_state_if_held,
                    name,
                    self.owner,
                    "connecting",
                    STOPPED_DETAIL.format(owner=self.owner),
                )
            # Only now, with the task over, may another worker take the account.
            await asyncio.to_thread(self.leases.release, self.owner, [name])
        except CorrespondError as exc:
            log.warning("could not release %s: %s (its lease will expire)", name, exc)
        log.info("%s: stopped %s (%s)", self.owner, name, reason)

    async def _stop_all(self, *, reason: str) -> None:
        names = list(self._running)
        if names:
            await asyncio.gather(*(self._stop_one(n, reason=reason) for n in names))
        with contextlib.suppress(CorrespondError):
            await asyncio.to_thread(self.leases.release, self.owner, None)

    async def _stop_expiring(self) -> None:
        """Without a renewal, stop tasks before their lease can lapse under them."""
        now = utcnow()
        soon = [
            n
            for n, r in self._running.items()
            if (r.expires_at - now).total_seconds() < 2 * self.poll_seconds
        ]
        if soon:
            await asyncio.gather(*(self._stop_one(n, reason="lease") for n in soon))


# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnceResult:
    """How a one-off sync ended: ``ok`` and the account as it was left."""

    ok: bool
    account: Account
    report: AccountSyncReport | None


async def sync_account_once(
    store: Store,
    settings: Settings,
    name: str,
    *,
    owner: str | None = None,
    lease_seconds: float = 60.0,
    parse_executor: Executor | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    syncer_factory: SyncerFactory | None = None,
    on_state: StateListener | None = None,
) -> OnceResult:
    """Backfill and catch up ``name`` once (``correspond sync ACCOUNT --once``).

    Refuses a paused account and one whose lease another worker holds (:class:`ConfigError`).
    An account stopped on an error (``auth_failed``, ``error``) is retried: the user asked. The
    lease is held (and renewed) for the whole pass and released at the end, whatever happens.
    """
    owner = owner or default_owner()
    leases = AccountLeases(store.engine)
    account = await asyncio.to_thread(store.get_account, name)
    if account.state == "paused":
        raise ConfigError(f"account {name!r} is paused; resume it first: correspond account resume")
    if account.state in RESUMABLE_STATES:
        await asyncio.to_thread(leases.resume, name, "Retrying on request.")
    held = await asyncio.to_thread(leases.claim, owner, lease_seconds, names=[name])
    if not held:
        holder = await asyncio.to_thread(leases.holder, name)
        who = f"worker {holder[0]} (lease until {holder[1]:%H:%M:%S} UTC)" if holder else "?"
        raise ConfigError(f"account {name!r} is being synced by {who}; stop it or wait")
    guarded = LeaseGuardedStore(store, leases, owner, on_state=on_state)
    factory = syncer_factory or _default_factory
    syncer = factory(
        guarded,
        MessageStore(store.engine),
        BlobStore.from_settings(settings),
        settings,
        parse_executor,
        batch_size,
    )

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease_seconds / 3)
            with contextlib.suppress(CorrespondError):
                await asyncio.to_thread(leases.claim, owner, lease_seconds, names=[name])

    renewer = asyncio.create_task(renew())
    report: AccountSyncReport | None = None
    ok = False
    finished = False
    paused = False
    this_pass = asyncio.current_task()

    async def watch_for_pause() -> None:
        # A pause or disconnect while the pass runs ends it within a second, as for a worker.
        nonlocal paused
        woken = asyncio.Event()
        watcher = asyncio.create_task(watch_account_changes(store.engine, woken.set))
        try:
            while True:
                await woken.wait()
                woken.clear()
                with contextlib.suppress(CorrespondError):
                    now = await asyncio.to_thread(store.get_account, name)
                    if now.state == "paused" or now.disconnected_at is not None:
                        paused = True
                        if this_pass is not None:
                            this_pass.cancel()
                        return
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    pause_watch = asyncio.create_task(watch_for_pause())
    try:
        await asyncio.to_thread(
            guarded.set_account_state,
            name,
            "connecting",
            f"Connecting to {account.imap_host}:{account.imap_port}",
        )
        try:
            client = await syncer.connect(account)
            try:
                await asyncio.to_thread(
                    guarded.set_account_state,
                    name,
                    "backfilling",
                    "Syncing",
                    connected_at=utcnow(),
                )
                report = await syncer.sync_once(client, account)
                # Then the CRM actions waiting for this mailbox (after the catch-up, under the
                # conflict rule). A transient failure is recorded on its row, which waits for
                # the next sync: it does not undo this one.
                with contextlib.suppress(CorrespondError):
                    await syncer.apply_outbox(client, account)
                # Not "live": nothing watches the mailbox once this process exits. The account
                # waits for a sync process, as after a worker's shutdown.
                synced_at = utcnow()
                await asyncio.to_thread(
                    guarded.set_account_state,
                    name,
                    "connecting",
                    ONCE_DETAIL.format(at=f"{synced_at:%Y-%m-%d %H:%M:%S} UTC"),
                    last_sync_at=synced_at,
                )
                ok = True
            finally:
                # A pass cut short (a pause) may be mid-command: close, do not LOGOUT.
                await release_clients([client], logout=ok)
        except AuthenticationFailed as exc:
            words = getattr(exc, "server_text", None) or str(exc)
            await asyncio.to_thread(
                guarded.set_account_state,
                name,
                "auth_failed",
                f"The server refused the login: {words} (check the password)",
            )
        except CorrespondError as exc:
            # Transient problems are left for a worker to retry; permanent ones need the user.
            state = "disconnected" if exc.transient else "error"
            detail = tls_failure_detail(exc, account) if isinstance(exc, TlsError) else str(exc)
            with contextlib.suppress(CorrespondError):
                await asyncio.to_thread(guarded.set_account_state, name, state, detail)
        finished = True
    except asyncio.CancelledError:
        if not paused:
            raise
        # Paused by the user: the pass ends here and the state is theirs. The cancel was ours,
        # not the caller's: take it back so the caller's own timeouts still work.
        if this_pass is not None:
            this_pass.uncancel()
        finished = True
    finally:
        pause_watch.cancel()
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        with contextlib.suppress(asyncio.CancelledError):
            await pause_watch
        with contextlib.suppress(CorrespondError):
            if not finished:
                # Interrupted (Ctrl-C): no pass is running any more, so say who may continue.
                await asyncio.to_thread(
                    leases.set_state_if_held,
                    name,
                    owner,
                    "connecting",
                    STOPPED_DETAIL.format(owner="this sync"),
                )
            await asyncio.to_thread(leases.release, owner, [name])
    final = await asyncio.to_thread(store.get_account, name)
    return OnceResult(ok=ok, account=final, report=report)
