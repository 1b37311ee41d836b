"""Pure decisions of sending: who files the Sent copy, the envelope, what a crash left behind.

Exactly once (DESIGN.md invariant 4). SMTP has no idempotency key: between the server's 250 and
the moment the sender records it, a crash leaves a send whose fate only the mailboxes can tell.
So a send leaves evidence the sender can look for before it ever retries:

- where the provider files its own copy of what it relays (:data:`SERVER_FILES_SENT`: Gmail,
  Microsoft 365), that copy in Sent is the evidence;
- elsewhere (``append``, and ``probe`` until the first send has found out) the envelope also
  names the account's own address (:func:`envelope_recipients`: an envelope-only Bcc to
  itself, in no header): the server delivers a *receipt* copy into the account's own mailbox
  exactly when it accepted the message. Once sent, Correspond APPENDs the Sent copy (with
  ``\\Seen``) and removes the receipt.

On a restart the sender asks :func:`after_interruption` with what it finds: the copy in Sent or
the receipt means sent (finish the filing, never send again); neither, once the receipt has had
time to arrive, means the server never took it (send again).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

__all__ = [
    "SERVER_FILES_SENT",
    "SentCopy",
    "after_interruption",
    "envelope_recipients",
    "probe_finding",
    "sent_copy_policy",
    "strip_bcc",
]

SentCopy = Literal["server", "append", "probe"]
Interrupted = Literal["sent", "wait", "resend"]

#: Presets whose servers file their own copy of every message sent through them.
SERVER_FILES_SENT = frozenset({"google", "office365", "exchange-online"})


def sent_copy_policy(preset: str, recorded: str | None) -> SentCopy:
    """Who puts the copy in Sent: the provider (``server``), Correspond (``append``), or not
    known yet (``probe``: the first send looks for the server's copy shortly after sending
    and records the finding on the account)."""
    if preset in SERVER_FILES_SENT:
        return "server"
    if recorded in ("server", "append"):
        return recorded  # type: ignore[return-value]
    return "probe"


def probe_finding(copy_in_sent: bool) -> Literal["server", "append"]:
    """What the first send on an unknown server found: a copy in Sent that Correspond did
    not put there means the server files its own."""
    return "server" if copy_in_sent else "append"


def envelope_recipients(
    to: Iterable[str], cc: Iterable[str], bcc: Iterable[str], *, own: str, receipt: bool
) -> list[str]:
    """The RCPT TO addresses: To, Cc and Bcc once each (case-insensitively, first spelling
    kept), plus the account's own address when a receipt is wanted (see the module
    docstring); Bcc stays out of every header."""
    seen: set[str] = set()
    out: list[str] = []
    for address in (*to, *cc, *bcc, *([own] if receipt else [])):
        key = address.strip().lower()
        if key and key not in seen:
            seen.add(key)
            out.append(address.strip())
    return out


def after_interruption(
    *, copy_in_sent: bool, receipt_found: bool, seconds_since_attempt: float, receipt_wait: float
) -> Interrupted:
    """A send was interrupted after its SMTP transaction may have started (the process died,
    the connection dropped): ``sent`` when the mailbox shows it went (the copy in Sent, or
    the receipt), ``wait`` while a receipt may still be on its way, ``resend`` once it has
    had ``receipt_wait`` seconds to arrive and has not (the server never accepted it)."""
    if copy_in_sent or receipt_found:
        return "sent"
    if seconds_since_attempt < receipt_wait:
        return "wait"
    return "resend"


def strip_bcc(raw: bytes) -> bytes:
    """``raw`` without its Bcc header fields (RFC 5322 §3.6.3: the copy recipients get carries
    no Bcc), continuation lines included; the body is untouched."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        head, body = raw, b""
    else:
        head, body = raw[: end + 2], raw[end + 2 :]
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() == b"bcc"
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + body
