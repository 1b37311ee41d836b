"""correspond.sync.prepare: a backfill batch parsed and written in a real spawn pool process
(what ``correspond sync`` and ``serve`` run by default) gives what the thread path gives."""

from __future__ import annotations

import base64
import multiprocessing
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from correspond.imap.types import FetchResponse
from correspond.mail.dedupe import header_dedupe_key
from correspond.mail.parse import ParsedMessage
from correspond.settings import Settings
from correspond.store.blobs import BlobStore, blob_key
from correspond.store.message_data import MessageData
from correspond.sync.engine import default_thread_chooser
from correspond.sync.folder_sync import FolderSyncer
from correspond.sync.prepare import (
    FolderRef,
    MessageBuilder,
    PrepareJob,
    default_dedupe,
    prepare_messages,
    unreadable_message,
)
from correspond.sync.runner import make_parse_executor
from correspond.testing.mail import plain_message

WHEN = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
PDF = b"%PDF-1.4 " + bytes(range(256)) * 40


def with_attachment(mid: str) -> bytes:
    body = base64.encodebytes(PDF).replace(b"\n", b"\r\n")
    return (
        b"From: Ann <ann@customer.test>\r\nTo: bob@example.test\r\n"
        b"Subject: Contract\r\nDate: Mon, 2 Nov 2026 09:30:00 +0000\r\n"
        + f"Message-ID: <{mid}>\r\n".encode()
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nSigned copy attached.\r\n"
        b'--b\r\nContent-Type: application/pdf; name="contract.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--b--\r\n"
    )


def job(root: Path) -> PrepareJob:
    raws = [
        plain_message("p1@example.test", when=WHEN, subject="Hello", body="First.\r\n"),
        with_attachment("a1@example.test"),
        # No Message-ID: the key is the fallback hash of the whole message.
        b"From: c@x.test\r\nTo: bob@example.test\r\nSubject: no id\r\n\r\nBody only.\r\n",
    ]
    keys = [header_dedupe_key(r) or "h:header-pass" for r in raws]
    metas = [
        FetchResponse(seq=n + 1, uid=10 + n, flags=(), internaldate=WHEN, size=len(r))
        for n, r in enumerate(raws)
    ]
    return PrepareJob(
        blob_root=str(root),
        folder=FolderRef(
            id=1,
            account_id=1,
            name_raw=b"INBOX",
            role="inbox",
            account_addresses=frozenset({"bob@example.test"}),
        ),
        builder=MessageBuilder(),
        dedupe=default_dedupe,
        uids=[10, 11, 12],
        raws=raws,
        keys=keys,
        metas=metas,
        bulk=True,
    )


def test_a_pool_process_prepares_what_a_thread_does(tmp_path: Path) -> None:
    in_thread = prepare_messages(job(tmp_path / "a"), BlobStore(tmp_path / "a"))
    executor = make_parse_executor(1)
    assert executor is not None
    try:
        in_pool = executor.submit(prepare_messages, job(tmp_path / "b")).result(timeout=120)
    finally:
        executor.shutdown(wait=True)
    assert in_pool.data == in_thread.data
    data = dict(in_pool.data)
    assert [u for u, _ in in_pool.data] == [10, 11, 12]
    assert data[10].dedupe_key == "mid:p1@example.test"
    assert data[12].dedupe_key.startswith("h:") and data[12].dedupe_key != "h:header-pass"
    assert data[11].own_addresses == frozenset({"bob@example.test"})
    assert data[11].counterparts == ("ann@customer.test",)
    (pdf,) = data[11].attachments
    assert pdf.filename == "contract.pdf" and pdf.size == len(PDF)
    # The worker wrote the blobs: the raw message and the decoded attachment.
    blobs = BlobStore(tmp_path / "b")
    assert pdf.blob_key == blob_key(PDF) and blobs.get(pdf.blob_key) == PDF
    assert blobs.get(data[11].raw_blob_key or "") == job(tmp_path).raws[1]


@dataclass(frozen=True, slots=True)
class FragileBuilder(MessageBuilder):
    """Fails on the message with subject "Contract": in a pool process the worker dies
    (what a hard crash or the kernel's OOM killer does), in the parent it raises."""

    def build(self, parsed: ParsedMessage, **kw: Any) -> MessageData:  # type: ignore[override]
        if parsed.subject == "Contract":
            if multiprocessing.parent_process() is not None:
                os._exit(3)
            raise ValueError("builder bug")
        return MessageBuilder.build(self, parsed, **kw)


def test_one_message_that_fails_the_builder_is_kept_to_itself(tmp_path: Path) -> None:
    fragile = replace(job(tmp_path), builder=FragileBuilder())
    data = dict(prepare_messages(fragile, BlobStore(tmp_path)).data)
    assert data[10].text == "First.\r\n".replace("\r\n", "\n")
    bad = data[11]
    assert bad.dedupe_key == "mid:a1@example.test" and bad.size == len(fragile.raws[1])
    assert bad.defects == ("could not be read: ValueError: builder bug",)
    assert BlobStore(tmp_path).get(bad.raw_blob_key or "") == fragile.raws[1]
    assert data[12].subject == "no id"


async def test_a_parse_worker_that_dies_loses_only_its_message(tmp_path: Path) -> None:
    fragile = replace(job(tmp_path), builder=FragileBuilder())
    executor = make_parse_executor(1)
    assert executor is not None
    syncer = FolderSyncer(
        None,  # type: ignore[arg-type]  # preparing needs no IMAP or database
        None,  # type: ignore[arg-type]
        BlobStore(tmp_path),
        Settings(data_dir=tmp_path),
        fragile.folder,
        chooser=default_thread_chooser,
        dedupe=default_dedupe,
        builder=fragile.builder,
    )
    try:
        chunk = await syncer._prepare_job(fragile, executor)
    finally:
        executor.shutdown(wait=True)
    data = dict(chunk.data)
    assert sorted(data) == [10, 11, 12]
    assert data[10].subject == "Hello" and data[12].subject == "no id"
    assert data[11].defects == ("could not be read: ValueError: builder bug",)


def test_an_unreadable_message_without_message_id_keeps_a_key_of_its_own(tmp_path: Path) -> None:
    # The header-only hash could be another stored message's key: the raw bytes decide.
    meta = FetchResponse(seq=1, uid=1, flags=(), internaldate=WHEN, size=100)
    header_hash = "h:" + "0" * 64
    a = unreadable_message(header_hash, meta, blob_key(b"one"), "why")
    b = unreadable_message(header_hash, meta, blob_key(b"two"), "why")
    assert a.dedupe_key != b.dedupe_key and header_hash not in (a.dedupe_key, b.dedupe_key)
    assert a.dedupe_key == unreadable_message(header_hash, meta, blob_key(b"one"), "x").dedupe_key
    assert unreadable_message("mid:a@x", meta, None, "why").dedupe_key == "mid:a@x"
    assert unreadable_message(header_hash, meta, None, "why").dedupe_key != header_hash


def test_the_parse_worker_hands_over_messages_already_storable(tmp_path: Path) -> None:
    """NUL and lone surrogates are replaced in the pool process that builds the record, so the
    commit thread (which shares the GIL with fetching) does not walk every message again."""
    raw = (
        b"From: Ann <ann@customer.test>\r\nTo: bob@example.test\r\n"
        b"Subject: NUL in the body\r\nDate: Mon, 2 Nov 2026 09:30:00 +0000\r\n"
        b"Message-ID: <nul@example.test>\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        b"\r\nbefore=00after\r\n"
    )
    base = job(tmp_path)
    nul_job = replace(
        base,
        uids=[20],
        raws=[raw],
        keys=[header_dedupe_key(raw) or "h:x"],
        metas=[FetchResponse(seq=1, uid=20, flags=(), internaldate=WHEN, size=len(raw))],
    )
    executor = make_parse_executor(1)
    assert executor is not None
    try:
        prepared = executor.submit(prepare_messages, nul_job).result(timeout=120)
    finally:
        executor.shutdown(wait=True)
    ((uid, data),) = prepared.data
    assert uid == 20 and data.storable_form
    assert data.text is not None and "before\ufffdafter" in data.text
    # A record built elsewhere is not marked, and the store still makes it storable.
    assert not MessageData(dedupe_key="k", subject="a\x00b").storable_form
