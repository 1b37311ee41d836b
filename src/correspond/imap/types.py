"""Plain data that the IMAP protocol module produces and the client returns.

Every type is a small frozen dataclass (RFC 3501 / RFC 9051 grammar names in the docstrings).
Mailbox names are kept twice: ``*_raw`` is the exact bytes the server sent (modified UTF-7, or
UTF-8 under UTF8=ACCEPT, or whatever a broken server sent), used byte-exact in later commands;
the plain name is decoded for display only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from correspond.imap.mutf7 import decode_mutf7

__all__ = [
    "Address",
    "AppendUid",
    "BodyPart",
    "BodyStructure",
    "CapabilityResponse",
    "ContinuationRequest",
    "CopyUid",
    "ESearchResponse",
    "EnabledResponse",
    "Envelope",
    "ExistsResponse",
    "ExpungeResponse",
    "FetchResponse",
    "FlagsResponse",
    "GenericUntagged",
    "IdResponse",
    "ListResponse",
    "Multipart",
    "RecentResponse",
    "Response",
    "ResponseCode",
    "SearchResponse",
    "StatusDataResponse",
    "StatusResponse",
    "TaggedResponse",
    "VanishedResponse",
]


@dataclass(frozen=True, slots=True)
class CopyUid:
    """``[COPYUID uidvalidity src-uids dst-uids]`` (RFC 4315 §3), sets expanded in order."""

    uidvalidity: int
    source_uids: tuple[int, ...]
    dest_uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AppendUid:
    """``[APPENDUID uidvalidity uid-set]`` (RFC 4315 §3)."""

    uidvalidity: int
    uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ResponseCode:
    """A response code in brackets (RFC 3501 §7.1), name upper-cased.

    ``value``: int for UIDVALIDITY, UIDNEXT, UNSEEN, HIGHESTMODSEQ, APPENDLIMIT;
    tuple[str, ...] for PERMANENTFLAGS, CAPABILITY, BADCHARSET; CopyUid / AppendUid;
    None for ALERT, TRYCREATE, READ-WRITE, READ-ONLY, NOMODSEQ, CLOSED...; otherwise the raw
    text after the name as str.
    """

    name: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class TaggedResponse:
    """``tag OK|NO|BAD [code] text`` completing a command."""

    tag: str
    status: Literal["OK", "NO", "BAD"]
    code: ResponseCode | None
    text: str


@dataclass(frozen=True, slots=True)
class ContinuationRequest:
    """``+ text``: the server waits for a literal, an AUTHENTICATE step, or is idling."""

    text: str


@dataclass(frozen=True, slots=True)
class StatusResponse:
    """Untagged ``* OK|NO|BAD|BYE|PREAUTH [code] text`` (greeting, alerts, codes)."""

    status: Literal["OK", "NO", "BAD", "BYE", "PREAUTH"]
    code: ResponseCode | None
    text: str


@dataclass(frozen=True, slots=True)
class CapabilityResponse:
    """``* CAPABILITY ...`` (RFC 3501 §7.2.1); names upper-cased."""

    capabilities: frozenset[str]


@dataclass(frozen=True, slots=True)
class EnabledResponse:
    """``* ENABLED ...`` (RFC 5161)."""

    capabilities: frozenset[str]


@dataclass(frozen=True, slots=True)
class ExistsResponse:
    count: int


@dataclass(frozen=True, slots=True)
class RecentResponse:
    count: int


@dataclass(frozen=True, slots=True)
class ExpungeResponse:
    """``* n EXPUNGE``: sequence number n is gone; later numbers shift down by one."""

    seq: int


@dataclass(frozen=True, slots=True)
class FlagsResponse:
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListResponse:
    """``* LIST|LSUB (flags) delimiter name`` (RFC 3501 §7.2.2, RFC 6154 special-use flags).

    ``flags`` keep the server's spelling; compare them case-insensitively.
    ``delimiter`` is None for NIL (flat namespace); "" is kept as "" if a server sends it.
    """

    flags: tuple[str, ...]
    delimiter: str | None
    name_raw: bytes
    name: str
    kind: Literal["LIST", "LSUB"] = "LIST"


@dataclass(frozen=True, slots=True)
class StatusDataResponse:
    """``* STATUS mailbox (MESSAGES n UIDNEXT n ...)`` (RFC 3501 §7.2.4)."""

    name_raw: bytes
    name: str
    values: dict[str, int]


@dataclass(frozen=True, slots=True)
class SearchResponse:
    """``* SEARCH n n n [(MODSEQ n)]`` (RFC 3501 §7.2.5, RFC 7162 §3.1.5)."""

    numbers: tuple[int, ...]
    modseq: int | None = None


@dataclass(frozen=True, slots=True)
class ESearchResponse:
    """``* ESEARCH (TAG "x") UID MIN n MAX n COUNT n ALL set`` (RFC 4731).

    ``all`` is the ALL sequence set expanded in the order the server wrote it: ascending for
    SEARCH, the sort order for ``UID SORT ... RETURN (ALL)`` (ESORT, RFC 5267 §3.2).
    """

    tag: str | None
    uid: bool
    min: int | None = None
    max: int | None = None
    count: int | None = None
    all: tuple[int, ...] = ()
    modseq: int | None = None


@dataclass(frozen=True, slots=True)
class VanishedResponse:
    """``* VANISHED [(EARLIER)] uid-set`` (RFC 7162 §3.2.10), set expanded."""

    earlier: bool
    uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Address:
    """One ENVELOPE address (RFC 3501 §7.4.2): ``(name adl mailbox host)``; raw header words.

    RFC 5322 group syntax (``team: a@x, b@y;``) arrives as a start marker ``(NIL NIL "team" NIL)``,
    the members, and an end marker ``(NIL NIL NIL NIL)``. The markers are not returned; each
    member carries the group's name in ``group`` (None outside a group), so an empty group such as
    ``undisclosed-recipients:;`` leaves no address at all. A host-less address with no end marker
    after it is kept as an address (servers send a bare local part such as ``root`` that way).
    """

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """The ENVELOPE FETCH item (RFC 3501 §7.4.2). Strings are as sent (RFC 2047 not decoded)."""

    date: str | None
    subject: str | None
    from_: tuple[Address, ...]
    sender: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    in_reply_to: str | None
    message_id: str | None


@dataclass(frozen=True, slots=True)
class BodyPart:
    """A non-multipart body (RFC 3501 §7.4.2 ``body-type-1part``).

    ``section`` is the part specifier for ``BODY[section]`` ("1", "1.2", ...; "1" for a
    single-part message). ``envelope``/``body`` are set for message/rfc822 parts.
    Types are lower-cased; parameter names lower-cased, values as sent.
    """

    type: str
    subtype: str
    params: dict[str, str]
    id: str | None
    description: str | None
    encoding: str | None
    size: int
    section: str
    lines: int | None = None
    md5: str | None = None
    disposition: str | None = None
    disposition_params: dict[str, str] = field(default_factory=dict)
    language: tuple[str, ...] = ()
    location: str | None = None
    envelope: Envelope | None = None
    body: BodyStructure | None = None


@dataclass(frozen=True, slots=True)
class Multipart:
    """A multipart body (RFC 3501 §7.4.2 ``body-type-mpart``); ``subtype`` lower-cased."""

    parts: tuple[BodyStructure, ...]
    subtype: str
    section: str
    params: dict[str, str] = field(default_factory=dict)
    disposition: str | None = None
    disposition_params: dict[str, str] = field(default_factory=dict)
    language: tuple[str, ...] = ()
    location: str | None = None


BodyStructure = BodyPart | Multipart


@dataclass(slots=True)
class FetchResponse:
    """``* n FETCH (...)`` (RFC 3501 §7.4.2). Items the server did not send stay None.

    ``sections`` maps the section as the server echoed it, upper-cased and without the
    ``BODY``/``BINARY`` prefix or origin, e.g. "" for ``BODY[]``, "HEADER", "1.2", "TEXT",
    "HEADER.FIELDS (FROM TO)", to its bytes (None for NIL). ``partial_origins`` maps the same key
    to the ``<origin>`` when one was given. ``dropped`` maps a section whose literal was above
    the client's ``max_message_bytes`` to the bytes the server sent: they were read and
    discarded, never kept (the message is treated as too big to download whole).
    """

    seq: int
    uid: int | None = None
    flags: tuple[str, ...] | None = None
    internaldate: datetime | None = None
    size: int | None = None
    envelope: Envelope | None = None
    bodystructure: BodyStructure | None = None
    modseq: int | None = None
    sections: dict[str, bytes | None] = field(default_factory=dict)
    partial_origins: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    gm_msgid: int | None = None
    gm_thrid: int | None = None
    gm_labels: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gm_label_names(self) -> tuple[str, ...] | None:
        """X-GM-LABELS decoded for display (modified UTF-7, RFC 3501 §5.1.3); ``gm_labels``
        keeps the server's spelling for use in later commands."""
        if self.gm_labels is None:
            return None
        return tuple(
            decode_mutf7(label.encode("utf-8", "surrogateescape")) for label in self.gm_labels
        )


@dataclass(frozen=True, slots=True)
class IdResponse:
    """``* ID ("name" "Dovecot" "os" NIL ...)`` or ``* ID NIL`` (RFC 2971 §3.2).

    ``fields`` maps each field name, as the server spelled it, to its value (None for NIL);
    quoted strings are unescaped and literals decoded. ``fields`` is None for ``* ID NIL``.
    """

    fields: dict[str, str | None] | None


@dataclass(frozen=True, slots=True)
class GenericUntagged:
    """Any other untagged response (NAMESPACE, QUOTA, ID, ...): its name and the raw line."""

    name: str
    raw: bytes


Response = (
    TaggedResponse
    | ContinuationRequest
    | StatusResponse
    | CapabilityResponse
    | EnabledResponse
    | ExistsResponse
    | RecentResponse
    | ExpungeResponse
    | FlagsResponse
    | ListResponse
    | StatusDataResponse
    | SearchResponse
    | ESearchResponse
    | VanishedResponse
    | FetchResponse
    | IdResponse
    | GenericUntagged
)
