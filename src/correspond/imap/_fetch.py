"""FETCH response items: ENVELOPE, BODYSTRUCTURE, INTERNALDATE, sections (RFC 3501 §7.4.2).

Works on the value tree made by ``_lexer.tokenize``. Lenient where real servers are broken
(see ../shared/corpus/imap/README.md): NIL where a string is expected, missing extension data,
``("boundary" NIL)`` parameters, extra parentheses around items (Domino), a FETCH item with no
value (Yandex ``BODY[2] )``). Anything that cannot be understood raises ImapProtocolError,
never another exception type.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from correspond.errors import ImapProtocolError
from correspond.imap._lexer import DroppedLiteral, Value, text_of
from correspond.imap.types import (
    Address,
    BodyPart,
    BodyStructure,
    Envelope,
    FetchResponse,
    Multipart,
)

__all__ = [
    "parse_bodystructure",
    "parse_envelope",
    "parse_fetch_items",
    "parse_internaldate",
    "to_int",
]

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}
# RFC 3501 §9 date-time: "dd-Mon-yyyy hh:mm:ss +zzzz"; day may be space-padded or one digit.
_DATE_TIME = re.compile(
    r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})(?:\s+([+-])(\d{2})(\d{2}))?\s*$",
    re.ASCII,
)
# Section as echoed in a FETCH response: BODY[...]<origin>, BINARY[...]<origin>, BINARY.SIZE[...]
_SECTION = re.compile(
    r"(BODY|BINARY|BINARY\.SIZE)(?:\.PEEK)?\[([^\]]*)\](?:<(\d+)>)?$", re.I | re.ASCII
)
_ZONES: dict[str, timezone] = {}  # "+0200" -> timezone; few distinct zones, one object each
_MAX_INT = 2**63  # RFC 7162 mod-sequence-value is at most 2^63-1; numbers beyond are not IMAP
_MAX_GM_ID = 2**64  # Gmail documents X-GM-MSGID / X-GM-THRID as unsigned 64-bit
# A quoted header-fld-name inside an echoed section, e.g. HEADER.FIELDS ("From" "To")
_QUOTED_IN_SECTION = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)


def to_int(value: Value, what: str, limit: int = _MAX_INT) -> int:
    """An IMAP number (RFC 3501 §9 ``number``/``nz-number``, RFC 7162 63-bit mod-sequences),
    below ``limit`` (2^63 unless given; never less than 10^18)."""
    # Fast path: an exact str of fewer than 19 ASCII digits is always below 2^63.
    if value.__class__ is str and len(value) < 19 and value.isdigit() and value.isascii():
        return int(value)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and text.isascii() and len(text) <= 20:
            number = int(text)
            if number < limit:
                return number
    raise ImapProtocolError(f"{what}: expected a number, got {value!r}"[:200])


def _nstring(value: Value) -> str | None:
    """An nstring (RFC 3501 §9) for display; numbers-as-atoms from broken servers accepted."""
    if value is None:
        return None
    if value.__class__ is str and value.isascii():
        return value
    if isinstance(value, list):
        raise ImapProtocolError("expected a string, got a list")
    return text_of(value)


def _lower(value: Value, default: str = "") -> str:
    if value is None or isinstance(value, list):
        return default
    return text_of(value).lower()


def parse_internaldate(value: Value) -> datetime:
    """INTERNALDATE (RFC 3501 §2.3.3, §9 ``date-time``) as an aware datetime."""
    if not isinstance(value, str | bytes):
        raise ImapProtocolError(f"INTERNALDATE: expected a string, got {value!r}")
    m = _DATE_TIME.match(text_of(value))
    if m is None:
        raise ImapProtocolError(f"INTERNALDATE: not a date-time: {value!r}"[:200])
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = _MONTHS.get(mon.upper())
    if month is None:
        raise ImapProtocolError(f"INTERNALDATE: unknown month {mon!r}")
    zone = "+0000" if sign is None else sign + zh + zm
    try:
        tz = _ZONES.get(zone)
        if tz is None:
            offset = timedelta(hours=int(zh), minutes=int(zm)) if sign is not None else timedelta()
            tz = _ZONES[zone] = timezone(-offset if sign == "-" else offset)
        return datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=tz)
    except ValueError as exc:  # day 31 of February, zone >= 24h, ...
        raise ImapProtocolError(f"INTERNALDATE: invalid date {value!r}"[:200]) from exc


def _addresses(value: Value) -> tuple[Address, ...]:
    if value is None or not isinstance(value, list):
        return ()
    out: list[Address] = []
    hostless = False
    for item in value:
        if item.__class__ is not list:
            continue  # junk between addresses; skip rather than lose the envelope
        assert isinstance(item, list)
        if len(item) < 4:
            item = item + [None] * (4 - len(item))
        name, adl, mailbox, host = item[0], item[1], item[2], item[3]
        addr = Address(
            None if isinstance(name, list) else _nstring(name),
            None if isinstance(adl, list) else _nstring(adl),
            None if isinstance(mailbox, list) else _nstring(mailbox),
            None if isinstance(host, list) else _nstring(host),
        )
        hostless = hostless or addr.host is None
        out.append(addr)
    # Only a host-less entry can be a group marker; most envelopes have none, so skip the pass.
    return _groups(out) if hostless else tuple(out)


def _groups(addrs: list[Address]) -> tuple[Address, ...]:
    """Apply RFC 3501 §7.4.2 group syntax: ``(NIL NIL "name" NIL)`` opens a group and
    ``(NIL NIL NIL NIL)`` closes it; markers are dropped and members carry the group name.

    A start marker with no end marker after it is kept as an ordinary host-less address (servers
    send a bare local part such as ``root`` that way), and a stray end marker is kept as sent.
    """
    last_end = -1
    for i, a in enumerate(addrs):
        if a.mailbox is None and a.host is None:
            last_end = i
    out: list[Address] = []
    group: str | None = None
    for i, a in enumerate(addrs):
        if a.host is None:
            if a.mailbox is None:
                if group is not None:
                    group = None
                    continue
            elif i < last_end:
                group = a.mailbox
                continue
        out.append(a if group is None else replace(a, group=group))
    return tuple(out)


def parse_envelope(value: Value) -> Envelope:
    """ENVELOPE (RFC 3501 §7.4.2): date, subject, from, sender, reply-to, to, cc, bcc,
    in-reply-to, message-id. Missing trailing fields are taken as NIL."""
    if not isinstance(value, list):
        raise ImapProtocolError("ENVELOPE: expected a list")
    # Domino wraps the envelope in an extra pair of parentheses.
    while len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    f = list(value[:10]) + [None] * (10 - len(value))
    return Envelope(
        date=_nstring(f[0]) if not isinstance(f[0], list) else None,
        subject=_nstring(f[1]) if not isinstance(f[1], list) else None,
        from_=_addresses(f[2]),
        sender=_addresses(f[3]),
        reply_to=_addresses(f[4]),
        to=_addresses(f[5]),
        cc=_addresses(f[6]),
        bcc=_addresses(f[7]),
        in_reply_to=_nstring(f[8]) if not isinstance(f[8], list) else None,
        message_id=_nstring(f[9]) if not isinstance(f[9], list) else None,
    )


def _params(value: Value) -> dict[str, str]:
    """body-fld-param: ``(name value ...)`` or NIL; names lower-cased. ``("boundary" NIL)``
    (imap.mail.ru) gives an empty value instead of an error."""
    if not isinstance(value, list):
        return {}
    out: dict[str, str] = {}
    for i in range(0, len(value) - 1, 2):
        key, val = value[i], value[i + 1]
        if key is None or isinstance(key, list):
            continue
        out[text_of(key).lower()] = "" if val is None or isinstance(val, list) else text_of(val)
    return out


def _disposition(value: Value) -> tuple[str | None, dict[str, str]]:
    """body-fld-dsp: ``("attachment" ("filename" "x"))`` or NIL; a bare string is tolerated."""
    if isinstance(value, list):
        if not value:
            return None, {}
        kind = _lower(value[0]) or None
        return kind, _params(value[1] if len(value) > 1 else None)
    if value is None:
        return None, {}
    return text_of(value).lower(), {}


def _language(value: Value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(text_of(v) for v in value if v is not None and not isinstance(v, list))
    return (text_of(value),)


def _join(section: str, n: int) -> str:
    return f"{section}.{n}" if section else str(n)


def _message_body(value: Value, section: str, depth: int) -> BodyStructure:
    """The body of a message at ``section`` ("" for the top level): a multipart takes the
    message's own number, a single part is ``section.1`` (RFC 3501 §6.4.5)."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        return _body(value, section, depth)
    return _body(value, _join(section, 1), depth)


#: Deepest BODYSTRUCTURE nesting described; deeper parts are cut (see :func:`_body`).
MAX_BODY_DEPTH = 60


def _body(value: Value, section: str, depth: int) -> BodyStructure:
    if depth > MAX_BODY_DEPTH:
        # One hostile message must not fail the FETCH of a whole batch (and with it the
        # connection): the part is kept as a multipart without parts, a structure no real
        # message has (RFC 2046 §5.1.1 wants one part at least), which the engine reports as
        # a defect; the part's bytes can still be fetched by its section.
        return Multipart(parts=(), subtype="mixed", section=section)
    if not isinstance(value, list) or not value:
        raise ImapProtocolError("BODYSTRUCTURE: expected a non-empty list")
    if isinstance(value[0], list):
        return _multipart(value, section, depth)
    return _single(value, section, depth)


def _multipart(value: list[Value], section: str, depth: int) -> Multipart:
    """body-type-mpart (RFC 3501 §9): parts, subtype, then optional extension data."""
    i = 0
    parts: list[BodyStructure] = []
    while i < len(value) and isinstance(value[i], list):
        child = value[i]
        assert isinstance(child, list)
        if child and isinstance(child[0], list | str | bytes):
            parts.append(_body(child, _join(section, len(parts) + 1), depth + 1))
        # An empty list or a list starting with NIL is not a body; skip it.
        i += 1
    rest = value[i:] + [None] * 5
    # Gmail and others send a NIL subtype; RFC 2046 §5.1.3 treats unknown subtypes as mixed.
    subtype = _lower(rest[0], "mixed") or "mixed"
    disposition, disposition_params = _disposition(rest[2])
    return Multipart(
        parts=tuple(parts),
        subtype=subtype,
        section=section,
        params=_params(rest[1]),
        disposition=disposition,
        disposition_params=disposition_params,
        language=_language(rest[3]),
        location=_nstring(rest[4]) if not isinstance(rest[4], list) else None,
    )


def _single(value: list[Value], section: str, depth: int) -> BodyPart:
    """body-type-1part (RFC 3501 §9): basic, message/rfc822 or text, then extension data."""
    f = value + [None] * (7 - len(value)) if len(value) < 7 else value
    mtype = _lower(f[0], "application") or "application"
    subtype = _lower(f[1], "octet-stream") or "octet-stream"
    size_value = f[6]
    try:
        size = to_int(size_value, "body size") if size_value is not None else 0
    except ImapProtocolError:
        size = 0  # a garbage size should not lose the whole structure
    envelope: Envelope | None = None
    inner: BodyStructure | None = None
    lines: int | None = None
    i = 7
    if mtype == "message" and subtype in ("rfc822", "global") and _is_msg_layout(f):
        # body-type-msg: envelope, body, lines. Exchange and others send NIL or () for the
        # envelope or body of an attached message; keep the part and leave those unset.
        if isinstance(f[7], list):
            envelope = parse_envelope(f[7])
        if isinstance(f[8], list) and f[8]:
            inner = _message_body(f[8], section, depth + 1)
        lines = _opt_int(f[9] if len(f) > 9 else None)
        i = 10
    elif mtype == "text":
        lines = _opt_int(f[7] if len(f) > 7 else None)
        i = 8
    ext = f[i:] + [None] * 4
    disposition, disposition_params = _disposition(ext[1])
    return BodyPart(
        type=mtype,
        subtype=subtype,
        params=_params(f[2]),
        id=_opt_str(f[3]),
        description=_opt_str(f[4]),
        encoding=_opt_str(f[5]),
        size=size,
        section=section,
        lines=lines,
        md5=_opt_str(ext[0]),
        disposition=disposition,
        disposition_params=disposition_params,
        language=_language(ext[2]),
        location=_opt_str(ext[3]),
        envelope=envelope,
        body=inner,
    )


def _is_msg_layout(f: list[Value]) -> bool:
    """Whether a message/rfc822 part carries envelope, body and lines (RFC 3501 §9
    body-type-msg) rather than being sent as a basic part with extension data: two lists, or
    NIL/lists followed by a number of lines (a basic part has md5, disposition, language there).
    """
    if len(f) < 9:
        return False
    env, body = f[7], f[8]
    if isinstance(env, list) and isinstance(body, list):
        return True
    return (
        len(f) > 9
        and (env is None or isinstance(env, list))
        and (body is None or isinstance(body, list))
        and _opt_int(f[9]) is not None
    )


def _opt_int(value: Value) -> int | None:
    if value is None or isinstance(value, list):
        return None
    try:
        return to_int(value, "number")
    except ImapProtocolError:
        return None


def _opt_str(value: Value) -> str | None:
    if value is None or isinstance(value, list):
        return None
    return text_of(value)


def parse_bodystructure(value: Value) -> BodyStructure:
    """BODY / BODYSTRUCTURE (RFC 3501 §7.4.2), with section numbers per §6.4.5."""
    return _message_body(value, "", 0)


def _section_key(spec: str) -> str:
    """The ``sections`` key for an echoed section: quoted header names (RFC 3501 §9
    ``header-fld-name`` is an astring) are unquoted, so ``HEADER.FIELDS ("FROM" "TO")`` and
    ``HEADER.FIELDS (FROM TO)`` are one key."""
    if '"' not in spec:
        return spec
    return _QUOTED_IN_SECTION.sub(lambda m: re.sub(r"\\(.)", r"\1", m.group(1)), spec)


def _origin(text: str, key: str) -> int:
    if not (text.isdigit() and text.isascii()):
        raise ImapProtocolError(f"FETCH: bad origin in {key!r}"[:200])
    return to_int(text, "FETCH origin")


def _bytes_of(value: Value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise ImapProtocolError("section value: expected a string, got a list")


def _labels(value: Value) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        value = [value]
    return tuple(text_of(v) for v in value if v is not None and not isinstance(v, list))


def _plain(value: Value) -> Any:
    """An unknown item's value, as plain Python data (lists become tuples)."""
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def parse_fetch_items(seq: int, items: Value) -> FetchResponse:
    """``msg-att`` (RFC 3501 §7.4.2) into a FetchResponse; unknown items go to ``extra``.

    Mapping notes: ``RFC822``/``RFC822.HEADER``/``RFC822.TEXT`` are stored under the sections
    "", "HEADER", "TEXT" (their BODY[] equivalents); ``BINARY[s]`` (RFC 3516) under "s" like
    ``BODY[s]``; ``BINARY.SIZE[s]`` in ``extra``. A section with no value (Yandex) is None.
    A section literal the parser dropped as too big (``DroppedLiteral``) is listed in
    ``dropped`` with its size instead of ``sections``. An INTERNALDATE that is not a date, a
    MODSEQ that is not a mod-sequence (Zoho's -1), or an ENVELOPE / BODYSTRUCTURE that is NIL
    or an empty list goes to ``extra`` as sent instead of failing the response. X-GM-LABELS
    are kept as sent (modified UTF-7, quoted/atom/literal
    alike); ``FetchResponse.gm_label_names`` decodes them for display.
    """
    if not isinstance(items, list):
        raise ImapProtocolError("FETCH: expected a parenthesized list")
    resp = FetchResponse(seq=seq)
    work = list(items)
    i = 0
    n = len(work)
    while i < n:
        key = work[i]
        if isinstance(key, list):
            # Domino: "(ENVELOPE (...))" as if it were one item; splice its contents in place.
            work[i : i + 1] = key
            n = len(work)
            continue
        if not isinstance(key, str):
            raise ImapProtocolError(f"FETCH: expected an item name, got {key!r}"[:200])
        name = key.upper()
        value: Value = work[i + 1] if i + 1 < n else None
        i += 2
        if name[:5] == "BODY[":  # the bulk of a sync: BODY[] / BODY[HEADER] / BODY[1.2]
            close = name.find("]")
            if close > 0 and (close + 1 == len(name) or name[close + 1] == "<"):
                spec = _section_key(name[5:close])
                resp.sections[spec] = _bytes_of(value)
                if close + 1 < len(name):
                    if name[-1] != ">":
                        raise ImapProtocolError(f"FETCH: bad origin in {key!r}"[:200])
                    resp.partial_origins[spec] = _origin(name[close + 2 : -1], key)
                continue
        if name == "UID":
            resp.uid = to_int(value, "UID")
        elif name == "FLAGS":
            resp.flags = _labels(value)
        elif name == "RFC822.SIZE":
            resp.size = to_int(value, "RFC822.SIZE")
        elif name == "INTERNALDATE":
            try:
                resp.internaldate = parse_internaldate(value)
            except ImapProtocolError:
                resp.extra["INTERNALDATE"] = _plain(value)  # keep the server's words
        elif name == "ENVELOPE":
            if isinstance(value, list):
                resp.envelope = parse_envelope(value)
            else:
                resp.extra[name] = value  # NIL or a string: no envelope, keep the rest
        elif name in ("BODYSTRUCTURE", "BODY"):
            if isinstance(value, list) and value:
                resp.bodystructure = parse_bodystructure(value)
            else:
                resp.extra[name] = _plain(value)
        elif name == "MODSEQ":
            inner = value[0] if isinstance(value, list) and value else value
            try:
                resp.modseq = to_int(inner, "MODSEQ")
            except ImapProtocolError:
                # Zoho sends MODSEQ (-1): not a mod-sequence (RFC 7162 §7). Keep the server's
                # word in extra and leave modseq unset rather than lose the other items.
                resp.extra["MODSEQ"] = _plain(value)
        elif name == "X-GM-MSGID":
            resp.gm_msgid = to_int(value, "X-GM-MSGID", _MAX_GM_ID)
        elif name == "X-GM-THRID":
            resp.gm_thrid = to_int(value, "X-GM-THRID", _MAX_GM_ID)
        elif name == "X-GM-LABELS":
            resp.gm_labels = _labels(value)
        elif name == "RFC822":
            resp.sections[""] = _bytes_of(value)
        elif name == "RFC822.HEADER":
            resp.sections["HEADER"] = _bytes_of(value)
        elif name == "RFC822.TEXT":
            resp.sections["TEXT"] = _bytes_of(value)
        else:
            m = _SECTION.match(name)
            if m is None:
                resp.extra[name] = _plain(value)
            elif m.group(1) == "BINARY.SIZE":
                resp.extra[name] = _opt_int(value)
            else:
                spec = _section_key(m.group(2))
                resp.sections[spec] = _bytes_of(value)
                if m.group(3) is not None:
                    resp.partial_origins[spec] = _origin(m.group(3), key)
    if resp.sections:
        dropped = [k for k, v in resp.sections.items() if v.__class__ is DroppedLiteral]
        for spec in dropped:
            body = resp.sections.pop(spec)
            assert isinstance(body, DroppedLiteral)
            resp.dropped[spec] = body.size
    return resp
