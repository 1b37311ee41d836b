"""The store: SQL, migrations and encrypted secrets. All SQL of Correspond lives in this package.

``open_store(settings)`` is the way in: it creates the engine, applies migrations and returns a
:class:`Store`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from correspond.settings import Settings
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


# Loaded on first use, not on import: the sync's parse workers import correspond.store.blobs
# and correspond.store.message_data, and should not pay for SQLAlchemy, Alembic and the secret
# box (~60 MB of memory per worker).
_LAZY = {
    "Account": "correspond.store.records",
    "AccountSummary": "correspond.store.records",
    "Folder": "correspond.store.records",
    "FolderSyncResult": "correspond.store.records",
    "SecretBox": "correspond.store.secrets",
    "Store": "correspond.store.repository",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def open_store(settings: Settings, *, run_migrations: bool = True) -> Store:
    """Connect to ``settings``' database, migrate it to the newest schema, return the store."""
    from correspond.settings import key_file_path, make_private
    from correspond.store.blobs import BlobStore
    from correspond.store.engine import count_stored_secrets, create_store_engine, migrate
    from correspond.store.repository import Store
    from correspond.store.secrets import SecretBox

    # Owner-only, even where an older version or a hand-made directory left them open: the
    # data directory (the key, the SQLite file: engine creation sees to that) and the blobs.
    if settings.data_dir.is_dir():
        make_private(settings.data_dir, 0o700)
        BlobStore.from_settings(settings).make_private()
    engine = create_store_engine(settings.resolved_database_url)
    try:
        if run_migrations:
            migrate(engine)
        key_file = key_file_path(settings)
        stored = count_stored_secrets(engine) if key_file and not key_file.exists() else 0
        if key_file and stored:
            # A new key would open none of them, and secrets entered again under it would leave
            # the store needing two keys: keep working without secrets and say which file to
            # bring back.
            secrets = SecretBox.missing(
                f"the secret key file {key_file} is missing, but the store holds {stored} "
                "encrypted password(s) that only the key they were sealed with can open: "
                "restore that file or set CORRESPOND_SECRET_KEY (with PostgreSQL, point "
                "--data-dir or CORRESPOND_DATA_DIR at the folder that holds secret.key); "
                "to start over, remove those accounts and add them again"
            )
        else:
            secrets = SecretBox.from_settings(settings)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, secrets, default_window_days=settings.window_days)
