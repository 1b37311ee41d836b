"""The sending path's builder: :func:`correspond.mail.compose.build_message` with two stricter
checks around it (pure, no IO).

``outgoing.SendService`` calls :func:`build_outgoing` at one place. It builds with
``build_message`` (one builder for the composer and the sender) and adds what sending needs:

- **refusal, not repair**: ``build_message`` turns a line break in a subject or display name
  into a space; a send refuses it instead (:func:`refuse_line_breaks`, with a
  :class:`~correspond.errors.ConfigError` naming the field), also when it hides in an RFC 2047
  word (Python before 3.12.5 wrote what such a word decodes to verbatim: CVE-2024-6923), so
  a crafted value is never sent in any form;
- **the header block is checked once more** (:func:`check_generated`): only the fields this
  path sets, each once, whatever a value decoded to on the way;
- the Bcc header is kept (``keep_bcc``): this is the Sent copy and the CRM's; the copy
  submitted over SMTP has it removed (``rules.send.strip_bcc``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from email.header import decode_header, make_header
from email.message import EmailMessage

from correspond.errors import ConfigError
from correspond.mail.compose import (
    Attachment,
    Draft,
    build_message,
    forward_subject,
    message_bytes,
    reply_subject,
    safe_attachment_name,
)

__all__ = [
    "OutgoingAttachment",
    "build_outgoing",
    "check_generated",
    "forward_subject",
    "refuse_line_breaks",
    "reply_subject",
    "safe_filename",
    "uploaded",
]

#: A file to send (``compose.Attachment``; the name kept for the API and CLI callers).
OutgoingAttachment = Attachment

#: Line breaks (and other controls) that must never reach a header (see
#: ../shared/corpus/injection/README.md): CR, LF, NEL, LS, PS, VT, FF and every C0 control.
_BREAKS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")


def refuse_line_breaks(value: str, what: str) -> str:
    """``value`` if neither it nor its RFC 2047 decoding holds a line break or control
    character, else :class:`ConfigError` naming ``what``."""
    decoded = value
    for _ in range(4):  # as many rounds as compose.clean_header_text decodes
        if "=?" not in decoded:
            break
        try:
            # The stdlib's decoding keeps what a word decodes to (parse.decode_header_value
            # would blank the very characters looked for here).
            again = str(make_header(decode_header(decoded)))
        except (ValueError, LookupError, UnicodeError):
            break
        if again == decoded:
            break
        decoded = again
    if _BREAKS.search(value) or _BREAKS.search(decoded):
        raise ConfigError(f"{what} contains a line break or control character: {value!r}")
    return value


def safe_filename(name: str) -> str:
    """An attachment name with no path in it (``../../etc/passwd`` becomes ``passwd``)."""
    return safe_attachment_name(name)


def uploaded(filename: str, content_type: str, content: bytes) -> Attachment:
    """A file given by a person (an upload, ``--attach``): a content type that is not one
    plain ``type/subtype`` is sent as ``application/octet-stream`` (never refused, never
    copied into a header as given)."""
    kind = content_type.strip()
    if not _CONTENT_TYPE.match(kind) or len(kind) > 127:
        kind = "application/octet-stream"
    return Attachment(filename=filename or "attachment", content_type=kind, content=content)


def _check_draft(draft: Draft) -> None:
    refuse_line_breaks(draft.subject, "the subject")
    for where, addresses in (
        ("From", (draft.from_,)),
        ("To", draft.to),
        ("Cc", draft.cc),
        ("Bcc", draft.bcc),
        ("Reply-To", draft.reply_to),
    ):
        for address in addresses:
            refuse_line_breaks(address.name, f"{where} name")


def build_outgoing(
    draft: Draft,
    *,
    message_id_domain: str,
    now: datetime,
    message_id: str | None = None,
    resolve: Callable[[str], bytes] | None = None,
) -> EmailMessage:
    """The message to send and file (with Bcc: see the module docstring)."""
    _check_draft(draft)
    msg = build_message(
        draft,
        message_id_domain=message_id_domain,
        now=now,
        message_id=message_id,
        resolve=resolve,
        keep_bcc=True,
    )
    check_generated(msg, extra={name.lower() for name, _ in draft.extra_headers})
    return msg


_HEADERS = frozenset(
    {
        "from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "in-reply-to",
        "references", "mime-version", "content-type", "content-transfer-encoding",
    }
)  # fmt: skip


def check_generated(msg: EmailMessage, *, extra: set[str] | frozenset[str] = frozenset()) -> None:
    """The last line of defence: the generated header block holds only the fields set here
    (and the draft's ``extra`` headers), each once."""
    head = message_bytes(msg).split(b"\r\n\r\n", 1)[0]
    names = [
        line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        for line in head.split(b"\r\n")
        if line[:1] not in (b" ", b"\t")
    ]
    allowed = _HEADERS | extra
    if any(n not in allowed for n in names) or len(names) != len(set(names)):
        raise ConfigError("the message's headers would not be what was asked: refused")
