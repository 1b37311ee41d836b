"""The private-cluster path of correspond.testing.postgres, and the migrated copies tests use.

CI and the development machines name a server in ``CORRESPOND_TEST_POSTGRES_URL``, so the rest of
the suite never runs ``initdb``. This test does, on purpose: a machine without a PostgreSQL server
must still get one (from Debian's ``postgresql`` package, which the test command installs), on
loopback, under a temporary folder, gone afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url

from correspond.store.engine import create_store_engine, migrate
from correspond.testing.postgres import ENV_URL, postgres_server, temporary_database
from correspond.testing.store import copy_migrated_sqlite, migrated_engine


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


def _schema(engine: Engine) -> tuple[str, dict[str, list[str]], list[str]]:
    """The Alembic revision, every table's columns, and every index's name."""
    found = inspect(engine)
    tables = {t: sorted(c["name"] for c in found.get_columns(t)) for t in found.get_table_names()}
    indexes = sorted(i["name"] or "" for t in tables for i in found.get_indexes(t))
    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    return revision, tables, indexes


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_migrated_copy_is_what_migrating_makes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``store_url`` and ``migrated_engine`` start from a copy of one store migrated per
    process: it must be the schema a fresh migration makes, at the same revision."""
    if backend == "postgresql":
        server = request.getfixturevalue("pg_server")
        with temporary_database(server) as url, migrated_engine(url) as engine:
            fresh = _schema(engine)
        with temporary_database(server, migrated=True) as url:
            engine = create_store_engine(url)
            try:
                copied = _schema(engine)
            finally:
                engine.dispose()
    else:
        engine = create_store_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        try:
            migrate(engine)
            fresh = _schema(engine)
        finally:
            engine.dispose()
        copy = tmp_path / "copy" / "store.db"
        copy_migrated_sqlite(copy)
        assert copy.stat().st_mode & 0o777 == 0o600
        with pytest.raises(FileExistsError):
            copy_migrated_sqlite(copy)  # never over an existing store
        engine = create_store_engine(f"sqlite:///{copy}")
        try:
            copied = _schema(engine)
        finally:
            engine.dispose()
    assert copied == fresh
    assert "accounts" in fresh[1]
