"""CRM actions on a message: ``POST /messages/{id}/read|unread|star|unstar|archive|unarchive|
delete|restore``, ``POST /messages/{id}/move``, ``GET /messages/{id}/actions``, and the bulk
form ``POST /messages/bulk`` (one action on up to 1,000 messages).

Each is the caller's action, on a message they see in full (owner, admin, or shared in full:
a metadata-only viewer gets a 403). The CRM copy changes at once; what must reach the mailbox is
an outbox row written in the same transaction, which the account's syncer applies
(``sync.outbox``). Each answers with the message's new state, flags and its outbox rows not yet
applied (pending, or failed with the reason).

The bulk form checks each id against the same visibility rule, in one statement: an id the
caller may not see answers 404 in its own entry, word for word as an id that does not exist
(nothing leaks), one seen as metadata only 403; the others are acted on in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from correspond.api.security import MAX_ID, AuthDep, CurrentUser, needs
from correspond.errors import ConfigError, NotFound
from correspond.store.outbox import MAX_BULK, ActionOutcome, OutboxAction, OutboxStore

__all__ = ["MessageActionPublic", "outcome_public", "router"]

router = APIRouter(prefix="/messages", tags=["actions"])

MessageId = Annotated[int, Path(ge=1, le=MAX_ID)]
SimpleAction = Literal[
    "read", "unread", "star", "unstar", "archive", "unarchive", "delete", "restore"
]
AnyAction = Literal[
    "read", "unread", "star", "unstar", "archive", "unarchive", "delete", "restore", "move"
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


class BulkRequest(BaseModel):
    action: AnyAction = Field(description="One action for every message named")
    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(
        min_length=1, max_length=MAX_BULK, description=f"Message ids (at most {MAX_BULK})"
    )
    folder_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="For move: the folder to move each to"
    )


class BulkEntry(BaseModel):
    """One id's answer: 200 with the message after the action, else the error it met."""

    id: int
    status: int = Field(
        description="200; 404 no such message (or not yours to see); 403 "
        "metadata-only access; 422 the folder is not one of the message's account"
    )
    error: str | None = None
    message: MessageActionPublic | None = None


class BulkResponse(BaseModel):
    action: str
    done: int = Field(description="How many entries are 200")
    results: list[BulkEntry] = Field(description="One per id, in the order given")


@router.post("/bulk", response_model=BulkResponse)
@needs("full")
def bulk_action(
    body: BulkRequest, user: CurrentUser, outbox: OutboxDep, auth: AuthDep
) -> BulkResponse:
    """One action on many messages (at most 1,000): each id checked on its own (404 for one
    the caller may not see, as for one that does not exist; 403 for metadata-only access),
    the rest acted on in one transaction; each entry has the message's new state and its
    pending outbox actions."""
    if body.action == "move" and body.folder_id is None:
        error = {"type": "missing", "loc": ("body", "folder_id"), "msg": "move needs folder_id"}
        raise RequestValidationError([error])
    access = auth.messages_access(user, body.ids)
    allowed = [i for i in dict.fromkeys(body.ids) if i in access and access[i].full]
    outcomes = dict(
        zip(
            allowed,
            outbox.record_many(allowed, body.action, user_id=user.id, to_folder_id=body.folder_id),
            strict=True,
        )
    )
    results: list[BulkEntry] = []
    for message_id in body.ids:
        seen = access.get(message_id)
        outcome = outcomes.get(message_id)
        if seen is None or isinstance(outcome, NotFound):
            results.append(
                BulkEntry(id=message_id, status=404, error=f"no message with id {message_id}")
            )
        elif not seen.full:
            results.append(
                BulkEntry(
                    id=message_id,
                    status=403,
                    error="this account is shared with you as metadata only: no bodies",
                )
            )
        elif isinstance(outcome, ConfigError):
            results.append(BulkEntry(id=message_id, status=422, error=str(outcome)))
        else:
            assert isinstance(outcome, ActionOutcome)
            results.append(BulkEntry(id=message_id, status=200, message=outcome_public(outcome)))
    return BulkResponse(
        action=body.action,
        done=sum(1 for r in results if r.status == 200),
        results=results,
    )
