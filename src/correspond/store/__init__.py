"""The store: SQL, migrations and encrypted secrets. All SQL of Correspond lives in this package.

``open_store(settings)`` is the way in: it creates the engine, applies migrations and returns a
:class:`Store`.
"""

from __future__ import annotations

from correspond.settings import Settings
from correspond.store.engine import create_store_engine, migrate
from correspond.store.records import Account, AccountSummary, Folder, FolderSyncResult
from correspond.store.repository import Store
from correspond.store.secrets import SecretBox

__all__ = [
    "Account",
    "AccountSummary",
    "Folder",
    "FolderSyncResult",
    "SecretBox",
    "Store",
    "open_store",
]


def open_store(settings: Settings, *, run_migrations: bool = True) -> Store:
    """Connect to ``settings``' database, migrate it to the newest schema, return the store."""
    engine = create_store_engine(settings.resolved_database_url)
    try:
        if run_migrations:
            migrate(engine)
        secrets = SecretBox.from_settings(settings)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, secrets, default_window_days=settings.window_days)
