"""Store fixtures, loaded as a pytest plugin (``pytest_plugins = ["tests.conftest_store"]``).

``store_url`` / ``store`` are parametrized over SQLite and PostgreSQL, so every store test runs
on both (``empty_store_url`` too, for what happens where there is no store yet). PostgreSQL
comes from ``CORRESPOND_TEST_POSTGRES_URL`` or a private cluster
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
from correspond.testing.store import copy_migrated_sqlite

__all__ = ["empty_store_url", "pg_server", "store", "store_settings", "store_url"]

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


def _database_url(
    request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool
) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        if migrated:
            copy_migrated_sqlite(path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    with temporary_database(server, migrated=migrated) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL with every migration applied (what opening a store on a new one leaves):
    a new SQLite file, or a new PostgreSQL database dropped afterwards. Each is a copy of one
    migrated once per session, several times faster than migrating each."""
    yield from _database_url(request, tmp_path, migrated=True)


@pytest.fixture(params=["sqlite"])
def sqlite_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """As ``store_url``, SQLite only: for the browser journeys (``tests/test_web*.py``), whose
    pages call the same services the API tests run on both backends; a browser journey on each
    backend doubled the suite's slowest part and took it past its 20-minute budget."""
    yield from _database_url(request, tmp_path, migrated=True)


@pytest.fixture(params=BACKENDS)
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL with nothing in it yet (no store): a SQLite file not yet made, or a new
    empty PostgreSQL database dropped afterwards."""
    yield from _database_url(request, tmp_path, migrated=False)


@pytest.fixture
def store(store_settings: Settings, store_url: str) -> Iterator[Store]:
    """A migrated store on each backend."""
    opened = open_store(store_settings.clone(database_url=store_url))
    try:
        yield opened
    finally:
        opened.close()
