"""The store: every query on accounts and folders, each in a short explicit transaction.

SQLAlchemy errors are translated at this boundary, once (:class:`~correspond.errors.StoreError`
through :func:`~correspond.store.engine.unit_of_work`, or :class:`~correspond.errors.ConfigError`
for a duplicate name). Callers get records from
:mod:`correspond.store.records`, never rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import ConfigError, Conflict, NotFound, StoreError
from correspond.rules.folder_refs import resolve_folder_ref
from correspond.rules.folders import FolderSpec, selected_by_default
from correspond.rules.presets import AccountChanges, AccountDraft, apply_changes
from correspond.store.engine import register_table_modules, unit_of_work
from correspond.store.lifecycle import reconnect_account
from correspond.store.notifications import after_messages_deleted
from correspond.store.records import (
    TOGGLES,
    Account,
    AccountSummary,
    Folder,
    FolderSyncResult,
    account_from_row,
    draft_of,
    folder_from_row,
)
from correspond.store.secrets import SecretBox
from correspond.store.tables import ACCOUNT_STATES, AccountRow, Base, FolderRow, utcnow
from correspond.store.visibility import (
    Access,
    Viewer,
    access_of,
    viewer_kind,
    viewer_params,
    visible_accounts,
)

__all__ = ["PASSWORD_DROPPED", "RETRIED_ON_CHANGE", "SettingsChanged", "Store"]


class SettingsChanged(ConfigError):
    """The account's connection settings changed between reading them and using its secret."""


#: The state detail of an account whose stored password was dropped by a change of how it
#: connects (the account waits in ``error``, which no worker runs, until a password is given).
PASSWORD_DROPPED = (
    "No password: the connection settings changed, so the stored password was dropped (it is "
    "only ever sent to the server it was entered for). Enter the password again."
)

#: States a change of connection settings (or of the password) puts back to ``connecting``:
#: the user has acted on what stopped or slowed the account, so it is tried again at once.
#: A paused account stays paused (the user's own choice).
RETRIED_ON_CHANGE: tuple[str, ...] = ("auth_failed", "error", "disconnected")


class Store:
    """Accounts and folders in SQLite or PostgreSQL. Thread-safe: one session per call."""

    def __init__(
        self, engine: Engine, secrets: SecretBox, *, default_window_days: int = 60
    ) -> None:
        self._engine = engine
        self._secrets = secrets
        self._default_window_days = default_window_days
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        register_table_modules()

    @property
    def secrets(self) -> SecretBox:
        """The box that seals secrets (account passwords, webhook secrets) under the key."""
        return self._secrets

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self._engine.url.render_as_string(hide_password=True)!r})"

    def transaction(self) -> AbstractContextManager[Session]:
        """One unit of work: commits on success, rolls back on any error."""
        return unit_of_work(self._sessions)

    def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers."""
        with self.transaction() as s:
            s.execute(text("SELECT 1"))

    # -- accounts --------------------------------------------------------------------------

    @staticmethod
    def _account_row(s: Session, name: str) -> AccountRow:
        row = s.scalars(select(AccountRow).where(AccountRow.name == name)).one_or_none()
        if row is None:
            raise NotFound(f"no account named {name!r}")
        return row

    def _seal(self, s: Session, secret: str, *, account_id: int | None) -> bytes:
        """``secret`` encrypted, unless the key in use opens none of the other accounts' stored
        secrets: sealing it would leave the store needing two keys (a key file replaced by
        mistake, another CORRESPOND_SECRET_KEY), so that is refused with what to restore."""
        others = s.scalars(
            select(AccountRow.secret_encrypted)
            .where(AccountRow.secret_encrypted.is_not(None), AccountRow.id != (account_id or -1))
            .limit(5)
        ).all()
        if others and not any(
            self._secrets.opens(bytes(token)) for token in others if token is not None
        ):
            raise ConfigError(
                "the secret key in use does not open the passwords stored for the other "
                "accounts; restore the key they were stored with (secret.key in the data "
                "directory, or CORRESPOND_SECRET_KEY) before entering a password"
            )
        return self._secrets.encrypt(secret)

    def add_account(
        self,
        draft: AccountDraft,
        secret: str | None,
        *,
        owner_id: int | None = None,
        paused: str | None = None,
    ) -> Account:
        """Create an account from ``draft``, owned by user ``owner_id`` (None: no user exists
        yet; the first admin created takes it); ``secret`` is encrypted before it is stored.

        With ``paused`` (its state detail), the account is created ``paused``: no worker takes
        it until it is resumed (the web app's connect lists the folders and lets the user
        choose them first, so nothing outside the choice is ever synced)."""
        unknown = set(draft.toggles) - set(TOGGLES)
        if unknown:
            raise ConfigError(f"unknown toggles: {', '.join(sorted(unknown))}")
        row = AccountRow(
            name=draft.name,
            owner_id=owner_id,
            preset=draft.preset,
            email=draft.email,
            username=draft.username,
            imap_host=draft.imap_host,
            imap_port=draft.imap_port,
            imap_security=draft.imap_security,
            smtp_host=draft.smtp_host,
            smtp_port=draft.smtp_port,
            smtp_security=draft.smtp_security,
            auth_kind=draft.auth_kind,
            allow_plaintext=draft.allow_plaintext,
            trusted_cert_pem=draft.trusted_cert_pem,
            state="connecting" if paused is None else "paused",
            state_detail="Added; not connected yet. Run a connection test."
            if paused is None
            else paused,
            folders_mode="all",
            window_days=draft.window_days or self._default_window_days,
            **draft.toggles,
        )
        try:
            with self.transaction() as s:
                if s.scalar(select(AccountRow.id).where(AccountRow.name == draft.name)):
                    raise ConfigError(f"an account named {draft.name!r} already exists")
                dormant = s.scalar(
                    select(AccountRow.name).where(
                        func.lower(AccountRow.email) == draft.email.lower(),
                        AccountRow.disconnected_at.is_not(None),
                    )
                )
                if dormant is not None:
                    # A second account would mirror the same mail again under new ids: the
                    # disconnected one finds its messages again (same ids, same links).
                    raise Conflict(
                        f"{draft.email} is the address of the disconnected account "
                        f"{dormant!r}: reconnect it (`correspond account reconnect {dormant}` "
                        f"or POST /accounts/{dormant}/reconnect) to keep its history, or "
                        "remove it first"
                    )
                if secret is not None:
                    row.secret_encrypted = self._seal(s, secret, account_id=None)
                s.add(row)
                s.flush()
                return account_from_row(row)
        except StoreError as exc:
            # A concurrent insert of the same name loses the race on the unique constraint.
            if isinstance(exc.__cause__, IntegrityError):
                raise ConfigError(f"an account named {draft.name!r} already exists") from exc
            raise

    def get_account(self, name: str) -> Account:
        """The account called ``name``; :class:`NotFound` otherwise."""
        with self.transaction() as s:
            return account_from_row(self._account_row(s, name))

    def get_account_by_id(self, account_id: int) -> Account:
        with self.transaction() as s:
            row = s.get(AccountRow, account_id)
            if row is None:
                raise NotFound(f"no account with id {account_id}")
            return account_from_row(row)

    def account_secret(self, name: str, *, for_account: Account | None = None) -> str:
        """The decrypted secret of ``name`` (only for handing to a server).

        With ``for_account`` (the settings the caller is about to connect with), the secret is
        given only while the stored connection settings are still those: a task that read the
        account before the user moved it elsewhere gets :class:`SettingsChanged`, never the
        secret entered for the new endpoint."""
        with self.transaction() as s:
            row = self._account_row(s, name)
            if for_account is not None and (
                draft_of(account_from_row(row)).connection() != draft_of(for_account).connection()
            ):
                raise SettingsChanged(
                    f"the connection settings of account {name!r} changed meanwhile; try again"
                )
            token = row.secret_encrypted
        if token is None:
            raise ConfigError(f"account {name!r} has no stored password")
        return self._secrets.decrypt(bytes(token))

    def set_account_secret(self, name: str, secret: str) -> None:
        """Replace the stored secret of ``name``."""
        with self.transaction() as s:
            row = self._account_row(s, name)
            row.secret_encrypted = self._seal(s, secret, account_id=row.id)

    def update_account(
        self, name: str, changes: AccountChanges, *, secret: str | None = None
    ) -> Account:
        """Apply ``changes`` (and a new ``secret``) to ``name`` in one transaction.

        The result is checked as a whole by :func:`~correspond.rules.presets.apply_changes`
        against the stored row, so a refused change (:class:`ConfigError`) changes nothing and
        two concurrent updates cannot combine into an account neither would have allowed. When
        connection settings or the secret are given, an account in a failed state
        (:data:`RETRIED_ON_CHANGE`) goes back to ``connecting``. Synced folders and messages are
        kept.
        """
        unknown = set(changes.toggles) - set(TOGGLES)
        if unknown:
            raise ConfigError(f"unknown toggles: {', '.join(sorted(unknown))}")
        with self.transaction() as s:
            row = self._account_row(s, name)
            if secret is not None and row.disconnected_at is not None:
                # A password alone would not sync it: a reconnect is the one way back.
                raise Conflict(
                    f"account {name!r} is disconnected: reconnect it with its password "
                    f"(`correspond account reconnect {name}` or POST /accounts/{name}/reconnect)"
                )
            before = draft_of(account_from_row(row))
            after = apply_changes(before, changes)
            row.email = after.email
            row.username = after.username
            row.imap_host = after.imap_host
            row.imap_port = after.imap_port
            row.imap_security = after.imap_security
            row.smtp_host = after.smtp_host
            row.smtp_port = after.smtp_port
            row.smtp_security = after.smtp_security
            row.allow_plaintext = after.allow_plaintext
            row.trusted_cert_pem = after.trusted_cert_pem
            if after.window_days is not None:
                if row.window_days is not None and after.window_days > row.window_days:
                    # A wider window: backfill every folder again from the top, so the next
                    # sync fetches the newly covered days (UIDs run in arrival order, not by
                    # date: an old message may sit anywhere). Stored locations are skipped,
                    # nothing is fetched twice. A narrower window keeps what is stored.
                    s.execute(
                        update(FolderRow)
                        .where(FolderRow.account_id == row.id)
                        .values(
                            backfill_done=False,
                            backfill_low_uid=None,
                            backfill_total=None,
                            backfill_done_count=0,
                        )
                    )
                row.window_days = after.window_days
            for toggle, value in after.toggles.items():
                setattr(row, toggle, value)
            if secret is not None:
                row.secret_encrypted = self._seal(s, secret, account_id=row.id)
            elif after.connection() != before.connection() and row.secret_encrypted is not None:
                # A secret is only ever sent to the endpoint it was entered for: a new host,
                # port, security, user name, plaintext permission or certificate without a new
                # password drops the stored one (else whoever may change the settings could
                # send it to a server of their choosing).
                row.secret_encrypted = None
                if row.state != "paused":
                    row.state = "error"
                row.state_detail = PASSWORD_DROPPED
                s.flush()
                return account_from_row(row)
            retry = (
                secret is not None
                or changes.touches_connection()
                or after.connection() != before.connection()
            )
            if retry and row.state in RETRIED_ON_CHANGE:
                row.state = "connecting"
                row.state_detail = "Connection settings changed; waiting for a sync worker."
            s.flush()
            return account_from_row(row)

    def reconnect_account(self, name: str, secret: str) -> Account:
        """Reconnect the disconnected ``name`` with ``secret`` (store.lifecycle)."""
        return reconnect_account(
            self._engine, name, lambda s, account_id: self._seal(s, secret, account_id=account_id)
        )

    def remove_account(self, name: str) -> None:
        """Delete ``name`` and (by cascade) everything that belongs to it."""
        with self.transaction() as s:
            s.delete(self._account_row(s, name))
            after_messages_deleted(s)

    def set_account_state(
        self,
        name: str,
        state: str,
        detail: str = "",
        *,
        connected_at: datetime | None = None,
        last_sync_at: datetime | None = None,
    ) -> Account:
        """Record a new state with its human-readable detail."""
        if state not in ACCOUNT_STATES:
            raise ConfigError(f"unknown account state {state!r}")
        with self.transaction() as s:
            row = self._account_row(s, name)
            row.state = state
            row.state_detail = detail
            if connected_at is not None:
                row.connected_at = connected_at
            if last_sync_at is not None:
                row.last_sync_at = last_sync_at
            s.flush()
            return account_from_row(row)

    def _message_counts(self, s: Session, ids: list[int] | None = None) -> dict[int, int]:
        """Messages per account (of ``ids`` only, when given). Seam: counts appear once a
        ``messages`` table is registered on :class:`Base` (by ``store/message_tables.py``)
        with an ``account_id`` column."""
        table = Base.metadata.tables.get("messages")
        if table is None or "account_id" not in table.c:
            return {}
        q = select(table.c.account_id, func.count()).group_by(table.c.account_id)
        if "state" in table.c:
            q = q.where(table.c.state != "deleted")
        if ids is not None:
            q = q.where(table.c.account_id.in_(ids))
        rows = s.execute(q).all()
        return {int(a): int(n) for a, n in rows}

    def list_accounts(self, *, viewer: Viewer | None = None) -> list[AccountSummary]:
        """Every account (only those ``viewer`` may see, through the one visibility rule,
        each with its ``access``, when given) with its folder, selected-folder and message
        counts, by name. A viewer's counts cover only the accounts they see."""
        with self.transaction() as s:
            ids: list[int] | None = None
            if viewer is None:
                rows: Sequence[tuple[AccountRow, Access | None]] = [
                    (r, None) for r in s.scalars(select(AccountRow).order_by(AccountRow.name))
                ]
            else:
                visible = visible_accounts(viewer)
                rows = [
                    (r, access_of(level, manage))
                    for r, level, manage in s.execute(
                        select(AccountRow, visible.c.access, visible.c.manage)
                        .join(visible, visible.c.account_id == AccountRow.id)
                        .order_by(AccountRow.name),
                        viewer_params(viewer),
                    ).all()
                ]
                if not rows:
                    return []
                if viewer_kind(viewer) != "admin":  # an admin's counts are everyone's
                    ids = [r.id for r, _ in rows]
            live = FolderRow.removed.is_(False)
            per_account = select(FolderRow.account_id, func.count()).group_by(FolderRow.account_id)
            if ids is not None:
                per_account = per_account.where(FolderRow.account_id.in_(ids))
            folder_counts = {int(a): int(n) for a, n in s.execute(per_account.where(live)).all()}
            selected_counts = {
                int(a): int(n)
                for a, n in s.execute(
                    per_account.where(
                        live, FolderRow.selected.is_(True), FolderRow.selectable.is_(True)
                    )
                ).all()
            }
            message_counts = self._message_counts(s, ids)
            return [
                AccountSummary(
                    account=account_from_row(r),
                    folder_count=folder_counts.get(r.id, 0),
                    selected_folder_count=selected_counts.get(r.id, 0),
                    message_count=message_counts.get(r.id, 0),
                    access=access,
                )
                for r, access in rows
            ]

    def account_summary(self, name: str) -> AccountSummary:
        """:meth:`list_accounts` for one account."""
        for summary in self.list_accounts():
            if summary.account.name == name:
                return summary
        raise NotFound(f"no account named {name!r}")

    # -- folders ---------------------------------------------------------------------------

    def sync_folders(
        self,
        account_name: str,
        specs: Sequence[FolderSpec],
        *,
        seen_at: datetime | None = None,
        renamed_from: Mapping[bytes, bytes] | None = None,
    ) -> FolderSyncResult:
        """Upsert the listed folders by raw name; mark the unlisted ones removed.

        A folder is the same folder only if its raw name is byte-identical: a new folder with
        the same display name as a vanished one is a new row, never a revival of the old one's
        checkpoint. New selectable folders are selected when the account syncs all folders,
        except Junk, Trash and Drafts (:func:`~correspond.rules.folders.selected_by_default`).
        ``renamed_from`` maps a new raw name to the raw name it was renamed from on the server:
        the new row takes the old one's selection in the same transaction, so a user's choice
        follows the rename without a moment where the folder is unselected.
        """
        renamed_from = renamed_from or {}
        seen_at = seen_at or utcnow()
        added = updated = removed = 0
        with self.transaction() as s:
            account = self._account_row(s, account_name)
            if account.disconnected_at is not None:
                # A LIST that finished just after a disconnect must not bring folders back.
                raise ConfigError(f"account {account_name!r} is disconnected")
            rows = {
                bytes(r.remote_name_raw): r
                for r in s.scalars(select(FolderRow).where(FolderRow.account_id == account.id))
            }
            listed: set[bytes] = set()
            for spec in specs:
                if spec.name_raw in listed:
                    continue
                listed.add(spec.name_raw)
                row = rows.get(spec.name_raw)
                if row is None:
                    previous = rows.get(renamed_from.get(spec.name_raw, b""))
                    row = FolderRow(
                        account_id=account.id,
                        remote_name_raw=spec.name_raw,
                        selected=spec.selectable
                        and (
                            (account.folders_mode == "all" and selected_by_default(spec.role))
                            or (previous is not None and previous.selected)
                        ),
                        backfill_done=False,
                        backfill_done_count=0,
                    )
                    s.add(row)
                    added += 1
                elif row.removed or row.flags != list(spec.flags) or row.role != spec.role:
                    updated += 1
                if row.removed and account.folders_mode == "all":
                    row.selected = spec.selectable and selected_by_default(spec.role)
                row.name = spec.name
                row.delimiter = spec.delimiter
                row.flags = list(spec.flags)
                row.role = spec.role
                row.selectable = spec.selectable
                row.removed = False
                row.last_seen_at = seen_at
                if not spec.selectable:
                    row.selected = False
            for raw, row in rows.items():
                if raw not in listed and not row.removed:
                    row.removed = True
                    row.role = None
                    removed += 1
            s.flush()
            folders = self._folders(s, account.id, include_removed=False)
        return FolderSyncResult(added=added, updated=updated, removed=removed, folders=folders)

    @staticmethod
    def _folders(s: Session, account_id: int, *, include_removed: bool) -> list[Folder]:
        q = select(FolderRow).where(FolderRow.account_id == account_id)
        if not include_removed:
            q = q.where(FolderRow.removed.is_(False))
        rows = s.scalars(q).all()
        # INBOX first, then the other roles, then by display name; id breaks ties.
        order = {"inbox": 0, "sent": 1, "drafts": 2, "archive": 3, "all": 4, "junk": 5, "trash": 6}
        return sorted(
            (folder_from_row(r) for r in rows),
            key=lambda f: (order.get(f.role or "", 9), f.name.casefold(), f.id),
        )

    def list_folders(self, account_name: str, *, include_removed: bool = False) -> list[Folder]:
        """The account's folders, INBOX and role folders first."""
        with self.transaction() as s:
            account = self._account_row(s, account_name)
            return self._folders(s, account.id, include_removed=include_removed)

    def select_folders(
        self,
        account_name: str,
        *,
        all_folders: bool = False,
        refs: Sequence[str | int] = (),
        add: bool = False,
        remove: Sequence[str | int] = (),
    ) -> list[Folder]:
        """Choose which folders sync: all selectable ones (and future ones), or exactly ``refs``;
        with ``add``, ``refs`` join the selection and ``remove`` leave it (the mode, and so
        whether new folders are selected, stays as it was).

        A ref is a folder id (int), or a display name; a string of digits that names no folder
        is taken as an id. A display name shared by two folders is refused as ambiguous (use the
        id). Folders that cannot be selected (``\\Noselect``, ``\\NonExistent``) are refused.
        """
        if all_folders and (refs or remove):
            raise ConfigError("choose either all folders or a list of folders, not both")
        if not all_folders and not refs and not (add and remove):
            raise ConfigError("no folders given: name at least one folder, or choose all")
        with self.transaction() as s:
            account = self._account_row(s, account_name)
            rows = list(
                s.scalars(
                    select(FolderRow).where(
                        FolderRow.account_id == account.id, FolderRow.removed.is_(False)
                    )
                )
            )
            if all_folders:
                account.folders_mode = "all"
                for row in rows:
                    row.selected = row.selectable
            elif add:
                chosen = {resolve_folder_ref(rows, ref).id for ref in refs}
                dropped = {resolve_folder_ref(rows, ref).id for ref in remove}
                for row in rows:
                    if row.id in chosen and not row.selectable:
                        raise ConfigError(
                            f"folder {row.name!r} (id {row.id}) cannot be selected "
                            "(\\Noselect or \\NonExistent)"
                        )
                    if row.id in chosen:
                        row.selected = True
                    elif row.id in dropped:
                        row.selected = False
            else:
                chosen = {resolve_folder_ref(rows, ref).id for ref in refs}
                for row in rows:
                    if row.id in chosen and not row.selectable:
                        raise ConfigError(
                            f"folder {row.name!r} (id {row.id}) cannot be selected "
                            "(\\Noselect or \\NonExistent)"
                        )
                account.folders_mode = "selected"
                for row in rows:
                    row.selected = row.id in chosen
            # An edit of the account: a running sync notices it by this column (one query per
            # round for all accounts of a worker, store.leases.LeasedAccount.updated_at).
            account.updated_at = utcnow()
            s.flush()
            return self._folders(s, account.id, include_removed=False)
