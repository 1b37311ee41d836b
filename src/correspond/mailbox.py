"""Reading the mirror: folders with counts, message pages, messages, threads, raw bytes and
attachment bodies. One service shared by the API and the CLI, as :mod:`correspond.accounts` is
for accounts.

HTML is sanitised here, on read (DESIGN.md invariant 6): the store keeps mail as received, and
every surface gets it through :meth:`MailboxReader.render_html`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from correspond.errors import NotFound
from correspond.mail.sanitize import SanitizedHtml, sanitize_html
from correspond.rules.folder_refs import resolve_folder_ref
from correspond.settings import Settings
from correspond.store import Folder, Store
from correspond.store.blobs import BlobStore
from correspond.store.message_queries import (
    AttachmentView,
    FolderCounts,
    MessagePage,
    MessageQueries,
    MessageView,
    ThreadView,
)

__all__ = [
    "AttachmentUrl",
    "FolderWithCounts",
    "MailboxReader",
    "default_attachment_url",
    "resolve_folder",
]

#: Builds the URL of attachment ``attachment_id`` of message ``message_id`` (for cid: images).
AttachmentUrl = Callable[[int, int], str]


def default_attachment_url(message_id: int, attachment_id: int) -> str:
    """The API path of an attachment (what the JSON API and the web UI serve)."""
    return f"/messages/{message_id}/attachments/{attachment_id}"


@dataclass(frozen=True, slots=True)
class FolderWithCounts:
    folder: Folder
    counts: FolderCounts

    @property
    def server_count(self) -> int | None:
        """Messages the server reported at the last SELECT/STATUS (None: never asked)."""
        return self.folder.exists_count


def resolve_folder(folders: list[Folder], ref: str | int) -> Folder:
    """A folder by id (int, or a string of digits naming no folder) or unique display name."""
    return resolve_folder_ref(folders, ref)


class MailboxReader:
    """Read access to synced mail over one store and its blob store."""

    def __init__(self, store: Store, settings: Settings, *, blobs: BlobStore | None = None) -> None:
        self.store = store
        self.settings = settings
        self.blobs = blobs if blobs is not None else BlobStore.from_settings(settings)
        self.queries = MessageQueries(
            store.engine, search_scan_rows=settings.message_search_scan_rows
        )

    # -- folders -------------------------------------------------------------------------------

    def folders_with_counts(
        self, account_name: str, *, include_removed: bool = False
    ) -> list[FolderWithCounts]:
        """The account's folders (INBOX and role folders first) with what the store holds."""
        account = self.store.get_account(account_name)
        folders = self.store.list_folders(account_name, include_removed=include_removed)
        counts = self.queries.folder_counts(account.id)
        return [
            FolderWithCounts(f, counts.get(f.id) or FolderCounts(f.id, 0, 0, 0)) for f in folders
        ]

    # -- messages ------------------------------------------------------------------------------

    def list_messages(
        self,
        account_name: str,
        *,
        folder: str | int | None = None,
        thread_id: int | None = None,
        q: str | None = None,
        limit: int = 50,
        before: str | None = None,
        search_bodies: bool = True,
    ) -> MessagePage:
        """A page of the account's messages, newest first; ``folder`` by id or display name.
        ``search_bodies`` False: ``q`` looks at subject and sender only."""
        return self.queries.list_account_messages(
            account_name,
            folder=folder,
            thread_id=thread_id,
            q=q,
            limit=limit,
            before=before,
            search_bodies=search_bodies,
        )

    def get_message(self, message_id: int) -> MessageView:
        return self.queries.get_message(message_id)

    def render_html(
        self,
        message: MessageView,
        *,
        remote_images: bool = False,
        attachment_url: AttachmentUrl = default_attachment_url,
    ) -> SanitizedHtml | None:
        """The message's HTML made safe to show, ``cid:`` images pointing at its own parts
        (RFC 2392); None when it has no HTML body."""
        if message.html is None:
            return None
        cid_urls = {
            a.content_id: attachment_url(message.id, a.id)
            for a in message.attachments
            if a.content_id and a.downloaded
        }
        return sanitize_html(message.html, cid_urls=cid_urls, allow_remote_images=remote_images)

    def raw(self, message_id: int) -> bytes:
        """The message exactly as fetched (RFC 5322 bytes); NotFound when only its headers and
        text were kept (it was above the size limit)."""
        message = self.queries.get_message(message_id)
        if message.raw_blob_key is None:
            raise NotFound(
                f"message {message_id} has no stored original (it was above the size limit)"
            )
        return self.blobs.get(message.raw_blob_key)

    def attachment(self, message_id: int, attachment_id: int) -> tuple[AttachmentView, bytes]:
        """An attachment of a message and its decoded bytes; NotFound when it belongs to
        another message or its body was left on the server."""
        view = self.queries.get_attachment(message_id, attachment_id)
        if view.blob_key is None:
            raise NotFound(
                f"attachment {attachment_id} of message {message_id} was not downloaded "
                "(above the size limit)"
            )
        return view, self.blobs.get(view.blob_key)

    # -- threads -------------------------------------------------------------------------------

    def get_thread(self, thread_id: int, *, newest_first: bool = False) -> ThreadView:
        return self.queries.get_thread(thread_id, newest_first=newest_first)
