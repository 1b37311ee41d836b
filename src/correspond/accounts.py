"""Accounts, engine side: add, update, list, test, refresh folders, choose folders.

The CLI and the API call this; it calls the IMAP client, the pure folder rules and the store.
IMAP work is async; store work is short and synchronous (run in a worker thread from async code
so the event loop never waits on the database).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from correspond.errors import AuthenticationFailed, ConfigError, NotFound
from correspond.imap.client import ImapClient, ImapEndpoint, ImapLimits
from correspond.imap.connect import (
    certificate_fingerprint,
    fetch_presented_certificate,
    normalize_fingerprint,
)
from correspond.rules.folder_refs import resolve_folder_ref
from correspond.rules.folders import assign_roles
from correspond.rules.presets import AccountChanges, AccountDraft, apply_changes
from correspond.settings import Settings
from correspond.store import Account, AccountSummary, Folder, FolderSyncResult, Store
from correspond.store.blob_gc import RemovedAccount, remove_account_with_blobs
from correspond.store.blobs import BlobStore
from correspond.store.lifecycle import AccountFootprint, disconnect_account, footprint
from correspond.store.records import draft_of
from correspond.store.repository import PASSWORD_DROPPED
from correspond.store.tables import utcnow
from correspond.store.trouble import AccountTrouble, accounts_in_trouble
from correspond.store.visibility import Viewer
from correspond.store.wakeups import announce_account_change
from correspond.sync.connection_test import ConnectionReport, check_connection

__all__ = [
    "PASSWORD_DROPPED",
    "STATE_MESSAGES",
    "AccountService",
    "LifecyclePlan",
    "describe_state",
    "lifecycle_plan",
    "report_to_dict",
]

# What each state means to a person reading `account list` or the API.
STATE_MESSAGES: dict[str, str] = {
    "connecting": "Waiting: no sync is connected to the server now; a sync process connects it.",
    "backfilling": "Backfilling: importing mail from the sync window.",
    "live": "Live: a sync process is watching for new mail.",
    "paused": "Paused: sync is stopped until you resume it.",
    "auth_failed": "Sign-in failed: the server refused the credentials; update the password.",
    "error": "Error: sync stopped on a problem that needs attention.",
    "disconnected": "Disconnected: the server cannot be reached; retrying with backoff.",
}


# Connection-test problems that mean "cannot reach the server" rather than "misconfigured".
_UNREACHABLE_PROBLEMS = frozenset({"dns", "refused", "timeout", "unreachable", "connection_lost"})


def describe_state(state: str, detail: str = "") -> str:
    """A one-line human explanation of an account state, with its detail when there is one."""
    base = STATE_MESSAGES.get(state, state)
    return f"{base} {detail}".strip() if detail else base


def report_to_dict(report: ConnectionReport) -> dict[str, Any]:
    """A connection report as JSON-ready data (capabilities sorted, folders by display name)."""
    folders: Any = getattr(report, "folders", None)
    if isinstance(folders, int) or folders is None:
        shown: Any = folders
    else:
        shown = [getattr(f, "name", str(f)) for f in folders]
    problem = report.problem
    return {
        "ok": bool(report.ok),
        "problem": None if problem is None else str(getattr(problem, "value", problem)),
        "message": str(report.message),
        "capabilities": sorted(str(c) for c in (report.capabilities or ())),
        "folders": shown,
        "certificate_sha256": getattr(report, "certificate_sha256", None),
    }


_COUNTED = ("folders", "locations", "pending_actions", "messages", "threads")


@dataclass(frozen=True, slots=True)
class LifecyclePlan:
    """What a disconnect or a removal of an account deletes and what it keeps, counted; with
    ``dry_run`` nothing has happened yet. ``summary`` says it in one sentence for a person."""

    account: str
    action: Literal["disconnect", "remove"]
    dry_run: bool
    removed: dict[str, int | bool]
    kept: dict[str, int]
    summary: str


def lifecycle_plan(
    action: Literal["disconnect", "remove"], fp: AccountFootprint, *, dry_run: bool
) -> LifecyclePlan:
    """Split an account's footprint into what ``action`` removes and what it keeps.

    A disconnect removes the credential, the folders, the message locations (where each
    message is in the mailbox) and the CRM actions still waiting for the mailbox (marked
    failed); it keeps the messages, threads and timeline entries. A removal deletes all of it,
    the CRM history included."""
    counts = {name: int(getattr(fp, name)) for name in _COUNTED}
    timelines = int(fp.messages_on_timelines)
    if action == "disconnect":
        removed: dict[str, int | bool] = {
            "credentials": fp.has_credentials,
            "folders": counts["folders"],
            "locations": counts["locations"],
            "pending_actions": counts["pending_actions"],
        }
        kept = {
            "messages": counts["messages"],
            "threads": counts["threads"],
            "messages_on_timelines": timelines,
        }
        password = "the stored password, " if fp.has_credentials else ""
        what = (
            f"{password}{counts['folders']} folder(s), {counts['locations']} "
            f"message location(s) and {counts['pending_actions']} action(s) waiting for the "
            f"mailbox; the {counts['messages']} message(s) ({timelines} on CRM timelines) stay "
            "as history"
        )
    else:
        removed = {"credentials": fp.has_credentials, **counts, "messages_on_timelines": timelines}
        kept = {"messages": 0, "threads": 0, "messages_on_timelines": 0}
        what = (
            f"everything: {'the stored password, ' if fp.has_credentials else ''}"
            f"{counts['folders']} folder(s), "
            f"{counts['messages']} message(s) ({timelines} on CRM timelines, which lose them), "
            f"{counts['threads']} thread(s) and the blobs no other account uses"
        )
    verb = {"disconnect": "Disconnecting", "remove": "Removing"}[action]
    done = {"disconnect": "Disconnected", "remove": "Removed"}[action]
    summary = (
        f"{verb} {fp.name} would remove {what}."
        if dry_run
        else f"{done} {fp.name}: removed {what}."
    )
    return LifecyclePlan(
        account=fp.name,
        action=action,
        dry_run=dry_run,
        removed=removed,
        kept=kept,
        summary=summary,
    )


class AccountService:
    """Account operations over one store, with one immutable settings object."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # -- plain store operations -------------------------------------------------------------

    def add_account(
        self,
        draft: AccountDraft,
        password: str,
        *,
        owner_id: int | None = None,
        paused: str | None = None,
    ) -> Account:
        """Store a new account with its (encrypted) password, owned by user ``owner_id``.
        Nothing is contacted yet. With ``paused`` (the state detail) it waits ``paused`` until
        resumed (the web app's connect: the folders are chosen first)."""
        return self.store.add_account(draft, password, owner_id=owner_id, paused=paused)

    def trouble(self, viewer: Viewer) -> list[AccountTrouble]:
        """The accounts ``viewer`` sees that are stopped on a problem the user must fix
        (``auth_failed``, ``error``): one short query, for a banner on every page."""
        return accounts_in_trouble(self.store.engine, viewer)

    def check_update(self, name: str, changes: AccountChanges) -> AccountDraft:
        """What ``name`` would become with ``changes``, checked, without storing anything:
        :class:`NotFound` or :class:`ConfigError` before anything is asked of the user (a
        password) or written. :meth:`update_account` checks again in its transaction."""
        return apply_changes(draft_of(self.store.get_account(name)), changes)

    def update_account(
        self, name: str, changes: AccountChanges, password: str | None = None
    ) -> Account:
        """Change ``name``'s settings and/or password atomically (all or nothing). Changing how
        it connects moves a failed account back to ``connecting``; synced mail is kept.

        Changing how it connects (host, port, security, user name, plaintext permission,
        trusted certificate; IMAP or SMTP) without a ``password`` drops the stored password:
        a secret is never sent to an endpoint other than the one it was entered for. The
        account then waits in ``error`` saying so (:data:`PASSWORD_DROPPED`) until it gets a
        password; the connection test says so without contacting anything."""
        return self.store.update_account(name, changes, secret=password)

    def list_accounts(self, *, viewer: Viewer | None = None) -> list[AccountSummary]:
        """Every account (only those ``viewer`` may see, when given) with state and counts."""
        return self.store.list_accounts(viewer=viewer)

    def get_account(self, name: str) -> AccountSummary:
        return self.store.account_summary(name)

    def remove_account(self, name: str) -> RemovedAccount:
        """Delete the account and everything synced for it: its rows, then the blobs (raw
        messages, attachment bodies) no other account's messages use. Its CRM history goes
        too (timeline entries of its messages): :meth:`disconnect_account` keeps it."""
        removed = remove_account_with_blobs(
            self.store.engine, BlobStore.from_settings(self.settings), name
        )
        announce_account_change(self.store.engine)  # its worker lets go at once
        return removed

    def footprint(self, name: str) -> AccountFootprint:
        """What ``name`` holds (credential, folders, locations, pending actions, messages,
        threads, messages on CRM timelines): what a disconnect or a removal would affect.
        Changes nothing."""
        return footprint(self.store.engine, name)

    def disconnect_account(self, name: str) -> AccountFootprint:
        """Stop syncing ``name`` and delete its credential, folders and locations; its messages
        stay in the CRM as history (store.lifecycle). Returns what it held."""
        return disconnect_account(self.store.engine, name)

    def reconnect_account(self, name: str, password: str) -> Account:
        """Reconnect a disconnected ``name`` with ``password``: the next sync backfills the
        account's window before now and finds the messages it already has (same ids)."""
        return self.store.reconnect_account(name, password)

    def list_folders(self, name: str, *, include_removed: bool = False) -> list[Folder]:
        return self.store.list_folders(name, include_removed=include_removed)

    def account_exists(self, name: str) -> bool:
        try:
            self.store.get_account(name)
        except NotFound:
            return False
        return True

    def select_folders(
        self,
        name: str,
        *,
        all_folders: bool = False,
        refs: Sequence[str | int] = (),
        add: bool = False,
        remove: Sequence[str | int] = (),
    ) -> list[Folder]:
        """Sync all folders (now and future ones), or exactly ``refs`` (ids or display names);
        with ``add``, ``refs`` are added to the selection and ``remove`` taken out of it.

        Every ref is checked first, so a bad one changes nothing and the error says what to do:
        :class:`NotFound` for an unknown folder, :class:`ConfigError` for an ambiguous name or
        a folder the server marks ``\\Noselect`` / ``\\NonExistent``.
        """
        if (refs or remove) and not all_folders:
            folders = self.store.list_folders(name)
            for ref in refs:
                self._selectable(name, folders, ref)
            for ref in remove:
                self._known(name, folders, ref)
        return self.store.select_folders(
            name, all_folders=all_folders, refs=refs, add=add, remove=remove
        )

    @staticmethod
    def _selectable(name: str, folders: Sequence[Folder], ref: str | int) -> Folder:
        folder = AccountService._known(name, folders, ref)
        if not folder.selectable:
            flags = {f.casefold() for f in folder.flags}
            why = (
                "the server lists it as \\NonExistent (only a parent of other folders)"
                if "\\nonexistent" in flags
                else "the server marks it \\Noselect (it holds folders, not messages)"
            )
            raise ConfigError(f"folder {folder.name!r} (id {folder.id}) cannot be selected: {why}")
        return folder

    @staticmethod
    def _known(name: str, folders: Sequence[Folder], ref: str | int) -> Folder:
        if not folders:
            raise NotFound(
                f"no folders known for account {name!r} yet: refresh the folder list from the "
                "server first"
            )
        try:
            folder = resolve_folder_ref(folders, ref)
        except NotFound as exc:
            by_id = isinstance(ref, int) or ref.isdigit() or ref.startswith("id:")
            hint = (
                f"`correspond account folders {name}` shows the ids"
                if by_id
                else "names are case-sensitive; a folder created since the last refresh "
                "needs a refresh of the folder list"
            )
            raise NotFound(f"{exc} in account {name!r} ({hint})") from None
        return folder

    # -- IMAP ------------------------------------------------------------------------------

    def endpoint_for(self, account: Account) -> ImapEndpoint:
        """The IMAP endpoint an account connects to."""
        return ImapEndpoint(
            account.imap_host,
            account.imap_port,
            account.imap_security,  # type: ignore[arg-type]
            allow_plaintext=account.allow_plaintext,
            trusted_cert_pem=account.trusted_cert_pem,
        )

    async def test_account(self, name: str) -> ConnectionReport:
        """Run the connection test (DNS, TCP, TLS, auth, capabilities) with the stored password.

        A failure is recorded on the account (``auth_failed``, ``disconnected`` when the server
        cannot be reached, else ``error``; the report's message as detail); a success clears
        such a failure back to ``connecting``. Live or backfilling accounts keep their state.
        """
        account = await asyncio.to_thread(self.store.get_account, name)
        if account.disconnected_at is not None:
            return ConnectionReport(
                ok=False,
                problem="no_password",
                message=(
                    f"Account {name!r} is disconnected (its password and folders were removed "
                    f"on {account.disconnected_at:%Y-%m-%d %H:%M} UTC): reconnect it with "
                    f"`correspond account reconnect {name}` or POST /accounts/{name}/reconnect. "
                    "Nothing was contacted."
                ),
            )
        if not account.has_secret:
            # Nothing is contacted: there is no password to sign in with.
            return ConnectionReport(
                ok=False,
                problem="no_password",
                message=(
                    f"Account {name!r} has no stored password (it is dropped when the "
                    "connection settings change): enter it with `correspond account update "
                    f"{name} --password` or PATCH /accounts/{name} with a password. Nothing "
                    "was contacted."
                ),
            )
        password = await asyncio.to_thread(self.store.account_secret, name, for_account=account)
        report = await check_connection(
            self.endpoint_for(account),
            account.username,
            password,
            timeout=self.settings.imap_connect_timeout,
            account_name=name,
            deadline=self.settings.connection_test_timeout,
            limits=ImapLimits.from_settings(self.settings),
        )
        if report.ok:
            if account.state in ("auth_failed", "error", "disconnected", "connecting"):
                await asyncio.to_thread(
                    self.store.set_account_state,
                    name,
                    "connecting",
                    "Connection test passed.",
                    connected_at=account.connected_at or utcnow(),
                )
        else:
            problem = str(getattr(report.problem, "value", report.problem) or "").lower()
            if "auth" in problem:
                state = "auth_failed"
            elif problem in _UNREACHABLE_PROBLEMS:
                state = "disconnected"
            else:
                state = "error"
            await asyncio.to_thread(self.store.set_account_state, name, state, report.message)
        return report

    async def test_draft(self, draft: AccountDraft, password: str) -> ConnectionReport:
        """The connection test for an account not stored yet (the web app's "Connect a
        mailbox" tests before it creates): the same test as :meth:`test_account`, and nothing
        is stored or changed whatever it finds."""
        endpoint = ImapEndpoint(
            draft.imap_host,
            draft.imap_port,
            draft.imap_security,
            allow_plaintext=draft.allow_plaintext,
            trusted_cert_pem=draft.trusted_cert_pem,
        )
        return await check_connection(
            endpoint,
            draft.username,
            password,
            timeout=self.settings.imap_connect_timeout,
            deadline=self.settings.connection_test_timeout,
            limits=ImapLimits.from_settings(self.settings),
        )

    async def presented_certificate_pem(
        self, host: str, port: int, security: str, fingerprint: str
    ) -> str:
        """The certificate ``host:port`` presents now, as PEM to store as the trusted one, if
        its SHA-256 fingerprint is ``fingerprint`` (what ``account test`` showed); else
        ConfigError saying what was presented. Nothing is trusted while fetching it, and no
        credentials are sent."""
        wanted = normalize_fingerprint(fingerprint)
        where = f"{host}:{port}"
        if security == "plain":
            raise ConfigError(f"{where} uses no TLS (security plain): there is no certificate")
        der = await fetch_presented_certificate(
            host,
            port,
            security,  # type: ignore[arg-type]
            timeout=self.settings.imap_connect_timeout,
        )
        if der is None:
            raise ConfigError(
                f"{where} presented no certificate ({security}): check the server name, port "
                "and security (`correspond account test` says which)"
            )
        got = certificate_fingerprint(der)
        if got != wanted:
            raise ConfigError(
                f"{where} presents a certificate with SHA-256 {got}, not {wanted}: nothing was "
                "trusted. If the server's certificate changed, check the new fingerprint with "
                "its administrator first."
            )
        return ssl.DER_cert_to_PEM_cert(der)

    async def refresh_folders(self, name: str) -> FolderSyncResult:
        """Connect, LIST, assign roles (RFC 6154 then names) and upsert by raw name.

        Folders no longer listed are marked removed (never confused with a same-named newcomer).
        A refused sign-in is recorded on the account (``auth_failed``); every IMAP error is
        re-raised for the caller to show.
        """
        account = await asyncio.to_thread(self.store.get_account, name)
        password = await asyncio.to_thread(self.store.account_secret, name, for_account=account)
        try:
            async with await ImapClient.connect(
                self.endpoint_for(account),
                connect_timeout=self.settings.imap_connect_timeout,
                command_timeout=self.settings.imap_command_timeout,
                limits=ImapLimits.from_settings(self.settings),
            ) as client:
                await client.login(account.username, password)
                entries = await client.list_folders()
        except AuthenticationFailed as exc:
            await asyncio.to_thread(self.store.set_account_state, name, "auth_failed", str(exc))
            raise
        specs = assign_roles(entries)
        return await asyncio.to_thread(self.store.sync_folders, name, specs)
