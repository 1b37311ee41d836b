"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3).

Printable US-ASCII (0x20-0x7E) stands for itself, except ``&`` which is written ``&-``. Any other
run of characters is written as ``&`` + base64 (RFC 2045, with ``,`` instead of ``/`` and no
``=`` padding) of its UTF-16BE form + ``-``.

``encode_mutf7`` is used only to turn a name the *user typed* into wire form; names that came from
the server (``ListResponse.name_raw``) are sent back byte-exact and never re-encoded.
``decode_mutf7`` is for display: it never raises, and passes through what it cannot decode
(broken servers send raw 8-bit or UTF-8 names, odd base64, unterminated shifts; RFC 6855 servers
send UTF-8 once ``UTF8=ACCEPT`` is enabled). ``decode_mutf7(raw, strict=True)`` is the validating
form: it raises ImapProtocolError unless ``raw`` is exactly what ``encode_mutf7`` writes for the
result, so a strictly decoded name always re-encodes byte-exact.
"""

from __future__ import annotations

import base64
import binascii
import re

from correspond.errors import ImapProtocolError

__all__ = ["decode_mutf7", "encode_mutf7"]

# A shifted run: "&" + modified-base64 + "-". "&-" (empty run) is the escaped ampersand.
_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")
_DIRECT = re.compile(r"[\x20-\x25\x27-\x7e]+")
_B64_RUN = re.compile(r"[A-Za-z0-9+,]+")


def _b64_run(chars: str) -> str:
    """Encode a run of non-direct characters as ``&...-`` (RFC 3501 §5.1.3)."""
    # surrogatepass: a lone surrogate in a Python str still round-trips instead of raising.
    data = chars.encode("utf-16-be", "surrogatepass")
    text = base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")
    return "&" + text + "-"


def encode_mutf7(name: str) -> bytes:
    """Encode a mailbox name to modified UTF-7 (RFC 3501 §5.1.3).

    >>> encode_mutf7("~peter/mail/台北/日本語")
    b'~peter/mail/&U,BTFw-/&ZeVnLIqe-'
    """
    out: list[str] = []
    pos = 0
    length = len(name)
    while pos < length:
        m = _DIRECT.match(name, pos)
        if m is not None:
            out.append(m.group())
            pos = m.end()
            continue
        if name[pos] == "&":
            out.append("&-")
            pos += 1
            continue
        # Collect the whole run of characters that need base64 so it is one shift sequence.
        end = pos
        while end < length and not ("\x20" <= name[end] <= "\x7e"):
            end += 1
        out.append(_b64_run(name[pos:end]))
        pos = end
    return "".join(out).encode("ascii")


def _decode_run(b64: str) -> str | None:
    """Decode the base64 inside one ``&...-`` run, or None when it is not valid mUTF-7."""
    if not b64:
        return "&"
    text = b64.replace(",", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(data) % 2:
        return None
    try:
        # strict: a lone surrogate is not a character; such a run is shown as sent, so the
        # result is always valid Unicode that a database or a web page can hold.
        return data.decode("utf-16-be")
    except UnicodeDecodeError:
        return None


def _shifted(m: re.Match[str]) -> str:
    decoded = _decode_run(m.group(1))
    return m.group() if decoded is None else decoded


def decode_mutf7(raw: bytes | str, *, strict: bool = False) -> str:
    """Decode a mailbox name from modified UTF-7 (RFC 3501 §5.1.3).

    By default (display) it never raises: invalid shift sequences are kept as they were sent, and
    bytes that are not ASCII are taken as UTF-8 (RFC 6855 names, or broken servers), else as
    Latin-1, so something is always shown. With ``strict`` anything that is not canonical modified
    UTF-7 raises ImapProtocolError (see ``_check_strict``).
    """
    if strict:
        return _decode_strict(raw)
    if isinstance(raw, str):  # tolerate callers that already hold a str
        text = raw
    else:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
    if "&" not in text:
        return text
    return _SHIFTED.sub(_shifted, text)


def _decode_strict(raw: bytes | str) -> str:
    """Decode canonical modified UTF-7 or raise ImapProtocolError naming the fault."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ImapProtocolError(f"mailbox name is not 7-bit: {raw[:60]!r}") from None
    out: list[str] = []
    pos = 0
    while True:
        amp = text.find("&", pos)
        direct = text[pos:] if amp < 0 else text[pos:amp]
        if not direct.isprintable():  # only 0x20-0x7E stand for themselves
            raise ImapProtocolError(f"control character in mailbox name {text[:60]!r}")
        out.append(direct)
        if amp < 0:
            break
        end = text.find("-", amp + 1)
        if end < 0:
            raise ImapProtocolError(f"unterminated '&' shift in mailbox name {text[:60]!r}")
        run = text[amp + 1 : end]
        if run and not _B64_RUN.fullmatch(run):
            raise ImapProtocolError(f"bad modified base64 {run[:40]!r} in mailbox name")
        decoded = _decode_run(run)
        if decoded is None:
            raise ImapProtocolError(f"'&{run[:40]}-' is not UTF-16 in mailbox name")
        out.append(decoded)
        pos = end + 1
    name = "".join(out)
    # Canonical means what encode_mutf7 writes: no shifted printable ASCII, no two shifts in a
    # row, zero padding bits. Anything else would not re-encode to the bytes the server sent.
    if encode_mutf7(name) != raw:
        raise ImapProtocolError(f"mailbox name is not canonical modified UTF-7: {text[:60]!r}")
    return name
