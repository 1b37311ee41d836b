"""Where the store is, in words a person can be shown (no password), without opening it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from correspond.settings import Settings

__all__ = ["StoreLocation", "store_location"]


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """``url`` is the database URL with any password removed; ``sqlite_path`` the database file
    of an SQLite store (None for a server database or an in-memory one)."""

    backend: str
    url: str
    sqlite_path: Path | None

    def exists(self) -> bool | None:
        """Whether an SQLite store's file is there already (None: a server database, which
        only opening it can tell)."""
        if self.sqlite_path is None:
            return None if self.backend != "sqlite" else True
        try:
            return self.sqlite_path.stat().st_size > 0
        except OSError:
            return False


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
    return StoreLocation(backend=backend, url=shown, sqlite_path=path)
