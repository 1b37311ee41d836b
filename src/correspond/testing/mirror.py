"""A small, realistic mirror for tests of the read side (API, CLI): mail is put on the private
Dovecot (LMTP delivery and APPEND) and synced with the real engine, so what the surfaces read is
exactly what a backfill stores.

The mailbox holds a two-message thread (the reply also filed in Sent: one message, two
locations), an HTML message full of hostile markup with an inline ``cid:`` image and three
attachments (a PDF with a path-traversing, direction-spoofing name, an HTML page and an SVG),
and :data:`FILLERS` plain messages for paging.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.messages import MessageStore
from correspond.store.repository import Store
from correspond.sync.engine import AccountSyncer, AccountSyncReport
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.store import add_dovecot_account, sync_once

__all__ = [
    "FILLERS",
    "HOSTILE_HTML",
    "HOSTILE_SUBJECT",
    "PDF_BYTES",
    "PDF_NAME",
    "PNG_BYTES",
    "SEEDED_MESSAGES",
    "SeededMirror",
    "seed_mirror",
]

FILLERS = 6
#: How many messages :func:`seed_mirror` stores: the kickoff, its reply (in INBOX and Sent: one
#: message), the HTML report, and the fillers.
SEEDED_MESSAGES = 3 + FILLERS
PNG_BYTES = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
PDF_BYTES = b"%PDF-1.4\n% correspond test\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"
#: The attachment's name as the mail gives it: a path, a right-to-left override, accents.
PDF_NAME = "../../etc/r\u00e9sum\u00e9\u202egpj.exe.pdf"
HOSTILE_HTML = (
    "<html><head><style>body{background:url(https://tracker.example/bg.gif)}</style>"
    '<base href="https://attacker.example/"></head>'
    '<body onload="alert(1)"><p onclick="alert(2)">Quarterly <b>numbers</b></p>'
    "<script>alert(3)</script>"
    '<img src="cid:logo@example.test" alt="logo">'
    '<img src="https://tracker.example/open.gif" width="1" height="1">'
    '<a href="javascript:alert(4)">click</a> '
    '<a href="https://example.com/report">report</a>'
    '<div style="position:fixed;top:0;color:red">overlay</div>'
    "</body></html>"
)
# RFC 2047 encoded-word that decodes to markup: a subject is data, never HTML.
HOSTILE_SUBJECT = "<img src=x onerror=alert(1)> [bold]Q3"
_ENCODED_SUBJECT = f"=?UTF-8?B?{base64.b64encode(HOSTILE_SUBJECT.encode()).decode()}?="


@dataclass(frozen=True, slots=True)
class SeededMirror:
    """What was seeded: the account name and the Message-IDs of the notable messages."""

    account: str
    address: str
    report: AccountSyncReport
    kickoff_mid: str = "kickoff@example.test"
    reply_mid: str = "kickoff-reply@example.test"
    html_mid: str = "report@example.test"


def _plain(mid: str, when: datetime, subject: str, frm: str, to: str, extra: str = "") -> bytes:
    return plain_message(
        mid,
        when=when,
        subject=subject,
        body=f"Hello,\r\nthis is {subject}.\r\n",
        sender=frm,
        to=to,
        extra_headers=extra,
    )


def _b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")


def _html_message(when: datetime, to: str) -> bytes:
    encoded_name = "UTF-8''" + "".join(
        c if c.isalnum() or c in ".-_" else "".join(f"%{b:02X}" for b in c.encode())
        for c in PDF_NAME
    )
    return (
        f"Message-ID: <report@example.test>\r\nDate: {email.utils.format_datetime(when)}\r\n"
        f'From: "Bob <script>" <bob@example.test>\r\nTo: {to}\r\n'
        "Cc: Carol <carol@example.test>\r\nReply-To: replies@example.test\r\n"
        f"Subject: {_ENCODED_SUBJECT}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="MIX"\r\n\r\n'
        '--MIX\r\nContent-Type: multipart/related; boundary="REL"\r\n\r\n'
        '--REL\r\nContent-Type: multipart/alternative; boundary="ALT"\r\n\r\n'
        "--ALT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nQuarterly numbers (text).\r\n"
        "--ALT\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f"{HOSTILE_HTML}\r\n--ALT--\r\n"
        "--REL\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-ID: <logo@example.test>\r\nContent-Disposition: inline\r\n\r\n"
        f"{_b64(PNG_BYTES)}--REL--\r\n"
        "--MIX\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; filename*={encoded_name}\r\n\r\n"
        f"{_b64(PDF_BYTES)}"
        "--MIX\r\nContent-Type: text/html; charset=utf-8\r\n"
        'Content-Disposition: attachment; filename="page.html"\r\n\r\n'
        "<script>alert(5)</script>\r\n"
        "--MIX\r\nContent-Type: image/svg+xml\r\n"
        'Content-Disposition: attachment; filename="pic.svg"\r\n\r\n'
        '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(6)"/>\r\n'
        "--MIX--\r\n"
    ).encode()


def seed_mirror(
    store: Store,
    settings: Settings,
    server: DovecotServer,
    user: ImapUser,
    *,
    now: datetime | None = None,
) -> SeededMirror:
    """Put the test mail on ``user``'s mailbox and backfill it into ``store`` (blobs under
    ``settings.blob_dir``) with :class:`~correspond.sync.engine.AccountSyncer`."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    me = user.address
    alice = "Alice Example <alice@example.test>"
    kickoff = _plain("kickoff@example.test", now - timedelta(days=5), "Project kickoff", alice, me)
    reply = _plain(
        "kickoff-reply@example.test",
        now - timedelta(days=4),
        "Re: Project kickoff",
        me,
        alice,
        "In-Reply-To: <kickoff@example.test>\r\nReferences: <kickoff@example.test>\r\n",
    )
    server.deliver(user, kickoff)
    server.deliver(user, reply)
    server.append(user, "Sent", reply, flags=("\\Seen",), date=now - timedelta(days=4))
    server.deliver(user, _html_message(now - timedelta(days=3), me))
    for n in range(FILLERS):
        when = now - timedelta(days=10, hours=n)
        server.deliver(user, _plain(f"filler{n}@example.test", when, f"Filler {n}", alice, me))

    account = add_dovecot_account(store, server, user)
    syncer = AccountSyncer(
        store, MessageStore(store.engine), BlobStore.from_settings(settings), settings
    )
    report = asyncio.run(sync_once(syncer, account))
    return SeededMirror(account=user.username, address=me, report=report)
