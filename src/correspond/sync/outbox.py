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
  message where it went and keeps its identity); else ``UID MOVE`` (the client falls back to
  COPY + \\Deleted + UID EXPUNGE of that UID only);
- an expunge of one copy: ``UID STORE +FLAGS.SILENT (\\Deleted)`` and ``UID EXPUNGE`` of that
  UID only (UIDPLUS), never a bare EXPUNGE.

What to do is asked of ``rules.two_way.mailbox_ops_for_crm_action`` again at apply time, with
the locations and toggles as they are then. Transient errors (a connection lost, a timeout)
leave the row pending with a jittered backoff and end the pass (the session reconnects);
permanent ones (the message or its folder gone, a command refused, no Trash or Archive
folder) fail the row with the reason, shown on the message and in ``account list``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from correspond.errors import CorrespondError, ImapCommandError, NotFound
from correspond.imap.client import ImapClient
from correspond.imap.protocol import Atom
from correspond.rules.sync_plan import backoff_delay
from correspond.rules.two_way import (
    CrmAction,
    MailboxOp,
    Place,
    Toggles,
    mailbox_ops_for_crm_action,
)
from correspond.store.outbox import LocationTarget, OutboxAction, OutboxStore, RestorePlaces
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
    ) -> None:
        self.store = store
        # ``send`` rows go to the sender (sync.sender), which keeps its own retry rules.
        self.sender = sender
        self.rng = rng or random.Random()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_attempts = max_attempts

    async def apply_due(self, client: ImapClient, account: Account) -> OutboxPassReport:
        """Apply every due row of ``account``, in order. A transient error is recorded on its
        row and raised again (the connection is unusable): the caller's session reconnects."""
        report = OutboxPassReport()
        rows = await in_thread(self.store.due, account.id)
        for row in rows:
            try:
                await self._apply(client, account, row)
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
                delay = backoff_delay(
                    row.attempts + 1, rng=self.rng, base=self.backoff_base, cap=self.backoff_cap
                )
                when = utcnow() + timedelta(seconds=delay)
                await in_thread(self.store.mark_retry, row.id, str(exc), when)
                report.retried += 1
                raise
            else:
                report.applied += 1
        return report

    async def _apply(self, client: ImapClient, account: Account, row: OutboxAction) -> None:
        if row.kind == "send":
            if self.sender is None:
                raise PermanentActionFailure("this process cannot send mail")
            await self.sender.apply(client, account, row)
            return
        if row.message_id is None:
            raise PermanentActionFailure("the action names no message")
        try:
            state, targets = await in_thread(self.store.targets, row.message_id)
        except NotFound as exc:
            raise PermanentActionFailure("the message is gone") from exc
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
        if not targets and kind in ("read", "unread", "star", "unstar", "move"):
            raise PermanentActionFailure(
                "the message is no longer in any synced folder of the mailbox"
            )
        by_folder = {t.folder_id: t for t in targets}
        flags: dict[int, frozenset[str]] = {}
        removed: list[int] = []
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
            elif op.kind == "move":
                await self._move(client, account, target, op)
                removed.append(target.location_id)
            else:
                await self._expunge(client, target)
                removed.append(target.location_id)
        if stores and gone == stores:
            raise PermanentActionFailure(
                "the message is gone from the mailbox (not found in any folder it was in)"
            )
        await in_thread(
            lambda: self.store.mark_applied(row.id, location_flags=flags, removed_locations=removed)
        )

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
            # Created on first use; the next folder list names it (role by its name, or by
            # the server's \Archive where it marks one).
            try:
                await client.create(ARCHIVE_NAME)
            except ImapCommandError as exc:
                raise PermanentActionFailure(
                    f"the mailbox has no Archive folder and could not create one: {exc}"
                ) from exc
            return ARCHIVE_NAME.encode("ascii")
        raise PermanentActionFailure(f"the mailbox has no {op.to_role} folder")

    async def _move(
        self, client: ImapClient, account: Account, target: LocationTarget, op: MailboxOp
    ) -> None:
        destination = await self._destination(client, account, op)
        if destination is None:
            # No Trash: \Deleted and UID EXPUNGE of this UID only.
            await self._expunge(client, target)
            return
        await self._select(client, target)
        if await self._current_flags(client, target.uid) is None:
            return  # already moved (an earlier attempt, or the user): not repeated
        try:
            await client.uid_move(str(target.uid), destination)
        except ImapCommandError as exc:
            raise PermanentActionFailure(f"the server refused the move: {exc}") from exc

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
        try:
            await client.uid_move(str(uid), destination)
        except ImapCommandError as exc:
            raise PermanentActionFailure(f"the server refused the move: {exc}") from exc

    async def _expunge(self, client: ImapClient, target: LocationTarget) -> None:
        await self._select(client, target)
        if await self._current_flags(client, target.uid) is None:
            return
        if "UIDPLUS" not in client.capabilities:
            raise PermanentActionFailure(
                "the server lacks UIDPLUS: removing one copy would need a bare EXPUNGE, which "
                "could remove other messages flagged \\Deleted"
            )
        try:
            await client.uid_store(str(target.uid), "+FLAGS.SILENT", ["\\Deleted"])
            await client.uid_expunge(str(target.uid))
        except ImapCommandError as exc:
            raise PermanentActionFailure(f"the server refused the removal: {exc}") from exc
