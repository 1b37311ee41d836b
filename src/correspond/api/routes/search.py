"""``GET /search``: full-text search over the mail the caller may see.

The query language is :mod:`correspond.rules.search_query`'s. A query that cannot be searched
(a malformed date, past the length or term bounds) is a 422 naming ``q``; results are the
message list's summaries, newest first, paged by ``cursor``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from correspond.api.message_schemas import MessagePagePublic, message_page_public
from correspond.api.security import AuthDep, CurrentUser
from correspond.rules.search_query import MAX_QUERY_CHARS, SearchQueryError
from correspond.search import SearchService, viewer_of
from correspond.store.message_queries import MAX_PAGE

__all__ = ["router"]

router = APIRouter(tags=["search"])


@router.get("/search", response_model=MessagePagePublic)
def search(
    request: Request,
    user: CurrentUser,
    auth: AuthDep,
    q: Annotated[
        str,
        Query(
            max_length=MAX_QUERY_CHARS,
            description='Words, "phrases", -negations and from: to: cc: bcc: subject: '
            "filename: has:attachment is:unread is:read is:starred in:FOLDER "
            "before:YYYY-MM-DD after:YYYY-MM-DD. Empty: every message.",
        ),
    ] = "",
    account: Annotated[
        str | None, Query(max_length=200, description="Only this account's mail.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
) -> MessagePagePublic:
    """Messages matching ``q`` in the accounts the caller may see, newest first."""
    if account is not None:
        auth.account_access(user, account)  # 404, as for no such account
    service: SearchService = request.app.state.search
    try:
        page = service.search(q, viewer_of(user), account=account, limit=limit, cursor=cursor)
    except SearchQueryError as exc:
        detail = [{"type": "value_error", "loc": ["query", "q"], "msg": str(exc)}]
        raise HTTPException(422, detail=detail) from exc
    return message_page_public(page)
