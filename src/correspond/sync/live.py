"""One connected session of an account: backfill, then live (DESIGN.md "Live").

One connection per idle live account (issue 7 §6: at 1,000 accounts a TLS connection is ~57 KB
and an idle account's cost was mostly its three connections):

- the *command connection* runs the first pass (backfill, INBOX and Sent first), then, with
  nothing to do, IDLEs on INBOX (RFC 2177,
  :meth:`~correspond.sync.engine.AccountSyncer.idle_until_change`).
  A flag change announced with its UID (``* n FETCH (UID u FLAGS (...) MODSEQ (m))``) is stored
  at once without leaving IDLE (:meth:`_apply_flags`). New INBOX mail and the other changes
  (EXISTS, EXPUNGE, VANISHED, a FETCH without UID) end IDLE: DONE, sync INBOX on this
  connection, IDLE again (a change the server reports during the sync means one more sync, so
  a burst is coalesced). IDLE also ends when a poll (``poll_seconds``), a LIST refresh
  (``folder_refresh_interval``) or an account check is due: Sent and the other selected
  folders are polled on this connection (STATUS first: an unchanged folder costs one round
  trip), the folder list re-read (created, renamed, deleted folders) and the account and its
  folder selection re-read when the runner reports that the account's row changed
  (:meth:`~correspond.sync.engine.AccountSyncer.wait_for_account_change`; added folders are
  backfilled, removed ones lose their locations); then IDLE again. IDLE is re-issued every
  ``idle_renew_seconds`` at the latest. A change the server reported while INBOX stayed
  selected (STATUS polls) is taken from the unsolicited queue; after INBOX was left for another
  folder it is synced before IDLE (the IDLE would not report what came in meanwhile).
- work on the command connection that takes longer than :data:`HELPER_AFTER_SECONDS` (the
  first pass once INBOX is done, an added folder's backfill, a long poll) gets a *helper
  connection* that watches INBOX the same way (IDLE, DONE, sync, IDLE) until the work ends,
  then logs out: new INBOX mail is not held up behind a backfill, and a live account that is
  idle holds one connection (two while it backfills). The per-folder lock keeps the two from
  syncing INBOX at once.
- Sent is no longer IDLEd on: a reply sent from another client is logged by the next poll.
  Leaving IDLE for each change costs Dovecot's ~0.5 s notification hold-back on the next
  message (a client that stays in IDLE sees changes at a random phase of it): measured in
  ``bench/README.md``.
- A server without IDLE (or one refusing IDLE on INBOX, until the next LIST) is polled: every
  folder, INBOX included.

Any connection failing ends the whole session (a helper's error too) and
:meth:`AccountSyncer.run_account` reconnects with backoff: a half-working session would let
folders fall silently behind. A change to how the account connects (host, port, security, user
name, trusted certificate, plaintext permission), seen with the folder selection, ends the
session too, with :class:`ConnectionSettingsChanged`: the caller reconnects at once with the new
settings instead of keeping connections the user has just replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

from correspond.errors import ImapCommandError
from correspond.imap.client import ImapClient, release_clients
from correspond.imap.types import (
    ExistsResponse,
    ExpungeResponse,
    FetchResponse,
    VanishedResponse,
)
from correspond.rules.sync_plan import idle_folders, selection_change
from correspond.store.records import Account, Folder
from correspond.store.tables import utcnow
from correspond.sync.flag import Flag, Waitable
from correspond.sync.folder_sync import FolderSyncReport
from correspond.sync.threads import in_thread, new_mail_context

if TYPE_CHECKING:
    from correspond.sync.engine import AccountSyncer, AccountSyncReport

__all__ = [
    "HELPER_AFTER_SECONDS",
    "STABLE_SECONDS",
    "ConnectionSettingsChanged",
    "LiveSession",
    "imap_settings",
]

STABLE_SECONDS = 60.0
"""A session that stayed live this long counts as healthy: a failure after it retries from the
backoff's base. (A server that drops every session right after the first pass would otherwise
be reconnected to every second, for ever.)"""


STATE_REFRESH_SECONDS = 600.0
"""While polls find nothing new, ``last_sync_at`` is still written this often: the account
shows it is being watched, without a write per account per poll."""

_POLL_STATUS = ("UIDVALIDITY", "UIDNEXT", "MESSAGES", "HIGHESTMODSEQ")
_CHANGES = (ExistsResponse, ExpungeResponse, FetchResponse, VanishedResponse)

T = TypeVar("T")


def _syncable(folder: Folder) -> bool:
    return folder.selected and folder.selectable and not folder.removed


def _changed(report: FolderSyncReport) -> bool:
    return bool(report.created or report.linked or report.removed or report.flag_updates)


def imap_settings(account: Account) -> tuple[object, ...]:
    """What an IMAP session of ``account`` depends on (the secret aside: a session that is
    signed in has no use for a new password until it reconnects)."""
    return (
        account.username,
        account.imap_host,
        account.imap_port,
        account.imap_security,
        account.allow_plaintext,
        account.trusted_cert_pem,
    )


class ConnectionSettingsChanged(Exception):
    """The account's connection settings changed under a running session: reconnect now."""


HELPER_AFTER_SECONDS = 1.0
"""Work on the command connection (the first pass, a poll that syncs, a LIST refresh) that takes
longer than this gets a *helper connection* watching INBOX until it ends: new mail is not held
up behind a backfill. Shorter work is not worth a connection (TCP, TLS, LOGIN): new mail that
arrives during it is synced when it ends."""


def _changes_pending(client: ImapClient) -> bool:
    """Whether the server volunteered a change of the selected folder (EXISTS, EXPUNGE, FETCH,
    VANISHED) since the queue was last drained; drains it."""
    return any(isinstance(r, _CHANGES) for r in client.drain_unsolicited())


class LiveSession:
    """Runs one session of one account until ``stop`` is set or a connection fails.

    :meth:`run` returns when ``stop`` is set and raises the error that ended the session
    otherwise. ``caught_up`` tells whether the first pass completed, and :attr:`stable` whether
    the session then stayed up for :data:`STABLE_SECONDS` (only then does the caller's retry
    backoff start again from its base).
    """

    # One per live account, 1,000 to a worker: no per-instance __dict__.
    __slots__ = (
        "_folder_errors",
        "_idle",
        "_idle_refused",
        "_inbox",
        "_inbox_ready",
        "_live_since",
        "_names",
        "_outbox_due",
        "_poll_status",
        "_state_written_at",
        "account",
        "caught_up",
        "on_synced",
        "poll_seconds",
        "stop",
        "syncer",
    )

    def __init__(
        self,
        syncer: AccountSyncer,
        account: Account,
        *,
        stop: Waitable,
        poll_seconds: float,
        on_synced: Callable[[AccountSyncReport], None] | None = None,
    ) -> None:
        self.syncer = syncer
        self.account = account
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.on_synced = on_synced
        self.caught_up = False
        self._live_since: float | None = None
        self._idle = False
        # The folder the command connection IDLEs on between its commands (INBOX; None: the
        # server has no IDLE, or refused it, and every folder is polled), and whether the
        # first pass has synced it (only then may a helper connection watch it).
        self._inbox: Folder | None = None
        self._inbox_ready = False
        # A folder whose SELECT or IDLE the server refused: polled until the next LIST.
        self._idle_refused: int | None = None
        self._folder_errors: dict[int, str] = {}
        self._names: dict[int, str] = {}
        # Each polled folder's STATUS at its last poll, and when the state was last written.
        self._poll_status: dict[int, tuple[object, ...]] = {}
        self._state_written_at = 0.0
        # When (loop time) an outbox row waiting for a retry is due; None: none waits.
        self._outbox_due: float | None = None

    @property
    def stable(self) -> bool:
        if self._live_since is None:
            return False
        return asyncio.get_running_loop().time() - self._live_since >= STABLE_SECONDS

    # -- the session ----------------------------------------------------------------------------

    async def run(self) -> None:
        client = await self.syncer.connect(self.account)
        clean = False
        try:
            self._idle = "IDLE" in client.capabilities
            folders = await self._first_pass(client)
            # After the catch-up: the conflict rule has seen what changed in the mailbox.
            await self._busy(self._apply_outbox(client, self.account))
            await self._live(client, folders)
            clean = True
        finally:
            # After an error the connection may be mid-command: close it, do not LOGOUT.
            await release_clients([client], logout=clean)

    async def _apply_outbox(self, client: ImapClient, account: Account) -> None:
        """Apply the due outbox rows (the caller holds the command lock), and note when the
        next one that waits for a retry is due."""
        await self.syncer.apply_outbox(client, account)
        due_at = await in_thread(self.syncer.outbox.store.next_due_at, account.id)
        loop = asyncio.get_running_loop()
        if due_at is None:
            self._outbox_due = None
        else:
            self._outbox_due = loop.time() + max(0.0, (due_at - utcnow()).total_seconds())

    async def _first_pass(self, client: ImapClient) -> list[Folder]:
        syncer, account = self.syncer, self.account
        folders = await syncer.refresh_folders(client, account)
        pending = [f.name for f in folders if _syncable(f) and not f.backfill_done]
        if pending:
            shown = ", ".join(pending[:5]) + (", ..." if len(pending) > 5 else "")
            await syncer._set_state(
                account.name,
                "backfilling",
                f"Backfilling {len(pending)} folder(s): {shown}",
                connected_at=utcnow(),
            )
        else:
            await syncer._set_state(
                account.name, "connecting", "Connected; catching up", connected_at=utcnow()
            )
        self._names = {f.id: f.name for f in folders}
        self._inbox = self._idle_folder(folders)

        def inbox_done(folder: Folder, _report: FolderSyncReport) -> None:
            # As soon as the first pass is done with INBOX, a helper connection may watch it
            # while the other folders are backfilled (:meth:`_busy`).
            if self._inbox is not None and folder.id == self._inbox.id:
                self._inbox_ready = True

        report = await self._busy(
            syncer.sync_once(client, account, folders=folders, after_folder=inbox_done)
        )
        self._inbox_ready = True
        self.caught_up = True
        self._live_since = asyncio.get_running_loop().time()
        await self._synced(report)
        return folders

    async def _live(self, client: ImapClient, folders: list[Folder]) -> None:
        from correspond.sync.engine import AccountSyncReport

        syncer, account = self.syncer, self.account
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_poll = now + self.poll_seconds
        next_refresh = now + syncer.folder_refresh_interval
        next_check = now + syncer.selection_check_interval
        synced_ids = {f.id for f in folders if _syncable(f)}
        # INBOX may have changed since the first pass synced it: sync before the first IDLE.
        inbox_dirty = True
        while not self.stop.is_set():
            wake_at = min(next_poll, next_refresh)
            if self._outbox_due is not None:
                wake_at = min(wake_at, self._outbox_due)  # a row waiting for its retry
            account_changed = syncer.account_changed
            inbox = self._inbox
            if inbox is not None:
                if inbox_dirty:
                    inbox_dirty = await self._sync_inbox(client, inbox)
                    continue
                # IDLE on INBOX until it changes or the next poll, LIST or account check is
                # due: the one connection an idle account holds.
                if account_changed is None:
                    wake_at = min(wake_at, next_check)
                    wake: tuple[Waitable, ...] = (self.stop,)
                else:
                    wake = (self.stop, account_changed)
                try:
                    inbox_dirty = await syncer.idle_until_change(
                        client,
                        inbox,
                        wake=wake,
                        deadline=wake_at,
                        on_flags=self._flags_applier(inbox),
                    )
                except ImapCommandError:
                    # The server refused IDLE there: poll INBOX with the others until the next
                    # LIST (the session is intact).
                    self._idle_refused, self._inbox = inbox.id, None
                    continue
                if inbox_dirty or self.stop.is_set():
                    continue
                now = loop.time()
                if account_changed is None:
                    check = now >= next_check
                else:
                    check = account_changed.is_set()
                    account_changed.clear()
            else:
                # The account's row and folder selection are re-read when the runner reports a
                # change (one query per round for all accounts), not on a timer of their own.
                check = await syncer.wait_for_account_change(self.stop, wake_at - loop.time())
                if self.stop.is_set():
                    return
                now = loop.time()
            outbox_due = self._outbox_due is not None and now >= self._outbox_due
            if check:
                next_check = now + syncer.selection_check_interval
            due: set[int] = set()
            if now >= next_refresh:
                folders = await self._busy(syncer.refresh_folders(client, account))
                next_refresh = now + syncer.folder_refresh_interval
                self._idle_refused = None  # the list settles it: IDLE may be tried again
                check = True  # the list may have changed what is synced
            if check:
                fresh = await in_thread(syncer.store.get_account, account.name)
                if imap_settings(fresh) != imap_settings(account):
                    raise ConnectionSettingsChanged(
                        f"Connection settings changed; reconnecting to "
                        f"{fresh.imap_host}:{fresh.imap_port}"
                    )
                folders = await in_thread(syncer.store.list_folders, account.name)
                current = {f.id for f in folders if _syncable(f)}
                if fresh.window_days != account.window_days:
                    # A wider window reset the folders' backfill cursors: sync them all now.
                    due |= current
                # The toggles (and the window) as they are now; the connection is the same.
                self.account = account = fresh
                change = selection_change(synced_ids, current)
                self._names = {f.id: f.name for f in folders}
                for folder_id in set(self._folder_errors) - current:
                    del self._folder_errors[folder_id]  # no longer synced: no longer failing
                for folder_id in change.removed:
                    self._poll_status.pop(folder_id, None)
                for folder_id in sorted(change.removed):
                    # No longer mirrored: its UIDs would go stale. The messages stay.
                    await in_thread(syncer.messages.forget_folder, folder_id)
                due |= change.added
                synced_ids = current
            previous = self._inbox
            self._inbox = inbox = self._idle_folder(folders)
            if inbox is not None and (previous is None or previous.id != inbox.id):
                inbox_dirty = True  # newly watched: polled (or not synced) until now
            polled: set[int] = set()
            if now >= next_poll:
                polled = synced_ids - due - ({inbox.id} if inbox is not None else set())
                next_poll = now + self.poll_seconds
            if due or polled:
                report = await self._busy(self._poll(client, folders, due, polled))
                if report is not None:
                    for folder_report in report.folders:
                        if folder_report.error is not None:
                            self._poll_status.pop(folder_report.folder_id, None)
                    await self._synced(report)
                elif loop.time() - self._state_written_at >= STATE_REFRESH_SECONDS:
                    await self._synced(AccountSyncReport(account.id))
            if check or outbox_due:
                # A CRM action touches the account's updated_at: the runner's round reports
                # it as a change (``check``); a row waiting for its retry is due by time.
                await self._busy(self._apply_outbox(client, account))
            # INBOX stayed selected through STATUS commands: a change the server reported
            # meanwhile waits in the queue. (Selected elsewhere: the next IDLE says so.)
            inbox_dirty = inbox_dirty or _changes_pending(client)

    async def _poll(
        self, client: ImapClient, folders: list[Folder], due: set[int], polled: set[int]
    ) -> AccountSyncReport | None:
        """Sync ``due`` and whichever of ``polled`` changed; None when nothing was synced."""
        # A polled folder whose STATUS has not moved since the last poll is not synced: one
        # round trip instead of SELECT, queries and a state write.
        polled -= await self._unchanged(client, folders, polled)
        due = due | polled
        if not due:
            return None
        return await self.syncer.sync_once(
            client, self.account, folders=[f for f in folders if f.id in due]
        )

    async def _unchanged(
        self, client: ImapClient, folders: list[Folder], polled: set[int]
    ) -> set[int]:
        """The folders of ``polled`` whose STATUS (UIDVALIDITY, UIDNEXT, MESSAGES,
        HIGHESTMODSEQ) is what it was at the previous poll, taken before that poll's sync.

        Only with CONDSTORE (without it a flag change moves none of these), and never the
        folder the connection has selected (RFC 3501 §6.3.10: STATUS there may lag): a
        read-only one is left with UNSELECT (RFC 3691) first, where the server offers it.
        """
        if "CONDSTORE" not in client.capabilities or not polled:
            return set()
        current = client.selected
        leave = (
            current is not None
            and current.read_only
            and "UNSELECT" in client.capabilities
            and any(f.id in polled and f.name_raw == current.name_raw for f in folders)
        )
        if leave:
            await client.unselect()
        selected = client.selected.name_raw if client.selected is not None else None
        same: set[int] = set()
        for folder in folders:
            if folder.id not in polled or folder.name_raw == selected:
                continue
            try:
                status = await client.status(folder.name_raw, _POLL_STATUS)
            except ImapCommandError:
                self._poll_status.pop(folder.id, None)
                continue  # the sync reports it
            values = tuple(status.values.get(item) for item in _POLL_STATUS)
            if None not in values and self._poll_status.get(folder.id) == values:
                same.add(folder.id)
            else:
                self._poll_status[folder.id] = values
        return same

    async def _synced(self, report: AccountSyncReport) -> None:
        # A folder the server refused is part of the state: "live" must not hide it.
        for folder_report in report.folders:
            if folder_report.error is not None:
                self._folder_errors[folder_report.folder_id] = folder_report.error
            else:
                self._folder_errors.pop(folder_report.folder_id, None)
        detail = "Up to date"
        if self._folder_errors:
            shown = "; ".join(
                f"{self._names.get(fid, f'folder {fid}')}: {err}"
                for fid, err in sorted(self._folder_errors.items())
            )
            detail = f"Up to date except {len(self._folder_errors)} folder(s) - {shown}"
        await self.syncer._set_state(self.account.name, "live", detail, last_sync_at=utcnow())
        self._state_written_at = asyncio.get_running_loop().time()
        if self.on_synced is not None:
            self.on_synced(report)

    # -- INBOX: IDLE between commands -----------------------------------------------------------

    def _idle_folder(self, folders: list[Folder]) -> Folder | None:
        """The folder to IDLE on (INBOX when synced and the server has IDLE), else None."""
        watched = idle_folders(
            ((f.id, f.role, _syncable(f)) for f in folders if f.id != self._idle_refused),
            server_idles=self._idle,
        )
        return next((f for f in folders if f.id in watched), None)

    async def _sync_inbox(self, client: ImapClient, inbox: Folder) -> bool:
        """Sync INBOX after a change; True when another change came in during the sync.

        Its queries run on the new-mail threads: never queued behind other accounts'
        backfills, polls and state writes on the default pool.
        """
        return await asyncio.create_task(
            self._sync_inbox_now(client, inbox), context=new_mail_context()
        )

    async def _sync_inbox_now(self, client: ImapClient, inbox: Folder) -> bool:
        from correspond.sync.engine import AccountSyncReport

        try:
            report = await self.syncer.sync_folder(client, self.account, inbox)
        except ImapCommandError as exc:
            # INBOX refused (the session is intact): say so, and poll it until the next LIST.
            report = FolderSyncReport(folder_id=inbox.id, kind="error", error=str(exc))
            self._idle_refused = inbox.id
            if self._inbox is not None and self._inbox.id == inbox.id:
                self._inbox = None
        if report.removed and report.error is None:
            # Gone from INBOX: moved (to Trash, Archive, another folder) or expunged? What it
            # means for the CRM copy is decided once known (two-way, store.remote_state).
            await self.syncer.explain_gone(client, self.account, synced_now={inbox.id})
        again = _changes_pending(client)
        # Before the first pass is over the account is not live yet: say nothing. A sync that
        # found nothing (a change already synced) writes nothing either.
        if self.caught_up and (
            _changed(report) or report.error is not None or inbox.id in self._folder_errors
        ):
            await self._synced(AccountSyncReport(self.account.id, folders=[report]))
        return again and report.error is None

    def _flags_applier(
        self, inbox: Folder
    ) -> Callable[[dict[int, tuple[frozenset[str], int | None]]], Awaitable[None]]:
        """What IDLE on ``inbox`` does with flag changes the server announces with their UIDs
        (:meth:`AccountSyncer.idle_until_change`): store them at once, staying in IDLE."""

        async def apply(notified: dict[int, tuple[frozenset[str], int | None]]) -> None:
            await asyncio.create_task(
                self._apply_flags(inbox, notified), context=new_mail_context()
            )

        return apply

    async def _apply_flags(
        self, inbox: Folder, notified: dict[int, tuple[frozenset[str], int | None]]
    ) -> None:
        from correspond.sync.engine import AccountSyncReport

        # The folder's lock: never at once with a sync of INBOX on the other connection.
        async with self.syncer.folder_lock(inbox.id):
            updated = await in_thread(self.syncer.messages.apply_notified_flags, inbox.id, notified)
        self.syncer.stats.idle_flag_updates += updated
        if updated and self.caught_up:
            report = FolderSyncReport(folder_id=inbox.id, kind="idle", flag_updates=updated)
            report.done = True
            await self._synced(AccountSyncReport(self.account.id, folders=[report]))

    async def _busy(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the command connection; once it has taken
        :data:`HELPER_AFTER_SECONDS` (and the first pass is done with INBOX), a helper
        connection watches INBOX until it ends (:meth:`_help`).

        A helper that fails ends the session (its error is raised here): a half-working
        session would let INBOX fall silently behind.
        """
        if self._inbox is None:
            return await work
        task = asyncio.ensure_future(work)
        finished = Flag()
        helper: asyncio.Task[None] | None = None
        try:
            while helper is None:
                done, _ = await asyncio.wait({task}, timeout=HELPER_AFTER_SECONDS)
                if task in done:
                    return task.result()
                inbox = self._inbox
                if inbox is not None and self._inbox_ready:
                    helper = asyncio.create_task(
                        self._help(inbox, finished),
                        name=f"inbox helper {self.account.name}",
                        context=new_mail_context(),
                    )
            both = cast("set[asyncio.Task[Any]]", {task, helper})
            done, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                helper.result()  # its error ends the session; a clean end leaves INBOX be
            return await task
        finally:
            finished.set()
            if not task.done():
                task.cancel()
            for pending in (task, helper):
                if pending is not None:
                    with contextlib.suppress(BaseException):
                        await pending

    async def _help(self, inbox: Folder, finished: Flag) -> None:
        """Watch INBOX on a connection of its own until ``finished``: IDLE, and on a change
        DONE, sync, IDLE again, as the command connection does when it is free. Syncs take the
        folder's lock, so the two connections never sync INBOX at once."""
        syncer = self.syncer
        client = await syncer.connect(self.account)
        clean = False
        try:
            dirty = True  # what happened before this connection's IDLE started
            while not finished.is_set() and not self.stop.is_set():
                if dirty:
                    dirty = await self._sync_inbox_now(client, inbox)
                    if self._idle_refused == inbox.id:
                        break  # INBOX refused: the command connection reports and polls it
                    continue
                dirty = await syncer.idle_until_change(
                    client, inbox, wake=(self.stop, finished), on_flags=self._flags_applier(inbox)
                )
            clean = True
        except ImapCommandError:
            # INBOX or IDLE refused: stop helping; the command connection comes back to it.
            clean = True
        finally:
            await release_clients([client], logout=clean)
