"""The inbox views: ``GET /inbox`` (the caller's own mailboxes) and
``GET /teams/{team_id}/inbox`` (a team's inboxes), as threads, newest first.

Both read :class:`~correspond.store.inbox.InboxQueries`, whose accounts come from the one
visibility rule. A teammate's shared account is not in the caller's personal inbox (it is
theirs to read, not the caller's to work through); ``?account=`` opens any one account the
caller may see, shared ones included, and a metadata-only one gives no snippets, attachment
marks or chips, and refuses the filters that would probe them (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response

from correspond.api.inbox_schemas import InboxPagePublic, inbox_page_public
from correspond.api.schemas import ErrorPublic
from correspond.api.security import MAX_ID, CurrentUser
from correspond.store.inbox import (
    DEFAULT_INBOX_PAGE,
    MAX_INBOX_PAGE,
    InboxFilters,
    InboxQueries,
    ScopeAccount,
)

__all__ = ["router"]

router = APIRouter(
    tags=["inbox"],
    responses={
        403: {
            "model": ErrorPublic,
            "description": "A filter on attachments or links over an account seen as metadata only",
        },
        404: {"model": ErrorPublic, "description": "No such account, folder or team (or not one "
              "the caller may see)"},
    },
)  # fmt: skip

TeamId = Annotated[int, Path(ge=1, le=MAX_ID)]


@dataclass(frozen=True, slots=True)
class _ViewQuery:
    account: str | None
    filters: InboxFilters
    limit: int
    cursor: str | None


def _view_query(
    account: Annotated[
        str | None, Query(max_length=200, description="Only this account (any one you may see).")
    ] = None,
    folder: Annotated[
        str | None,
        Query(
            max_length=40,
            description="A folder id, or a role: inbox (the default), sent, drafts, trash, "
            "archive, junk, all. A thread is listed when one of its messages is there.",
        ),
    ] = None,
    unread: Annotated[
        bool | None, Query(description="Only threads with an unread (true) or read message.")
    ] = None,
    starred: Annotated[
        bool | None, Query(description="Only threads with a starred (true) or unstarred message.")
    ] = None,
    has_attachment: Annotated[
        bool | None, Query(description="Only threads with a message with (true) or without one.")
    ] = None,
    contact_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only threads linked to this contact.")
    ] = None,
    deal_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only threads linked to this deal.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_INBOX_PAGE)] = DEFAULT_INBOX_PAGE,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
) -> _ViewQuery:
    filters = InboxFilters(
        folder=folder,
        unread=unread,
        starred=starred,
        has_attachment=has_attachment,
        contact_id=contact_id,
        deal_id=deal_id,
    )
    return _ViewQuery(account=account, filters=filters, limit=limit, cursor=cursor)


ViewQuery = Annotated[_ViewQuery, Depends(_view_query)]


def _answer(queries: InboxQueries, accounts: list[ScopeAccount], view: _ViewQuery) -> Response:
    if view.filters.probe_bodies and not all(a.full for a in accounts):
        raise HTTPException(
            403,
            detail="this account is shared with you as metadata only: no attachment or link "
            "filters",
        )
    page = queries.page(accounts, view.filters, limit=view.limit, cursor=view.cursor)
    # As message lists: validated once, written by pydantic; exclude_unset leaves the body
    # fields out (not empty) for a metadata-only viewer.
    body = inbox_page_public(page).model_dump_json(exclude_unset=True)
    return Response(content=body, media_type="application/json")


def _queries(request: Request) -> InboxQueries:
    queries: InboxQueries = request.app.state.inbox
    return queries


@router.get("/inbox", response_model=InboxPagePublic, response_model_exclude_unset=True)
def personal_inbox(request: Request, user: CurrentUser, view: ViewQuery) -> Response:
    """The caller's inbox: threads of the accounts they own that are not team inboxes,
    newest first, paged by ``cursor``.

    ``account`` narrows it to one account the caller may see (their own, a teammate's shared
    one, a team inbox). Each thread is placed by its latest message in the view (in the
    folder, passing the filters); counts are the whole thread's. A page examines a bounded
    number of messages: with a narrow filter it may hold fewer than ``limit`` threads, or
    none, and still carry a ``next_cursor``."""
    queries = _queries(request)
    return _answer(
        queries, queries.scope(user, account=view.account, folder=view.filters.folder), view
    )


@router.get(
    "/teams/{team_id}/inbox", response_model=InboxPagePublic, response_model_exclude_unset=True
)
def team_inbox(team_id: TeamId, request: Request, user: CurrentUser, view: ViewQuery) -> Response:
    """The team's inbox: threads of the team's inbox accounts (a member of the team, or an
    admin), as ``GET /inbox``; ``account`` narrows it to one of them."""
    queries = _queries(request)
    return _answer(
        queries,
        queries.scope(user, team_id=team_id, account=view.account, folder=view.filters.folder),
        view,
    )
