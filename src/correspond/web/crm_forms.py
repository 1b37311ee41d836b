"""Creating, changing and deleting CRM records from the web: contacts, companies, deals and
activities.

Each list page (``/crm/contacts`` ...) carries a "New ..." form that posts to the list's path;
each record page an edit form that posts to the record's path, and a "Delete..." link to a
confirmation page (``GET .../delete``) whose form alone deletes (``POST .../delete``). The
store calls are the JSON API's (``CrmStore.create_*``, ``update_*``, ``delete_*``: the calls of
``POST``/``PATCH``/``DELETE /contacts`` ...), and after each change this process's linker is
woken (``records_changed``, as the API does) so the timelines fill. Records are the
organisation's: every signed-in user may change them, as in the API (``contact_id`` and the
other record ids are ``api.security``'s shared parameters). A refused change shows its sentence
beside the field that caused it (an address already on another contact, a bad address or
domain, a domain on another company, a missing name), the form kept, 422.

Forms are read with every value of each field (a deal's contacts are a multiple select), and
carry the session's CSRF token (403 without it). Written without ``from __future__ import
annotations``: the routes are made per kind by :func:`_routes`, and FastAPI reads their
annotations, which must be the real classes.
"""

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from correspond.api.routes.crm import records_changed
from correspond.api.security import MAX_ID
from correspond.errors import ConfigError, Conflict
from correspond.rules.crm import ACTIVITY_KINDS, DEAL_STATUSES
from correspond.store.crm import CrmStore, addresses, domains
from correspond.web.crm_pages import _KINDS, _PLURALS, _crm, _list_page, record_page
from correspond.web.pages import PageUser, _render, router, signed_multi_form

__all__ = ["CHOICES", "form_context"]

#: At most this many companies (and contacts) offered in a form's select, the first by id.
CHOICES = 200
#: A form's fields: a deal's contacts are one field each (the API's limit: 1,000).
_MAX_FIELDS = 1100
_MAX_NAME = 500
_MAX_ADDRESSES = 100
_SPLIT = re.compile(r"[\s,;]+")
_TITLES = {"contact": "Contact", "company": "Company", "deal": "Deal", "activity": "Activity"}


async def crm_form(request: Request, _user: PageUser) -> dict[str, list[str]]:
    """The form's fields, every value of each, refused (403) without the session's token."""
    fields = await signed_multi_form(request, max_fields=_MAX_FIELDS)
    return {k: [v[:4096] for v in values] for k, values in fields.items()}


CrmForm = Annotated[dict[str, list[str]], Depends(crm_form)]


def _one(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def _split(text: str) -> list[str]:
    return [part for part in _SPLIT.split(text) if part]


def _id_or_none(value: str, field: str, errors: dict[str, str], what: str) -> int | None:
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= MAX_ID:
        errors[field] = f"Choose a {what} from the list."
        return None
    return int(value)


# --- a form's values and the store's fields ---------------------------------------------------


def _kept(kind: str, form: dict[str, list[str]]) -> dict[str, Any]:
    """What was typed, to show again."""
    if kind == "deal":
        return {
            "name": _one(form, "name"),
            "status": _one(form, "status"),
            "company_id": _one(form, "company_id"),
            "contact_ids": [v for v in form.get("contact_ids", []) if v],
        }
    names = {
        "contact": ("name", "emails", "company_id"),
        "company": ("name", "domains"),
        "activity": ("kind", "title", "at", "participants"),
    }[kind]
    kept = {name: (form.get(name) or [""])[0] for name in names}
    if kind == "activity":
        # Shown again in UTC, as a saved time is (the page's script shows it in local time).
        when = _time(form)
        if when is not None:
            kept["at"] = when.strftime("%Y-%m-%dT%H:%M")
    return kept


def _time(form: dict[str, list[str]]) -> datetime | None:
    """The activity's time in UTC: the form's ``datetime-local`` in the browser's zone, whose
    offset the page's script sends as ``tz_offset`` (minutes, as JavaScript's
    ``getTimezoneOffset``; without script none: the time is UTC). ValueError for a bad one."""
    at = _one(form, "at")
    if not at:
        return None
    when = datetime.fromisoformat(at)
    if when.tzinfo is not None:
        return when.astimezone(UTC)
    offset = _one(form, "tz_offset")
    minutes = int(offset) if offset.lstrip("-").isdigit() and abs(int(offset)) <= 24 * 60 else 0
    return when.replace(tzinfo=UTC) + timedelta(minutes=minutes)


def _values(record: Any, kind: str) -> dict[str, Any]:
    """A record as its edit form's values."""
    if kind == "contact":
        company = str(record.company_id or "")
        return {"name": record.name, "emails": "\n".join(record.emails), "company_id": company}
    if kind == "company":
        return {"name": record.name, "domains": "\n".join(record.domains)}
    if kind == "deal":
        return {
            "name": record.name,
            "status": record.status,
            "company_id": str(record.company_id or ""),
            "contact_ids": [str(c) for c in record.contact_ids],
        }
    at = record.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if record.at else ""
    return {
        "kind": record.kind,
        "title": record.title,
        "at": at,
        "participants": "\n".join(record.participants),
    }


def _company(form: dict[str, list[str]], errors: dict[str, str]) -> int | None:
    return _id_or_none(_one(form, "company_id"), "company_id", errors, "company")


def _addresses(text: str, field: str, errors: dict[str, str]) -> list[str]:
    parts = _split(text)
    if len(parts) > _MAX_ADDRESSES:
        errors[field] = f"At most {_MAX_ADDRESSES} addresses."
        return []
    try:
        return addresses(parts)
    except ConfigError as exc:
        errors[field] = f"{exc}."
        return []


def _name(text: str, field: str, errors: dict[str, str], *, required: str | None) -> str:
    name = " ".join(text.split())
    if len(name) > _MAX_NAME:
        errors[field] = f"At most {_MAX_NAME} characters."
    elif required and not name:
        errors[field] = required
    return name


def _fields(kind: str, form: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, str]]:
    """The store's keyword arguments from the form, and the errors found before the store is
    asked (by field). The checks are the API's schemas' and the store's own functions."""
    errors: dict[str, str] = {}
    fields: dict[str, Any] = {}
    if kind == "contact":
        fields["name"] = _name(_one(form, "name"), "name", errors, required=None)
        fields["emails"] = _addresses(_one(form, "emails"), "emails", errors)
        fields["company_id"] = _company(form, errors)
    elif kind == "company":
        required = "A company needs a name."
        fields["name"] = _name(_one(form, "name"), "name", errors, required=required)
        parts = _split(_one(form, "domains"))
        try:
            fields["domains"] = domains(parts[: _MAX_ADDRESSES + 1])
            if len(parts) > _MAX_ADDRESSES:
                errors["domains"] = f"At most {_MAX_ADDRESSES} domains."
        except ConfigError as exc:
            errors["domains"] = f"{exc}."
    elif kind == "deal":
        fields["name"] = _name(_one(form, "name"), "name", errors, required="A deal needs a name.")
        status = _one(form, "status") or "open"
        if status not in DEAL_STATUSES:
            errors["status"] = "The status is open, won or lost."
        fields["status"] = status
        fields["company_id"] = _company(form, errors)
        chosen = [v for v in form.get("contact_ids", []) if v]
        if any(not v.isdigit() or not 1 <= int(v) <= MAX_ID for v in chosen):
            errors["contact_ids"] = "Choose contacts from the list."
        else:
            fields["contact_ids"] = sorted({int(v) for v in chosen})
    else:
        what = _one(form, "kind")
        if what not in ACTIVITY_KINDS:
            errors["kind"] = "An activity is a meeting, a call or a task."
        fields["kind"] = what
        fields["title"] = _name(
            _one(form, "title"), "title", errors, required="An activity needs a title."
        )
        try:
            fields["at"] = _time(form)
        except ValueError:
            errors["at"] = "Give a date and a time, e.g. 2030-01-31 09:00."
        fields["participants"] = _addresses(_one(form, "participants"), "participants", errors)
    return fields, errors


_OWNER = re.compile(r" belongs to (contact|company) (\d+)$")


def _store_error(kind: str, exc: ConfigError) -> dict[str, str]:
    """The store's refusal by the field that caused it (the checks above catch the rest)."""
    text = str(exc)
    if isinstance(exc, Conflict):
        field = {"contact": "emails", "company": "domains"}.get(kind, "form")
        owner = _OWNER.search(text)
        if owner is not None:
            what, number = owner.group(1), owner.group(2)
            text = f"{text[: owner.start()]} is already on another {what} (#{number})"
            # The page links the other record beside the sentence.
            return {field: f"{text}.", f"{field}_link": f"/crm/{_PLURALS[what]}/{number}"}
        return {field: f"{text}."}
    for start, field in (
        ("no company", "company_id"),
        ("no contact", "contact_ids"),
        ("not an e-mail address", "participants" if kind == "activity" else "emails"),
        ("not a domain", "domains"),
        ("status", "status"),
        ("kind", "kind"),
    ):
        if text.startswith(start):
            return {field: f"{text}."}
    if "needs a name" in text:
        return {"name": f"{text}."}
    if "title" in text:
        return {"title": f"{text}."}
    return {"form": f"{text}."}


# --- what the forms offer -----------------------------------------------------------------------


def form_context(request: Request, kind: str, record: Any) -> dict[str, Any]:
    """The choices of ``kind``'s form (companies; a deal's contacts, its own included) and the
    record's values (``record`` None: a new one's, empty)."""
    crm: CrmStore = _crm(request)
    context: dict[str, Any] = {
        "form": _values(record, kind) if record is not None else {},
        "errors": {},
    }
    if kind in ("contact", "deal"):
        context["company_choices"] = crm.list_companies(limit=CHOICES).items
    if kind == "deal":
        contacts = crm.list_contacts(limit=CHOICES).items
        known = {c.id for c in contacts}
        if record is not None:
            contacts += [crm.get_contact(c) for c in record.contact_ids if c not in known]
        context["contact_choices"] = contacts
    return context


# --- the routes, one set per kind -----------------------------------------------------------


def _routes(kind: str) -> None:
    plural = _PLURALS[kind]
    Rid = Annotated[int, Path(ge=1, le=MAX_ID, alias=f"{kind}_id")]

    def refused(
        request: Request, user: Any, record_id: int | None, form: dict[str, Any], errors: Any
    ) -> HTMLResponse:
        extra = {"form": form, "errors": errors, "editing": True}
        if record_id is None:
            return _list_page(request, user, plural, None, None, extra=extra, status=422)
        return record_page(request, user, kind, record_id, extra=extra, status=422)

    def create(request: Request, user: PageUser, form: CrmForm) -> Response:
        fields, errors = _fields(kind, form)
        if not errors:
            try:
                made = getattr(_crm(request), f"create_{kind}")(**fields)
            except ConfigError as exc:
                errors = _store_error(kind, exc)
        if errors:
            return refused(request, user, None, _kept(kind, form), errors)
        records_changed(request)
        return RedirectResponse(f"/crm/{plural}/{made.id}?done=created", status_code=303)

    def save(request: Request, user: PageUser, record_id: Rid, form: CrmForm) -> Response:
        crm = _crm(request)
        getattr(crm, f"get_{kind}")(record_id)  # NotFound (404) first
        fields, errors = _fields(kind, form)
        if not errors:
            try:
                getattr(crm, f"update_{kind}")(record_id, **fields)
            except ConfigError as exc:
                errors = _store_error(kind, exc)
        if errors:
            return refused(request, user, record_id, _kept(kind, form), errors)
        records_changed(request)
        return RedirectResponse(f"/crm/{plural}/{record_id}?done=saved", status_code=303)

    def confirm_delete(request: Request, user: PageUser, record_id: Rid) -> HTMLResponse:
        record = getattr(_crm(request), f"get_{kind}")(record_id)
        context = {
            "kind": kind,
            "plural": plural,
            "title": _TITLES[kind],
            "record": record,
        }
        return _render(request, "crm_delete.html", context, user=user)

    def delete(request: Request, _user: PageUser, record_id: Rid, _form: CrmForm) -> Response:
        getattr(_crm(request), f"delete_{kind}")(record_id)
        records_changed(request)
        return RedirectResponse(f"/crm/{plural}?done=deleted", status_code=303)

    create.__doc__ = f"Create a {kind} (``POST /{plural}``' store call)."
    save.__doc__ = f"Change a {kind} (``PATCH /{plural}/{{id}}``' store call)."
    confirm_delete.__doc__ = f"What deleting this {kind} does, and the form that does it."
    delete.__doc__ = f"Delete the {kind} (``DELETE /{plural}/{{id}}``' store call)."
    base = f"/crm/{plural}"
    one = f"{base}/{{{kind}_id}}"
    router.add_api_route(base, create, methods=["POST"], name=f"web_create_{kind}")
    router.add_api_route(one, save, methods=["POST"], name=f"web_save_{kind}")
    router.add_api_route(
        f"{one}/delete", confirm_delete, methods=["GET"], name=f"web_confirm_delete_{kind}"
    )
    router.add_api_route(f"{one}/delete", delete, methods=["POST"], name=f"web_delete_{kind}")


for _kind in _KINDS.values():
    _routes(_kind)
