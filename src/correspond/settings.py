"""Immutable settings, read once from the environment and passed in.

Nothing in Correspond reads the environment after start-up: code receives a :class:`Settings`
and tests make variants with :meth:`Settings.clone`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "load_secret_key"]


class Settings(BaseSettings):
    """Every knob of Correspond. Environment variables are ``CORRESPOND_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CORRESPOND_", frozen=True, extra="ignore")

    data_dir: Path = Field(
        default=Path("var"), description="Where the SQLite store, blobs and key live"
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite at <data_dir>/correspond.db"
    )
    secret_key: str | None = Field(
        default=None,
        description="Key for account secrets; default generated into <data_dir>/secret.key",
    )
    host: str = "127.0.0.1"
    port: int = 8025
    window_days: int = 60
    imap_connect_timeout: float = 20.0
    imap_command_timeout: float = 120.0
    max_message_bytes: int = 25 * 1024 * 1024
    poll_interval_seconds: float = Field(
        default=60.0, description="How often live sync polls folders that are not IDLEd"
    )
    folder_refresh_seconds: float = Field(
        default=300.0, description="How often live sync re-reads the server's folder list"
    )

    def clone(self, **changes: Any) -> Settings:
        """A copy with some fields changed (settings themselves never change)."""
        return self.model_copy(update=changes)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'correspond.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"


def load_secret_key(settings: Settings) -> bytes:
    """The Fernet key for account secrets: from settings, else ``<data_dir>/secret.key``.

    The file is created on first use with mode 0600.
    """
    if settings.secret_key:
        return settings.secret_key.encode("ascii")
    path = settings.data_dir / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    import base64

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = base64.urlsafe_b64encode(secrets.token_bytes(32))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    return key
