"""CRM actions on a message: ``POST /messages/{id}/read|unread|star|unstar|archive|unarchive|
delete|restore``, ``POST /messages/{id}/move`` and ``GET /messages/{id}/actions``.

Each is the caller's action, on a message they see in full (owner, admin, or shared in full:
a metadata-only viewer gets a 403). The CRM copy changes at once; what must reach the mailbox is
an outbox row written in the same transaction, which the account's syncer applies
(``sync.outbox``). Each answers with the message's new state, flags and its outbox rows not yet
applied (pending, or failed with the reason).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from correspond.api.security import MAX_ID, CurrentUser, needs
from correspond.errors import ConfigError
from correspond.store.outbox import ActionOutcome, OutboxAction, OutboxStore

__all__ = ["MessageActionPublic", "outcome_public", "router"]

router = APIRouter(prefix="/messages", tags=["actions"])

MessageId = Annotated[int, Path(ge=1, le=MAX_ID)]
SimpleAction = Literal[
    "read", "unread", "star", "unstar", "archive", "unarchive", "delete", "restore"
]


async def get_outbox(request: Request) -> OutboxStore:
    outbox: OutboxStore = request.app.state.outbox
    return outbox


OutboxDep = Annotated[OutboxStore, Depends(get_outbox)]


class OutboxActionPublic(BaseModel):
    id: int
    kind: str
    state: str = Field(description="pending, applied, failed or superseded")
    attempts: int
    next_attempt_at: datetime
    last_error: str | None = Field(description="Why the last attempt failed (null: none did)")
    created_at: datetime
    applied_at: datetime | None
    payload: dict[str, Any]


class MessageActionPublic(BaseModel):
    """A message after an action: its CRM state and flags, and its outbox rows not applied."""

    id: int
    state: str = Field(description="active, archived or deleted")
    flags: list[str]
    pending_actions: list[OutboxActionPublic] = Field(
        description="Outbox rows not applied yet, newest first: pending, or failed with why"
    )


class MoveRequest(BaseModel):
    folder_id: int = Field(ge=1, le=MAX_ID, description="The folder to move the message to")


def _action_public(a: OutboxAction) -> OutboxActionPublic:
    return OutboxActionPublic(
        id=a.id,
        kind=a.kind,
        state=a.state,
        attempts=a.attempts,
        next_attempt_at=a.next_attempt_at,
        last_error=a.last_error,
        created_at=a.created_at,
        applied_at=a.applied_at,
        payload=a.payload,
    )


def outcome_public(outcome: ActionOutcome) -> MessageActionPublic:
    """The API (and CLI --json) form of a message after an action."""
    return MessageActionPublic(
        id=outcome.message_id,
        state=outcome.state,
        flags=list(outcome.flags),
        pending_actions=[_action_public(a) for a in outcome.actions],
    )


@router.get("/{message_id}/actions", response_model=MessageActionPublic)
@needs("metadata")
def message_actions(message_id: MessageId, outbox: OutboxDep) -> MessageActionPublic:
    """The message's state, flags and outbox rows not applied (pending or failed)."""
    return outcome_public(outbox.outcome(message_id))


@router.post("/{message_id}/move", response_model=MessageActionPublic)
@needs("full")
def move_message(
    message_id: MessageId, body: MoveRequest, user: CurrentUser, outbox: OutboxDep
) -> MessageActionPublic:
    """Move the message to another folder of its account (every copy: one is left there)."""
    try:
        outcome = outbox.record(message_id, "move", user_id=user.id, to_folder_id=body.folder_id)
    except ConfigError as exc:
        # The message exists: what is wrong is the folder named in the body.
        error = {"type": "value_error", "loc": ("body", "folder_id"), "msg": str(exc)}
        raise RequestValidationError([error]) from exc
    return outcome_public(outcome)


_SIMPLE_ACTIONS: dict[SimpleAction, str] = {
    "read": "Mark read: \\Seen on every copy in the mailbox.",
    "unread": "Mark unread: \\Seen cleared on every copy in the mailbox.",
    "star": "Star: \\Flagged on every copy in the mailbox.",
    "unstar": "Unstar: \\Flagged cleared on every copy in the mailbox.",
    "archive": "Archive: out of the inbox view, still on timelines; with the account's "
    "archive_remote_on_crm_archive toggle, INBOX to the Archive folder.",
    "unarchive": "Back to the inbox view; with archive_remote_on_crm_archive, Archive to INBOX.",
    "delete": "Delete: hidden from lists, threads and timelines; with the account's "
    "delete_remote_on_crm_delete toggle, every copy to Trash.",
    "restore": "Undo a delete; with delete_remote_on_crm_delete, Trash to INBOX.",
}


def _simple_route(action: SimpleAction, summary: str) -> None:
    def act(message_id: MessageId, user: CurrentUser, outbox: OutboxDep) -> MessageActionPublic:
        return outcome_public(outbox.record(message_id, action, user_id=user.id))

    act.__doc__ = summary
    act.__name__ = f"{action}_message"
    router.post(
        f"/{{message_id}}/{action}",
        response_model=MessageActionPublic,
        name=f"{action}_message",
        summary=summary.split(":")[0].rstrip("."),
        description=summary,
    )(needs("full")(act))


for _action, _summary in _SIMPLE_ACTIONS.items():
    _simple_route(_action, _summary)
