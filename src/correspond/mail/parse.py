"""Fast, tolerant parsing of raw RFC 5322 / MIME messages into plain data.

Why not ``email`` (stdlib)? On the bench mailbox ``policy.default`` parses ~126 msgs/s on one
core and ``compat32`` ~370: slower than mbsync merely copies the files. This module walks the
bytes directly instead and does only the work ingest needs:

* the header block is split with one ``bytes.find`` and a tight line loop (RFC 5322 §2.2 folding,
  §2.2.3 unfolding); values are decoded from RFC 2047 encoded-words (§2, §6.2: whitespace between
  adjacent encoded-words is dropped; same-charset neighbours are joined *before* decoding so a
  multi-byte character split across two words survives);
* multiparts (RFC 2046 §5.1.1) are split with ``bytes.find`` on the boundary, using offsets into
  the one input buffer (no copies while walking);
* only ``text/plain`` and ``text/html`` bodies are decoded to text (RFC 2045 §6.7
  quoted-printable with ``binascii.a2b_qp``, §6.8 base64 with ``binascii.a2b_base64``); other parts
  become :class:`ParsedAttachment` (RFC 2183 disposition, RFC 2231 parameters);
* ``message/rfc822`` parts (RFC 2046 §5.2.1) are kept whole as attachments and not descended into,
  so an endlessly nested message costs nothing.

A message never raises. Anything broken is recorded in ``ParsedMessage.defects`` and whatever
could be read is kept. Work per message is bounded: nesting depth, part count, header count and
header-block size are capped (each cap reached is a defect).
"""

from __future__ import annotations

import binascii
import codecs
import re
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_tz
from functools import lru_cache

from pybase64 import b64decode as _fast_b64decode  # SIMD: ~7x binascii here

from correspond.mail.addresses import split_address_list
from correspond.mail.snippet import html_to_text, make_snippet

__all__ = [
    "MAX_DEPTH",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_PARTS",
    "MAX_REFERENCES",
    "UUENCODINGS",
    "ParsedAddress",
    "ParsedAttachment",
    "ParsedMessage",
    "UUDecoded",
    "decode_header_value",
    "header_message_id",
    "header_sender_and_date",
    "parse_message",
    "sanitize_filename",
    "uudecode",
]

#: Deepest multipart nesting walked (the Crispin torture test needs ~6; bombs need thousands).
MAX_DEPTH = 50
#: Most MIME parts walked in one message; the rest is ignored (a defect is recorded).
MAX_PARTS = 1000
#: Most header fields kept per header block.
MAX_HEADERS = 2000
#: Largest header block parsed; beyond it the header block is cut.
MAX_HEADER_BYTES = 1 << 20
#: Most References kept (the first, which names the thread root, and the most recent ones).
MAX_REFERENCES = 100


@dataclass(frozen=True, slots=True)
class ParsedAddress:
    """One mailbox: RFC 2047-decoded display name, addr-spec with IDN domain shown as Unicode."""

    name: str
    email: str


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    """A non-body MIME part: only measured unless its content is asked for.

    ``filename`` is for display only (see :func:`sanitize_filename`); never use it as a path.
    ``section`` is the part's IMAP section number (RFC 3501 §6.4.5), e.g. ``"2.1"``.
    """

    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    inline: bool
    content: bytes | None
    section: str = ""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """Everything ingest needs from one raw message. See :func:`parse_message`."""

    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    date: datetime | None
    from_: tuple[ParsedAddress, ...]
    sender: tuple[ParsedAddress, ...]
    reply_to: tuple[ParsedAddress, ...]
    to: tuple[ParsedAddress, ...]
    cc: tuple[ParsedAddress, ...]
    bcc: tuple[ParsedAddress, ...]
    text: str | None
    html: str | None
    snippet: str
    attachments: tuple[ParsedAttachment, ...]
    defects: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------------------------
# Charsets

# Labels real mail uses that Python does not know, or knows as a narrower charset than the
# sender meant (WHATWG Encoding Standard practice: decode labels as their supersets).
# None means "no useful label": try UTF-8, then windows-1252.
_ALIASES: dict[str, str | None] = {
    "": None,
    "us-ascii": None,
    "ascii": None,
    "ansi_x3.4-1968": None,
    "us": None,
    "x-unknown": None,
    "unknown": None,
    "unknown-8bit": None,
    "x-user-defined": None,
    "default": None,
    "charset": None,
    "8bit": None,
    "uft-8": "utf-8",
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "x-utf-8": "utf-8",
    "unicode-1-1-utf-7": "utf-7",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "iso_8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "iso-8859-9": "cp1254",
    "iso-8859-11": "cp874",
    "tis-620": "cp874",
    "windows-874": "cp874",
    "iso-8859-8-i": "iso-8859-8",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "big5": "big5hkscs",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman",
}


@lru_cache(maxsize=256)  # bounded: a hostile stream of made-up labels cannot grow it
def _codec(label: str) -> tuple[str | None, bool]:
    """(Python codec name or None, whether the label was understood)."""
    key = label.strip().strip("\"'").lower()
    if key in _ALIASES:
        return _ALIASES[key], True
    if len(key) > 40 or not key.isascii() or not key.isprintable():
        return None, False
    try:
        info = codecs.lookup(key)
    except (LookupError, ValueError, UnicodeError):
        return None, False
    if not getattr(info, "_is_text_encoding", True):
        return None, False  # rot13, zlib and friends are codecs but not charsets
    if info.name == "ascii":
        return None, True
    return info.name, True


_SINGLE_BYTE = frozenset(
    ["cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
     "cp874", "latin_1", "koi8-r", "koi8-u", "mac-roman", "mac-cyrillic"]
    + [f"iso8859-{i}" for i in range(1, 17)]
)  # fmt: skip
_REAL_UTF8 = re.compile("[^\x00-\x7f\ufffd]")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_WIDE_UNICODE = frozenset(
    ["utf-7", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
)


def _decode_bytes(data: bytes, label: str | None, defects: list[str], what: str) -> str:
    """Decode with the declared charset; mislabelled text falls back to UTF-8, then cp1252."""
    text = _decode_bytes_raw(data, label, defects, what)
    codec = _codec(label)[0] if label else None
    if codec is not None and codec in _WIDE_UNICODE and _LONE_SURROGATE.search(text):
        # UTF-7/16/32 can carry lone surrogates, which no UTF-8 store accepts.
        defects.append(f"{what}: lone surrogates replaced")
        text = _LONE_SURROGATE.sub("\ufffd", text)
    return text


def _decode_bytes_raw(data: bytes, label: str | None, defects: list[str], what: str) -> str:
    codec, known = _codec(label) if label else (None, True)
    if not known:
        defects.append(f"{what}: unknown charset {(label or '')[:40]!r}")
    if codec is not None and codec != "utf-8":
        if codec in _SINGLE_BYTE and not data.isascii():
            # Single-byte charsets decode anything, so mislabelled UTF-8 would silently turn
            # into mojibake; real Latin text almost never forms valid multi-byte UTF-8.
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                defects.append(f"{what}: declared {label!r} but is UTF-8")
                return text
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            pass
        try:
            if data.isascii():
                # 7-bit data under a stateful charset (ISO-2022-*, UTF-7) that failed: it is
                # not UTF-8 in disguise, so keep the declared charset.
                raise UnicodeDecodeError("ascii", b"", 0, 1, "stateful")
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            defects.append(f"{what}: bytes not valid in declared charset {label!r}")
            try:
                return data.decode(codec, "replace")
            except LookupError:
                return data.decode("cp1252", "replace")
        defects.append(f"{what}: declared {label!r} but is UTF-8")
        return text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if codec == "utf-8":
            text = data.decode("utf-8", "replace")
            if _REAL_UTF8.search(text):
                defects.append(f"{what}: invalid UTF-8")
                return text
            # Not one valid multi-byte sequence: Latin text labelled UTF-8.
            defects.append(f"{what}: declared UTF-8 but is not; read as windows-1252")
            return data.decode("cp1252", "replace")
        if label:
            defects.append(f"{what}: 8-bit bytes under charset {label!r}")
        else:
            defects.append(f"{what}: 8-bit bytes without a charset")
        return data.decode("cp1252", "replace")


# --------------------------------------------------------------------------------------------
# Header values

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SURROGATES = re.compile(r"[\udc80-\udcff]")


_BASE64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]")


def _b64(data: bytes, defects: list[str], what: str) -> bytes:
    # pybase64 drops what is not in the alphabet as binascii does, but reads on past a "="
    # that binascii stops at: it may take only what has no alphabet character after the
    # first "=" (found by memchr; the search after it is the short tail). Fuzzed against
    # binascii, errors included: tests/test_mail_parse.py.
    pad = data.find(b"=")
    if pad < 0 or not _BASE64_ALPHABET.search(data, pad):
        try:
            return _fast_b64decode(data, validate=False)
        except ValueError:  # binascii.Error is one; what it refuses, binascii refuses too
            pass
    else:
        try:
            return binascii.a2b_base64(data)
        except binascii.Error:
            pass
    # Usually bad padding or a stray character: keep the alphabet, re-pad, try again.
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    clean += b"=" * (-len(clean) % 4)
    defects.append(f"{what}: invalid base64")
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:
        return b""


#: Content-Transfer-Encoding values of uuencoded bodies (none is in RFC 2045, all are in use).
UUENCODINGS = frozenset({"x-uuencode", "uuencode", "x-uue", "uue"})
#: Malformed uuencode lines reported one by one; beyond that, one count.
_UU_DEFECT_LINES = 5
_UU_BEGIN = re.compile(rb"^begin(-base64)?[ \t]+([0-7]{1,4})(?:[ \t]+([^\r\n]*?))?[ \t]*\r?$")


@dataclass(frozen=True, slots=True)
class UUDecoded:
    """A uuencoded body decoded: the bytes, and the ``begin`` line's file name and mode."""

    content: bytes
    filename: str | None
    mode: int | None


def uudecode(data: bytes, defects: list[str], what: str = "body") -> UUDecoded:
    """Decode a uuencoded body (POSIX ``uuencode``: ``begin <mode> <name>``, lines whose first
    character gives their length, a line of length 0, ``end``; ``begin-base64`` frames base64
    instead). Never raises; work is linear in ``data`` and the output is smaller than it.

    Text before ``begin`` is skipped; a body without a ``begin`` line is kept as sent, with a
    defect; a malformed line is decoded as far as it goes (or skipped) with a defect; a missing
    ``end`` is a defect, the lines read are kept.
    """
    if not data.strip():
        return UUDecoded(b"", None, None)  # an empty part (the corpus has a cut one)
    lines = data.split(b"\n")
    start = next((n for n, ln in enumerate(lines) if ln.startswith(b"begin")), None)
    match = _UU_BEGIN.match(lines[start]) if start is not None else None
    if start is None or match is None:
        defects.append(f"{what}: uuencoded without a begin line: kept as sent")
        return UUDecoded(data, None, None)
    base64_frame = match.group(1) is not None
    mode = int(match.group(2), 8)
    name_raw = match.group(3) or b""
    filename = name_raw.decode("utf-8", "replace").strip() or None
    out: list[bytes] = []
    bad = 0
    ended = False
    for line in lines[start + 1 :]:
        line = line.rstrip(b"\r")
        if line.rstrip() in (b"end", b"===="):
            ended = True
            break
        if base64_frame:
            out.append(line)
            continue
        if not line:
            continue
        try:
            out.append(binascii.a2b_uu(line))
            continue
        except binascii.Error:
            pass
        # Encoders that pad lines with extra characters: keep the length the first says
        # (what the stdlib's uu module did).
        length = (line[0] - 32) & 63
        try:
            out.append(binascii.a2b_uu(line[: (length * 4 + 5) // 3]))
            continue
        except binascii.Error:
            bad += 1
            if bad <= _UU_DEFECT_LINES:
                defects.append(f"{what}: malformed uuencode line skipped")
    if bad > _UU_DEFECT_LINES:
        defects.append(f"{what}: {bad} malformed uuencode lines skipped in all")
    if not ended:
        defects.append(f"{what}: uuencoded without an end line")
    if base64_frame:
        return UUDecoded(_b64(b"".join(out), defects, what), filename, mode)
    return UUDecoded(b"".join(out), filename, mode)


def decode_header_value(value: str, defects: list[str] | None = None) -> str:
    """Decode RFC 2047 encoded-words in a header value; control characters become spaces.

    Adjacent encoded-words are joined without the whitespace between them (RFC 2047 §6.2), and
    same-charset neighbours are decoded together. RFC 2231 §5 language tags
    (``=?utf-8*en?Q?...?=``) are accepted. CR, LF and NUL never survive decoding (RFC 5322 §2.2),
    so a value cannot smuggle a new header line into anything that re-emits it.
    """
    if defects is None:
        defects = []
    if "=?" in value:
        value = _decode_words(value, defects)
    if _CONTROLS.search(value):
        value = _CONTROLS.sub(" ", value)
    return value


def _decode_words(value: str, defects: list[str]) -> str:
    out: list[str] = []
    last = 0
    pending_charset = ""
    pending: list[bytes] = []

    def flush() -> None:
        if pending:
            out.append(_decode_bytes(b"".join(pending), pending_charset, defects, "header"))
            pending.clear()

    prev_word = False
    for m in _ENCODED_WORD.finditer(value):
        gap = value[last : m.start()]
        if not (prev_word and (not gap or gap.isspace())):
            flush()
            out.append(gap)
        charset = m.group(1).partition("*")[0].lower()
        payload = m.group(3).encode("utf-8", "surrogateescape")
        if m.group(2) in "bB":
            data = _b64(payload, defects, "header")
        else:
            data = binascii.a2b_qp(payload, header=True)
        if charset != pending_charset:
            flush()
            pending_charset = charset
        pending.append(data)
        last = m.end()
        prev_word = True
    flush()
    out.append(value[last:])
    return "".join(out)


def _fix_8bit(value: str, fallback: str | None, defects: list[str]) -> str:
    """Re-decode a header value whose raw bytes were not UTF-8 (RFC 6532 allows only UTF-8)."""
    data = value.encode("utf-8", "surrogateescape")
    return _decode_bytes(data, fallback or "x-unknown", defects, "header")


def _msg_id(value: str | None) -> str | None:
    """RFC 5322 §3.6.4 msg-id without the angle brackets; whitespace removed."""
    if not value:
        return None
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start + 1)
        inner = value[start + 1 : end] if end > 0 else value[start + 1 :]
    else:
        inner = value.split()[0] if value.split() else ""
    inner = "".join(inner.split())
    return inner or None


_ID_RE = re.compile(r"<([^<>]+)>")


def _msg_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    found = _ID_RE.findall(value)
    if not found:
        found = value.replace(",", " ").split()
    seen: dict[str, None] = {}
    for item in found:
        item = "".join(item.split())
        if item:
            seen.setdefault(item, None)
    ids = tuple(seen)
    if len(ids) > MAX_REFERENCES:
        ids = (ids[0], *ids[-(MAX_REFERENCES - 1) :])
    return ids


# --------------------------------------------------------------------------------------------
# Dates (RFC 5322 §3.3, with §4.3 obsolete forms through email.utils)

_DATE_RE = re.compile(
    r"\s*(?:[A-Za-z]+,?\s*)?(\d{1,2})\s+([A-Za-z]{3})[A-Za-z]*\.?\s+(\d{4})\s+"
    r"(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?\s+([+-])(\d{2})(\d{2})\b"
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}


def _parse_date(value: str | None, defects: list[str]) -> datetime | None:
    if value is None:
        return None
    m = _DATE_RE.match(value)
    try:
        if m is not None and m.group(2).lower() in _MONTHS:
            offset = timedelta(hours=int(m.group(8)), minutes=int(m.group(9)))
            tz = timezone(-offset if m.group(7) == "-" else offset)
            return datetime(
                int(m.group(3)),
                _MONTHS[m.group(2).lower()],
                int(m.group(1)),
                int(m.group(4)),
                int(m.group(5)),
                int(m.group(6) or 0),
                tzinfo=tz,
            )
        parts = parsedate_tz(value)
        if parts is None:
            defects.append(f"unparseable Date: {value[:60]!r}")
            return None
        year, month, day, hh, mm, ss = parts[:6]
        zone = parts[9]
        if zone is None:
            defects.append("Date without a time zone, UTC assumed")
            zone = 0
        if abs(zone) >= 86400:
            raise ValueError("zone offset out of range")
        return datetime(year, month, day, hh, mm, min(ss, 59), tzinfo=timezone(timedelta(0, zone)))
    except (ValueError, OverflowError, TypeError, IndexError):
        defects.append(f"unparseable Date: {value[:60]!r}")
        return None


# --------------------------------------------------------------------------------------------
# Header blocks


def _header_end(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of header block, start of body) for the entity in raw[start:end]."""
    if raw.startswith(b"\n", start) or raw.startswith(b"\r\n", start):
        return start, start + (1 if raw[start] == 10 else 2)
    # Search CRLF first and bound the LF search by it: a CRLF message has no "\n\n", and an
    # unbounded search would scan a whole multi-megabyte attachment for it.
    b = raw.find(b"\n\r\n", start, end)
    a = raw.find(b"\n\n", start, end if b < 0 else b + 1)
    if a < 0 and b < 0:
        return end, end
    if b < 0 or 0 <= a < b:
        return a + 1, a + 2
    return b + 1, b + 3


def _parse_headers(
    raw: bytes, start: int, end: int, defects: list[str], top: bool
) -> tuple[list[tuple[str, str]], int, bool]:
    """Split the header block of raw[start:end] into (name, unfolded raw value) fields.

    Returns the fields, the offset where the body starts, and whether the block held 8-bit bytes
    that are not UTF-8 (those values still carry surrogate escapes for the caller to re-decode).
    A line that is neither a field nor a continuation ends the header block early, as in the
    stdlib (the blank separator line is missing); the rest is body.
    """
    hend, body = _header_end(raw, start, end)
    if hend - start > MAX_HEADER_BYTES:
        defects.append(f"header block over {MAX_HEADER_BYTES} bytes: cut")
        cut = raw.rfind(b"\n", start, start + MAX_HEADER_BYTES)
        hend = cut + 1 if cut > start else start + MAX_HEADER_BYTES
    block = raw[start:hend]
    try:
        text = block.decode("utf-8")
        bad8 = False
    except UnicodeDecodeError:
        text = block.decode("utf-8", "surrogateescape")
        bad8 = True
    lines = text.split("\n")
    fields: list[tuple[str, str]] = []
    name = ""
    value: list[str] = []
    skipped = False
    for idx, line in enumerate(lines):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue
        first = line[0]
        if first == " " or first == "\t":
            if name:
                value.append(line)
            elif idx == 0 and top:
                defects.append("message starts with a continuation line")
            continue
        colon = line.find(":")
        if colon <= 0 or " " in line[:colon].rstrip() or "\t" in line[:colon]:
            if name and value[-1].rstrip().endswith(";") and "=" in line:
                # "Content-Type: multipart/mixed;" then "boundary=..." unindented: a folding
                # error of some mailers; reading it as a continuation saves the structure.
                defects.append(f"unindented continuation of {name[:40]}")
                value.append(" " + line)
                continue
            if idx == 0 and top and line.startswith("From "):
                continue  # mbox "From " separator line
            # Not a header field: the header block ended without its blank line.
            if name:
                fields.append((name, "".join(value)))
                name = ""
            defects.append("missing blank line between header and body")
            prefix = "\n".join(lines[:idx])
            body = start + len((prefix + "\n").encode("utf-8", "surrogateescape")) if idx else start
            break
        if name:
            fields.append((name, "".join(value)))
            if len(fields) >= MAX_HEADERS:
                skipped = True
                name = ""
                break
        name = line[:colon].rstrip()
        value = [line[colon + 1 :].lstrip(" \t")]
    if name:
        fields.append((name, "".join(value)))
    if skipped:
        defects.append(f"more than {MAX_HEADERS} header fields: rest ignored")
    return fields, body, bad8


def _split_params(value: str) -> tuple[str, dict[str, str]]:
    """RFC 2045 §5.1 ``type/subtype; attribute=value`` with RFC 2231 §3-4 extended params."""
    head, sep, rest = value.partition(";")
    params: dict[str, str] = {}
    if not sep:
        return head.strip(), params
    extended: dict[str, dict[int, tuple[str, bool]]] = {}
    i = 0
    n = len(rest)
    while i < n:
        # attribute
        eq = rest.find("=", i)
        semi = rest.find(";", i)
        if eq < 0 or (0 <= semi < eq):
            i = n if semi < 0 else semi + 1
            continue
        attr = rest[i:eq].strip().lower()
        j = eq + 1
        while j < n and rest[j] in " \t":
            j += 1
        if j < n and rest[j] == '"':
            buf = []
            j += 1
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n and rest[j + 1] in '"\\':
                    j += 1
                buf.append(rest[j])
                j += 1
            val = "".join(buf)
            semi = rest.find(";", j)
            i = n if semi < 0 else semi + 1
        else:
            semi = rest.find(";", j)
            val = (rest[j:] if semi < 0 else rest[j:semi]).strip()
            i = n if semi < 0 else semi + 1
        if not attr:
            continue
        if "*" in attr:
            base, _, section = attr.partition("*")
            encoded = section.endswith("*") or section == ""
            num_text = section.rstrip("*")
            num = int(num_text) if num_text.isdigit() else 0
            extended.setdefault(base, {}).setdefault(num, (val, encoded))
        else:
            params.setdefault(attr, val)
    for base, sections in extended.items():
        params[base] = _join_2231(sections)
    return head.strip(), params


def _join_2231(sections: dict[int, tuple[str, bool]]) -> str:
    """Reassemble RFC 2231 §3 continuations, decoding §4 ``charset'lang'%XX`` pieces."""
    charset = ""
    chunks: list[bytes] = []
    for k, num in enumerate(sorted(sections)):
        val, encoded = sections[num]
        if encoded:
            if k == 0 and val.count("'") >= 2:
                charset, _lang, val = val.split("'", 2)
            chunks.append(urllib.parse.unquote_to_bytes(val.encode("utf-8", "surrogateescape")))
        else:
            chunks.append(val.encode("utf-8", "surrogateescape"))
    return _decode_bytes(b"".join(chunks), charset or "utf-8", [], "parameter")


# Windows device names: harmless to show, but a user who saves the file on Windows gets a device.
_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(10)] + [f"lpt{i}" for i in range(10)]
)
_UNSAFE_NAME_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)


def sanitize_filename(name: str | None) -> str | None:
    """A MIME-supplied file name made safe to *show* (never to use as a path).

    The last path component is kept (``../../etc/passwd`` → ``passwd``, ``C:\\x.exe`` →
    ``x.exe``); control and bidi-override characters are dropped (``invoice\\u202efdp.exe`` shows
    its real extension); leading dots and trailing dots/spaces go; Windows device names get a
    ``_`` prefix; the result fits in 255 UTF-8 bytes. Returns None when nothing is left.
    """
    if not name:
        return None
    name = _SURROGATES.sub("\ufffd", _UNSAFE_NAME_CHARS.sub("", name))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = " ".join(name.split()).lstrip(". ").rstrip(". ")
    if not name:
        return None
    if name.split(".", 1)[0].lower() in _RESERVED:
        name = "_" + name
    if len(name.encode("utf-8")) > 255:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:20] if dot and stem else ""
        keep = name[: 255 - len(ext) - 1] if ext else name
        while len((keep + ("." + ext if ext else "")).encode("utf-8")) > 255:
            keep = keep[:-1]
        name = keep + ("." + ext if ext else "")
    return name


# --------------------------------------------------------------------------------------------
# The MIME walk


_GUESS_RE = re.compile(rb"(?m)^(--[ -~]{1,200}?)[ \t]*\r?\n(?=[A-Za-z-]+:)")


def _guess_boundary(raw: bytes, bstart: int, bend: int) -> bytes | None:
    """A delimiter line ("--x" followed by a header line) near the start of a multipart body.

    Mailers that mangle the boundary parameter (or drop it) still write the delimiter lines;
    reading them keeps the text that the stdlib would show as raw MIME.
    """
    m = _GUESS_RE.search(raw, bstart, min(bend, bstart + 8192))
    if m is None:
        return None
    return m.group(1).removesuffix(b"--")


class _Walk:
    __slots__ = ("atts", "defects", "html", "keep", "parts", "raw", "text")

    def __init__(self, raw: bytes, keep: bool, defects: list[str]) -> None:
        self.raw = raw
        self.keep = keep
        self.defects = defects
        self.text: str | None = None
        self.html: str | None = None
        self.atts: list[ParsedAttachment] = []
        self.parts = 0

    def entity(
        self,
        fields: list[tuple[str, str]],
        bstart: int,
        bend: int,
        depth: int,
        default_type: str,
        section: str,
    ) -> None:
        """Handle one MIME entity whose header fields are parsed and body is raw[bstart:bend]."""
        self.parts += 1
        if self.parts > MAX_PARTS:
            if self.parts == MAX_PARTS + 1:
                self.defects.append(f"more than {MAX_PARTS} MIME parts: rest ignored")
            return
        ctype_raw = cte = disp_raw = cid = None
        for name, value in fields:
            lname = name.lower()
            if not lname.startswith("content-"):
                continue
            if lname == "content-type":
                ctype_raw = ctype_raw if ctype_raw is not None else value
            elif lname == "content-transfer-encoding":
                cte = cte if cte is not None else value
            elif lname == "content-disposition":
                disp_raw = disp_raw if disp_raw is not None else value
            elif lname == "content-id":
                cid = cid if cid is not None else value
        params: dict[str, str] = {}
        if ctype_raw is None:
            ctype = default_type
        else:
            ctype, params = _split_params(ctype_raw)
            ctype = ctype.lower()
            if (
                ctype.count("/") != 1
                or " " in ctype
                or ctype.startswith("/")
                or ctype.endswith("/")
            ):
                self.defects.append(f"invalid Content-Type {ctype[:60]!r}: text/plain assumed")
                ctype = "text/plain"
        encoding = cte.strip().lower() if cte else ""
        disposition = ""
        dparams: dict[str, str] = {}
        if disp_raw is not None:
            disposition, dparams = _split_params(disp_raw)
            disposition = disposition.lower()

        if ctype.startswith("multipart/"):
            if depth >= MAX_DEPTH:
                self.defects.append(f"multipart nested deeper than {MAX_DEPTH}: not walked")
                self.attachment(ctype, bstart, bend, "", None, None, False, section, {}, {})
                return
            if self.multipart(ctype, params, bstart, bend, depth, section):
                return
            if not self.raw[bstart:bend].strip():
                return
            ctype = "text/plain"  # no usable boundary: show the body as text (like the stdlib)
            params = {}

        if disposition == "attachment":
            self.attachment(ctype, bstart, bend, encoding, cid, disposition, False, section,
                            params, dparams)  # fmt: skip
            return
        if bstart >= bend and ctype.startswith("text/"):
            return  # an empty text part carries nothing to show or keep
        if ctype == "text/plain" and self.text is None:
            data = self.decode(bstart, bend, encoding)
            text = _decode_bytes(data, params.get("charset"), self.defects, "text/plain body")
            self.text = text.replace("\r\n", "\n")
            return
        if ctype == "text/html" and self.html is None:
            data = self.decode(bstart, bend, encoding)
            self.html = _decode_bytes(data, params.get("charset"), self.defects, "text/html body")
            return
        self.attachment(ctype, bstart, bend, encoding, cid, disposition, True, section,
                        params, dparams)  # fmt: skip

    def multipart(
        self, ctype: str, params: dict[str, str], bstart: int, bend: int, depth: int, section: str
    ) -> bool:
        raw = self.raw
        boundary = params.get("boundary", "")
        if not boundary:
            self.defects.append(f"{ctype} without a boundary parameter")
        delim = b"--" + boundary.encode("utf-8", "surrogateescape")
        if not boundary or raw.find(delim, bstart, bend) < 0:
            guessed = _guess_boundary(raw, bstart, bend)
            if guessed is None:
                if boundary:
                    self.defects.append(f"{ctype}: boundary {boundary[:70]!r} never found")
                return False
            self.defects.append(f"{ctype}: boundary guessed from the body")
            delim = guessed
            boundary = guessed[2:].decode("utf-8", "replace")
        spans: list[tuple[int, int]] = []
        pos = bstart
        cur = -1
        closed = False
        dlen = len(delim)
        while True:
            i = raw.find(delim, pos, bend)
            if i < 0:
                break
            if i != bstart and raw[i - 1] != 10:
                pos = i + 1
                continue
            j = i + dlen
            close = raw.startswith(b"--", j)
            eol = raw.find(b"\n", j, bend)
            line_end = bend if eol < 0 else eol + 1
            if not close and raw[j:line_end].strip():
                pos = j  # a longer boundary that starts with ours (nested part)
                continue
            if cur >= 0:
                # The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
                pe = i - 1 if i > cur else i
                if pe > cur and raw[pe - 1] == 13:
                    pe -= 1
                spans.append((cur, max(pe, cur)))
                if len(spans) > MAX_PARTS:
                    break
            if close:
                closed = True
                break
            cur = line_end
            pos = line_end
        if cur < 0:
            self.defects.append(f"{ctype}: boundary {boundary[:70]!r} never found")
            return False
        if not closed and len(spans) <= MAX_PARTS:
            spans.append((cur, bend))
            self.defects.append(f"{ctype}: missing closing boundary")
        default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        prefix = f"{section}." if section else ""
        for k, (s, e) in enumerate(spans, 1):
            if self.parts > MAX_PARTS:
                break
            fields, body, bad8 = _parse_headers(raw, s, e, self.defects, False)
            if bad8:
                fields = [
                    (_fix_8bit(n, None, self.defects), _fix_8bit(v, None, self.defects))
                    for n, v in fields
                ]
            self.entity(fields, body, e, depth + 1, default, f"{prefix}{k}")
        return True

    def decode(self, bstart: int, bend: int, encoding: str) -> bytes:
        data = self.raw[bstart:bend]
        if encoding == "base64":
            return _b64(data, self.defects, "body")
        if encoding == "quoted-printable":
            return binascii.a2b_qp(data)
        if encoding in UUENCODINGS:
            return uudecode(data, self.defects).content
        return data

    def attachment(
        self,
        ctype: str,
        bstart: int,
        bend: int,
        encoding: str,
        cid: str | None,
        disposition: str | None,
        inline: bool,
        section: str,
        params: dict[str, str],
        dparams: dict[str, str],
    ) -> None:
        raw = self.raw
        name = dparams.get("filename") or params.get("name")
        if name:
            name = decode_header_value(name, self.defects)
        content: bytes | None = None
        size = -1
        if encoding in UUENCODINGS:
            uu = uudecode(raw[bstart:bend], self.defects, "attachment")
            content, size = uu.content, len(uu.content)
            name = name or uu.filename  # the begin line names the file when the headers do not
        if not name and ctype in ("message/rfc822", "message/global"):
            name = self.inner_subject(bstart, bend, encoding)
        filename = sanitize_filename(name)
        if size >= 0:
            pass
        elif self.keep or encoding not in ("base64", ""):
            content = self.decode(bstart, bend, encoding)
            size = len(content)
        elif encoding == "base64":
            # Exact decoded size without decoding: count the alphabet, minus padding. One
            # translate pass is cheaper than counting each whitespace byte separately.
            enc = raw[bstart:bend].translate(None, b" \t\r\n")
            pad = 2 if enc.endswith(b"==") else 1 if enc.endswith(b"=") else 0
            size = max(len(enc) * 3 // 4 - pad, 0)
        else:
            size = bend - bstart
        if not self.keep:
            content = None
        if disposition and disposition not in ("inline", "attachment"):
            self.defects.append(f"unknown Content-Disposition {disposition[:40]!r}")
        self.atts.append(
            ParsedAttachment(
                filename=filename,
                content_type=ctype,
                size=size,
                content_id=_msg_id(cid),
                inline=inline and disposition != "attachment",
                content=content,
                section=section,
            )
        )

    def inner_subject(self, bstart: int, bend: int, encoding: str) -> str | None:
        """A display name for an attached message: its Subject plus ``.eml``."""
        if encoding in ("base64", "quoted-printable"):
            data = self.decode(bstart, min(bend, bstart + 65536), encoding)
            fields, _, _ = _parse_headers(data, 0, len(data), [], False)
        else:
            fields, _, _ = _parse_headers(self.raw, bstart, bend, [], False)
        for n, v in fields:
            if n.lower() == "subject":
                if _SURROGATES.search(v):
                    v = _fix_8bit(v, None, [])
                subject = decode_header_value(v).strip()
                return f"{subject[:150]}.eml" if subject else None
        return None


_ADDRESS_FIELDS = {
    "from": "from_",
    "sender": "sender",
    "reply-to": "reply_to",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
}


def _addresses(value: str | None, defects: list[str]) -> tuple[ParsedAddress, ...]:
    if not value:
        return ()
    pairs, problems = split_address_list(value)
    defects.extend(problems)
    out = []
    for name, addr in pairs:
        if _CONTROLS.search(name):
            defects.append("control characters in a display name")
        if "=?" in name or _CONTROLS.search(name):
            name = " ".join(decode_header_value(name, defects).split())
        if _CONTROLS.search(addr):
            defects.append("control characters in an address")
            addr = _CONTROLS.sub("", addr)
        out.append(ParsedAddress(name=name, email=addr))
    return tuple(out)


def _empty(defect: str) -> ParsedMessage:
    return ParsedMessage(
        message_id=None, in_reply_to=None, references=(), subject="", date=None,
        from_=(), sender=(), reply_to=(), to=(), cc=(), bcc=(), text=None, html=None,
        snippet="", attachments=(), defects=(defect,), headers=(),
    )  # fmt: skip


def parse_message(raw: bytes, *, keep_attachment_content: bool = True) -> ParsedMessage:
    """Parse one raw message (RFC 5322, MIME per RFC 2045-2047, 2183, 2231). Never raises.

    ``text`` is the first non-attachment ``text/plain`` part (multiparts are descended, attached
    messages are not, as ``email.message.EmailMessage.get_body`` does); when the message has only
    HTML, ``text`` is derived from it. ``html`` is the first non-attachment ``text/html`` part,
    as sent. Every other part is a :class:`ParsedAttachment`; with
    ``keep_attachment_content=False`` attachments are only measured.
    """
    try:
        return _parse(bytes(raw), keep_attachment_content)
    except Exception as exc:  # last resort: a parser bug must not stop a sync
        return _empty(f"parser failure: {type(exc).__name__}: {str(exc)[:200]}")


def header_message_id(raw: bytes) -> tuple[str | None, bool]:
    """The Message-ID of a message or header block exactly as :func:`parse_message` reads it,
    without parsing anything else: ``(message id or None, True)``; ``(None, False)`` when only
    the full parse can tell (8-bit header bytes that are not UTF-8 are re-decoded there).

    A backfill needs the dedupe key of every message before it fetches bodies; most keys come
    from the Message-ID alone, and parsing whole header blocks for them held the sync's event
    loop process for ~100 us a message.
    """
    try:
        fields, _body, bad8 = _parse_headers(raw, 0, len(raw), [], True)
    except Exception:
        return None, False
    if bad8:
        return None, False
    for name, value in fields:
        if name.lower() == "message-id":
            return _msg_id(value), True
    return None, True


def header_sender_and_date(raw: bytes) -> tuple[str | None, datetime | None] | None:
    """The first From address (lower-cased) and the Date of a message or header block exactly
    as :func:`parse_message` reads them, without parsing anything else; None when only the
    full parse can tell (8-bit header bytes that are not UTF-8). What the sync compares when
    a Message-ID it already has comes again (dev corpus, mean per message on a busy 2-core
    machine: 130-270 us against 485-785 us for parsing the header block)."""
    try:
        fields, _body, bad8 = _parse_headers(raw, 0, len(raw), [], True)
        if bad8:
            return None
        first: dict[str, str] = {}
        for name, value in fields:
            lname = name.lower()
            if lname in ("from", "date"):
                first.setdefault(lname, value)
        senders = _addresses(first.get("from"), [])
        date = _parse_date(first.get("date"), [])
    except Exception:
        return None
    sender = senders[0].email.lower() if senders and senders[0].email else None
    return sender, date


def _parse(raw: bytes, keep: bool) -> ParsedMessage:
    defects: list[str] = []
    if not raw:
        defects.append("empty message")
    fields, body, bad8 = _parse_headers(raw, 0, len(raw), defects, True)
    if not fields and raw:
        defects.append("no header fields")

    first: dict[str, str] = {}
    for name, value in fields:
        first.setdefault(name.lower(), value)

    if bad8:
        # Raw 8-bit headers that are not UTF-8: the body's charset is the best guess of what
        # the sender's software used; otherwise windows-1252.
        _, ctp = _split_params(first.get("content-type", ""))
        guess = ctp.get("charset")
        defects.append("8-bit header bytes that are not UTF-8")
        fields = [
            (
                _fix_8bit(n, guess, defects) if _SURROGATES.search(n) else n,
                _fix_8bit(v, guess, defects) if _SURROGATES.search(v) else v,
            )
            for n, v in fields
        ]
        first = {}
        for name, value in fields:
            first.setdefault(name.lower(), value)

    walk = _Walk(raw, keep, defects)
    walk.entity(fields, body, len(raw), 0, "text/plain", "")

    addrs: dict[str, tuple[ParsedAddress, ...]] = {}
    for header, attr in _ADDRESS_FIELDS.items():
        addrs[attr] = _addresses(first.get(header), defects)

    text = walk.text
    if walk.html is not None and (text is None or not text.strip()):
        text = html_to_text(walk.html)
    raw_subject = first.get("subject", "")
    subject = decode_header_value(raw_subject, defects).strip() if raw_subject else ""
    headers = tuple(
        (n, decode_header_value(v, defects) if "=?" in v else _clean(v)) for n, v in fields
    )
    return ParsedMessage(
        message_id=_msg_id(first.get("message-id")),
        in_reply_to=_msg_id(first.get("in-reply-to")),
        references=_msg_ids(first.get("references")),
        subject=subject,
        date=_parse_date(first.get("date"), defects),
        from_=addrs["from_"],
        sender=addrs["sender"],
        reply_to=addrs["reply_to"],
        to=addrs["to"],
        cc=addrs["cc"],
        bcc=addrs["bcc"],
        text=text,
        html=walk.html,
        snippet=make_snippet(text),
        attachments=tuple(walk.atts),
        defects=tuple(dict.fromkeys(_LONE_SURROGATE.sub("\ufffd", d) for d in defects)),
        headers=headers,
    )


def _clean(value: str) -> str:
    return _CONTROLS.sub(" ", value) if _CONTROLS.search(value) else value
