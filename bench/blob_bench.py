#!/usr/bin/env python3
"""Micro-benchmark of :meth:`BlobStore.put_many` on a realistic backfill batch.

    .venv/bin/python bench/blob_bench.py [--variant orig] [--variant new] \
        [--variant new:workers=1:level=1] [--batches 8] [--messages 200] [--repeat 3]

Builds batches in memory that mirror what the sync hands to ``put_many``: ``--messages``
RFC 5322 messages of 2-40 KB of words, 10% of them carrying a base64 attachment of 50 KB-2 MB
(log-uniform, so ~0.5 MB on average: ~90 KB a raw message, 85 KB in the profiled backfill),
half of those attachments random bytes (JPEG-like), half partly compressible (PDF-like), and
those attachments once more decoded as separate blobs. Every run stores ``--batches`` distinct
batches into a fresh temporary directory under ``--dir`` (default: the system temp directory,
the same file system as ``/tmp``) and times the ``put_many`` calls only, then stores the first
batch again (all content present: the no-op path) and times that too.

A variant is ``orig`` (the pre-change module, imported from ``--orig`` =
``/tmp/blobs_orig.py``) or ``new`` (``correspond.store.blobs``), optionally followed by
``:key=value`` options passed to the ``BlobStore`` constructor (``level`` is
``compression_level``; ``workers`` only exists in the new module). Variants run interleaved,
``--repeat`` times each, and the medians are printed with the speed-up against the first
variant (and the median of the run-by-run ratios: each run of a variant ran right beside
the same run of the first, so that figure is less sensitive to the machine's drift; an untimed
``--warmup`` run comes first, as the first runs of a process were the slowest). ``--small N``
instead stores the batches in calls of N messages (below
``SYNCFS_MIN_FILES``: the per-file fsync path of live sync).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

_WORDS_RNG = random.Random(1)
_VOCAB = [
    "".join(
        _WORDS_RNG.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_WORDS_RNG.randint(1, 10))
    )
    for _ in range(6000)
]
# Zipf-like weights: a few words are very common, as in prose.
_WEIGHTS = [1.0 / (i + 1) for i in range(len(_VOCAB))]


def _text(rng: random.Random, size: int) -> str:
    words = rng.choices(_VOCAB, weights=_WEIGHTS, k=size // 5 + 1)
    lines: list[str] = []
    line: list[str] = []
    width = 0
    for word in words:
        line.append(word)
        width += len(word) + 1
        if width > 70:
            lines.append(" ".join(line))
            line, width = [], 0
            if rng.random() < 0.1:
                lines.append("")
    lines.append(" ".join(line))
    return "\r\n".join(lines)[:size]


def _attachment(rng: random.Random) -> bytes:
    size = int(50_000 * (40 ** rng.random()))  # log-uniform 50 KB .. 2 MB
    if rng.random() < 0.5:
        return rng.randbytes(size)  # JPEG/ZIP-like: incompressible
    # PDF-like: compressed streams between chunks of plain text and structure.
    parts: list[bytes] = []
    total = 0
    while total < size:
        chunk = (
            rng.randbytes(rng.randint(2_000, 20_000))
            if rng.random() < 0.6
            else (_text(rng, rng.randint(1_000, 8_000)).encode())
        )
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)[:size]


def _message(rng: random.Random, n: int, attachment: bytes | None) -> bytes:
    body = _text(rng, rng.randint(2_000, 40_000))
    headers = (
        f"Return-Path: <sender{n}@example.org>\r\n"
        f"Received: from mx{n % 7}.example.org (mx{n % 7}.example.org [192.0.2.{n % 250}])\r\n"
        f"\tby mail.example.com with ESMTPS id {rng.getrandbits(64):016x}\r\n"
        f"\tfor <user@example.com>; Mon, 3 Mar 2025 10:{n % 60:02d}:00 +0000\r\n"
        f"From: Sender {n} <sender{n}@example.org>\r\n"
        f"To: User <user@example.com>\r\n"
        f"Subject: {_text(rng, 50).splitlines()[0]}\r\n"
        f"Date: Mon, 3 Mar 2025 10:{n % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{rng.getrandbits(96):024x}@example.org>\r\n"
        f"MIME-Version: 1.0\r\n"
    )
    if attachment is None:
        return (
            headers + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
        ).encode()
    b64 = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    boundary = f"=_{rng.getrandbits(64):016x}"
    return (
        (
            headers
            + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
            + f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + body
            + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            + 'Content-Disposition: attachment; filename="file.bin"\r\n'
            + "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + b64
        + f"\r\n--{boundary}--\r\n".encode()
    )


def make_batch(rng: random.Random, messages: int) -> list[bytes]:
    """Raw messages first, then the decoded attachments, as ``prepare_messages`` orders them."""
    raws: list[bytes] = []
    attachments: list[bytes] = []
    for n in range(messages):
        att = _attachment(rng) if rng.random() < 0.1 else None
        raws.append(_message(rng, n, att))
        if att is not None:
            attachments.append(att)
    return raws + attachments


def _load_orig(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("blobs_orig", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Variant:
    label: str
    module: ModuleType
    kwargs: dict[str, Any]
    seconds: list[float] = field(default_factory=list)
    noop_seconds: list[float] = field(default_factory=list)
    disk_bytes: list[int] = field(default_factory=list)


def _parse_variant(spec: str, orig: Path) -> Variant:
    name, *opts = spec.split(":")
    if name == "orig":
        module = _load_orig(orig)
    elif name == "new":
        import correspond.store.blobs as module
    else:
        raise SystemExit(f"unknown variant {spec!r}: orig or new[:key=value...]")
    kwargs: dict[str, Any] = {}
    for opt in opts:
        key, _, value = opt.partition("=")
        kwargs["compression_level" if key == "level" else key] = int(value)
    return Variant(spec, module, kwargs)


def _disk_usage(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run_once(variant: Variant, batches: list[list[bytes]], base: str, small: int) -> None:
    # Each run in a fresh directory; the previous ones are kept until the end, so that deleting
    # them does not compete with this run (ext4 is mounted with ``discard`` here).
    root = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    os.sync()  # nobody's dirty pages left for this run's syncfs to write
    store = variant.module.BlobStore(root / "blobs", **variant.kwargs)
    calls: list[list[bytes]] = []
    for batch in batches:
        if small:
            calls.extend(batch[i : i + small] for i in range(0, len(batch), small))
        else:
            calls.append(batch)
    start = time.perf_counter()
    for items in calls:
        store.put_many(items)
    variant.seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    store.put_many(batches[0])
    variant.noop_seconds.append(time.perf_counter() - start)
    variant.disk_bytes.append(_disk_usage(root / "blobs"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", help="orig | new[:key=value...]")
    parser.add_argument("--orig", type=Path, default=Path("/tmp/blobs_orig.py"))
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--small", type=int, default=0, help="store in calls of N blobs")
    parser.add_argument("--dir", default=None, help="parent of the temporary store")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    args = parser.parse_args(argv)
    variants = [_parse_variant(s, args.orig) for s in (args.variant or ["orig", "new"])]

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    batches = [make_batch(rng, args.messages) for _ in range(args.batches)]
    blobs = sum(len(b) for b in batches)
    total = sum(len(x) for b in batches for x in b)
    print(
        f"{args.batches} batches of {args.messages} messages: {blobs} blobs, "
        f"{total / 1e6:.1f} MB ({total / blobs / 1e3:.0f} KB a blob; built in "
        f"{time.perf_counter() - t0:.1f} s); calls of "
        f"{args.small or 'a whole batch'}; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    work = tempfile.mkdtemp(prefix="blob-bench-", dir=args.dir)
    try:
        for _ in range(args.warmup):  # the first runs of a process were the slowest: untimed
            run_once(Variant("warm-up", variants[-1].module, variants[-1].kwargs), batches, work, 0)
        for r in range(args.repeat):
            for v in variants if r % 2 == 0 else variants[::-1]:
                run_once(v, batches, work, args.small)
                print(
                    f"  run {r + 1} {v.label:<28} {v.seconds[-1]:7.3f} s "
                    f"({blobs / v.seconds[-1]:7.0f} blobs/s, "
                    f"{total / 1e6 / v.seconds[-1]:6.1f} MB/s)"
                    f"  no-op {v.noop_seconds[-1] * 1e3:6.1f} ms",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"medians of {args.repeat} runs (load {os.getloadavg()[0]:.2f}):")
    base = statistics.median(variants[0].seconds)
    for v in variants:
        med = statistics.median(v.seconds)
        # The speed-up run by run (each pair ran back to back), robust to the machine drifting.
        paired = statistics.median(
            a / b for a, b in zip(variants[0].seconds, v.seconds, strict=True)
        )
        print(
            f"  {v.label:<28} {med:7.3f} s  {blobs / med:7.0f} blobs/s  "
            f"{total / 1e6 / med:6.1f} MB/s  x{base / med:4.2f} (paired x{paired:4.2f})  "
            f"no-op {statistics.median(v.noop_seconds) * 1e3:6.1f} ms  "
            f"on disk {statistics.median(v.disk_bytes) / total:5.1%} of input"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
