"""The web app's CRM pages: contacts, companies and deals (a list per kind with search and
cursor paging, a page per record with its details and email timeline), and the thread page's
"Link to deal" form.

Under ``/crm/...``: ``/contacts``, ``/companies``, ``/deals`` are the JSON API's. Every page
reads :class:`correspond.store.crm.CrmStore` (``app.state.crm``) as the API's CRM routes do; a
timeline is ``CrmStore.timeline`` for the caller, so it holds only the messages they may see
(the visibility rule). Records themselves are the organisation's: every signed-in user sees
them. Linking a thread to a deal is ``CrmStore.set_thread_deal`` (``PUT
/threads/{id}/deals/{deal_id}``'s call), behind the thread's ``full`` access and a CSRF token.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from correspond.api.routes.crm import records_changed
from correspond.api.security import MAX_ID, needs
from correspond.store.crm import CrmStore
from correspond.store.users import User
from correspond.web.pages import Cursor, PageUser, PathId, SignedForm, _render, router

__all__ = ["CRM_PAGE", "thread_deals_context"]

# Routes of the pages' router (``web.pages.router``): one mount, and the route walk in
# tests/test_auth_api.py sees them. ``correspond.web`` imports this module.


#: Records a list page shows; timeline messages a record page shows.
CRM_PAGE = 50
#: Activities shown on a record page (the newest).
ACTIVITIES_SHOWN = 20
#: At most this many deals in the thread page's select (the first by id).
DEAL_CHOICES = 200

Search = Annotated[str | None, Query(max_length=200)]
#: The longest address list "Add activity" prefills (a query parameter of the list page).
PREFILL_CHARS = 2000
Prefill = Annotated[str | None, Query(max_length=PREFILL_CHARS)]
After = Annotated[int | None, Query(ge=0, le=MAX_ID)]
_KINDS = {
    "contacts": "contact",
    "companies": "company",
    "deals": "deal",
    "activities": "activity",
}
_PLURALS = {kind: plural for plural, kind in _KINDS.items()}
_TITLES = {
    "contacts": "Contacts",
    "companies": "Companies",
    "deals": "Deals",
    "activities": "Activities",
}


def _crm(request: Request) -> CrmStore:
    crm: CrmStore = request.app.state.crm
    return crm


def _list_page(
    request: Request,
    user: User,
    plural: str,
    q: str | None,
    after: int | None,
    *,
    extra: dict[str, Any] | None = None,
    status: int = 200,
) -> HTMLResponse:
    """A list page; ``extra``: the "New ..." form's context (:mod:`correspond.web.crm_forms`:
    what was typed and the errors beside each field after a refused create)."""
    from correspond.web.crm_forms import form_context  # it imports this module

    crm = _crm(request)
    listing = getattr(crm, f"list_{plural}")
    page = listing(q=q, after=after, limit=CRM_PAGE)
    companies: dict[int, str] = {}
    if plural in ("contacts", "deals"):
        for company_id in {r.company_id for r in page.items if r.company_id is not None}:
            companies[company_id] = crm.get_company(company_id).name
    query = {"q": q} if q else {}
    here = f"/crm/{plural}"
    more = None
    if page.next_cursor is not None:
        more = f"{here}?{urlencode({**query, 'after': page.next_cursor})}"
    context = {
        "plural": plural,
        "kind": _KINDS[plural],
        "title": _TITLES[plural],
        "records": page.items,
        "companies": companies,
        "q": q or "",
        "first": here + (f"?{urlencode(query)}" if query else ""),
        "first_page": after is None,
        "more": more,
        "done": request.query_params.get("done") == "deleted",
        **form_context(request, _KINDS[plural], None),
        **(extra or {}),
    }
    return _render(request, "crm_list.html", context, user=user, status=status)


@router.get("/crm")
def crm_home(_user: PageUser) -> RedirectResponse:
    return RedirectResponse("/crm/contacts", status_code=303)


@router.get("/crm/contacts")
def contacts_page(
    request: Request, user: PageUser, q: Search = None, after: After = None
) -> HTMLResponse:
    """Contacts by id, searched by name or address (``GET /contacts``' call)."""
    return _list_page(request, user, "contacts", q, after)


@router.get("/crm/companies")
def companies_page(
    request: Request, user: PageUser, q: Search = None, after: After = None
) -> HTMLResponse:
    return _list_page(request, user, "companies", q, after)


@router.get("/crm/deals")
def deals_page(
    request: Request, user: PageUser, q: Search = None, after: After = None
) -> HTMLResponse:
    return _list_page(request, user, "deals", q, after)


def _details(request: Request, kind: str, record_id: int) -> dict[str, Any]:
    """What a record page shows above its timeline (``CrmStore.get_*`` and the small reads)."""
    crm = _crm(request)
    if kind == "contact":
        contact = crm.get_contact(record_id)
        company = crm.get_company(contact.company_id) if contact.company_id else None
        deals = crm.deals_of_contact(record_id, status="open")
        return {"record": contact, "company": company, "deals": deals}
    if kind == "company":
        company = crm.get_company(record_id)
        return {"record": company, "contacts": crm.contacts_of_company(record_id)}
    if kind == "deal":
        deal = crm.get_deal(record_id)
        company = crm.get_company(deal.company_id) if deal.company_id else None
        contacts = [crm.get_contact(c) for c in deal.contact_ids[:CRM_PAGE]]
        return {"record": deal, "company": company, "contacts": contacts}
    return {"record": crm.get_activity(record_id)}


def record_page(
    request: Request,
    user: User,
    kind: str,
    record_id: int,
    before: str | None = None,
    *,
    extra: dict[str, Any] | None = None,
    status: int = 200,
) -> HTMLResponse:
    """A record's details, its edit form and its timeline: the messages ``user`` may see,
    newest first (an activity has no timeline). ``extra``: the edit form's context after a
    refused save (:mod:`correspond.web.crm_forms`)."""
    from correspond.web.crm_forms import form_context  # it imports this module

    crm = _crm(request)
    details = _details(request, kind, record_id)
    here = f"/crm/{_PLURALS[kind]}/{record_id}"
    context: dict[str, Any] = {"kind": kind, "here": here, "first_page": before is None}
    if kind != "activity":
        page = crm.timeline(kind, record_id, user, limit=CRM_PAGE, before=before)
        older = f"{here}?{urlencode({'before': page.next_cursor})}" if page.next_cursor else None
        context["timeline"] = page.items
        context["older"] = older
        context["activities"] = crm.activities_of(kind, record_id, limit=ACTIVITIES_SHOWN)
    context.update(details)
    # "Add activity": the record's people's addresses, within the list page's bound.
    people = [details["record"]] if kind == "contact" else details.get("contacts", [])
    prefill: list[str] = []
    for address in (e for c in people[:10] for e in c.emails[:3]):
        if sum(len(a) + 2 for a in prefill) + len(address) > PREFILL_CHARS:
            break
        prefill.append(address)
    context["activity_prefill"] = prefill
    context.update(form_context(request, kind, details["record"]))
    context.update(extra or {})
    if done := request.query_params.get("done"):
        context.setdefault("done", done if done in ("created", "saved") else None)
    return _render(request, f"crm_{kind}.html", context, user=user, status=status)


@router.get("/crm/contacts/{contact_id}")
def contact_page(
    request: Request, user: PageUser, contact_id: PathId, before: Cursor = None
) -> HTMLResponse:
    """A contact: name, addresses, company, open deals; its email timeline."""
    return record_page(request, user, "contact", contact_id, before)


@router.get("/crm/companies/{company_id}")
def company_page(
    request: Request, user: PageUser, company_id: PathId, before: Cursor = None
) -> HTMLResponse:
    """A company: domains, contacts; its email timeline."""
    return record_page(request, user, "company", company_id, before)


@router.get("/crm/deals/{deal_id}")
def deal_page(
    request: Request, user: PageUser, deal_id: PathId, before: Cursor = None
) -> HTMLResponse:
    """A deal: status, contacts, company; its email timeline."""
    return record_page(request, user, "deal", deal_id, before)


@router.get("/crm/activities")
def activities_page(
    request: Request,
    user: PageUser,
    q: Search = None,
    after: After = None,
    participants: Prefill = None,
) -> HTMLResponse:
    """Meetings, calls and tasks by id, searched by title or participant address
    (``GET /activities``' call); ``participants`` prefills the new one's (a record page's
    "Add activity")."""
    extra = {"form": {"participants": participants}} if participants else None
    return _list_page(request, user, "activities", q, after, extra=extra)


@router.get("/crm/activities/{activity_id}")
def activity_page(request: Request, user: PageUser, activity_id: PathId) -> HTMLResponse:
    """An activity: kind, title, time, participants."""
    return record_page(request, user, "activity", activity_id)


# --- the thread page's "Link to deal" ---------------------------------------------------------


def thread_deals_context(request: Request, thread_id: int) -> dict[str, Any]:
    """What the thread page's "Link to deal" form shows: the deals the thread is on, and the
    open deals to choose from (the :data:`DEAL_CHOICES` most recently changed)."""
    crm = _crm(request)
    linked = crm.deals_of_thread(thread_id)
    on = {d.id for d in linked}
    choices = [d for d in crm.deal_choices(limit=DEAL_CHOICES) if d.id not in on]
    return {"linked_deals": linked, "deal_choices": choices}


@router.post("/conversation/{thread_id}/deals")
@needs("full")
def link_thread_to_deal(
    request: Request, _user: PageUser, thread_id: PathId, form: SignedForm
) -> RedirectResponse:
    """Link the thread to the chosen deal by hand, or unlink it (``action=unlink``): the
    service of ``PUT``/``DELETE /threads/{id}/deals/{deal_id}``."""
    chosen = form.get("deal_id", "")
    if not chosen.isdigit() or not 1 <= int(chosen) <= MAX_ID:
        raise HTTPException(422, "Choose a deal from the list.")
    action = form.get("action", "link")
    if action not in ("link", "unlink"):
        raise HTTPException(422, "unknown action")
    _crm(request).set_thread_deal(thread_id, int(chosen), linked=action == "link")
    records_changed(request)
    return RedirectResponse(f"/conversation/{thread_id}?done={action}ed", status_code=303)
