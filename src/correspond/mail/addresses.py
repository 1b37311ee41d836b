"""Tolerant RFC 5322 §3.4 address-list splitting.

Real mail carries every variant of ``address-list``: quoted display names, comments
(``a@b (Name)``), group syntax (``undisclosed-recipients:;``, RFC 5322 §3.4), obsolete source
routes (``<@relay:a@b>``, RFC 5322 §4.4), stray brackets, doubled ``@``, and raw UTF-8
(RFC 6532). :func:`split_address_list` never raises: it returns what it could read plus a list of
human-readable defects. Display names come back *undecoded* (RFC 2047 decoding is the caller's
job, because it needs the charset machinery in :mod:`correspond.mail.parse`).

IDN domains (``xn--`` labels, RFC 5890/5891) are shown in Unicode by :func:`readable_domain`; the
local part is kept exactly as sent.
"""

from __future__ import annotations

import contextlib

__all__ = ["readable_domain", "split_address_list"]

# Characters that end an unquoted atom run; '@' and '.' are part of addr-specs.
_SPECIAL = frozenset('"(<>,:;')
_WS = frozenset(" \t\r\n")


def readable_domain(domain: str) -> str:
    """Show an IDNA A-label domain (``xn--...``, RFC 5891 §5) as Unicode; anything else as given."""
    if "xn--" not in domain.lower():
        return domain
    labels = []
    for label in domain.split("."):
        if label[:4].lower() == "xn--":
            # A broken A-label stays as sent: readable enough, and never fatal.
            with contextlib.suppress(UnicodeError, ValueError):
                label = label.encode("ascii").decode("idna")
        labels.append(label)
    return ".".join(labels)


def _finish(
    raw: list[str],
    words: list[str],
    comments: list[str],
    angle: str | None,
    out: list[tuple[str, str]],
    defects: list[str],
) -> None:
    if angle is not None:
        if "(" in angle:
            angle = _strip_comments(angle)
        addr = "".join(angle.split())
        if addr.startswith("@") and ":" in addr:
            # Obsolete source route (RFC 5322 §4.4): the mailbox follows the last ':'.
            addr = addr.rpartition(":")[2]
        name = " ".join(words) or " ".join(comments)
    else:
        joined = "".join(raw).strip()
        addr = joined if '"' in joined else "".join(joined.split())
        name = " ".join(comments)
        if len(raw) > 1 and '"' not in joined:
            with_at = [w for w in raw if "@" in w]
            if not with_at:
                # Several words and no '@': a bare display name ("undisclosed recipients").
                name, addr = " ".join(words), ""
            elif len(with_at) > 1:
                # "a@x b@y": a missing comma; keep every address rather than glue them.
                defects.append("addresses not separated by commas")
                for extra in with_at[:-1]:
                    _finish([extra], [extra], [], None, out, defects)
                addr = with_at[-1]
            elif raw[-1] is with_at[0]:
                # "Big Bug bb@bug.com": a display name without the angle brackets.
                defects.append("display name without angle brackets")
                name, addr = " ".join(raw[:-1]), raw[-1]
    if not addr:
        if name:
            defects.append(f"address without an addr-spec: {name[:80]!r}")
        return
    if "@" in addr:
        local, _, domain = addr.rpartition("@")
        if "@" in local and not local.startswith('"'):
            defects.append(f"address with more than one '@': {addr[:80]!r}")
        addr = f"{local}@{readable_domain(domain)}"
    out.append((" ".join(name.split()), addr))


def _strip_comments(text: str) -> str:
    out = []
    depth = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and depth:
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(c)
        i += 1
    return "".join(out)


def split_address_list(value: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Split an RFC 5322 §3.4 ``address-list`` into ``(display name, addr-spec)`` pairs.

    Groups contribute their members; an empty group (``undisclosed-recipients:;``) contributes
    nothing. Names are returned raw (quotes removed, RFC 2047 words still encoded).
    Never raises.
    """
    out: list[tuple[str, str]] = []
    defects: list[str] = []
    raw: list[str] = []  # the mailbox text as sent, without comments (addr-spec when no <>)
    words: list[str] = []  # display-name words, quotes removed
    comments: list[str] = []
    angle: str | None = None
    in_group = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c in _WS:
            i += 1
            continue
        if c == '"':
            j = i + 1
            buf = []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(value[j])
                j += 1
            if j >= n:
                defects.append("unterminated quoted string in address")
            text = "".join(buf)
            if angle is None:
                if raw and i and value[i - 1] not in _WS:
                    raw[-1] += value[i : j + 1]
                else:
                    raw.append(value[i : j + 1])
            words.append(text)
            i = j + 1
        elif c == "(":
            depth = 1
            j = i + 1
            start = j
            while j < n and depth:
                ch = value[j]
                if ch == "\\":
                    j += 1
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                j += 1
            if depth:
                defects.append("unterminated comment in address")
                comments.append(value[start:j].strip())
            else:
                comments.append(value[start : j - 1].strip())
            i = j
        elif c == "<":
            j = value.find(">", i + 1)
            if j < 0:
                defects.append("unterminated '<' in address")
                stop = value.find(",", i + 1)
                j = n if stop < 0 else stop
                content = value[i + 1 : j]
                i = j
            else:
                content = value[i + 1 : j]
                i = j + 1
            if angle is None:
                angle = content
            else:
                defects.append("address with two angle-addrs")
        elif c == ",":
            _finish(raw, words, comments, angle, out, defects)
            raw, words, comments, angle = [], [], [], None
            i += 1
        elif c == ":" and angle is None and not in_group:
            # Group start (RFC 5322 §3.4): what came before is the group's name, not a mailbox.
            in_group = True
            raw, words, comments = [], [], []
            i += 1
        elif c == ";":
            _finish(raw, words, comments, angle, out, defects)
            raw, words, comments, angle = [], [], [], None
            in_group = False
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIAL and value[j] not in _WS:
                j += 1
            if j == i:  # a stray '>' or ':' - keep it as text so nothing loops
                j = i + 1
                defects.append(f"stray {c!r} in address")
            atom = value[i:j]
            if ")" in atom:
                defects.append("stray ')' in address")
            if angle is None:
                if raw and value[i - 1] not in _WS:
                    raw[-1] += atom  # glued to a comment or quoted string: same word
                else:
                    raw.append(atom)
            words.append(atom)
            # Whitespace between atoms matters only for the display name (joined with spaces).
            i = j
    _finish(raw, words, comments, angle, out, defects)
    return out, defects
