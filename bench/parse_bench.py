"""Throughput of the sans-IO IMAP response parser (correspond.imap.protocol.ResponseParser).

Run: .venv/bin/python bench/parse_bench.py [--messages 10000] [--bodies 2000] [--seed 1]

(a) FETCH responses with a realistic ENVELOPE, BODYSTRUCTURE and a BODY[HEADER] literal, the
    shape of a backfill's metadata pass; (b) full-body FETCH literals (median ~10 KB, a few of
    1-2 MB), the shape of ``UID FETCH 1:* (UID BODY.PEEK[])``. Both are fed in 64 KB chunks as a
    socket would deliver them. For reference the same stream (b) is also read by the standard
    library's imaplib from an in-memory file (its own reader loop, no socket). Synthetic data
    only; nothing from ../shared is needed.

With ``--capture`` (e.g. the bench lab: ``--capture 127.0.0.1:11143 --user bench --password
benchpass``) stream (a) is instead the server's own reply to ``FETCH 1:N (UID FLAGS ENVELOPE
BODYSTRUCTURE BODY.PEEK[HEADER])`` over INBOX, captured once over a plaintext socket, so the
headers and structures are those of real-looking mail rather than ours.
"""

from __future__ import annotations

import argparse
import imaplib
import io
import random
import re
import socket
import time
from collections.abc import Callable

from correspond.imap.protocol import ResponseParser
from correspond.imap.types import FetchResponse

__all__ = ["full_body_stream", "main", "metadata_stream", "run_parser"]

CHUNK = 64 * 1024

_FIRST = ["Alice", "Bob", "Carol", "Dmitri", "Élodie", "Farah", "Günther", "Hiro", "Ines", "Jamal"]
_LAST = ["Smith", "Nguyen", "O'Brien", "Kowalski", "Müller", "Rossi", "Tanaka", "Haddad"]
_DOMAINS = ["example.com", "acme.io", "mail.example.org", "corp.example.net", "gmail.com"]
_WORDS = [
    *("quarterly", "report", "meeting", "invoice", "follow", "up", "proposal", "contract"),
    *("renewal", "pricing", "demo", "onboarding", "feedback", "roadmap", "launch", "budget"),
    *("approval", "schedule", "call", "notes", "update"),
]


def _addr(rng: random.Random) -> tuple[str, str, str]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return f"{first} {last}", f"{first.lower()}.{last.lower()}", rng.choice(_DOMAINS)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _addr_list(rng: random.Random, n: int) -> str:
    if n == 0:
        return "NIL"
    parts = []
    for _ in range(n):
        name, mailbox, host = _addr(rng)
        parts.append(f"({_q(name)} NIL {_q(mailbox)} {_q(host)})")
    return "(" + "".join(parts) + ")"


def _header(rng: random.Random, subject: str, msgid: str) -> bytes:
    name, mailbox, host = _addr(rng)
    lines = [
        f"Return-Path: <{mailbox}@{host}>",
        *(
            f"Received: from mx{i}.{host} (mx{i}.{host} [192.0.2.{i}]) by mail.example.com "
            f"with ESMTPS id {rng.getrandbits(64):x}; Mon, 3 Jun 2024 10:{i:02d}:00 +0000"
            for i in range(rng.randint(2, 5))
        ),
        f"DKIM-Signature: v=1; a=rsa-sha256; d={host}; s=sel; b={'A' * rng.randint(200, 400)}",
        f"From: {name} <{mailbox}@{host}>",
        "To: Sales Team <sales@example.com>",
        f"Subject: {subject}",
        "Date: Mon, 3 Jun 2024 10:15:00 +0000",
        f"Message-ID: {msgid}",
        "MIME-Version: 1.0",
        'Content-Type: multipart/alternative; boundary="b1_abcdef"',
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def metadata_stream(count: int, seed: int) -> bytes:
    """``count`` FETCH responses: UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE
    BODY[HEADER] (literal), then the tagged OK."""
    rng = random.Random(seed)
    out = []
    for seq in range(1, count + 1):
        subject = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9))).capitalize()
        msgid = f"<{rng.getrandbits(80):x}@{rng.choice(_DOMAINS)}>"
        envelope = (
            f'("Mon, 3 Jun 2024 10:15:00 +0000" {_q(subject)} {_addr_list(rng, 1)} '
            f"{_addr_list(rng, 1)} {_addr_list(rng, 1)} {_addr_list(rng, rng.randint(1, 3))} "
            f"{_addr_list(rng, rng.randint(0, 2))} NIL NIL {_q(msgid)})"
        )
        text_size, html_size = rng.randint(200, 20_000), rng.randint(1_000, 80_000)
        body = (
            f'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" {text_size} '
            f"{text_size // 60} NIL NIL NIL NIL)"
            f'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" {html_size} '
            f'{html_size // 70} NIL NIL NIL NIL) "ALTERNATIVE" ("BOUNDARY" "b1_abcdef") '
            "NIL NIL NIL)"
        )
        if rng.random() < 0.3:
            body = (
                f'({body}("APPLICATION" "PDF" ("NAME" "quote-{seq}.pdf") NIL NIL "BASE64" '
                f'{rng.randint(10_000, 500_000)} NIL ("ATTACHMENT" ("FILENAME" "quote-{seq}.pdf")) '
                'NIL NIL) "MIXED" ("BOUNDARY" "b0_xyz") NIL NIL NIL)'
            )
        header = _header(rng, subject, msgid)
        line = (
            f"* {seq} FETCH (UID {1000 + seq} FLAGS (\\Seen $NotJunk) "
            f'INTERNALDATE "03-Jun-2024 10:15:{seq % 60:02d} +0000" '
            f"RFC822.SIZE {text_size + html_size + len(header)} ENVELOPE {envelope} "
            f"BODYSTRUCTURE {body} BODY[HEADER] {{{len(header)}}}\r\n"
        ).encode()
        out.append(line + header + b")\r\n")
    out.append(b"A0001 OK FETCH completed\r\n")
    return b"".join(out)


def full_body_stream(count: int, seed: int) -> tuple[bytes, int]:
    """``count`` FETCH responses with a full body literal; returns (stream, literal bytes)."""
    rng = random.Random(seed)
    out = []
    total = 0
    block = bytes(rng.getrandbits(8) for _ in range(4096)).hex().encode("ascii")  # 8 KB text
    big_every = max(1, count // 5)  # about five 1-2 MB messages per run
    for seq in range(1, count + 1):
        if seq % big_every == 0:
            size = rng.randint(1_000_000, 2_000_000)
        else:
            size = max(500, int(rng.lognormvariate(9.2, 0.8)))  # median ~10 KB
        body = (block * (size // len(block) + 1))[:size]
        total += size
        out.append(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, 5000 + seq, size))
        out.append(body)
        out.append(b")\r\n")
    out.append(b"A0002 OK FETCH completed\r\n")
    return b"".join(out), total


def run_parser(stream: bytes, chunk: int = CHUNK) -> tuple[int, float]:
    """Feed ``stream`` in ``chunk``-sized pieces; return (FETCH responses, seconds)."""
    parser = ResponseParser()
    count = 0
    view = memoryview(stream)
    start = time.perf_counter()
    for offset in range(0, len(stream), chunk):
        parser.feed(bytes(view[offset : offset + chunk]))
        while (resp := parser.next_response()) is not None:
            if isinstance(resp, FetchResponse):
                count += 1
    return count, time.perf_counter() - start


def _memory_imaplib(stream: bytes) -> imaplib.IMAP4:
    """An imaplib.IMAP4 whose reader is an in-memory buffered file (no socket, no greeting).

    Built without __init__ (which would connect and ask for CAPABILITY); sets just what
    ``_get_response`` needs (CPython 3.11-3.13 imaplib)."""
    imap = imaplib.IMAP4.__new__(imaplib.IMAP4)
    imap.debug = 0
    imap.state = "SELECTED"
    imap.literal = None
    imap.tagged_commands = {b"A0002": None}
    imap.untagged_responses = {}
    imap.continuation_response = ""
    imap.is_readonly = False
    imap.tagnum = 0
    imap._tls_established = False
    imap._mode_ascii()
    imap._cmd_log_len, imap._cmd_log_idx, imap._cmd_log = 10, 0, {}  # set under __debug__
    imap.tagpre = b"A"
    imap.tagre = re.compile(rb"(?P<tag>A\d+) (?P<type>[A-Z]+) (?P<data>.*)", re.ASCII)
    imap.file = io.BufferedReader(io.BytesIO(stream), buffer_size=CHUNK)  # type: ignore[assignment]
    return imap


def run_imaplib(stream: bytes) -> tuple[int, float]:
    """imaplib's reader over the same bytes; return (untagged responses, seconds)."""
    imap = _memory_imaplib(stream)
    count = 0
    start = time.perf_counter()
    while imap.tagged_commands[b"A0002"] is None:
        imap._get_response()  # one response line (and its literals) per call
        count += 1
        if count % 100 == 0:
            imap.untagged_responses.clear()  # imaplib accumulates; keep memory flat
    count -= 1  # the tagged completion
    return count, time.perf_counter() - start


def captured_metadata_stream(address: str, user: str, password: str, count: int) -> bytes:
    """The server's reply to a metadata FETCH of INBOX's first ``count`` messages, raw bytes."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        reader = sock.makefile("rb")

        def until_tagged(tag: bytes) -> bytes:
            out = bytearray()
            while True:
                line = reader.readline()
                if not line:
                    raise SystemExit("the server closed the connection")
                out += line
                # A literal's announced length is read whole, so its text never looks tagged.
                if line.endswith(b"}\r\n") and b"{" in line:
                    size = int(line[line.rindex(b"{") + 1 : -3].rstrip(b"+"))
                    out += reader.read(size)
                    continue
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise SystemExit(f"server said: {line.decode(errors='replace').strip()}")
                    return bytes(out)

        reader.readline()  # greeting
        sock.sendall(f'a LOGIN "{user}" "{password}"\r\n'.encode())
        until_tagged(b"a")
        sock.sendall(b"b EXAMINE INBOX\r\n")
        until_tagged(b"b")
        items = "(UID FLAGS ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER])"
        sock.sendall(f"c FETCH 1:{count} {items}\r\n".encode())
        stream = until_tagged(b"c")
        sock.sendall(b"d LOGOUT\r\n")
        return stream


def _best(runs: int, fn: Callable[[], tuple[int, float]]) -> tuple[int, float]:
    results = [fn() for _ in range(runs)]
    return min(results, key=lambda r: r[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--bodies", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--capture", metavar="HOST:PORT", help="take (a) from this IMAP server")
    ap.add_argument("--user", default="bench")
    ap.add_argument("--password", default="benchpass")
    args = ap.parse_args()

    if args.capture:
        meta = captured_metadata_stream(args.capture, args.user, args.password, args.messages)
        source = f"captured from {args.capture}"
    else:
        meta = metadata_stream(args.messages, args.seed)
        source = "synthetic"
    n, secs = _best(args.runs, lambda: run_parser(meta))
    print(
        f"(a) metadata FETCH ({source}): {n} responses, {len(meta) / 1e6:.1f} MB in {secs:.3f} s: "
        f"{n / secs:,.0f} responses/s, {len(meta) / 1e6 / secs:.1f} MB/s"
    )

    bodies, literal_bytes = full_body_stream(args.bodies, args.seed)
    n, secs = _best(args.runs, lambda: run_parser(bodies))
    print(
        f"(b) full-body FETCH: {n} responses, {literal_bytes / 1e6:.1f} MB of literals in "
        f"{secs:.3f} s: {n / secs:,.0f} responses/s, {len(bodies) / 1e6 / secs:.1f} MB/s"
    )
    n_ref, secs_ref = _best(args.runs, lambda: run_imaplib(bodies))
    print(
        f"    imaplib reader, same stream: {n_ref} responses in {secs_ref:.3f} s: "
        f"{n_ref / secs_ref:,.0f} responses/s, {len(bodies) / 1e6 / secs_ref:.1f} MB/s "
        f"(parser/imaplib = {(n / secs) / (n_ref / secs_ref):.2f}x)"
    )


if __name__ == "__main__":
    main()
