#!/usr/bin/env python3
"""MIME parse rate of correspond.mail.parse against the stdlib, on one core, same files.

    ingest_parse_bench.py DIR [--limit N] [--lf] [--no-content] [--stdlib default|compat32|none]

DIR is a Maildir (its cur/ and new/ are read), a folder of .eml files, or any tree of message
files (read recursively). Files are read before timing and given CRLF line ends, as IMAP serves
them (``--lf`` keeps them as stored). Only parse time is counted. Prints one JSON line per parser
and the ratio correspond / stdlib; the machine is shared and noisy, so compare ratios.

The stdlib side does what parse_message does: parse with ``email.message_from_bytes``
(policy.default unless told otherwise), take the plain and HTML bodies via ``get_body`` and the
headers ingest needs.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from correspond.mail.parse import parse_message

__all__ = ["load_messages", "main"]


def load_messages(root: Path, limit: int, lf: bool) -> list[bytes]:
    """Raw bytes of every message file under root (sorted by path), at most ``limit``."""
    paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("dovecot"))
    paths = [p for p in paths if p.suffix.lower() not in (".md", ".json", ".txt", ".html")]
    if limit:
        paths = paths[:limit]
    out = []
    for p in paths:
        data = p.read_bytes()
        if not lf:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        out.append(data)
    return out


def _stdlib(policy: email.policy.Policy) -> Callable[[bytes], int]:
    def run(raw: bytes) -> int:
        msg = email.message_from_bytes(raw, policy=policy)
        out = 0
        if isinstance(msg, email.message.EmailMessage):
            for pref in (("plain",), ("html",)):
                body = msg.get_body(preferencelist=pref)
                if body is not None:
                    out += len(body.get_content())
        else:
            for part in msg.walk():
                if part.get_content_maintype() == "text":
                    payload = part.get_payload(decode=True)
                    if isinstance(payload, bytes):
                        charset = part.get_content_charset() or "utf-8"
                        out += len(payload.decode(charset, "replace"))
        for h in ("Subject", "From", "To", "Cc", "Message-ID", "In-Reply-To", "References", "Date"):
            _ = msg[h]
        return out

    return run


def _ours(keep: bool) -> Callable[[bytes], int]:
    def run(raw: bytes) -> int:
        m = parse_message(raw, keep_attachment_content=keep)
        return len(m.text or "") + len(m.html or "")

    return run


def _measure(name: str, fn: Callable[[bytes], int], msgs: list[bytes]) -> dict[str, Any]:
    total = sum(len(m) for m in msgs)
    t0 = time.process_time()
    chars = 0
    for raw in msgs:
        chars += fn(raw)
    dt = time.process_time() - t0
    return {
        "parser": name,
        "messages": len(msgs),
        "MB": round(total / 1e6, 1),
        "cpu_s": round(dt, 3),
        "msg_per_s": round(len(msgs) / dt, 1) if dt else None,
        "MB_per_s": round(total / dt / 1e6, 1) if dt else None,
        "text_chars": chars,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--lf", action="store_true", help="keep line ends as stored")
    ap.add_argument("--no-content", action="store_true", help="keep_attachment_content=False")
    ap.add_argument("--stdlib", default="default", choices=["default", "compat32", "none"])
    a = ap.parse_args(argv)
    if not a.dir.is_dir():
        print(f"not a directory: {a.dir}", file=sys.stderr)
        return 2
    msgs = load_messages(a.dir, a.limit, a.lf)
    if not msgs:
        print("no message files found", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")
    ours = _measure("correspond", _ours(not a.no_content), msgs)
    print(json.dumps(ours))
    if a.stdlib != "none":
        policy = email.policy.default if a.stdlib == "default" else email.policy.compat32
        theirs = _measure(f"stdlib-{a.stdlib}", _stdlib(policy), msgs)
        print(json.dumps(theirs))
        ratio = float(theirs["cpu_s"]) / float(ours["cpu_s"]) if ours["cpu_s"] else float("inf")
        print(json.dumps({"ratio_correspond_over_stdlib_msg_per_s": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
