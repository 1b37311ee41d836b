"""Domain records the store hands out: plain frozen data, detached from any session.

Row classes (``AccountRow``, ``FolderRow``) stay inside ``store/``; everything above it sees
these. No record carries a secret.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from correspond.rules.presets import AccountDraft, AuthKind, Security
from correspond.store.tables import AccountRow, FolderRow
from correspond.store.visibility import Access

__all__ = [
    "TOGGLES",
    "Account",
    "AccountSummary",
    "Folder",
    "FolderSyncResult",
    "account_from_row",
    "draft_of",
    "folder_from_row",
]

# The four two-way toggles (column names on ``accounts``).
TOGGLES: tuple[str, ...] = (
    "delete_in_crm_on_remote_delete",
    "delete_remote_on_crm_delete",
    "archive_in_crm_on_remote_archive",
    "archive_remote_on_crm_archive",
)


@dataclass(frozen=True, slots=True)
class Account:
    """A synced mailbox's configuration and state (``has_secret`` instead of the secret)."""

    id: int
    name: str
    preset: str
    email: str
    username: str
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str | None
    smtp_port: int
    smtp_security: str
    auth_kind: str
    has_secret: bool
    allow_plaintext: bool
    trusted_cert_pem: str | None
    state: str
    state_detail: str
    folders_mode: str
    window_days: int
    delete_in_crm_on_remote_delete: bool
    delete_remote_on_crm_delete: bool
    archive_in_crm_on_remote_archive: bool
    archive_remote_on_crm_archive: bool
    connected_at: datetime | None
    last_sync_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    owner_id: int | None = None  # the user who owns it (None: no user existed when added)
    sharing: str = "private"  # private | team | metadata: see store.visibility
    team_id: int | None = None  # a team inbox: the team whose members all see it
    # When the user disconnected it (credentials, folders, locations removed); None: connected.
    disconnected_at: datetime | None = None

    @property
    def toggles(self) -> dict[str, bool]:
        """The four two-way toggles by name."""
        return {name: bool(getattr(self, name)) for name in TOGGLES}


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """An account with the counts ``account list`` shows."""

    account: Account
    folder_count: int
    selected_folder_count: int
    message_count: int
    # The viewer's access when listed for one (Store.list_accounts(viewer=...)), else None.
    access: Access | None = None


@dataclass(frozen=True, slots=True)
class Folder:
    """A remote folder. ``name_raw`` (bytes) is its identity; ``name`` is for display."""

    id: int
    account_id: int
    name_raw: bytes
    name: str
    delimiter: str | None
    flags: tuple[str, ...]
    role: str | None
    selectable: bool
    selected: bool
    removed: bool
    uidvalidity: int | None
    uidnext: int | None
    highestmodseq: int | None
    exists_count: int | None
    backfill_done: bool
    backfill_low_uid: int | None
    backfill_total: int | None
    backfill_done_count: int
    last_seen_at: datetime | None


@dataclass(frozen=True, slots=True)
class FolderSyncResult:
    """What :meth:`Store.sync_folders` changed."""

    added: int
    updated: int
    removed: int
    folders: list[Folder]


def account_from_row(row: AccountRow) -> Account:
    """Detach an account row into a record (the secret stays behind)."""
    return Account(
        id=row.id,
        name=row.name,
        preset=row.preset,
        email=row.email,
        username=row.username,
        imap_host=row.imap_host,
        imap_port=row.imap_port,
        imap_security=row.imap_security,
        smtp_host=row.smtp_host,
        smtp_port=row.smtp_port,
        smtp_security=row.smtp_security,
        auth_kind=row.auth_kind,
        has_secret=row.secret_encrypted is not None,
        allow_plaintext=row.allow_plaintext,
        trusted_cert_pem=row.trusted_cert_pem,
        state=row.state,
        state_detail=row.state_detail,
        folders_mode=row.folders_mode,
        window_days=row.window_days,
        delete_in_crm_on_remote_delete=row.delete_in_crm_on_remote_delete,
        delete_remote_on_crm_delete=row.delete_remote_on_crm_delete,
        archive_in_crm_on_remote_archive=row.archive_in_crm_on_remote_archive,
        archive_remote_on_crm_archive=row.archive_remote_on_crm_archive,
        connected_at=row.connected_at,
        last_sync_at=row.last_sync_at,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        owner_id=row.owner_id,
        sharing=row.sharing,
        team_id=row.team_id,
        disconnected_at=row.disconnected_at,
    )


def draft_of(account: Account) -> AccountDraft:
    """An account's settings as a draft, so an update runs the same checks as an add."""
    return AccountDraft(
        name=account.name,
        preset=account.preset,
        email=account.email,
        username=account.username,
        imap_host=account.imap_host,
        imap_port=account.imap_port,
        imap_security=cast(Security, account.imap_security),
        smtp_host=account.smtp_host,
        smtp_port=account.smtp_port,
        smtp_security=cast(Security, account.smtp_security),
        auth_kind=cast(AuthKind, account.auth_kind),
        allow_plaintext=account.allow_plaintext,
        trusted_cert_pem=account.trusted_cert_pem,
        window_days=account.window_days,
        toggles=account.toggles,
    )


#: Folder names as the server sent them, one object per distinct name for the whole process.
_SHARED_NAMES: dict[bytes, bytes] = {}
_SHARED_NAMES_MAX = 4096


def _shared_name(raw: bytes) -> bytes:
    """``raw``, or the equal bytes object already held: a worker keeps every live account's
    folder records, and a thousand accounts have the same few names (INBOX, Sent, ...)."""
    found = _SHARED_NAMES.get(raw)
    if found is not None:
        return found
    if len(_SHARED_NAMES) < _SHARED_NAMES_MAX and len(raw) <= 256:
        _SHARED_NAMES[raw] = raw
    return raw


def _shared_text(value: str | None) -> str | None:
    return None if value is None else sys.intern(value)


def folder_from_row(row: FolderRow) -> Folder:
    """Detach a folder row into a record. Its names, flags and role are shared with every
    other record that has the same (``sys.intern``): at 1,000 live accounts in one worker
    that was ~1.5 KB per account of copies of "INBOX", "\\HasNoChildren" and the like."""
    return Folder(
        id=row.id,
        account_id=row.account_id,
        name_raw=_shared_name(bytes(row.remote_name_raw)),
        name=sys.intern(row.name),
        delimiter=_shared_text(row.delimiter),
        flags=tuple(sys.intern(f) for f in row.flags or ()),
        role=_shared_text(row.role),
        selectable=row.selectable,
        selected=row.selected,
        removed=row.removed,
        uidvalidity=row.uidvalidity,
        uidnext=row.uidnext,
        highestmodseq=row.highestmodseq,
        exists_count=row.exists_count,
        backfill_done=row.backfill_done,
        backfill_low_uid=row.backfill_low_uid,
        backfill_total=row.backfill_total,
        backfill_done_count=row.backfill_done_count,
        last_seen_at=row.last_seen_at,
    )
