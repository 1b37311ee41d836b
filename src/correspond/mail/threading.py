"""Which conversation a message belongs to: incremental JWZ threading, pure.

Follows the REFERENCES algorithm of RFC 5256 §2.2 and Jamie Zawinski's description
(jwz.org/doc/threading.html), reshaped for a store that sees messages one at a time and in any
order:

* **References decide.** A message joins the thread of any known message it references
  (References, then In-Reply-To; RFC 5322 §3.6.4), of any known message that references it
  (the child arrived first), and of any known message that shares a referenced id with it (two
  replies to a parent we never saw: JWZ's empty container). When those known messages sit in
  several threads, this message proves they are one conversation: the caller merges them.
* **Subject is a guarded fallback** (RFC 5256 §2.2 step 5 merges by subject unconditionally; we
  do not, because "Update" from two strangers is not one conversation). It applies only when no
  reference resolves, the normalised subject is specific (:func:`is_trivial_subject`), the two
  messages share a participant, and they are at most :data:`SUBJECT_WINDOW` apart.

The caller queries the candidates (``related``, ``same_subject``) and applies the decision.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from correspond.mail.parse import ParsedMessage

__all__ = [
    "SUBJECT_WINDOW",
    "KnownMessage",
    "ThreadDecision",
    "ThreadInput",
    "choose_thread",
    "is_trivial_subject",
    "normalize_subject",
    "subject_keys",
    "thread_input",
]

#: Most time between two messages joined by subject alone.
SUBJECT_WINDOW = timedelta(days=30)

# Reply/forward markers of many locales (RFC 5256 §2.1 "subj-refwd" extended), optionally
# counted ("Re[2]:", "RE(3):") and with full-width colons.
_PREFIX = re.compile(
    r"^\s*(?:"
    r"(?:re|fwd?|fw|aw|wg|sv|vs|vb|antw|doorst|réf\.?|ref\.?|rif|tr|r|rv|enc|res|odp|pd|"
    r"ynt|ilt|atb|vl|fs|continued|ответ|отв|пересл|回复|回覆|答复|转发|轉寄|返信|転送|"
    r"رد|השב|הועבר|הב|απ|σχετ|προώθ)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]"
    r"|\[[^\]]{0,80}\]"
    r")\s*",
    re.I,
)
_TRAILER = re.compile(r"\s*\((?:fwd|fw)\)\s*$", re.I)

# Subjects too generic to join strangers' mail on, even with a shared participant.
_TRIVIAL = frozenset(
    [
        "agenda",
        "alert",
        "attachment",
        "attachments",
        "availability",
        "call",
        "call-request",
        "catch-up",
        "check-in",
        "checking-in",
        "coffee",
        "confirm",
        "confirmation",
        "congrats",
        "congratulations",
        "contact",
        "contract",
        "daily-update",
        "deal",
        "demo",
        "details",
        "dinner",
        "doc",
        "docs",
        "document",
        "documents",
        "draft",
        "enquiry",
        "feedback",
        "file",
        "files",
        "follow-up",
        "followup",
        "fyi",
        "good-morning",
        "greetings",
        "happy-birthday",
        "hello",
        "hello-there",
        "help",
        "hey",
        "hi",
        "hi-there",
        "hiya",
        "image",
        "images",
        "important",
        "info",
        "information",
        "inquiry",
        "intro",
        "introduction",
        "invoice",
        "invoices",
        "lunch",
        "meeting",
        "meeting-request",
        "minutes",
        "monthly-update",
        "news",
        "newsletter",
        "no-subject",
        "none",
        "notes",
        "notice",
        "notification",
        "offer",
        "order",
        "payment",
        "photo",
        "photos",
        "pics",
        "picture",
        "pictures",
        "presentation",
        "proposal",
        "question",
        "questions",
        "quick-question",
        "quotation",
        "quote",
        "receipt",
        "reminder",
        "report",
        "reports",
        "request",
        "reschedule",
        "review",
        "sale",
        "scan",
        "scanned",
        "schedule",
        "slides",
        "status",
        "status-update",
        "summary",
        "test",
        "testing",
        "thank-you",
        "thanks",
        "thankyou",
        "ty",
        "untitled",
        "update",
        "updates",
        "urgent",
        "weekly",
        "weekly-update",
        "welcome",
    ]
)


def normalize_subject(subject: str) -> str:
    """The subject without reply/forward prefixes, ``[list]`` tags and extra spaces, case-folded.

    ``"Re: [acme-dev] AW: Fwd: Budget 2026"`` → ``"budget 2026"``; ``"RE[2]: x"`` → ``"x"``;
    ``"Réf. : x"`` → ``"x"``.
    """
    s = subject
    while True:
        m = _PREFIX.match(s)
        if m is None or m.end() == 0:
            break
        s = s[m.end() :]
    s = _TRAILER.sub("", s)
    return " ".join(s.split()).casefold()


def _had_prefix(subject: str) -> bool:
    m = _PREFIX.match(subject)
    return m is not None and not m.group(0).strip().startswith("[")


def is_trivial_subject(normalized: str) -> bool:
    """True when a normalised subject is too generic to thread by (empty, "update", "hi", ...)."""
    s = normalized.strip(" \t.!?:;,-_*#~")
    if len(s) < 4:
        return True
    if not any(ch.isalpha() for ch in s):
        return True  # "1234", "!!!" and the like
    return s.replace(" ", "-") in _TRIVIAL


@dataclass(frozen=True)
class ThreadInput:
    """What threading needs from a new message.

    ``parent_ids``: References then In-Reply-To, oldest first, deduplicated, own id excluded.
    ``participants``: lower-cased addresses from From, To, Cc and Bcc (not Reply-To or Sender,
    which mailing lists set to the list and would make every list message "share" a participant).
    ``is_reply``: the original subject carried a reply/forward prefix.
    """

    message_id: str | None
    parent_ids: tuple[str, ...]
    normalized_subject: str
    participants: frozenset[str]
    date: datetime | None
    is_reply: bool = False


@dataclass(frozen=True)
class KnownMessage:
    """A stored message, as the caller loads it for :func:`choose_thread`."""

    thread_id: int
    message_id: str | None
    parent_ids: tuple[str, ...]
    normalized_subject: str
    participants: frozenset[str]
    date: datetime | None


@dataclass(frozen=True)
class ThreadDecision:
    """``thread_id`` None: start a new thread. ``merge_thread_ids``: merge these into it."""

    thread_id: int | None
    merge_thread_ids: tuple[int, ...] = ()


def thread_input(parsed: ParsedMessage) -> ThreadInput:
    """Build the :class:`ThreadInput` of a parsed message."""
    own = parsed.message_id
    seen: dict[str, None] = {}
    for ref in (*parsed.references, *((parsed.in_reply_to,) if parsed.in_reply_to else ())):
        if ref and ref != own:
            seen.setdefault(ref, None)
    people = frozenset(
        a.email.lower()
        for group in (parsed.from_, parsed.to, parsed.cc, parsed.bcc)
        for a in group
        if "@" in a.email
    )
    return ThreadInput(
        message_id=own,
        parent_ids=tuple(seen),
        normalized_subject=normalize_subject(parsed.subject),
        participants=people,
        date=parsed.date,
        is_reply=_had_prefix(parsed.subject),
    )


def subject_keys(normalized_subject: str, counterparts: Iterable[str]) -> list[str]:
    """The keys under which a message can be found as a same-subject candidate: one per
    (normalised subject, counterpart) pair, hashed to a fixed width.

    ``counterparts`` are the participants other than the mailbox owner: in a salesperson's
    mailbox the owner takes part in almost every message, so sharing the owner proves nothing.
    Looking candidates up by these keys finds exactly the stored messages that pass the
    subject guard's "shared participant" test, however common the subject. A trivial subject
    (:func:`is_trivial_subject`) never joins by subject, so it gets no keys.
    """
    if not normalized_subject or is_trivial_subject(normalized_subject):
        return []
    return sorted(
        {
            hashlib.sha256(
                f"{normalized_subject}\x00{addr}".encode("utf-8", "surrogatepass")
            ).hexdigest()[:32]
            for addr in counterparts
        }
    )


def _aware(d: datetime) -> datetime:
    # Stores such as SQLite hand datetimes back naive; they were written as UTC.
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def _gap(a: datetime | None, b: datetime | None) -> timedelta | None:
    """Time between two dates, or None when either is unknown."""
    if a is None or b is None:
        return None
    return abs(_aware(a) - _aware(b))


def choose_thread(
    msg: ThreadInput, related: Sequence[KnownMessage], same_subject: Sequence[KnownMessage]
) -> ThreadDecision:
    """Decide the thread of ``msg`` from known messages (see the module docstring).

    ``related``: known messages whose message_id is in ``msg.parent_ids``, or whose parent_ids
    contain ``msg.message_id`` (optionally also those sharing a parent id with ``msg``).
    ``same_subject``: known messages with the same normalised subject, about ±30 days around it.
    Candidates that do not actually relate are ignored, so over-broad queries are safe.
    The chosen thread is the lowest thread id among those proven related (stable whatever the
    arrival order); the others are returned for merging, lowest first.
    """
    parents = set(msg.parent_ids)
    threads: set[int] = set()
    for k in related:
        if (
            (k.message_id is not None and k.message_id in parents)
            or (msg.message_id is not None and msg.message_id in k.parent_ids)
            or (k.message_id is not None and k.message_id == msg.message_id)
            or (parents and not parents.isdisjoint(k.parent_ids))
        ):
            threads.add(k.thread_id)
    if threads:
        ordered = sorted(threads)
        return ThreadDecision(thread_id=ordered[0], merge_thread_ids=tuple(ordered[1:]))

    subject = msg.normalized_subject
    if is_trivial_subject(subject) or not msg.participants:
        return ThreadDecision(thread_id=None)
    best: tuple[timedelta, int] | None = None  # (time apart, thread id): nearest, then oldest
    for k in same_subject:
        if k.normalized_subject != subject:
            continue
        shares = not msg.participants.isdisjoint(k.participants)
        # The brief's guard: (reply prefix OR shared participant) AND shared participant.
        if not ((msg.is_reply or shares) and shares):
            continue
        gap = _gap(msg.date, k.date)
        if gap is None or gap > SUBJECT_WINDOW:
            continue
        candidate = (gap, k.thread_id)
        if best is None or candidate < best:
            best = candidate
    return ThreadDecision(thread_id=best[1] if best is not None else None)
