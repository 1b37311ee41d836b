"""Sans-IO IMAP4rev1/IMAP4rev2 protocol: response parser and command encoder.

Pure: no asyncio, no sockets, no logging. Bytes go in (``ResponseParser.feed``), responses come out
(``ResponseParser.next_response``, ``None`` meaning "need more bytes"), in the manner of h11.

Framing (RFC 3501 §2.2, §4.3; RFC 9051 §4.3): a response is a line ending in CRLF, except that a
line ending in a literal marker ``{n}`` (also ``{n+}``, RFC 7888, and literal8 ``~{n}``, RFC 3516)
is followed by exactly n bytes of literal data and then the rest of the response. The parser keeps
one ``bytearray``; it searches for the line end from where it stopped last time and takes each
literal as a single slice once all of it has arrived. Large literals are collected as a list of the
fed chunks and joined once, so a 20 MB body fed in 64 KB pieces is copied a constant number of
times. Only the small non-literal parts are tokenized (``_lexer``) and interpreted (``_fetch``).

Errors: input that is not IMAP raises ``ImapProtocolError`` and only that. The offending response
is dropped (the rest of it is skipped as it arrives) and parsing continues with the next one; the
error carries the sanitised start of that response (``response_excerpt``) for a person to report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from correspond.errors import ImapLimitExceeded, ImapProtocolError
from correspond.imap._fetch import parse_fetch_items, parse_internaldate, to_int
from correspond.imap._lexer import DroppedLiteral, Value, decode_segment, text_of, tokenize
from correspond.imap.mutf7 import decode_mutf7
from correspond.imap.types import (
    AppendUid,
    CapabilityResponse,
    ContinuationRequest,
    CopyUid,
    EnabledResponse,
    ESearchResponse,
    ExistsResponse,
    ExpungeResponse,
    FetchResponse,
    FlagsResponse,
    GenericUntagged,
    IdResponse,
    ListResponse,
    RecentResponse,
    Response,
    ResponseCode,
    SearchResponse,
    StatusDataResponse,
    StatusResponse,
    TaggedResponse,
    VanishedResponse,
)

__all__ = [
    "Arg",
    "Atom",
    "DroppedLiteral",
    "EncodedCommand",
    "Literal",
    "Raw",
    "ResponseParser",
    "encode_command",
    "format_sequence_set",
    "parse_command",
    "parse_response",
    "parse_sequence_set",
    "response_excerpt",
]

# ---------------------------------------------------------------------------------------------
# Response parser
# ---------------------------------------------------------------------------------------------

# A literal marker at the very end of a line: {n}, {n+} (RFC 7888), ~{n} (RFC 3516 literal8).
_LITERAL_END: Final = re.compile(rb"~?\{(\d{1,20})\+?\}$")
# The dominant shape of a sync, ``UID FETCH n:m (UID BODY.PEEK[...])``, answered as
# "* n FETCH (UID u BODY[sec] {size}" literal ")" (or with UID after the body). It is built
# directly instead of through the general tokenizer; anything else takes the general path.
# Simple items may precede the body, as servers answer a sync's
# ``(UID FLAGS INTERNALDATE RFC822.SIZE [MODSEQ] BODY.PEEK[...])``; each is read by one regex.
_FAST_FLAG = rb"[!#-'*-Z^-z|~\\]+"
_FAST_ITEM: Final = re.compile(
    rb"(UID|RFC822\.SIZE) ([0-9]{1,18}) "
    rb"|FLAGS \(((?:" + _FAST_FLAG + rb"(?: " + _FAST_FLAG + rb")*)?)\) "
    rb'|INTERNALDATE "([ -!#-\[\]-~]{1,40})" '
    rb"|MODSEQ \(([0-9]{1,19})\) "
)
_FAST_FETCH_HEAD: Final = re.compile(
    rb"\* ([0-9]{1,18}) FETCH \(((?:(?:UID|RFC822\.SIZE) [0-9]{1,18} "
    rb"|FLAGS \((?:" + _FAST_FLAG + rb"(?: " + _FAST_FLAG + rb")*)?\) "
    rb'|INTERNALDATE "[ -!#-\[\]-~]{1,40}" '
    rb"|MODSEQ \([0-9]{1,19}\) )*)BODY\[([A-Z0-9.]*)\] $"
)
_FAST_FETCH_TAIL: Final = re.compile(rb"(?: UID ([0-9]{1,18}))?\)")
# Above this many missing bytes a literal is collected as a list of fed chunks instead of
# growing the buffer, so it is copied once at the end (no repeated bytearray reallocation).
_CHUNKED_LITERAL: Final = 256 * 1024
# A FETCH of one message carries a handful of literals; a server sending endless tiny ones in a
# single response must not grow the parser's lists without bound.
_MAX_LITERALS: Final = 10_000
# An untagged FETCH response: its literals are message data (bodies, headers, parts).
_FETCH_START: Final = re.compile(rb"\* +[0-9]+ +FETCH[ (]", re.I)
# A header item just before a literal marker: header blocks are kept whatever their size (the
# sync keys messages on them; the command's byte budget still bounds them).
_HEADER_ITEM: Final = re.compile(
    rb"(?:(?:HEADER|MIME)(?:\.FIELDS(?:\.NOT)? ?\([^()]*\))?\](?:<[0-9]+>)?|RFC822\.HEADER) ?$",
    re.I,
)
_DEFAULT_SET_LIMIT: Final = 10_000_000
_MAX_NUMBER: Final = 2**63  # RFC 7162 §7: the largest IMAP number is a 63-bit mod-sequence
_STATUS_WORDS: Final = frozenset({b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"})
_INT_CODES: Final = frozenset({"UIDVALIDITY", "UIDNEXT", "UNSEEN", "HIGHESTMODSEQ", "APPENDLIMIT"})
_LIST_CODES: Final = frozenset({"PERMANENTFLAGS", "BADCHARSET"})
_BARE_CODES: Final = frozenset(
    {
        "ALERT",
        "TRYCREATE",
        "READ-WRITE",
        "READ-ONLY",
        "NOMODSEQ",
        "CLOSED",
        "PARSE",
        "UIDNOTSTICKY",
        "UNAVAILABLE",
        "AUTHENTICATIONFAILED",
        "AUTHORIZATIONFAILED",
        "EXPIRED",
        "PRIVACYREQUIRED",
        "CONTACTADMIN",
        "NOPERM",
        "INUSE",
        "EXPUNGEISSUED",
        "CORRUPTION",
        "SERVERBUG",
        "CLIENTBUG",
        "CANNOT",
        "LIMIT",
        "OVERQUOTA",
        "ALREADYEXISTS",
        "NONEXISTENT",
        "COMPRESSIONACTIVE",
        "HASCHILDREN",
        "NOTSAVED",
        "UNKNOWN-CTE",
    }
)


class ResponseParser:
    """Incremental IMAP response parser (RFC 3501 §7, RFC 9051 §7): feed bytes, take responses.

    ``max_line`` bounds one line (not counting literals, RFC 2683 §3.2.1.5 recommends servers
    keep lines short); ``max_literal`` bounds one literal. Exceeding either raises
    ImapProtocolError, and the rest of that response is skipped without being buffered.

    Memory bounds against a hostile server (the client sets them per command):

    * ``max_message_literal``: a literal of an untagged FETCH above it is not kept: its bytes are
      skipped as they arrive and a :class:`DroppedLiteral` stands in its place (the FETCH
      response then lists the section in ``dropped``). Header items (``BODY[HEADER]``,
      ``HEADER.FIELDS``, ``MIME``, ``RFC822.HEADER``) are kept whatever their size: messages
      are keyed on them; ``max_response`` bounds them. ``max_literal`` bounds literals outside
      FETCH.
    * ``max_response``: the bytes (lines and kept literals) of one response; a literal is
      checked against it at its ``{n}`` marker, before any of it is buffered. Exceeding it
      raises :class:`~correspond.errors.ImapLimitExceeded`.
    * ``max_sequence_set``: numbers a sequence set (SEARCH, ESEARCH, VANISHED, COPYUID) may
      expand to, counted before expanding.

    ``response_bytes`` and ``literal_bytes`` count the bytes of every response built so far
    (all of it, and its kept literals), so a caller can sum them per command.
    """

    __slots__ = (
        "_buf",
        "_discard",
        "_in_fetch",
        "_lit_chunks",
        "_lit_need",
        "_lits",
        "_markers",
        "_max_line",
        "_max_literal",
        "_pos",
        "_resp_bytes",
        "_scan",
        "_segs",
        "_skip_lit",
        "literal_bytes",
        "max_message_literal",
        "max_response",
        "max_sequence_set",
        "response_bytes",
    )

    def __init__(
        self,
        *,
        max_line: int = 1_000_000,
        max_literal: int = 2**31,
        max_message_literal: int | None = None,
        max_response: int | None = None,
        max_sequence_set: int = _DEFAULT_SET_LIMIT,
    ) -> None:
        self._max_line = max_line
        self._max_literal = max_literal
        self.max_message_literal = max_message_literal
        self.max_response = max_response
        self.max_sequence_set = max_sequence_set
        self.response_bytes = 0
        self.literal_bytes = 0
        self._resp_bytes = 0  # bytes of the response being read (lines and kept literals)
        self._in_fetch = False  # the response being read is an untagged FETCH
        self._skip_lit = 0  # size of the literal being dropped (over max_message_literal), or 0
        self._buf = bytearray()
        self._pos = 0  # first byte not yet consumed
        self._scan = 0  # where the search for the next LF resumes (never rescan)
        self._segs: list[bytes] = []  # line segments of the response being read (markers cut)
        self._markers: list[bytes] = []  # the literal markers cut off, to rebuild raw bytes
        self._lits: list[bytes] = []  # literals read so far for this response
        self._lit_need = -1  # bytes still missing for the current literal; -1: reading a line
        self._lit_chunks: list[bytes] | None = None  # large literal collected outside the buffer
        self._discard = False  # skipping the rest of a response that was refused

    def feed(self, data: bytes) -> None:
        """Add bytes received from the server (any split: one byte or megabytes)."""
        if not data:
            return
        chunks = self._lit_chunks
        if chunks is not None:
            need = self._lit_need
            take = data if len(data) <= need else data[:need]
            skipping = self._discard or self._skip_lit
            if not skipping:
                chunks.append(bytes(take))
            need -= len(take)
            self._lit_need = need
            if need:
                return
            if self._skip_lit:
                self._end_skipped_literal()
            elif not self._discard:
                self._lits.append(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            self._lit_chunks = None
            self._lit_need = -1
            data = data[len(take) :]
            if not data:
                return
        buf = self._buf
        pos = self._pos
        if pos:
            # Drop consumed bytes once per feed. CPython deletes a bytearray prefix by moving its
            # start pointer (no memmove of the rest), so this stays cheap with a big backlog.
            if pos >= len(buf):
                buf.clear()
            else:
                del buf[:pos]
            self._scan -= pos
            self._pos = 0
        buf += data

    def pending_literal(self) -> int:
        """Bytes still awaited for the literal being read (0 when not inside a literal)."""
        need = self._lit_need
        if need < 0:
            return 0
        if self._lit_chunks is not None:
            return need
        return max(0, need - (len(self._buf) - self._pos))

    def buffered(self) -> int:
        """Bytes received but not yet returned as responses (0 between complete responses).

        The client checks this after a tagged STARTTLS OK: anything already buffered was sent
        before the TLS handshake and must not be trusted (CVE-2011-0411 class)."""
        pending = len(self._buf) - self._pos
        if self._lit_chunks is not None:
            pending += sum(len(c) for c in self._lit_chunks)
        if self._segs:
            pending += sum(len(s) for s in self._segs) + sum(len(x) for x in self._lits)
        return pending

    def _start_discard(self) -> None:
        self._discard = True
        self._skip_lit = 0
        self._segs = []
        self._markers = []
        self._lits = []
        self._resp_bytes = 0

    def _end_skipped_literal(self) -> None:
        self._lits.append(DroppedLiteral(self._skip_lit))
        self._skip_lit = 0

    def _over_budget(self, size: int, what: str) -> ImapLimitExceeded | None:
        """The error to raise when ``size`` more bytes would take the response being read
        over ``max_response``; else None."""
        limit = self.max_response
        if limit is None or self._resp_bytes + size <= limit:
            return None
        return ImapLimitExceeded(
            f"the server sent more than {limit} bytes for one command ({what})",
            setting="imap_max_command_bytes",
            limit=limit,
        )

    def next_response(self) -> Response | None:
        """The next complete response, or None when more bytes are needed."""
        buf = self._buf
        while True:
            need = self._lit_need
            if need >= 0:
                if self._lit_chunks is not None:
                    return None  # feed() is collecting a large literal
                pos = self._pos
                avail = len(buf) - pos
                if avail >= need:
                    if self._discard:
                        pass
                    elif self._skip_lit:
                        self._end_skipped_literal()
                    elif need < 65536:
                        self._lits.append(bytes(buf[pos : pos + need]))
                    else:
                        # One copy straight out of the buffer (a bytearray slice would be two).
                        with memoryview(buf) as view:
                            self._lits.append(view[pos : pos + need].tobytes())
                    self._pos = self._scan = pos + need
                    self._lit_need = -1
                    continue
                if self._discard or self._skip_lit:
                    self._lit_chunks = []
                    self._lit_need = need - avail
                    self._pos = self._scan = len(buf)
                elif need - avail > _CHUNKED_LITERAL:
                    self._lit_chunks = [bytes(buf[pos:])]
                    self._lit_need = need - avail
                    self._pos = self._scan = len(buf)
                return None

            pos = self._pos
            end = buf.find(b"\n", self._scan)
            if end < 0:
                self._scan = len(buf)
                if len(buf) - pos > self._max_line:
                    if self._discard:
                        # Keep a short tail: the line's end may still carry a literal marker.
                        self._pos = max(pos, len(buf) - 32)
                        return None
                    self._start_discard()
                    raise ImapProtocolError(f"response line longer than {self._max_line} bytes")
                return None
            nxt = end + 1
            if end > pos and buf[end - 1] == 13:  # CRLF; a bare LF is tolerated
                end -= 1
            line = bytes(buf[pos:end])
            self._pos = self._scan = nxt

            too_long = len(line) > self._max_line
            if self._discard or too_long:
                was_discarding = self._discard
                m = _literal_marker(line) if line.endswith(b"}") else None
                if m is not None:
                    self._start_discard()
                    self._lit_need = int(m.group(1))
                elif was_discarding or too_long:
                    self._discard = False
                    self._segs, self._markers, self._lits = [], [], []
                    self._resp_bytes = 0
                if too_long and not was_discarding:
                    raise ImapProtocolError(f"response line longer than {self._max_line} bytes")
                continue

            segs = self._segs
            if line.endswith(b"}") and (segs or _may_have_literals(line)):
                m = _literal_marker(line)
                if m is not None:
                    size = int(m.group(1))
                    if not segs:
                        self._in_fetch = _FETCH_START.match(line) is not None
                    cap = self.max_message_literal
                    message = cap is not None and self._in_fetch
                    drop = (
                        message
                        and size > cap  # type: ignore[operator]
                        and _HEADER_ITEM.search(line, max(0, m.start() - 2000), m.start()) is None
                    )
                    if size > self._max_literal and not message:
                        self._start_discard()
                        self._lit_need = size
                        raise ImapProtocolError(
                            f"literal of {size} bytes exceeds the limit of {self._max_literal}"
                        )
                    if len(segs) >= _MAX_LITERALS:
                        self._start_discard()
                        self._lit_need = size
                        raise ImapProtocolError(f"more than {_MAX_LITERALS} literals in a response")
                    seg = line[: m.start()]
                    kept = len(seg) + (0 if drop else size)
                    budget = self.max_response
                    if budget is not None and self._resp_bytes + kept > budget:
                        over = self._over_budget(kept, f"a literal of {size} bytes")
                        self._start_discard()
                        self._lit_need = size
                        if over is not None:
                            raise over
                    self._resp_bytes += kept
                    segs.append(seg)
                    self._markers.append(m.group())
                    self._lit_need = size
                    if drop:
                        self._skip_lit = size
                    continue
            limit = self.max_response
            if limit is not None and self._resp_bytes + len(line) > limit:
                over = self._over_budget(len(line), "untagged responses")
                self._segs, self._markers, self._lits = [], [], []
                self._resp_bytes = 0
                if over is not None:
                    raise over
            segs.append(line)
            lits = self._lits
            markers = self._markers
            self._segs, self._markers, self._lits = [], [], []
            self.response_bytes += self._resp_bytes + len(line)
            if lits:
                self.literal_bytes += len(lits[0]) if len(lits) == 1 else sum(map(len, lits))
            self._resp_bytes = 0
            return _build(segs, markers, lits, self.max_sequence_set)

    def __repr__(self) -> str:
        return (
            f"<ResponseParser buffered={len(self._buf) - self._pos} "
            f"pending_literal={self.pending_literal()}>"
        )


def _literal_marker(line: bytes) -> re.Match[bytes] | None:
    # Only the last 25 bytes can hold a marker ("~{" + 20 digits + "+}"): never scan a long line.
    return _LITERAL_END.search(line, max(0, len(line) - 25))


def _may_have_literals(line: bytes) -> bool:
    """Only untagged data responses carry literals; ``resp-text`` (tagged, OK/NO/BAD/BYE,
    continuation) is plain text even if it happens to end in ``{5}`` (RFC 3501 §9)."""
    if line[:2] != b"* ":
        return False
    if line[2:3].isdigit():  # "* n FETCH ...": the common case
        return True
    word = line[2:12].split(b" ", 1)[0]
    if not word:  # "*  OK ...": repeated spaces, tolerated as in _untagged
        word = line[2:].lstrip(b" ")[:10].split(b" ", 1)[0]
    return word.upper() not in _STATUS_WORDS


def parse_response(data: bytes) -> Response:
    """Parse exactly one complete response (including its final CRLF); for tests and tools."""
    parser = ResponseParser()
    parser.feed(data)
    response = parser.next_response()
    if response is None:
        raise ImapProtocolError("incomplete response")
    return response


def _raw(segs: list[bytes], markers: list[bytes], lits: list[bytes]) -> bytes:
    out = [segs[0]]
    for marker, lit, seg in zip(markers, lits, segs[1:], strict=False):
        out += (marker, b"\r\n", lit, seg)
    return b"".join(out)


# The note that carries the start of a refused response (see ``response_excerpt``).
_EXCERPT_NOTE: Final = "IMAP response: "
_EXCERPT_CHARS: Final = 80


def _excerpt(line: bytes) -> str:
    """The start of a response line, safe to print: no control or format characters (a hostile
    server must not drive the user's terminal), at most ``_EXCERPT_CHARS`` characters."""
    text = line[: _EXCERPT_CHARS * 4].decode("utf-8", "replace")
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[:_EXCERPT_CHARS])
    return clean + "…" if len(text) > _EXCERPT_CHARS else clean


def response_excerpt(exc: BaseException) -> str | None:
    """The sanitised start of the response that raised ``exc`` in the parser, or None.

    The parser attaches it as an exception note (PEP 678) rather than to the message, so the
    messages stay short and a person can still be shown what the server actually sent."""
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, str) and note.startswith(_EXCERPT_NOTE):
            return note[len(_EXCERPT_NOTE) :]
    return None


def _build(
    segs: list[bytes], markers: list[bytes], lits: list[bytes], limit: int = _DEFAULT_SET_LIMIT
) -> Response:
    """Interpret one framed response; foreign exceptions from a bug become protocol errors."""
    try:
        return _interpret(segs, markers, lits, limit)
    except ImapProtocolError as exc:
        exc.add_note(_EXCERPT_NOTE + _excerpt(segs[0]))
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, RecursionError) as exc:
        error = ImapProtocolError(f"cannot parse response: {exc}"[:300])
        error.add_note(_EXCERPT_NOTE + _excerpt(segs[0]))
        raise error from exc


def _interpret(segs: list[bytes], markers: list[bytes], lits: list[bytes], limit: int) -> Response:
    line = segs[0]
    first = line[:1]
    if first == b"*":
        return _untagged(segs, markers, lits, limit)
    if first == b"+":
        # RFC 3501 §7.5: "+" SP (resp-text / base64); some servers omit the space.
        return ContinuationRequest(
            text=text_of(decode_segment(line[2:] if line[1:2] == b" " else line[1:]))
        )
    if first == b"[":
        # Exchange answers MOVE with a bare "[COPYUID ...]" line; keep the code it carries.
        code, text = _resp_text(line, limit)
        return StatusResponse(status="OK", code=code, text=text)
    return _tagged(line, limit)


def _tagged(line: bytes, limit: int = _DEFAULT_SET_LIMIT) -> TaggedResponse:
    """``tag SP ("OK" / "NO" / "BAD") SP resp-text`` (RFC 3501 §7.1)."""
    tag, _, rest = line.partition(b" ")
    status, _, text = rest.partition(b" ")
    if not status and rest:
        # "C3  OK  done": repeated spaces from a sloppy server; the text's own leading spaces
        # go in _resp_text. Only on this path, so well-formed lines pay nothing.
        status, _, text = rest.lstrip(b" ").partition(b" ")
    status = status.upper()
    if not tag or not tag.isascii() or status not in (b"OK", b"NO", b"BAD"):
        raise ImapProtocolError(f"not an IMAP response: {line[:80]!r}")
    code, shown = _resp_text(text, limit)
    return TaggedResponse(
        tag=tag.decode("ascii"),
        status="OK" if status == b"OK" else "NO" if status == b"NO" else "BAD",
        code=code,
        text=shown,
    )


def _resp_text(data: bytes, limit: int = _DEFAULT_SET_LIMIT) -> tuple[ResponseCode | None, str]:
    """``resp-text = ["[" resp-text-code "]" SP] text`` (RFC 3501 §7.1, §9)."""
    text = text_of(decode_segment(data)).lstrip(" ")
    if not text.startswith("["):
        return None, text
    close = text.find("]")
    if close < 0:
        return None, text
    shown = text[close + 1 :].lstrip(" ")
    if not text[1:close].strip():
        return None, shown  # "[]" names no code
    return _response_code(text[1:close], limit), shown


def _response_code(inner: str, limit: int = _DEFAULT_SET_LIMIT) -> ResponseCode:
    name, _, rest = inner.strip().partition(" ")
    name = name.upper()
    rest = rest.strip()
    value: object = rest or None
    if name in _INT_CODES:
        # Same range as every other number (RFC 7162: mod-sequences below 2^63); beyond it the
        # server's word is not a number we can use, like a missing one.
        try:
            value = to_int(rest, name)
        except ImapProtocolError:
            value = None
    elif name in _LIST_CODES:
        tokens = _tokens_of(rest)
        flat = tokens[0] if len(tokens) == 1 and isinstance(tokens[0], list) else tokens
        value = tuple(text_of(t) for t in flat if isinstance(t, str | bytes))
    elif name == "CAPABILITY":
        value = tuple(w.upper() for w in rest.split())
    elif name == "COPYUID":
        words = rest.split()
        try:
            if len(words) != 3:
                raise ImapProtocolError("COPYUID needs three fields")
            source = parse_sequence_set(words[1], limit=limit)
            dest = parse_sequence_set(words[2], limit=limit)
            if len(source) != len(dest):
                # RFC 4315 §3 pairs the sets by position; unequal sets cannot be paired.
                raise ImapProtocolError("COPYUID sets differ in size")
            value = CopyUid(to_int(words[0], "COPYUID"), source, dest)
        except ImapProtocolError:
            value = rest  # a broken code must not hide the command's result
    elif name == "APPENDUID":
        words = rest.split()
        try:
            if len(words) != 2:
                raise ImapProtocolError("APPENDUID needs two fields")
            uids = parse_sequence_set(words[1], limit=limit)
            value = AppendUid(to_int(words[0], "APPENDUID"), uids)
        except ImapProtocolError:
            value = rest
    elif name in _BARE_CODES:
        value = rest or None
    return ResponseCode(name=name, value=value)


def _tokens_of(text: str) -> list[Value]:
    try:
        return tokenize([text], [])
    except ImapProtocolError:
        return [w for w in text.strip("()").split()]


def _fast_fetch(number: int, line: bytes, tail_line: bytes, body: bytes) -> FetchResponse | None:
    """The common one-literal FETCH shape built without the tokenizer, or None to take the
    general path (anything unusual: an item twice, an odd date, another shape)."""
    head = _FAST_FETCH_HEAD.fullmatch(line)
    if head is None:
        return None
    tail = _FAST_FETCH_TAIL.fullmatch(tail_line)
    if tail is None:
        return None
    section = head.group(3).decode()
    if isinstance(body, DroppedLiteral):
        resp = FetchResponse(seq=number, dropped={section: body.size})
    else:
        resp = FetchResponse(seq=number, sections={section: body})
    seen: set[bytes] = set()
    for m in _FAST_ITEM.finditer(head.group(2)):
        name, number_b, flags, date, modseq = m.groups()
        key = name or (b"FLAGS" if flags is not None else b"INTERNALDATE" if date else b"MODSEQ")
        if key in seen:
            return None
        seen.add(key)
        if name == b"UID":
            resp.uid = int(number_b)
        elif name is not None:
            resp.size = int(number_b)
        elif flags is not None:
            resp.flags = tuple(flags.decode("ascii").split())
        elif date is not None:
            try:
                resp.internaldate = parse_internaldate(date)
            except ImapProtocolError:
                return None
        else:
            resp.modseq = int(modseq)
    if tail.group(1) is not None:
        if resp.uid is not None:
            return None  # UID twice: the general path decides
        resp.uid = int(tail.group(1))
    return resp


def _untagged(segs: list[bytes], markers: list[bytes], lits: list[bytes], limit: int) -> Response:
    line = segs[0]
    rest = line[2:] if line[1:2] == b" " else line[1:]
    word, _, after = rest.partition(b" ")
    if not word:
        # "*  OK  text": repeated spaces from a sloppy server (offsets below count from the
        # end of the line, so they still hold).
        word, _, after = rest.lstrip(b" ").partition(b" ")
        if not word:
            raise ImapProtocolError(f"untagged response without a name: {line[:80]!r}")
    if word.isdigit():
        if len(word) > 19 or (number := int(word)) >= _MAX_NUMBER:
            raise ImapProtocolError(f"number out of range in {line[:80]!r}")
        keyword, _, _tail = after.partition(b" ")
        kw = keyword.upper()
        if kw == b"FETCH":
            if len(segs) == 2:
                fast = _fast_fetch(number, line, segs[1], lits[0])
                if fast is not None:
                    return fast
            start = len(line) - len(after) + len(keyword) + 1
            values = _tokens(segs, lits, start)
            if len(values) != 1:
                raise ImapProtocolError("FETCH: expected one parenthesized list")
            return parse_fetch_items(number, values[0])
        if kw == b"EXISTS":
            return ExistsResponse(number)
        if kw == b"EXPUNGE":
            return ExpungeResponse(number)
        if kw == b"RECENT":
            return RecentResponse(number)
        return GenericUntagged(name=kw.decode("ascii", "replace"), raw=_raw(segs, markers, lits))
    name = word.upper()
    if name in _STATUS_WORDS:
        code, text = _resp_text(after, limit)
        status = name.decode("ascii")
        return StatusResponse(status=status, code=code, text=text)  # type: ignore[arg-type]
    start = len(line) - len(after)
    if name == b"CAPABILITY":
        return CapabilityResponse(frozenset(_upper_words(segs, lits, start)))
    if name == b"ENABLED":
        return EnabledResponse(frozenset(_upper_words(segs, lits, start)))
    if name in (b"LIST", b"LSUB", b"XLIST"):
        kind = "LSUB" if name == b"LSUB" else "LIST"
        return _list(_tokens(segs, lits, start, mailbox=True), kind)
    if name == b"STATUS":
        return _status(_tokens(segs, lits, start, mailbox=True))
    if name in (b"SEARCH", b"SORT"):
        return _search(_tokens(segs, lits, start), limit)
    if name == b"ESEARCH":
        return _esearch(_tokens(segs, lits, start), limit)
    if name == b"FLAGS":
        values = _tokens(segs, lits, start)
        flags = values[0] if values and isinstance(values[0], list) else values
        return FlagsResponse(tuple(text_of(f) for f in flags if isinstance(f, str | bytes)))
    if name == b"VANISHED":
        return _vanished(_tokens(segs, lits, start), limit)
    if name == b"ID":
        return _id(_tokens(segs, lits, start))
    return GenericUntagged(name=name.decode("ascii", "replace"), raw=_raw(segs, markers, lits))


def _tokens(
    segs: list[bytes], lits: list[bytes], start: int, *, mailbox: bool = False
) -> list[Value]:
    # mailbox: LIST/LSUB/STATUS hold astrings, where "[" and "]" are plain name characters.
    return tokenize([decode_segment(s) for s in segs], lits, start, mailbox=mailbox)


def _upper_words(segs: list[bytes], lits: list[bytes], start: int) -> list[str]:
    return [text_of(v).upper() for v in _tokens(segs, lits, start) if isinstance(v, str | bytes)]


def _as_raw(value: Value, what: str) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
    elif value is None:
        return b"NIL"  # an unquoted mailbox named NIL (astring allows it)
    else:
        raise ImapProtocolError(f"{what}: expected a mailbox name, got a list")
    if b"\x00" in raw:
        # No IMAP string can carry NUL (RFC 3501 §9 CHAR8): such a name could never be sent
        # back in a command, nor stored in a PostgreSQL text column.
        raise ImapProtocolError(f"{what}: a mailbox name with a NUL byte")
    return raw


def _list(values: list[Value], kind: str) -> ListResponse:
    """``mailbox-list = "(" [mbx-list-flags] ")" SP (DQUOTE QUOTED-CHAR DQUOTE / nil) SP
    mailbox [SP mbox-list-extended]`` (RFC 3501 §7.2.2, RFC 5258 §9; extended data ignored)."""
    if len(values) < 3:
        raise ImapProtocolError(f"{kind}: expected flags, delimiter and name")
    flags_v, delim_v, name_v = values[0], values[1], values[2]
    if isinstance(flags_v, list):
        flags = tuple(text_of(f) for f in flags_v if isinstance(f, str | bytes))
    elif flags_v is None:
        flags = ()
    else:
        raise ImapProtocolError(f"{kind}: expected a flag list")
    if isinstance(delim_v, list):
        raise ImapProtocolError(f"{kind}: bad delimiter")
    delimiter = None if delim_v is None else text_of(delim_v)
    name_raw = _as_raw(name_v, kind)
    if len(values) > 3 and isinstance(name_v, str) and isinstance(values[3], str):
        # An unquoted name with spaces from a broken server ("Sent Items"): rejoin the words up
        # to the extended data list (RFC 5258), as STATUS does, rather than keep only "Sent".
        words = [name_raw]
        for v in values[3:]:
            if not isinstance(v, str):
                break
            words.append(_as_raw(v, kind))
        name_raw = b" ".join(words)
    return ListResponse(
        flags=flags,
        delimiter=delimiter,
        name_raw=name_raw,
        name=decode_mutf7(name_raw),
        kind="LSUB" if kind == "LSUB" else "LIST",
    )


def _pairs_to_ints(values: Sequence[Value]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(values) - 1, 2):
        key, val = values[i], values[i + 1]
        if not isinstance(key, str | bytes) or val is None or isinstance(val, list):
            continue  # e.g. Gmail "APPENDLIMIT NIL"
        try:
            out[text_of(key).upper()] = to_int(val, "STATUS")
        except ImapProtocolError:
            continue
    return out


def _status(values: list[Value]) -> StatusDataResponse:
    """``"STATUS" SP mailbox SP "(" [status-att-list] ")"`` (RFC 3501 §7.2.4)."""
    if len(values) < 2 or not isinstance(values[-1], list):
        raise ImapProtocolError("STATUS: expected a mailbox and a list")
    name_raw = _as_raw(values[0], "STATUS")
    if len(values) > 2:
        # An unquoted name with spaces from a broken server: rejoin the words.
        name_raw = b" ".join(_as_raw(v, "STATUS") for v in values[:-1])
    return StatusDataResponse(
        name_raw=name_raw, name=decode_mutf7(name_raw), values=_pairs_to_ints(values[-1])
    )


def _search(values: list[Value], limit: int = _DEFAULT_SET_LIMIT) -> SearchResponse:
    """``"SEARCH" *(SP nz-number) [SP "(" "MODSEQ" SP mod-sequence-value ")"]``

    (RFC 3501 §7.2.5, RFC 7162 §3.1.5). ``* SORT`` (RFC 5256) has the same shape and is
    returned as a SearchResponse too (its order is kept)."""
    modseq = None
    if values and isinstance(values[-1], list):
        tail = values.pop()
        assert isinstance(tail, list)
        if len(tail) >= 2 and isinstance(tail[0], str) and tail[0].upper() == "MODSEQ":
            modseq = to_int(tail[1], "SEARCH MODSEQ")
    if len(values) > limit:
        raise _set_too_large(limit)
    return SearchResponse(tuple(to_int(v, "SEARCH") for v in values), modseq)


def _esearch(values: list[Value], limit: int = _DEFAULT_SET_LIMIT) -> ESearchResponse:
    """``"ESEARCH" [search-correlator] [SP "UID"] *(SP search-return-data)`` (RFC 4731 §3.1)."""
    tag = None
    i = 0
    if values and isinstance(values[0], list):
        corr = values[0]
        if len(corr) >= 2 and isinstance(corr[0], str) and corr[0].upper() == "TAG":
            tag = text_of(corr[1]) if isinstance(corr[1], str | bytes) else None
        i = 1
    uid = False
    if i < len(values) and isinstance(values[i], str) and str(values[i]).upper() == "UID":
        uid = True
        i += 1
    fields: dict[str, Value] = {}
    while i + 1 < len(values):
        key = values[i]
        if isinstance(key, str):
            fields[key.upper()] = values[i + 1]
        i += 2
    all_value = fields.get("ALL")

    def num(key: str) -> int | None:
        v = fields.get(key)
        return None if v is None else to_int(v, f"ESEARCH {key}")

    return ESearchResponse(
        tag=tag,
        uid=uid,
        min=num("MIN"),
        max=num("MAX"),
        count=num("COUNT"),
        all=(
            parse_sequence_set(text_of(all_value), limit=limit)
            if isinstance(all_value, str | bytes)
            else ()
        ),
        modseq=num("MODSEQ"),
    )


def _id(values: list[Value]) -> IdResponse:
    """``"ID" SP id-params-list``, ``id-params-list = "(" *(string SP nstring) ")" / nil``
    (RFC 2971 §4). A pair whose name is not a string, or whose value is a list, is skipped (the
    answer is informational; a broken server must not fail the command), as is a lone name."""
    if len(values) != 1 or not (values[0] is None or isinstance(values[0], list)):
        raise ImapProtocolError("ID: expected a parenthesized list or NIL")
    params = values[0]
    if params is None:
        return IdResponse(None)
    fields: dict[str, str | None] = {}
    for i in range(0, len(params) - 1, 2):
        key, value = params[i], params[i + 1]
        if key is None or isinstance(key, list) or isinstance(value, list):
            continue
        fields[text_of(key)] = None if value is None else text_of(value)
    return IdResponse(fields)


def _vanished(values: list[Value], limit: int = _DEFAULT_SET_LIMIT) -> VanishedResponse:
    """``"VANISHED" [SP "(EARLIER)"] SP known-uids`` (RFC 7162 §3.2.10)."""
    earlier = False
    if values and isinstance(values[0], list):
        earlier = any(isinstance(v, str) and v.upper() == "EARLIER" for v in values[0])
        values = values[1:]
    if len(values) != 1 or not isinstance(values[0], str):
        raise ImapProtocolError("VANISHED: expected one UID set")
    return VanishedResponse(earlier=earlier, uids=parse_sequence_set(values[0], limit=limit))


# ---------------------------------------------------------------------------------------------
# Sequence sets (RFC 3501 §9 sequence-set)
# ---------------------------------------------------------------------------------------------

_SEQ_SET: Final = re.compile(r"([0-9]+|\*)(?::([0-9]+|\*))?")


def format_sequence_set(uids: Iterable[int]) -> str:
    """A compact sequence set, e.g. ``[1, 2, 3, 4, 5, 8, 10, 11, 12]`` -> ``"1:5,8,10:12"``.

    Numbers are sorted and de-duplicated. An empty set has no IMAP form: ValueError.
    """
    numbers = sorted(set(uids))
    if not numbers:
        raise ValueError("an empty sequence set cannot be sent")
    if numbers[0] < 1:
        raise ValueError("sequence numbers and UIDs start at 1")
    parts: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def _set_too_large(limit: int) -> ImapLimitExceeded:
    return ImapLimitExceeded(
        f"the server sent a set of more than {limit} UIDs or numbers",
        setting="imap_max_search_results",
        limit=limit,
    )


def parse_sequence_set(
    text: str | bytes, *, star: int | None = None, limit: int = _DEFAULT_SET_LIMIT
) -> tuple[int, ...]:
    """Expand a sequence set (RFC 3501 §9) in the order written; ``a:b`` ascends either way.

    ``*`` stands for ``star`` (the largest number in use); without it, ``*`` is an error.
    Order is kept because COPYUID pairs source and destination UIDs by position (RFC 4315 §3).
    More than ``limit`` numbers raise ImapProtocolError rather than exhaust memory.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    out: list[int] = []
    total = 0
    for piece in text.strip().split(","):
        m = _SEQ_SET.fullmatch(piece)
        if m is None:
            raise ImapProtocolError(f"not a sequence set: {text[:80]!r}")
        lo_s, hi_s = m.groups()
        lo = _seq_number(lo_s, star, text)
        hi = lo if hi_s is None else _seq_number(hi_s, star, text)
        if lo > hi:
            lo, hi = hi, lo
        total += hi - lo + 1
        if total > limit:
            raise _set_too_large(limit)
        if lo == hi:
            out.append(lo)
        else:
            out.extend(range(lo, hi + 1))
    return tuple(out)


def _seq_number(s: str, star: int | None, text: str) -> int:
    if s == "*":
        if star is None:
            raise ImapProtocolError(f"'*' in sequence set {text[:80]!r} with no known maximum")
        return star
    if len(s) > 19 or (number := int(s)) >= _MAX_NUMBER:
        raise ImapProtocolError("sequence number too large")
    return number


# ---------------------------------------------------------------------------------------------
# Command encoder (RFC 3501 §6, §9; RFC 7888 LITERAL+; RFC 6855 UTF8=ACCEPT)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Atom:
    """Sent verbatim (flags such as ``\\Seen``, fetch items such as ``BODY.PEEK[]``)."""

    value: str


@dataclass(frozen=True, slots=True)
class Literal:
    """Always sent as a literal (message bodies for APPEND, passwords with odd bytes)."""

    value: bytes


@dataclass(frozen=True, slots=True)
class Raw:
    """Sent verbatim as given, e.g. ``b"1:*"`` or ``b"(FLAGS UID)"``."""

    value: bytes


Arg = str | bytes | int | Atom | Literal | Raw | Sequence["Arg"]


@dataclass(frozen=True, slots=True)
class EncodedCommand:
    """A command ready to send.

    Send ``chunks[0]``; before each further chunk wait for a ``+`` continuation request
    (synchronising literal, RFC 3501 §7.5). With ``literal_plus`` there is exactly one chunk.
    """

    tag: str
    chunks: tuple[bytes, ...]


# ASTRING-CHAR minus a few that are legal but confuse some servers ("[" and "]"), RFC 3501 §9.
_SAFE_ATOM: Final = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|~]+")
_VERBATIM_BAD: Final = re.compile(rb"[\r\n\x00]")


def _check_verbatim(data: bytes, what: str) -> bytes:
    if _VERBATIM_BAD.search(data):
        raise ValueError(f"{what} must not contain CR, LF or NUL: {data[:40]!r}")
    return data


def encode_command(
    tag: str, name: str, *args: Arg, literal_plus: bool = False, utf8: bool = False
) -> EncodedCommand:
    """Encode ``tag SP name *(SP arg) CRLF`` (RFC 3501 §6, §9).

    ``str``/``bytes`` are astrings: an atom when every byte is safe, else a quoted string, else
    a literal (CR, LF, non-ASCII unless ``utf8`` per RFC 6855 §3, or long). ``int`` is a
    number, ``Atom``/``Raw`` go verbatim, ``Literal`` is always a literal, lists and tuples are
    parenthesized. ``literal_plus`` uses non-synchronising ``{n+}`` literals (RFC 7888).
    Mailbox names must be the raw bytes the server sent (``ListResponse.name_raw``).

    NUL fits in no IMAP string (a literal holds CHAR8 = %x01-ff, RFC 3501 §9; only the literal8
    of BINARY, RFC 3516, which this encoder does not write, may carry it): a string argument
    holding one raises ValueError, as CR or LF in an ``Atom`` or ``Raw`` do. An explicit
    :class:`Literal` (a message for APPEND) is sent as it is: real mail does carry stray NULs,
    servers store them (Dovecot does), and refusing would lose the message.
    """
    tag_b = tag.encode("ascii")
    if not tag_b or not _SAFE_ATOM.fullmatch(tag_b) or b"+" in tag_b:
        raise ValueError(f"invalid tag {tag!r}")
    chunks: list[bytes] = []
    cur = bytearray(tag_b)
    cur += b" "
    cur += _check_verbatim(name.encode("ascii"), "command name")
    for arg in args:
        cur += b" "
        _encode_arg(arg, cur, chunks, literal_plus, utf8, 0)
    cur += b"\r\n"
    chunks.append(bytes(cur))
    return EncodedCommand(tag=tag, chunks=tuple(chunks))


def _encode_literal(
    data: bytes, cur: bytearray, chunks: list[bytes], literal_plus: bool, *, message: bool = False
) -> None:
    if not message and b"\x00" in data:
        # Not the data itself in the message: it may be a password.
        where = f"byte {data.index(0)} of {len(data)}"
        raise ValueError(f"IMAP strings cannot hold NUL (RFC 3501 §9 CHAR8): {where}")
    if literal_plus:
        cur += b"{%d+}\r\n" % len(data)
        cur += data
    else:
        cur += b"{%d}\r\n" % len(data)
        chunks.append(bytes(cur))
        cur.clear()
        cur += data


def _encode_arg(
    arg: Arg, cur: bytearray, chunks: list[bytes], literal_plus: bool, utf8: bool, depth: int
) -> None:
    if isinstance(arg, bool):
        raise TypeError("bool is not an IMAP argument")
    if isinstance(arg, int):
        if arg < 0:
            raise ValueError("IMAP numbers are unsigned")
        cur += str(arg).encode("ascii")
    elif isinstance(arg, Atom):
        cur += _check_verbatim(arg.value.encode("utf-8"), "Atom")
    elif isinstance(arg, Raw):
        cur += _check_verbatim(arg.value, "Raw")
    elif isinstance(arg, Literal):
        _encode_literal(arg.value, cur, chunks, literal_plus, message=True)
    elif isinstance(arg, str | bytes):
        data = arg.encode("utf-8") if isinstance(arg, str) else arg
        if _SAFE_ATOM.fullmatch(data) and data.upper() != b"NIL":
            cur += data
        elif len(data) <= 1024 and not _VERBATIM_BAD.search(data) and (utf8 or data.isascii()):
            cur += b'"'
            cur += data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            cur += b'"'
        else:
            _encode_literal(data, cur, chunks, literal_plus)
    elif isinstance(arg, Sequence):
        if depth > 50:
            raise ValueError("arguments nested too deeply")
        cur += b"("
        for i, item in enumerate(arg):
            if i:
                cur += b" "
            _encode_arg(item, cur, chunks, literal_plus, utf8, depth + 1)
        cur += b")"
    else:
        raise TypeError(f"cannot encode {type(arg).__name__} as an IMAP argument")


# ---------------------------------------------------------------------------------------------
# Server-side command parser (for tests and fake servers)
# ---------------------------------------------------------------------------------------------

_CMD_ATOM: Final = re.compile(
    rb"[^\x00-\x20()\"{\[\]\x7f]*(?:\[[^\]\r\n]*\][^\x00-\x20()\"{\[\]\x7f]*)?"
)
_CMD_LITERAL: Final = re.compile(rb"~?\{(\d{1,20})\+?\}\r\n")
_CMD_QUOTED: Final = re.compile(rb'"((?:[^"\\\r\n]|\\["\\])*)"')


def parse_command(data: bytes) -> tuple[str, str, list[object]]:
    """Parse one complete client command, literals inline (RFC 3501 §9 ``command``).

    Returns ``(tag, name, args)``: name upper-cased (``UID`` joined with its command, e.g.
    ``"UID FETCH"``); each arg is an ``Atom`` (atoms and numbers), ``bytes`` (quoted strings
    and literals) or a ``list`` (parenthesized). Raises ImapProtocolError on bad input.
    """
    if not data.endswith(b"\r\n"):
        raise ImapProtocolError("command must end with CRLF")
    end = len(data) - 2
    m = _CMD_ATOM.match(data, 0)
    if m is None or not m.group() or data[m.end() : m.end() + 1] != b" ":
        raise ImapProtocolError("command must start with a tag")
    tag = m.group().decode("ascii", "replace")
    pos = m.end() + 1
    m = _CMD_ATOM.match(data, pos)
    if m is None or not m.group():
        raise ImapProtocolError("missing command name")
    name = m.group().decode("ascii", "replace").upper()
    pos = m.end()
    args: list[object] = []
    stack: list[list[object]] = []
    cur = args
    need_space = True  # values are separated by one space, except right after "("
    while pos < end:
        ch = data[pos : pos + 1]
        if ch == b")":
            if not stack:
                raise ImapProtocolError("unbalanced ')' in command")
            cur = stack.pop()
            pos += 1
            need_space = True
            continue
        if need_space:
            if ch != b" ":
                raise ImapProtocolError(f"expected a space at offset {pos}")
            pos += 1
            ch = data[pos : pos + 1]
        if ch == b"(":
            new: list[object] = []
            cur.append(new)
            stack.append(cur)
            cur = new
            pos += 1
            need_space = False
            continue
        pos = _parse_cmd_value(data, pos, end, cur)
        need_space = True
    if stack:
        raise ImapProtocolError("unbalanced '(' in command")
    if name == "UID" and args and isinstance(args[0], Atom):
        name = "UID " + args[0].value.upper()
        del args[0]
    return tag, name, args


def _parse_cmd_value(data: bytes, pos: int, end: int, cur: list[object]) -> int:
    ch = data[pos : pos + 1]
    if ch == b'"':
        m = _CMD_QUOTED.match(data, pos)
        if m is None:
            raise ImapProtocolError(f"bad quoted string at offset {pos}")
        inner = m.group(1)
        cur.append(re.sub(rb"\\(.)", rb"\1", inner) if b"\\" in inner else inner)
        return m.end()
    if ch == b"{" or (ch == b"~" and data[pos + 1 : pos + 2] == b"{"):
        m = _CMD_LITERAL.match(data, pos)
        if m is None:
            raise ImapProtocolError(f"bad literal at offset {pos}")
        size = int(m.group(1))
        start = m.end()
        if start + size > end:
            raise ImapProtocolError("literal runs past the end of the command")
        cur.append(data[start : start + size])
        return start + size
    m = _CMD_ATOM.match(data, pos)
    if m is None or not m.group():
        raise ImapProtocolError(f"unexpected byte {ch!r} at offset {pos}")
    cur.append(Atom(m.group().decode("utf-8", "surrogateescape")))
    return m.end()
