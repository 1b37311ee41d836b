"""API schemas, separate from the tables. Secrets are write-only: accepted, never returned."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from correspond.accounts import describe_state
from correspond.api.progress_schemas import ProgressPublic
from correspond.errors import ConfigError
from correspond.imap.connect import normalize_fingerprint
from correspond.rules.presets import (
    ACCOUNT_NAME_PATTERN,
    AccountChanges,
    AccountDraft,
    PresetKey,
    check_certificate_pem,
    check_email,
    check_host,
    check_username,
    draft_from_preset,
    preset_help,
)
from correspond.rules.two_way import TOGGLE_DEFAULTS, TOGGLE_HELP
from correspond.store import AccountSummary, Folder, FolderSyncResult
from correspond.store.leases import observed_state
from correspond.store.records import TOGGLES
from correspond.store.visibility import Access

__all__ = [
    "AccessPublic",
    "AccountCreate",
    "AccountPublic",
    "AccountUpdate",
    "ConnectionReportPublic",
    "EndpointPublic",
    "ErrorPublic",
    "FolderPublic",
    "FolderRefreshPublic",
    "FolderSelection",
    "Health",
    "TrustCertificate",
    "account_public",
    "as_json",
    "folder_public",
    "refresh_public",
    "remote_name",
]

SecurityName = Literal["tls", "starttls", "plain"]
SharingName = Literal["private", "team", "metadata"]
_SHARING_HELP = (
    "Who else sees the account: private (its owner; admins see every account), team (the "
    "people in the owner's teams, in full) or metadata (they see participants, subject, date, "
    "folders and flags; never bodies, snippets, attachments or raw mail)"
)
_TEAM_HELP = (
    "Make it a team inbox: every member of this team sees it in full (an admin, or a member "
    "of the team, may choose it); null: a personal account again"
)


class ErrorPublic(BaseModel):
    """Every error but input validation (422, FastAPI's list of field errors) has this shape."""

    detail: str
    error: str
    transient: bool


class Health(BaseModel):
    status: Literal["ok"]
    database: str


class AccountCreate(BaseModel):
    """A new account. ``password`` is stored encrypted and never returned.

    Everything is checked here, so every mistake is a 422 naming the field: the preset fills
    what is not given, and a preset without a fixed server (``exchange``, ``other``) needs
    ``imap_host``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=ACCOUNT_NAME_PATTERN)
    preset: PresetKey = Field(default="other", description=preset_help())
    email: str = Field(min_length=3, max_length=320)
    username: str | None = None
    password: SecretStr = Field(min_length=1)
    imap_host: str | None = None
    imap_port: int | None = Field(default=None, ge=1, le=65535)
    imap_security: SecurityName | None = None
    smtp_host: str | None = None
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_security: SecurityName | None = None
    allow_plaintext: bool = False
    trusted_cert_pem: str | None = None
    window_days: int | None = Field(default=None, ge=1, le=36500)
    toggles: dict[str, bool] = Field(default_factory=dict)
    sharing: SharingName = Field(default="private", description=_SHARING_HELP)
    team_id: int | None = Field(default=None, ge=1, le=2**63 - 1, description=_TEAM_HELP)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return _checked(check_email, value)

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        return _no_nul(value)

    @field_validator("imap_host", "smtp_host")
    @classmethod
    def _host(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        return _checked(lambda v: check_host(v, info.field_name), value)

    @field_validator("trusted_cert_pem")
    @classmethod
    def _cert(cls, value: str | None) -> str | None:
        return None if value is None else _checked(check_certificate_pem, value)

    @model_validator(mode="after")
    def _complete(self) -> AccountCreate:
        # Cross-field rules (a host the preset lacks, plaintext without permission) are the
        # draft's own; running them here makes them 422s like every other input error.
        _checked(lambda _: self.to_draft(), None)
        return self

    def to_draft(self) -> AccountDraft:
        """The account to store, the preset filling what the body leaves out."""
        return draft_from_preset(
            self.preset,
            name=self.name,
            email=self.email,
            username=self.username,
            imap_host=self.imap_host,
            imap_port=self.imap_port,
            imap_security=self.imap_security,
            smtp_host=self.smtp_host,
            smtp_port=self.smtp_port,
            smtp_security=self.smtp_security,
            allow_plaintext=self.allow_plaintext,
            trusted_cert_pem=self.trusted_cert_pem,
            window_days=self.window_days,
            toggles=self.toggles,
        )


class TrustCertificate(BaseModel):
    """Pin the certificate the account's IMAP server presents now, by the SHA-256 fingerprint
    the connection test reported (``certificate_sha256``), as ``account update
    --trust-presented-cert`` does. A new trusted certificate drops the stored password unless
    ``password`` comes with it: a secret only goes where it was entered for."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: str = Field(min_length=1, max_length=200)
    password: SecretStr | None = Field(default=None, min_length=1)

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, value: str) -> str:
        return str(_checked(normalize_fingerprint, value))

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _no_nul(value)


_TOGGLES_HELP = "The two-way toggles to change, any of: " + "; ".join(
    f"{name} ({TOGGLE_HELP[name]}; default {'on' if TOGGLE_DEFAULTS[name] else 'off'})"
    for name in TOGGLES
)


class AccountUpdate(BaseModel):
    """A partial change of an account: only the fields sent change. ``password`` is stored
    encrypted and never returned; ``trusted_cert_pem: null`` forgets a trusted certificate.

    Each field is checked here (a 422 naming it); the changed account is checked as a whole
    against the stored one (plaintext without permission, ...), also a 422. A well-known port
    sent without a security brings its security (IMAP 993: tls); a security sent without a port
    moves a standard port with it. Changing how the account connects (user name, servers,
    ports, security, certificate, plaintext permission, password) puts an account stopped by a
    failure (auth_failed, error, disconnected) back to ``connecting``; synced mail is kept.
    """

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, min_length=3, max_length=320)
    username: str | None = Field(default=None, min_length=1, max_length=320)
    password: SecretStr | None = Field(default=None, min_length=1)
    imap_host: str | None = None
    imap_port: int | None = Field(default=None, ge=1, le=65535)
    imap_security: SecurityName | None = None
    smtp_host: str | None = None
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_security: SecurityName | None = None
    allow_plaintext: bool | None = None
    trusted_cert_pem: str | None = None
    window_days: int | None = Field(default=None, ge=1, le=36500)
    toggles: dict[str, bool] | None = Field(default=None, description=_TOGGLES_HELP)
    sharing: SharingName | None = Field(default=None, description=_SHARING_HELP)
    team_id: int | None = Field(default=None, ge=1, le=2**63 - 1, description=_TEAM_HELP)

    @property
    def changes_settings(self) -> bool:
        """Whether anything but who sees the account changes (sharing and team_id are no
        settings of the mailbox)."""
        return bool(self.model_fields_set - {"sharing", "team_id"})

    @field_validator(
        "email",
        "username",
        "password",
        "imap_host",
        "imap_port",
        "imap_security",
        "smtp_host",
        "smtp_port",
        "smtp_security",
        "allow_plaintext",
        "window_days",
        "toggles",
        mode="before",
    )
    @classmethod
    def _not_null(cls, value: Any, info: Any) -> Any:
        # Only the certificate can be removed; a null elsewhere is a mistake, not "keep".
        if value is None:
            raise ValueError(f"{info.field_name} cannot be null: leave it out to keep it")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return _checked(check_email, value)

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        return _checked(check_username, value)

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        return _no_nul(value)

    @field_validator("imap_host", "smtp_host")
    @classmethod
    def _host(cls, value: str, info: Any) -> str:
        return _checked(lambda v: check_host(v, info.field_name), value)

    @field_validator("trusted_cert_pem")
    @classmethod
    def _cert(cls, value: str | None) -> str | None:
        return None if value is None else _checked(check_certificate_pem, value)

    @field_validator("toggles")
    @classmethod
    def _toggles(cls, value: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(value) - set(TOGGLES))
        if unknown:
            raise ValueError(f"unknown toggles: {', '.join(unknown)} (known: {', '.join(TOGGLES)})")
        return value

    def to_changes(self) -> AccountChanges:
        """The changes to apply (the password travels separately: it is no setting)."""
        return AccountChanges(
            email=self.email,
            username=self.username,
            imap_host=self.imap_host,
            imap_port=self.imap_port,
            imap_security=self.imap_security,
            smtp_host=self.smtp_host,
            smtp_port=self.smtp_port,
            smtp_security=self.smtp_security,
            allow_plaintext=self.allow_plaintext,
            trusted_cert_pem=(
                self.trusted_cert_pem if "trusted_cert_pem" in self.model_fields_set else ...
            ),
            window_days=self.window_days,
            toggles=dict(self.toggles or {}),
        )


def _no_nul(value: SecretStr) -> SecretStr:
    """A password with a NUL cannot be sent to an IMAP server (nor stored in PostgreSQL's
    text): a 422 naming the field, never a 500 later."""
    if "\x00" in value.get_secret_value():
        raise ValueError("the password contains a NUL character")
    return value


def _checked(check: Any, value: Any) -> Any:
    """Run a shared input check; its ConfigError becomes the ValueError pydantic reports."""
    try:
        return check(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


class EndpointPublic(BaseModel):
    host: str | None
    port: int
    security: SecurityName


class AccessPublic(BaseModel):
    """The caller's access to an account: ``level`` full, or metadata (no bodies, snippets,
    attachments or raw mail); ``can_manage``: may change, delete, pause, resume or test it
    (its owner, or an admin)."""

    level: Literal["full", "metadata"]
    can_manage: bool


class AccountPublic(BaseModel):
    id: int
    name: str
    preset: str
    email: str
    username: str
    imap: EndpointPublic
    smtp: EndpointPublic
    owner_id: int | None = Field(
        description="The user who owns the account (null: added before any user existed)"
    )
    auth_kind: str
    has_password: bool
    allow_plaintext: bool
    has_trusted_cert: bool
    state: str
    state_detail: str
    state_message: str
    folders_mode: str
    window_days: int
    toggles: dict[str, bool]
    connected_at: datetime | None
    last_sync_at: datetime | None
    created_at: datetime
    updated_at: datetime
    folder_count: int
    selected_folder_count: int
    message_count: int
    #: Backfill progress per folder and in total (null where the caller did not read it).
    progress: ProgressPublic | None = None
    sharing: SharingName = Field(description=_SHARING_HELP)
    team_id: int | None = Field(description="The team of a team inbox (null: personal)")
    access: AccessPublic | None = Field(
        default=None, description="What the caller may do with it (null where not asked)"
    )
    disconnected_at: datetime | None = Field(
        default=None,
        description="When the user disconnected it (no password, folders or locations; its "
        "messages kept as history) until a reconnect; null: connected",
    )


class AccountReconnect(BaseModel):
    """Reconnect a disconnected account: its password (stored encrypted, never returned). The
    connection settings are the account's; change them first with PATCH if they moved."""

    model_config = ConfigDict(extra="forbid")

    password: SecretStr = Field(min_length=1, max_length=4096)


class LifecyclePlanPublic(BaseModel):
    """What a disconnect or a removal deletes and keeps (counts). With ``dry_run`` nothing
    happened: this is the preview to show before asking."""

    account: str
    action: Literal["disconnect", "remove"]
    dry_run: bool
    removed: dict[str, int | bool] = Field(
        description="credentials (whether a stored password goes), folders, locations, "
        "pending_actions (marked failed), and for a removal messages, threads and "
        "messages_on_timelines"
    )
    kept: dict[str, int] = Field(description="messages, threads, messages_on_timelines")
    summary: str
    result: AccountPublic | None = Field(
        default=None, description="The account after a disconnect (null for a dry run)"
    )


class FolderPublic(BaseModel):
    """``name`` is for display; ``remote_name`` shows the raw bytes (non-ASCII escaped) so two
    folders whose names decode alike stay distinguishable; ``id`` is what to select by."""

    id: int
    name: str
    remote_name: str
    delimiter: str | None
    flags: list[str]
    role: str | None
    selectable: bool
    selected: bool
    removed: bool
    uidvalidity: int | None
    uidnext: int | None
    highestmodseq: int | None
    exists_count: int | None
    backfill_done: bool
    last_seen_at: datetime | None


class FolderRefreshPublic(BaseModel):
    added: int
    updated: int
    removed: int
    folders: list[FolderPublic]


class FolderSelection(BaseModel):
    """Either ``all: true`` (every folder, including ones created later) or ``folders``."""

    model_config = ConfigDict(extra="forbid")

    all: bool = False
    folders: list[int | str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_choice(self) -> FolderSelection:
        if self.all and self.folders:
            raise ValueError("choose either all: true or a list of folders, not both")
        if not self.all and not self.folders:
            raise ValueError("name at least one folder (by id or name), or send all: true")
        return self


class ConnectionReportPublic(BaseModel):
    ok: bool
    problem: str | None
    message: str
    capabilities: list[str]
    folders: list[str] | int | None
    certificate_sha256: str | None = Field(
        default=None,
        description=(
            "SHA-256 fingerprint (AB:CD:...) of the certificate the server presented; pin it "
            "with `correspond account update NAME --trust-presented-cert FINGERPRINT`"
        ),
    )


def account_public(
    summary: AccountSummary,
    *,
    progress: ProgressPublic | None = None,
    access: Access | None = None,
) -> AccountPublic:
    a = summary.account
    access = access if access is not None else summary.access
    # A live account whose sync process died says so (store.leases.observed_state).
    state, detail = observed_state(
        a.state,
        a.state_detail,
        lease_owner=a.lease_owner,
        lease_expires_at=a.lease_expires_at,
        last_sync_at=a.last_sync_at,
    )
    return AccountPublic(
        id=a.id,
        name=a.name,
        preset=a.preset,
        email=a.email,
        username=a.username,
        imap=EndpointPublic(host=a.imap_host, port=a.imap_port, security=a.imap_security),  # type: ignore[arg-type]
        smtp=EndpointPublic(host=a.smtp_host, port=a.smtp_port, security=a.smtp_security),  # type: ignore[arg-type]
        owner_id=a.owner_id,
        auth_kind=a.auth_kind,
        has_password=a.has_secret,
        allow_plaintext=a.allow_plaintext,
        has_trusted_cert=a.trusted_cert_pem is not None,
        state=state,
        state_detail=detail,
        state_message=describe_state(state, detail),
        folders_mode=a.folders_mode,
        window_days=a.window_days,
        toggles=a.toggles,
        connected_at=a.connected_at,
        last_sync_at=a.last_sync_at,
        created_at=a.created_at,
        updated_at=a.updated_at,
        folder_count=summary.folder_count,
        selected_folder_count=summary.selected_folder_count,
        message_count=summary.message_count,
        progress=progress,
        sharing=a.sharing,  # type: ignore[arg-type]
        team_id=a.team_id,
        access=None
        if access is None
        else AccessPublic(level=access.level, can_manage=access.manage),  # type: ignore[arg-type]
        disconnected_at=a.disconnected_at,
    )


def remote_name(raw: bytes) -> str:
    """Raw mailbox name bytes as text: ASCII as is, anything else as ``\\xNN``."""
    return raw.decode("ascii", "backslashreplace")


def folder_public(f: Folder) -> FolderPublic:
    return FolderPublic(
        id=f.id,
        name=f.name,
        remote_name=remote_name(f.name_raw),
        delimiter=f.delimiter,
        flags=list(f.flags),
        role=f.role,
        selectable=f.selectable,
        selected=f.selected,
        removed=f.removed,
        uidvalidity=f.uidvalidity,
        uidnext=f.uidnext,
        highestmodseq=f.highestmodseq,
        exists_count=f.exists_count,
        backfill_done=f.backfill_done,
        last_seen_at=f.last_seen_at,
    )


def refresh_public(result: FolderSyncResult) -> FolderRefreshPublic:
    return FolderRefreshPublic(
        added=result.added,
        updated=result.updated,
        removed=result.removed,
        folders=[folder_public(f) for f in result.folders],
    )


def as_json(model: BaseModel) -> dict[str, Any]:
    """A schema as JSON-ready data (datetimes as ISO strings, fields under their public
    aliases, as the API shows them): what the CLI prints."""
    return model.model_dump(mode="json", by_alias=True)
