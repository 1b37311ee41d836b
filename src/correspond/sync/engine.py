"""Sync one account: connect, refresh the folder list, then bring each selected folder up to date.

The account-level executor above :class:`~correspond.sync.folder_sync.FolderSyncer`:

1. connect and log in (STARTTLS or TLS; credentials never in clear unless allowed), ENABLE
   CONDSTORE/QRESYNC where offered (RFC 5161, RFC 7162 §3.2.3);
2. LIST with SPECIAL-USE → :func:`correspond.rules.folders.assign_roles` → the store's folder
   rows (:meth:`correspond.store.repository.Store.sync_folders`);
3. each selected folder in :func:`~correspond.rules.sync_plan.backfill_order` (INBOX, Sent,
   then the rest): :meth:`FolderSyncer.run` (backfill, UIDVALIDITY reset, or incremental);
4. account state ``backfilling`` → ``live``; transient failures retried with jittered backoff
   (:func:`~correspond.rules.sync_plan.backoff_delay`), permanent ones recorded on the account.

Threading and dedupe are pure functions from :mod:`correspond.mail`; this module only adapts
their plain-data interfaces to the store's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import date

from correspond.errors import AuthenticationFailed, CorrespondError, ImapCommandError
from correspond.imap.client import ImapClient
from correspond.imap.connect import ImapEndpoint
from correspond.imap.types import (
    ExistsResponse,
    ExpungeResponse,
    FetchResponse,
    VanishedResponse,
)
from correspond.mail.dedupe import dedupe_key
from correspond.mail.parse import ParsedMessage
from correspond.mail.threading import KnownMessage, ThreadInput, choose_thread
from correspond.rules.folders import assign_roles
from correspond.rules.sync_plan import backfill_order, backoff_delay
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.messages import (
    MessageData,
    MessageStore,
    ThreadCandidate,
    ThreadChoice,
    ThreadChooser,
)
from correspond.store.records import Account, Folder
from correspond.store.repository import Store
from correspond.store.tables import utcnow
from correspond.sync.folder_sync import (
    DEFAULT_BATCH_SIZE,
    FolderRef,
    FolderSyncer,
    FolderSyncReport,
    MessageBuilder,
)

__all__ = [
    "AccountSyncReport",
    "AccountSyncer",
    "default_dedupe",
    "default_thread_chooser",
    "endpoint_for",
]


# Re-issue IDLE before servers drop it (RFC 2177 §3: at least every 29 minutes).
_IDLE_RENEW_SECONDS = 25 * 60


def default_dedupe(parsed: ParsedMessage, gm_msgid: int | None) -> str:
    """The account-wide identity of a message (X-GM-MSGID, else Message-ID, else a hash)."""
    return dedupe_key(parsed, gm_msgid=gm_msgid)


def _known(c: ThreadCandidate) -> KnownMessage | None:
    if c.thread_id is None:
        return None
    return KnownMessage(
        thread_id=c.thread_id,
        message_id=c.message_id,
        parent_ids=c.parent_ids,
        normalized_subject=c.normalized_subject,
        participants=frozenset(c.participants),
        date=c.date,
    )


def default_thread_chooser(
    data: MessageData, related: Sequence[ThreadCandidate], same_subject: Sequence[ThreadCandidate]
) -> ThreadChoice:
    """Adapt :func:`correspond.mail.threading.choose_thread` to the store's candidates."""
    msg = ThreadInput(
        message_id=data.message_id,
        parent_ids=data.parent_ids,
        normalized_subject=data.normalized_subject,
        participants=frozenset(data.participants),
        date=data.date,
        is_reply=data.is_reply,
    )
    decision = choose_thread(
        msg,
        [k for k in map(_known, related) if k is not None],
        [k for k in map(_known, same_subject) if k is not None],
    )
    return ThreadChoice(decision.thread_id, tuple(decision.merge_thread_ids))


def endpoint_for(account: Account) -> ImapEndpoint:
    """The IMAP endpoint an account's settings describe."""
    return ImapEndpoint(
        host=account.imap_host,
        port=account.imap_port,
        security=account.imap_security,  # type: ignore[arg-type]
        allow_plaintext=account.allow_plaintext,
        trusted_cert_pem=account.trusted_cert_pem,
    )


@dataclass(slots=True)
class AccountSyncReport:
    account_id: int
    folders: list[FolderSyncReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def created(self) -> int:
        return sum(f.created for f in self.folders)

    @property
    def linked(self) -> int:
        return sum(f.linked for f in self.folders)


class AccountSyncer:
    """Syncs one account over one IMAP connection: commands, and IDLE on INBOX between passes.

    (A second connection dedicated to IDLE, as DESIGN.md allows, would let INBOX changes
    interrupt a long backfill of another folder; with one connection they wait for the pass.)
    """

    def __init__(
        self,
        store: Store,
        messages: MessageStore,
        blobs: BlobStore,
        settings: Settings,
        *,
        parse_executor: Executor | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        today: date | None = None,
        chooser: ThreadChooser | None = None,
        rng: random.Random | None = None,
        extensions: Sequence[str] = ("CONDSTORE", "QRESYNC"),
    ) -> None:
        self.store = store
        self.messages = messages
        self.blobs = blobs
        self.settings = settings
        self.parse_executor = parse_executor
        self.batch_size = batch_size
        self.today = today
        self.chooser = chooser or default_thread_chooser
        self.builder = MessageBuilder()
        self.rng = rng or random.Random()
        # Which RFC 7162 extensions to ENABLE where offered (drop QRESYNC for a server whose
        # implementation misbehaves; CONDSTORE alone still avoids re-reading every flag).
        self.extensions = tuple(extensions)

    async def connect(self, account: Account) -> ImapClient:
        """Connect, log in with the stored secret, and ENABLE CONDSTORE/QRESYNC if offered."""
        client = await ImapClient.connect(
            endpoint_for(account),
            connect_timeout=self.settings.imap_connect_timeout,
            command_timeout=self.settings.imap_command_timeout,
        )
        try:
            secret = await asyncio.to_thread(self.store.account_secret, account.name)
            await client.login(account.username, secret)
            if self.extensions:
                await client.enable(*self.extensions)
        except BaseException:
            client._abort()
            raise
        return client

    async def refresh_folders(self, client: ImapClient, account: Account) -> list[Folder]:
        """LIST the folders, assign roles, and upsert them; returns the live folder rows."""
        listed = await client.list_folders()
        specs = assign_roles(listed)
        result = await asyncio.to_thread(self.store.sync_folders, account.name, specs)
        if result.removed:
            # A folder deleted (or renamed) on the server: its UIDs mean nothing any more. If it
            # was renamed, the new name is a new folder whose backfill re-links the same
            # messages by dedupe key, so nothing is duplicated.
            every = await asyncio.to_thread(
                self.store.list_folders, account.name, include_removed=True
            )
            for folder in every:
                if folder.removed and folder.uidvalidity is not None:
                    await asyncio.to_thread(self.messages.forget_folder, folder.id)
        return result.folders

    def _capabilities(self, client: ImapClient) -> frozenset[str]:
        caps = set(client.capabilities)
        # QRESYNC is used only once ENABLEd (RFC 7162 §3.2.3); CONDSTORE only if wanted.
        if "QRESYNC" not in client.enabled:
            caps.discard("QRESYNC")
        if "CONDSTORE" not in self.extensions and "QRESYNC" not in client.enabled:
            caps.discard("CONDSTORE")
        return frozenset(caps)

    async def sync_once(
        self,
        client: ImapClient,
        account: Account,
        *,
        folders: Sequence[Folder] | None = None,
        max_batches: int | None = None,
    ) -> AccountSyncReport:
        """One pass over the selected folders, INBOX and Sent first."""
        started = time.perf_counter()
        report = AccountSyncReport(account_id=account.id)
        if folders is None:
            folders = await self.refresh_folders(client, account)
        chosen = {f.id: f for f in folders if f.selected and f.selectable and not f.removed}
        order = backfill_order((f.id, f.role, f.name) for f in chosen.values())
        caps = self._capabilities(client)
        settings = self.settings.clone(window_days=account.window_days)
        for folder_id in order:
            folder = chosen[folder_id]
            syncer = FolderSyncer(
                client,
                self.messages,
                self.blobs,
                settings,
                FolderRef(
                    id=folder.id,
                    account_id=account.id,
                    name_raw=folder.name_raw,
                    role=folder.role,
                    account_addresses=frozenset({account.email.lower()}),
                ),
                chooser=self.chooser,
                dedupe=default_dedupe,
                builder=self.builder,
                capabilities=caps,
                parse_executor=self.parse_executor,
                batch_size=self.batch_size,
                today=self.today,
            )
            try:
                report.folders.append(await syncer.run(max_batches=max_batches))
            except ImapCommandError as exc:
                # One folder refused (deleted since LIST, no permission, ...): the session is
                # intact, so record it and go on with the others; the next LIST settles it.
                report.folders.append(
                    FolderSyncReport(folder_id=folder.id, kind="error", error=str(exc))
                )
        report.seconds = time.perf_counter() - started
        return report

    async def wait_for_inbox_change(
        self, client: ImapClient, inbox: Folder, *, stop: asyncio.Event, timeout: float
    ) -> bool:
        """EXAMINE INBOX and IDLE (RFC 2177) until the server reports a change, ``stop`` is set,
        or ``timeout`` seconds pass. True when something changed.

        EXISTS, EXPUNGE, FETCH (flags) and VANISHED all mean "sync INBOX now". IDLE is re-issued
        well inside the 29 minutes RFC 2177 §3 allows.
        """
        await client.select(inbox.name_raw, readonly=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not stop.is_set() and loop.time() < deadline:
            round_end = min(deadline, loop.time() + _IDLE_RENEW_SECONDS)
            async with client.idle() as session:
                while not stop.is_set():
                    left = round_end - loop.time()
                    if left <= 0:
                        break
                    # Short slices so that ``stop`` is noticed within a second.
                    response = await session.next(timeout=min(left, 1.0))
                    if isinstance(
                        response,
                        ExistsResponse | ExpungeResponse | FetchResponse | VanishedResponse,
                    ):
                        return True
        return False

    async def run_account(
        self,
        account_name: str,
        *,
        stop: asyncio.Event,
        poll_seconds: float = 60.0,
        on_synced: Callable[[AccountSyncReport], None] | None = None,
    ) -> None:
        """Keep one account in sync until ``stop`` is set.

        First a full pass (backfill), then live: IDLE on INBOX between passes (an INBOX-only
        pass on each change), and a full pass of every selected folder each ``poll_seconds``
        (the other folders are polled, DESIGN.md "Live"). Servers without IDLE are polled.

        Transient failures (connection lost, timeouts, database busy) are retried with jittered
        exponential backoff capped at five minutes; a refused login or another permanent error
        is recorded on the account and ends the loop (the user must act).
        """
        attempt = 0
        while not stop.is_set():
            account = await asyncio.to_thread(self.store.get_account, account_name)
            try:
                client = await self.connect(account)
                try:
                    await asyncio.to_thread(
                        self.store.set_account_state,
                        account_name,
                        "backfilling",
                        "Syncing",
                        connected_at=utcnow(),
                    )
                    folders = await self.refresh_folders(client, account)
                    report = await self.sync_once(client, account, folders=folders)
                    attempt = 0
                    await asyncio.to_thread(
                        self.store.set_account_state,
                        account_name,
                        "live",
                        "Up to date",
                        last_sync_at=utcnow(),
                    )
                    if on_synced is not None:
                        on_synced(report)
                    await self._live(client, account, folders, stop, poll_seconds, on_synced)
                finally:
                    with contextlib.suppress(CorrespondError):
                        await client.logout()
            except AuthenticationFailed as exc:
                await asyncio.to_thread(
                    self.store.set_account_state, account_name, "auth_failed", str(exc)
                )
                return
            except CorrespondError as exc:
                if not exc.transient:
                    await asyncio.to_thread(
                        self.store.set_account_state, account_name, "error", str(exc)
                    )
                    return
                attempt += 1
                delay = backoff_delay(attempt, rng=self.rng)
                await asyncio.to_thread(
                    self.store.set_account_state,
                    account_name,
                    "disconnected",
                    f"{exc}; retrying in {delay:.0f} s",
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _live(
        self,
        client: ImapClient,
        account: Account,
        folders: list[Folder],
        stop: asyncio.Event,
        poll_seconds: float,
        on_synced: Callable[[AccountSyncReport], None] | None,
    ) -> None:
        inbox = next((f for f in folders if f.role == "inbox" and f.selected), None)
        loop = asyncio.get_running_loop()
        next_full = loop.time() + poll_seconds
        while not stop.is_set():
            left = max(0.0, next_full - loop.time())
            changed = False
            if inbox is not None and "IDLE" in client.capabilities:
                changed = await self.wait_for_inbox_change(client, inbox, stop=stop, timeout=left)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=left)
            if stop.is_set():
                return
            if changed and inbox is not None and loop.time() < next_full:
                report = await self.sync_once(client, account, folders=[inbox])
            else:
                folders = await self.refresh_folders(client, account)
                inbox = next((f for f in folders if f.role == "inbox" and f.selected), None)
                report = await self.sync_once(client, account, folders=folders)
                next_full = loop.time() + poll_seconds
            if on_synced is not None:
                on_synced(report)
