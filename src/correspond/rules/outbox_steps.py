"""How the outbox carries a move or a removal out on a given server, and what to do next after
an attempt that may or may not have taken effect (a cut connection, a killed process). Pure;
``sync.outbox`` reads the mailbox and asks these.

Moving one copy of a message (archive, delete to Trash, move):

- with MOVE (RFC 6851): ``UID MOVE``. Atomic on the server: after an uncertain attempt the UID
  is either still in the source (not moved: move it) or gone (moved: done).
- without MOVE, with UIDPLUS (RFC 4315): ``UID COPY``, ``UID STORE +FLAGS.SILENT (\\Deleted)``,
  ``UID EXPUNGE`` of that UID only. Three commands: a COPY that happened must not be repeated,
  so before the COPY the destination's UIDNEXT is recorded on the outbox row; an attempt that
  finds that record looks for the copy in the destination (a message at or above that UIDNEXT
  with the source's size and INTERNALDATE, which COPY keeps: RFC 3501 §6.4.7) and copies only
  when there is none.
- without MOVE and without UIDPLUS: the same COPY and ``\\Deleted``, but no EXPUNGE. A bare
  EXPUNGE (RFC 3501 §6.4.3) removes every message flagged ``\\Deleted`` in the folder,
  including ones the user flagged in another client and means to keep until they expunge;
  checking first that there are none leaves a window in which the user can flag one. So the
  source copy is left flagged ``\\Deleted`` (most clients hide it or strike it through; it goes
  at the user's next expunge) and the row says so (``note``). Never a bare EXPUNGE.

Removing one copy where it is (a delete with no Trash folder) follows the same last two rules:
``UID EXPUNGE`` with UIDPLUS, else left flagged ``\\Deleted`` with a note.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

__all__ = [
    "LEFT_DELETED_NOTE",
    "MoveMethod",
    "MoveStep",
    "RemovalMethod",
    "fallback_move_step",
    "move_method",
    "removal_method",
]

MoveMethod = Literal["move", "copy"]
RemovalMethod = Literal["uid_expunge", "leave_deleted"]
MoveStep = Literal["done", "copy", "remove_source"]

#: What a row applied without UIDPLUS says about the copy it left behind.
LEFT_DELETED_NOTE = (
    "the server has no UIDPLUS: the old copy is flagged \\Deleted and left for the user's next "
    "expunge (a bare EXPUNGE would also remove other messages they flagged \\Deleted)"
)


def move_method(capabilities: Collection[str]) -> MoveMethod:
    """``move`` where the server offers MOVE, else ``copy`` (COPY, then remove the source)."""
    return "move" if "MOVE" in capabilities else "copy"


def removal_method(capabilities: Collection[str]) -> RemovalMethod:
    """How one UID is removed from a folder: ``UID EXPUNGE`` (UIDPLUS), else flagged
    ``\\Deleted`` and left (never a bare EXPUNGE)."""
    return "uid_expunge" if "UIDPLUS" in capabilities else "leave_deleted"


def fallback_move_step(*, in_source: bool, copy_started: bool, copy_found: bool) -> MoveStep:
    """The next step of a COPY-based move of one UID.

    ``in_source``: the UID is still in the source folder; ``copy_started``: an earlier attempt
    recorded that it was about to COPY (it may have happened); ``copy_found``: a copy made by
    that attempt is in the destination (only looked for when ``copy_started``).
    """
    if not in_source:
        return "done"  # removed from the source: the move was completed (or the user did it)
    if copy_started and copy_found:
        return "remove_source"  # the COPY happened: do not copy again
    return "copy"
