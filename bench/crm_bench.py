"""CRM linker and timeline at scale: N synthetic messages, then the linker's times.

    .venv/bin/python bench/crm_bench.py --count 100000                          # SQLite
    .venv/bin/python bench/crm_bench.py --count 100000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/a_fresh_db

Measures, in one run: indexing every message (participants + links, the background pass a
store gets after the upgrade), re-linking after a contact is added whose address is on every
message (``owner@example.test``: N messages), re-linking after a contact with ~N/100
messages (a company domain), and a contact timeline's first page (p50/p99 over 200 reads,
through ``CrmStore.timeline`` as an admin and as a member who owns the account).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import text

from correspond.auth import AuthService
from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.crm import CrmStore
from correspond.store.linker import LinkerStore, LinkPolicy
from correspond.store.users import UserStore
from correspond.testing.synthetic import fill_messages, make_account_with_folders


def _timed(fn: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()  # type: ignore[operator]
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--database-url")
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    try:
        settings = Settings(
            data_dir=tmp,
            secret_key=Fernet.generate_key().decode(),
            database_url=args.database_url,
        )
        store = open_store(settings)
        account_id, folders = make_account_with_folders(store.engine, "crm-bench")
        fill_messages(store.engine, account_id, folders, args.count)
        if store.dialect == "postgresql":
            with store.engine.begin() as conn:
                conn.execute(text("ANALYZE"))
        crm = CrmStore(store.engine)
        linker = LinkerStore(store.engine, LinkPolicy(), batch=args.batch)
        out: dict[str, object] = {"count": args.count, "backend": store.dialect}
        out["index_s"], _ = _timed(linker.run_until_idle)
        if store.dialect == "postgresql":
            with store.engine.begin() as conn:
                conn.execute(text("ANALYZE"))
        contact = crm.create_contact(name="Owner", emails=["owner@example.test"])
        out["relink_all_s"], counts = _timed(linker.run_until_idle)
        out["relink_all_counts"] = counts
        company = crm.create_company(name="Client 7", domains=["client7.example"])
        out["relink_domain_s"], counts = _timed(linker.run_until_idle)
        out["relink_domain_counts"] = counts
        assert company
        auth = AuthService(store, settings)
        admin, _ = auth.create_user("admin@example.test", None, admin=True)
        member, _ = auth.create_user("member@example.test", None)
        UserStore(store.engine).set_account_owner("crm-bench", member.id)
        for who, viewer in (("admin", admin), ("member", member)):
            times = []
            for _ in range(200):
                t, _page = _timed(lambda v=viewer: crm.timeline("contact", contact.id, v, limit=50))
                times.append(t * 1000)
            times.sort()
            out[f"timeline_{who}_ms_p50"] = round(statistics.median(times), 2)
            out[f"timeline_{who}_ms_p99"] = round(times[int(len(times) * 0.99) - 1], 2)
        out["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
        print(json.dumps(out, default=str))
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
