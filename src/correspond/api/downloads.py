"""Headers for serving mail bytes (raw messages, attachments) without letting them act.

Names and types come from mail, so from an attacker: a file name is reduced to a harmless
display name and encoded per RFC 6266 §4.3 (``filename`` ASCII fallback plus ``filename*`` in
RFC 8187/5987 UTF-8 encoding); a type that a browser would run or render as a document (HTML,
SVG, XML, script) is served as ``application/octet-stream``; and every download is
``Content-Disposition: attachment`` with ``nosniff`` and a CSP that forbids everything.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

__all__ = [
    "DOWNLOAD_HEADERS",
    "content_disposition",
    "download_content_type",
    "safe_filename",
]

#: Sent with every download, whatever its type.
DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, no-store",
    "Referrer-Policy": "no-referrer",
}

_MAX_NAME = 150
# Controls (C0, DEL, C1) and the invisible direction marks used to fake an extension
# ("invoice\u202efdp.exe" shows as "invoiceexe.pdf").
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_RESERVED = re.compile(r'[<>:"/\\|?*]')
_WINDOWS_DEVICES = re.compile(r"(?i)^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$")
_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
# Types a browser would render as a document or execute, were it ever shown inline.
_ACTIVE_TYPES = re.compile(
    r"^(text/(html|xml|xsl|javascript|ecmascript|vtt)|application/(xhtml\+xml|xml|"
    r"javascript|ecmascript|x-javascript|x-shockwave-flash)|image/svg\+xml|multipart/.*)$|"
    r"\+xml$"
)


def safe_filename(name: str | None, fallback: str) -> str:
    """A display file name: no directories, controls, bidi marks or reserved characters, no
    leading dots, at most 150 characters (extension kept). ``fallback`` when nothing is left."""
    text = unicodedata.normalize("NFC", name or "")
    text = re.split(r"[/\\]", text)[-1]
    text = _INVISIBLE.sub("", text)
    text = _RESERVED.sub("_", text)
    text = text.strip().lstrip(".").strip()
    if _WINDOWS_DEVICES.match(text):
        text = "_" + text
    if len(text) > _MAX_NAME:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            text = stem[: _MAX_NAME - len(ext) - 1] + "." + ext
        else:
            text = text[:_MAX_NAME]
    return text or fallback


def content_disposition(filename: str, *, disposition: str = "attachment") -> str:
    """``Content-Disposition`` per RFC 6266 §4.3: an ASCII ``filename`` for old clients and,
    when the name is not plain ASCII, ``filename*=UTF-8''...`` (RFC 8187 §3.2)."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r"[^A-Za-z0-9._() +-]", "_", ascii_name).strip() or "download"
    value = f'{disposition}; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='!#$&+-.^_`|~')}"
    return value


def download_content_type(stored: str | None) -> str:
    """The stored type when it is a well-formed, passive type; otherwise
    ``application/octet-stream`` (parameters such as charset are dropped)."""
    value = (stored or "").split(";", 1)[0].strip().lower()
    if not _TYPE.match(value) or _ACTIVE_TYPES.search(value):
        return "application/octet-stream"
    return value
