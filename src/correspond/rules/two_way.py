"""Two-way sync, the pure part: the four per-account toggles, what a change seen in the mailbox
means for the CRM's copy of a message, what a CRM action means for the mailbox, and the flag
conflict rule. No IO: the engine reads the state, asks these functions, and does what they say.

The toggles (columns of ``accounts``; defaults in :data:`TOGGLE_DEFAULTS`):

- ``delete_in_crm_on_remote_delete`` (off): a message expunged from every selected folder it
  lived in, or moved to Trash, becomes ``deleted`` in the CRM.
- ``delete_remote_on_crm_delete`` (off): a CRM delete moves every location to Trash.
- ``archive_in_crm_on_remote_archive`` (on): a message that leaves INBOX for the Archive folder
  or any other folder but Trash and Junk becomes ``archived``.
- ``archive_remote_on_crm_archive`` (on): a CRM archive moves the INBOX copy to Archive.

Deleting is off by default both ways: a delete on one side never destroys mail on the other
unless the person asked for it. Archiving is on: it loses nothing, and it is what keeps a CRM
inbox and a mailbox inbox alike. With a toggle off each side keeps what the user did there.

Flags (``\\Seen``, ``\\Flagged``) always flow both ways, whatever the toggles. When both sides
changed the same flag since the last sync, the later change wins (:func:`flag_winner`): the time
the CRM recorded its action against the time the engine saw the remote change (the moment it
read the server's flags). A tie goes to the mailbox: the CRM's action was then recorded while
the server already held the other value, so it was made without knowing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

__all__ = [
    "CRM_ACTIONS",
    "SYNCED_FLAGS",
    "SYSTEM_ACTIONS",
    "TOGGLE_DEFAULTS",
    "TOGGLE_HELP",
    "CrmAction",
    "CrmActionPlan",
    "FlagChange",
    "FlagMerge",
    "MailboxOp",
    "MessageState",
    "Place",
    "RemoteVerdict",
    "Toggles",
    "crm_state_after_remote_change",
    "flag_winner",
    "mailbox_ops_for_crm_action",
    "merge_remote_flags",
]

#: The flags the CRM and the mailbox keep alike (IMAP system flags, RFC 3501 §2.3.2).
SYNCED_FLAGS: tuple[str, ...] = ("\\Seen", "\\Flagged")

#: Each toggle's default (what a new account gets).
TOGGLE_DEFAULTS: Mapping[str, bool] = {
    "delete_in_crm_on_remote_delete": False,
    "delete_remote_on_crm_delete": False,
    "archive_in_crm_on_remote_archive": True,
    "archive_remote_on_crm_archive": True,
}

#: One line per toggle, for the CLI's help and the API's schema.
TOGGLE_HELP: Mapping[str, str] = {
    "delete_in_crm_on_remote_delete": (
        "Delete in the CRM when deleted in the mailbox (expunged everywhere, or moved to Trash)"
    ),
    "delete_remote_on_crm_delete": "Delete in the mailbox (move to Trash) when deleted in the CRM",
    "archive_in_crm_on_remote_archive": (
        "Archive in the CRM when archived in the mailbox (left INBOX for Archive or another "
        "folder but Trash and Junk)"
    ),
    "archive_remote_on_crm_archive": (
        "Archive in the mailbox (INBOX to Archive) when archived in the CRM"
    ),
}

CrmAction = Literal[
    "read",
    "unread",
    "star",
    "unstar",
    "archive",
    "unarchive",
    "delete",
    "restore",
    "move",
    "answered",
]
CRM_ACTIONS: tuple[str, ...] = (
    "read",
    "unread",
    "star",
    "unstar",
    "archive",
    "unarchive",
    "delete",
    "restore",
    "move",
)
#: Actions the CRM takes on its own, never asked for by a user: ``answered`` (a reply sent from
#: the CRM went: the message it answers gets \\Answered, issue 9).
SYSTEM_ACTIONS: tuple[str, ...] = ("answered",)
MessageState = Literal["active", "archived", "deleted"]

#: Folder roles a message does not count as "archived" into.
_NOT_ARCHIVE = frozenset({"inbox", "trash", "junk"})


@dataclass(frozen=True, slots=True)
class Toggles:
    """The four toggles of one account."""

    delete_in_crm_on_remote_delete: bool = TOGGLE_DEFAULTS["delete_in_crm_on_remote_delete"]
    delete_remote_on_crm_delete: bool = TOGGLE_DEFAULTS["delete_remote_on_crm_delete"]
    archive_in_crm_on_remote_archive: bool = TOGGLE_DEFAULTS["archive_in_crm_on_remote_archive"]
    archive_remote_on_crm_archive: bool = TOGGLE_DEFAULTS["archive_remote_on_crm_archive"]

    @classmethod
    def of(cls, values: Mapping[str, bool]) -> Toggles:
        """From a name -> value mapping (an account's ``toggles``); unknown names refused."""
        unknown = sorted(set(values) - set(TOGGLE_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown toggles: {', '.join(unknown)}")
        return cls(**{name: bool(value) for name, value in values.items()})


@dataclass(frozen=True, slots=True)
class Place:
    """A folder a message sits in: its id, its role (inbox, trash, ...; None for a plain
    folder) and whether the account syncs it."""

    folder_id: int
    role: str | None = None
    selected: bool = True


@dataclass(frozen=True, slots=True)
class RemoteVerdict:
    """The CRM state a remote change leads to, and why (``reason`` is for logs and tests)."""

    state: MessageState
    reason: str


def _in_role(places: Sequence[Place], role: str) -> bool:
    return any(p.role == role for p in places)


def crm_state_after_remote_change(
    *,
    state: MessageState,
    before: Sequence[Place],
    after: Sequence[Place],
    toggles: Toggles,
) -> RemoteVerdict:
    """What the CRM state of a message becomes after a change seen in the mailbox.

    ``before`` and ``after`` are where the message sat before and after the change: the
    selected folders it is in, plus, when its last selected location went, the unselected
    folder it was found in (``selected=False``; the engine looks for it by Message-ID). A
    message in no folder at all after the change was expunged.

    - Only synced folders count as "where it lived": a change in a folder that is not
      selected changes nothing (the CRM never saw it there).
    - Expunged from every folder, or now only in Trash: ``deleted`` (toggle 1).
    - Out of INBOX and now in Archive or another folder but Trash and Junk: ``archived``
      (toggle 3). Moved to Junk: nothing (the user says spam, not done).
    - Back in INBOX after being archived (toggle 3), or out of Trash (or back from nowhere
      the CRM syncs) into a synced folder after being deleted (toggle 1): ``active`` again.
      A deleted message that never left its synced folders (a CRM delete with toggle 2 off)
      stays deleted whatever it does there.
    Everything else, and everything with its toggle off, keeps the state.
    """
    lived = [p for p in before if p.selected]
    now_in = [p for p in after if p.selected]
    if state == "deleted":
        # Back in a synced folder outside Trash, from Trash or from nowhere the CRM synced
        # (an unsynced Trash, or gone): the user took it back. In a synced folder outside
        # Trash all along (a CRM delete with toggle 2 off), it stays deleted: the CRM's call.
        was_out = not any(p.role != "trash" for p in lived)
        is_back = any(p.role != "trash" for p in now_in)
        if toggles.delete_in_crm_on_remote_delete and was_out and is_back:
            return RemoteVerdict("active", "taken out of Trash")
        return RemoteVerdict(state, "deleted stays deleted")
    if not lived:
        # Turning up in a synced folder from nowhere the CRM synced: only INBOX means
        # something (an archived message moved back to INBOX from an unsynced folder).
        if (
            state == "archived"
            and _in_role(now_in, "inbox")
            and toggles.archive_in_crm_on_remote_archive
        ):
            return RemoteVerdict("active", "moved back to INBOX")
        return RemoteVerdict(state, "not in a synced folder before: the CRM never saw it there")
    if not after:
        if toggles.delete_in_crm_on_remote_delete:
            return RemoteVerdict("deleted", "expunged from every folder")
        return RemoteVerdict(state, "expunged, delete toggle off")
    if all(p.role == "trash" for p in after):
        if toggles.delete_in_crm_on_remote_delete:
            return RemoteVerdict("deleted", "moved to Trash")
        return RemoteVerdict(state, "moved to Trash, delete toggle off")
    was_in_inbox = _in_role(lived, "inbox")
    is_in_inbox = _in_role(after, "inbox")
    if state == "archived":
        if is_in_inbox and not was_in_inbox and toggles.archive_in_crm_on_remote_archive:
            return RemoteVerdict("active", "moved back to INBOX")
        return RemoteVerdict(state, "archived stays archived")
    if was_in_inbox and not is_in_inbox:
        if _in_role(after, "junk") and not any(p.role not in ("junk", "trash") for p in after):
            return RemoteVerdict(state, "moved to Junk: not an archive")
        if any(p.role not in _NOT_ARCHIVE for p in after):
            if toggles.archive_in_crm_on_remote_archive:
                return RemoteVerdict("archived", "left INBOX for another folder")
            return RemoteVerdict(state, "left INBOX, archive toggle off")
    return RemoteVerdict(state, "no change of meaning")


@dataclass(frozen=True, slots=True)
class MailboxOp:
    """One change to make in the mailbox.

    - ``store``: add (``value=True``) or remove ``flag`` on the message in ``folder_id``;
    - ``move``: move it from ``folder_id`` to the folder with role ``to_role`` (or to
      ``to_folder_id``);
    - ``expunge``: remove the copy in ``folder_id`` (\\Deleted + UID EXPUNGE of that UID only).

    ``find``: the copy in ``folder_id`` is not stored (a folder the account does not sync, such
    as Trash by default): it is looked up there by Message-ID.
    """

    kind: Literal["store", "move", "expunge"]
    folder_id: int
    flag: str | None = None
    value: bool = True
    to_role: str | None = None
    to_folder_id: int | None = None
    find: bool = False


@dataclass(frozen=True, slots=True)
class CrmActionPlan:
    """A CRM action's effect: the CRM's new state and flags, and what to do in the mailbox."""

    state: MessageState
    ops: tuple[MailboxOp, ...] = field(default_factory=tuple)


_FLAG_ACTIONS: Mapping[str, tuple[str, bool]] = {
    "read": ("\\Seen", True),
    "unread": ("\\Seen", False),
    "star": ("\\Flagged", True),
    "unstar": ("\\Flagged", False),
    "answered": ("\\Answered", True),
}


def mailbox_ops_for_crm_action(
    action: CrmAction,
    *,
    state: MessageState,
    locations: Sequence[Place],
    toggles: Toggles,
    to_folder_id: int | None = None,
    home_folder_id: int | None = None,
    unsynced_trash_id: int | None = None,
) -> CrmActionPlan:
    """What a CRM action on a message means for the CRM state and for the mailbox.

    ``locations`` are the selected folders the message sits in (unselected folders are never
    touched: the CRM does not mirror them).

    - read/unread/star/unstar, answered: the flag on every location, whatever the toggles.
    - archive: ``archived``; with toggle 4 the INBOX copy moves to Archive (or is only
      expunged from INBOX when a copy is already in Archive, so Archive does not get two).
    - delete: ``deleted``; with toggle 2 every copy outside Trash moves to Trash (one copy is
      enough: the others are expunged once one is in Trash).
    - restore / unarchive: ``active``; with the matching toggle the copy comes back to INBOX
      (from Trash, or from Archive). A restore puts it back where it was (``home_folder_id``:
      the synced folder it left, when known) and, when Trash is not synced
      (``unsynced_trash_id``) and the message is in no synced folder, looks for it there.
    - move: the copies outside the target move to ``to_folder_id`` (the first one moves, the
      others are expunged: a move leaves one copy), whatever the toggles (a move is explicit).
    """
    if action in _FLAG_ACTIONS:
        flag, value = _FLAG_ACTIONS[action]
        ops = tuple(MailboxOp("store", p.folder_id, flag=flag, value=value) for p in locations)
        return CrmActionPlan(state, ops)
    if action == "archive":
        inbox = [p for p in locations if p.role == "inbox"]
        if not toggles.archive_remote_on_crm_archive or not inbox:
            return CrmActionPlan("archived")
        if _in_role(locations, "archive"):
            return CrmActionPlan(
                "archived", tuple(MailboxOp("expunge", p.folder_id) for p in inbox)
            )
        first, *rest = inbox
        steps = [MailboxOp("move", first.folder_id, to_role="archive")]
        steps += [MailboxOp("expunge", p.folder_id) for p in rest]
        return CrmActionPlan("archived", tuple(steps))
    if action == "delete":
        outside = [p for p in locations if p.role != "trash"]
        if not toggles.delete_remote_on_crm_delete or not outside:
            return CrmActionPlan("deleted")
        if _in_role(locations, "trash"):
            return CrmActionPlan(
                "deleted", tuple(MailboxOp("expunge", p.folder_id) for p in outside)
            )
        first, *rest = outside
        steps = [MailboxOp("move", first.folder_id, to_role="trash")]
        steps += [MailboxOp("expunge", p.folder_id) for p in rest]
        return CrmActionPlan("deleted", tuple(steps))
    if action in ("restore", "unarchive"):
        source_role = "trash" if action == "restore" else "archive"
        allowed = (
            toggles.delete_remote_on_crm_delete
            if action == "restore"
            else toggles.archive_remote_on_crm_archive
        )
        sources = [p for p in locations if p.role == source_role]
        if action == "restore":
            if not allowed or any(p.role != "trash" for p in locations):
                return CrmActionPlan("active")  # toggle off, or still (or again) outside Trash
            if sources:
                source, find = sources[0].folder_id, False
            elif unsynced_trash_id is not None:
                source, find = unsynced_trash_id, True
            else:
                return CrmActionPlan("active")
            if home_folder_id is not None:
                back = MailboxOp("move", source, to_folder_id=home_folder_id, find=find)
            else:
                back = MailboxOp("move", source, to_role="inbox", find=find)
            return CrmActionPlan("active", (back,))
        if not allowed or not sources or _in_role(locations, "inbox"):
            return CrmActionPlan("active")
        return CrmActionPlan("active", (MailboxOp("move", sources[0].folder_id, to_role="inbox"),))
    if action == "move":
        if to_folder_id is None:
            raise ValueError("a move needs the folder to move to")
        outside = [p for p in locations if p.folder_id != to_folder_id]
        if not outside or len(outside) < len(locations):
            # Already there: the other copies go, so the message is where it was asked to be.
            return CrmActionPlan(state, tuple(MailboxOp("expunge", p.folder_id) for p in outside))
        first, *rest = outside
        steps = [MailboxOp("move", first.folder_id, to_folder_id=to_folder_id)]
        steps += [MailboxOp("expunge", p.folder_id) for p in rest]
        return CrmActionPlan(state, tuple(steps))
    raise ValueError(f"unknown action: {action}")


def flag_winner(crm_recorded_at: datetime, remote_seen_at: datetime) -> Literal["crm", "mailbox"]:
    """Which side wins when both changed the same flag since the last sync: the later change.
    ``crm_recorded_at`` is when the CRM stored the user's action (its outbox row),
    ``remote_seen_at`` when the engine read the server's flags. A tie goes to the mailbox."""
    return "crm" if crm_recorded_at > remote_seen_at else "mailbox"


@dataclass(frozen=True, slots=True)
class FlagChange:
    """A CRM flag change not yet applied to the mailbox (a pending outbox row)."""

    flag: str
    value: bool
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class FlagMerge:
    """The CRM flags after a remote flag change, and which pending CRM changes lost (their
    outbox rows are superseded: the mailbox's later change stands)."""

    flags: frozenset[str]
    superseded: frozenset[str]


def merge_remote_flags(
    *,
    crm_flags: frozenset[str],
    previous_remote: frozenset[str],
    remote: frozenset[str],
    pending: Sequence[FlagChange],
    remote_seen_at: datetime,
) -> FlagMerge:
    """The CRM's flags after the server's flags went from ``previous_remote`` (the stored
    location's) to ``remote``, given the CRM changes still waiting in the outbox.

    A flag the server did not change keeps the CRM's value (an echo of our own STORE changes
    nothing: the engine records the location's new flags when it applies a row). A flag the
    server changed takes the server's value unless a pending CRM change of the same flag is
    later (:func:`flag_winner`); a pending change that loses is superseded. A flag the CRM
    only sets now and then (\\Answered, when a reply from the CRM went) counts as synced while
    its change waits in the outbox; other flags (keywords, \\Answered otherwise) follow the
    server.
    """
    latest: dict[str, FlagChange] = {}
    for pending_change in pending:
        known = latest.get(pending_change.flag)
        if known is None or pending_change.recorded_at >= known.recorded_at:
            latest[pending_change.flag] = pending_change
    synced = (*SYNCED_FLAGS, *sorted(set(latest) - set(SYNCED_FLAGS)))
    result = {f for f in remote if f not in synced}
    superseded: set[str] = set()
    for flag in synced:
        changed_remotely = (flag in remote) != (flag in previous_remote)
        crm_value = flag in crm_flags
        if not changed_remotely:
            value = crm_value
        else:
            change = latest.get(flag)
            if change is not None and flag_winner(change.recorded_at, remote_seen_at) == "crm":
                value = change.value
            else:
                value = flag in remote
                if change is not None and change.value != value:
                    superseded.add(flag)
        if value:
            result.add(flag)
    return FlagMerge(frozenset(result), frozenset(superseded))
