"""Store fixtures, loaded as a pytest plugin (``pytest_plugins = ["tests.conftest_store"]``).

``store_url`` / ``store`` are parametrized over SQLite and PostgreSQL, so every store test runs
on both. PostgreSQL comes from ``CORRESPOND_TEST_POSTGRES_URL`` or a private cluster
(:mod:`correspond.testing.postgres`); if neither can be had the tests fail, never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from correspond.settings import Settings
from correspond.store import Store, open_store
from correspond.testing.postgres import PostgresServer, postgres_server, temporary_database

__all__ = ["pg_server", "store", "store_settings", "store_url"]

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (given by env, or a private cluster)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def store_settings(tmp_path: Path) -> Settings:
    """Settings on a private data dir with an explicit key (SQLite by default)."""
    return Settings(data_dir=tmp_path / "data", secret_key=Fernet.generate_key().decode("ascii"))


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL: a fresh SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    with temporary_database(server) as url:
        yield url


@pytest.fixture
def store(store_settings: Settings, store_url: str) -> Iterator[Store]:
    """A migrated store on each backend."""
    opened = open_store(store_settings.clone(database_url=store_url))
    try:
        yield opened
    finally:
        opened.close()
