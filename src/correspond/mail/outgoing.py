"""Building an outgoing message with the stdlib ``email`` package (policy SMTP): pure, no IO.

A stand-in for the compose module (``mail.compose.build_message``) until it lands: the sender
calls :func:`build_outgoing` at one place (``outgoing.SendService``), so swapping the builder
is one line there. What it does: From, To, Cc, Bcc (kept on this copy: it is the Sent copy and
the CRM's; the copy submitted over SMTP has it removed, ``rules.send.strip_bcc``), Subject,
Date, a Message-ID on the sender's domain, In-Reply-To and References for replies, text and
HTML bodies (multipart/alternative; a text part derived from HTML when only HTML is given),
attachments (multipart/mixed; RFC 2231 names). CR, LF and other line breaks in a subject, a
name or an address are refused (:class:`~correspond.errors.ConfigError`), never folded into a
header or an SMTP command.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from correspond.errors import ConfigError

__all__ = [
    "OutgoingAttachment",
    "OutgoingDraft",
    "build_outgoing",
    "forward_subject",
    "reply_subject",
    "safe_filename",
]

#: Line breaks (and other controls) that must never reach a header (see
#: ../shared/corpus/injection/README.md): CR, LF, NEL, LS, PS, VT, FF and every C0 control.
_BREAKS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*((fwd?|wg|tr)\s*:\s*)+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class OutgoingAttachment:
    """A file to send; with ``content_id``, an inline image of the HTML (``cid:`` URL), sent
    in multipart/related with the HTML part."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingDraft:
    """What a user asked to send. Addresses are ``(display name or "", address)``."""

    from_: tuple[str, str]
    to: tuple[tuple[str, str], ...] = ()
    cc: tuple[tuple[str, str], ...] = ()
    bcc: tuple[tuple[str, str], ...] = ()
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: tuple[OutgoingAttachment, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = field(default=())


def _clean(value: str, what: str) -> str:
    """``value`` if neither it nor its RFC 2047 decoding holds a line break or control
    character (the stdlib decodes encoded words it is handed, and before Python 3.12.5 wrote
    what they decode to verbatim: CVE-2024-6923)."""
    decoded = value
    if "=?" in value:
        try:
            decoded = str(make_header(decode_header(value)))
        except (ValueError, LookupError, UnicodeError):
            decoded = value
    if _BREAKS.search(value) or _BREAKS.search(decoded):
        raise ConfigError(f"{what} contains a line break or control character: {value!r}")
    return value


def check_address(address: str, what: str = "address") -> str:
    """``address`` if it is one plain ``local@domain`` to send to, else ConfigError naming it."""
    address = _clean(address.strip(), what)
    if not _ADDRESS.match(address) or ".." in address.split("@")[1]:
        raise ConfigError(f"{what} is not a valid e-mail address: {address!r}")
    return address


def _address(pair: tuple[str, str], what: str) -> Address:
    name, email = pair
    email = check_address(email, what)
    local, _, domain = email.rpartition("@")
    return Address(display_name=_clean(name or "", f"{what} name"), username=local, domain=domain)


def reply_subject(subject: str) -> str:
    """``Re: `` once, however many reply prefixes the original had."""
    return "Re: " + _REPLY_PREFIX.sub("", subject).strip()


def forward_subject(subject: str) -> str:
    """``Fwd: `` once."""
    return "Fwd: " + _FORWARD_PREFIX.sub("", subject).strip()


def safe_filename(name: str) -> str:
    """An attachment name with no path in it (``../../etc/passwd`` becomes ``passwd``) and no
    control characters; ``attachment`` when nothing is left."""
    base = re.split(r"[\\/]", name)[-1]
    base = _BREAKS.sub("", base).strip().lstrip(".")
    return base[:200] or "attachment"


def text_from_html(html: str) -> str:
    """A plain-text part for an HTML-only message: tags out, breaks kept, entities decoded."""
    text = re.sub(r"(?is)<(script|style)\b.*?</\1>", "", html)
    text = re.sub(r"(?i)<br\s*/?>|</(p|div|li|tr|h[1-6])>", "\n", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = html_lib.unescape(text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def build_outgoing(draft: OutgoingDraft, *, message_id_domain: str, now: datetime) -> EmailMessage:
    """The message to send (with Bcc: see the module docstring). ConfigError for a bad
    address, a header with a line break, or no recipient."""
    if not (draft.to or draft.cc or draft.bcc):
        raise ConfigError("the message has no recipient (To, Cc or Bcc)")
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _address(draft.from_, "From")
    for header, pairs in (("To", draft.to), ("Cc", draft.cc), ("Bcc", draft.bcc)):
        if pairs:
            msg[header] = [_address(p, header) for p in pairs]
    msg["Subject"] = _clean(draft.subject, "the subject")
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=_clean(message_id_domain, "the domain"))
    if draft.in_reply_to:
        msg["In-Reply-To"] = f"<{_clean(draft.in_reply_to, 'In-Reply-To').strip('<>')}>"
    refs: Sequence[str] = draft.references
    if refs:
        msg["References"] = " ".join(f"<{_clean(r, 'References').strip('<>')}>" for r in refs)
    msg["MIME-Version"] = "1.0"
    text = draft.text
    if text is None and draft.html is not None:
        text = text_from_html(draft.html)
    msg.set_content(text or "", subtype="plain", charset="utf-8")
    inline = [att for att in draft.attachments if att.content_id is not None]
    if draft.html is not None:
        msg.add_alternative(draft.html, subtype="html", charset="utf-8")
        parts = msg.get_payload()
        html_part = parts[-1] if isinstance(parts, list) else msg
        assert isinstance(html_part, EmailMessage)
        for att in inline:
            maintype, subtype = _maintype(att.content_type)
            html_part.add_related(
                att.content,
                maintype=maintype,
                subtype=subtype,
                cid=f"<{_content_id(att.content_id or '')}>",
                disposition="inline",
                filename=safe_filename(att.filename),
            )
    elif inline:
        raise ConfigError("inline images (with a content id) need an HTML body")
    for att in draft.attachments:
        if att.content_id is not None:
            continue
        maintype, subtype = _maintype(att.content_type)
        msg.add_attachment(
            att.content, maintype=maintype, subtype=subtype, filename=safe_filename(att.filename)
        )
    _check_generated(msg)
    return msg


_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,200}(?:@[A-Za-z0-9.-]{1,200})?$")


def _content_id(value: str) -> str:
    """A content id as written in ``cid:`` URLs (no angle brackets), checked: dot-atom text
    only (a line break or a quote never reaches the Content-ID header)."""
    cid = value.strip().strip("<>")
    if not _CONTENT_ID.match(cid):
        raise ConfigError(f"{value!r} is not a content id (letters, digits, . - _ @ and the like)")
    return cid


def _maintype(content_type: str) -> tuple[str, str]:
    maintype, _, subtype = content_type.partition("/")
    if not maintype or not subtype or _BREAKS.search(content_type) or maintype == "multipart":
        return "application", "octet-stream"
    return maintype, subtype


_HEADERS = frozenset(
    {
        "from", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to", "references",
        "mime-version", "content-type", "content-transfer-encoding",
    }
)  # fmt: skip


def _check_generated(msg: EmailMessage) -> None:
    """The last line of defence: the generated header block holds only the fields set here,
    each once (whatever a value decoded to on the way, it made no header of its own)."""
    head = msg.as_bytes(policy=policy.SMTP).split(b"\r\n\r\n", 1)[0]
    names = [
        line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        for line in head.split(b"\r\n")
        if line[:1] not in (b" ", b"\t")
    ]
    if any(n not in _HEADERS for n in names) or len(names) != len(set(names)):
        raise ConfigError("the message's headers would not be what was asked: refused")
