"""CRM records: ``/contacts``, ``/companies``, ``/deals``, ``/activities`` (list with search and
cursor paging, create, read, change, delete, and each record's ``/timeline``), bulk
``/import/{kind}`` (CSV or JSON), and manual thread links ``/threads/{id}/deals/{deal_id}``.

Records are the organisation's: every signed-in user sees and changes them. A timeline shows
only the messages the caller may see (``store.visibility``). Written without ``from __future__
import annotations``: the routes are made per kind by :func:`_record_routes`, and FastAPI reads
their annotations, which must be the real classes.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from correspond.api.crm_schemas import (
    ActivityCreate,
    ActivityPublic,
    ActivityUpdate,
    CompanyCreate,
    CompanyPublic,
    CompanyUpdate,
    ContactCreate,
    ContactPublic,
    ContactUpdate,
    DealCreate,
    DealPublic,
    DealUpdate,
    DismissalPagePublic,
    DismissalPublic,
    ImportPublic,
    PagePublic,
    ThreadDealPublic,
    changes,
)
from correspond.api.message_schemas import MessagePagePublic, message_page_public
from correspond.api.schemas import ErrorPublic
from correspond.api.security import MAX_ID, CurrentUser, needs
from correspond.rules.crm_import import IMPORT_KINDS, parse_rows
from correspond.store.crm import CrmStore
from correspond.store.message_queries import MAX_PAGE

__all__ = ["dismissal_router", "import_router", "record_routers", "thread_deal_router"]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic}}
_CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ErrorPublic}}
MAX_IMPORT_BYTES = 25 * 1024 * 1024


def crm_of(request: Request) -> CrmStore:
    crm: CrmStore = request.app.state.crm
    return crm


def records_changed(request: Request) -> None:
    """Wake this process's linker (when it runs one: ``serve``); others poll."""
    runner = request.app.state.runner
    if runner is not None:
        runner.linker.wake()


def _record_routes(
    kind: str,
    plural: str,
    create_body: Any,
    update_body: Any,
    public: Any,
) -> APIRouter:
    router = APIRouter(prefix=f"/{plural}", tags=["crm"])
    param = f"{kind}_id"
    Rid = Annotated[int, Path(ge=1, le=MAX_ID, alias=param)]
    page_model = PagePublic[public]  # type: ignore[valid-type]

    def store_call(request: Request, verb: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(crm_of(request), f"{verb}_{kind}")(*args, **kwargs)

    After = Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="next_cursor of the previous page.")
    ]
    Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]

    def page_of(page: Any) -> Any:
        return page_model(items=[public.of(r) for r in page.items], next_cursor=page.next_cursor)

    if kind == "contact":
        # Contacts also filter by origin (``auto``: what auto-creation made, to review).
        @router.get("", response_model=page_model, name="list_contacts")
        def list_contacts(
            request: Request,
            q: Annotated[str | None, Query(max_length=200, description="Name or address.")] = None,
            origin: Annotated[
                Literal["manual", "import", "auto"] | None,
                Query(description="Only contacts of this origin."),
            ] = None,
            limit: Limit = 50,
            after: After = None,
        ) -> Any:
            crm = crm_of(request)
            return page_of(crm.list_contacts(q=q, after=after, limit=limit, origin=origin))

    else:

        @router.get("", response_model=page_model, name=f"list_{plural}")
        def list_records(
            request: Request,
            q: Annotated[
                str | None, Query(max_length=200, description="Name, address or domain text.")
            ] = None,
            limit: Limit = 50,
            after: After = None,
        ) -> Any:
            listing = {"company": "companies", "activity": "activities"}.get(kind, f"{kind}s")
            return page_of(
                getattr(crm_of(request), f"list_{listing}")(q=q, after=after, limit=limit)
            )

    @router.post(
        "",
        response_model=public,
        status_code=status.HTTP_201_CREATED,
        responses=_CONFLICT,
        name=f"create_{kind}",
    )
    def create_record(request: Request, body: create_body) -> Any:  # type: ignore[valid-type]
        record = store_call(request, "create", **changes(body))
        records_changed(request)
        return public.of(record)

    @router.get(f"/{{{param}}}", response_model=public, responses=_NOT_FOUND, name=f"get_{kind}")
    def get_record(request: Request, record_id: Rid) -> Any:
        return public.of(store_call(request, "get", record_id))

    @router.patch(
        f"/{{{param}}}",
        response_model=public,
        responses={**_NOT_FOUND, **_CONFLICT},
        name=f"update_{kind}",
    )
    def update_record(
        request: Request,
        body: update_body,  # type: ignore[valid-type]
        record_id: Rid,
    ) -> Any:
        record = store_call(request, "update", record_id, **changes(body))
        records_changed(request)
        return public.of(record)

    @router.delete(
        f"/{{{param}}}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=_NOT_FOUND,
        name=f"delete_{kind}",
    )
    def delete_record(request: Request, record_id: Rid) -> Response:
        store_call(request, "delete", record_id)
        records_changed(request)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get(
        f"/{{{param}}}/timeline",
        response_model=MessagePagePublic,
        responses=_NOT_FOUND,
        name=f"{kind}_timeline",
    )
    def timeline(
        request: Request,
        user: CurrentUser,
        record_id: Rid,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        before: Annotated[
            str | None, Query(description="next_cursor of the previous page.")
        ] = None,
    ) -> MessagePagePublic:
        """The record's messages the caller may see, newest first."""
        page = crm_of(request).timeline(kind, record_id, user, limit=limit, before=before)
        return message_page_public(page)

    return router


record_routers = [
    _record_routes("contact", "contacts", ContactCreate, ContactUpdate, ContactPublic),
    _record_routes("company", "companies", CompanyCreate, CompanyUpdate, CompanyPublic),
    _record_routes("deal", "deals", DealCreate, DealUpdate, DealPublic),
    _record_routes("activity", "activities", ActivityCreate, ActivityUpdate, ActivityPublic),
]

import_router = APIRouter(prefix="/import", tags=["crm"])


@import_router.post(
    "/{kind}",
    response_model=ImportPublic,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "text/csv": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def import_records(request: Request, kind: str) -> ImportPublic:
    """Create or update records in bulk from a JSON list or a CSV file (``Content-Type:
    text/csv``), idempotent: matched by ``external_id``, else by address (contacts) or domain
    (companies). A bad row is reported by number; the others go in."""
    if kind not in IMPORT_KINDS:
        raise HTTPException(404, detail=f"nothing to import as {kind!r}")
    data = await request.body()
    fmt = "csv" if "csv" in request.headers.get("content-type", "") else "json"
    try:
        rows = parse_rows(kind, data, fmt)
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from exc
    singular = {"contacts": "contact", "companies": "company", "deals": "deal"}[kind]
    from starlette.concurrency import run_in_threadpool

    report = await run_in_threadpool(crm_of(request).import_records, singular, rows)
    records_changed(request)
    return ImportPublic.of(report)


thread_deal_router = APIRouter(prefix="/threads/{thread_id}/deals", tags=["crm"])


# A CRM action on mail the caller reads in full (a team inbox's member too), not a change
# of the account: "full", not the owner-only default of a write.
@thread_deal_router.put("/{deal_id}", response_model=ThreadDealPublic, responses=_NOT_FOUND)
@needs("full")
def link_thread(
    request: Request,
    thread_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    deal_id: Annotated[int, Path(ge=1, le=MAX_ID)],
) -> ThreadDealPublic:
    """Put every message of the thread (and its later ones) on the deal's timeline; the
    automatic rules never undo it."""
    n = crm_of(request).set_thread_deal(thread_id, deal_id, linked=True)
    records_changed(request)
    return ThreadDealPublic(thread_id=thread_id, deal_id=deal_id, linked=True, messages=n)


@thread_deal_router.delete("/{deal_id}", response_model=ThreadDealPublic, responses=_NOT_FOUND)
@needs("full")
def unlink_thread(
    request: Request,
    thread_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    deal_id: Annotated[int, Path(ge=1, le=MAX_ID)],
) -> ThreadDealPublic:
    """Take the thread off the deal's timeline, and keep it off (the rules do not add it
    back)."""
    crm_of(request).set_thread_deal(thread_id, deal_id, linked=False)
    records_changed(request)
    return ThreadDealPublic(thread_id=thread_id, deal_id=deal_id, linked=False, messages=0)


dismissal_router = APIRouter(prefix="/contact-dismissals", tags=["crm"])
_Address = Annotated[str, Path(min_length=3, max_length=320)]


@dismissal_router.get("", response_model=DismissalPagePublic)
def list_dismissals(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    after: Annotated[
        str | None, Query(max_length=320, description="next_cursor of the previous page.")
    ] = None,
) -> DismissalPagePublic:
    """Addresses whose contact was deleted: contact auto-creation does not make them again
    (making a contact with one by hand, or deleting it here, lifts that)."""
    rows, cursor = crm_of(request).list_dismissals(after=after, limit=limit)
    return DismissalPagePublic(
        items=[DismissalPublic(address=a, dismissed_at=d) for a, d in rows], next_cursor=cursor
    )


@dismissal_router.delete(
    "/{dismissed_address}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND
)
def undismiss(request: Request, dismissed_address: _Address) -> Response:
    """Let auto-creation make a contact for this address again."""
    crm_of(request).undismiss(dismissed_address)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
