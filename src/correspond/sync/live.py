"""One connected session of an account: backfill, then live (DESIGN.md "Live").

Connections (DESIGN.md "Scale-out": a few per account, far below provider caps):

- the *command connection* runs the first pass (backfill, INBOX and Sent first), then polls the
  folders without IDLE every ``poll_seconds``, re-reads the folder list every
  ``folder_refresh_interval`` (created, renamed, deleted folders) and the account and its
  folder selection when the runner reports that the account's row changed
  (:meth:`~correspond.sync.engine.AccountSyncer.wait_for_account_change`; added folders are
  backfilled, removed ones lose their locations);
- one *IDLE connection* per watched folder (INBOX and Sent, :func:`idle_folders`), opened as
  soon as the first pass has finished that folder. It stays in IDLE (RFC 2177), re-issued only
  every ``idle_renew_seconds``: Dovecot holds notifications back ~0.5 s after IDLE starts, so
  leaving IDLE for each change would add that to every new message;
- a folder whose IDLE connection reports a change is synced (a burst during one sync is
  coalesced into one more sync) on the command connection when the command side is not using
  it, else on a *spare connection* of the watcher's own, opened then and closed after
  ``spare_connection_idle_seconds`` without a change: new INBOX mail is never held up behind
  a long backfill or poll of another folder, and a live account holds three connections
  (command, two IDLE), not five. A server without IDLE gets neither: every folder is polled.

Any connection failing ends the whole session (the others are closed) and
:meth:`AccountSyncer.run_account` reconnects with backoff: a half-working session would let
folders fall silently behind. A change to how the account connects (host, port, security, user
name, trusted certificate, plaintext permission), seen with the folder selection, ends the
session too, with :class:`ConnectionSettingsChanged`: the caller reconnects at once with the new
settings instead of keeping connections the user has just replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from correspond.errors import CorrespondError, ImapCommandError
from correspond.imap.client import ImapClient, release_clients
from correspond.rules.sync_plan import idle_folders, selection_change
from correspond.store.records import Account, Folder
from correspond.store.tables import utcnow
from correspond.sync.folder_sync import FolderSyncReport
from correspond.sync.threads import in_thread, new_mail_context

if TYPE_CHECKING:
    from correspond.sync.engine import AccountSyncer, AccountSyncReport

__all__ = ["STABLE_SECONDS", "ConnectionSettingsChanged", "LiveSession", "imap_settings"]

STABLE_SECONDS = 60.0
"""A session that stayed live this long counts as healthy: a failure after it retries from the
backoff's base. (A server that drops every session right after the first pass would otherwise
be reconnected to every second, for ever.)"""


STATE_REFRESH_SECONDS = 600.0
"""While polls find nothing new, ``last_sync_at`` is still written this often: the account
shows it is being watched, without a write per account per poll."""

_POLL_STATUS = ("UIDVALIDITY", "UIDNEXT", "MESSAGES", "HIGHESTMODSEQ")


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


class LiveSession:
    """Runs one session of one account until ``stop`` is set or a connection fails.

    :meth:`run` returns when ``stop`` is set and raises the error that ended the session
    otherwise. ``caught_up`` tells whether the first pass completed, and :attr:`stable` whether
    the session then stayed up for :data:`STABLE_SECONDS` (only then does the caller's retry
    backoff start again from its base).
    """

    def __init__(
        self,
        syncer: AccountSyncer,
        account: Account,
        *,
        stop: asyncio.Event,
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
        self._watchers: dict[int, tuple[bytes, asyncio.Task[None]]] = {}
        self._broken = asyncio.Event()
        self._error: BaseException | None = None
        self._folder_errors: dict[int, str] = {}
        self._names: dict[int, str] = {}
        # The command connection, and who is using it: the command side (first pass, polls,
        # LIST) or a watcher syncing its folder on it while the command side has nothing to do.
        self._command: ImapClient | None = None
        self._command_lock = asyncio.Lock()
        self._first_folders: list[Folder] = []
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
        main = asyncio.create_task(self._command_side(client), name=f"sync {self.account.name}")
        broken = asyncio.create_task(self._broken.wait())
        try:
            done, _ = await asyncio.wait({main, broken}, return_when=asyncio.FIRST_COMPLETED)
            if main in done:
                main.result()
            else:
                main.cancel()
                with contextlib.suppress(BaseException):
                    await main
                assert self._error is not None
                raise self._error
            clean = True
        finally:
            for task in (main, broken):
                task.cancel()
            with contextlib.suppress(BaseException):
                await main
            try:
                await self._stop_watchers(set(self._watchers))
            finally:
                await release_clients([client], logout=clean)

    async def _command_side(self, client: ImapClient) -> None:
        self._idle = "IDLE" in client.capabilities
        self._command = client
        async with self._command_lock:
            await self._first_pass(client)
            # After the catch-up: the conflict rule has seen what changed in the mailbox.
            await self._apply_outbox(client, self.account)
        await self._live(client, self._first_folders)

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

    async def _first_pass(self, client: ImapClient) -> None:
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
        watched = self._watched(folders)
        self._names = {f.id: f.name for f in folders}

        def start_watcher(folder: Folder, _report: FolderSyncReport) -> None:
            # As soon as the first pass is done with INBOX (or Sent), it gets its IDLE
            # connection: new mail there no longer waits for the other folders' backfill.
            if folder.id in watched:
                self._start_watcher(folder)

        report = await syncer.sync_once(
            client, account, folders=folders, after_folder=start_watcher
        )
        self.caught_up = True
        self._live_since = asyncio.get_running_loop().time()
        self._first_folders = folders
        await self._synced(report)

    async def _live(self, client: ImapClient, folders: list[Folder]) -> None:
        from correspond.sync.engine import AccountSyncReport

        syncer, account = self.syncer, self.account
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_poll = now + self.poll_seconds
        next_refresh = now + syncer.folder_refresh_interval
        synced_ids = {f.id for f in folders if _syncable(f)}
        while not self.stop.is_set():
            # The account's row and folder selection are re-read when the runner reports a
            # change (one query per round for all accounts), not on a timer of their own.
            wake = min(next_poll, next_refresh)
            if self._outbox_due is not None:
                wake = min(wake, self._outbox_due)
            check = await syncer.wait_for_account_change(self.stop, wake - loop.time())
            if self.stop.is_set():
                return
            now = loop.time()
            outbox_due = self._outbox_due is not None and now >= self._outbox_due
            due: set[int] = set()
            if now >= next_refresh:
                async with self._command_lock:
                    folders = await syncer.refresh_folders(client, account)
                next_refresh = now + syncer.folder_refresh_interval
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
                if change.removed:
                    await self._stop_watchers(change.removed)
                    for folder_id in sorted(change.removed):
                        # No longer mirrored: its UIDs would go stale. The messages stay.
                        await in_thread(syncer.messages.forget_folder, folder_id)
                due |= change.added
                synced_ids = current
            await self._reconcile_watchers(folders)
            polled: set[int] = set()
            if now >= next_poll:
                polled = synced_ids - self._running_watchers() - due
                next_poll = now + self.poll_seconds
            if due or polled:
                async with self._command_lock:
                    # A polled folder whose STATUS has not moved since the last poll is not
                    # synced: one round trip instead of SELECT, queries and a state write.
                    polled -= await self._unchanged(client, folders, polled)
                    due |= polled
                    report = None
                    if due:
                        report = await syncer.sync_once(
                            client, account, folders=[f for f in folders if f.id in due]
                        )
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
                async with self._command_lock:
                    await self._apply_outbox(client, account)

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

    # -- IDLE connections -----------------------------------------------------------------------

    def _watched(self, folders: list[Folder]) -> frozenset[int]:
        return idle_folders(
            ((f.id, f.role, _syncable(f)) for f in folders), server_idles=self._idle
        )

    def _running_watchers(self) -> set[int]:
        return {fid for fid, (_, task) in self._watchers.items() if not task.done()}

    def _start_watcher(self, folder: Folder) -> None:
        current = self._watchers.get(folder.id)
        if current is not None and not current[1].done():
            return
        task = asyncio.create_task(self._watch(folder), name=f"idle {folder.name}")
        self._watchers[folder.id] = (folder.name_raw, task)

    async def _reconcile_watchers(self, folders: list[Folder]) -> None:
        """Start IDLE for watched folders without it, stop it for the others; a folder whose
        raw name changed restarts under the new name."""
        watched = self._watched(folders)
        names = {f.id: f.name_raw for f in folders}
        stale = {
            fid
            for fid, (name_raw, _) in self._watchers.items()
            if fid not in watched or names.get(fid) != name_raw
        }
        await self._stop_watchers(stale)
        for folder in folders:
            if folder.id in watched:
                self._start_watcher(folder)

    async def _stop_watchers(self, folder_ids: set[int] | frozenset[int]) -> None:
        tasks = [self._watchers.pop(fid)[1] for fid in list(folder_ids) if fid in self._watchers]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _watch(self, folder: Folder) -> None:
        """Keep ``folder`` in IDLE on one connection and sync it on another.

        The IDLE connection never leaves IDLE for a change (only to renew it): Dovecot holds
        notifications back ~0.5 s after each IDLE starts, so re-entering IDLE after every
        change would add that delay to every new message. A change sets ``changed`` and the
        folder is synced on another connection (:meth:`_sync_on_change`); a burst of changes
        during one sync is coalesced into one more sync after it. Syncs still take the
        folder's lock.
        """
        syncer, account = self.syncer, self.account
        changed = asyncio.Event()
        changed.set()  # the first sync catches what happened before IDLE started
        clients: list[ImapClient] = []
        tasks: list[asyncio.Task[None]] = []
        clean = False
        try:
            try:
                clients.append(await syncer.connect(account))
            except CorrespondError as exc:
                self._fail(exc)
                return
            (idle_client,) = clients
            tasks = [
                # Its queries run on the new-mail threads: never queued behind other
                # accounts' backfills, polls and state writes on the default pool.
                asyncio.create_task(
                    self._sync_on_change(folder, changed),
                    name=f"sync {folder.name}",
                    context=new_mail_context(),
                ),
                asyncio.create_task(
                    syncer.watch_changes(
                        idle_client, folder, stop=self.stop, on_change=changed.set
                    ),
                    name=f"idle {folder.name}",
                ),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                error = task.exception() if task in done else None
                if error is not None:
                    raise error
            # Both ended because ``stop`` is set (the sync side finishes its current sync).
            await asyncio.gather(*tasks)
            clean = True
        except ImapCommandError:
            # The folder refuses SELECT (deleted since LIST...) or the server refuses IDLE:
            # stop watching; the command connection polls it and the next LIST settles it.
            return
        except Exception as exc:  # a bug must end the session, not hide in a dead task
            self._fail(exc)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            # After an error a connection may be mid-command: close it, do not LOGOUT.
            await release_clients(clients, logout=clean)

    async def _sync_on_change(self, folder: Folder, changed: asyncio.Event) -> None:
        """Sync ``folder`` each time ``changed`` is set, until ``stop``.

        On the command connection when the command side is not using it (between its polls:
        nearly always once live), so an account holds three connections, not five. When it is
        busy (a backfill, a poll of other folders), new mail does not wait behind it: a
        connection of the watcher's own is opened, kept while changes keep coming, and closed
        after ``syncer.spare_connection_idle_seconds`` without one.
        """
        from correspond.sync.engine import AccountSyncReport

        syncer, account = self.syncer, self.account
        stopping = asyncio.create_task(self.stop.wait())
        spare: ImapClient | None = None
        clean = False
        try:
            notified = False
            while not self.stop.is_set():
                if not changed.is_set():
                    waiting = asyncio.create_task(changed.wait())
                    try:
                        await asyncio.wait(
                            {waiting, stopping},
                            timeout=syncer.spare_connection_idle_seconds if spare else None,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    finally:
                        waiting.cancel()
                    if self.stop.is_set():
                        break
                    if not changed.is_set():  # quiet for a while: let the spare go
                        unused, spare = spare, None
                        if unused is not None:
                            await release_clients([unused], logout=True)
                        continue
                # Cleared before the sync: a change reported during it means one more sync.
                changed.clear()
                command = self._command
                if command is not None and not self._command_lock.locked():
                    async with self._command_lock:
                        report = await syncer.sync_folder(command, account, folder)
                else:
                    if spare is None:
                        spare = await syncer.connect(account)
                    report = await syncer.sync_folder(spare, account, folder)
                # Before the first pass is over the account is not live yet: say nothing.
                if self.caught_up and (notified or _changed(report)):
                    await self._synced(AccountSyncReport(account.id, folders=[report]))
                notified = True
            clean = True
        finally:
            stopping.cancel()
            if spare is not None:
                # After an error the connection may be mid-command: close it, no LOGOUT.
                await release_clients([spare], logout=clean)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._broken.set()
