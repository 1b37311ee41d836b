"""Sync one folder: read its checkpoint, ask :mod:`correspond.rules.sync_plan`, do the IMAP, commit.

The executor half of the mirror. Every step follows DESIGN.md: "read state → ask a pure function
what to do → do it → commit the result with its checkpoint". Nothing here decides *what* to
fetch; it only fetches, parses, stores.

Backfill of one batch (RFC 3501 §6.4.4 SEARCH, §6.4.5 FETCH, §6.4.8 UID):

1. ``UID FETCH <batch> (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER] [MODSEQ]
   [X-GM-MSGID X-GM-THRID])``: cheap metadata plus the header block, enough to compute the dedupe
   key. A message the account already has (same key, another folder or an earlier UIDVALIDITY)
   only gains a location: its body is never downloaded twice. Only when the header block gives
   the key the whole message has (see :meth:`FolderSyncer._linkable`: never a header-only
   hash; a Message-ID only with the same sender and Date).
2. New messages up to ``settings.max_message_bytes``: ``BODY.PEEK[]``, parsed, stored as a
   content-addressed raw blob (attachment bodies as blobs of their own). Larger ones:
   ``BODYSTRUCTURE`` and the text parts only; attachments become metadata (``blob_key`` NULL,
   ``section`` kept) to be fetched on demand.
3. One transaction stores the batch and moves the cursor (:meth:`MessageStore.ingest_batch`).

Batches are pipelined: while batches N, N-1, ... (up to ``pipeline_depth``) are parsed, written
and committed, batch N+1 is fetched on the event loop; commits stay in batch order. The dedupe
keys of step 1 come from the Message-ID alone where it decides them (no header parse). Parsing and
blob writing are one step (:func:`prepare_messages`), run in a worker thread or, with a
``parse_executor``, in a process pool: then only the raw bytes go to a worker and only text and
metadata come back (attachment bodies are already blobs), and the GIL no longer serialises
parsing with the commit stage. On the bench mailbox (23,000 messages, 1.96 GB, 2 cores) two
processes backfilled in 19-23 s against 23-25 s in a thread. (A pool that only parsed and sent
attachment bodies back to be written had measured slower than a thread.)

Blobs are written before that transaction: a crash in between leaves an unreferenced blob (its
content address makes the retry write the same file again), never a row without its blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from correspond.errors import ImapCommandError, ImapProtocolError
from correspond.imap.client import ImapClient
from correspond.imap.protocol import format_sequence_set
from correspond.imap.types import BodyPart, BodyStructure, FetchResponse, Multipart
from correspond.mail.dedupe import (
    KeyFacts,
    distinct_key,
    header_key_facts,
    key_facts,
    reusable_key,
    same_message,
    unfetched_body_key,
)
from correspond.mail.parse import ParsedMessage, parse_message
from correspond.mail.snippet import html_to_text, make_snippet
from correspond.rules.sync_plan import (
    FolderChanges,
    FolderCheckpoint,
    SelectState,
    changes_from_condstore,
    changes_from_fallback,
    imap_date,
    normalize_flags,
    plan_backfill_batch,
    plan_folder_sync,
    window_start,
)
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.messages import (
    AttachmentData,
    FolderCheckpointUpdate,
    IncomingMessage,
    MessageData,
    MessageStore,
    ThreadChooser,
)
from correspond.sync.prepare import (
    FolderRef,
    KeyFunction,
    MessageBuilder,
    PreparedChunk,
    PrepareJob,
    address_data,
    parse_headers,
    parse_raw,
    prepare_messages,
    prepare_one_by_one,
    slim_meta,
    unreadable_message,
)
from correspond.sync.threads import in_thread

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_BATCH_BYTES",
    "FolderRef",
    "FolderSyncReport",
    "FolderSyncer",
    "HeaderKeyFunction",
    "KeyFunction",
    "MessageBuilder",
    "PrepareJob",
    "PreparedChunk",
    "attachment_metadata",
    "parse_headers",
    "parse_raw",
    "prepare_messages",
    "text_parts",
]

DEFAULT_BATCH_SIZE = 200
#: Backfill batches are capped by the bytes of bodies they download as well as by count. Peak
#: memory follows (bytes per batch) x (batches in the pipeline) x (raw, pickled, parsed copies).
#: Measured on the bench mailbox (23,000 messages, ~85 KB average, so 200 messages ~17 MB) with
#: two parse processes and four batches in flight: 12 MB gave 205 MB peak RSS for the sync
#: process plus ~64 MB per worker (333 MB in all); 8 MB gave 177 + ~56 (289 MB in all) at the
#: same msgs/s (the commit's fixed cost per batch no longer shows; it did when the commit was
#: slower). RFC822.SIZE comes with the metadata FETCH, before any body is fetched, so the cut
#: is exact. A batch always keeps at least one message (one above the cap still makes
#: progress; bodies above ``settings.max_message_bytes`` are never downloaded whole anyway).
DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024
#: Batches that may be parsed, written and committed behind the one being fetched. The commit
#: stage is the backfill's longest (ordered, one transaction per batch); four kept it fed where
#: two left it waiting on the parse workers (bench mailbox, 2 parse processes: 23.2 s against
#: 21.1 s), for ~20 MB more peak memory.
DEFAULT_PIPELINE_DEPTH = 4
#: Live batches up to this many messages are prepared in a thread even with a process pool.
_POOL_MIN_MESSAGES = 20


HeaderKeyFunction = Callable[[bytes, int | None], str | None]
"""``(raw header block, X-GM-MSGID) -> dedupe key``, or None when it takes the parsed headers
(then :data:`KeyFunction` decides); must agree with the KeyFunction wherever it answers."""


@dataclass(slots=True)
class FolderSyncReport:
    """What one call did (for logs, progress and tests)."""

    folder_id: int
    kind: str = "none"
    batches: int = 0
    created: int = 0
    linked: int = 0
    skipped: int = 0
    flag_updates: int = 0
    removed: int = 0
    bytes_fetched: int = 0
    seconds_fetch: float = 0.0
    seconds_parse: float = 0.0
    seconds_store: float = 0.0
    seconds_blobs: float = 0.0
    done: bool = False
    error: str | None = None
    uids: list[int] = field(default_factory=list)


# --- BODYSTRUCTURE helpers (large messages) --------------------------------------------------


def _walk(body: BodyStructure) -> list[BodyPart]:
    if isinstance(body, Multipart):
        out: list[BodyPart] = []
        for part in body.parts:
            out.extend(_walk(part))
        return out
    return [body]


def _cut_structure(body: BodyStructure) -> bool:
    """Whether the client cut a structure nested too deeply (a multipart without parts)."""
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, Multipart):
            if not node.parts:
                return True
            stack.extend(node.parts)
    return False


def _is_attachment(part: BodyPart) -> bool:
    return (part.disposition or "").lower() == "attachment" or bool(
        part.disposition_params.get("filename") or part.params.get("name")
    )


def text_parts(body: BodyStructure) -> list[BodyPart]:
    """The first text/plain and first text/html part that are not attachments (RFC 3501
    §7.4.2 BODYSTRUCTURE). Attached messages (message/rfc822) are not descended into."""
    chosen: dict[str, BodyPart] = {}
    for part in _walk(body):
        if part.type == "text" and part.subtype in ("plain", "html") and not _is_attachment(part):
            chosen.setdefault(part.subtype, part)
    return [chosen[k] for k in ("plain", "html") if k in chosen]


def attachment_metadata(
    body: BodyStructure, *, skip: Sequence[BodyPart] = ()
) -> list[AttachmentData]:
    """Attachment rows from BODYSTRUCTURE alone: nothing downloaded (``blob_key`` None)."""
    skipped = {p.section for p in skip}
    out: list[AttachmentData] = []
    for part in _walk(body):
        if part.section in skipped:
            continue
        filename = part.disposition_params.get("filename") or part.params.get("name")
        out.append(
            AttachmentData(
                filename=filename,
                content_type=f"{part.type}/{part.subtype}",
                size=part.size,
                content_id=(part.id or "").strip("<>") or None,
                inline=(part.disposition or "").lower() == "inline",
                blob_key=None,
                section=part.section,
            )
        )
    return out


def _synthetic_part(part: BodyPart, content: bytes) -> bytes:
    """A one-part message carrying ``part``'s body, so the normal parser decodes its charset
    and transfer encoding (RFC 2045 §6) exactly as it would inside the whole message."""
    params = "".join(f'; {k}="{v}"' for k, v in part.params.items() if k == "charset")
    head = f"Content-Type: {part.type}/{part.subtype}{params}\r\n"
    if part.encoding:
        head += f"Content-Transfer-Encoding: {part.encoding}\r\n"
    return head.encode("ascii", "replace") + b"\r\n" + content


class FolderSyncer:
    """Syncs one folder of one account over an already logged-in IMAP session."""

    def __init__(
        self,
        client: ImapClient,
        messages: MessageStore,
        blobs: BlobStore,
        settings: Settings,
        folder: FolderRef,
        *,
        chooser: ThreadChooser,
        dedupe: KeyFunction,
        builder: MessageBuilder,
        header_key: HeaderKeyFunction | None = None,
        capabilities: frozenset[str] = frozenset(),
        parse_executor: Executor | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        pipeline_depth: int = DEFAULT_PIPELINE_DEPTH,
        today: date | None = None,
    ) -> None:
        self.client = client
        self.messages = messages
        self.blobs = blobs
        self.settings = settings
        self.folder = folder
        self.chooser = chooser
        self.dedupe = dedupe
        self.builder = builder
        self.header_key = header_key
        self.caps = frozenset(c.upper() for c in capabilities)
        self.parse_executor = parse_executor
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.pipeline_depth = max(1, pipeline_depth)
        self.today = today or date.today()

    @property
    def condstore(self) -> bool:
        return "CONDSTORE" in self.caps or "QRESYNC" in self.caps

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.caps

    @property
    def gmail(self) -> bool:
        return "X-GM-EXT-1" in self.caps

    # -- entry point -----------------------------------------------------------------------------

    async def run(self, *, max_batches: int | None = None) -> FolderSyncReport:
        """SELECT the folder and do what the plan says: reset, backfill, or incremental sync."""
        report = FolderSyncReport(folder_id=self.folder.id)
        checkpoint = await in_thread(self.messages.folder_checkpoint, self.folder.id)
        selected = await self.client.select(
            self.folder.name_raw, readonly=True, condstore=self.condstore
        )
        if selected.uidvalidity is None:
            # RFC 3501 §6.3.1 makes UIDVALIDITY mandatory; without it no UID can be trusted.
            raise ImapProtocolError(
                f"SELECT {self.folder.name_raw!r} returned no UIDVALIDITY; cannot sync it"
            )
        state = SelectState(
            uidvalidity=selected.uidvalidity,
            uidnext=selected.uidnext,
            exists=int(selected.exists or 0),
            highestmodseq=selected.highestmodseq if self.condstore else None,
        )
        plan = plan_folder_sync(checkpoint, state, condstore=self.condstore, qresync=self.qresync)
        report.kind = plan.kind
        if plan.kind == "reset":
            uidnext = state.uidnext or await self._uidnext_fallback()
            await in_thread(
                self.messages.reset_folder,
                self.folder.id,
                uidvalidity=state.uidvalidity,
                uidnext=uidnext,
                highestmodseq=state.highestmodseq,
                exists_count=state.exists,
            )
            checkpoint = await in_thread(self.messages.folder_checkpoint, self.folder.id)
        if plan.kind in ("reset", "backfill"):
            await self._backfill(checkpoint, report, max_batches=max_batches)
        elif plan.kind in ("condstore", "fallback"):
            await self._incremental(checkpoint, state, plan.kind, plan.use_vanished, report)
        else:
            report.done = True
        return report

    async def _uidnext_fallback(self) -> int:
        # Some servers omit UIDNEXT from SELECT (it is only "should" in RFC 3501 §6.3.1).
        uids = _uids(await self.client.uid_search("ALL"))
        return max(uids, default=0) + 1

    # -- backfill ------------------------------------------------------------------------------

    async def _backfill(
        self, checkpoint: FolderCheckpoint, report: FolderSyncReport, *, max_batches: int | None
    ) -> None:
        since = imap_date(window_start(self.today, self.settings.window_days))
        candidates = _uids(await self.client.uid_search(f"SINCE {since}"))
        known = await in_thread(self.messages.location_flags, self.folder.id)
        covered = checkpoint.uidnext
        low = checkpoint.backfill_low_uid
        first = plan_backfill_batch(
            candidates, low_uid=low, covered_below=covered, known_uids=known, batch_size=1
        )
        total_left = len(first.uids) + first.remaining_after
        if low is None:
            await in_thread(
                self.messages.update_checkpoint,
                self.folder.id,
                FolderCheckpointUpdate(backfill_total=total_left),
            )
        # Three-stage pipeline. The event loop fetches batch N+2 while a worker thread parses
        # batch N+1 (pure Python, holds the GIL) and another writes the blobs of batch N and
        # commits it (zstd, file IO and the database release the GIL, so this overlaps for
        # real on two cores). Commits stay strictly in batch order: the cursor never covers a
        # batch that is not stored.
        in_flight: list[asyncio.Task[None]] = []
        previous: asyncio.Task[None] | None = None
        planned = 0
        finished = False
        try:
            while max_batches is None or planned < max_batches:
                batch = plan_backfill_batch(
                    candidates,
                    low_uid=low,
                    covered_below=covered,
                    known_uids=known,
                    batch_size=self.batch_size,
                )
                if not batch.uids:
                    finished = True
                    break
                meta = await self._fetch_meta(batch.uids, report)
                chunks = _split_by_bytes(batch.uids, meta.body_sizes(), self.max_batch_bytes)
                for index, chunk in enumerate(chunks):
                    if max_batches is not None and planned >= max_batches:
                        break
                    # Each chunk is a batch of its own: its bodies, its commit, and the cursor
                    # at its lowest UID (UIDs run newest first, so the cursor still only falls).
                    fetched = await self._fetch_bodies(chunk, meta, report)
                    last = index == len(chunks) - 1
                    upd = FolderCheckpointUpdate(
                        backfill_low_uid=chunk[-1],
                        backfill_done=(batch.done and last) or None,
                        backfill_done_increment=len(chunk),
                    )
                    preparing = asyncio.create_task(self._prepare_stage(fetched, report, bulk=True))
                    previous = asyncio.create_task(
                        self._write_and_commit(preparing, previous, fetched, upd, report)
                    )
                    in_flight.append(previous)
                    planned += 1
                    low = chunk[-1]
                    # Bounded: at most ``pipeline_depth`` batches behind the fetch (memory),
                    # and a failed commit stops the fetching at once.
                    while len(in_flight) > self.pipeline_depth or (
                        in_flight and in_flight[0].done()
                    ):
                        await in_flight.pop(0)
                if low != batch.next_low_uid:
                    break  # max_batches reached inside the plan's batch
                if batch.done:
                    finished = True
                    break
            while in_flight:
                await in_flight.pop(0)
            if finished:
                await in_thread(
                    self.messages.update_checkpoint,
                    self.folder.id,
                    FolderCheckpointUpdate(backfill_done=True),
                )
                report.done = True
        finally:
            # Failing (or cancelled) on the fetch side: let batches in flight finish or fail on
            # their own (each commit is atomic), but never leave them running unobserved.
            for task in in_flight:
                with contextlib.suppress(BaseException):
                    await task

    async def _prepare_stage(
        self, fetched: _FetchedBatch, report: FolderSyncReport, *, bulk: bool = False
    ) -> dict[int, MessageData]:
        """Parse the batch's bodies and write their blobs: in a worker thread, or in the
        process pool when there is one (see :func:`prepare_messages`). ``bulk`` (backfill)
        makes the blobs durable with ``syncfs`` however few they are."""
        uids = list(fetched.raws)
        if not uids:
            return {}
        jobs = [
            PrepareJob(
                blob_root=str(self.blobs.root),
                folder=self.folder,
                builder=self.builder,
                dedupe=self.dedupe,
                uids=part,
                raws=[fetched.raws[u] for u in part],
                keys=[fetched.keys[u] for u in part],
                metas=[slim_meta(fetched.meta[u]) for u in part],
                bulk=bulk,
            )
            for part in self._prepare_chunks(uids, bulk)
        ]
        if not self._use_pool(len(uids), bulk):
            # A worker thread, not the event loop: the loop keeps reading the next batch off
            # the socket meanwhile (zstd, hashing, file writes and socket reads release the GIL).
            done = [await self._prepare_job(jobs[0], None)]
        else:
            done = list(
                await asyncio.gather(*(self._prepare_job(j, self.parse_executor) for j in jobs))
            )
        out: dict[int, MessageData] = {}
        for chunk in done:
            out.update(chunk.data)
            report.seconds_parse += chunk.seconds_parse
            report.seconds_blobs += chunk.seconds_blobs
        return out

    async def _prepare_job(self, job: PrepareJob, executor: Executor | None) -> PreparedChunk:
        """One job in the pool (``executor``) or a thread. A job that fails as a whole (a
        worker died on a message, the pool broke, a bug) is prepared again message by message
        in a thread, so that only the message at fault is stored without its content."""
        try:
            if executor is None:
                return await in_thread(prepare_messages, job, self.blobs)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, prepare_messages, job)
        except Exception:
            return await in_thread(prepare_one_by_one, job, self.blobs)

    def _use_pool(self, count: int, bulk: bool) -> bool:
        """The process pool for backfill batches and large catch-ups; a thread for the few
        messages live sync brings (no pickling round trip on the way to the timeline)."""
        return self.parse_executor is not None and (bulk or count > _POOL_MIN_MESSAGES)

    def _prepare_chunks(self, uids: list[int], bulk: bool) -> list[list[int]]:
        """One chunk in a thread; in a process pool, two (the pool's workers share them)."""
        if not self._use_pool(len(uids), bulk) or len(uids) < 2:
            return [uids]
        half = (len(uids) + 1) // 2
        return [uids[:half], uids[half:]]

    async def _write_and_commit(
        self,
        preparing: asyncio.Task[dict[int, MessageData]],
        previous: asyncio.Task[None] | None,
        fetched: _FetchedBatch,
        upd: FolderCheckpointUpdate,
        report: FolderSyncReport,
    ) -> None:
        items = self._build_items(fetched, await preparing)
        # The raw bytes are blobs now: let them go while this batch waits for its turn to
        # commit (up to ``pipeline_depth`` batches of them would otherwise stay in memory).
        fetched.raws.clear()
        if previous is not None:
            await previous  # in order; a failed predecessor fails this batch too
        started = time.perf_counter()
        result = await in_thread(
            self.messages.ingest_batch,
            self.folder.account_id,
            self.folder.id,
            items,
            upd,
            chooser=self.chooser,
        )
        report.seconds_store += time.perf_counter() - started
        report.batches += 1
        report.created += len(result.created)
        report.linked += len(result.linked)
        report.skipped += len(result.already_present)
        report.uids.extend(i.uid for i in items)

    # -- fetching ------------------------------------------------------------------------------

    def _meta_items(self) -> str:
        items = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[HEADER]"]
        if self.condstore:
            items.append("MODSEQ")
        if self.gmail:
            items += ["X-GM-MSGID", "X-GM-THRID"]
        return "(" + " ".join(items) + ")"

    async def _fetch(
        self, uids: Sequence[int], items: str, report: FolderSyncReport
    ) -> dict[int, FetchResponse]:
        started = time.perf_counter()
        out: dict[int, FetchResponse] = {}
        async for resp in self.client.uid_fetch(list(uids), items):
            if resp.uid is None:
                continue  # an unsolicited FETCH (a flag change) without UID: not ours
            for body in resp.sections.values():
                if body:
                    report.bytes_fetched += len(body)
            prev = out.get(resp.uid)
            if prev is None:
                out[resp.uid] = resp
            else:
                # Servers may split one message's items over several FETCH responses.
                prev.sections.update(resp.sections)
                prev.dropped.update(resp.dropped)
                for name in ("flags", "internaldate", "size", "bodystructure", "modseq"):
                    if getattr(resp, name) is not None:
                        setattr(prev, name, getattr(resp, name))
        report.seconds_fetch += time.perf_counter() - started
        return out

    async def _fetch_items(
        self, uids: Sequence[int], report: FolderSyncReport
    ) -> list[IncomingMessage]:
        """Fetch and prepare one batch (no pipelining: live sync's small batches)."""
        return await self._prepare(await self._fetch_batch(uids, report), report)

    async def _fetch_batch(self, uids: Sequence[int], report: FolderSyncReport) -> _FetchedBatch:
        """The IMAP half of a batch: metadata and headers, then bodies of unknown messages."""
        return await self._fetch_bodies(uids, await self._fetch_meta(uids, report), report)

    async def _fetch_meta(self, uids: Sequence[int], report: FolderSyncReport) -> _BatchMeta:
        """Metadata and header blocks of ``uids``, their dedupe keys, and which are known."""
        meta = await self._fetch(uids, self._meta_items(), report)
        present = [u for u in uids if u in meta]  # expunged since the SEARCH: simply gone
        headers = _LazyHeaders({u: meta[u].sections.get("HEADER") or b"" for u in present})
        started = time.perf_counter()
        keys = await in_thread(self._header_keys, present, meta, headers)
        report.seconds_parse += time.perf_counter() - started
        known = await self._linkable(present, keys, headers)
        return _BatchMeta(
            present=present,
            meta=meta,
            keys=keys,
            known=known,
            headers=headers,
            limit=self.settings.max_message_bytes,
        )

    async def _linkable(
        self, uids: Sequence[int], keys: dict[int, str], headers: _LazyHeaders
    ) -> set[str]:
        """The keys among ``keys`` whose messages the account has already, so that those UIDs
        only gain a location and no body is fetched. Only where the header block gives the
        very key the parser would give the whole message:

        * never a fallback hash (``h:``): from the header block it leaves out the body and
          the attachments, so it can equal the key of another message stored already
          (no Message-ID, same headers: bounces, broken multiparts); those are fetched and
          the whole message's key decides at ingest;
        * a Message-ID key only when the stored message has the same sender and a Date
          within a day (:func:`same_message`); otherwise the UID takes its
          :func:`distinct_key`, itself linkable when that other message is stored.

        ``keys`` is updated in place for the UIDs that reuse another message's Message-ID."""
        account = self.folder.account_id
        wanted = {k for k in keys.values() if not k.startswith("h:")}
        stored = await in_thread(self.messages.stored_key_facts, account, wanted)
        known: set[str] = set()
        moved: dict[int, KeyFacts] = {}
        for u in uids:
            key = keys[u]
            theirs = stored.get(key)
            if theirs is None:
                continue
            if reusable_key(key):
                mine = header_key_facts(headers.blocks[u]) or key_facts(headers[u])
                if not same_message(theirs, mine):
                    keys[u] = distinct_key(key, mine)
                    moved[u] = mine
                    continue
            known.add(key)
        if moved:
            alt = {keys[u] for u in moved}
            found = await in_thread(self.messages.stored_key_facts, account, alt)
            for u, mine in moved.items():
                theirs = found.get(keys[u])
                if theirs is not None and same_message(theirs, mine):
                    known.add(keys[u])
        return known

    def _header_keys(
        self, uids: Sequence[int], meta: Mapping[int, FetchResponse], headers: _LazyHeaders
    ) -> dict[int, str]:
        """Each UID's dedupe key from its header block: from the Message-ID alone where that
        decides it (``header_key``), else from the parsed header block."""
        keys: dict[int, str] = {}
        for u in uids:
            gm = meta[u].gm_msgid
            key = self.header_key(headers.blocks[u], gm) if self.header_key else None
            keys[u] = key if key is not None else self.dedupe(headers[u], gm)
        return keys

    async def _fetch_bodies(
        self, uids: Sequence[int], m: _BatchMeta, report: FolderSyncReport
    ) -> _FetchedBatch:
        """Bodies of the messages among ``uids`` (a subset of ``m``'s) not stored yet: whole up
        to ``settings.max_message_bytes``, text parts and BODYSTRUCTURE above."""
        wanted = set(uids)
        present = [u for u in m.present if u in wanted]
        limit = m.limit
        new = [u for u in present if m.keys[u] not in m.known]
        small = [u for u in new if (m.meta[u].size or 0) <= limit]
        large = [u for u in new if (m.meta[u].size or 0) > limit]
        raws: dict[int, bytes] = {}
        if small:
            bodies = await self._fetch(small, "(UID BODY.PEEK[])", report)
            raws = {u: bodies[u].sections.get("") or b"" for u in small if u in bodies}
            # A body above the limit whatever RFC822.SIZE claimed: the client read and dropped
            # it, so it takes the path of a message too big to download whole.
            for u in [u for u in small if u in bodies and "" in bodies[u].dropped]:
                del raws[u]
                m.meta[u].size = max(m.meta[u].size or 0, bodies[u].dropped[""])
                large.append(u)
        large_data: dict[int, MessageData] = {}
        for uid in large:
            # No Message-ID: the header-only hash could be another stored message's key.
            m.keys[uid] = unfetched_body_key(m.keys[uid], m.meta[uid].size)
            large_data[uid] = await self._large_message(
                uid, m.keys[uid], m.meta[uid], m.headers[uid], report
            )
        return _FetchedBatch(
            present=present,
            meta={u: m.meta[u] for u in present},
            keys={u: m.keys[u] for u in present},
            known=m.known,
            raws=raws,
            ready=large_data,
            headers=m.headers,
        )

    async def _prepare(
        self, fetched: _FetchedBatch, report: FolderSyncReport
    ) -> list[IncomingMessage]:
        """The CPU and disk half of a batch: parse bodies, write blobs, build rows."""
        return self._build_items(fetched, await self._prepare_stage(fetched, report))

    def _build_items(
        self, fetched: _FetchedBatch, prepared: Mapping[int, MessageData]
    ) -> list[IncomingMessage]:
        data = {**fetched.ready, **prepared}
        items: list[IncomingMessage] = []
        for uid in fetched.present:
            m = fetched.meta[uid]
            msg_data = data.get(uid)
            if msg_data is None:
                if fetched.keys[uid] not in fetched.known:
                    continue  # expunged between the two FETCHes: nothing to store
                # Already stored from another folder: only the location is new.
                msg_data = self._link_data(fetched, uid)
            items.append(
                IncomingMessage(
                    uid=uid,
                    flags=normalize_flags(m.flags or ()),
                    data=msg_data,
                    modseq=m.modseq,
                )
            )
        return items

    def _link_data(self, fetched: _FetchedBatch, uid: int) -> MessageData:
        """The data for a message already stored: its key, and from a Sent folder what only
        the sender's copy has (Bcc; that it is outbound), taken from the header block already
        fetched. The store adds those to the row when the received copy came first."""
        key = fetched.keys[uid]
        if self.folder.role != "sent" or uid not in fetched.headers.blocks:
            return MessageData(dedupe_key=key)
        header = fetched.headers[uid]
        return MessageData(
            dedupe_key=key,
            bcc=tuple(address_data(a) for a in header.bcc),
            direction="outbound",
            own_addresses=self.folder.account_addresses,
        )

    async def _large_message(
        self,
        uid: int,
        key: str,
        meta: FetchResponse,
        header: ParsedMessage,
        report: FolderSyncReport,
    ) -> MessageData:
        """Above max_message_bytes: headers, BODYSTRUCTURE and the text parts only. A server
        that refuses either FETCH for this message leaves it with its headers and a defect."""
        defects = [*header.defects, "message above the size limit: body not downloaded"]
        bs: BodyStructure | None = None
        try:
            structure = await self._fetch([uid], "(UID BODYSTRUCTURE)", report)
        except ImapCommandError as exc:
            defects.append(f"the server refused its structure: {str(exc)[:200]}")
        else:
            body = structure.get(uid)
            bs = body.bodystructure if body is not None else None
        text: str | None = None
        html: str | None = None
        attachments: tuple[AttachmentData, ...] = ()
        if bs is not None:
            if _cut_structure(bs):
                defects.append("MIME structure nested too deeply: inner parts not listed")
            parts = text_parts(bs)
            # A text part itself above the limit is not fetched either (a 2 GB "text" part).
            wanted = [p for p in parts if p.size <= self.settings.max_message_bytes]
            got: FetchResponse | None = None
            if wanted:
                items = "(UID " + " ".join(f"BODY.PEEK[{p.section}]" for p in wanted) + ")"
                try:
                    got = (await self._fetch([uid], items, report)).get(uid)
                except ImapCommandError as exc:
                    defects.append(f"the server refused its text: {str(exc)[:200]}")
                for p in wanted:
                    content = got.sections.get(p.section) if got is not None else None
                    if content is None:
                        continue
                    decoded = parse_message(_synthetic_part(p, content))
                    if p.subtype == "plain" and text is None:
                        text = decoded.text
                    elif p.subtype == "html" and html is None:
                        html = decoded.html
            attachments = tuple(attachment_metadata(bs, skip=wanted))
        merged = ParsedMessage(
            message_id=header.message_id,
            in_reply_to=header.in_reply_to,
            references=header.references,
            subject=header.subject,
            date=header.date,
            from_=header.from_,
            sender=header.sender,
            reply_to=header.reply_to,
            to=header.to,
            cc=header.cc,
            bcc=header.bcc,
            text=text,
            html=html,
            snippet=_snippet(text, html),
            attachments=(),
            defects=tuple(defects),
            headers=header.headers,
        )
        try:
            return self.builder.build(
                merged,
                dedupe_key=key,
                fetch=meta,
                folder=self.folder,
                raw_blob_key=None,
                attachments=attachments,
                truncated=True,
            )
        except Exception as exc:  # one message never stops the batch (poison mail)
            why = f"could not be read: {type(exc).__name__}: {str(exc)[:200]}"
            return replace(unreadable_message(key, meta, None, why), truncated=True)

    # -- incremental (live) ----------------------------------------------------------------------

    async def _incremental(
        self,
        checkpoint: FolderCheckpoint,
        state: SelectState,
        kind: str,
        use_vanished: bool,
        report: FolderSyncReport,
    ) -> None:
        stored = await in_thread(self.messages.location_flags, self.folder.id)
        covered = checkpoint.uidnext or 1
        modseqs: dict[int, int] = {}
        if kind == "condstore":
            changed: dict[int, tuple[str, ...]] = {}
            stream = self.client.uid_fetch(
                "1:*", "(UID FLAGS)", changedsince=checkpoint.highestmodseq, vanished=use_vanished
            )
            async for resp in stream:
                if resp.uid is None:
                    continue
                changed[resp.uid] = resp.flags or ()
                if resp.modseq is not None:
                    modseqs[resp.uid] = resp.modseq
            # Without QRESYNC, CONDSTORE reports no expunges: diff the UID set (RFC 7162 §3.1).
            vanished = list(getattr(stream, "vanished", ()) or ()) if use_vanished else []
            remote_uids: list[int] | None = None
            if not use_vanished:
                remote_uids = await self._surviving(stored) + await self._new_uids(covered)
            changes = changes_from_condstore(
                changed,
                stored_flags=stored,
                covered_below=covered,
                vanished=vanished,
                remote_uids=remote_uids,
                new_highestmodseq=state.highestmodseq,
                new_uidnext=state.uidnext,
            )
        else:
            # Only the UIDs that matter: the stored ones (flags, or gone) and those at or above
            # the covered bound (new). Old mail outside the window is never re-read, so a poll
            # of a 100,000-message folder costs what the synced window costs.
            remote: dict[int, tuple[str, ...]] = {}
            if stored:
                async for resp in self.client.uid_fetch(sorted(stored), "(UID FLAGS)"):
                    if resp.uid is not None and resp.uid in stored:
                        remote[resp.uid] = resp.flags or ()
            for uid in await self._new_uids(covered):
                remote.setdefault(uid, ())
            changes = changes_from_fallback(
                remote, stored_flags=stored, covered_below=covered, new_uidnext=state.uidnext
            )
        await self._apply(changes, state, modseqs, report)

    async def _new_uids(self, covered: int) -> list[int]:
        """UIDs at or above ``covered``. ``UID SEARCH UID n:*`` always matches the highest UID,
        even below n (RFC 3501 §6.4.8: ``*`` is the largest UID in use), so filter."""
        return [u for u in _uids(await self.client.uid_search(f"UID {covered}:*")) if u >= covered]

    async def _surviving(self, stored: Mapping[int, object]) -> list[int]:
        """Which stored UIDs the server still has."""
        if not stored:
            return []
        uid_set = format_sequence_set(sorted(stored))
        return _uids(await self.client.uid_search(f"UID {uid_set}"))

    async def _apply(
        self,
        changes: FolderChanges,
        state: SelectState,
        modseqs: dict[int, int],
        report: FolderSyncReport,
    ) -> None:
        # New mail first, in batches, each with the covered bound moved past it; the flag and
        # expunge part commits last together with HIGHESTMODSEQ so a crash replays it whole.
        new = sorted(changes.new_uids)
        for start in range(0, len(new), self.batch_size):
            chunk = new[start : start + self.batch_size]
            items = await self._fetch_items(chunk, report)
            result = await in_thread(
                self.messages.ingest_batch,
                self.folder.account_id,
                self.folder.id,
                items,
                FolderCheckpointUpdate(uidnext=chunk[-1] + 1),
                chooser=self.chooser,
            )
            report.batches += 1
            report.created += len(result.created)
            report.linked += len(result.linked)
            report.skipped += len(result.already_present)
            report.uids.extend(chunk)
        # The covered bound only moves forward: to SELECT's UIDNEXT, or past the newest fetched.
        candidates = [state.uidnext or 0, (new[-1] + 1) if new else 0, changes.uidnext or 0]
        uidnext = max(candidates) or None
        updated, removed = await in_thread(
            lambda: self.messages.apply_remote_changes(
                self.folder.id,
                flag_updates=changes.flag_updates,
                removed_uids=changes.removed_uids,
                modseqs=modseqs,
                checkpoint=FolderCheckpointUpdate(
                    uidnext=uidnext,
                    highestmodseq=state.highestmodseq,
                    exists_count=state.exists,
                ),
            )
        )
        report.flag_updates += updated
        report.removed += removed
        report.done = True


class _LazyHeaders(dict[int, ParsedMessage]):
    """Header blocks by UID, parsed on first use: most messages' keys come from the Message-ID
    alone, and only a Sent copy of a stored message or a message above the size limit needs
    the parsed headers."""

    def __init__(self, blocks: dict[int, bytes]) -> None:
        super().__init__()
        self.blocks = blocks

    def __missing__(self, uid: int) -> ParsedMessage:
        parsed = parse_headers(self.blocks[uid])
        self[uid] = parsed
        return parsed


@dataclass(slots=True)
class _BatchMeta:
    """The metadata FETCH of a batch: enough to decide which bodies to download, and how big."""

    present: list[int]
    meta: dict[int, FetchResponse]
    keys: dict[int, str]
    known: set[str]
    headers: _LazyHeaders
    limit: int

    def body_sizes(self) -> dict[int, int]:
        """Bytes each UID's body download will cost (0: known already, gone, or too large)."""
        return {
            u: size
            for u in self.present
            if self.keys[u] not in self.known and 0 < (size := self.meta[u].size or 0) <= self.limit
        }


def _split_by_bytes(uids: Sequence[int], sizes: Mapping[int, int], cap: int) -> list[list[int]]:
    """Cut ``uids`` (in order) into runs whose ``sizes`` add up to at most ``cap`` bytes; a run
    always holds at least one UID, so a message bigger than ``cap`` goes alone."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if current and size and total + size > cap:
            chunks.append(current)
            current, total = [], 0
        current.append(uid)
        total += size
    if current:
        chunks.append(current)
    return chunks


@dataclass(slots=True)
class _FetchedBatch:
    """What the IMAP half of a batch produced, for the CPU/disk half."""

    present: list[int]
    meta: dict[int, FetchResponse]
    keys: dict[int, str]
    known: set[str]
    raws: dict[int, bytes]
    ready: dict[int, MessageData]
    headers: _LazyHeaders = field(default_factory=lambda: _LazyHeaders({}))


def _snippet(text: str | None, html: str | None) -> str:
    if text:
        return make_snippet(text)
    if html:
        return make_snippet(html_to_text(html))
    return ""


def _uids(result: Any) -> list[int]:
    """UIDs from whatever ``uid_search`` returned: ints, a SEARCH or an ESEARCH response."""
    if result is None:
        return []
    numbers = getattr(result, "numbers", None)
    if numbers is not None:
        return [int(n) for n in numbers]
    all_ = getattr(result, "all", None)
    if all_ is not None:
        return [int(n) for n in all_]
    return [int(n) for n in result]
