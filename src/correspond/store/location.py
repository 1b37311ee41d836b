"""Where the store is, in words a person can be shown (no password), without opening it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from correspond.settings import Settings

__all__ = ["StoreLocation", "store_location"]


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """``url`` is the database URL with any password removed (``raw_url``, kept out of the
    repr, is the one to connect with); ``sqlite_path`` the database file of an SQLite store
    (None for a server database or an in-memory one)."""

    backend: str
    url: str
    sqlite_path: Path | None
    raw_url: str = field(default="", repr=False)  # may hold a password: never shown

    def exists(self) -> bool | None:
        """Whether the store is there already: an SQLite store's file, or Correspond's schema
        in a server database (one short connection; None when it cannot be reached, which
        opening the store then reports)."""
        if self.backend == "sqlite":
            if self.sqlite_path is None:
                return True  # in memory: nothing to create on disk
            try:
                return self.sqlite_path.stat().st_size > 0
            except OSError:
                return False
        if not self.raw_url:
            return None
        try:
            engine = create_engine(self.raw_url, poolclass=NullPool)
        except (ArgumentError, ImportError):
            return None
        try:
            with engine.connect() as conn:
                return inspect(conn).has_table("alembic_version")
        except SQLAlchemyError:
            return None
        finally:
            engine.dispose()


def store_location(settings: Settings) -> StoreLocation:
    """Describe ``settings``' database without connecting to it."""
    raw = settings.resolved_database_url
    try:
        url = make_url(raw)
    except ArgumentError:
        return StoreLocation(backend="unknown", url="(not a database URL)", sqlite_path=None)
    # URL.set(password=None) would keep the password ("None" means "unchanged" there).
    bare = URL.create(
        url.drivername,
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    )
    shown = bare.render_as_string(hide_password=False)
    backend = url.get_backend_name()
    path: Path | None = None
    if backend == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database).absolute()
    return StoreLocation(backend=backend, url=shown, sqlite_path=path, raw_url=raw)
