"""Sync one account: connect, refresh the folder list, then bring each selected folder up to date.

The account-level executor above :class:`~correspond.sync.folder_sync.FolderSyncer`:

1. connect and log in (STARTTLS or TLS; credentials never in clear unless allowed), ENABLE
   CONDSTORE/QRESYNC where offered (RFC 5161, RFC 7162 §3.2.3);
2. LIST with SPECIAL-USE → :func:`correspond.rules.folders.assign_roles` → the store's folder
   rows (:meth:`correspond.store.repository.Store.sync_folders`);
3. each selected folder in :func:`~correspond.rules.sync_plan.backfill_order` (INBOX, Sent,
   then the rest): :meth:`FolderSyncer.run` (backfill, UIDVALIDITY reset, or incremental);
4. live (:mod:`correspond.sync.live`): one IDLE connection each for INBOX and Sent, kept in
   IDLE, and one sync connection each that syncs the folder on a change; the other folders
   polled, the folder list and the user's selection re-read while live;
5. account states ``connecting`` → ``backfilling`` → ``live`` (``last_sync_at`` after each
   pass); transient failures → ``disconnected`` and a reconnect after a jittered backoff
   (:func:`~correspond.rules.sync_plan.backoff_delay`), a refused login → ``auth_failed`` with
   the server's words and a bounded retry, other permanent errors → ``error``.

Threading and dedupe are pure functions from :mod:`correspond.mail`; this module only adapts
their plain-data interfaces to the store's.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from correspond.errors import (
    AuthenticationFailed,
    CorrespondError,
    ImapCommandError,
    NotFound,
    TlsError,
)
from correspond.imap.client import ImapClient, ImapLimits
from correspond.imap.connect import ImapEndpoint
from correspond.imap.protocol import Atom
from correspond.imap.types import (
    ExistsResponse,
    ExpungeResponse,
    FetchResponse,
    VanishedResponse,
)
from correspond.mail.dedupe import header_dedupe_key
from correspond.mail.threading import KnownMessage, ThreadInput, choose_thread
from correspond.rules.folders import assign_roles
from correspond.rules.sync_plan import (
    BACKOFF_CAP_SECONDS,
    FolderListDiff,
    KnownFolder,
    RemoteFolder,
    backfill_order,
    backoff_delay,
    diff_folder_list,
    normalize_flags,
)
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.messages import (
    MessageData,
    MessageStore,
    ThreadCandidate,
    ThreadChoice,
    ThreadChooser,
)
from correspond.store.outbox import OutboxStore
from correspond.store.records import Account, Folder
from correspond.store.repository import PASSWORD_DROPPED, SettingsChanged, Store
from correspond.sync.connection_test import explain_error
from correspond.sync.flag import Waitable, on_set, wait_any
from correspond.sync.folder_sync import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCH_BYTES,
    FolderRef,
    FolderSyncer,
    FolderSyncReport,
    MessageBuilder,
)
from correspond.sync.gate import host_gate
from correspond.sync.outbox import OutboxApplier, OutboxPassReport
from correspond.sync.prepare import default_dedupe
from correspond.sync.sender import SendApplier
from correspond.sync.threads import in_thread

__all__ = [
    "DEFAULT_FOLDER_REFRESH_SECONDS",
    "DEFAULT_POLL_SECONDS",
    "IDLE_RENEW_SECONDS",
    "MAX_REFUSED_LOGINS",
    "MAX_TLS_FAILURES",
    "AccountSyncReport",
    "AccountSyncer",
    "SyncerStats",
    "default_dedupe",
    "default_thread_chooser",
    "endpoint_for",
]

# A Message-ID that can be searched for as a plain quoted string (no quotes, backslashes or
# controls): anything else is reported as "unknown" rather than risk a wrong match.
_SEARCHABLE_ID = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{3,250}")

#: Rounds of ``gone_check_max_messages`` one :meth:`AccountSyncer.explain_gone` may run.
GONE_CHECK_ROUNDS = 10

#: Refused sign-ins in a row after which the engine stops trying until the user acts: a few
#: retries ride out a provider's passing hiccup; more would get the mailbox locked.
MAX_REFUSED_LOGINS = 5
# TLS handshakes that failed in a row (not an untrusted certificate, not a port that speaks
# another security: those are permanent at once) before the account stops for the user: a
# handshake that keeps failing is a setting to fix, not a network blip.
MAX_TLS_FAILURES = 5


IDLE_RENEW_SECONDS = 25 * 60
"""Re-issue IDLE before servers drop it (RFC 2177 §3: at least every 29 minutes)."""

DEFAULT_POLL_SECONDS = 60.0
"""How often folders without an IDLE connection are polled while live."""

DEFAULT_FOLDER_REFRESH_SECONDS = 300.0
"""How often the folder list is re-read while live (created, renamed, deleted folders)."""


_CHANGES = (ExistsResponse, ExpungeResponse, FetchResponse, VanishedResponse)
"""Untagged responses that mean "sync this folder now" (new mail, expunges, flags)."""


def default_header_key(raw_header: bytes, gm_msgid: int | None) -> str | None:
    """:func:`default_dedupe`'s key read from a raw header block, when it alone decides it."""
    return header_dedupe_key(raw_header, gm_msgid=gm_msgid)


@functools.lru_cache(maxsize=4096)
def _known(c: ThreadCandidate) -> KnownMessage | None:
    # Cached: a batch hands the same stored candidates to the chooser for message after
    # message (a common subject: dozens each), and this conversion was the largest part of
    # the chooser's time in the commit thread. Candidates are frozen, so equal means same.
    if c.thread_id is None:
        return None
    return KnownMessage(
        thread_id=c.thread_id,
        message_id=c.message_id,
        parent_ids=c.parent_ids,
        normalized_subject=c.normalized_subject,
        participants=frozenset(c.participants),
        date=c.date,
    )


def default_thread_chooser(
    data: MessageData, related: Sequence[ThreadCandidate], same_subject: Sequence[ThreadCandidate]
) -> ThreadChoice:
    """Adapt :func:`correspond.mail.threading.choose_thread` to the store's candidates."""
    msg = ThreadInput(
        message_id=data.message_id,
        parent_ids=data.parent_ids,
        normalized_subject=data.normalized_subject,
        # The owner takes part in nearly every message: only counterparts count as shared.
        participants=frozenset(data.counterparts),
        date=data.date,
        is_reply=data.is_reply,
    )
    decision = choose_thread(
        msg,
        [k for k in map(_known, related) if k is not None],
        [k for k in map(_known, same_subject) if k is not None],
    )
    return ThreadChoice(decision.thread_id, tuple(decision.merge_thread_ids))


def _flag_announcement(
    response: object,
) -> tuple[int, tuple[frozenset[str], int | None]] | None:
    """(UID, (flags, MODSEQ or None)) of an unsolicited FETCH that announces only a flag
    change with its UID; None for anything else (new mail, an expunge, a FETCH without UID or
    with other items, which the folder's sync reads)."""
    if not isinstance(response, FetchResponse):
        return None
    r = response
    if r.uid is None or r.flags is None:
        return None
    if (
        r.internaldate is not None
        or r.size is not None
        or r.envelope is not None
        or r.bodystructure is not None
        or r.sections
        or r.dropped
        or r.gm_msgid is not None
        or r.gm_thrid is not None
        or r.gm_labels is not None
        or r.extra
    ):
        return None
    # As the sync stores them (\\Recent dropped, system flags case-folded): else each
    # announcement would differ from what a sync wrote.
    return r.uid, (normalize_flags(r.flags), r.modseq)


def endpoint_for(account: Account) -> ImapEndpoint:
    """The IMAP endpoint an account's settings describe."""
    return ImapEndpoint(
        host=account.imap_host,
        port=account.imap_port,
        security=account.imap_security,  # type: ignore[arg-type]
        allow_plaintext=account.allow_plaintext,
        trusted_cert_pem=account.trusted_cert_pem,
    )


_SHARED_RNG = random.Random()
"""The jitter of every :class:`AccountSyncer` made without an ``rng`` of its own."""


@dataclass(slots=True)
class AccountSyncReport:
    account_id: int
    folders: list[FolderSyncReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def created(self) -> int:
        return sum(f.created for f in self.folders)

    @property
    def linked(self) -> int:
        return sum(f.linked for f in self.folders)


@dataclass(slots=True)
class SyncerStats:
    """Counters for logs and tests: connections opened, logins tried, IDLE commands issued per
    folder id, retries after a failed session, and folder list changes seen by LIST."""

    connects: int = 0
    logins: int = 0
    retries: int = 0
    idle_commands: dict[int, int] = field(default_factory=dict)
    folders_created: int = 0
    folders_renamed: int = 0
    folders_deleted: int = 0
    outbox_applied: int = 0
    # Flag changes stored straight from IDLE's announcements (no sync, IDLE not left).
    idle_flag_updates: int = 0


class AccountSyncer:
    """Syncs one account: one connection for backfill and polls that IDLEs on INBOX between its
    commands while live, plus a helper connection watching INBOX while it is busy for long
    (:mod:`correspond.sync.live`).

    Folder syncs are serialised per folder (one :class:`asyncio.Lock` each), so two connections
    never work on the same folder at once.

    Intervals (seconds): ``poll_interval`` for the folders without IDLE (default
    ``settings.poll_interval_seconds``, else 60), ``folder_refresh_interval`` for LIST (default
    ``settings.folder_refresh_seconds``, else 300), ``selection_check_interval`` for reading the
    user's folder selection from the store when no runner reports changes,
    ``idle_renew_seconds`` for re-issuing IDLE
    (RFC 2177 §3: under 29 minutes), ``backoff_base`` for the first retry ceiling and
    ``backoff_cap`` for the largest (five minutes).
    """

    def __init__(
        self,
        store: Store,
        messages: MessageStore,
        blobs: BlobStore,
        settings: Settings,
        *,
        parse_executor: Executor | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        today: date | None = None,
        chooser: ThreadChooser | None = None,
        rng: random.Random | None = None,
        extensions: Sequence[str] = ("CONDSTORE", "QRESYNC"),
        poll_interval: float | None = None,
        folder_refresh_interval: float | None = None,
        selection_check_interval: float = 10.0,
        idle_renew_seconds: float = IDLE_RENEW_SECONDS,
        backoff_base: float = 1.0,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        max_refused_logins: int = MAX_REFUSED_LOGINS,
        max_tls_failures: int = MAX_TLS_FAILURES,
    ) -> None:
        self.store = store
        self.messages = messages
        self.blobs = blobs
        self.settings = settings
        self.parse_executor = parse_executor
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.today = today
        self.chooser = chooser or default_thread_chooser
        self.builder = MessageBuilder()
        # One generator for every account of the process (backoff jitter): a Random is 2.5 KB.
        self.rng = rng or _SHARED_RNG
        # Which RFC 7162 extensions to ENABLE where offered (drop QRESYNC for a server whose
        # implementation misbehaves; CONDSTORE alone still avoids re-reading every flag).
        self.extensions = tuple(extensions)
        # Settings may not carry these fields yet (older configs): fall back to the defaults.
        self.poll_interval = float(
            poll_interval if poll_interval is not None else settings.poll_interval_seconds
        )
        self.folder_refresh_interval = float(
            folder_refresh_interval
            if folder_refresh_interval is not None
            else settings.folder_refresh_seconds
        )
        self.selection_check_interval = selection_check_interval
        if not 0 < idle_renew_seconds < 29 * 60:
            raise ValueError("IDLE must be re-issued within 29 minutes (RFC 2177 §3)")
        self.idle_renew_seconds = idle_renew_seconds
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_refused_logins = max_refused_logins
        self.max_tls_failures = max_tls_failures
        self.stats = SyncerStats()
        # Set by the runner when the account's row changed (another process edited it, or
        # its folder selection): see :meth:`run_account`. None: re-read on a timer instead.
        self.account_changed: Waitable | None = None
        self._locks: dict[int, asyncio.Lock] = {}
        # Renamed folders whose old row keeps its locations until the new name is synced
        # (new raw name -> old folder id): the messages never lose every location in between.
        self._renamed_from: dict[bytes, int] = {}
        self.last_folder_diff: FolderListDiff = FolderListDiff()
        # CRM actions to carry to the mailbox (sync.outbox), applied on the command connection.
        outbox = OutboxStore(store.engine)
        self.outbox = OutboxApplier(
            outbox,
            rng=self.rng,
            backoff_cap=self.backoff_cap,
            sender=SendApplier(store, outbox, blobs, settings, rng=self.rng),
            # An archive that creates the Archive folder records it (and its role) at once.
            refresh_folders=self.refresh_folders,
        )

    # -- connection and folder list -------------------------------------------------------------

    async def connect(self, account: Account) -> ImapClient:
        """Connect, log in with the stored secret, and ENABLE CONDSTORE/QRESYNC if offered."""
        self.stats.connects += 1
        from correspond.sync.live import ConnectionSettingsChanged

        # The secret first: an account without one contacts nothing; and only while the
        # stored settings are still the ones this session connects with.
        try:
            secret = await in_thread(self.store.account_secret, account.name, for_account=account)
        except SettingsChanged as exc:
            raise ConnectionSettingsChanged(str(exc)) from exc
        endpoint = endpoint_for(account)
        # Turns per host: a worker starting many accounts does not storm the server (gate).
        async with host_gate().turn(endpoint.host, self.settings.imap_connects_per_host):
            client = await ImapClient.connect(
                endpoint,
                connect_timeout=self.settings.imap_connect_timeout,
                command_timeout=self.settings.imap_command_timeout,
                limits=ImapLimits.from_settings(self.settings),
            )
            try:
                self.stats.logins += 1
                await client.login(account.username, secret)
                if self.extensions:
                    await client.enable(*self.extensions)
            except BaseException:
                client._abort()
                raise
        return client

    async def refresh_folders(self, client: ImapClient, account: Account) -> list[Folder]:
        """LIST the folders, assign roles, and upsert them; returns the live folder rows.

        The fresh list is compared with the stored one (:func:`diff_folder_list`): a folder that
        vanished under one name and appeared under another with the same UIDVALIDITY (asked
        with STATUS only when both kinds exist) is a rename. Its selection is carried to the new
        name, and its old locations are kept until the new name is synced (the backfill re-links
        the messages by dedupe key without downloading them again), so a renamed folder's
        messages are neither lost nor duplicated. A folder deleted on the server loses its
        locations at once; its messages stay.
        """
        listed = await client.list_folders()
        specs = assign_roles(listed)
        before = await in_thread(self.store.list_folders, account.name)
        known = [KnownFolder(f.id, f.name_raw, None, f.uidvalidity) for f in before if f.selectable]
        remote = [RemoteFolder(s.name_raw) for s in specs if s.selectable]
        diff = diff_folder_list(known, remote)
        if diff.deleted and diff.created:
            # Only now is STATUS worth its round trips: a rename is possible.
            remote = [
                RemoteFolder(r.name_raw, uidvalidity=await self._uidvalidity(client, r.name_raw))
                if r in diff.created
                else r
                for r in remote
            ]
            diff = diff_folder_list(known, remote)
        self.last_folder_diff = diff
        if before:  # the very first LIST creates every folder; that is not news
            self.stats.folders_created += len(diff.created)
            self.stats.folders_renamed += len(diff.renamed)
            self.stats.folders_deleted += len(diff.deleted)
        by_id = {f.id: f for f in before}
        # The new name is a new row; it takes the old one's selection in the same transaction.
        renamed_from = {r.new.name_raw: by_id[r.id].name_raw for r in diff.renamed}
        result = await in_thread(
            lambda: self.store.sync_folders(account.name, specs, renamed_from=renamed_from)
        )
        folders = result.folders
        for r in diff.renamed:
            self._renamed_from[r.new.name_raw] = r.id
        renamed_old = set(self._renamed_from.values())
        if result.removed:
            # Deleted on the server: its UIDs mean nothing any more. Renamed ones wait for
            # their new name's sync (see :meth:`_finish_rename`).
            every = await in_thread(self.store.list_folders, account.name, include_removed=True)
            for folder in every:
                gone = folder.removed and folder.uidvalidity is not None
                if gone and folder.id not in renamed_old:
                    await in_thread(self.messages.forget_folder, folder.id)
        # A rename to a folder that will not be synced: nothing re-links, let the old one go.
        syncing = {f.name_raw for f in folders if f.selected and f.selectable}
        for new_raw, old_id in list(self._renamed_from.items()):
            if new_raw not in syncing:
                del self._renamed_from[new_raw]
                await in_thread(self.messages.forget_folder, old_id)
        return folders

    async def _uidvalidity(self, client: ImapClient, name_raw: bytes) -> int | None:
        try:
            status = await client.status(name_raw, ["UIDVALIDITY"])
        except ImapCommandError:
            return None  # gone again, or not selectable: not a rename candidate
        return status.values.get("UIDVALIDITY")

    async def _finish_rename(self, folder: Folder, report: FolderSyncReport) -> None:
        old_id = self._renamed_from.get(folder.name_raw)
        if old_id is not None and report.done and report.error is None:
            del self._renamed_from[folder.name_raw]
            await in_thread(self.messages.forget_folder, old_id)

    def _capabilities(self, client: ImapClient) -> frozenset[str]:
        caps = set(client.capabilities)
        # QRESYNC is used only once ENABLEd (RFC 7162 §3.2.3); CONDSTORE only if wanted.
        if "QRESYNC" not in client.enabled:
            caps.discard("QRESYNC")
        if "CONDSTORE" not in self.extensions and "QRESYNC" not in client.enabled:
            caps.discard("CONDSTORE")
        return frozenset(caps)

    # -- syncing folders ------------------------------------------------------------------------

    def folder_lock(self, folder_id: int) -> asyncio.Lock:
        """The lock every sync of ``folder_id`` holds (one connection per folder at a time)."""
        lock = self._locks.get(folder_id)
        if lock is None:
            lock = self._locks[folder_id] = asyncio.Lock()
        return lock

    async def sync_folder(
        self,
        client: ImapClient,
        account: Account,
        folder: Folder,
        *,
        max_batches: int | None = None,
    ) -> FolderSyncReport:
        """Bring one folder up to date over ``client`` (backfill, reset or incremental).

        Raises :class:`ImapCommandError` when the server refuses the folder (the session is
        intact); the caller decides whether that stops anything.
        """
        syncer = FolderSyncer(
            client,
            self.messages,
            self.blobs,
            self.settings.clone(window_days=account.window_days),
            FolderRef(
                id=folder.id,
                account_id=account.id,
                name_raw=folder.name_raw,
                role=folder.role,
                account_addresses=frozenset({account.email.lower()}),
            ),
            chooser=self.chooser,
            dedupe=default_dedupe,
            header_key=default_header_key,
            builder=self.builder,
            capabilities=self._capabilities(client),
            parse_executor=self.parse_executor,
            batch_size=self.batch_size,
            max_batch_bytes=self.max_batch_bytes,
            today=self.today,
        )
        async with self.folder_lock(folder.id):
            report = await syncer.run(max_batches=max_batches)
        await self._finish_rename(folder, report)
        return report

    async def sync_once(
        self,
        client: ImapClient,
        account: Account,
        *,
        folders: Sequence[Folder] | None = None,
        max_batches: int | None = None,
        after_folder: Callable[[Folder, FolderSyncReport], Awaitable[None] | None] | None = None,
    ) -> AccountSyncReport:
        """One pass over the selected folders, INBOX and Sent first.

        ``after_folder`` is called after each folder (the live session starts a folder's IDLE
        connection as soon as its backfill is done, before the other folders are backfilled).
        """
        started = time.perf_counter()
        report = AccountSyncReport(account_id=account.id)
        if folders is None:
            folders = await self.refresh_folders(client, account)
        chosen = {f.id: f for f in folders if f.selected and f.selectable and not f.removed}
        order = backfill_order((f.id, f.role, f.name) for f in chosen.values())
        for folder_id in order:
            folder = chosen[folder_id]
            try:
                folder_report = await self.sync_folder(
                    client, account, folder, max_batches=max_batches
                )
            except ImapCommandError as exc:
                # One folder refused (deleted since LIST, no permission, ...): the session is
                # intact, so record it and go on with the others; the next LIST settles it.
                folder_report = FolderSyncReport(folder_id=folder.id, kind="error", error=str(exc))
            report.folders.append(folder_report)
            if after_folder is not None:
                pending = after_folder(folder, folder_report)
                if pending is not None:
                    await pending
        if any(f.removed for f in report.folders):
            await self.explain_gone(client, account, synced_now=set(chosen))
        report.seconds = time.perf_counter() - started
        return report

    async def explain_gone(
        self,
        client: ImapClient,
        account: Account,
        *,
        synced_now: Collection[int] = (),
    ) -> dict[int, str]:
        """Why messages left the synced folders: each one whose last location went is looked
        for by Message-ID in the folders that are not synced (Junk, Trash, unselected ones);
        found is ``moved``, not found ``expunged``, no usable Message-ID ``unknown``. Bounded:
        ``settings.gone_check_max_messages`` messages and ``gone_check_max_folders`` folders a
        round, at most :data:`GONE_CHECK_ROUNDS` rounds a pass while each round explains a full
        batch (a mass expunge is decided for the CRM within the pass that saw it; the rest waits
        for the next pass that removes something). Returns the reasons.
        """
        reasons: dict[int, str] = {}
        batch = self.settings.gone_check_max_messages
        for _ in range(GONE_CHECK_ROUNDS):
            found = await self._explain_gone_round(client, account, synced_now=synced_now)
            reasons.update(found)
            if batch == 0 or len(found) < batch:
                break  # all explained, or some stay open (found in a synced folder)
        return reasons

    async def _explain_gone_round(
        self,
        client: ImapClient,
        account: Account,
        *,
        synced_now: Collection[int] = (),
    ) -> dict[int, str]:
        pending = await in_thread(
            self.messages.gone_unexplained, account.id, self.settings.gone_check_max_messages
        )
        if not pending:
            return {}
        # The whole list: a live pass is given only the folders that changed.
        folders = await in_thread(self.store.list_folders, account.name)
        unsynced = [f for f in folders if f.selectable and not f.selected and not f.removed]
        # Synced folders this pass did not cover (a live pass syncs the folder that changed):
        # a message moved there is linked when that folder's turn comes, so it stays open.
        later = [
            f
            for f in folders
            if f.selectable and f.selected and not f.removed and f.id not in synced_now
        ]
        unsynced = unsynced[: self.settings.gone_check_max_folders]
        later = later[: max(0, self.settings.gone_check_max_folders - len(unsynced))]
        reasons: dict[int, str] = {}
        found_in: dict[int, int] = {}
        searchable: dict[int, str] = {}
        for mid, header in pending:
            if header and _SEARCHABLE_ID.fullmatch(header):
                searchable[mid] = header
            else:
                reasons[mid] = "unknown"
        for folder in [*later, *unsynced]:
            if not searchable:
                break
            try:
                await client.examine(folder.name_raw)
                for mid, header in list(searchable.items()):
                    if await client.uid_search([Atom("HEADER"), Atom("Message-ID"), header]):
                        if not folder.selected:
                            reasons[mid] = "moved"
                            found_in[mid] = folder.id
                        del searchable[mid]
            except ImapCommandError:
                continue  # that folder cannot be searched; the others still can
        reasons.update(dict.fromkeys(searchable, "expunged"))
        # With what it means for the CRM copy (moved to Trash, archived, expunged: the
        # two-way rule, store.remote_state); found in a synced folder, the sync decides.
        await in_thread(
            lambda: self.messages.set_gone_reasons(
                reasons, account_id=account.id, found_in=found_in
            )
        )
        return reasons

    # -- IDLE -----------------------------------------------------------------------------------

    async def apply_outbox(self, client: ImapClient, account: Account) -> OutboxPassReport:
        """Apply the account's due outbox rows on ``client`` (sync.outbox). Called after a
        sync pass, so the catch-up comes first and the conflict rule has seen the mailbox's
        changes; a transient error is raised (the session reconnects, the row waits)."""
        report = await self.outbox.apply_due(client, account)
        self.stats.outbox_applied += report.applied
        return report

    async def wait_for_change(
        self,
        client: ImapClient,
        folder: Folder,
        *,
        stop: Waitable,
        timeout: float | None = None,
    ) -> bool:
        """IDLE (RFC 2177) on ``folder`` until the server reports a change, ``stop`` is set, or
        ``timeout`` seconds pass (None: no limit). True when something changed.

        EXISTS, EXPUNGE, FETCH (flags) and VANISHED all mean "sync this folder now". IDLE is
        ended with DONE and re-issued every ``idle_renew_seconds``, inside the 29 minutes after
        which RFC 2177 §3 lets a server drop an idle client. The folder is EXAMINEd first unless
        the session already has it selected (a sync just did).
        """
        current = client.selected
        if current is None or current.name_raw != folder.name_raw:
            await client.select(folder.name_raw, readonly=True)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not stop.is_set() and (deadline is None or loop.time() < deadline):
            round_end = loop.time() + self.idle_renew_seconds
            if deadline is not None:
                round_end = min(round_end, deadline)
            self.stats.idle_commands[folder.id] = self.stats.idle_commands.get(folder.id, 0) + 1
            async with client.idle() as session:
                while not stop.is_set():
                    left = round_end - loop.time()
                    if left <= 0:
                        break
                    # Short slices so that ``stop`` is noticed within a second.
                    response = await session.next(timeout=min(left, 1.0))
                    if isinstance(
                        response,
                        ExistsResponse | ExpungeResponse | FetchResponse | VanishedResponse,
                    ):
                        return True
        return False

    async def watch_changes(
        self,
        client: ImapClient,
        folder: Folder,
        *,
        stop: Waitable,
        on_change: Callable[[], None],
    ) -> None:
        """Stay in IDLE (RFC 2177) on ``folder`` until ``stop`` is set, calling ``on_change``
        for every EXISTS, EXPUNGE, FETCH (flags) or VANISHED the server reports.

        Unlike :meth:`wait_for_change`, a change does not end IDLE: the caller syncs on another
        connection, and IDLE is ended with DONE and re-issued only every
        ``idle_renew_seconds`` (RFC 2177 §3: within 29 minutes).

        The folder is SELECTed read-write (RFC 3501 §6.3.1), not EXAMINEd, unless the session
        already has it selected. Dovecot announces a change ~0.5 s after the first file event
        it sees. Measured against the bench lab (100 LMTP deliveries): re-entering IDLE after
        each change, or staying in IDLE on an EXAMINEd folder, always takes ~0.5 s (p50 ~530 ms);
        staying in IDLE on a SELECTed folder, as a plain IDLE client does, p50 ~320 ms. (Our
        reading: the read-write session's own index update (\\Recent) re-arms the delay, so
        the next message lands at a random phase of it.) This connection sends only IDLE and
        DONE, so it changes no message.
        """
        current = client.selected
        if current is None or current.name_raw != folder.name_raw:
            # Read-write on purpose: see the docstring.
            await client.select(folder.name_raw)
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            round_end = loop.time() + self.idle_renew_seconds
            self.stats.idle_commands[folder.id] = self.stats.idle_commands.get(folder.id, 0) + 1
            async with client.idle() as session:
                # No timer per connection to look at ``stop``: a stop sends DONE at once
                # (IdleSession.interrupt), and the wait below ends with the server's OK.
                cancel = on_set(stop, session.interrupt)
                try:
                    while not stop.is_set():
                        left = round_end - loop.time()
                        if left <= 0:
                            break
                        response = await session.next(timeout=left)
                        if response is None:
                            break  # time to renew, or IDLE is over (stopped, or the server)
                        if isinstance(
                            response,
                            ExistsResponse | ExpungeResponse | FetchResponse | VanishedResponse,
                        ):
                            on_change()
                finally:
                    cancel()
            # Changes reported between DONE and the tagged OK land in the unsolicited queue.
            late = client.drain_unsolicited()
            if any(
                isinstance(r, ExistsResponse | ExpungeResponse | FetchResponse | VanishedResponse)
                for r in late
            ):
                on_change()

    async def idle_until_change(
        self,
        client: ImapClient,
        folder: Folder,
        *,
        wake: Sequence[Waitable],
        deadline: float | None = None,
        on_flags: Callable[[dict[int, tuple[frozenset[str], int | None]]], Awaitable[None]]
        | None = None,
    ) -> bool:
        """IDLE (RFC 2177) on ``folder`` until the server reports a change (True), one of
        ``wake`` is set or the loop's clock reaches ``deadline`` (False).

        With ``on_flags``, a flag change the server announces with its UID (``* n FETCH (UID u
        FLAGS (...) MODSEQ (m))``: RFC 7162 §3.2.4 makes the UID mandatory once QRESYNC is
        enabled) does not end IDLE: the announcements that arrived together are handed to
        ``on_flags`` (UID -> (flags, MODSEQ or None), the last one per UID winning: they come
        in the server's order) and IDLE goes on. Leaving IDLE for a flag change cost DONE, a
        SELECT, a FETCH CHANGEDSINCE and a new IDLE, and put the next change behind Dovecot's
        notification hold-back again (measured in ``bench/README.md``). Anything else (new
        mail, an expunge, a FETCH without a UID, as servers without QRESYNC send) still ends
        IDLE: those need commands.

        The one-connection live session (:mod:`correspond.sync.live`) waits here between its
        commands: a change ends IDLE (DONE) and the caller syncs the folder on the same
        connection, then comes back. No timer per connection to look at ``wake``: setting one
        sends DONE at once (:meth:`IdleSession.interrupt`). IDLE is re-issued every
        ``idle_renew_seconds`` (RFC 2177 §3). The folder must be the selected one (the
        caller's sync EXAMINEs it); when it is not, this returns True at once.
        """
        current = client.selected
        if current is None or current.name_raw != folder.name_raw:
            # Selected elsewhere since: what changed meanwhile is unknown, so say "changed"
            # (the caller's sync selects it). Selecting it here instead would hide a message
            # that arrived between the caller's last sync and this SELECT.
            return True
        loop = asyncio.get_running_loop()
        while not any(event.is_set() for event in wake):
            round_end = loop.time() + self.idle_renew_seconds
            if deadline is not None:
                if loop.time() >= deadline:
                    return False
                round_end = min(round_end, deadline)
            self.stats.idle_commands[folder.id] = self.stats.idle_commands.get(folder.id, 0) + 1
            changed = False
            async with client.idle() as session:
                # A flag's own callback, not a task per flag (correspond.sync.flag).
                cancels = [on_set(event, session.interrupt) for event in wake]
                try:
                    while True:
                        left = round_end - loop.time()
                        if left <= 0:
                            break
                        response = await session.next(timeout=left)
                        if response is None:
                            break  # time to renew or to wake, or the server ended IDLE
                        if not isinstance(response, _CHANGES):
                            continue
                        flags = _flag_announcement(response) if on_flags is not None else None
                        if flags is None:
                            changed = True
                            break
                        # What arrived with it (already read, or in the buffer) goes along.
                        batch = dict([flags])
                        while (more := await session.next(timeout=0)) is not None:
                            if not isinstance(more, _CHANGES):
                                continue
                            flags = _flag_announcement(more)
                            if flags is None:
                                changed = True  # the sync reads the flags in the batch too
                                break
                            batch[flags[0]] = flags[1]
                        if changed:
                            break
                        assert on_flags is not None
                        await on_flags(batch)
                finally:
                    for cancel in cancels:
                        cancel()
            # Changes reported between DONE and the tagged OK land in the unsolicited queue.
            if any(isinstance(r, _CHANGES) for r in client.drain_unsolicited()) or changed:
                return True
        return False

    async def wait_for_inbox_change(
        self, client: ImapClient, inbox: Folder, *, stop: Waitable, timeout: float
    ) -> bool:
        """:meth:`wait_for_change` on INBOX (kept for callers of the one-connection engine)."""
        return await self.wait_for_change(client, inbox, stop=stop, timeout=timeout)

    # -- the account loop -----------------------------------------------------------------------

    async def wait_for_account_change(self, stop: Waitable, timeout: float) -> bool:
        """Wait until ``stop`` is set, the account may have changed, or ``timeout`` s pass.

        True when the account's row should be read again: with :attr:`account_changed` (the
        runner's one query per round for every account of the worker), when it was set;
        without it (an engine run on its own), every :attr:`selection_check_interval`.
        """
        changed = self.account_changed
        if changed is None:
            timeout = min(timeout, self.selection_check_interval)
            await wait_any((stop,), timeout)
            return not stop.is_set() and timeout >= self.selection_check_interval
        await wait_any((stop, changed), timeout)
        if stop.is_set() or not changed.is_set():
            return False
        changed.clear()
        return True

    async def run_account(
        self,
        account_name: str,
        *,
        stop: Waitable,
        poll_seconds: float | None = None,
        on_synced: Callable[[AccountSyncReport], None] | None = None,
        changed: Waitable | None = None,
    ) -> None:
        """Keep one account in sync until ``stop`` is set (DESIGN.md "Live").

        ``changed`` is set by whoever watches the store for edits of the account (the runner:
        one query per round for all its accounts); the session then re-reads the account and
        its folder selection. Without it they are re-read every
        :attr:`selection_check_interval`.

        A session (:class:`~correspond.sync.live.LiveSession`): connect (state ``connecting``),
        backfill (``backfilling``), then ``live`` with IDLE connections for INBOX and Sent and a
        poll of the other folders every ``poll_seconds`` (default :attr:`poll_interval`), the
        folder list re-read every :attr:`folder_refresh_interval`. ``last_sync_at`` is set after
        every successful pass.

        When a session ends on an error: connection lost, BYE, timeout or a busy database →
        ``disconnected`` and a reconnect after a jittered exponential backoff (cap 5 minutes);
        a refused login → ``auth_failed`` with the server's own words, retried no faster than
        the backoff (each wait at least half its ceiling, so never a storm) and at most
        :attr:`max_refused_logins` times in a row: providers lock a mailbox that keeps failing
        to sign in, so then it waits, holding the account, until the user updates the password
        or resumes the account (its state leaves ``auth_failed``); any other
        permanent error → ``error`` with its reason, and the loop ends (the user must act). The
        backoff restarts from its base once a session has stayed live for a minute.
        """
        # The session builds on this class.
        from correspond.sync.live import ConnectionSettingsChanged, LiveSession, imap_settings

        poll = self.poll_interval if poll_seconds is None else float(poll_seconds)
        if changed is not None:
            self.account_changed = changed
        attempt = 0
        refused = 0
        tls_failed = 0
        first = True
        while not stop.is_set():
            account = await in_thread(self.store.get_account, account_name)
            if account.auth_kind == "password" and not account.has_secret:
                # Dropped by a change of how the account connects (or never given): nothing
                # to sign in with, and a secret is never sent to another endpoint. The user
                # gives the password and the account is started again.
                await self._set_state(account_name, "error", PASSWORD_DROPPED)
                return
            if first:
                first = False
                await self._set_state(
                    account_name,
                    "connecting",
                    f"Connecting to {account.imap_host}:{account.imap_port}",
                )
            session = LiveSession(self, account, stop=stop, poll_seconds=poll, on_synced=on_synced)
            try:
                await session.run()
                return
            except ConnectionSettingsChanged as exc:
                await self._set_state(account_name, "connecting", str(exc))
                attempt = refused = tls_failed = 0
                continue
            except AuthenticationFailed as exc:
                attempt = 1 if session.stable else attempt + 1
                refused = 1 if session.stable else refused + 1
                words = exc.server_text or str(exc)
                if refused >= self.max_refused_logins:
                    await self._set_state(
                        account_name,
                        "auth_failed",
                        f"The server refused the login {refused} times in a row: {words} "
                        "Stopped trying so that the provider does not lock the mailbox: update "
                        f"the password (correspond account update {account_name} "
                        "--password-stdin) or resume the account to try again.",
                    )
                    self.stats.retries += 1
                    if not await self._wait_for_user(account_name, stop):
                        return
                    attempt = refused = tls_failed = 0
                    continue
                delay = backoff_delay(
                    attempt,
                    rng=self.rng,
                    base=self.backoff_base,
                    cap=self.backoff_cap,
                    floor=0.5,
                )
                await self._set_state(
                    account_name,
                    "auth_failed",
                    f"The server refused the login: {words} "
                    f"(trying again in {_seconds(delay)}; check the password)",
                )
            except CorrespondError as exc:
                detail = str(exc)
                if isinstance(exc, TlsError):
                    # The connection test's sentence: what to check, not OpenSSL's words alone.
                    detail = tls_failure_detail(exc, account)
                    tls_failed = 1 if session.stable else tls_failed + 1
                    if exc.transient and tls_failed >= self.max_tls_failures:
                        await self._set_state(
                            account_name,
                            "error",
                            f"{detail} Stopped after {tls_failed} failed TLS handshakes in a "
                            f"row: fix the settings (correspond account update {account_name}) "
                            "or resume the account to try again.",
                        )
                        return
                else:
                    tls_failed = 0
                if not exc.transient:
                    await self._set_state(account_name, "error", detail)
                    return
                attempt = 1 if session.stable else attempt + 1
                delay = backoff_delay(
                    attempt, rng=self.rng, base=self.backoff_base, cap=self.backoff_cap
                )
                await self._set_state(
                    account_name,
                    "disconnected",
                    f"{detail} Retrying in {_seconds(delay)}."
                    if isinstance(exc, TlsError)
                    else f"{exc}; retrying in {_seconds(delay)}",
                )
            self.stats.retries += 1
            if await self._backoff_wait(account_name, stop, delay, imap_settings(account)):
                attempt = refused = tls_failed = 0  # the user changed something: a fresh start

    async def _backoff_wait(
        self, account_name: str, stop: Waitable, delay: float, settings: tuple[object, ...]
    ) -> bool:
        """Wait ``delay`` seconds before the next attempt, or less: until ``stop``, or until the
        user acts (the connection settings change, or the account is put back to
        ``connecting`` by an update or a resume). True when the user acted."""
        from correspond.sync.live import imap_settings

        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while not stop.is_set():
            left = deadline - loop.time()
            if left <= 0:
                return False
            if not await self.wait_for_account_change(stop, left):
                continue
            try:
                account = await in_thread(self.store.get_account, account_name)
            except NotFound:
                return False
            if account.state == "connecting" or imap_settings(account) != settings:
                return True
        return False

    async def _wait_for_user(self, account_name: str, stop: Waitable) -> bool:
        """Wait until the account leaves ``auth_failed`` (the user updated the password or
        resumed it): True; False when ``stop`` is set or the account is gone."""
        while not stop.is_set():
            if not await self.wait_for_account_change(stop, self.backoff_cap):
                continue
            try:
                account = await in_thread(self.store.get_account, account_name)
            except NotFound:
                return False
            if account.state != "auth_failed":
                return True
        return False

    async def _set_state(self, account_name: str, state: str, detail: str, **kw: Any) -> None:
        await in_thread(lambda: self.store.set_account_state(account_name, state, detail, **kw))


def tls_failure_detail(exc: TlsError, account: Account) -> str:
    """The state detail for a TLS failure: the connection test's sentence for it."""
    _, sentence = explain_error(
        exc, endpoint_for(account), username=account.username, account_name=account.name
    )
    return sentence


def _seconds(delay: float) -> str:
    return f"{delay:.1f} s" if delay < 10 else f"{delay:.0f} s"
