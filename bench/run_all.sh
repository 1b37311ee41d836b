#!/usr/bin/env bash
# The peers and Correspond's backfill on the loaded bench lab, in one run, with ratios.
#
#   bench/run_all.sh                 mbsync, imaplib fetch, Correspond backfill (SQLite) of INBOX+Sent
#   PG_URL=postgresql://postgres@127.0.0.1:5432 bench/run_all.sh
#                                    ... plus a backfill on a freshly created PostgreSQL database
#   LATENCY=200 bench/run_all.sh     ... plus the latency mode (200 LMTP deliveries to u0005)
#
# Needs the lab started and loaded (../shared/bench/README.md). JSON lines go to $OUT
# (default /tmp/correspond-bench-results.jsonl). Load averages are printed with each figure:
# the machine is shared, so compare ratios and repeat noisy runs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${CORRESPOND_SHARED_DIR:-$(cd "$ROOT/.." && pwd)/shared}
PY=${PY:-$ROOT/.venv/bin/python}
OUT=${OUT:-/tmp/correspond-bench-results.jsonl}
load() { echo "  load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }
rate() { sed -n 's/.*msgs_per_s=\([0-9.]*\).*/\1/p' | head -1; }

echo "== mbsync (INBOX+Sent)"; load
mb=$(bash "$SHARED/bench/peers.sh" mbsync 2>/dev/null | tail -1); echo "$mb"
echo "== stdlib imaplib fetch (INBOX+Sent)"; load
fe=$(bash "$SHARED/bench/peers.sh" fetch | tail -1); echo "$fe"
# mbsync's lab config speaks plaintext IMAP (SSLType None): the like-for-like run is plaintext
# too; the STARTTLS run shows what TLS costs on top.
echo "== Correspond backfill, SQLite, plaintext (as mbsync)"; load
ours=$("$PY" "$HERE/backfill.py" backfill --folders INBOX,Sent --security plain --allow-plaintext \
  --out "$OUT" | tee /dev/stderr | grep '^correspond backfill' || true)
load
echo "== Correspond backfill, SQLite, STARTTLS"; load
tls=$("$PY" "$HERE/backfill.py" backfill --folders INBOX,Sent --out "$OUT" | tee /dev/stderr |
  grep '^correspond backfill' || true)
load
pg=""
if [ -n "${PG_URL:-}" ]; then
  db=correspond_bench_$$
  psql "$PG_URL/postgres" -qc "CREATE DATABASE $db"
  echo "== Correspond backfill, PostgreSQL ($db)"; load
  pg=$("$PY" "$HERE/backfill.py" backfill --folders INBOX,Sent --database-url "$PG_URL/$db" \
    --security plain --allow-plaintext \
    --out "$OUT" | tee /dev/stderr | grep '^correspond backfill' || true)
  psql "$PG_URL/postgres" -qc "DROP DATABASE $db"
  load
fi
if [ -n "${LATENCY:-}" ]; then
  echo "== new-mail latency ($LATENCY deliveries) beside bare IDLE"; load
  "$PY" "$HERE/backfill.py" latency --count "$LATENCY" --out "$OUT"
  load
fi

"$PY" - "$(echo "$mb" | rate)" "$(echo "$fe" | rate)" "$(echo "$ours" | rate)" \
  "$(echo "$pg" | rate)" "$(echo "$tls" | rate)" <<'PY'
import sys
mb, fe, ours, pg, tls = (float(x) if x else None for x in sys.argv[1:6])
def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"
print("== ratios (Correspond msgs/s / peer msgs/s)")
print(f"  SQLite backfill, plaintext / mbsync (plaintext): {ratio(ours, mb)}   (bar: >= 1.0x)")
print(f"  SQLite backfill, STARTTLS / mbsync (plaintext): {ratio(tls, mb)}")
print(f"  SQLite backfill / imaplib fetch: {ratio(ours, fe)}")
if pg:
    print(f"  PostgreSQL backfill / mbsync: {ratio(pg, mb)}")
PY
