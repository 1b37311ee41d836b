"""What the sync hands the store for one new message: plain data, no SQL.

Kept apart from :mod:`correspond.store.messages` (which holds the SQL) so the parse workers of
the sync, which build these records, import neither SQLAlchemy nor the rest of the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from correspond.mail.threading import subject_keys

__all__ = ["AddressData", "AttachmentData", "MessageData"]


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
