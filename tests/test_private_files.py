"""The data directory, the SQLite files (with -wal/-shm), the key and the blobs are owner-only
(0700 directories, 0600 files), even when the directory existed before with looser modes and
whatever the umask."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from correspond.cli import main
from correspond.store.blobs import BlobStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def run(data_dir: Path, *args: str) -> None:
    env = {"CORRESPOND_DATABASE_URL": None, "CORRESPOND_SECRET_KEY": None}
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], env=env)
    assert result.exit_code == 0, result.output


def test_pre_existing_loose_directory_and_db_are_made_private(
    tmp_path: Path, loose_umask: None
) -> None:
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    db = data / "correspond.db"
    # A store made by an older version: 0644 database, WAL and shared-memory files.
    keep = sqlite3.connect(db)
    keep.execute("PRAGMA journal_mode=WAL")
    keep.execute("CREATE TABLE t (x)")
    keep.execute("INSERT INTO t VALUES (1)")
    keep.commit()
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    for p in (db, wal, shm):
        os.chmod(p, 0o644)
    blobs = data / "blobs"
    (blobs / "ab").mkdir(parents=True)
    for d in (blobs, blobs / "ab"):
        os.chmod(d, 0o755)
    try:
        run(data, "account", "list")
    finally:
        keep.close()
    assert mode(data) == 0o700
    assert mode(data / "secret.key") == 0o600
    assert mode(db) == 0o600
    for p in (wal, shm):
        if p.exists():
            assert mode(p) == 0o600, p
    assert mode(blobs) == 0o700
    assert mode(blobs / "ab") == 0o700


def test_new_store_and_blobs_are_private_under_a_loose_umask(
    tmp_path: Path, loose_umask: None
) -> None:
    data = tmp_path / "fresh"
    run(data, "account", "list")
    assert mode(data) == 0o700
    db = data / "correspond.db"
    assert mode(db) == 0o600
    for suffix in ("-wal", "-shm"):
        p = Path(f"{db}{suffix}")
        if p.exists():
            assert mode(p) == 0o600, p
    store = BlobStore(data / "blobs")
    small = store.put(b"hello")
    many = store.put_many([os.urandom(100) for _ in range(70)])  # the syncfs path
    for key in (small, *many):
        path = store.path_for(key)
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
    assert mode(data / "blobs") == 0o700


def test_wal_created_by_sqlite_follows_the_private_db(tmp_path: Path, loose_umask: None) -> None:
    """The journals SQLite creates later take the database file's mode."""
    from correspond.store.engine import create_store_engine

    db = tmp_path / "x" / "store.db"
    engine = create_store_engine(f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert Path(f"{db}-wal").exists()
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert mode(p) == 0o600, p
        assert mode(db.parent) == 0o700
    finally:
        engine.dispose()
