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
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from correspond.errors import ConfigError

__all__ = ["Settings", "ensure_data_dir", "key_file_path", "load_secret_key", "make_private"]

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
    imap_connects_per_host: int = Field(
        default=16,
        ge=1,
        le=10_000,
        description=(
            "Connection attempts (connect, TLS, login) live sync makes at once to one IMAP "
            "host; more wait their turn, so a worker starting many accounts does not storm a "
            "server with logins"
        ),
    )
    imap_command_timeout: float = Field(default=120.0, gt=0)
    imap_command_min_rate: float = Field(
        default=4096.0,
        gt=0,
        description=(
            "Overall deadline of one IMAP command: imap_command_timeout plus one second per "
            "this many bytes received (a server that trickles is cut off, a big FETCH is not)"
        ),
    )
    imap_greeting_probe_seconds: float = Field(
        default=3.0,
        gt=0,
        le=600,
        description=(
            "Silence after connecting, before probing whether the port wants implicit TLS "
            "(STARTTLS against port 993 is named at once, not after imap_connect_timeout)"
        ),
    )
    connection_test_timeout: float = Field(
        default=60.0, gt=0, description="Overall deadline of the account connection test"
    )
    max_message_bytes: int = Field(
        default=25 * 1024 * 1024,
        gt=0,
        description=(
            "Messages above this are stored with headers and text parts only; a FETCH body "
            "literal above it (whatever RFC822.SIZE said) is read and dropped, not kept"
        ),
    )
    imap_max_command_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description=(
            "Bytes one IMAP command may hold in memory: its literals, and for commands whose "
            "answers are collected, every untagged response (at least max_message_bytes + 1 MiB "
            "is used)"
        ),
    )
    imap_max_command_responses: int = Field(
        default=100_000,
        ge=1000,
        description="Untagged responses one IMAP command may buffer (LIST, SEARCH, SELECT, ...)",
    )
    imap_max_search_results: int = Field(
        default=1_000_000,
        ge=1000,
        description=(
            "UIDs one SEARCH may return across its responses (counted before a range such as "
            "1:10000000 is expanded); also bounds VANISHED and COPYUID sets"
        ),
    )
    poll_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often live sync polls folders that are not IDLEd"
    )
    send_undo_seconds: float = Field(
        default=10.0,
        ge=0,
        le=600,
        description="Undo-send: a message waits this long in the outbox before it goes, and "
        "POST /outbox/{id}/cancel takes it back meanwhile (0: send at once)",
    )
    send_max_bytes: int = Field(
        default=25 * 1024 * 1024,
        ge=1024,
        description="Largest message (after encoding) the CRM sends; the server's own SIZE is "
        "checked too, before sending",
    )
    send_receipt_wait_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        description="After an interrupted send, how long the sender waits for the server's "
        "receipt copy in the mailbox before it concludes the message was never taken and sends "
        "it again (see rules.send)",
    )
    send_probe_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="On a server not known to file its own Sent copy, how long the first send "
        "looks for one in Sent before it decides to APPEND copies itself",
    )
    malloc_arenas: int = Field(
        default=2,
        ge=0,
        le=64,
        description="glibc malloc arenas for `worker` and `serve` (M_ARENA_MAX; 0: glibc's "
        "default of 8 per core, and its own mmap and trim thresholds): fewer arenas keep less "
        "freed C heap per live account",
    )
    folder_refresh_seconds: float = Field(
        default=300.0, gt=0, description="How often live sync re-reads the server's folder list"
    )
    message_search_scan_rows: int = Field(
        default=10_000,
        ge=100,
        le=10_000_000,
        description="Messages one page of a message search (q=...) examines at most; the page "
        "holds the matches among them and a cursor to search on",
    )

    search_index_batch: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Messages the background search indexer reads and writes per transaction",
    )
    search_index_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the search indexer looks for mail stored by another process "
        "(mail this process stores wakes it at once)",
    )
    search_index_settle_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long after its insert a message id is taken as committed (the "
        "indexer re-checks younger ids it may have passed while their transaction was open)",
    )

    gone_check_max_messages: int = Field(
        default=50,
        ge=0,
        le=10_000,
        description="Messages gone from the synced folders looked for in the unsynced ones "
        "(moved or expunged?) per sync pass",
    )
    gone_check_max_folders: int = Field(
        default=20, ge=0, le=1000, description="Unsynced folders searched per sync pass"
    )
    deleted_retention_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Days a deleted message stays recoverable (`restore`) before it is "
        "purged with its blobs",
    )
    purge_batch_size: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="Deleted messages purged per pass (the worker runs a pass every "
        "`purge_interval_seconds`)",
    )
    purge_interval_seconds: float = Field(
        default=3600.0,
        ge=1,
        description="How often the worker purges messages deleted for longer than "
        "`deleted_retention_days`",
    )
    blob_orphan_grace_seconds: float = Field(
        default=600.0,
        ge=0,
        description="`doctor` leaves unreferenced blobs younger than this (a sync may be "
        "about to commit the rows that reference them)",
    )
    blob_temp_stale_seconds: float = Field(
        default=60.0,
        ge=0,
        description="`doctor` removes temporary blob files older than this (left by a crash)",
    )
    # -- the API's perimeter and sign-in (docs/ARCHITECTURE.md, "Users and authentication") --
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"],
        description="Host names the API answers to (Host header); serve --host adds its own",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) allowed to make state-changing requests "
        "besides the API's own; none by default (no CORS)",
    )
    max_request_bytes: int = Field(
        default=30 * 1024 * 1024, gt=0, description="Largest request body the API reads"
    )
    session_ttl_seconds: int = Field(
        default=14 * 24 * 3600, gt=0, le=366 * 24 * 3600, description="How long a sign-in lasts"
    )
    password_hash_time_cost: int = Field(
        default=3, ge=1, le=100, description="argon2id passes over memory per password hash"
    )
    password_hash_memory_kib: int = Field(
        default=64 * 1024, ge=64, le=4 * 1024 * 1024, description="argon2id memory per hash"
    )
    login_max_failures_per_user: int = Field(default=10, ge=1, le=10_000)
    login_max_failures_per_address: int = Field(default=30, ge=1, le=100_000)
    login_window_seconds: float = Field(
        default=900.0, gt=0, le=86_400, description="Window the failed sign-ins are counted in"
    )
    login_limiter_max_entries: int = Field(
        default=10_000, ge=1, le=10_000_000, description="Users and addresses remembered"
    )
    spare_connection_idle_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Unused since a live account holds one connection (its helper connection "
        "closes when the work that needed it ends); kept so that existing configs still load",
    )
    # -- notifications and webhooks (docs/ARCHITECTURE.md, "Notifications and webhooks") --
    notify_poll_seconds: float = Field(
        default=0.2,
        gt=0,
        le=0.25,
        description="How often the API looks for new mail and notifications on SQLite (and "
        "how soon a wake-up is acted on anywhere)",
    )
    notify_rescan_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="How often the fan-out looks again for late commits"
    )
    notify_fanout_grace_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="How long after a message id is seen the fan-out still expects lower ids "
        "to commit (longer than any ingest transaction)",
    )
    notify_heartbeat_seconds: float = Field(
        default=15.0, gt=0, le=300, description="Comment line sent on an idle event stream"
    )
    notify_max_streams_per_user: int = Field(
        default=5, ge=1, le=1000, description="Event streams one user may hold open per process"
    )
    notify_max_streams: int = Field(
        default=1000, ge=1, le=1_000_000, description="Event streams one process holds open"
    )
    notify_stream_queue: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Events waiting for one slow stream before it is dropped",
    )
    notify_send_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A stream whose client reads nothing this long is dropped",
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts webhooks may be sent to: names, *.domain for its subdomains, or IP "
        "literals; none by default (no webhook can be made)",
    )
    webhook_allow_internal: bool = Field(
        default=False,
        description="Allow webhooks to loopback, private, link-local and other internal "
        "addresses (only for a receiver on the same network)",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Connect, write and read timeout per delivery"
    )
    webhook_max_response_bytes: int = Field(
        default=64 * 1024, ge=0, le=16 * 1024 * 1024, description="Response bytes read per delivery"
    )
    webhook_retry_base_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="First retry delay; each retry triples it"
    )
    webhook_retry_max_delay_seconds: float = Field(
        default=4 * 3600.0, gt=0, le=86_400, description="Longest wait between two attempts"
    )
    webhook_retry_for_seconds: float = Field(
        default=24 * 3600.0, gt=0, le=7 * 86_400, description="How long a delivery is retried"
    )
    webhook_concurrency: int = Field(
        default=8, ge=1, le=256, description="Deliveries one process sends at a time"
    )

    # -- CRM timelines (docs/ARCHITECTURE.md, "CRM records and timelines") ------------------
    organisation_domains: list[str] = Field(
        default_factory=list,
        description="The organisation's own mail domains: mail among them only is internal",
    )
    link_internal_mail: bool = Field(
        default=False, description="Put internal-only mail on timelines too"
    )
    link_blocklist: list[str] = Field(
        default_factory=list,
        description="Addresses and domains never put on a timeline (nor counted as participants)",
    )
    auto_create_contacts: Literal["off", "sent", "all"] = Field(
        default="off",
        description="Create contacts for the external participants of sent mail (sent), or "
        "of sent and received mail (all); never for internal, blocklisted or no-reply "
        "addresses",
    )
    auto_create_contacts_per_batch: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="Contacts the linker creates at most per batch of messages it indexes "
        "(the rest in the next batches)",
    )
    linker_batch_size: int = Field(
        default=2000, ge=1, le=100_000, description="Messages the linker handles per transaction"
    )
    linker_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="How often the linker looks for work another process left (it is woken "
        "at once by ingest and record changes in its own process)",
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

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        """Resolved once, when the settings are made: a relative ``var`` (the default) or
        ``~/x`` becomes absolute here, so every part and every message names the same
        folder, and a later change of working directory cannot move the store."""
        return Path(os.path.abspath(value.expanduser()))


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
    # A directory that was there before (made by hand, or by an older version) is made private
    # too, and so is the key file in it.
    make_private(path, 0o700)
    make_private(path / _KEY_FILE, 0o600)
    return path


def make_private(path: Path | str, mode: int) -> bool:
    """Give ``path`` ``mode`` (0700 for a directory, 0600 for a file) when group or others have
    any access and it belongs to this user; True when it changed. A path that is absent, or
    someone else's (a shared directory named on purpose), is left alone."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    if st.st_mode & 0o077 == 0 or st.st_uid != os.getuid():
        return False
    try:
        os.chmod(path, mode, follow_symlinks=False)
    except (NotImplementedError, OSError):
        return False
    return True


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
