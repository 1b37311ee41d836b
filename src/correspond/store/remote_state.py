"""The mailbox -> CRM direction of two-way sync: what a location change seen in the mailbox
means for the CRM copy's state (``rules.two_way.crm_state_after_remote_change``), applied in the
transaction that records the change.

Three moments call it (all in ``store.messages``):

- a location goes and the message still has others (:func:`settle_after_removal`): decided at
  once, before = the locations it had, after = those left;
- its last location goes: nothing is decided yet (a MOVE between two synced folders shows as an
  expunge in one before the new copy is seen in the other). The synced folders it sat in are
  kept (``messages.home_folder_ids``) and the engine looks for it: found in a folder that is not
  synced, or not found at all, is decided then (:func:`settle_explained`); found in a synced
  folder, it is decided when that folder's sync links the copy;
- a stored message gains a location (:func:`settle_after_link`): before = the locations it had
  (its home folders when it had none and its disappearance was not explained yet; none when it
  was: then the verdict was already given), after = those plus the new one.

A state that changes to ``deleted`` stamps ``deleted_at`` (the purge counts from it); one that
leaves ``deleted`` clears it. The message row itself never changes identity: same id, same
thread, same timeline links.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from correspond.rules.two_way import (
    MessageState,
    Place,
    Toggles,
    crm_state_after_remote_change,
)
from correspond.store.message_tables import MessageLocationRow, MessageRow
from correspond.store.records import TOGGLES
from correspond.store.tables import AccountRow, FolderRow, utcnow

__all__ = [
    "StateChange",
    "home_folders_of",
    "settle_after_link",
    "settle_after_removal",
    "settle_explained",
    "state_values",
]

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class StateChange:
    """A message's CRM state changed because of the mailbox."""

    message_id: int
    old: str
    new: str
    reason: str


def _chunks(values: Sequence[int]) -> list[Sequence[int]]:
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]


def state_values(new: str, old: str) -> dict[str, object]:
    """The columns to set when a message's state goes from ``old`` to ``new``."""
    values: dict[str, object] = {"state": new}
    if new == "deleted" and old != "deleted":
        values["deleted_at"] = utcnow()
    elif new != "deleted":
        values["deleted_at"] = None
    return values


class _Context:
    """What the rule needs about an account's folders and toggles, read once."""

    def __init__(self, s: Session) -> None:
        self.s = s
        self._folders: dict[int, Place] = {}
        self._toggles: dict[int, Toggles] = {}

    def place(self, folder_id: int, *, selected: bool | None = None) -> Place:
        found = self._folders.get(folder_id)
        if found is None:
            row = self.s.execute(
                select(FolderRow.role, FolderRow.selected, FolderRow.removed).where(
                    FolderRow.id == folder_id
                )
            ).first()
            if row is None:
                found = Place(folder_id, None, False)
            else:
                found = Place(folder_id, row.role, bool(row.selected) and not row.removed)
            self._folders[folder_id] = found
        if selected is not None and selected != found.selected:
            return Place(found.folder_id, found.role, selected)
        return found

    def toggles(self, account_id: int) -> Toggles:
        found = self._toggles.get(account_id)
        if found is None:
            row = self.s.get(AccountRow, account_id)
            values = {} if row is None else {n: bool(getattr(row, n)) for n in TOGGLES}
            found = self._toggles[account_id] = Toggles.of(values)
        return found


def _locations(s: Session, message_ids: Sequence[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for part in _chunks(sorted(set(message_ids))):
        for mid, fid in s.execute(
            select(MessageLocationRow.message_id, MessageLocationRow.folder_id).where(
                MessageLocationRow.message_id.in_(part)
            )
        ):
            found.setdefault(int(mid), []).append(int(fid))
    return found


def _decide(
    ctx: _Context,
    rows: Sequence[tuple[int, int, str]],
    before: Mapping[int, Sequence[Place]],
    after: Mapping[int, Sequence[Place]],
) -> list[StateChange]:
    """Ask the rule for each (message id, account id, state) and write the changed states."""
    changes: list[StateChange] = []
    for mid, account_id, state in rows:
        verdict = crm_state_after_remote_change(
            state=cast(MessageState, state),
            before=before.get(mid, ()),
            after=after.get(mid, ()),
            toggles=ctx.toggles(account_id),
        )
        if verdict.state != state:
            changes.append(StateChange(mid, state, verdict.state, verdict.reason))
    # One UPDATE per kind of change (a mass expunge is a few statements, not one a message).
    by_kind: dict[tuple[str, str], list[int]] = {}
    for change in changes:
        by_kind.setdefault((change.new, change.old), []).append(change.message_id)
    for (new, old), ids in by_kind.items():
        values = state_values(new, old)
        for part in _chunks(sorted(ids)):
            ctx.s.execute(update(MessageRow).where(MessageRow.id.in_(part)).values(**values))
    return changes


def settle_after_removal(
    s: Session, removed: Mapping[int, Collection[int]], *, decide: bool = True
) -> list[StateChange]:
    """Locations were removed (``removed``: message id -> the folder ids it left), already
    deleted in ``s``. Messages with locations left are decided now (unless ``decide`` is
    False: the CRM's own action, already decided); those with none keep the synced folders
    they left outside Trash as their home (decided once explained)."""
    if not removed:
        return []
    ctx = _Context(s)
    left = _locations(s, list(removed))
    # Grouped by home: a mass expunge is a few statements, not one a message.
    homes: dict[tuple[int, ...], list[int]] = {}
    for mid in removed:
        if mid not in left:
            home = tuple(f for f in sorted(set(removed[mid])) if ctx.place(f).role != "trash")
            if home:
                homes.setdefault(home, []).append(mid)
    for home, ids in homes.items():
        for part in _chunks(sorted(ids)):
            s.execute(
                update(MessageRow).where(MessageRow.id.in_(part)).values(home_folder_ids=list(home))
            )
    staying = sorted(mid for mid in removed if mid in left)
    if not staying or not decide:
        return []
    rows = _rows(s, staying)
    before = {
        mid: [ctx.place(f) for f in sorted(set(left[mid]) | set(removed[mid]))] for mid in staying
    }
    after = {mid: [ctx.place(f) for f in left[mid]] for mid in staying}
    return _decide(ctx, rows, before, after)


def settle_explained(
    s: Session, account_id: int, found_in: Mapping[int, int | None]
) -> list[StateChange]:
    """Messages gone from every synced folder, now explained: found in the folder ``found_in``
    names (one that is not synced), or not found (None: expunged). Only those still without a
    location (a sync may have linked a copy meanwhile)."""
    if not found_in:
        return []
    ctx = _Context(s)
    rows: list[tuple[int, int, str]] = []
    homes: dict[int, list[int]] = {}
    for part in _chunks(sorted(found_in)):
        for mid, acc, state, home in s.execute(
            select(
                MessageRow.id, MessageRow.account_id, MessageRow.state, MessageRow.home_folder_ids
            ).where(
                MessageRow.id.in_(part),
                MessageRow.account_id == account_id,
                ~select(MessageLocationRow.id)
                .where(MessageLocationRow.message_id == MessageRow.id)
                .exists(),
            )
        ):
            rows.append((int(mid), int(acc), str(state)))
            homes[int(mid)] = [int(f) for f in home or ()]
    before = {mid: [ctx.place(f, selected=True) for f in homes[mid]] for mid, _a, _s in rows}
    after: dict[int, list[Place]] = {}
    for mid, _a, _s in rows:
        folder = found_in[mid]
        after[mid] = [] if folder is None else [ctx.place(folder, selected=False)]
    return _decide(ctx, rows, before, after)


def _rows(s: Session, message_ids: Sequence[int]) -> list[tuple[int, int, str]]:
    rows: list[tuple[int, int, str]] = []
    for part in _chunks(sorted(set(message_ids))):
        rows.extend(
            (int(mid), int(acc), str(state))
            for mid, acc, state in s.execute(
                select(MessageRow.id, MessageRow.account_id, MessageRow.state).where(
                    MessageRow.id.in_(part)
                )
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class LinkBefore:
    """What a stored message was before a sync linked a new copy of it (read before the
    batch's writes)."""

    account_id: int
    state: str
    folders: tuple[int, ...]
    home: tuple[int, ...]
    explained: bool
    gone: bool


def home_folders_of(s: Session, message_ids: Collection[int]) -> dict[int, LinkBefore]:
    """The messages of ``message_ids`` whose state a new copy may change (not active, or gone
    from the synced folders: an active message that only gains a copy keeps its state), with
    what the rule needs. One query, usually answering nothing."""
    found: dict[int, LinkBefore] = {}
    ids = sorted(set(message_ids))
    for part in _chunks(ids):
        rows = s.execute(
            select(
                MessageRow.id,
                MessageRow.account_id,
                MessageRow.state,
                MessageRow.home_folder_ids,
                MessageRow.gone_from_mailbox_at,
                MessageRow.gone_reason,
            ).where(
                MessageRow.id.in_(part),
                (MessageRow.state != "active") | MessageRow.gone_from_mailbox_at.is_not(None),
            )
        ).all()
        if not rows:
            continue
        where = _locations(s, [int(r.id) for r in rows])
        for r in rows:
            found[int(r.id)] = LinkBefore(
                account_id=int(r.account_id),
                state=str(r.state),
                folders=tuple(where.get(int(r.id), ())),
                home=tuple(int(f) for f in r.home_folder_ids or ()),
                explained=r.gone_reason is not None,
                gone=r.gone_from_mailbox_at is not None,
            )
    return found


def settle_after_link(
    s: Session, befores: Mapping[int, LinkBefore], folder_id: int
) -> list[tuple[int, dict[str, object]]]:
    """The state changes new copies in ``folder_id`` make (message id, columns to set), decided
    from what :func:`home_folders_of` read before the batch's writes. Reads folder rows only
    (cached): the caller may run the writes in a pipeline."""
    ctx = _Context(s)
    out: list[tuple[int, dict[str, object]]] = []
    for mid, b in befores.items():
        if b.folders:
            before = [ctx.place(f) for f in b.folders]
        elif b.explained:
            before = []  # its disappearance was decided already: it comes from nowhere synced
        elif b.home:
            before = [ctx.place(f, selected=True) for f in b.home]
        elif not b.gone:
            # No location, never gone and no home: its folder was re-read from scratch (a new
            # UIDVALIDITY): it was where it is found again.
            before = [ctx.place(folder_id)]
        else:
            before = []
        after = [*(ctx.place(f) for f in b.folders), ctx.place(folder_id)]
        verdict = crm_state_after_remote_change(
            state=cast(MessageState, b.state),
            before=before,
            after=after,
            toggles=ctx.toggles(b.account_id),
        )
        if verdict.state != b.state:
            out.append((mid, state_values(verdict.state, b.state)))
    return out
