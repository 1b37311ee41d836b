"""Immutable settings, read once from the environment and passed in.

Nothing in Correspond reads the environment after start-up: code receives a :class:`Settings`
and tests make variants with :meth:`Settings.clone`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from correspond.errors import ConfigError

__all__ = ["Settings", "ensure_data_dir", "key_file_path", "load_secret_key"]

_KEY_FILE = "secret.key"


class Settings(BaseSettings):
    """Every knob of Correspond. Environment variables are ``CORRESPOND_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CORRESPOND_", frozen=True, extra="ignore")

    data_dir: Path = Field(
        default=Path("var"), description="Where the SQLite store, blobs and key live"
    )
    # repr=False: a PostgreSQL URL may carry a password, and the key unlocks every account
    # secret; neither may reach a log line through repr(settings).
    database_url: str | None = Field(
        default=None,
        repr=False,
        description="SQLAlchemy URL; default SQLite at <data_dir>/correspond.db",
    )
    secret_key: str | None = Field(
        default=None,
        repr=False,
        description="Key for account secrets; default generated into <data_dir>/secret.key",
    )
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8025, ge=1, le=65535)
    window_days: int = Field(default=60, ge=1, le=36500)
    imap_connect_timeout: float = Field(default=20.0, gt=0)
    imap_command_timeout: float = Field(default=120.0, gt=0)
    max_message_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    poll_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often live sync polls folders that are not IDLEd"
    )
    folder_refresh_seconds: float = Field(
        default=300.0, gt=0, description="How often live sync re-reads the server's folder list"
    )
    spare_connection_idle_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How long live sync keeps an extra connection for new mail after the last "
        "change (opened when the command connection is busy)",
    )

    def clone(self, **changes: Any) -> Settings:
        """A validated copy with some fields changed (settings themselves never change; the
        environment is not read again)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'correspond.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"


def ensure_data_dir(settings: Settings) -> Path:
    """Create the data directory when absent, readable by its owner only (it holds the key and
    the encrypted secrets); :class:`ConfigError` naming it when that is impossible."""
    path = settings.data_dir
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"data directory {path} is a file, not a directory") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot create data directory {path}: {reason}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"data directory {path} is not writable")
    return path


def _check_key(key: bytes, source: str) -> bytes:
    """``key`` if it is a Fernet key (32 bytes, url-safe base64); else a ConfigError naming where
    it came from, so the user knows which one to fix."""
    try:
        raw = base64.urlsafe_b64decode(key)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(
            f"the secret key from {source} is not a valid key (32 url-safe base64-encoded bytes); "
            "restore the right one, or the stored passwords cannot be decrypted"
        )
    return key


def key_file_path(settings: Settings) -> Path | None:
    """Where the secret key file is, or None when the key comes from the settings."""
    return None if settings.secret_key else settings.data_dir / _KEY_FILE


def load_secret_key(settings: Settings) -> bytes:
    """The Fernet key for account secrets: from settings, else ``<data_dir>/secret.key``.

    The file is created on first use with mode 0600. It appears whole or not at all (written
    to a private temporary file, then hard-linked into place), so two processes starting at
    once agree on one key: the loser of the link reads the winner's.
    """
    if settings.secret_key:
        key = settings.secret_key.strip().encode("ascii", "replace")
        return _check_key(key, "CORRESPOND_SECRET_KEY")
    path = settings.data_dir / _KEY_FILE
    if not path.exists():
        ensure_data_dir(settings)
        _create_key_file(path)
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _check_key(data, str(path))


def _create_key_file(path: Path) -> None:
    key = base64.urlsafe_b64encode(secrets.token_bytes(32))
    tmp = path.with_name(f".{_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: its key is the key
        except OSError:
            # A file system without hard links: create the file exclusively instead.
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(key + b"\n")
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
