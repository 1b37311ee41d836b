"""Merge fields in templates: ``{{contact.first_name}}`` and its kin, rendered in a sandbox.

A tiny renderer of its own, not a template language: the only thing it does is replace
``{{ kind.field }}`` (or ``{{ kind.field | "fallback" }}``) with a value from a flat dict of
the documented fields (:data:`FIELDS`). No attribute access, no expressions, no loops, no
filters, no includes: nothing in a template can reach an object, so nothing can leak or run.

- A field that is not documented is refused when the template is saved
  (:func:`check_template`) and when it is rendered (:class:`TemplateError`).
- A documented field without a value for this message (no contact chosen, a contact without a
  first name) is a :class:`MissingMergeFields` naming every such field, raised before
  anything is sent: never a blank "Dear ,". A ``| "fallback"`` is used instead when given.
- Values inserted into an HTML body are HTML-escaped (a signature's line breaks become
  ``<br>``); in a subject or a text body they go as they are (the subject is cleaned of line
  breaks by :mod:`correspond.mail.compose` like any subject).

Bounded: a template part is at most :data:`MAX_TEMPLATE_CHARS` characters with at most
:data:`MAX_FIELDS_USED` fields.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

from correspond.errors import ConfigError

__all__ = [
    "FIELDS",
    "MAX_TEMPLATE_CHARS",
    "MissingMergeFields",
    "RenderedTemplate",
    "TemplateError",
    "check_template",
    "fields_used",
    "merge_values",
    "render_part",
    "render_template",
    "split_name",
]

#: Every merge field, with what it holds. The values come from the records the caller names
#: (a contact, its company, a deal, the signed-in user and the identity sending).
FIELDS: Mapping[str, str] = {
    "contact.first_name": "the contact's first name (the first word of their name)",
    "contact.last_name": "the contact's last name (the rest of their name)",
    "contact.name": "the contact's full name",
    "contact.email": "the contact's first address",
    "company.name": "the company's name (the deal's, else the contact's)",
    "company.domain": "the company's first domain",
    "deal.name": "the deal's name",
    "deal.status": "the deal's status (open, won, lost)",
    "user.name": "the signed-in user's display name",
    "user.email": "the signed-in user's address",
    "user.signature": "the signature of the identity sending (else the user's default one)",
    "sender.name": "the display name of the identity sending",
    "sender.email": "the address of the identity sending",
}

MAX_TEMPLATE_CHARS = 1_000_000
MAX_FIELDS_USED = 1_000
MAX_FALLBACK = 200

_FIELD = re.compile(
    r"\{\{\s*([a-z_]{1,40}\.[a-z_]{1,40})\s*(?:\|\s*\"([^\"{}\r\n]{0,200})\"\s*)?\}\}"
)
_OPEN = re.compile(r"\{\{")


class TemplateError(ConfigError):
    """A template that cannot be rendered: a field that is not documented, a ``{{`` that is
    not a merge field, or too large. ``field`` names the template part (``subject``,
    ``text``, ``html``)."""

    def __init__(self, message: str, *, part: str = "") -> None:
        super().__init__(message)
        self.part = part


class MissingMergeFields(ConfigError):
    """Documented fields with no value for this message (and no fallback): ``fields``, in
    the order they first appear."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(
            "no value for merge field"
            + ("s " if len(fields) > 1 else " ")
            + ", ".join(f"{{{{{f}}}}}" for f in fields)
            + ": choose the record that has it, fill it in, or give a fallback as "
            '{{field | "text"}}'
        )
        self.fields = fields


def fields_used(template: str, *, part: str = "text") -> list[str]:
    """The merge fields ``template`` uses, once each, in order; :class:`TemplateError` for
    anything between ``{{`` and ``}}`` that is not a documented field."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"the template's {part} is longer than {MAX_TEMPLATE_CHARS} characters", part=part
        )
    used: dict[str, None] = {}
    position = 0
    count = 0
    for opening in _OPEN.finditer(template):
        if opening.start() < position:
            continue
        match = _FIELD.match(template, opening.start())
        if match is None:
            snippet = template[opening.start() : opening.start() + 40].split("}}")[0]
            raise TemplateError(
                f"{part}: {snippet!r}... is not a merge field (use {{{{kind.field}}}}, e.g. "
                "{{contact.first_name}})",
                part=part,
            )
        name = match.group(1)
        if name not in FIELDS:
            raise TemplateError(
                f"{part}: {{{{{name}}}}} is not a merge field; the fields are " + ", ".join(FIELDS),
                part=part,
            )
        count += 1
        if count > MAX_FIELDS_USED:
            raise TemplateError(f"{part}: more than {MAX_FIELDS_USED} merge fields", part=part)
        used.setdefault(name, None)
        position = match.end()
    return list(used)


def check_template(**parts: str | None) -> None:
    """Refuse a template (at save) whose parts use anything but documented fields."""
    for part, text in parts.items():
        if text is not None:
            fields_used(text, part=part)


def _value(values: Mapping[str, str | None], name: str) -> str | None:
    value = values.get(name)
    return value if value is not None and value.strip() else None


def render_part(
    template: str, values: Mapping[str, str | None], *, part: str = "text", as_html: bool = False
) -> str:
    """``template`` with each field replaced by its value (HTML-escaped when ``as_html``).
    :class:`MissingMergeFields` names every field without a value or fallback."""
    fields_used(template, part=part)
    missing = [
        m.group(1)
        for m in _FIELD.finditer(template)
        if m.group(2) is None and _value(values, m.group(1)) is None
    ]
    if missing:
        raise MissingMergeFields(list(dict.fromkeys(missing)))

    def replace(match: re.Match[str]) -> str:
        value = _value(values, match.group(1))
        text = value if value is not None else (match.group(2) or "")
        if not as_html:
            return text
        escaped = html.escape(text)
        return escaped.replace("\r\n", "\n").replace("\n", "<br>\n")

    return _FIELD.sub(replace, template)


@dataclass(frozen=True, slots=True)
class RenderedTemplate:
    subject: str
    text: str | None
    html: str | None


def render_template(
    subject: str, text: str | None, html_body: str | None, values: Mapping[str, str | None]
) -> RenderedTemplate:
    """Every part rendered; the missing fields of all parts are reported together."""
    missing: list[str] = []
    out: dict[str, str | None] = {}
    for part, template, as_html in (
        ("subject", subject, False),
        ("text", text, False),
        ("html", html_body, True),
    ):
        if template is None:
            out[part] = None
            continue
        try:
            out[part] = render_part(template, values, part=part, as_html=as_html)
        except MissingMergeFields as exc:
            missing.extend(f for f in exc.fields if f not in missing)
    if missing:
        raise MissingMergeFields(missing)
    return RenderedTemplate(subject=out["subject"] or "", text=out["text"], html=out["html"])


def split_name(name: str) -> tuple[str | None, str | None]:
    """First and last name from a full name: the first word, and the rest."""
    words = name.split()
    if not words:
        return None, None
    return words[0], (" ".join(words[1:]) or None)


def merge_values(
    *,
    contact_name: str | None = None,
    contact_email: str | None = None,
    company_name: str | None = None,
    company_domain: str | None = None,
    deal_name: str | None = None,
    deal_status: str | None = None,
    user_name: str | None = None,
    user_email: str | None = None,
    signature: str | None = None,
    sender_name: str | None = None,
    sender_email: str | None = None,
) -> dict[str, str | None]:
    """The values of :data:`FIELDS` from the records' plain values (None: no value)."""
    first, last = split_name(contact_name or "")
    return {
        "contact.first_name": first,
        "contact.last_name": last,
        "contact.name": contact_name or None,
        "contact.email": contact_email,
        "company.name": company_name or None,
        "company.domain": company_domain,
        "deal.name": deal_name or None,
        "deal.status": deal_status,
        "user.name": user_name or None,
        "user.email": user_email,
        "user.signature": signature or None,
        "sender.name": sender_name or None,
        "sender.email": sender_email,
    }
