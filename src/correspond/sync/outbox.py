"""Applying the outbox: the account's syncer (the lease holder) carries CRM actions to the
mailbox, on its command connection, between syncs.

Each row is applied by reading the mailbox state first and acting only where it differs, so
applying a row twice has the effect of once (a crash or a cut connection between the command
and marking the row done leaves the row pending; the next attempt finds the flag already set,
or the message already gone from the folder it was moved out of, and does nothing):

- flags: ``UID FETCH uid (FLAGS)`` in each location's folder, then ``UID STORE +FLAGS`` /
  ``-FLAGS`` where the flag differs; the location's new flags are recorded with the row, so
  the next sync sees no change (our own echo never comes back as a remote change);
- a move: the UID is looked up in the source folder first; gone means done (the sync finds the
  message where it went and keeps its identity); else ``UID MOVE`` where the server offers
  MOVE, else COPY + \\Deleted + UID EXPUNGE of that UID only, with the destination's UIDNEXT
  recorded on the row before the COPY so that a COPY that happened is never repeated; without
  UIDPLUS the source copy is left flagged \\Deleted (never a bare EXPUNGE), and the row says so
  (``rules.outbox_steps`` has the steps and why);
- an expunge of one copy: ``UID STORE +FLAGS.SILENT (\\Deleted)`` and ``UID EXPUNGE`` of that
  UID only (UIDPLUS), never a bare EXPUNGE;
- an archive where the mailbox has no Archive-role folder creates ``Archive`` (asking for the
  ``\\Archive`` special use with CREATE-SPECIAL-USE where the server offers it, RFC 6154 §3)
  and re-reads the folder list at once, so the store records the folder and its role before
  the message is moved there.

What to do is asked of ``rules.two_way.mailbox_ops_for_crm_action`` again at apply time, with
the locations and toggles as they are then. Transient errors (a connection lost, a timeout)
leave the row pending with a jittered backoff and end the pass (the session reconnects);
permanent ones (the message or its folder gone, a command refused, no Trash or Archive
folder) fail the row with the reason, shown on the message and in ``account list``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from correspond.errors import CorrespondError, ImapCommandError, NotFound
from correspond.imap.client import ImapClient
from correspond.imap.protocol import Atom
from correspond.rules.outbox_steps import (
    LEFT_DELETED_NOTE,
    fallback_move_step,
    move_method,
    removal_method,
)
from correspond.rules.sync_plan import backoff_delay
from correspond.rules.two_way import (
    CrmAction,
    MailboxOp,
    MessageState,
    Place,
    Toggles,
    mailbox_ops_for_crm_action,
)
from correspond.store.outbox import (
    AppliedMark,
    LocationTarget,
    OutboxAction,
    OutboxStore,
    RestorePlaces,
)
from correspond.store.records import Account
from correspond.store.tables import utcnow
from correspond.sync.threads import in_thread

if TYPE_CHECKING:
    from correspond.sync.sender import SendApplier

__all__ = ["OutboxApplier", "OutboxPassReport", "PermanentActionFailure"]

#: Attempts after which a row that keeps failing transiently is failed for good.
MAX_ATTEMPTS = 12
#: The folder an archive creates where the mailbox has none.
ARCHIVE_NAME = "Archive"
#: The actions that only set or clear a flag.
FLAG_KINDS = frozenset({"read", "unread", "star", "unstar", "answered"})
#: Applied rows marked in one transaction.
MARK_BATCH = 100
#: Messages at or above the recorded UIDNEXT looked at when searching for an earlier COPY.
MAX_COPY_CANDIDATES = 1000

log = logging.getLogger(__name__)

#: Re-reads the account's folder list into the store (the engine's ``refresh_folders``).
FolderRefresh = Callable[[ImapClient, Account], Awaitable[object]]


class PermanentActionFailure(Exception):
    """The action cannot take effect (the reason is recorded on the row)."""


@dataclass
class OutboxPassReport:
    """What one pass over the due rows did."""

    applied: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class OutboxApplier:
    """Applies an account's due outbox rows on a connection (see the module docstring)."""

    def __init__(
        self,
        store: OutboxStore,
        *,
        rng: random.Random | None = None,
        backoff_base: float = 2.0,
        backoff_cap: float = 300.0,
        max_attempts: int = MAX_ATTEMPTS,
        sender: SendApplier | None = None,
        refresh_folders: FolderRefresh | None = None,
    ) -> None:
        self.store = store
        # ``send`` rows go to the sender (sync.sender), which keeps its own retry rules.
        self.sender = sender
        self.refresh_folders = refresh_folders
        self.rng = rng or random.Random()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_attempts = max_attempts
        # A pass's prefetched flags, by (folder, UID); None: the UID is gone (_prefetch_flags).
        self._flags: dict[tuple[bytes, int], frozenset[str] | None] = {}

    async def apply_due(self, client: ImapClient, account: Account) -> OutboxPassReport:
        """Apply every due row of ``account``, in order. A transient error is recorded on its
        row and raised again (the connection is unusable): the caller's session reconnects."""
        report = OutboxPassReport()
        rows = await in_thread(self.store.due, account.id)
        # The messages' locations in one read; a message is read again for a later row of
        # it in the same pass (the earlier one may have moved it).
        known = await in_thread(
            self.store.targets_many, {r.message_id for r in rows if r.message_id is not None}
        )
        marks: list[AppliedMark] = []
        try:
            await self._prefetch_flags(client, rows, known)
            await self._apply_rows(client, account, rows, known, marks, report)
        finally:
            # Marked in batches (one transaction for many rows); a crash before that
            # re-applies them, which re-reads the mailbox and finds them done.
            await in_thread(self.store.mark_applied_many, marks)
        return report

    async def _prefetch_flags(
        self,
        client: ImapClient,
        rows: list[OutboxAction],
        known: dict[int, tuple[MessageState, list[LocationTarget]]],
    ) -> None:
        """Read the current flags of every location the pass's flag rows touch, one
        ``UID FETCH`` per folder instead of one per row (:meth:`_store` uses each once). A flag
        the user changes in between is at worst set again (idempotent) or left as they set it
        later (their change is the later one: the conflict rule's answer too)."""
        self._flags.clear()
        wanted: dict[bytes, tuple[LocationTarget, set[int]]] = {}
        for row in rows:
            if row.kind not in FLAG_KINDS or row.message_id not in known:
                continue
            for target in known[row.message_id][1]:
                entry = wanted.setdefault(target.folder_name_raw, (target, set()))
                entry[1].add(target.uid)
        for name, (target, uids) in wanted.items():
            if len(uids) < 2:
                continue  # one FETCH either way
            await self._select(client, target)
            answers = await client.uid_fetch_list(sorted(uids), "(UID FLAGS)")
            present = {a.uid: frozenset(a.flags) for a in answers if a.uid and a.flags is not None}
            for uid in uids:
                self._flags[(name, uid)] = present.get(uid)

    async def _apply_rows(
        self,
        client: ImapClient,
        account: Account,
        rows: list[OutboxAction],
        known: dict[int, tuple[MessageState, list[LocationTarget]]],
        marks: list[AppliedMark],
        report: OutboxPassReport,
    ) -> None:
        for row in rows:
            # A later row of a message this pass acted on reads it again: what the earlier
            # one changed must be in the store first.
            if len(marks) >= MARK_BATCH or (
                marks and (row.message_id not in known or row.kind == "send")
            ):
                await in_thread(self.store.mark_applied_many, list(marks))
                marks.clear()
            try:
                if row.kind == "send":
                    # The sender marks its rows itself (sync.sender: sent, retry, failed).
                    if self.sender is None:
                        raise PermanentActionFailure("this process cannot send mail")
                    await self.sender.apply(client, account, row)
                else:
                    marks.append(await self._apply(client, account, row, known))
            except PermanentActionFailure as exc:
                await in_thread(self.store.mark_failed, row.id, str(exc))
                report.failed += 1
                report.errors.append(str(exc))
            except CorrespondError as exc:
                if not exc.transient or row.attempts + 1 >= self.max_attempts:
                    reason = str(exc) if not exc.transient else f"gave up after retries: {exc}"
                    await in_thread(self.store.mark_failed, row.id, reason)
                    report.failed += 1
                    report.errors.append(reason)
                    if exc.transient:
                        raise
                    continue
                # Half jitter: a retry never comes straight back at a server that just failed.
                delay = backoff_delay(
                    row.attempts + 1,
                    rng=self.rng,
                    base=self.backoff_base,
                    cap=self.backoff_cap,
                    floor=0.5,
                )
                when = utcnow() + timedelta(seconds=delay)
                await in_thread(self.store.mark_retry, row.id, str(exc), when)
                report.retried += 1
                raise
            else:
                report.applied += 1

    async def _apply(
        self,
        client: ImapClient,
        account: Account,
        row: OutboxAction,
        known: dict[int, tuple[MessageState, list[LocationTarget]]],
    ) -> AppliedMark:
        if row.message_id is None:
            raise PermanentActionFailure("the action names no message")
        found = known.pop(row.message_id, None)
        if found is None:
            try:
                found = await in_thread(self.store.targets, row.message_id)
            except NotFound as exc:
                raise PermanentActionFailure("the message is gone") from exc
        state, every = found
        # A copy flagged \Deleted is on its way out (left so without UIDPLUS, or by the
        # user): never where the message lives, nor a copy to move or keep.
        targets = [t for t in every if "\\Deleted" not in t.flags]
        kind: CrmAction = row.kind  # type: ignore[assignment]
        to_folder_id = row.payload.get("to_folder_id")
        places, header = RestorePlaces(None, None), None
        if kind == "restore":
            places, header = await in_thread(self.store.restore_places, row.message_id)
        plan = mailbox_ops_for_crm_action(
            kind,
            state=state,
            locations=[Place(t.folder_id, t.role, True) for t in targets],
            toggles=Toggles.of(account.toggles),
            to_folder_id=int(to_folder_id) if to_folder_id is not None else None,
            home_folder_id=places.home_folder_id,
            unsynced_trash_id=places.unsynced_trash_id,
        )
        if not targets and kind in (*FLAG_KINDS, "move"):
            raise PermanentActionFailure(
                "the message is no longer in any synced folder of the mailbox"
            )
        by_folder = {t.folder_id: t for t in targets}
        flags: dict[int, frozenset[str]] = {}
        removed: list[int] = []
        notes: list[str] = []
        stores = gone = 0
        for op in plan.ops:
            if op.find:
                # Restored from a Trash the account does not sync: found by Message-ID.
                assert header is not None  # the rule asks to find only what has one
                await self._move_found(client, account, op, header)
                continue
            target = by_folder[op.folder_id]
            if op.kind == "store":
                stores += 1
                new = await self._store(client, target, op)
                if new is None:
                    gone += 1
                else:
                    flags[target.location_id] = new
            else:
                if op.kind == "move":
                    left = await self._move(client, account, row, target, op)
                else:
                    left = await self._expunge(client, target)
                if left is None:
                    removed.append(target.location_id)
                else:
                    # Left flagged \Deleted (no UIDPLUS): the location stays, with its flags,
                    # so the next sync sees no change (and no message "back in INBOX").
                    flags[target.location_id] = left
                    notes.append(LEFT_DELETED_NOTE)
        if stores and gone == stores:
            raise PermanentActionFailure(
                "the message is gone from the mailbox (not found in any folder it was in)"
            )
        if notes:
            log.warning("outbox row %s: %s", row.id, notes[0])
        return AppliedMark(row.id, flags, tuple(removed), notes[0] if notes else None)

    async def _select(self, client: ImapClient, target: LocationTarget) -> None:
        current = client.selected
        if (
            current is not None
            and current.name_raw == target.folder_name_raw
            and not current.read_only
        ):
            return
        try:
            await client.select(target.folder_name_raw)
        except ImapCommandError as exc:
            raise PermanentActionFailure(
                f"the folder {target.folder_name_raw.decode('utf-8', 'replace')} cannot be "
                f"opened: {exc}"
            ) from exc

    async def _current_flags(self, client: ImapClient, uid: int) -> frozenset[str] | None:
        """The message's flags on the server now; None when the UID is gone."""
        answers = await client.uid_fetch_list(str(uid), "(UID FLAGS)")
        for answer in answers:
            if answer.uid == uid and answer.flags is not None:
                return frozenset(answer.flags)
        return None

    async def _store(
        self, client: ImapClient, target: LocationTarget, op: MailboxOp
    ) -> frozenset[str] | None:
        """Set or clear the flag; the location's flags after it (None: the UID is gone from
        this folder, which the next sync notices; the other locations still get the flag)."""
        assert op.flag is not None
        await self._select(client, target)
        key = (target.folder_name_raw, target.uid)
        if key in self._flags:
            current = self._flags.pop(key)  # read by this pass's prefetch
        else:
            current = await self._current_flags(client, target.uid)
        if current is None:
            return None
        if (op.flag in current) == op.value:
            return current  # already so: an earlier attempt (or the user) did it
        try:
            result = await client.uid_store(
                str(target.uid), "+FLAGS" if op.value else "-FLAGS", [op.flag]
            )
        except ImapCommandError as exc:
            raise PermanentActionFailure(f"the server refused the flag change: {exc}") from exc
        for answer in result.fetches:
            if answer.uid in (None, target.uid) and answer.flags is not None:
                return frozenset(answer.flags)
        return current | {op.flag} if op.value else current - {op.flag}

    async def _destination(
        self, client: ImapClient, account: Account, op: MailboxOp
    ) -> bytes | None:
        """The raw name of the folder to move to; None for a delete where the mailbox has no
        Trash (the copy is then removed where it is)."""
        if op.to_folder_id is not None:
            name = await in_thread(self.store.folder_name, op.to_folder_id)
            if name is None:
                raise PermanentActionFailure("the folder to move to is gone")
            return name
        assert op.to_role is not None
        found = await in_thread(self.store.folder_by_role, account.id, op.to_role)
        if found is not None:
            return found[1]
        if op.to_role == "trash":
            return None
        if op.to_role == "archive":
            return await self._create_archive(client, account)
        raise PermanentActionFailure(f"the mailbox has no {op.to_role} folder")

    async def _create_archive(self, client: ImapClient, account: Account) -> bytes:
        """Create the Archive folder (first use, the mailbox has none) and record it with its
        role: ``\\Archive`` asked of the server where it offers CREATE-SPECIAL-USE (RFC 6154
        §3), the folder list re-read at once (the role from the server's ``\\Archive``, or
        from the name where the server marks none)."""
        try:
            await client.create(ARCHIVE_NAME, special_use="\\Archive")
        except ImapCommandError as exc:
            if exc.code != "ALREADYEXISTS":  # an earlier attempt made it (RFC 5530)
                raise PermanentActionFailure(
                    f"the mailbox has no Archive folder and could not create one: {exc}"
                ) from exc
        if self.refresh_folders is not None:
            await self.refresh_folders(client, account)
        # The live session picks the new folder up (and syncs it) at its next account check.
        await in_thread(self.store.touch_account, account.id)
        found = await in_thread(self.store.folder_by_role, account.id, "archive")
        if found is not None:
            return found[1]
        # The list gave the role to no folder (e.g. no refresh wired): record it ourselves.
        await in_thread(self.store.record_role, account.id, ARCHIVE_NAME.encode("ascii"), "archive")
        return ARCHIVE_NAME.encode("ascii")

    async def _move(
        self,
        client: ImapClient,
        account: Account,
        row: OutboxAction,
        target: LocationTarget,
        op: MailboxOp,
    ) -> frozenset[str] | None:
        """Move the copy; None when it left the source, else its flags (left \\Deleted)."""
        destination = await self._destination(client, account, op)
        if destination is None:
            # No Trash: \Deleted and UID EXPUNGE of this UID only.
            return await self._expunge(client, target)
        await self._select(client, target)
        current = await self._current_flags(client, target.uid)
        if current is None:
            return None  # already moved (an earlier attempt, or the user): not repeated
        if move_method(client.capabilities) == "move":
            try:
                await client.uid_move(str(target.uid), destination)
            except ImapCommandError as exc:
                raise PermanentActionFailure(f"the server refused the move: {exc}") from exc
            return None
        # COPY, then remove the source copy: a COPY an earlier attempt sent is looked for
        # in the destination, never repeated (rules.outbox_steps).
        started = row.payload.get("copies", {}).get(str(target.location_id))
        found = False
        if started is not None:
            found = await self._copy_exists(client, target, destination, int(started))
            await self._select(client, target)
        step = fallback_move_step(
            in_source=True, copy_started=started is not None, copy_found=found
        )
        try:
            if step == "copy":
                status = await client.status(destination, ["UIDNEXT"])
                uidnext = status.values.get("UIDNEXT")
                if uidnext is None:
                    raise PermanentActionFailure("the server did not say the folder's UIDNEXT")
                await in_thread(self.store.note_copy, row.id, target.location_id, int(uidnext))
                await client.uid_copy(str(target.uid), destination)
        except ImapCommandError as exc:
            raise PermanentActionFailure(f"the server refused the copy: {exc}") from exc
        return await self._remove(client, target.uid, current)

    async def _uid_by_message_id(self, client: ImapClient, name: bytes, header: str) -> int | None:
        try:
            await client.select(name)
            uids = await client.uid_search([Atom("HEADER"), Atom("Message-ID"), header])
        except ImapCommandError as exc:
            raise PermanentActionFailure(
                f"the folder {name.decode('utf-8', 'replace')} cannot be searched: {exc}"
            ) from exc
        return max(uids) if uids else None

    async def _move_found(
        self, client: ImapClient, account: Account, op: MailboxOp, header: str
    ) -> None:
        """Move the copy found by Message-ID in ``op.folder_id`` (a folder not synced) to the
        op's destination. Not there but at the destination: done (an earlier attempt moved
        it); in neither: the user removed it meanwhile."""
        source = await in_thread(self.store.folder_name, op.folder_id)
        if source is None:
            raise PermanentActionFailure("the folder to restore from is gone")
        destination = await self._destination(client, account, op)
        assert destination is not None  # a restore goes to a folder, never to no Trash
        uid = await self._uid_by_message_id(client, source, header)  # source left selected
        if uid is None:
            if await self._uid_by_message_id(client, destination, header) is not None:
                return
            raise PermanentActionFailure(
                f"the message is no longer in {source.decode('utf-8', 'replace')}"
            )
        if move_method(client.capabilities) == "move":
            try:
                await client.uid_move(str(uid), destination)
            except ImapCommandError as exc:
                raise PermanentActionFailure(f"the server refused the move: {exc}") from exc
            return
        # Without MOVE: a copy at the destination already (an earlier attempt's COPY, cut
        # before the source copy went) is not made again; then the source copy is removed as
        # everywhere (UID EXPUNGE, or left \Deleted without UIDPLUS; rules.outbox_steps).
        copied = await self._uid_by_message_id(client, destination, header) is not None
        await client.select(source)
        try:
            if not copied:
                await client.uid_copy(str(uid), destination)
        except ImapCommandError as exc:
            raise PermanentActionFailure(f"the server refused the copy: {exc}") from exc
        current = await self._current_flags(client, uid)
        if current is not None:
            await self._remove(client, uid, current)

    async def _copy_exists(
        self, client: ImapClient, target: LocationTarget, destination: bytes, uidnext: int
    ) -> bool:
        """Whether ``destination`` holds a copy of the source UID made at or after ``uidnext``
        (same RFC822.SIZE and INTERNALDATE: COPY keeps both)."""
        source = await client.uid_fetch_list(str(target.uid), "(UID RFC822.SIZE INTERNALDATE)")
        facts = next((a for a in source if a.uid == target.uid), None)
        if facts is None or facts.size is None:
            return False
        try:
            await client.examine(destination)
        except ImapCommandError as exc:
            raise PermanentActionFailure(
                f"the folder {destination.decode('utf-8', 'replace')} cannot be opened: {exc}"
            ) from exc
        size = facts.size
        found = [
            uid
            for uid in await client.uid_search(
                f"UID {uidnext}:* LARGER {max(size - 1, 0)} SMALLER {size + 1}"
            )
            if uid >= uidnext  # "n:*" names the last message even when n is above it
        ][-MAX_COPY_CANDIDATES:]
        if not found:
            return False
        answers = await client.uid_fetch_list(
            ",".join(map(str, found)), "(UID RFC822.SIZE INTERNALDATE)"
        )
        return any(
            a.uid in found and a.size == size and a.internaldate == facts.internaldate
            for a in answers
        )

    async def _expunge(self, client: ImapClient, target: LocationTarget) -> frozenset[str] | None:
        """Remove the copy where it is; None when gone, else its flags (left \\Deleted)."""
        await self._select(client, target)
        current = await self._current_flags(client, target.uid)
        if current is None:
            return None
        return await self._remove(client, target.uid, current)

    async def _remove(
        self, client: ImapClient, uid: int, current: frozenset[str]
    ) -> frozenset[str] | None:
        """\\Deleted on the UID, then UID EXPUNGE of it alone (UIDPLUS); without UIDPLUS it is
        left flagged: never a bare EXPUNGE (rules.outbox_steps). The source folder is selected."""
        try:
            if "\\Deleted" not in current:
                await client.uid_store(str(uid), "+FLAGS.SILENT", ["\\Deleted"])
            if removal_method(client.capabilities) == "leave_deleted":
                return current | {"\\Deleted"}
            await client.uid_expunge(str(uid))
        except ImapCommandError as exc:
            raise PermanentActionFailure(f"the server refused the removal: {exc}") from exc
        return None
