"""The private-cluster path of correspond.testing.postgres.

CI and the development machines name a server in ``CORRESPOND_TEST_POSTGRES_URL``, so the rest of
the suite never runs ``initdb``. This test does, on purpose: a machine without a PostgreSQL server
must still get one (from Debian's ``postgresql`` package, which the test command installs), on
loopback, under a temporary folder, gone afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from correspond.testing.postgres import ENV_URL, postgres_server, temporary_database
from correspond.testing.store import migrated_engine


def test_private_cluster_is_started_migrated_and_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    with postgres_server() as server:
        url = make_url(server.admin_url)
        assert url.host == "127.0.0.1"
        assert url.port is not None and url.port > 1024
        assert url.port != 5432  # never the machine's own server
        with (
            temporary_database(server) as db_url,
            migrated_engine(db_url) as engine,
            engine.connect() as conn,
        ):
            assert conn.execute(text("SELECT count(*) FROM accounts")).scalar_one() == 0
            data_dir = conn.execute(text("SHOW data_directory")).scalar_one()
        assert Path(data_dir).exists()
    assert not Path(data_dir).exists()
