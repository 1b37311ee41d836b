"""Pure decisions of the sync engine: what to fetch, what changed, what to do about it.

Nothing here does IO or reads a clock: the engine passes in plain data (the folder's stored
checkpoint, what SELECT/SEARCH/FETCH returned, today's date, a random generator) and executes
the answer. Every function is a table test away from being checked.

Vocabulary (RFC 3501 §2.3.1.1, RFC 7162):

- *UID*: per-mailbox, strictly ascending in arrival order; valid only together with UIDVALIDITY.
- *UIDNEXT*: the UID the next message will get (a lower bound: the server may skip numbers).
- *MODSEQ / HIGHESTMODSEQ* (RFC 7162 §3.1.1): a per-mailbox counter bumped by every flag change
  or arrival; ``CHANGEDSINCE`` and ``VANISHED (EARLIER)`` report what happened after a value.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

__all__ = [
    "BACKOFF_CAP_SECONDS",
    "BackfillBatch",
    "FolderChanges",
    "FolderCheckpoint",
    "FolderListDiff",
    "FolderPlan",
    "KnownFolder",
    "RemoteFolder",
    "RenamedFolder",
    "SelectState",
    "SelectionChange",
    "backfill_order",
    "backoff_delay",
    "changes_from_condstore",
    "changes_from_fallback",
    "diff_folder_list",
    "idle_folders",
    "imap_date",
    "normalize_flags",
    "plan_backfill_batch",
    "plan_folder_sync",
    "selection_change",
    "window_start",
]

BACKOFF_CAP_SECONDS = 300.0
"""No retry waits longer than five minutes, however often it failed."""

# Flags the server owns or that say nothing about the message itself. \Recent is per-session
# (RFC 3501 §2.3.2) and would make every re-read look like a change.
_IGNORED_FLAGS = frozenset({"\\recent"})

# Folder roles synced first (DESIGN.md "Backfill": INBOX and Sent first), then the rest.
_ROLE_ORDER = {"inbox": 0, "sent": 1}


@dataclass(frozen=True, slots=True)
class FolderCheckpoint:
    """What the store knows about one folder: the state the last commit left behind.

    ``uidnext`` is the *covered* bound: every message with a UID below it is either stored or
    outside the window; it is only advanced in the transaction that stores those messages.
    ``backfill_low_uid`` is the backfill cursor: the lowest UID already backfilled (backfill walks
    downwards, newest first); None before the first batch.
    """

    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    backfill_done: bool = False
    backfill_low_uid: int | None = None


@dataclass(frozen=True, slots=True)
class SelectState:
    """What SELECT/EXAMINE reported (RFC 3501 §6.3.1, RFC 7162 §3.1.2.1)."""

    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None = None


@dataclass(frozen=True, slots=True)
class FolderPlan:
    """What to do with a folder after SELECT.

    ``kind``:
      - ``"reset"``: UIDVALIDITY changed (or was never stored); every stored location in the
        folder is void (RFC 3501 §2.3.1.1) and the folder is backfilled again. Messages are re-found
        by dedupe key, so nothing is duplicated; ``drop_locations`` says whether there were any.
      - ``"backfill"``: the backfill is not finished; continue below ``backfill_low_uid``.
      - ``"condstore"``: ask ``UID FETCH 1:* (FLAGS) (CHANGEDSINCE modseq [VANISHED])`` and fetch
        new UIDs from ``new_from_uid``.
      - ``"fallback"``: no CONDSTORE: fetch UIDs from ``new_from_uid``, re-read all flags and
        diff the UID set.
      - ``"none"``: nothing changed (same UIDNEXT and same HIGHESTMODSEQ).
    """

    kind: Literal["reset", "backfill", "condstore", "fallback", "none"]
    new_from_uid: int | None = None
    changedsince: int | None = None
    use_vanished: bool = False
    drop_locations: bool = False


@dataclass(frozen=True, slots=True)
class BackfillBatch:
    """The next backfill batch: ``uids`` newest first, and where the cursor lands after it."""

    uids: tuple[int, ...]
    next_low_uid: int | None
    remaining_after: int
    done: bool


@dataclass(frozen=True, slots=True)
class FolderChanges:
    """The difference between the store and the server for one folder.

    ``new_uids`` ascending; ``flag_updates`` maps a stored UID to its new flag set (already
    normalised); ``removed_uids`` ascending; ``highestmodseq``/``uidnext`` are what the checkpoint
    becomes once these changes are committed.
    """

    new_uids: tuple[int, ...] = ()
    flag_updates: Mapping[int, frozenset[str]] = field(default_factory=dict)
    removed_uids: tuple[int, ...] = ()
    highestmodseq: int | None = None
    uidnext: int | None = None

    @property
    def empty(self) -> bool:
        return not (self.new_uids or self.flag_updates or self.removed_uids)


@dataclass(frozen=True, slots=True)
class KnownFolder:
    """A folder as stored: its id and remote identity."""

    id: int
    name_raw: bytes
    mailbox_id: str | None = None
    uidvalidity: int | None = None


@dataclass(frozen=True, slots=True)
class RemoteFolder:
    """A folder as LIST (and STATUS, where asked) reported it.

    ``mailbox_id`` is RFC 8474 MAILBOXID when the server has OBJECTID; it survives renames.
    """

    name_raw: bytes
    mailbox_id: str | None = None
    uidvalidity: int | None = None


@dataclass(frozen=True, slots=True)
class RenamedFolder:
    id: int
    old_name_raw: bytes
    new: RemoteFolder


@dataclass(frozen=True, slots=True)
class FolderListDiff:
    created: tuple[RemoteFolder, ...] = ()
    renamed: tuple[RenamedFolder, ...] = ()
    deleted: tuple[KnownFolder, ...] = ()
    unchanged: tuple[tuple[KnownFolder, RemoteFolder], ...] = ()


# --- backfill ---------------------------------------------------------------------------------


def window_start(today: date, window_days: int) -> date:
    """The first day inside the sync window: ``today - window_days``.

    IMAP ``SINCE`` (RFC 3501 §6.4.4) compares the INTERNALDATE's *date*, ignoring time and
    timezone, and includes the day itself, so a message ``window_days`` days old is in.
    """
    if window_days < 0:
        raise ValueError("window_days must not be negative")
    return today - timedelta(days=window_days)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_date(day: date) -> str:
    """``date`` in the IMAP search form ``d-Mon-yyyy`` (RFC 3501 §9 ``date-text``), locale free."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year:04d}"


def plan_backfill_batch(
    candidate_uids: Iterable[int],
    *,
    low_uid: int | None,
    covered_below: int | None = None,
    known_uids: Collection[int] = (),
    batch_size: int = 200,
) -> BackfillBatch:
    """Choose the next backfill batch: the highest UIDs below the cursor, newest first.

    ``candidate_uids`` is what ``UID SEARCH SINCE <window start>`` returned. UIDs grow in arrival
    order (RFC 3501 §2.3.1.1), so walking down from the top is "newest first" and a single integer
    (the lowest UID done) is an exact resume point: after a crash the same search yields the same
    remaining UIDs. ``covered_below`` (the UIDNEXT recorded when the backfill began) excludes mail
    that arrived later; live sync owns it. ``known_uids`` (already stored locations) are skipped
    so that re-running never fetches a message twice.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    pending = sorted(
        {
            uid
            for uid in candidate_uids
            if uid > 0
            and (low_uid is None or uid < low_uid)
            and (covered_below is None or uid < covered_below)
            and uid not in known_uids
        },
        reverse=True,
    )
    batch = tuple(pending[:batch_size])
    remaining = len(pending) - len(batch)
    if not batch:
        return BackfillBatch(uids=(), next_low_uid=low_uid, remaining_after=0, done=True)
    # The cursor moves to the lowest UID of the batch: everything at or above it is handled.
    return BackfillBatch(
        uids=batch, next_low_uid=batch[-1], remaining_after=remaining, done=remaining == 0
    )


def backfill_order(folders: Iterable[tuple[int, str | None, str]]) -> list[int]:
    """Order folder ids for backfill: INBOX, then Sent, then the rest by name.

    Each item is ``(folder_id, role, display_name)``.
    """
    return [
        fid
        for fid, _role, _name in sorted(
            folders, key=lambda f: (_ROLE_ORDER.get((f[1] or "").lower(), 2), f[2].lower(), f[0])
        )
    ]


# --- what to do after SELECT ------------------------------------------------------------------


def plan_folder_sync(
    checkpoint: FolderCheckpoint,
    selected: SelectState,
    *,
    condstore: bool,
    qresync: bool = False,
) -> FolderPlan:
    """Decide how to bring a folder up to date after SELECT.

    UIDVALIDITY first (RFC 3501 §2.3.1.1: a different value voids every stored UID); then an
    unfinished backfill; then incremental sync, through CONDSTORE (RFC 7162 §3.1) when the server
    has it and reports a HIGHESTMODSEQ (a mailbox may answer NOMODSEQ), else the fallback.
    """
    if checkpoint.uidvalidity is None or checkpoint.uidvalidity != selected.uidvalidity:
        return FolderPlan(kind="reset", drop_locations=checkpoint.uidvalidity is not None)
    if not checkpoint.backfill_done:
        return FolderPlan(kind="backfill")
    new_from = checkpoint.uidnext or 1
    if condstore and selected.highestmodseq is not None and checkpoint.highestmodseq is not None:
        if (
            selected.highestmodseq == checkpoint.highestmodseq
            and selected.uidnext is not None
            and selected.uidnext == checkpoint.uidnext
        ):
            return FolderPlan(kind="none")
        return FolderPlan(
            kind="condstore",
            new_from_uid=new_from,
            changedsince=checkpoint.highestmodseq,
            use_vanished=qresync,
        )
    # Without MODSEQ an unchanged UIDNEXT says nothing about flags or expunges: always diff.
    return FolderPlan(kind="fallback", new_from_uid=new_from)


# --- what changed -----------------------------------------------------------------------------


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    """Flags for comparison and storage: system flags (``\\Seen``) case-folded as RFC 3501 §2.3.2
    says they are case-insensitive; keywords kept as sent; ``\\Recent`` dropped."""
    out: set[str] = set()
    for flag in flags:
        if flag.startswith("\\"):
            low = flag.lower()
            if low in _IGNORED_FLAGS:
                continue
            out.add("\\" + low[1:2].upper() + low[2:])
        else:
            out.add(flag)
    return frozenset(out)


def changes_from_condstore(
    changed: Mapping[int, Iterable[str]],
    *,
    stored_flags: Mapping[int, frozenset[str]],
    covered_below: int,
    vanished: Iterable[int] = (),
    remote_uids: Collection[int] | None = None,
    new_highestmodseq: int | None = None,
    new_uidnext: int | None = None,
) -> FolderChanges:
    """Changes from ``UID FETCH 1:* (FLAGS) (CHANGEDSINCE m [VANISHED])`` (RFC 7162 §3.1.4, §3.2.6).

    ``changed`` maps UID to the flags the server reported; a UID at or above ``covered_below``
    (the stored UIDNEXT) is new mail; one below it that the store has is a flag update (only kept
    if the flags really differ); one below it the store lacks was outside the window or expunged
    already and is ignored. Expunges come from ``vanished`` (QRESYNC) or, without QRESYNC, from
    ``remote_uids`` (a ``UID SEARCH ALL`` — CONDSTORE alone does not report expunges).
    """
    new: set[int] = set()
    updates: dict[int, frozenset[str]] = {}
    for uid, flags in changed.items():
        if uid >= covered_below:
            new.add(uid)
        elif uid in stored_flags:
            norm = normalize_flags(flags)
            if norm != stored_flags[uid]:
                updates[uid] = norm
    removed = {uid for uid in vanished if uid in stored_flags}
    if remote_uids is not None:
        remote = set(remote_uids)
        removed |= {uid for uid in stored_flags if uid not in remote}
        new |= {uid for uid in remote if uid >= covered_below}
    for uid in removed:
        updates.pop(uid, None)
    return FolderChanges(
        new_uids=tuple(sorted(new - removed)),
        flag_updates=updates,
        removed_uids=tuple(sorted(removed)),
        highestmodseq=new_highestmodseq,
        uidnext=new_uidnext,
    )


def changes_from_fallback(
    remote_flags: Mapping[int, Iterable[str]],
    *,
    stored_flags: Mapping[int, frozenset[str]],
    covered_below: int,
    new_uidnext: int | None = None,
) -> FolderChanges:
    """Changes without CONDSTORE: ``UID FETCH 1:* (FLAGS)`` re-read and diffed (RFC 3501 §6.4.5).

    ``remote_flags`` is every UID the server has with its flags. Stored UIDs it lacks were
    expunged; UIDs at or above ``covered_below`` are new; the rest are compared flag by flag.
    Old remote UIDs the store lacks are outside the window (or were skipped on purpose) and stay
    untouched: the window, not this diff, decides what is synced.
    """
    new = sorted(uid for uid in remote_flags if uid >= covered_below)
    removed = sorted(uid for uid in stored_flags if uid not in remote_flags)
    updates: dict[int, frozenset[str]] = {}
    for uid, flags in remote_flags.items():
        if uid in stored_flags:
            norm = normalize_flags(flags)
            if norm != stored_flags[uid]:
                updates[uid] = norm
    return FolderChanges(
        new_uids=tuple(new),
        flag_updates=updates,
        removed_uids=tuple(removed),
        uidnext=new_uidnext,
    )


# --- retries ------------------------------------------------------------------------------------


def backoff_delay(
    attempt: int,
    *,
    rng: random.Random,
    base: float = 1.0,
    cap: float = BACKOFF_CAP_SECONDS,
    floor: float = 0.0,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): "full jitter".

    Uniform in ``[floor * c, c]`` with ``c = min(cap, base * 2**(attempt-1))`` so that many
    accounts failing together (a provider outage) do not retry in lock-step; never above ``cap``
    (five minutes). ``floor`` (0 = full jitter) guarantees a minimum share of the ceiling: with
    ``floor=0.5`` the first ``n`` waits add up to at least ``base * (2**n - 1) / 2``, so the
    number of attempts in any span of time is bounded (used for refused logins, where a burst of
    retries would look like password guessing to the provider).
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if not 0.0 <= floor <= 1.0:
        raise ValueError("floor is a fraction of the ceiling, between 0 and 1")
    # Cap the exponent before computing 2**n so a huge attempt count cannot overflow a float.
    ceiling = min(cap, base * (2.0 ** min(attempt - 1, 64)))
    return rng.uniform(floor * ceiling, ceiling)


# --- live: which folders IDLE, what a selection change means ----------------------------------

# Folders that get a connection of their own in IDLE (DESIGN.md "Live": INBOX and Sent).
_IDLE_ROLES = ("inbox",)


def idle_folders(
    folders: Iterable[tuple[int, str | None, bool]],
    *,
    server_idles: bool,
    roles: Collection[str] = _IDLE_ROLES,
) -> frozenset[int]:
    """The folder ids watched with IDLE (RFC 2177); the rest are polled.

    By default INBOX only: a live session IDLEs on it on its one connection between commands
    (:mod:`correspond.sync.live`), and Sent and the others are polled (STATUS first).

    Each item is ``(folder_id, role, syncable)`` where syncable means selected, selectable and
    not removed. A server without IDLE gets none: every folder, INBOX and Sent included, is
    polled. One folder per role at most (roles are unique per account, but a stale list could
    briefly hold two): the lowest id wins, so the choice is stable.
    """
    if not server_idles:
        return frozenset()
    wanted = {r.lower() for r in roles}
    chosen: dict[str, int] = {}
    for fid, role, syncable in folders:
        key = (role or "").lower()
        if syncable and key in wanted and (key not in chosen or fid < chosen[key]):
            chosen[key] = fid
    return frozenset(chosen.values())


@dataclass(frozen=True, slots=True)
class SelectionChange:
    """How the set of synced folders moved: ``added`` need a backfill, ``removed`` lose their
    locations (the folder is no longer mirrored, so its UIDs are not kept up to date)."""

    added: frozenset[int] = frozenset()
    removed: frozenset[int] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed)


def selection_change(before: Collection[int], after: Collection[int]) -> SelectionChange:
    """Compare the synced folder ids before and after (a user's selection, a LIST refresh)."""
    old, new = frozenset(before), frozenset(after)
    return SelectionChange(added=new - old, removed=old - new)


# --- folder list ------------------------------------------------------------------------------


def diff_folder_list(
    known: Sequence[KnownFolder], remote: Sequence[RemoteFolder]
) -> FolderListDiff:
    """Compare the stored folders with a fresh LIST by remote identity.

    A folder keeps its identity under the same raw name. A stored folder whose name vanished is a
    rename when exactly one new name carries the same MAILBOXID (RFC 8474 §4, stable across
    RENAME), or, failing that, the same UIDVALIDITY on both sides and no other candidate (Dovecot
    and most servers keep UIDVALIDITY across RENAME, RFC 3501 §6.3.5); otherwise it was deleted
    and the new name is a created folder.
    """
    remote_by_name = {r.name_raw: r for r in remote}
    unchanged: list[tuple[KnownFolder, RemoteFolder]] = []
    lost: list[KnownFolder] = []
    for k in known:
        r = remote_by_name.pop(k.name_raw, None)
        if r is None:
            lost.append(k)
        else:
            unchanged.append((k, r))
    fresh = list(remote_by_name.values())
    renamed: list[RenamedFolder] = []

    def _unique_match(key: str, value: object) -> RemoteFolder | None:
        if value is None:
            return None
        hits = [r for r in fresh if getattr(r, key) == value]
        others = [k for k in lost if getattr(k, key) == value]
        if len(hits) == 1 and len(others) == 1:
            return hits[0]
        return None

    for key in ("mailbox_id", "uidvalidity"):
        for k in list(lost):
            match = _unique_match(key, getattr(k, key))
            if match is not None:
                renamed.append(RenamedFolder(id=k.id, old_name_raw=k.name_raw, new=match))
                lost.remove(k)
                fresh.remove(match)
    return FolderListDiff(
        created=tuple(fresh),
        renamed=tuple(renamed),
        deleted=tuple(lost),
        unchanged=tuple(unchanged),
    )
