"""What the sync hands the store for one new message: plain data, no SQL.

Kept apart from :mod:`correspond.store.messages` (which holds the SQL) so the parse workers of
the sync, which build these records, import neither SQLAlchemy nor the rest of the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import datetime
from typing import Any

from correspond.mail.threading import subject_keys

__all__ = ["AddressData", "AttachmentData", "MessageData", "storable", "storable_message"]

# Lone surrogates cannot be encoded as UTF-8, so no database takes them (see storable()).
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class AddressData:
    name: str | None
    email: str


@dataclass(frozen=True, slots=True)
class AttachmentData:
    """An attachment to store. ``blob_key`` None: metadata only (body left on the server)."""

    filename: str | None
    content_type: str
    size: int
    content_id: str | None = None
    inline: bool = False
    blob_key: str | None = None
    section: str | None = None


@dataclass(frozen=True, slots=True)
class MessageData:
    """Everything stored for a new message (built by the sync layer from the parsed mail)."""

    dedupe_key: str
    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    subject: str = ""
    normalized_subject: str = ""
    from_: AddressData | None = None
    sender: tuple[AddressData, ...] = ()
    reply_to: tuple[AddressData, ...] = ()
    to: tuple[AddressData, ...] = ()
    cc: tuple[AddressData, ...] = ()
    bcc: tuple[AddressData, ...] = ()
    date: datetime | None = None
    internaldate: datetime | None = None
    snippet: str = ""
    text: str | None = None
    html: str | None = None
    size: int | None = None
    raw_blob_key: str | None = None
    truncated: bool = False
    gm_msgid: int | None = None
    gm_thrid: int | None = None
    defects: tuple[str, ...] = ()
    direction: str = "inbound"
    attachments: tuple[AttachmentData, ...] = ()
    #: The original subject carried a reply/forward prefix (a threading hint).
    is_reply: bool = False
    #: The mailbox owner's addresses: not counted as a shared participant by threading.
    own_addresses: frozenset[str] = frozenset()
    #: Already passed through :func:`storable` (by the parse worker that built it), so the
    #: store's commit thread need not walk it again. Only set on what ``storable`` returned.
    storable_form: bool = field(default=False, compare=False, repr=False)

    @property
    def parent_ids(self) -> tuple[str, ...]:
        """Message-IDs this message points at: References then In-Reply-To, no repeats, never
        its own id."""
        out: list[str] = []
        for ref in (*self.references, *([self.in_reply_to] if self.in_reply_to else [])):
            if ref and ref != self.message_id and ref not in out:
                out.append(ref)
        return tuple(out)

    @property
    def participants(self) -> tuple[str, ...]:
        """Lower-cased addresses from From, To, Cc and Bcc, sorted (threading and timeline).

        Not Sender or Reply-To: mailing lists set those to the list, which would make every
        list message "share" a participant."""
        addrs = [self.from_] if self.from_ else []
        addrs += [*self.to, *self.cc, *self.bcc]
        return tuple(sorted({a.email.lower() for a in addrs if "@" in a.email}))

    @property
    def counterparts(self) -> tuple[str, ...]:
        """:attr:`participants` other than the mailbox owner (``own_addresses``): who the
        message is with. Threading's subject fallback needs one of these in common."""
        return tuple(p for p in self.participants if p not in self.own_addresses)

    @property
    def subject_keys(self) -> list[str]:
        """Where the subject fallback looks for this message (none without a Date)."""
        if self.date is None:
            return []
        return subject_keys(self.normalized_subject, self.counterparts)


def storable(value: Any) -> Any:
    """``value`` with every string made storable on every backend: NUL and lone surrogates
    become U+FFFD. Strings inside tuples, lists, dicts and dataclasses are fixed too; the very
    same object comes back when nothing needed fixing (measured ~25 µs for a message with
    60 KB of ASCII text and HTML, ~75 µs when non-ASCII: a few percent of parsing it).

    Mail carries NUL bytes (a base64 or quoted-printable text part that decodes to NUL; the
    shared corpus has several bounces like that): PostgreSQL refuses NUL in text and JSON,
    which failed the whole batch, and every retry failed the same way, so a folder never got
    past such a message. Both backends store the same replacement, so SQLite and PostgreSQL
    hold the same keys and text.
    """
    if isinstance(value, str):
        return _storable_text(value)
    if isinstance(value, tuple | list):
        items = [storable(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    if isinstance(value, dict):
        fixed = {storable(k): storable(v) for k, v in value.items()}
        same = all(a is b and fixed[a] is v for (a, v), b in zip(value.items(), fixed, strict=True))
        return value if same else fixed
    if is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in fields(value):
            old = getattr(value, f.name)
            new = storable(old)
            if new is not old:
                changes[f.name] = new
        return replace(value, **changes) if changes else value
    return value


def storable_message(data: MessageData) -> MessageData:
    """``data`` in :func:`storable` form, marked so (``storable_form``): the parse workers call
    this, so the store's commit thread, which shares the GIL with fetching, skips the walk."""
    if data.storable_form:
        return data
    return storable(replace(data, storable_form=True))  # type: ignore[no-any-return]


def _storable_text(value: str) -> str:
    # Fast paths first (this runs on every text of every message): ``in`` is a memchr, and
    # ASCII text cannot hold a surrogate; only non-ASCII text pays for a UTF-8 encode.
    fixed = value.replace("\x00", "\ufffd") if "\x00" in value else value
    if not fixed.isascii():
        try:
            fixed.encode("utf-8")
        except UnicodeEncodeError:
            fixed = _SURROGATES.sub("\ufffd", fixed)
    return fixed
