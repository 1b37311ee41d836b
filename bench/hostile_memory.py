#!/usr/bin/env python3
"""Peak RSS of the IMAP client against a hostile server, default limits (issue 7, section 2).

    bench/hostile_memory.py literal    # 1 GB body literal after RFC822.SIZE 100
    bench/hostile_memory.py esearch    # * ESEARCH ... UID ALL 1:10000000
    bench/hostile_memory.py list       # ten million untagged LIST lines

The server runs in a forked child (blocking sockets), so the peak RSS printed is the client's
own: ``ru_maxrss`` after the command, and its growth over the value after imports. Each case
ends in a second or a few; the client must end with the body dropped or an error naming the
limit, never with the machine's memory.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys
import time

from correspond.imap.client import ImapClient, ImapEndpoint

CASES = ("literal", "esearch", "list")


def serve(case: str, port_pipe: int) -> None:
    """A blocking hostile server for one connection."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    os.write(port_pipe, str(listener.getsockname()[1]).encode())
    os.close(port_pipe)
    conn, _ = listener.accept()
    lines = conn.makefile("rb")
    conn.sendall(b"* OK [CAPABILITY IMAP4rev1 ESEARCH] hostile\r\n")
    try:
        while line := lines.readline():
            tag = line.split(b" ")[0]
            if b"SELECT" in line:
                conn.sendall(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 1] x\r\n" + tag + b" OK in\r\n")
            elif case == "literal" and b"FETCH" in line:
                size = 1 << 30
                conn.sendall(b"* 1 FETCH (UID 1 RFC822.SIZE 100 BODY[] {%d}\r\n" % size)
                block = b"x" * (1 << 20)
                for _ in range(size >> 20):
                    conn.sendall(block)
                conn.sendall(b")\r\n" + tag + b" OK done\r\n")
            elif case == "esearch" and b"SEARCH" in line:
                conn.sendall(
                    b'* ESEARCH (TAG "' + tag + b'") UID ALL 1:10000000\r\n' + tag + b" OK done\r\n"
                )
            elif case == "list" and b"LIST" in line:
                chunk = b"".join(b'* LIST () "/" "folder%07d"\r\n' % i for i in range(10_000))
                for _ in range(1000):
                    conn.sendall(chunk)
                conn.sendall(tag + b" OK done\r\n")
            else:
                conn.sendall(tag + b" OK done\r\n")
    except OSError:
        pass


async def client(case: str, port: int) -> None:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    endpoint = ImapEndpoint("127.0.0.1", port, "plain", allow_plaintext=True)
    imap = await ImapClient.connect(endpoint, command_timeout=60)
    await imap.select("INBOX")
    started = time.perf_counter()
    outcome: object
    try:
        if case == "literal":
            fetched = await imap.uid_fetch_list("1", "(UID RFC822.SIZE BODY.PEEK[])")
            outcome = f"body dropped: {fetched[0].dropped}"
        elif case == "esearch":
            outcome = f"{len(await imap.uid_search('ALL'))} UIDs"
        else:
            outcome = f"{len(await imap.list_folders())} folders"
    except Exception as exc:  # the point is to show which error ends it
        outcome = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{case}: {outcome}")
    print(f"  peak RSS {peak / 1024:.0f} MB, growth {(peak - base) / 1024:.0f} MB, {seconds:.1f} s")
    await imap.aclose()


def main() -> None:
    case = sys.argv[1] if len(sys.argv) > 1 else ""
    if case not in CASES:
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(CASES)}}}")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        serve(case, write_end)
        os._exit(0)
    os.close(write_end)
    port = int(os.read(read_end, 16))
    os.close(read_end)
    try:
        asyncio.run(client(case, port))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
