"""The search query language and the text a message is indexed under: pure, no IO.

A query is what a person types in a mail client's search box::

    from:ann@x.com has:attachment invoice -draft "quarterly review" before:2024-07-01

- free words must all match (AND), anywhere: subject, participants (names and addresses),
  body text, attachment names; ``"quoted phrases"`` match those words in that order; a word
  ending in ``*`` matches as a prefix (``invo*``);
- ``from:``, ``to:``, ``cc:``, ``bcc:``, ``subject:``, ``filename:`` limit a word or a quoted
  phrase to one field (``from:ann@x.com`` is the phrase ``ann x com`` in the sender);
- ``has:attachment``, ``is:unread`` / ``is:read``, ``is:starred``, ``in:FOLDER`` (a folder's
  display name or role, ``in:inbox``, ``in:"Project X"``), ``before:YYYY-MM-DD`` (sorted
  before that day, UTC), ``after:YYYY-MM-DD`` (on that day or later);
- ``-`` before any of these negates it (``-word``, ``-from:bob``, ``-has:attachment``).

An unknown ``x:`` is a word (``x`` and what follows), never an error; the only errors
(:class:`SearchQueryError`, a 422 on the API) are a malformed date and a query past the bounds
below. Words are cut into *tokens* by :func:`tokens` (letters and digits, case and accents
folded), the same function that cuts the indexed text (:func:`search_document`), so a
backend's own parser never sees user input: nothing typed can become an FTS5 or tsquery
operator.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

from correspond.errors import ConfigError

__all__ = [
    "FIELDS",
    "MAX_QUERY_CHARS",
    "MAX_TERMS",
    "MAX_TOKENS",
    "SearchDocument",
    "SearchQuery",
    "SearchQueryError",
    "TextTerm",
    "parse_query",
    "search_document",
    "tokens",
]

#: Longest query accepted (characters); longer is a :class:`SearchQueryError`.
MAX_QUERY_CHARS = 1000
#: Most terms (words, phrases, operators) one query may hold.
MAX_TERMS = 32
#: Most tokens all the text terms of one query may hold together.
MAX_TOKENS = 64
#: Longest ``in:`` folder name.
MAX_FOLDER_CHARS = 200
#: What one message's index entry holds at most: body characters read, tokens kept.
MAX_BODY_CHARS = 100_000
MAX_DOCUMENT_TOKENS = 16_000
#: Longer tokens (base64 runs, hashes) are not indexed: no word is that long.
MAX_TOKEN_CHARS = 100

Field = Literal["subject", "from", "to", "cc", "bcc", "body", "filename"]
#: The fields of an indexed message, in index column order.
FIELDS: tuple[Field, ...] = ("subject", "from", "to", "cc", "bcc", "body", "filename")
_FIELD_OPERATORS: dict[str, Field] = {
    "from": "from",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "subject": "subject",
    "filename": "filename",
}
_OPERATORS = frozenset({*_FIELD_OPERATORS, "has", "is", "in", "before", "after"})


class SearchQueryError(ConfigError):
    """A query that cannot be searched: a malformed date, or past the bounds."""


@dataclass(frozen=True, slots=True)
class TextTerm:
    """Tokens that must appear in this order (one token: a word), in ``field`` or anywhere
    (None); ``prefix``: the last token matches as a prefix; ``negated``: must not appear."""

    tokens: tuple[str, ...]
    field: Field | None = None
    negated: bool = False
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class SearchQuery:
    terms: tuple[TextTerm, ...] = ()
    #: None: either way.
    has_attachment: bool | None = None
    unread: bool | None = None
    starred: bool | None = None
    #: Folders the message must be in (each of them) / must not be in (any of them), folded.
    in_folders: tuple[str, ...] = ()
    not_in_folders: tuple[str, ...] = ()
    #: Sorted before this instant / at or after it (UTC midnights).
    before: datetime | None = None
    after: datetime | None = None

    @property
    def positive_terms(self) -> tuple[TextTerm, ...]:
        return tuple(t for t in self.terms if not t.negated)

    @property
    def negative_terms(self) -> tuple[TextTerm, ...]:
        return tuple(t for t in self.terms if t.negated)


# --- tokens -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")
# C0, DEL and C1 controls (NUL included): separators, never part of a term.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _fold(text: str) -> str:
    """Case folded, compatibility forms unified, accents dropped (``Café`` -> ``cafe``)."""
    if text.isascii():
        return text.lower()  # the same, without a Python step per character
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def tokens(text: str) -> list[str]:
    """The searchable tokens of ``text``: runs of letters and digits, folded (:func:`_fold`).
    ``ann@x.com`` is ``["ann", "x", "com"]``; punctuation and operators are never tokens."""
    return _TOKEN.findall(_fold(text))


# --- parsing ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Builder:
    terms: list[TextTerm] = field(default_factory=list)
    token_count: int = 0
    term_count: int = 0
    flags: dict[str, bool] = field(default_factory=dict)
    in_folders: list[str] = field(default_factory=list)
    not_in_folders: list[str] = field(default_factory=list)
    before: datetime | None = None
    after: datetime | None = None

    def count(self) -> None:
        self.term_count += 1
        if self.term_count > MAX_TERMS:
            raise SearchQueryError(f"a query may hold at most {MAX_TERMS} terms")

    def text(self, raw: str, fld: Field | None, negated: bool) -> None:
        found = tuple(tokens(raw))
        if not found:
            return  # nothing searchable ("***", a lone "-"): ignored
        self.count()
        self.token_count += len(found)
        if self.token_count > MAX_TOKENS:
            raise SearchQueryError(f"a query may hold at most {MAX_TOKENS} words")
        prefix = raw.rstrip('"').endswith("*") and _fold(raw.rstrip('"*'))[-1:].isalnum()
        self.terms.append(TextTerm(found, fld, negated, prefix))


def _parse_date(name: str, value: str) -> datetime:
    match = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", value)
    try:
        if match is None:
            raise ValueError(value)
        day = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise SearchQueryError(f"{name}: needs a date as YYYY-MM-DD") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _chunks(text: str) -> Iterator[tuple[bool, str | None, str, bool]]:
    """(negated, operator or None, value, value_was_quoted) for each term of ``text``."""
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        negated = text[i] == "-" and i + 1 < n and not text[i + 1].isspace()
        if negated:
            i += 1
        op = None
        m = re.match(r"([A-Za-z]+):(?=\S)", text[i:])
        if m and m[1].lower() in _OPERATORS:
            op = m[1].lower()
            i += m.end()
        if text[i] == '"':
            end = text.find('"', i + 1)
            end = n if end < 0 else end
            value = text[i + 1 : end]
            i = end + 1
            yield negated, op, value, True
            continue
        j = i
        while j < n and not text[j].isspace():
            j += 1
        yield negated, op, text[i:j], False
        i = j


def parse_query(text: str) -> SearchQuery:
    """``text`` as a :class:`SearchQuery`; :class:`SearchQueryError` for a malformed date or a
    query past :data:`MAX_QUERY_CHARS`, :data:`MAX_TERMS` or :data:`MAX_TOKENS`."""
    if len(text) > MAX_QUERY_CHARS:
        raise SearchQueryError(f"a query may be at most {MAX_QUERY_CHARS} characters long")
    b = _Builder()
    for negated, op, value, quoted in _chunks(_CONTROLS.sub(" ", text)):
        if op is None:
            b.text(value, None, negated)
        elif op in _FIELD_OPERATORS:
            b.text(value, _FIELD_OPERATORS[op], negated)
        elif op in ("before", "after"):
            b.count()
            when = _parse_date(op, value)
            # "-before:D" is "after:D" and the other way round.
            if (op == "before") != negated:
                b.before = when if b.before is None else min(b.before, when)
            else:
                b.after = when if b.after is None else max(b.after, when)
        elif op == "in":
            folder = " ".join(value.split())
            if not folder:
                continue
            if len(folder) > MAX_FOLDER_CHARS:
                raise SearchQueryError(f"in: takes a folder name of at most {MAX_FOLDER_CHARS}")
            b.count()
            (b.not_in_folders if negated else b.in_folders).append(folder.casefold())
        else:
            flag = _FLAG_VALUES.get((op, value.lower()))
            if flag is None or quoted:
                b.text(f"{op}:{value}", None, negated)  # has:pizza is a word, as x:y is
                continue
            b.count()
            name, wanted = flag
            b.flags[name] = wanted != negated
    return SearchQuery(
        terms=tuple(b.terms),
        has_attachment=b.flags.get("has_attachment"),
        unread=b.flags.get("unread"),
        starred=b.flags.get("starred"),
        in_folders=tuple(dict.fromkeys(b.in_folders)),
        not_in_folders=tuple(dict.fromkeys(b.not_in_folders)),
        before=b.before,
        after=b.after,
    )


_FLAG_VALUES: dict[tuple[str, str], tuple[str, bool]] = {
    ("has", "attachment"): ("has_attachment", True),
    ("has", "attachments"): ("has_attachment", True),
    ("is", "unread"): ("unread", True),
    ("is", "read"): ("unread", False),
    ("is", "starred"): ("starred", True),
    ("is", "flagged"): ("starred", True),
    ("is", "unstarred"): ("starred", False),
}


# --- documents ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchDocument:
    """A message's tokens per field (:data:`FIELDS`), at most :data:`MAX_DOCUMENT_TOKENS`."""

    fields: Mapping[Field, tuple[str, ...]]

    def text(self, fld: Field) -> str:
        return " ".join(self.fields.get(fld, ()))


_HEADERS_FIRST: tuple[Field, ...] = ("subject", "from", "to", "cc", "bcc", "filename", "body")
_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)


def _html_text(html: str) -> str:
    """Words of an HTML body (tags dropped; entities are cut into tokens like any text)."""
    return _TAG.sub(" ", html)


def _addresses(items: Iterable[Mapping[str, Any]] | None) -> str:
    return " ".join(f"{i.get('name') or ''} {i.get('email') or ''}" for i in items or ())


def search_document(
    *,
    subject: str | None,
    from_name: str | None,
    from_email: str | None,
    to: Sequence[Mapping[str, Any]] | None,
    cc: Sequence[Mapping[str, Any]] | None,
    bcc: Sequence[Mapping[str, Any]] | None,
    text_body: str | None,
    html_body: str | None,
    filenames: Iterable[str | None],
) -> SearchDocument:
    """What a message is found by. The body is the text part (else the HTML's words), its
    first :data:`MAX_BODY_CHARS` characters; the header fields come first, so the cap of
    :data:`MAX_DOCUMENT_TOKENS` only ever shortens the body."""
    body = text_body if text_body else _html_text(html_body or "")
    raw: dict[Field, str] = {
        "subject": subject or "",
        "from": f"{from_name or ''} {from_email or ''}",
        "to": _addresses(to),
        "cc": _addresses(cc),
        "bcc": _addresses(bcc),
        "filename": " ".join(f for f in filenames if f),
        "body": body[:MAX_BODY_CHARS],
    }
    left = MAX_DOCUMENT_TOKENS
    out: dict[Field, tuple[str, ...]] = {}
    for fld in _HEADERS_FIRST:
        found = [t for t in tokens(raw[fld]) if len(t) <= MAX_TOKEN_CHARS][:left]
        left -= len(found)
        out[fld] = tuple(found)
    return SearchDocument(out)
