"""``/webhooks``: subscribe a URL to events, list and remove subscriptions, read the delivery
log of one.

Any signed-in user manages their own webhooks, which hear about the accounts that user may
see (an admin's: every account); an admin also sees and removes everyone's. The URL's host
must be one the admin allowed (``Settings.webhook_allowed_hosts``) and, unless
``webhook_allow_internal``, not an internal address: anything else is a 422 saying why.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from correspond.api.notify_schemas import (
    DeliveryPage,
    NewWebhookPublic,
    WebhookCreate,
    WebhookPublic,
    delivery_public,
    webhook_public,
)
from correspond.api.schemas import ErrorPublic
from correspond.api.security import MAX_ID, CurrentUser
from correspond.rules.webhooks import UnsafeWebhookUrl, check_webhook_url
from correspond.store.users import User
from correspond.store.webhooks import Webhook, WebhookStore

__all__ = ["router"]

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

_NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorPublic, "description": "No such webhook of the caller's"}
}
WebhookId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _store(request: Request) -> WebhookStore:
    store: WebhookStore = request.app.state.webhooks
    return store


def _own(request: Request, user: User, webhook_id: int) -> Webhook:
    return _store(request).get(webhook_id, user_id=None if user.is_admin else user.id)


@router.post(
    "",
    response_model=NewWebhookPublic,
    status_code=status.HTTP_201_CREATED,
)
def create_webhook(body: WebhookCreate, request: Request, user: CurrentUser) -> NewWebhookPublic:
    """Subscribe ``url`` to ``events``. The answer holds the signing secret, once."""
    settings = request.app.state.settings
    try:
        check_webhook_url(
            body.url,
            settings.webhook_allowed_hosts,
            allow_internal=settings.webhook_allow_internal,
        )
    except UnsafeWebhookUrl as exc:
        error = {"type": "value_error", "loc": ("body", "url"), "msg": str(exc)}
        raise RequestValidationError([error]) from exc
    webhook, secret = _store(request).create(user.id, body.url, body.events, body.description)
    return NewWebhookPublic(**webhook_public(webhook).model_dump(), secret=secret)


@router.get("", response_model=list[WebhookPublic])
def list_webhooks(request: Request, user: CurrentUser) -> list[WebhookPublic]:
    """The caller's webhooks (an admin: everyone's)."""
    found = _store(request).webhooks(None if user.is_admin else user.id)
    return [webhook_public(w) for w in found]


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=_NOT_FOUND)
def get_webhook(webhook_id: WebhookId, request: Request, user: CurrentUser) -> WebhookPublic:
    return webhook_public(_own(request, user, webhook_id))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
def delete_webhook(webhook_id: WebhookId, request: Request, user: CurrentUser) -> Response:
    """Remove the webhook and its delivery log; nothing more is sent to it."""
    _own(request, user, webhook_id)
    _store(request).delete(webhook_id, user_id=None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage, responses=_NOT_FOUND)
def list_deliveries(
    webhook_id: WebhookId,
    request: Request,
    user: CurrentUser,
    cursor: Annotated[str | None, Query(max_length=20, pattern=r"^[0-9]{1,19}$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryPage:
    """The webhook's delivery log, newest first: status, attempts, last response."""
    _own(request, user, webhook_id)
    before = int(cursor) if cursor is not None else None
    if before is not None and before > MAX_ID:
        error = {"type": "value_error", "loc": ("query", "cursor"), "msg": "not a cursor"}
        raise RequestValidationError([error])
    items, next_cursor = _store(request).deliveries(webhook_id, before=before, limit=limit)
    return DeliveryPage(
        deliveries=[delivery_public(d) for d in items],
        next_cursor=None if next_cursor is None else str(next_cursor),
    )
