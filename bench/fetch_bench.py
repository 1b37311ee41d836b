#!/usr/bin/env python3
"""Full-body fetch rate: Correspond's asyncio IMAP client against stdlib imaplib, same run.

    bench/fetch_bench.py --host 127.0.0.1 --port 11143 --user bench --password benchpass
    bench/fetch_bench.py --host 127.0.0.1 --tls --port 11993 --user bench --password benchpass
    bench/fetch_bench.py [--tls] [--count 2000]     # private Dovecot + generated mailbox

Both clients log in, then for each mailbox (INBOX and Sent by default, as ``peers.sh fetch``)
EXAMINE it, UID SEARCH ALL, then UID FETCH every message in batches
(``UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]``), counting and dropping the bodies. The two run
alternately ``--rounds`` times after one untimed warm-up pass; medians and the ratio
(ours / imaplib) are printed, plus one JSON line. The machine is shared and noisy: compare
ratios, not bare rates.

Without ``--host`` a private Dovecot (correspond.testing.dovecot) is started with a mailbox made
by ../shared/bench/gen_corpus.py when present (else simple generated messages).
``--cert`` names the server certificate to trust (default: the dovecot-lab one when it exists).
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from correspond.imap.client import ImapClient, ImapEndpoint
from correspond.imap.protocol import format_sequence_set

ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"
LAB_CERT = Path(os.environ.get("LAB", "/tmp/correspond-bench")) / "ssl" / "cert.pem"


def shared_dir() -> Path:
    env = os.environ.get("CORRESPOND_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def batches(uids: list[int], size: int) -> Iterator[str]:
    for i in range(0, len(uids), size):
        yield format_sequence_set(uids[i : i + size])


async def run_ours(args: argparse.Namespace, cert_pem: str | None) -> tuple[int, int, float]:
    if args.tls:
        endpoint = ImapEndpoint(args.host, args.port, "tls", trusted_cert_pem=cert_pem)
    else:
        endpoint = ImapEndpoint(args.host, args.port, "plain", allow_plaintext=True)
    count = size = 0
    elapsed = 0.0
    async with await ImapClient.connect(endpoint) as client:
        await client.login(args.user, args.password)
        for mailbox in args.mailbox.split(","):
            await client.examine(mailbox)
            uids = await client.uid_search("ALL")
            started = time.perf_counter()
            for uid_set in batches(uids, args.batch):
                async for response in client.uid_fetch(uid_set, ITEMS):
                    body = response.sections.get("")
                    if body is not None:
                        count += 1
                        size += len(body)
            elapsed += time.perf_counter() - started
    return count, size, elapsed


def run_imaplib(args: argparse.Namespace, cert_pem: str | None) -> tuple[int, int, float]:
    if args.tls:
        ctx = ssl.create_default_context(cadata=cert_pem) if cert_pem else None
        if ctx is not None:
            ctx.check_hostname = False
        conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(args.host, args.port, ssl_context=ctx)
    else:
        conn = imaplib.IMAP4(args.host, args.port)
    conn.login(args.user, args.password)
    count = size = 0
    elapsed = 0.0
    for mailbox in args.mailbox.split(","):
        conn.select(mailbox, readonly=True)
        _, data = conn.uid("SEARCH", "ALL")
        uids = [int(x) for x in data[0].split()]
        started = time.perf_counter()
        for uid_set in batches(uids, args.batch):
            typ, data = conn.uid("FETCH", uid_set, ITEMS)
            if typ != "OK":
                raise RuntimeError(f"imaplib FETCH failed: {data!r}")
            for item in data:
                if isinstance(item, tuple):
                    count += 1
                    size += len(item[1])
        elapsed += time.perf_counter() - started
    conn.logout()
    return count, size, elapsed


def private_server(count: int) -> tuple[object, str, str, int, int, str]:
    """Start a private Dovecot and fill a user's INBOX; returns (server, user, pw, ports, cert)."""
    from correspond.testing.dovecot import DovecotServer

    server = DovecotServer(allow_plaintext_auth=True).start()
    user = server.add_user("bench", "benchpass")
    maildir = server.maildir(user)
    gen = shared_dir() / "bench" / "gen_corpus.py"
    if gen.exists():
        sent = max(1, count // 10)
        subprocess.run(
            [sys.executable, str(gen), "--maildir", str(maildir), "--inbox", str(count),
             "--sent", str(sent), "--days", "59"],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "2000:2000", str(maildir.parent)], check=True)
    else:
        conn = server.imaplib_client(user)
        body = b"".join(b"line %05d of a generated body\r\n" % i for i in range(300))
        for i in range(count):
            conn.append("INBOX", None, None, b"Subject: m%d\r\n\r\n" % i + body)
        conn.logout()
    return server, user.username, user.password, server.port, server.tls_port, server.cert_pem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--tls", action="store_true", help="implicit TLS (993-style port)")
    parser.add_argument("--user", default="bench")
    parser.add_argument("--password", default="benchpass")
    parser.add_argument(
        "--mailbox", default="INBOX,Sent", help="comma-separated, as peers.sh fetch: INBOX,Sent"
    )
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cert", type=Path, help="PEM certificate of the server to trust")
    parser.add_argument("--count", type=int, default=2000, help="messages for a private server")
    args = parser.parse_args()

    server = None
    cert_pem: str | None = None
    if args.host is None:
        server, args.user, args.password, plain_port, tls_port, cert_pem = private_server(
            args.count
        )
        args.host = "127.0.0.1"
        args.port = tls_port if args.tls else plain_port
    else:
        args.port = args.port or (11993 if args.tls else 11143)
        cert_file = args.cert or (LAB_CERT if LAB_CERT.exists() else None)
        cert_pem = cert_file.read_text() if cert_file else None
    try:
        # One untimed pass first, so neither client pays for Dovecot's cold caches.
        run_imaplib(args, cert_pem)
        ours: list[tuple[int, int, float]] = []
        theirs: list[tuple[int, int, float]] = []
        for _ in range(args.rounds):
            ours.append(asyncio.run(run_ours(args, cert_pem)))
            theirs.append(run_imaplib(args, cert_pem))
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]

    def summary(runs: list[tuple[int, int, float]]) -> dict[str, float]:
        count, size = runs[0][0], runs[0][1]
        seconds = statistics.median(r[2] for r in runs)
        return {
            "messages": count,
            "bytes": size,
            "seconds": round(seconds, 3),
            "msgs_per_s": round(count / seconds, 1),
            "mb_per_s": round(size / seconds / 1e6, 2),
        }

    a, b = summary(ours), summary(theirs)
    if (a["messages"], a["bytes"]) != (b["messages"], b["bytes"]):
        raise SystemExit(f"clients disagree: ours {a} imaplib {b}")
    mode = "implicit TLS" if args.tls else "plaintext"
    ratio = a["msgs_per_s"] / b["msgs_per_s"]
    print(f"{mode}, {a['messages']} messages, {a['bytes'] / 1e6:.1f} MB, median of {args.rounds}")
    for name, s in (("correspond", a), ("imaplib", b)):
        print(f"  {name:<11} {s['msgs_per_s']:>9.1f} msgs/s {s['mb_per_s']:>8.2f} MB/s")
    print(f"  ratio correspond/imaplib: {ratio:.2f}")
    print(json.dumps({"mode": mode, "correspond": a, "imaplib": b, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
