"""Tokenizer for the non-literal parts of an IMAP response (RFC 3501 §4, §9; RFC 9051 §4).

A framed response is a list of line segments and the literals between them (the framer in
``protocol.py`` has already cut ``{n}`` / ``{n+}`` / ``~{n}`` markers off the segments). This
module turns that into a small value tree:

* ``str``   an atom or a quoted string (quoted strings unescaped). Segments are decoded as UTF-8
  with ``surrogateescape``, so ``value.encode("utf-8", "surrogateescape")`` gives back the exact
  bytes the server sent (mailbox names must be reused byte-exact).
* ``bytes`` a literal (``{n}`` or literal8 ``~{n}``)
* ``None``  the atom ``NIL`` (any case; a quoted ``"NIL"`` stays a string)
* ``list``  a parenthesized list

Atoms are taken leniently: anything up to a space or parenthesis, plus a bracketed section with
spaces inside (``BODY[HEADER.FIELDS (FROM TO)]<0>``, RFC 3501 §7.4.2), so ``\\Seen``, ``1:*`` and
``[Gmail]/Sent`` are single atoms. A bracket that closes no section is an ordinary character:
``[`` is an ATOM-CHAR and ``]`` an ASTRING-CHAR (RFC 3501 §9), so ``a[b``, ``x]y`` and
``[red]Alert[`` are valid unquoted mailbox names. Where only astrings can occur (the mailbox of
LIST/LSUB/STATUS, ``mailbox=True``) brackets never group: a section there would be a misreading.
Nesting is limited (``MAX_DEPTH``) so hostile input cannot exhaust the stack of the recursive
interpreters that walk the tree.
"""

from __future__ import annotations

import re

from correspond.errors import ImapProtocolError

__all__ = [
    "MAX_DEPTH",
    "DroppedLiteral",
    "Value",
    "decode_segment",
    "text_of",
    "tokenize",
    "unquote",
]

Value = str | bytes | None | list["Value"]

# Above the deepest BODYSTRUCTURE a server sends for one hostile message (Dovecot describes
# up to 100 nested MIME parts, inside the FETCH response's own lists): a response this deep
# fails the whole FETCH and with it the connection. ``_fetch`` cuts the structure at its own
# limit; Python's recursion limit (1000) is far above either.
MAX_DEPTH = 250


class DroppedLiteral(bytes):
    """Stands (empty) for a FETCH literal above ``max_message_literal``: its bytes were read
    and discarded as they arrived; ``size`` is how many the server sent."""

    size: int

    def __new__(cls, size: int) -> DroppedLiteral:
        self = super().__new__(cls)
        self.size = size
        return self


# One regex, one group: findall() returns a flat list of token strings and the loop below
# dispatches on the first character (cheaper than a tuple per token). Inside the group: a quoted
# string whose closing quote is followed by a delimiter; "(" or ")"; an atom, i.e. runs of plain
# characters joined by sections or by lone brackets. A section holds whitespace only in the one
# shape the grammar allows, "HEADER.FIELDS (FROM TO)" (section-spec SP header-list), so labels
# "a[b x]y" stay two atoms; it never holds "[", so "[[[[" stays linear. Outside the group, so
# that findall() yields "" for it: a quoted string with unescaped quotes inside (Exchange/Domino
# send Content-Description ""Quoted" text" and """"), or an unterminated one. That alternative
# consumes the whole would-be string, so no byte is scanned twice (a line of '"\\' repeated must
# not be quadratic); the segment is then re-read by the slower, still linear, ``_lenient_tokens``.
# "\S" is only a safety net: the atom alternative takes every other character.
_PLAIN = r"""[^\s()"\[\]]"""
_JOIN = r"""(?:\[[^\s()\[\]]*(?:[ \t]*\([^()\[\]]*\))?\]|[\[\]])"""  # section or lone bracket
_TOKEN_TEMPLATE = r"""[ \t]*(?:(
      "[^"\\]*(?:\\.[^"\\]*)*" (?=[\s()]|$)
    | [()]
    | ATOM
    )
    | "[^"\\]*(?:\\.[^"\\]*)*"?
    | \S
    )"""
_TOKEN = re.compile(
    _TOKEN_TEMPLATE.replace(
        # Possessive (Python 3.11): an atom never needs to give characters back, and not
        # offering to backtrack keeps this as fast as the bracket-free atom it replaced.
        "ATOM",
        f"{_PLAIN}++ (?:{_JOIN}{_PLAIN}*+)*+ | {_JOIN}{_PLAIN}*+ (?:{_JOIN}{_PLAIN}*+)*+",
    ),
    re.X | re.S | re.ASCII,  # only ASCII whitespace separates tokens (U+00A0 is data)
)
# Mailbox mode: brackets are plain characters, an atom ends only at a space, a parenthesis or a
# quote (ASTRING-CHAR, RFC 3501 §9). "* LIST () "/" a[b ("OLDNAME" ("x]y"))" keeps its name.
_MAILBOX_TOKEN = re.compile(_TOKEN_TEMPLATE.replace("ATOM", r'[^\s()"]++'), re.X | re.S | re.ASCII)
_DELIMITERS = frozenset(" \t()")


def _lenient_end(seg: str, start: int) -> int:
    """Index of the quote closing the string opened at ``start``: the first quote followed by a
    delimiter with an even number of unescaped quotes before it; -1 if there is none."""
    inner_quotes = 0
    j = start + 1
    end = len(seg)
    while True:
        j = seg.find('"', j)
        if j < 0:
            return -1
        backslashes = 0
        k = j - 1
        while k > start and seg[k] == "\\":
            backslashes += 1
            k -= 1
        if backslashes % 2 == 0:
            if inner_quotes % 2 == 0 and (j + 1 == end or seg[j + 1] in _DELIMITERS):
                return j
            inner_quotes += 1
        j += 1


def _lenient_tokens(seg: str, pos: int, pattern: re.Pattern[str]) -> list[str]:
    """Tokens of one segment like ``pattern.findall``, but with lenient quoted strings."""
    out: list[str] = []
    match = pattern.match
    while (m := match(seg, pos)) is not None:
        tok = m.group(1)
        if tok is not None:
            out.append(tok)
            pos = m.end()
            continue
        start = m.start() + len(m.group()) - len(m.group().lstrip(" \t"))
        if seg[start] != '"':
            raise ImapProtocolError(f"unexpected character {seg[start]!r} in response")
        end = _lenient_end(seg, start)
        if end < 0:
            raise ImapProtocolError("unterminated quoted string in response")
        out.append(seg[start : end + 1])
        pos = end + 1
    return out


_ESCAPE = re.compile(r"\\(.)", re.S)


def decode_segment(seg: bytes) -> str:
    """Decode a line segment so that encoding back with surrogateescape is byte-exact."""
    return seg.decode("utf-8", "surrogateescape")


def unquote(q: str) -> str:
    """Strip the quotes of a quoted string token and undo ``\\"`` and ``\\\\`` (RFC 3501 §9)."""
    inner = q[1:-1]
    if "\\" in inner:
        return _ESCAPE.sub(r"\1", inner)
    return inner


def text_of(value: str | bytes) -> str:
    """A display string from a token: surrogate-escaped bytes and literals decoded best effort."""
    if isinstance(value, bytes):
        raw = value
    else:
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Raw 8-bit header text from a broken server: Latin-1 shows something for every byte.
        return raw.decode("latin-1")


def tokenize(
    segments: list[str], literals: list[bytes], start: int = 0, *, mailbox: bool = False
) -> list[Value]:
    """Tokenize ``segments[0][start:]``, literal 0, segment 1, ... into a list of values.

    ``mailbox`` is for responses that hold astrings but no FETCH sections (LIST, LSUB, STATUS):
    brackets there are never grouped. Raises ImapProtocolError on unbalanced parentheses, bad
    quoted strings, or nesting deeper than ``MAX_DEPTH``.
    """
    root: list[Value] = []
    cur = root
    append = cur.append  # rebound on every "(" and ")": one attribute lookup per list, not token
    stack: list[list[Value]] = []
    pattern = _MAILBOX_TOKEN if mailbox else _TOKEN
    findall = pattern.findall
    nlit = len(literals)
    for index, seg in enumerate(segments):
        offset = start if index == 0 else 0
        toks = findall(seg, offset)
        if "" in toks:
            toks = _lenient_tokens(seg, offset, pattern)
        for tok in toks:
            first = tok[0]
            if first == '"':
                inner = tok[1:-1]
                append(_ESCAPE.sub(r"\1", inner) if "\\" in inner else inner)
            elif first == "(":
                if len(stack) >= MAX_DEPTH:
                    raise ImapProtocolError(f"response nested deeper than {MAX_DEPTH} lists")
                new: list[Value] = []
                append(new)
                stack.append(cur)
                cur = new
                append = cur.append
            elif first == ")":
                if not stack:
                    raise ImapProtocolError("unbalanced ')' in response")
                cur = stack.pop()
                append = cur.append
            elif tok == "NIL" or (len(tok) == 3 and tok.upper() == "NIL"):
                append(None)
            else:
                append(tok)
        if index < nlit:
            append(literals[index])
    if stack:
        raise ImapProtocolError("unbalanced '(' in response")
    return root
