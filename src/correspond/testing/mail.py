"""Test mail, built as bytes (no pytest imports).

One plain-text message layout serves the tests and the seeded mirror: each caller picks its own
Message-ID, subject and body, so mailboxes of different tests never collide.
"""

from __future__ import annotations

import email.utils
from datetime import datetime

__all__ = ["plain_message"]


def plain_message(
    message_id: str,
    *,
    when: datetime,
    subject: str,
    body: str,
    sender: str = "Alice <alice@example.test>",
    to: str = "bob@example.test",
    extra_headers: str = "",
) -> bytes:
    """A ``text/plain`` UTF-8 message (RFC 5322 §3.6 header fields, CRLF line ends).

    ``message_id`` is given without angle brackets; ``extra_headers`` are whole CRLF-terminated
    header lines put after ``Subject``.
    """
    return (
        f"Message-ID: <{message_id}>\r\n"
        f"Date: {email.utils.format_datetime(when)}\r\n"
        f"From: {sender}\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"{extra_headers}"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}"
    ).encode()
