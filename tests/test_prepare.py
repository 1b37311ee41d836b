"""correspond.sync.prepare: a backfill batch parsed and written in a real spawn pool process
(what ``correspond sync`` and ``serve`` run by default) gives what the thread path gives."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

from correspond.imap.types import FetchResponse
from correspond.mail.dedupe import header_dedupe_key
from correspond.store.blobs import BlobStore, blob_key
from correspond.sync.prepare import (
    FolderRef,
    MessageBuilder,
    PrepareJob,
    default_dedupe,
    prepare_messages,
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
