"""Outgoing mail: a draft in, an RFC 5322 message out (pure: no IO, no clock, no database).

:class:`Draft` is what a person composed (identity, recipients, subject, text and/or HTML,
attachments, inline images by content-id, the thread it answers). :func:`build_message` turns
it into an :class:`email.message.EmailMessage` under ``email.policy.SMTP`` (CRLF, headers
folded at 78 characters and never over 998, RFC 2047 for non-ASCII names and subjects, RFC 2231
for non-ASCII file names); :func:`message_bytes` gives the bytes to send, :func:`encoded_size`
their size for the server's SIZE (RFC 1870, measured after base64) and :func:`check_size`
refuses a message over the limit before anything is sent. :func:`envelope_recipients` is the
RCPT TO list: To, Cc and Bcc; Bcc is never written into the headers.

**Injection** (``shared/corpus/injection/README.md`` §1). Nothing a person types reaches a
header as a line break:

- subjects and display names: RFC 2047 words are decoded first (Python's ``email`` re-decodes
  them when it folds, and before 3.12.5 wrote a decoded CR LF out as a new header line:
  CVE-2024-6923), then every line-break character (CR, LF, NUL, VT, FF, U+001C-U+001E,
  U+0085, U+2028, U+2029) and other control becomes a space; a sequence still shaped like an
  encoded word is broken with U+2060 so it stays text;
- addresses are validated as the one addr-spec they will be sent to (:func:`check_address`:
  dot-atom local part, LDH or IDN domain, no quotes, comments, groups, a second ``@`` or a
  control), and refused with an error naming them (:class:`BadRecipient`);
- Message-IDs, In-Reply-To and References take only well-formed ids;
- extra headers: an allow-list of names, values cleaned like a subject;
- and then every header is folded once more and checked to be one header (:func:`_verified`):
  a header that would come out as two is refused, whatever the cause.

Bodies keep their text; line ends become CRLF on output, and lines over 998 octets go as
quoted-printable or base64. Dot-stuffing is the SMTP client's (RFC 5321 §4.5.2).
"""

from __future__ import annotations

import html as html_lib
import re
import secrets
import unicodedata
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email import policy as email_policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime
from html.parser import HTMLParser
from typing import Protocol

from correspond.errors import ConfigError
from correspond.mail.parse import decode_header_value, sanitize_filename

__all__ = [
    "DEFAULT_SIZE_LIMIT",
    "EXTRA_HEADERS",
    "LINE_BREAKS",
    "MAX_RECIPIENTS",
    "MAX_REFERENCES",
    "Address",
    "Attachment",
    "BadRecipient",
    "ComposeError",
    "Draft",
    "MessageTooLarge",
    "Original",
    "OriginalAttachment",
    "bounded_references",
    "build_message",
    "check_address",
    "check_size",
    "clean_header_text",
    "encoded_size",
    "envelope_recipients",
    "envelope_sender",
    "forward_draft",
    "forward_subject",
    "html_to_plain_text",
    "make_message_id",
    "message_bytes",
    "needs_smtputf8",
    "parse_recipient",
    "reply_draft",
    "reply_subject",
    "safe_attachment_name",
    "size_limit",
    "with_signature",
]

#: The limit when the server announces no SIZE (Gmail's send limit).
DEFAULT_SIZE_LIMIT = 25 * 1024 * 1024
#: Recipients of one message, To, Cc and Bcc together (RFC 5321 §4.5.3.1.8 asks servers to
#: take at least 100; bigger sends are a campaign, split by the caller).
MAX_RECIPIENTS = 500
#: Ids kept in References: the first (the thread's root) and the latest ones (RFC 5322
#: §3.6.4 lets a writer trim the middle).
MAX_REFERENCES = 20
MAX_ATTACHMENTS = 100
MAX_EXTRA_HEADERS = 50
MAX_SUBJECT = 1000
MAX_DISPLAY_NAME = 200
MAX_HEADER_VALUE = 4000
MAX_MESSAGE_ID = 250
#: HTML converted to the text part: at most this many characters in and out.
HTML_TEXT_INPUT_LIMIT = 2_000_000
HTML_TEXT_OUTPUT_LIMIT = 500_000
#: Text of the original quoted in a reply or forward.
MAX_QUOTED = 200_000

#: Characters some parser somewhere treats as a line break (``str.splitlines`` splits on all of
#: them), and NUL.
LINE_BREAKS = "\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BREAKS_OR_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")
_SPACES = re.compile(r"\s+")

# RFC 5322 §3.2.3 atext, plus any non-ASCII letter (RFC 6532).
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LDH_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_MSG_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,248}@[\x21-\x3b\x3d\x3f-\x7e]{1,248}>$")
_CONTENT_TYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
)
_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,200}(?:@[A-Za-z0-9.-]{1,200})?$")
_HEADER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,75}$")
#: Extra headers a draft (a template, an integration) may set; X- headers too. Everything the
#: message's identity, addressing, threading and MIME structure rest on is set here only.
EXTRA_HEADERS = frozenset(
    {"list-unsubscribe", "list-unsubscribe-post", "auto-submitted", "importance", "priority",
     "organization", "keywords", "comments"}
)  # fmt: skip
_FORBIDDEN_X = frozenset({"x-original-to", "x-envelope-to", "x-envelope-from"})

_REPLY_PREFIX = re.compile(
    r"^\s*(?:re|aw|sv|antw|odp|rif|res|ynt|vs|atb|vl|ref|réf)\s*(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]",
    re.I,
)
_FORWARD_PREFIX = re.compile(
    r"^\s*(?:fwd?|wg|tr|enc|rv|pd|vb|doorst|vs)\s*(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]", re.I
)


class ComposeError(ConfigError):
    """A draft that cannot be sent as given; ``field`` names what is wrong (``to``,
    ``subject``, ``attachments``...)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class BadRecipient(ComposeError):
    """An address that is not one plain ``local@domain``; ``address`` is the value (made
    printable) so the person sees which."""

    def __init__(self, address: str, reason: str, *, field: str = "to") -> None:
        shown = _printable(address[:200]) + ("..." if len(address) > 200 else "")
        super().__init__(f"{field}: '{shown}' is not a valid address: {reason}", field=field)
        self.address = address


class MessageTooLarge(ComposeError):
    """The encoded message is over the server's SIZE (or the default limit)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the message is {_mb(size)} once encoded for sending (attachments grow by about a "
            f"third in base64); the server accepts at most {_mb(limit)}: remove or shrink "
            "attachments, or send a link instead",
            field="attachments",
        )
        self.size = size
        self.limit = limit


def _printable(value: str) -> str:
    """``value`` with every character that is not printable shown as its escape."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


# ------------------------------------------------------------------------------------------
# Values


def clean_header_text(value: str, *, limit: int = MAX_SUBJECT, what: str = "subject") -> str:
    """``value`` made safe for an unstructured header or a display name: RFC 2047 words
    decoded (to a fixed point), line breaks and controls turned into one space, runs of spaces
    joined, what still looks like an encoded word broken with U+2060 so no later decoder makes
    it a line break; at most ``limit`` characters (a :class:`ComposeError` beyond)."""
    for _ in range(4):
        if "=?" not in value:
            break
        decoded = decode_header_value(value)
        if decoded == value:
            break
        value = decoded
    value = _BREAKS_OR_CONTROLS.sub(" ", value)
    value = _SPACES.sub(" ", value).strip()
    value = _ENCODED_WORD.sub(lambda m: "=\u2060" + m.group(0)[1:], value)
    if len(value) > limit:
        raise ComposeError(f"the {what} is longer than {limit} characters", field=what)
    return value


def _domain(domain: str, original: str, where: str) -> str:
    if not domain:
        raise BadRecipient(original, "the domain is empty", field=where)
    if domain.startswith("[") or domain.endswith("]"):
        raise BadRecipient(original, "IP address literals are not accepted", field=where)
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadRecipient(original, "the domain is not a valid name", field=where) from None
    labels = domain.rstrip(".").split(".") if domain != "." else []
    if not labels or not all(_LDH_LABEL.match(label) for label in labels) or len(domain) > 253:
        raise BadRecipient(original, "the domain is not a valid name", field=where)
    return ".".join(labels).lower()


def check_address(value: str, *, field: str = "to") -> str:
    """``value`` as the one addr-spec it will be sent to (RFC 5321 §4.1.2 Mailbox), or
    :class:`BadRecipient` naming it: surrounding spaces trimmed; the local part a dot-atom
    (letters, digits, ``!#$%&'*+-/=?^_`{|}~``, non-ASCII letters under SMTPUTF8; no quotes,
    comments, spaces, brackets or a second ``@``), at most 64 octets; the domain a host name,
    IDN domains as A-labels (``xn--``), lower-cased; at most 254 octets in all."""
    if any(c in LINE_BREAKS for c in value):
        raise BadRecipient(value, "it holds a line break or NUL", field=field)
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise BadRecipient(value, "it holds control characters", field=field)
    address = value.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise BadRecipient(value, "expected name@domain", field=field)
    if "@" in local:
        raise BadRecipient(value, "it holds more than one @", field=field)
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise BadRecipient(value, "the part before @ has a misplaced dot", field=field)
    for char in local:
        if char != "." and char not in _ATEXT and (char.isascii() or not char.isprintable()):
            reason = (
                "quoted local parts are not accepted"
                if char == '"'
                else f"{char!r} is not allowed before the @ (one plain address only: no "
                "names, comments, groups or lists here)"
            )
            raise BadRecipient(value, reason, field=field)
    if len(local.encode("utf-8")) > 64:
        raise BadRecipient(value, "the part before @ is longer than 64 octets", field=field)
    result = f"{local}@{_domain(domain, value, field)}"
    if len(result.encode("utf-8")) > 254:
        raise BadRecipient(value, "it is longer than 254 octets", field=field)
    return result


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: ``email`` (checked with :func:`check_address` when built) and an optional
    display name (cleaned with :func:`clean_header_text`)."""

    email: str
    name: str = ""

    @classmethod
    def of(cls, email: str, name: str | None = "", *, field: str = "to") -> Address:
        return cls(
            email=check_address(email, field=field),
            name=clean_header_text(name or "", limit=MAX_DISPLAY_NAME, what="display name"),
        )


def parse_recipient(value: str, *, field: str = "to") -> Address:
    """One recipient as a person types it: ``a@example.com`` or ``Name <a@example.com>``
    (``"Name, Inc." <a@example.com>`` quoted). Anything else (a list, a group, a comment,
    text after ``>``, two addresses) is :class:`BadRecipient`."""
    text = value.strip()
    if any(c in LINE_BREAKS for c in text):
        raise BadRecipient(value, "it holds a line break or NUL", field=field)
    if "<" not in text and ">" not in text:
        return Address.of(text, field=field)
    if text.count("<") != 1 or text.count(">") != 1 or not text.endswith(">"):
        raise BadRecipient(
            value, "expected one address, as name@domain or Name <name@domain>", field=field
        )
    name, _, rest = text.partition("<")
    email = rest[:-1]
    name = name.strip()
    if name.startswith('"'):
        if len(name) < 2 or not name.endswith('"'):
            raise BadRecipient(value, "the quoted name is not closed", field=field)
        inner = name[1:-1]
        if re.search(r'(?<!\\)"', inner):
            raise BadRecipient(value, "the quoted name is not closed", field=field)
        name = re.sub(r"\\(.)", r"\1", inner)
    elif any(c in name for c in '",;:()<>@[]\\'):
        raise BadRecipient(
            value, "put a name holding , ; : ( ) @ or brackets in double quotes", field=field
        )
    return Address.of(email, name, field=field)


def _header_address(address: Address) -> HeaderAddress:
    local, _, domain = address.email.rpartition("@")
    return HeaderAddress(display_name=address.name, username=local, domain=domain)


def make_message_id(domain: str, *, token: str | None = None) -> str:
    """A new ``<random@domain>`` Message-ID from the sender's domain (A-label, lower-cased).
    Generated here, never taken from a person or a template (injection README H8)."""
    host = _domain(domain, domain, "message_id_domain")
    return f"<{token or secrets.token_hex(16)}@{host}>"


def _message_id(value: str | None) -> str | None:
    """``value`` as a well-formed ``<id@host>`` (trimmed), or None when it is not one (a
    broken id of a stored message is left out of In-Reply-To and References, never copied
    into a header)."""
    if value is None:
        return None
    value = value.strip()
    if not value.startswith("<"):
        value = f"<{value}>"
    if len(value) > MAX_MESSAGE_ID or not _MSG_ID.match(value) or "=?" in value:
        return None
    return value


def bounded_references(ids: Iterable[str]) -> tuple[str, ...]:
    """Well-formed ids, once each, at most :data:`MAX_REFERENCES`: the first and the latest."""
    seen: dict[str, None] = {}
    for raw in ids:
        found = _message_id(raw)
        if found is not None and found not in seen:
            seen[found] = None
    kept = list(seen)
    if len(kept) > MAX_REFERENCES:
        kept = [kept[0], *kept[-(MAX_REFERENCES - 1) :]]
    return tuple(kept)


def safe_attachment_name(filename: str | None) -> str:
    """A file name for Content-Disposition: the last path component, no controls or bidi
    overrides, no leading dots, Windows device names prefixed (``parse.sanitize_filename``,
    the rule names received mail gets); ``attachment`` when nothing is left."""
    return sanitize_filename(filename) or "attachment"


# ------------------------------------------------------------------------------------------
# The draft


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to send: its bytes (``content``) or a stored blob's key (``blob_key``, read
    through the ``resolve`` given to :func:`build_message`). With ``content_id`` it is an
    inline image of the HTML (``cid:`` URL), sent in multipart/related."""

    filename: str
    content_type: str = "application/octet-stream"
    content: bytes | None = None
    blob_key: str | None = None
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class Draft:
    """What a person composed. Build it with :meth:`Address.of` / :func:`parse_recipient`
    addresses; :func:`build_message` checks everything again anyway."""

    from_: Address
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    #: Inline images of the HTML, by ``content_id``.
    inline: tuple[Attachment, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    #: Extra headers (name, value): :data:`EXTRA_HEADERS` or ``X-`` names only.
    extra_headers: tuple[tuple[str, str], ...] = ()


def _all_recipients(draft: Draft) -> list[tuple[str, Address]]:
    return [
        *(("to", a) for a in draft.to),
        *(("cc", a) for a in draft.cc),
        *(("bcc", a) for a in draft.bcc),
    ]


def envelope_recipients(draft: Draft) -> tuple[str, ...]:
    """The RCPT TO addresses: To, Cc and Bcc, each checked, once each (compared without
    letter case), in that order. Bcc is here and never in the headers."""
    seen: dict[str, str] = {}
    for where, address in _all_recipients(draft):
        email = check_address(address.email, field=where)
        seen.setdefault(email.lower(), email)
    if not seen:
        raise ComposeError("the message has no recipient", field="to")
    if len(seen) > MAX_RECIPIENTS:
        raise ComposeError(
            f"the message has {len(seen)} recipients; at most {MAX_RECIPIENTS} per message",
            field="to",
        )
    return tuple(seen.values())


def envelope_sender(draft: Draft) -> str:
    """The MAIL FROM address: the From address, checked (a line break in it never reaches
    the SMTP command)."""
    return check_address(draft.from_.email, field="from")


def needs_smtputf8(draft: Draft) -> bool:
    """Whether an address has a non-ASCII local part (RFC 6531: the server must offer
    SMTPUTF8, and the headers go as UTF-8)."""
    addresses = [draft.from_, *draft.reply_to, *(a for _, a in _all_recipients(draft))]
    return any(not a.email.isascii() for a in addresses)


def _text_body(text: str) -> str:
    # One line-end convention in; the generator writes CRLF. A bare CR is a line end too
    # (never sent as such: SMTP smuggling, injection README H5).
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def _content_type(value: str, name: str) -> tuple[str, str]:
    value = value.strip().lower()
    if not _CONTENT_TYPE.match(value):
        raise ComposeError(
            f"attachment {name!r}: {value!r} is not a content type", field="attachments"
        )
    main, _, sub = value.partition("/")
    if main == "multipart" or (main == "message" and sub != "rfc822"):
        return "application", "octet-stream"
    return main, sub


def _attachment_bytes(item: Attachment, resolve: Callable[[str], bytes] | None) -> bytes:
    if item.content is not None:
        return item.content
    if item.blob_key is not None and resolve is not None:
        return resolve(item.blob_key)
    raise ComposeError(
        f"attachment {safe_attachment_name(item.filename)!r} has no content (its body was "
        "never downloaded: it was above the size limit)",
        field="attachments",
    )


def _add_header(msg: EmailMessage, name: str, value: object) -> None:
    msg[name] = value


class _IdsHeader(str):
    """Message-ID, In-Reply-To and References: ids separated by spaces, folded between ids
    only. The policy's folder treats them as unstructured text and would turn an id longer than
    a line into an RFC 2047 word, which no reader takes as an id (threading breaks). The
    ``email`` policies keep a value with a matching ``name`` and call its ``fold``."""

    name: str

    def __new__(cls, name: str, ids: Sequence[str]) -> _IdsHeader:
        value = super().__new__(cls, " ".join(ids))
        value.name = name
        return value

    def fold(self, *, policy: object) -> str:
        lines = [f"{self.name}:"]
        for mid in self.split(" "):
            if len(lines[-1]) + 1 + len(mid) > 78:
                lines.append("")
            lines[-1] += " " + mid
        linesep = str(getattr(policy, "linesep", "\r\n"))
        return linesep.join(lines) + linesep


def _extra_header(name: str, value: str) -> tuple[str, str]:
    if not _HEADER_NAME.match(name):
        raise ComposeError(f"{name!r} is not a header name", field="extra_headers")
    key = name.lower()
    if key not in EXTRA_HEADERS and (not key.startswith("x-") or key in _FORBIDDEN_X):
        raise ComposeError(
            f"header {name!r} cannot be set on a draft (allowed: X- headers and "
            f"{', '.join(sorted(EXTRA_HEADERS))})",
            field="extra_headers",
        )
    return name, clean_header_text(value, limit=MAX_HEADER_VALUE, what=f"{name} header")


def build_message(
    draft: Draft,
    *,
    message_id_domain: str,
    now: datetime,
    message_id: str | None = None,
    resolve: Callable[[str], bytes] | None = None,
    keep_bcc: bool = False,
) -> EmailMessage:
    """The message for ``draft``: headers From, To, Cc, Reply-To, Subject, Date (``now``,
    timezone-aware), Message-ID (``message_id`` as given, e.g. stored on the outbox row
    beforehand so a retry sends the same id, else :func:`make_message_id` of
    ``message_id_domain``), In-Reply-To, References, extra headers; then the body:

    - text/plain, text/html, or multipart/alternative of both (the text derived from the
      HTML by :func:`html_to_plain_text` when only HTML is given);
    - the HTML part in multipart/related with the inline images (``cid:``);
    - multipart/mixed with the attachments (``resolve`` reads a ``blob_key``).

    No Bcc header, unless ``keep_bcc``: the copy kept in Sent and in the CRM records its Bcc
    (``rules.send.strip_bcc`` takes it out of what is submitted). Raises
    :class:`ComposeError` (or :class:`BadRecipient`) for what cannot be sent."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    recipients = envelope_recipients(draft)
    del recipients  # checked: count, and each address (the headers use the same values)
    utf8 = needs_smtputf8(draft)
    policy = email_policy.SMTPUTF8 if utf8 else email_policy.SMTP
    msg = EmailMessage(policy=policy)

    sender = Address.of(draft.from_.email, draft.from_.name, field="from")
    _add_header(msg, "From", _header_address(sender))
    for name, addresses in (("To", draft.to), ("Cc", draft.cc), ("Reply-To", draft.reply_to)):
        if addresses:
            checked = [Address.of(a.email, a.name, field=name.lower()) for a in addresses]
            _add_header(msg, name, [_header_address(a) for a in checked])
    if keep_bcc and draft.bcc:
        hidden = [Address.of(a.email, a.name, field="bcc") for a in draft.bcc]
        _add_header(msg, "Bcc", [_header_address(a) for a in hidden])
    subject = clean_header_text(draft.subject)
    if subject:
        _add_header(msg, "Subject", subject)
    _add_header(msg, "Date", format_datetime(now))
    mid = _message_id(message_id) if message_id is not None else make_message_id(message_id_domain)
    if mid is None:
        raise ComposeError(f"{message_id!r} is not a Message-ID", field="message_id")
    _add_header(msg, "Message-ID", _IdsHeader("Message-ID", [mid]))
    parent = _message_id(draft.in_reply_to)
    if parent is not None:
        _add_header(msg, "In-Reply-To", _IdsHeader("In-Reply-To", [parent]))
    references = bounded_references(draft.references)
    if references:
        _add_header(msg, "References", _IdsHeader("References", references))
    if len(draft.extra_headers) > MAX_EXTRA_HEADERS:
        raise ComposeError(
            f"at most {MAX_EXTRA_HEADERS} extra headers per message", field="extra_headers"
        )
    for name, value in draft.extra_headers:
        key, clean = _extra_header(name, value)
        _add_header(msg, key, clean)

    _set_body(msg, draft, resolve)
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # the email package repeats it on parts: top level only
    _verify_headers(msg)
    return msg


def _last_part(msg: EmailMessage) -> EmailMessage:
    parts = msg.get_payload()
    part = parts[-1] if isinstance(parts, list) else msg
    assert isinstance(part, EmailMessage)
    return part


def _set_body(msg: EmailMessage, draft: Draft, resolve: Callable[[str], bytes] | None) -> None:
    if len(draft.attachments) + len(draft.inline) > MAX_ATTACHMENTS:
        raise ComposeError(
            f"at most {MAX_ATTACHMENTS} attachments per message", field="attachments"
        )
    text = draft.text
    html_body = draft.html
    if html_body is not None and not html_body.strip():
        html_body = None
    if text is None and html_body is not None:
        text = html_to_plain_text(html_body)
    msg.set_content(_text_body(text or ""))
    if html_body is not None:
        msg.add_alternative(_text_body(html_body), subtype="html")
        html_part = _last_part(msg)
        for image in draft.inline:
            cid = (image.content_id or "").strip().strip("<>")
            if not _CONTENT_ID.match(cid):
                raise ComposeError(
                    f"inline image {safe_attachment_name(image.filename)!r} needs a content id "
                    "(letters, digits, . - _ @)",
                    field="inline",
                )
            main, sub = _content_type(image.content_type, image.filename)
            html_part.add_related(
                _attachment_bytes(image, resolve),
                maintype=main,
                subtype=sub,
                cid=f"<{cid}>",
                disposition="inline",
                filename=safe_attachment_name(image.filename),
            )
    elif draft.inline:
        raise ComposeError("inline images need an HTML body", field="inline")
    for item in draft.attachments:
        name = safe_attachment_name(item.filename)
        main, sub = _content_type(item.content_type, name)
        data = _attachment_bytes(item, resolve)
        if main == "text":
            # Sent as bytes (base64): a text file's own line ends and charset are kept.
            msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
            part = _last_part(msg)
            part.replace_header("Content-Type", f"{main}/{sub}")
            part.set_param("name", name)
        else:
            msg.add_attachment(data, maintype=main, subtype=sub, filename=name)


def _verify_headers(msg: EmailMessage) -> None:
    """Fold every header of every part as the generator will and check each is still one
    header: continuation lines only, no line over 998 octets. The last line of defence
    against a header value that becomes two headers (CVE-2024-6923 and its kin)."""
    policy = msg.policy
    for part in msg.walk():
        for name, value in part.items():
            folded = policy.fold_binary(name, value)
            lines = folded.split(b"\r\n")
            if lines[-1] != b"" or any(not line.startswith((b" ", b"\t")) for line in lines[1:-1]):
                raise ComposeError(
                    f"the {name} header would have been written as more than one header",
                    field=name.lower(),
                )
            if any(len(line) > 998 for line in lines):
                raise ComposeError(
                    f"the {name} header has a line over 998 octets", field=name.lower()
                )


def message_bytes(msg: EmailMessage) -> bytes:
    """The message as sent (CRLF line ends; the message's own policy)."""
    return msg.as_bytes(policy=msg.policy)


def encoded_size(msg: EmailMessage) -> int:
    """Octets of :func:`message_bytes`: what SIZE (RFC 1870) is compared with."""
    return len(message_bytes(msg))


def size_limit(server_size: int | None, default: int = DEFAULT_SIZE_LIMIT) -> int:
    """The limit to check against: the server's SIZE when it announced one (> 0; ``SIZE 0``
    means no fixed limit, RFC 1870 §4), else ``default``."""
    return server_size if server_size is not None and server_size > 0 else default


def check_size(size: int, limit: int = DEFAULT_SIZE_LIMIT) -> None:
    """:class:`MessageTooLarge` when ``size`` octets are over ``limit``."""
    if size > limit:
        raise MessageTooLarge(size, limit)


# ------------------------------------------------------------------------------------------
# HTML to text


_BLOCK = frozenset(
    {"p", "div", "section", "article", "header", "footer", "table", "tr", "ul", "ol", "h1",
     "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "address", "dl", "dt", "dd", "hr",
     "form", "fieldset", "figure", "main", "nav", "aside"}
)  # fmt: skip
_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript", "xml", "svg"})


class _TextMaker(HTMLParser):
    """Visible text with its shape: paragraphs, line breaks, list bullets, link targets,
    ``>`` for quoted blocks. No tree is built (flat state, linear in the input)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.size = 0
        self.skip = 0
        self.pre = 0
        self.quote = 0
        self.lists: list[list[int]] = []  # per open list: [ordered, counter]
        self.link: str | None = None
        self.link_text: list[str] = []
        self.line_start = True

    def _emit(self, text: str) -> None:
        if self.size >= HTML_TEXT_OUTPUT_LIMIT:
            return
        if self.link is not None:
            self.link_text.append(text)
        self.out.append(text)
        self.size += len(text)

    def _newline(self, count: int = 1) -> None:
        self.out.append("\n" * count)
        self.line_start = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        if tag == "br":
            self._newline()
        elif tag in _BLOCK:
            self._newline(2)
            if tag == "blockquote":
                self.quote = min(self.quote + 1, 20)
            elif tag == "pre":
                self.pre += 1
            elif tag in ("ul", "ol"):
                if len(self.lists) < 50:
                    self.lists.append([tag == "ol", 0])
            elif tag == "hr":
                self._emit("-" * 20)
                self._newline()
        elif tag == "li":
            self._newline()
            depth = max(len(self.lists), 1)
            bullet = "-"
            if self.lists and self.lists[-1][0]:
                self.lists[-1][1] += 1
                bullet = f"{self.lists[-1][1]}."
            self._emit("  " * (depth - 1) + bullet + " ")
            self.line_start = False
        elif tag in ("td", "th"):
            self._emit(" ")
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            self.link = (
                href.strip()
                if href.strip().lower().startswith(("http:", "https:", "mailto:"))
                else None
            )
            self.link_text = []
        elif tag == "img":
            alt = (dict(attrs).get("alt") or "").strip()
            if alt:
                self._emit(f"[{alt}]")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(self.skip - 1, 0)
            return
        if self.skip:
            return
        if tag in _BLOCK:
            if tag == "blockquote":
                self.quote = max(self.quote - 1, 0)
            elif tag == "pre":
                self.pre = max(self.pre - 1, 0)
            elif tag in ("ul", "ol") and self.lists:
                self.lists.pop()
            self._newline(2)
        elif tag == "a" and self.link is not None:
            shown = "".join(self.link_text).strip()
            target = self.link.removeprefix("mailto:")
            if target and target != shown:
                self._emit(f" ({self.link})" if shown else self.link)
            self.link = None

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if not self.pre:
            data = _SPACES.sub(" ", data)
            if self.line_start:
                data = data.lstrip(" ")
        if data:
            self._emit(data)
            self.line_start = data.endswith("\n")

    def text(self) -> str:
        lines: list[str] = []
        blank = 0
        for line in "".join(self.out).split("\n"):
            line = line.rstrip()
            if not line:
                blank += 1
                continue
            if lines and blank:
                lines.append("")
            blank = 0
            lines.append(line)
        return "\n".join(lines)


def html_to_plain_text(markup: str) -> str:
    """The text part for an HTML-only draft: paragraphs and line breaks kept, lists as
    ``-`` / ``1.`` items, links as ``text (url)``, images by their alt text, script/style and
    comments dropped, entities decoded. Bounded: at most :data:`HTML_TEXT_INPUT_LIMIT`
    characters are read and :data:`HTML_TEXT_OUTPUT_LIMIT` written."""
    maker = _TextMaker()
    maker.feed(markup[:HTML_TEXT_INPUT_LIMIT])
    maker.close()
    return maker.text()[:HTML_TEXT_OUTPUT_LIMIT]


# ------------------------------------------------------------------------------------------
# Reply, reply-all, forward


class OriginalAddress(Protocol):
    @property
    def name(self) -> str | None: ...
    @property
    def email(self) -> str: ...


class OriginalAttachment(Protocol):
    @property
    def filename(self) -> str | None: ...
    @property
    def content_type(self) -> str: ...
    @property
    def blob_key(self) -> str | None: ...


class Original(Protocol):
    """A stored message as the reply and forward builders read it (the store's
    ``MessageView`` has this shape)."""

    @property
    def message_id(self) -> str | None: ...
    @property
    def in_reply_to(self) -> str | None: ...
    @property
    def references(self) -> tuple[str, ...]: ...
    @property
    def subject(self) -> str: ...
    @property
    def from_(self) -> OriginalAddress | None: ...
    @property
    def reply_to(self) -> Sequence[OriginalAddress]: ...
    @property
    def to(self) -> Sequence[OriginalAddress]: ...
    @property
    def cc(self) -> Sequence[OriginalAddress]: ...
    @property
    def date(self) -> datetime | None: ...
    @property
    def text(self) -> str | None: ...
    @property
    def html(self) -> str | None: ...
    @property
    def attachments(self) -> Sequence[OriginalAttachment]: ...


def reply_subject(subject: str) -> str:
    """``Re: subject``, unless it already starts with a reply prefix (``Re:``, ``RE:``,
    ``Aw:``, ``Sv:``, ``Re[2]:``...): prefixes are never stacked."""
    subject = clean_header_text(subject)
    return subject if _REPLY_PREFIX.match(subject) else f"Re: {subject}".rstrip()


def forward_subject(subject: str) -> str:
    """``Fwd: subject``, unless it already starts with a forward prefix (``Fwd:``, ``Fw:``,
    ``FW:``, ``WG:``, ``TR:``...)."""
    subject = clean_header_text(subject)
    return subject if _FORWARD_PREFIX.match(subject) else f"Fwd: {subject}".rstrip()


def _usable(addresses: Iterable[OriginalAddress | None], where: str) -> list[Address]:
    """Stored addresses that are still valid to send to (a stored message may carry broken
    ones: they are left out, never sent to as they were)."""
    found: list[Address] = []
    for a in addresses:
        if a is None:
            continue
        try:
            # A long stored name is shortened, never a reason to drop the recipient.
            found.append(Address.of(a.email, (a.name or "")[:MAX_DISPLAY_NAME], field=where))
        except ComposeError:
            continue
    return found


def _without(addresses: Iterable[Address], excluded: set[str]) -> list[Address]:
    kept: list[Address] = []
    for a in addresses:
        key = a.email.lower()
        if key not in excluded:
            excluded.add(key)
            kept.append(a)
    return kept


def _attribution(original: Original) -> str:
    who = original.from_
    name = (who.name or who.email) if who is not None else "someone"
    when = format_datetime(original.date) if original.date is not None else None
    return f"On {when}, {name} wrote:" if when else f"{name} wrote:"


def _original_text(original: Original) -> str:
    text = original.text
    if text is None and original.html is not None:
        text = html_to_plain_text(original.html)
    return (text or "")[:MAX_QUOTED]


def _quote_text(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.splitlines())


def _quote_html(text: str) -> str:
    return html_lib.escape(text).replace("\n", "<br>\n")


def reply_draft(
    original: Original,
    *,
    from_: Address,
    own_addresses: Collection[str],
    reply_all: bool = False,
    text: str | None = None,
    html: str | None = None,
    quote: bool = True,
) -> Draft:
    """A reply (or reply-all) to ``original`` from ``from_``.

    To: the original's Reply-To, else its From; a message the user sent themselves (its
    From is one of ``own_addresses``: every identity of the user) is answered to its To.
    Reply-all adds the original's To and Cc. The user's own addresses are left out, and each
    address comes once. In-Reply-To is the original's Message-ID; References its References
    and Message-ID (:data:`MAX_REFERENCES`). The subject gets ``Re:`` unless it has a reply
    prefix; with ``quote`` the original's text follows, quoted."""
    own = {a.strip().lower() for a in own_addresses} | {from_.email.lower()}
    sender = original.from_
    from_self = sender is not None and sender.email.strip().lower() in own
    if from_self:
        primary = _usable(original.to, "to")
    else:
        primary = _usable(original.reply_to, "to") or _usable([sender], "to")
    excluded = set(own)
    to = _without(primary, excluded)
    cc: list[Address] = []
    if reply_all:
        if not from_self:
            to += _without(_usable(original.to, "to"), excluded)
        cc = _without(_usable(original.cc, "cc"), excluded)
    parent = _message_id(original.message_id)
    refs = list(original.references) or ([original.in_reply_to] if original.in_reply_to else [])
    if parent is not None:
        refs.append(parent)
    body_text, body_html = text, html
    if quote:
        quoted = _original_text(original)
        attribution = _attribution(original)
        if quoted:
            body_text = f"{text or ''}\n\n{attribution}\n{_quote_text(quoted)}\n".lstrip("\n")
            if html is not None:
                body_html = (
                    f"{html}\n<p>{html_lib.escape(attribution)}</p>\n<blockquote "
                    f'style="margin:0 0 0 .8ex;border-left:1px solid #ccc;padding-left:1ex">'
                    f"{_quote_html(quoted)}</blockquote>\n"
                )
    return Draft(
        from_=from_,
        to=tuple(to),
        cc=tuple(cc),
        subject=reply_subject(original.subject),
        text=body_text,
        html=body_html,
        in_reply_to=parent,
        references=bounded_references(refs),
    )


def forward_draft(
    original: Original,
    *,
    from_: Address,
    to: Sequence[Address] = (),
    cc: Sequence[Address] = (),
    bcc: Sequence[Address] = (),
    text: str | None = None,
    html: str | None = None,
) -> Draft:
    """A forward of ``original``: ``Fwd:`` subject (not stacked), the original's headers and
    text below the person's own text, and every attachment of the original (inline images
    too) as an attachment by its stored blob (``blob_key``; an attachment never downloaded
    makes :func:`build_message` refuse the draft, naming it). No In-Reply-To: a forward starts
    a conversation with someone else."""
    who = original.from_
    header_lines = ["---------- Forwarded message ----------"]
    if who is not None:
        header_lines.append(f"From: {who.name} <{who.email}>" if who.name else f"From: {who.email}")
    if original.date is not None:
        header_lines.append(f"Date: {format_datetime(original.date)}")
    header_lines.append(f"Subject: {clean_header_text(original.subject)}")
    if original.to:
        header_lines.append("To: " + ", ".join(a.email for a in original.to))
    if original.cc:
        header_lines.append("Cc: " + ", ".join(a.email for a in original.cc))
    block = "\n".join(header_lines)
    quoted = _original_text(original)
    body_text = f"{text or ''}\n\n{block}\n\n{quoted}\n".lstrip("\n")
    body_html = None
    if html is not None:
        body_html = f"{html}\n<p>{_quote_html(block)}</p>\n<div>{_quote_html(quoted)}</div>\n"
    attachments = tuple(
        Attachment(
            filename=safe_attachment_name(a.filename),
            content_type=a.content_type or "application/octet-stream",
            blob_key=a.blob_key,
        )
        for a in original.attachments
    )
    return Draft(
        from_=from_,
        to=tuple(to),
        cc=tuple(cc),
        bcc=tuple(bcc),
        subject=forward_subject(original.subject),
        text=body_text,
        html=body_html,
        attachments=attachments,
    )


def with_signature(draft: Draft, signature: str) -> Draft:
    """``draft`` with ``signature`` (plain text) appended below a ``-- `` line (RFC 3676
    §4.3) to the text, and escaped to the HTML."""
    signature = signature.strip("\n")
    if not signature:
        return draft
    text = draft.text
    html_body = draft.html
    if text is not None or html_body is None:
        text = f"{(text or '').rstrip()}\n\n-- \n{signature}\n"
    if html_body is not None:
        html_body = f'{html_body}\n<div class="signature">-- <br>\n{_quote_html(signature)}</div>\n'
    return replace(draft, text=text, html=html_body)
