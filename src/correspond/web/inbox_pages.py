"""The web app's inboxes (the personal one and each team's) with their filters and search box,
and the thread page's "Move" action.

Routes of the pages' router (:data:`correspond.web.pages.router`; ``correspond.web`` imports
this module, as it does ``crm_pages``), reading the JSON API's services from ``app.state``:

- ``GET /`` and ``GET /team/{team_id}``: ``InboxQueries.scope/page`` with an
  :class:`~correspond.store.inbox.InboxFilters` built from the URL, the same parameters as
  ``GET /inbox`` (``folder``, ``unread``, ``starred``, ``has_attachment``, ``contact_id``,
  ``deal_id``, ``limit``, ``cursor``). Every filter lives in the URL: the chips and the filter
  form are GET links and forms, and "Older" keeps them. With ``q`` the list is
  ``SearchService.search`` (``GET /search``'s service and query language: ``from:ann@x.com
  has:attachment invoice``) over every account the caller may see, as messages linking to
  their threads, paged by its own cursor.
- ``POST /conversation/{thread_id}/move``: every message of the thread to one folder of its
  account, chosen by folder id (the store's row for the folder's raw remote name, never its
  display name), through ``OutboxStore.record_many(..., "move")`` as ``POST /messages/bulk``
  does: the CRM copy at once, the mailbox by the account's syncer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from correspond.api.security import MAX_ID, needs
from correspond.errors import ConfigError, NotFound
from correspond.mailbox import MailboxReader
from correspond.rules.search_query import MAX_QUERY_CHARS, SearchQueryError
from correspond.search import SearchService, viewer_of
from correspond.store.crm import CrmStore
from correspond.store.inbox import (
    DEFAULT_INBOX_PAGE,
    MAX_INBOX_PAGE,
    InboxFilters,
    InboxQueries,
    ScopeAccount,
)
from correspond.store.outbox import OutboxStore
from correspond.store.records import Folder
from correspond.store.users import User
from correspond.web.pages import PageUser, PathId, SignedForm, _auth, _render, router

__all__ = ["FOLDER_ROLE_NAMES", "InboxView", "thread_move_context"]

#: The role folders offered as chips (when a folder of the view has the role), in this order.
FOLDER_ROLE_NAMES = {
    "inbox": "Inbox",
    "sent": "Sent",
    "drafts": "Drafts",
    "archive": "Archive",
    "trash": "Trash",
    "junk": "Junk",
    "all": "All mail",
}


@dataclass(frozen=True, slots=True)
class InboxView:
    """What an inbox page shows, as its URL says (the names of ``GET /inbox``'s parameters)."""

    folder: str | None = None
    unread: bool | None = None
    starred: bool | None = None
    has_attachment: bool | None = None
    contact_id: int | None = None
    deal_id: int | None = None
    q: str | None = None
    limit: int = DEFAULT_INBOX_PAGE
    cursor: str | None = None

    @property
    def filters(self) -> InboxFilters:
        return InboxFilters(
            folder=self.folder,
            unread=self.unread,
            starred=self.starred,
            has_attachment=self.has_attachment,
            contact_id=self.contact_id,
            deal_id=self.deal_id,
        )

    def params(self) -> dict[str, str]:
        """The URL parameters of this view (defaults left out), in a stable order."""
        out: dict[str, str] = {}
        for name in ("folder", "unread", "starred", "has_attachment", "contact_id", "deal_id"):
            value = getattr(self, name)
            if isinstance(value, bool):
                out[name] = "true" if value else "false"
            elif value is not None:
                out[name] = str(value)
        if self.q:
            out["q"] = self.q
        if self.limit != DEFAULT_INBOX_PAGE:
            out["limit"] = str(self.limit)
        if self.cursor:
            out["cursor"] = self.cursor
        return out


def _inbox_view(
    folder: Annotated[str | None, Query(max_length=40)] = None,
    unread: Annotated[bool | None, Query()] = None,
    starred: Annotated[bool | None, Query()] = None,
    has_attachment: Annotated[bool | None, Query()] = None,
    # Text, not int: the filter form sends an empty value for "Any".
    contact_id: Annotated[str | None, Query(max_length=20)] = None,
    deal_id: Annotated[str | None, Query(max_length=20)] = None,
    q: Annotated[str | None, Query(max_length=MAX_QUERY_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_INBOX_PAGE)] = DEFAULT_INBOX_PAGE,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> InboxView:
    return InboxView(
        folder=folder or None,
        unread=unread,
        starred=starred,
        has_attachment=has_attachment,
        contact_id=_record_id("contact_id", contact_id),
        deal_id=_record_id("deal_id", deal_id),
        q=(q or "").strip() or None,
        limit=limit,
        cursor=cursor or None,
    )


def _record_id(name: str, value: str | None) -> int | None:
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) <= MAX_ID:
        raise HTTPException(422, f"{name} must be a record id")
    return int(value)


View = Annotated[InboxView, Depends(_inbox_view)]


def _link(here: str, view: InboxView, **changes: Any) -> str:
    """``here`` with ``view``'s parameters changed (a changed view starts at its first page)."""
    changed = replace(view, **{"cursor": None, **changes})
    params = changed.params()
    return f"{here}?{urlencode(params)}" if params else here


def _folder_choices(request: Request, accounts: list[ScopeAccount]) -> list[dict[str, Any]]:
    """Per account of the view, its synced folders (the filter's select: by folder id)."""
    reader: MailboxReader = request.app.state.reader
    groups = []
    for account in accounts:
        folders = [
            f
            for f in reader.store.list_folders(account.name)
            if f.selectable and f.selected and not f.removed
        ]
        if folders:
            groups.append({"account": account.name, "folders": _labelled(folders)})
    return groups


def _labelled(folders: list[Folder]) -> list[dict[str, Any]]:
    """Each folder with a label: its display name, and its raw remote name as well when two
    folders of the account share a display name (they are two folders on the server)."""
    names = [f.name for f in folders]
    out = []
    for f in folders:
        label = f.name
        if names.count(f.name) > 1:
            label = f"{f.name} ({f.name_raw.decode('utf-8', errors='backslashreplace')})"
        out.append({"id": f.id, "label": label, "role": f.role})
    return out


def _inbox_page(request: Request, user: User, *, team_id: int | None, view: InboxView) -> Any:
    queries: InboxQueries = request.app.state.inbox
    auth = _auth(request)
    # Read before the list: the page's live stream starts after this id, so a message that
    # arrives while the page loads is announced rather than lost between the two.
    live_after = request.app.state.notifications.latest_id()
    teams = auth.teams.list(member_id=None if user.is_admin else user.id)
    team = next((t for t in teams if t.id == team_id), None)
    here = "/" if team_id is None else f"/team/{team_id}"
    everything = queries.scope(user, team_id=team_id, folder=None)  # the view's accounts
    crm: CrmStore = request.app.state.crm
    context: dict[str, Any] = {
        "teams": teams,
        "team": team,
        "here": here,
        "view": view,
        "live_after": live_after,
        "threads": [],
        "results": None,
        "search_error": None,
        "older": None,
        "first": _link(here, view),
        "first_page": view.cursor is None,
        "unread": 0,
        "folder_groups": _folder_choices(request, everything),
        "contact": _record(crm.get_contact, view.contact_id),
        "deal": _record(crm.get_deal, view.deal_id),
    }
    # The chips: roles present in the view, the toggles; each link changes one thing.
    roles = {f["role"] for g in context["folder_groups"] for f in g["folders"] if f["role"]}
    context["folder_chips"] = [
        {
            "label": label,
            "role": role,
            "href": _link(here, view, folder=None if role == "inbox" else role, q=None),
            "on": (view.folder or "inbox") == role and not view.q,
        }
        for role, label in FOLDER_ROLE_NAMES.items()
        if role == "inbox" or role in roles
    ]
    context["toggles"] = [
        {
            "name": name,
            "label": label,
            "href": _link(here, view, q=None, **{name: None if getattr(view, name) else True}),
            "on": bool(getattr(view, name)) and not view.q,
        }
        for name, label in (
            ("unread", "Unread"),
            ("starred", "Starred"),
            ("has_attachment", "Has attachment"),
        )
    ]
    context["without_contact"] = _link(here, view, contact_id=None)
    context["without_deal"] = _link(here, view, deal_id=None)
    context["clear_search"] = _link(here, view, q=None)
    status = 200
    if view.q is not None:
        search: SearchService = request.app.state.search
        try:
            # A team's page searches the team's inboxes; the personal page, all the caller
            # may see (as GET /search does).
            narrow = [a.id for a in everything] if team_id is not None else None
            found = search.search(
                view.q,
                viewer_of(user),
                account_ids=narrow,
                limit=view.limit,
                cursor=view.cursor,
            )
        except SearchQueryError as exc:
            context["search_error"] = str(exc)
            context["results"] = []
            status = 422
        else:
            context["results"] = found.items
            if found.next_cursor:
                context["older"] = _link(here, view, cursor=found.next_cursor)
    else:
        filters = view.filters
        accounts = (
            everything
            if filters.folder is None
            else queries.scope(user, team_id=team_id, folder=filters.folder)
        )
        page = queries.page(accounts, filters, limit=view.limit, cursor=view.cursor)
        context["threads"] = page.threads
        context["unread"] = sum(1 for t in page.threads if t.unread_count)
        if page.next_cursor:
            context["older"] = _link(here, view, cursor=page.next_cursor)
    context["thread_link"] = lambda **changes: _link(here, view, q=None, **changes)
    return _render(request, "inbox.html", context, status=status, user=user)


def _record(get: Any, record_id: int | None) -> Any:
    if record_id is None:
        return None
    try:
        return get(record_id)
    except NotFound:
        raise HTTPException(404, f"no record with id {record_id}") from None


@router.get("/")
def personal_inbox(request: Request, user: PageUser, view: View) -> HTMLResponse:
    """The caller's inbox (``GET /inbox``'s threads and filters), newest first, paged by
    cursor; with ``q``, the search's messages (``GET /search``)."""
    page: HTMLResponse = _inbox_page(request, user, team_id=None, view=view)
    return page


@router.get("/team/{team_id}")
def team_inbox(request: Request, user: PageUser, team_id: PathId, view: View) -> HTMLResponse:
    """A team's inbox (``GET /teams/{team_id}/inbox``'s threads and filters)."""
    page: HTMLResponse = _inbox_page(request, user, team_id=team_id, view=view)
    return page


# --- the thread page's Move ----------------------------------------------------------------


def thread_move_context(request: Request, account_id: int) -> dict[str, Any]:
    """The thread page's "Move to" select: the folders of the thread's account that can hold
    messages, by id."""
    reader: MailboxReader = request.app.state.reader
    account = reader.store.get_account_by_id(account_id)
    folders = [f for f in reader.store.list_folders(account.name) if f.selectable and not f.removed]
    choices = _labelled(folders)
    for choice, folder in zip(choices, folders, strict=True):
        if not folder.selected:  # moved there, a message leaves what the CRM shows
            choice["label"] += " (not synced)"
    return {"move_folders": choices}


@router.post("/conversation/{thread_id}/move")
@needs("full")
def move_thread(
    request: Request, user: PageUser, thread_id: PathId, form: SignedForm
) -> RedirectResponse:
    """Every message of the thread to the folder ``folder_id`` of its account (the outbox's
    move, as ``POST /messages/bulk`` with ``action=move``); 422 for a folder that is not one
    of the account's."""
    chosen = form.get("folder_id", "")
    if not chosen.isdigit() or not 0 < int(chosen) <= MAX_ID:
        raise HTTPException(422, "Choose a folder to move to.")
    reader: MailboxReader = request.app.state.reader
    outbox: OutboxStore = request.app.state.outbox
    ids = [m.id for m in reader.get_thread(thread_id).messages]
    outcomes = outbox.record_many(ids, "move", user_id=user.id, to_folder_id=int(chosen))
    refused = [o for o in outcomes if isinstance(o, ConfigError)]
    if refused:
        raise HTTPException(422, str(refused[0]))
    return RedirectResponse(f"/conversation/{thread_id}?done=moved", status_code=303)
