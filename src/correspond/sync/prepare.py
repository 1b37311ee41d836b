"""The CPU and disk half of a backfill batch, importable by a parse worker on its own.

:func:`prepare_messages` parses whole messages, writes their blobs and builds the rows' data.
It runs in a worker thread or in a process of the parse pool; this module imports only the
pure mail code, the blob store and plain records (no SQLAlchemy, no IMAP client: ~21 MB of
imports against ~75 for the sync engine). A ``spawn`` pool process also re-imports the parent's
main script, so how small a worker stays depends on what started it (``bench/backfill.py``'s
workers peak at ~120 MB).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from correspond.imap.types import FetchResponse
from correspond.mail.dedupe import dedupe_key, unfetched_body_key
from correspond.mail.parse import ParsedAddress, ParsedMessage, parse_message
from correspond.mail.threading import thread_input
from correspond.store.blobs import SYNCFS_MIN_FILES, BlobStore
from correspond.store.message_data import (
    AddressData,
    AttachmentData,
    MessageData,
    storable_message,
)

__all__ = [
    "FolderRef",
    "KeyFunction",
    "MessageBuilder",
    "PrepareJob",
    "PreparedChunk",
    "address_data",
    "default_dedupe",
    "ignore_interrupts",
    "init_worker",
    "parse_headers",
    "parse_raw",
    "prepare_messages",
    "prepare_one_by_one",
    "slim_meta",
    "unreadable_message",
]

KeyFunction = Callable[[ParsedMessage, int | None], str]
"""``(parsed headers or message, X-GM-MSGID) -> dedupe key``."""


def ignore_interrupts() -> None:
    """A parse worker's initializer: Ctrl-C reaches the whole process group, and the parent
    stops cleanly and shuts the pool down, so a worker killed by the same SIGINT would only
    break the parses in flight. (Here, not in the runner, so a worker imports nothing more.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: How often a parse worker checks that the process that started it still runs.
PARENT_CHECK_SECONDS = 0.5


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_SECONDS)
    # Re-parented: the sync process is gone (SIGKILL, OOM), and nobody will collect results.
    os._exit(0)


def init_worker(parent_pid: int) -> None:
    """A parse worker's initializer: ignore Ctrl-C (:func:`ignore_interrupts`) and exit soon
    after the parent dies, however it died. A SIGKILLed parent cannot shut its pool down, and
    its workers (60-100 MB each) would otherwise wait on the call queue for minutes; once they
    are gone, the multiprocessing resource tracker sees its last writer close and exits too.
    A thread that watches ``getppid()``, not ``PR_SET_PDEATHSIG``: that signal fires when
    the parent *thread* that spawned the worker ends, which a pool spawning on demand from
    whichever thread submits does not control."""
    ignore_interrupts()
    if os.getppid() != parent_pid:
        os._exit(0)
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True
    ).start()


def default_dedupe(parsed: ParsedMessage, gm_msgid: int | None) -> str:
    """The account-wide identity of a message (X-GM-MSGID, else Message-ID, else a hash)."""
    return dedupe_key(parsed, gm_msgid=gm_msgid)


@dataclass(frozen=True, slots=True)
class FolderRef:
    """The folder being synced and the account facts the messages need."""

    id: int
    account_id: int
    name_raw: bytes
    role: str | None
    account_addresses: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class MessageBuilder:
    """Turns a parsed message into :class:`MessageData` (pure; given the pieces it needs)."""

    def build(
        self,
        parsed: ParsedMessage,
        *,
        dedupe_key: str,
        fetch: FetchResponse,
        folder: FolderRef,
        raw_blob_key: str | None,
        attachments: tuple[AttachmentData, ...],
        truncated: bool,
    ) -> MessageData:
        from_ = address_data(parsed.from_[0]) if parsed.from_ else None
        threading = thread_input(parsed)
        outbound = folder.role == "sent" or (
            from_ is not None and from_.email.lower() in folder.account_addresses
        )
        # Made storable here, in the parse worker: the commit thread then skips it.
        return storable_message(
            MessageData(
                dedupe_key=dedupe_key,
                message_id=parsed.message_id,
                in_reply_to=parsed.in_reply_to,
                references=tuple(parsed.references),
                subject=parsed.subject,
                normalized_subject=threading.normalized_subject,
                is_reply=threading.is_reply,
                from_=from_,
                sender=tuple(address_data(a) for a in parsed.sender),
                reply_to=tuple(address_data(a) for a in parsed.reply_to),
                to=tuple(address_data(a) for a in parsed.to),
                cc=tuple(address_data(a) for a in parsed.cc),
                bcc=tuple(address_data(a) for a in parsed.bcc),
                date=parsed.date,
                internaldate=fetch.internaldate,
                snippet=parsed.snippet,
                text=parsed.text,
                html=parsed.html,
                size=fetch.size,
                raw_blob_key=raw_blob_key,
                truncated=truncated,
                gm_msgid=fetch.gm_msgid,
                gm_thrid=fetch.gm_thrid,
                defects=tuple(parsed.defects),
                direction="outbound" if outbound else "inbound",
                attachments=attachments,
                own_addresses=folder.account_addresses,
            )
        )


def address_data(a: ParsedAddress) -> AddressData:
    return AddressData(a.name or None, a.email)


# --- parsing (top-level so a process pool can pickle it) --------------------------------------


def parse_raw(raw: bytes) -> ParsedMessage:
    """Parse a whole message, keeping attachment bodies (they become blobs)."""
    return parse_message(raw)


def parse_headers(raw_header: bytes) -> ParsedMessage:
    """Parse a header block only (``BODY.PEEK[HEADER]``): enough for the dedupe key."""
    return parse_message(raw_header, keep_attachment_content=False)


@dataclass(frozen=True, slots=True)
class PrepareJob:
    """Part of a batch for :func:`prepare_messages`: plain data, so it pickles to a process."""

    blob_root: str
    folder: FolderRef
    builder: MessageBuilder
    dedupe: KeyFunction
    uids: list[int]
    raws: list[bytes]
    keys: list[str]
    metas: list[FetchResponse]
    #: Backfill: make the blobs durable with syncfs(2) even when they are few. A batch cut
    #: short by large attachments would otherwise fsync each file (~ms each); syncfs's cost
    #: to other writers' latency is what the live path avoids, not the backfill.
    bulk: bool = False


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """What :func:`prepare_messages` returns: the rows' data (no attachment bytes: those are
    blobs now) and the seconds spent parsing and writing blobs."""

    data: list[tuple[int, MessageData]]
    seconds_parse: float
    seconds_blobs: float


_BLOB_STORES: dict[str, BlobStore] = {}


def prepare_messages(job: PrepareJob, blobs: BlobStore | None = None) -> PreparedChunk:
    """Parse whole messages, write each raw message and attachment body as a blob (one durable
    sync for the lot), and build the rows' data.

    Runs in a worker thread, or in a process of the parse pool: parsing and writing in the
    same process means only the raw bytes travel there and only the text and metadata come
    back, never the attachment bodies. A process keeps one :class:`BlobStore` per root, so
    its cache of fan-out directories lasts across batches.
    """
    if blobs is None:
        blobs = _BLOB_STORES.get(job.blob_root)
        if blobs is None:
            blobs = _BLOB_STORES.setdefault(job.blob_root, BlobStore(Path(job.blob_root)))
    started = time.perf_counter()
    parsed = [parse_raw(r) for r in job.raws]  # never raises: a defect instead
    parsed_at = time.perf_counter()
    contents: list[bytes] = list(job.raws)
    for msg in parsed:
        contents.extend(a.content for a in msg.attachments if a.content is not None)
    keys = iter(blobs.put_many(contents, syncfs_min_files=1 if job.bulk else SYNCFS_MIN_FILES))
    raw_keys = [next(keys) for _ in job.raws]
    out: list[tuple[int, MessageData]] = []
    for uid, raw_key, msg, key, meta in zip(
        job.uids, raw_keys, parsed, job.keys, job.metas, strict=True
    ):
        attachments = tuple(
            AttachmentData(
                filename=a.filename,
                content_type=a.content_type,
                size=a.size,
                content_id=a.content_id,
                inline=a.inline,
                blob_key=next(keys) if a.content is not None else None,
                section=a.section or None,
            )
            for a in msg.attachments
        )
        try:
            if key.startswith("h:"):
                # No Message-ID: the fallback hash covers the body text too, which the header
                # pass could not see. Key on the whole message, as every other caller of
                # dedupe_key does; ingest still links it to a copy stored from another folder.
                key = job.dedupe(msg, meta.gm_msgid)
            data = job.builder.build(
                msg,
                dedupe_key=key,
                fetch=meta,
                folder=job.folder,
                raw_blob_key=raw_key,
                attachments=attachments,
                truncated=False,
            )
        except Exception as exc:  # one message never stops the batch (poison mail)
            data = unreadable_message(key, meta, raw_key, f"could not be read: {_why(exc)}")
        out.append((uid, data))
    return PreparedChunk(out, parsed_at - started, time.perf_counter() - parsed_at)


def prepare_one_by_one(job: PrepareJob, blobs: BlobStore | None = None) -> PreparedChunk:
    """:func:`prepare_messages` message by message, each failure kept to its message: the
    fallback when a whole job failed (a parse worker died, or a bug). A message that fails
    alone becomes :func:`unreadable_message` with its raw bytes kept as a blob. A blob store
    that cannot write (``OSError``) fails the whole job: that is no message's fault."""
    out: list[tuple[int, MessageData]] = []
    seconds_parse = seconds_blobs = 0.0
    for n, uid in enumerate(job.uids):
        one = replace(
            job,
            uids=[uid],
            raws=[job.raws[n]],
            keys=[job.keys[n]],
            metas=[job.metas[n]],
        )
        try:
            chunk = prepare_messages(one, blobs)
        except OSError:
            raise  # the blob store (a full disk): no message's fault, so not stored as one
        except Exception as exc:
            store = blobs or BlobStore(Path(job.blob_root))
            raw_key = store.put_many([job.raws[n]])[0]
            why = f"could not be prepared: {_why(exc)}"
            out.append((uid, unreadable_message(job.keys[n], job.metas[n], raw_key, why)))
            continue
        out.extend(chunk.data)
        seconds_parse += chunk.seconds_parse
        seconds_blobs += chunk.seconds_blobs
    return PreparedChunk(out, seconds_parse, seconds_blobs)


def unreadable_message(
    key: str, meta: FetchResponse, raw_blob_key: str | None, reason: str
) -> MessageData:
    """What is stored for a message that could not be parsed or built: its key, size and
    arrival time, the raw message when it was kept, and why (a defect). Without a Message-ID
    the key is the raw message's own hash (its blob key), not the header-only hash, which
    another stored message may share; without the raw bytes, the header hash and the size."""
    if key.startswith("h:"):
        key = "h:" + raw_blob_key if raw_blob_key else unfetched_body_key(key, meta.size)
    return MessageData(
        dedupe_key=key,
        internaldate=meta.internaldate,
        size=meta.size,
        raw_blob_key=raw_blob_key,
        gm_msgid=meta.gm_msgid,
        gm_thrid=meta.gm_thrid,
        defects=(reason,),
    )


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def slim_meta(meta: FetchResponse) -> FetchResponse:
    """The metadata the builder reads, without the header bytes (less to pickle)."""
    return replace(meta, sections={})
