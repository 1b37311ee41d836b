"""The two-way rules as tables (pure: no store, no server): every toggle x every change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import product

import pytest

from correspond.rules.two_way import (
    TOGGLE_DEFAULTS,
    CrmActionPlan,
    FlagChange,
    MailboxOp,
    Place,
    Toggles,
    crm_state_after_remote_change,
    flag_winner,
    mailbox_ops_for_crm_action,
    merge_remote_flags,
)

INBOX = Place(1, "inbox")
ARCHIVE = Place(2, "archive")
TRASH = Place(3, "trash")
JUNK = Place(4, "junk")
PROJECTS = Place(5, None)
SENT = Place(6, "sent")
UNSYNCED = Place(7, None, selected=False)
UNSYNCED_TRASH = Place(8, "trash", selected=False)

ALL_ON = Toggles(True, True, True, True)
ALL_OFF = Toggles(False, False, False, False)


def test_defaults_documented() -> None:
    assert Toggles() == Toggles.of(TOGGLE_DEFAULTS)
    assert TOGGLE_DEFAULTS == {
        "delete_in_crm_on_remote_delete": False,
        "delete_remote_on_crm_delete": False,
        "archive_in_crm_on_remote_archive": True,
        "archive_remote_on_crm_archive": True,
    }
    with pytest.raises(ValueError, match="unknown toggles: nuke"):
        Toggles.of({"nuke": True})


# (state, before, after, state with the relevant toggle on, state with it off)
REMOTE_CASES = [
    # expunged from its only folder
    ("active", [INBOX], [], "deleted", "active"),
    # expunged from every selected folder it lived in
    ("active", [INBOX, PROJECTS], [], "deleted", "active"),
    # moved to Trash (synced or not)
    ("active", [INBOX], [TRASH], "deleted", "active"),
    ("active", [INBOX], [UNSYNCED_TRASH], "deleted", "active"),
    ("archived", [ARCHIVE], [TRASH], "deleted", "archived"),
    # the same message in two folders: gone from one only is no delete, and no archive
    # while it is still in INBOX
    ("active", [INBOX, PROJECTS], [INBOX], "active", "active"),
    ("active", [INBOX, PROJECTS], [PROJECTS], "archived", "active"),
    # out of INBOX into Archive, another folder, or an unselected folder
    ("active", [INBOX], [ARCHIVE], "archived", "active"),
    ("active", [INBOX], [PROJECTS], "archived", "active"),
    ("active", [INBOX], [UNSYNCED], "archived", "active"),
    # into Junk: no archive, no delete
    ("active", [INBOX], [JUNK], "active", "active"),
    # back to INBOX: active again
    ("archived", [ARCHIVE], [INBOX], "active", "archived"),
    ("deleted", [TRASH], [INBOX], "active", "deleted"),
    ("deleted", [TRASH], [TRASH, PROJECTS], "active", "deleted"),
    # back from an unsynced Trash, or from nowhere (it had no location left): active again
    ("deleted", [UNSYNCED_TRASH], [INBOX], "active", "deleted"),
    ("deleted", [], [PROJECTS], "active", "deleted"),
    ("archived", [UNSYNCED], [INBOX], "active", "archived"),
    ("archived", [], [INBOX], "active", "archived"),
    # ... but into another folder, an archived message stays archived
    ("archived", [], [PROJECTS], "archived", "archived"),
    # a CRM delete left in the mailbox (toggle 2 off): moving it there keeps it deleted
    ("deleted", [INBOX], [PROJECTS], "deleted", "deleted"),
    ("deleted", [INBOX], [INBOX, PROJECTS], "deleted", "deleted"),
    # still in Trash only: stays deleted
    ("deleted", [], [TRASH], "deleted", "deleted"),
    # a move between non-INBOX folders means nothing
    ("active", [PROJECTS], [ARCHIVE], "active", "active"),
    ("active", [SENT], [ARCHIVE], "active", "active"),
    # a message in a folder that is not selected: the CRM never saw it there
    ("active", [UNSYNCED], [], "active", "active"),
    ("active", [UNSYNCED], [UNSYNCED_TRASH], "active", "active"),
    # echo of the CRM's own action: already in that state, stays
    ("deleted", [INBOX], [TRASH], "deleted", "deleted"),
    ("archived", [INBOX], [ARCHIVE], "archived", "archived"),
]


@pytest.mark.parametrize(("state", "before", "after", "on", "off"), REMOTE_CASES)
@pytest.mark.parametrize("others", [True, False], ids=["others-on", "others-off"])
def test_remote_change(
    state: str, before: list[Place], after: list[Place], on: str, off: str, others: bool
) -> None:
    # Only the toggle that governs the change matters; the other three are tried both ways.
    deleting = "deleted" in (state, on) or any(p.role == "trash" for p in after + before)
    field = "delete_in_crm_on_remote_delete" if deleting else "archive_in_crm_on_remote_archive"
    base = {name: others for name in TOGGLE_DEFAULTS}
    for value, expected in ((True, on), (False, off)):
        toggles = Toggles.of({**base, field: value})
        verdict = crm_state_after_remote_change(
            state=state,  # type: ignore[arg-type]
            before=before,
            after=after,
            toggles=toggles,
        )
        assert verdict.state == expected, (field, value, verdict.reason)


def test_every_toggle_combination_is_decided() -> None:
    # Every toggle set x every remote change: a state out, never an error.
    for bits, case in product(product((True, False), repeat=4), REMOTE_CASES):
        state, before, after, _on, _off = case
        verdict = crm_state_after_remote_change(
            state=state,  # type: ignore[arg-type]
            before=before,
            after=after,
            toggles=Toggles(*bits),
        )
        assert verdict.state in ("active", "archived", "deleted")


S = "\\Seen"
F = "\\Flagged"


# (action, locations, toggles, state after, ops)
ACTION_CASES = [
    ("read", [INBOX, PROJECTS], ALL_OFF, "active", [("store", 1, S, True), ("store", 5, S, True)]),
    ("unread", [INBOX], ALL_OFF, "active", [("store", 1, S, False)]),
    ("star", [INBOX], ALL_ON, "active", [("store", 1, F, True)]),
    (
        "unstar",
        [INBOX, ARCHIVE],
        ALL_ON,
        "active",
        [("store", 1, F, False), ("store", 2, F, False)],
    ),
    # archive: INBOX -> Archive with toggle 4, nothing without
    ("archive", [INBOX], ALL_ON, "archived", [("move", 1, "archive")]),
    ("archive", [INBOX], ALL_OFF, "archived", []),
    ("archive", [INBOX, ARCHIVE], ALL_ON, "archived", [("expunge", 1)]),
    ("archive", [PROJECTS], ALL_ON, "archived", []),
    # delete: every copy to Trash with toggle 2
    ("delete", [INBOX], ALL_ON, "deleted", [("move", 1, "trash")]),
    ("delete", [INBOX], ALL_OFF, "deleted", []),
    ("delete", [INBOX, PROJECTS], ALL_ON, "deleted", [("move", 1, "trash"), ("expunge", 5)]),
    ("delete", [INBOX, TRASH], ALL_ON, "deleted", [("expunge", 1)]),
    ("delete", [TRASH], ALL_ON, "deleted", []),
    # restore / unarchive bring it back to INBOX under the same toggles
    ("restore", [TRASH], ALL_ON, "active", [("move", 3, "inbox")]),
    ("restore", [TRASH], ALL_OFF, "active", []),
    # a restore of a copy outside Trash (a CRM delete with toggle 2 off) moves nothing
    ("restore", [INBOX], ALL_ON, "active", []),
    ("unarchive", [ARCHIVE], ALL_ON, "active", [("move", 2, "inbox")]),
    ("unarchive", [ARCHIVE, INBOX], ALL_ON, "active", []),
]


def _op(t: tuple[object, ...]) -> MailboxOp:
    kind, folder = t[0], t[1]
    if kind == "store":
        return MailboxOp("store", folder, flag=t[2], value=t[3])  # type: ignore[arg-type]
    if kind == "move":
        return MailboxOp("move", folder, to_role=t[2])  # type: ignore[arg-type]
    return MailboxOp("expunge", folder)  # type: ignore[arg-type]


@pytest.mark.parametrize(("action", "locations", "toggles", "state", "ops"), ACTION_CASES)
def test_crm_action(
    action: str,
    locations: list[Place],
    toggles: Toggles,
    state: str,
    ops: list[tuple[object, ...]],
) -> None:
    plan = mailbox_ops_for_crm_action(
        action,  # type: ignore[arg-type]
        state="active",
        locations=locations,
        toggles=toggles,
    )
    assert plan.state == state
    assert list(plan.ops) == [_op(o) for o in ops]


def test_move_action() -> None:
    plan = mailbox_ops_for_crm_action(
        "move", state="archived", locations=[INBOX, PROJECTS], toggles=ALL_OFF, to_folder_id=9
    )
    assert plan.state == "archived"
    assert plan.ops == (MailboxOp("move", 1, to_folder_id=9), MailboxOp("expunge", 5))
    already = mailbox_ops_for_crm_action(
        "move", state="active", locations=[INBOX, PROJECTS], toggles=ALL_OFF, to_folder_id=5
    )
    assert already.ops == (MailboxOp("expunge", 1),)
    with pytest.raises(ValueError, match="needs the folder"):
        mailbox_ops_for_crm_action("move", state="active", locations=[INBOX], toggles=ALL_OFF)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("crm_at", "seen_at", "winner"),
    [
        (T0 + timedelta(seconds=1), T0, "crm"),
        (T0, T0 + timedelta(seconds=1), "mailbox"),
        (T0, T0, "mailbox"),  # a tie: the CRM acted without knowing the server's value
    ],
)
def test_flag_winner(crm_at: datetime, seen_at: datetime, winner: str) -> None:
    assert flag_winner(crm_at, seen_at) == winner


A = "\\Answered"
LATER = T0 + timedelta(minutes=1)
EARLIER = T0 - timedelta(minutes=1)


# (crm flags, previous remote, remote, pending, expected crm flags, superseded)
FLAG_CASES = [
    # the mailbox marked it read, nothing pending: the CRM follows
    (set(), set(), {S}, [], {S}, set()),
    # unchanged on the server: the CRM keeps its (pending) value
    ({S}, set(), set(), [FlagChange(S, True, EARLIER)], {S}, set()),
    # both changed \Seen (the mailbox unread it; the CRM unread, then read it later): the
    # CRM's later action wins
    ({S}, {S, F}, {F}, [FlagChange(S, False, EARLIER), FlagChange(S, True, LATER)], {S}, set()),
    # both changed \Seen (the CRM read then unread it; the mailbox read it), the mailbox's
    # change seen later: it wins, and the CRM's pending unread is superseded
    (
        {F},
        {F},
        {S, F},
        [FlagChange(S, True, EARLIER - timedelta(seconds=1)), FlagChange(S, False, EARLIER)],
        {S, F},
        {S},
    ),
    # both set the same value: no conflict to record
    ({F}, set(), {F}, [FlagChange(F, True, EARLIER)], {F}, set()),
    # echo: our own STORE already recorded on the location: nothing changes
    ({S}, {S}, {S}, [], {S}, set()),
    # flags the CRM does not sync follow the server
    (set(), set(), {"\\Answered", "$Label1"}, [], {"\\Answered", "$Label1"}, set()),
    # a reply from the CRM went (\Answered waiting in the outbox); the mailbox marked the
    # message read meanwhile: the CRM keeps \Answered and takes \Seen
    ({A}, set(), {S}, [FlagChange(A, True, EARLIER)], {A, S}, set()),
    # \Answered without a pending change follows the server (taken off in a mail client)
    ({A, S}, {A}, set(), [FlagChange(S, True, EARLIER)], {S}, set()),
    # the last pending change of a flag counts
    (
        set(),
        set(),
        {S},
        [FlagChange(S, True, EARLIER), FlagChange(S, False, LATER)],
        set(),
        set(),
    ),
]


@pytest.mark.parametrize(
    ("crm", "previous", "remote", "pending", "expected", "superseded"), FLAG_CASES
)
def test_merge_remote_flags(
    crm: set[str],
    previous: set[str],
    remote: set[str],
    pending: list[FlagChange],
    expected: set[str],
    superseded: set[str],
) -> None:
    merged = merge_remote_flags(
        crm_flags=frozenset(crm),
        previous_remote=frozenset(previous),
        remote=frozenset(remote),
        pending=pending,
        remote_seen_at=T0,
    )
    assert merged.flags == expected
    assert merged.superseded == superseded


def test_answered_sets_the_flag_on_every_location_whatever_the_toggles() -> None:
    for toggles in (ALL_ON, Toggles.of({name: False for name in TOGGLE_DEFAULTS})):
        plan = mailbox_ops_for_crm_action(
            "answered", state="archived", locations=[INBOX, TRASH], toggles=toggles
        )
        assert plan.state == "archived"
        assert plan.ops == tuple(
            MailboxOp("store", p.folder_id, flag="\\Answered", value=True) for p in (INBOX, TRASH)
        )
    assert (
        mailbox_ops_for_crm_action("answered", state="active", locations=[], toggles=ALL_ON).ops
        == ()
    )


def test_restore_puts_it_back_where_it_was() -> None:
    # Back to the folder it left (home), from a synced Trash or, looked up by Message-ID,
    # from a Trash the account does not sync; with no home, to INBOX.
    plan = mailbox_ops_for_crm_action(
        "restore", state="deleted", locations=[TRASH], toggles=ALL_ON, home_folder_id=5
    )
    assert plan.ops == (MailboxOp("move", 3, to_folder_id=5),)
    plan = mailbox_ops_for_crm_action(
        "restore",
        state="deleted",
        locations=[],
        toggles=ALL_ON,
        home_folder_id=5,
        unsynced_trash_id=8,
    )
    assert plan.state == "active" and plan.ops == (MailboxOp("move", 8, to_folder_id=5, find=True),)
    plan = mailbox_ops_for_crm_action(
        "restore", state="deleted", locations=[], toggles=ALL_ON, unsynced_trash_id=8
    )
    assert plan.ops == (MailboxOp("move", 8, to_role="inbox", find=True),)
    # Toggle 2 off, or no Trash known: the CRM copy only.
    for toggles, trash in ((ALL_OFF, 8), (ALL_ON, None)):
        plan = mailbox_ops_for_crm_action(
            "restore",
            state="deleted",
            locations=[],
            toggles=toggles,
            home_folder_id=5,
            unsynced_trash_id=trash,
        )
        assert plan == CrmActionPlan("active")
