#!/usr/bin/env python3
"""Correspond's own backfill and new-mail latency, against a real IMAP server.

    bench/backfill.py backfill [--folders INBOX,Sent] [--database-url URL] [--workers N] ...
    bench/backfill.py latency  [--user u0005] [--count 200] [--gap-ms 300] ...

``backfill``: a fresh store (a temporary data directory; SQLite unless ``--database-url``) gets
one fresh account for ``--user``, and the real engine (:class:`AccountSyncer.sync_once`) backfills
the chosen folders (all selectable ones by default) over the ``--window-days`` window. Printed:
messages stored, folder locations, msgs/s, MB/s of bytes fetched, peak RSS of this process and
of its children (a ``--workers`` process pool), wall time and the engine's own per-stage
seconds (fetch, parse, blobs, store: they overlap, the pipeline runs them concurrently). Then
every folder is counted on the server with ``UID SEARCH SINCE`` (stdlib imaplib, the same
window date the engine uses) and compared with the store: ``OK`` or ``MISMATCH``.

``latency``: a fresh store and account for ``--user`` (use a user other than the bench one, so
the loaded mailbox stays exact) run live (:meth:`AccountSyncer.run_account`: backfill, then IDLE
on INBOX) in a background thread. ``--count`` messages are delivered one at a time by LMTP; the
time from just before the LMTP send to the row being visible in the store (polled every
``--poll-ms`` by Message-ID on a separate database connection) is recorded. As in
../shared/bench/idle_latency.py, the next delivery waits for the previous one to be seen plus a
random pause (uniform 0..2x ``--gap-ms``, same seed). Then idle_latency.py runs on the same kind
of deliveries to the same user (the bare-IDLE floor) and the excess p50/p99 is printed. Messages
delivered here are expunged again at the end.

Both print human lines and one JSON line per result (``--out FILE`` appends the JSON lines).
This is a command, not a test: it needs a running server (see ../shared/bench/README.md).
"""

# Only the command line lives here: this file is the __main__ module, and a ``spawn`` process
# pool re-imports __main__ in every worker. Keeping it free of imports keeps the parse workers
# as small as the product's (correspond's own entry point does the same).
if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _backfill import main

    sys.exit(main())
