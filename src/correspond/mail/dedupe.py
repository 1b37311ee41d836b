"""One key per mailbox message, stable across folders, servers, restarts and UIDVALIDITY resets.

Order of preference (DESIGN.md, data model ``messages.dedupe key``):

1. ``gm:<X-GM-MSGID>`` — Gmail's own message id (the same message in every label);
2. ``mid:<local>@<domain>`` — the RFC 5322 §3.6.4 Message-ID, brackets and whitespace removed,
   local part case-sensitive, domain lower-cased (RFC 5321 §2.4: domains are case-insensitive);
   ids longer than :data:`MAX_KEY_ID` are hashed (``midh:<sha256>``) to keep the key indexable;
3. ``h:<sha256>`` — a hash of headers that no server rewrites (Date, From, To, Cc, Subject,
   In-Reply-To, References), of the first 4 KiB of the body text, and of every attachment's type,
   name, size and content, for mail without a Message-ID. Attachments are in it because
   attachment-only messages (scanners, bounces) often share every header and have no text.

A Message-ID alone does not make two messages one: a spoofer, or a broken mailer, can reuse a
real message's id. Two messages with one Message-ID are one only when their sender address
matches too, and their Dates are within a day (:func:`same_message`; a missing value cannot
tell them apart, so it matches). The first message stored with an id keeps the plain key; a
later one that is *not* the same message gets :func:`distinct_key`, the plain key plus a hash
of its sender and the UTC day of its Date, so every copy of it (in other folders, in a list's
archive) again finds one key. Mailing-list copies keep the sender and the Date, so a footer
added on the way never splits them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from correspond.mail.parse import (
    ParsedAddress,
    ParsedMessage,
    header_message_id,
    header_sender_and_date,
)

__all__ = [
    "BODY_PREFIX_CHARS",
    "MAX_KEY_ID",
    "SAME_MESSAGE_WITHIN",
    "KeyFacts",
    "dedupe_key",
    "distinct_key",
    "header_dedupe_key",
    "header_key_facts",
    "key_facts",
    "normalize_message_id",
    "reusable_key",
    "same_message",
    "unfetched_body_key",
]

#: Characters of body text that go into the fallback hash.
BODY_PREFIX_CHARS = 4096
#: Longest Message-ID kept verbatim in a key.
MAX_KEY_ID = 400
#: Two messages with one Message-ID and sender are one when their Dates are this close.
SAME_MESSAGE_WITHIN = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What must match, beside the Message-ID, for two messages to be one: the sender's
    address (lower-cased; None when the message has none) and the Date (None: none)."""

    sender: str | None
    date: datetime | None


def key_facts(parsed: ParsedMessage) -> KeyFacts:
    """The :class:`KeyFacts` of a parsed message (or header block)."""
    sender = parsed.from_[0].email.lower() if parsed.from_ and parsed.from_[0].email else None
    return KeyFacts(sender, parsed.date)


def header_key_facts(raw_header: bytes) -> KeyFacts | None:
    """:func:`key_facts` read from a raw header block without parsing it whole; None when
    only the full parse can tell."""
    found = header_sender_and_date(raw_header)
    return None if found is None else KeyFacts(*found)


def reusable_key(key: str) -> bool:
    """Whether ``key`` rests on a Message-ID (which another message may reuse)."""
    return key.startswith(("mid:", "midh:"))


def same_message(a: KeyFacts, b: KeyFacts) -> bool:
    """Whether two messages with one Message-ID are one: same sender address, Dates within
    :data:`SAME_MESSAGE_WITHIN`. A value missing on either side matches (it cannot tell)."""
    if a.sender is not None and b.sender is not None and a.sender != b.sender:
        return False
    if a.date is not None and b.date is not None:
        return abs(_utc(a.date) - _utc(b.date)) <= SAME_MESSAGE_WITHIN
    return True


def distinct_key(key: str, facts: KeyFacts) -> str:
    """The key of a message that reuses the Message-ID of ``key``'s message but is another
    message (:func:`same_message` is false): ``key`` plus ``#`` and a hash of its sender and
    the UTC day of its Date, the same for every copy of that other message. (A crafted
    Message-ID that looks like one is still checked like any key: facts decide.)"""
    day = _utc(facts.date).strftime("%Y-%m-%d") if facts.date is not None else ""
    tag = f"{facts.sender or ''}\x00{day}".encode("utf-8", "surrogatepass")
    return f"{key}#{hashlib.sha256(tag).hexdigest()[:16]}"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_message_id(message_id: str) -> str:
    """Message-ID without ``<>`` and whitespace; the domain (after the last ``@``) lower-cased."""
    mid = "".join(message_id.split()).strip("<>")
    local, at, domain = mid.rpartition("@")
    return f"{local}@{domain.lower()}" if at else mid


def _message_id_key(message_id: str) -> str | None:
    mid = normalize_message_id(message_id)
    if not mid:
        return None
    if len(mid) > MAX_KEY_ID:
        return "midh:" + hashlib.sha256(mid.encode("utf-8", "surrogatepass")).hexdigest()
    return f"mid:{mid}"


def header_dedupe_key(raw_header: bytes, *, gm_msgid: int | None = None) -> str | None:
    """The key :func:`dedupe_key` gives the parsed ``raw_header``, when the header block alone
    decides it (an X-GM-MSGID or a Message-ID); None when it takes a full parse: no usable
    Message-ID (the fallback hash reads the body too) or header bytes only the full parse
    decodes."""
    if gm_msgid is not None:
        return f"gm:{gm_msgid}"
    message_id, exact = header_message_id(raw_header)
    if not exact or not message_id:
        return None
    return _message_id_key(message_id)


def unfetched_body_key(header_key: str, size: int | None) -> str:
    """The key of a message whose body is not downloaded (above the size limit), from its
    header-block key: a fallback hash (no Message-ID) gains the message's size, so another
    message with the same headers (a bounce, a scanner's mail) is not taken for a copy of it,
    while its copies in other folders (same bytes) still share one key."""
    if not header_key.startswith("h:"):
        return header_key
    digest = hashlib.sha256(f"{header_key}\x00size:{size}".encode())
    return "h:" + digest.hexdigest()


def dedupe_key(parsed: ParsedMessage, *, gm_msgid: int | None = None) -> str:
    """The dedupe key of a parsed message; see the module docstring for the three forms."""
    if gm_msgid is not None:
        return f"gm:{gm_msgid}"
    if parsed.message_id:
        key = _message_id_key(parsed.message_id)
        if key:
            return key
    return "h:" + _stable_hash(parsed)


def _stable_hash(parsed: ParsedMessage) -> str:
    if parsed.date is not None:
        date = parsed.date.astimezone(UTC).isoformat()
    else:
        raw = next((v for n, v in parsed.headers if n.lower() == "date"), "")
        date = " ".join(raw.split())

    def emails(addrs: tuple[ParsedAddress, ...]) -> str:
        return ",".join(a.email.lower() for a in addrs)

    # Whitespace collapsed: servers and clients differ in line ends and trailing blanks.
    body = " ".join((parsed.text or "")[: BODY_PREFIX_CHARS * 2].split())[:BODY_PREFIX_CHARS]
    fields = (
        date,
        emails(parsed.from_),
        emails(parsed.to),
        emails(parsed.cc),
        " ".join(parsed.subject.split()),
        body,
    )
    digest = hashlib.sha256("\x00".join(fields).encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(" ".join(parsed.references).encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update((parsed.in_reply_to or "").encode("utf-8", "surrogatepass"))
    for att in parsed.attachments:
        meta = f"\x00{att.content_type}\x00{att.filename or ''}\x00{att.size}\x00"
        digest.update(meta.encode("utf-8", "surrogatepass"))
        if att.content is not None:
            digest.update(hashlib.sha256(att.content).digest())
    return digest.hexdigest()
