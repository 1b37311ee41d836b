"""Table tests for the pure sync decisions (no server, no database)."""

from __future__ import annotations

import random
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correspond.rules.sync_plan import (
    BACKOFF_CAP_SECONDS,
    FolderCheckpoint,
    KnownFolder,
    RemoteFolder,
    SelectState,
    backfill_order,
    backoff_delay,
    changes_from_condstore,
    changes_from_fallback,
    diff_folder_list,
    idle_folders,
    imap_date,
    normalize_flags,
    plan_backfill_batch,
    plan_folder_sync,
    selection_change,
    window_start,
)

# --- window ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "days", "expected"),
    [
        (date(2026, 11, 29), 60, date(2026, 9, 30)),
        (date(2026, 3, 1), 1, date(2026, 2, 28)),
        (date(2024, 3, 1), 1, date(2024, 2, 29)),
        (date(2026, 1, 5), 0, date(2026, 1, 5)),
    ],
)
def test_window_start(today: date, days: int, expected: date) -> None:
    assert window_start(today, days) == expected


def test_window_start_rejects_negative() -> None:
    with pytest.raises(ValueError):
        window_start(date(2026, 1, 1), -1)


@pytest.mark.parametrize(
    ("day", "text"),
    [
        (date(2026, 9, 30), "30-Sep-2026"),
        (date(2026, 1, 5), "5-Jan-2026"),
        (date(999, 12, 31), "31-Dec-0999"),
    ],
)
def test_imap_date(day: date, text: str) -> None:
    assert imap_date(day) == text


# --- backfill batches -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidates", "low", "covered", "known", "size", "uids", "next_low", "remaining", "done"),
    [
        # first batch: newest (highest UID) first
        ([1, 2, 3, 4, 5], None, None, (), 2, (5, 4), 4, 3, False),
        # resume below the cursor
        ([1, 2, 3, 4, 5], 4, None, (), 2, (3, 2), 2, 1, False),
        ([1, 2, 3, 4, 5], 2, None, (), 2, (1,), 1, 0, True),
        # nothing left: done, cursor unchanged
        ([1, 2, 3], 1, None, (), 2, (), 1, 0, True),
        ([], None, None, (), 10, (), None, 0, True),
        # mail that arrived after the backfill began belongs to live sync
        ([3, 7, 9, 12], None, 10, (), 10, (9, 7, 3), 3, 0, True),
        # already stored UIDs are skipped (re-run creates nothing twice)
        ([3, 7, 9], None, None, {9, 3}, 10, (7,), 7, 0, True),
        # gaps and duplicates in the search result
        ([10, 10, 2, 50], None, None, (), 2, (50, 10), 10, 1, False),
        # exactly one full batch left
        ([1, 2], None, None, (), 2, (2, 1), 1, 0, True),
    ],
)
def test_plan_backfill_batch(
    candidates: list[int],
    low: int | None,
    covered: int | None,
    known: set[int] | tuple[()],
    size: int,
    uids: tuple[int, ...],
    next_low: int | None,
    remaining: int,
    done: bool,
) -> None:
    batch = plan_backfill_batch(
        candidates, low_uid=low, covered_below=covered, known_uids=known, batch_size=size
    )
    assert batch.uids == uids
    assert batch.next_low_uid == next_low
    assert batch.remaining_after == remaining
    assert batch.done is done


def test_plan_backfill_batch_rejects_zero_size() -> None:
    with pytest.raises(ValueError):
        plan_backfill_batch([1], low_uid=None, batch_size=0)


@given(
    uids=st.sets(st.integers(min_value=1, max_value=10_000), max_size=200),
    size=st.integers(min_value=1, max_value=50),
)
def test_backfill_walk_visits_every_uid_once(uids: set[int], size: int) -> None:
    """Walking batch after batch (resuming from each cursor) covers the set exactly once."""
    seen: list[int] = []
    low: int | None = None
    for _ in range(len(uids) + 2):
        batch = plan_backfill_batch(uids, low_uid=low, batch_size=size)
        seen.extend(batch.uids)
        low = batch.next_low_uid
        if batch.done:
            break
    assert sorted(seen, reverse=True) == seen
    assert set(seen) == uids
    assert len(seen) == len(uids)


def test_backfill_order_inbox_and_sent_first() -> None:
    folders = [
        (5, None, "Archive/2020"),
        (3, "sent", "Sent Items"),
        (9, "trash", "Trash"),
        (1, "inbox", "INBOX"),
        (2, None, "alpha"),
    ]
    assert backfill_order(folders) == [1, 3, 2, 5, 9]


# --- plan after SELECT ------------------------------------------------------------------------

_DONE = FolderCheckpoint(
    uidvalidity=7, uidnext=100, highestmodseq=500, backfill_done=True, backfill_low_uid=1
)


@pytest.mark.parametrize(
    ("checkpoint", "selected", "condstore", "qresync", "kind", "extra"),
    [
        (
            FolderCheckpoint(),
            SelectState(7, 10, 9),
            True,
            False,
            "reset",
            {"drop_locations": False},
        ),
        (_DONE, SelectState(8, 100, 50, 500), True, True, "reset", {"drop_locations": True}),
        (
            FolderCheckpoint(uidvalidity=7, uidnext=100, backfill_low_uid=40),
            SelectState(7, 120, 60, 9),
            True,
            False,
            "backfill",
            {},
        ),
        (_DONE, SelectState(7, 100, 50, 500), True, False, "none", {}),
        (
            _DONE,
            SelectState(7, 100, 50, 501),
            True,
            True,
            "condstore",
            {"changedsince": 500, "new_from_uid": 100, "use_vanished": True},
        ),
        (
            _DONE,
            SelectState(7, 104, 53, 520),
            True,
            False,
            "condstore",
            {"changedsince": 500, "use_vanished": False},
        ),
        # no CONDSTORE: always the full diff, even if UIDNEXT did not move
        (_DONE, SelectState(7, 100, 50, None), False, False, "fallback", {"new_from_uid": 100}),
        # server has CONDSTORE but this mailbox says NOMODSEQ
        (_DONE, SelectState(7, 100, 50, None), True, False, "fallback", {}),
        # backfilled without MODSEQ, server gained CONDSTORE: fallback once, then condstore
        (
            FolderCheckpoint(uidvalidity=7, uidnext=100, backfill_done=True),
            SelectState(7, 100, 50, 900),
            True,
            False,
            "fallback",
            {},
        ),
    ],
)
def test_plan_folder_sync(
    checkpoint: FolderCheckpoint,
    selected: SelectState,
    condstore: bool,
    qresync: bool,
    kind: str,
    extra: dict[str, object],
) -> None:
    plan = plan_folder_sync(checkpoint, selected, condstore=condstore, qresync=qresync)
    assert plan.kind == kind
    for key, value in extra.items():
        assert getattr(plan, key) == value


# --- change detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["\\SEEN", "\\flagged"], {"\\Seen", "\\Flagged"}),
        (["\\Recent", "\\Seen"], {"\\Seen"}),
        (["$Label1", "NonJunk"], {"$Label1", "NonJunk"}),
        ([], set()),
    ],
)
def test_normalize_flags(flags: list[str], expected: set[str]) -> None:
    assert normalize_flags(flags) == frozenset(expected)


def test_condstore_changes_split_new_updates_and_vanished() -> None:
    stored = {
        1: frozenset({"\\Seen"}),
        2: frozenset(),
        3: frozenset({"\\Flagged"}),
        4: frozenset(),
    }
    changes = changes_from_condstore(
        {2: ["\\Seen"], 3: ["\\FLAGGED"], 11: [], 12: ["\\Seen"], 5: ["\\Seen"]},
        stored_flags=stored,
        covered_below=10,
        vanished=[4, 99],
        new_highestmodseq=777,
        new_uidnext=13,
    )
    assert changes.new_uids == (11, 12)
    # 3 reported with the same flags (case differs only): no update; 5 is unknown: ignored
    assert dict(changes.flag_updates) == {2: frozenset({"\\Seen"})}
    assert changes.removed_uids == (4,)
    assert changes.highestmodseq == 777
    assert changes.uidnext == 13
    assert not changes.empty


def test_condstore_without_qresync_uses_uid_set_for_expunges() -> None:
    stored = {1: frozenset(), 2: frozenset(), 3: frozenset()}
    changes = changes_from_condstore(
        {}, stored_flags=stored, covered_below=4, remote_uids=[1, 3, 4, 5]
    )
    assert changes.removed_uids == (2,)
    assert changes.new_uids == (4, 5)
    assert dict(changes.flag_updates) == {}


def test_condstore_flag_change_on_vanished_uid_is_dropped() -> None:
    changes = changes_from_condstore(
        {2: ["\\Seen"]}, stored_flags={2: frozenset()}, covered_below=5, vanished=[2]
    )
    assert changes.removed_uids == (2,)
    assert dict(changes.flag_updates) == {}


@pytest.mark.parametrize(
    ("remote", "stored", "covered", "new", "updates", "removed"),
    [
        ({}, {}, 1, (), {}, ()),
        ({1: [], 2: ["\\Seen"]}, {1: frozenset(), 2: frozenset()}, 3, (), {2: {"\\Seen"}}, ()),
        ({1: [], 5: [], 6: []}, {1: frozenset(), 2: frozenset()}, 5, (5, 6), {}, (2,)),
        # an old remote UID the store lacks (outside the window) is left alone
        ({1: [], 2: []}, {2: frozenset()}, 3, (), {}, ()),
        # everything expunged
        ({}, {1: frozenset(), 2: frozenset({"\\Seen"})}, 3, (), {}, (1, 2)),
    ],
)
def test_fallback_changes(
    remote: dict[int, list[str]],
    stored: dict[int, frozenset[str]],
    covered: int,
    new: tuple[int, ...],
    updates: dict[int, set[str]],
    removed: tuple[int, ...],
) -> None:
    changes = changes_from_fallback(remote, stored_flags=stored, covered_below=covered)
    assert changes.new_uids == new
    assert {k: set(v) for k, v in changes.flag_updates.items()} == updates
    assert changes.removed_uids == removed
    assert changes.empty is (not (new or updates or removed))


# --- backoff --------------------------------------------------------------------------------


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt in range(1, 200):
        ceiling = min(BACKOFF_CAP_SECONDS, 2.0 ** (attempt - 1))
        for _ in range(5):
            delay = backoff_delay(attempt, rng=rng)
            assert 0.0 <= delay <= ceiling
    # jitter: the same attempt gives different waits
    waits = {backoff_delay(12, rng=rng) for _ in range(20)}
    assert len(waits) > 10
    assert max(backoff_delay(10_000, rng=rng) for _ in range(100)) <= BACKOFF_CAP_SECONDS


def test_backoff_is_reproducible_with_a_seed() -> None:
    a = [backoff_delay(n, rng=random.Random(42)) for n in range(1, 10)]
    b = [backoff_delay(n, rng=random.Random(42)) for n in range(1, 10)]
    assert a == b


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, rng=random.Random(0))


# --- folder list diff ---------------------------------------------------------------------------


def test_folder_diff_same_names_unchanged() -> None:
    known = [KnownFolder(1, b"INBOX"), KnownFolder(2, b"Sent")]
    diff = diff_folder_list(known, [RemoteFolder(b"Sent"), RemoteFolder(b"INBOX")])
    assert [(k.id, r.name_raw) for k, r in diff.unchanged] == [(1, b"INBOX"), (2, b"Sent")]
    assert diff.created == diff.renamed == diff.deleted == ()


def test_folder_diff_rename_by_mailbox_id() -> None:
    known = [KnownFolder(1, b"INBOX", "m1"), KnownFolder(2, b"Projects", "m2", 55)]
    remote = [RemoteFolder(b"INBOX", "m1"), RemoteFolder(b"Clients", "m2", 99)]
    diff = diff_folder_list(known, remote)
    assert [(r.id, r.old_name_raw, r.new.name_raw) for r in diff.renamed] == [
        (2, b"Projects", b"Clients")
    ]
    assert diff.created == ()
    assert diff.deleted == ()


def test_folder_diff_rename_by_uidvalidity_when_unique() -> None:
    known = [KnownFolder(2, b"Old", None, 1234)]
    diff = diff_folder_list(known, [RemoteFolder(b"New", None, 1234), RemoteFolder(b"X", None, 1)])
    assert [(r.id, r.new.name_raw) for r in diff.renamed] == [(2, b"New")]
    assert [r.name_raw for r in diff.created] == [b"X"]


def test_folder_diff_ambiguous_uidvalidity_is_delete_and_create() -> None:
    known = [KnownFolder(2, b"Old", None, 1234)]
    remote = [RemoteFolder(b"A", None, 1234), RemoteFolder(b"B", None, 1234)]
    diff = diff_folder_list(known, remote)
    assert diff.renamed == ()
    assert [k.id for k in diff.deleted] == [2]
    assert sorted(r.name_raw for r in diff.created) == [b"A", b"B"]


def test_folder_diff_created_and_deleted() -> None:
    known = [KnownFolder(1, b"INBOX"), KnownFolder(3, b"Gone")]
    diff = diff_folder_list(known, [RemoteFolder(b"INBOX"), RemoteFolder(b"&AOk-t&AOk-")])
    assert [k.id for k in diff.deleted] == [3]
    assert [r.name_raw for r in diff.created] == [b"&AOk-t&AOk-"]
    assert diff.renamed == ()


# --- backoff with a floor (refused logins) --------------------------------------------------


@given(st.integers(1, 40), st.floats(0.01, 5.0), st.floats(0.0, 1.0), st.integers(0, 2**32))
def test_backoff_floor_bounds_every_wait(
    attempt: int, base: float, floor: float, seed: int
) -> None:
    ceiling = min(BACKOFF_CAP_SECONDS, base * 2 ** (attempt - 1))
    delay = backoff_delay(attempt, rng=random.Random(seed), base=base, floor=floor)
    assert floor * ceiling <= delay <= ceiling


def test_backoff_with_floor_bounds_attempts_in_a_span() -> None:
    # With floor=0.5 the first n waits sum to at least base * (2**n - 1) / 2: in 60 s with a
    # 1 s base at most 7 attempts fit, whatever the random draws.
    for seed in range(200):
        rng, elapsed, attempts = random.Random(seed), 0.0, 1
        while True:
            elapsed += backoff_delay(attempts, rng=rng, base=1.0, floor=0.5)
            if elapsed > 60:
                break
            attempts += 1
        assert attempts <= 7


@pytest.mark.parametrize("floor", [-0.1, 1.5])
def test_backoff_rejects_a_floor_outside_zero_one(floor: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(1, rng=random.Random(0), floor=floor)


# --- live: IDLE folders and selection changes -------------------------------------------------


def test_idle_folder_is_inbox_when_synced() -> None:
    # One connection per live account: it IDLEs on INBOX; Sent is polled with the others.
    folders = [(1, "inbox", True), (2, "sent", True), (3, "drafts", True), (4, None, True)]
    assert idle_folders(folders, server_idles=True) == {1}


def test_idle_folders_skip_unsynced_folders() -> None:
    # INBOX deselected by the user: it is neither watched nor polled.
    assert idle_folders([(1, "inbox", False), (2, "sent", True)], server_idles=True) == set()


def test_no_idle_server_polls_everything() -> None:
    assert idle_folders([(1, "inbox", True), (2, "sent", True)], server_idles=False) == set()


def test_idle_folders_one_per_role_lowest_id_wins() -> None:
    folders = [(9, "inbox", True), (5, "INBOX", True), (2, "sent", True)]
    assert idle_folders(folders, server_idles=True) == {5}
    folders = [(9, "sent", True), (5, "SENT", True), (1, "Inbox", True)]
    assert idle_folders(folders, server_idles=True, roles=("inbox", "sent")) == {1, 5}


def test_idle_folders_custom_roles() -> None:
    folders = [(1, "inbox", True), (2, "sent", True), (3, "all", True)]
    assert idle_folders(folders, server_idles=True, roles=("all",)) == {3}


@pytest.mark.parametrize(
    ("before", "after", "added", "removed"),
    [
        ({1, 2}, {1, 2}, set(), set()),
        ({1}, {1, 3}, {3}, set()),
        ({1, 2}, {1}, set(), {2}),
        ({1, 2}, {3}, {3}, {1, 2}),
        (set(), {1}, {1}, set()),
    ],
)
def test_selection_change(
    before: set[int], after: set[int], added: set[int], removed: set[int]
) -> None:
    change = selection_change(before, after)
    assert (set(change.added), set(change.removed)) == (added, removed)
    assert change.empty == (not added and not removed)
