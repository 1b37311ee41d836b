"""Every file of the shared dev corpus through a real Dovecot and the mirror, byte for byte.

Each file under ``../shared/corpus/dev`` (recursively, whatever it is: bounces, torture tests,
spam, 8-bit, NUL bytes, bare CR, a 200 KB header) is APPENDed verbatim to one mailbox and the
mailbox is synced. Nothing may stop the sync loop, every appended message must be stored at its
UID, and the raw blob of each must be exactly the bytes the server serves for it, which in
turn are the appended bytes up to the canonical form IMAP mandates (see :func:`canonical`).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from correspond.errors import ImapCommandError
from correspond.imap.client import ImapClient
from correspond.imap.connect import ImapEndpoint
from correspond.mail.dedupe import dedupe_key, distinct_key, key_facts, reusable_key, same_message
from correspond.mail.parse import parse_message
from correspond.store.message_tables import MessageLocationRow, MessageRow
from correspond.store.messages import AddressData, AttachmentData, MessageData, storable
from correspond.testing.dovecot import DovecotServer, ImapUser
from mirror_helpers import (
    BACKENDS,
    NOW,
    Env,
    append_many,
    audit_store,
    make_env,
    pg_engine,  # noqa: F401  (a fixture, used through make_env)
    remote_raw,
)

pytestmark = pytest.mark.dovecot


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path)


@pytest.fixture
def sqlite_env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path)


def shared_dir() -> Path:
    """``../shared`` beside the checkout, or ``CORRESPOND_SHARED_DIR`` (as tests/conftest.py)."""
    given = os.environ.get("CORRESPOND_SHARED_DIR")
    if given:
        return Path(given)
    return Path(__file__).resolve().parents[2] / "shared"


def corpus_files() -> list[Path]:
    root = shared_dir() / "corpus" / "dev"
    if not root.is_dir():
        pytest.skip(f"the shared dev corpus is absent ({root}); set CORRESPOND_SHARED_DIR")
    return sorted(p for p in root.rglob("*") if p.is_file())


def canonical(raw: bytes) -> bytes:
    """What a conforming IMAP server may serve for ``raw``.

    RFC 3501 §4.3 / RFC 5322 §2.3: message text on the wire ends lines with CRLF, and NUL is
    not allowed in it. Dovecot (maildir) stores lines with LF and serves CRLF, so a bare LF and
    a CR run before LF (``CR CR LF``) both come back as one CRLF; it replaces NUL bytes with
    0x80 (``message_header_hash``/``istream-nonuls``). A bare CR not before LF is kept.
    """
    return re.sub(rb"\r*\n", b"\r\n", raw.replace(b"\x00", b"\x80"))


async def _append_all(env: Env, files: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """APPEND each file's exact bytes (not imaplib, which rewrites line ends) to INBOX."""
    server = env.server
    client = await ImapClient.connect(
        ImapEndpoint(
            host=server.host,
            port=server.port,
            security="starttls",
            trusted_cert_pem=server.cert_pem,
        )
    )
    accepted: list[Path] = []
    rejected: list[tuple[Path, str]] = []
    try:
        await client.login(env.user.username, env.user.password)
        for path in files:
            try:
                await client.append("INBOX", path.read_bytes())
            except ImapCommandError as exc:  # a tagged NO/BAD for this message only
                rejected.append((path, str(exc)))
            else:
                accepted.append(path)
    finally:
        await client.logout()
    return accepted, rejected


async def test_every_corpus_file_is_stored_byte_exact(env: Env) -> None:
    files = corpus_files()
    accepted, rejected = await _append_all(env, files)
    # Dovecot takes any 8-bit literal (it fixes NULs itself), so nothing is expected to be
    # refused; a handful would be tolerable (and is listed), more means the test setup broke.
    assert len(rejected) <= max(3, len(files) // 100), rejected
    print(f"corpus: {len(files)} files, {len(accepted)} appended, {len(rejected)} refused")
    for path, why in rejected:
        print(f"  refused {path.name}: {why}")

    report = await env.sync()
    assert [f.error for f in report.folders if f.error] == []

    served = remote_raw(env, "INBOX")  # UIDs are given in APPEND order
    assert len(served) == len(accepted)
    uids = sorted(served)
    normalised = 0
    for uid, path in zip(uids, accepted, strict=True):
        appended = path.read_bytes()
        assert served[uid] == canonical(appended), path
        normalised += served[uid] != appended
    # Most of the corpus is LF-terminated (only ~230 files are CRLF): those are the changes.
    print(f"corpus: {normalised} messages served in canonical form (CRLF, no NUL)")

    with Session(env.messages.engine) as s:
        stored = {
            int(r.uid): r
            for r in s.execute(
                select(
                    MessageLocationRow.uid,
                    MessageRow.id,
                    MessageRow.dedupe_key,
                    MessageRow.raw_blob_key,
                    MessageRow.truncated,
                )
                .join(MessageRow, MessageRow.id == MessageLocationRow.message_id)
                .where(MessageLocationRow.folder_id == env.folder("inbox").id)
            )
        }
    # Every appended message is stored, at its UID, under the key the pure function gives it,
    # or, when another message took that Message-ID first, under its distinct key.
    assert sorted(stored) == uids
    parsed = {uid: parse_message(served[uid]) for uid in uids}
    expected_keys = {uid: r.dedupe_key for uid, r in stored.items()}
    for uid in uids:
        pure = dedupe_key(parsed[uid])
        allowed = (
            {pure, distinct_key(pure, key_facts(parsed[uid]))} if reusable_key(pure) else {pure}
        )
        assert expected_keys[uid] in allowed, (uid, expected_keys[uid], pure)
    assert env.messages.count_messages(env.account.id) == len(set(expected_keys.values()))
    # Messages under one key are one message by the rule: each has the sender and a Date
    # within a day of the one stored (whose raw the row keeps).
    for uid in uids:
        kept = env.blobs.get(stored[uid].raw_blob_key or "")
        if reusable_key(expected_keys[uid]):
            assert same_message(key_facts(parse_message(kept)), key_facts(parsed[uid])), uid

    by_key: dict[str, set[bytes]] = {}
    for uid in uids:
        by_key.setdefault(expected_keys[uid], set()).add(served[uid])
    exact = 0
    merged: dict[str, int] = {}  # key kind ("mid", "h", ...) -> UIDs sharing it with other bytes
    for uid in uids:
        row = stored[uid]
        assert not row.truncated and row.raw_blob_key is not None, uid
        blob = env.blobs.get(row.raw_blob_key)
        if len(by_key[row.dedupe_key]) == 1:
            assert blob == served[uid], (uid, row.dedupe_key)
            exact += 1
        else:
            # Different bytes under one key: one CRM message, whose raw is one of them.
            assert blob in by_key[row.dedupe_key], (uid, row.dedupe_key)
            kind = row.dedupe_key.split(":", 1)[0]
            merged[kind] = merged.get(kind, 0) + 1
    print(f"corpus: {exact} UIDs byte-exact; sharing a key with other bytes: {merged}")
    # Test fixtures reuse Message-IDs (variants of one message: CRLF/LF twins, "broken" copies):
    # with the same sender and Date those are one message, so they are one CRM row (fixtures
    # that reuse an id for another sender or day are rows of their own). Fixture fragments with
    # no Message-ID, Date, From or text collide on the fallback hash (see
    # test_messages_without_message_id_that_differ_stay_apart); both are bounded here.
    assert merged.get("mid", 0) <= len(uids) // 4
    assert merged.get("h", 0) <= len(uids) // 10
    assert set(merged) <= {"mid", "h"}
    assert exact + sum(merged.values()) == len(uids)
    assert audit_store(env).problems == {}


# --- what the corpus found ------------------------------------------------------------------------


def _nul_message() -> bytes:
    text = base64.b64encode(b"before\x00after \xed\xa0\x80 end")  # NUL, and a UTF-8 surrogate
    return (
        b"Message-ID: <nul@example.test>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
        b"From: Eve <eve@example.test>\r\nTo: bob@example.test\r\nSubject: nul inside\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + text + b"\r\n"
        b"--B\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\n" + base64.b64encode(b"<p>x\x00y</p>") + b"\r\n--B--\r\n"
    )


async def test_text_with_nul_bytes_is_stored_on_every_backend(env: Env) -> None:
    """A decoded text part holding NUL (rspamd and sisimai bounces do) used to fail the whole
    batch on PostgreSQL ("text fields cannot contain NUL"), and every retry failed alike."""
    env.server.append(env.user, "INBOX", _nul_message())
    env.server.append(env.user, "Archive", _nul_message())
    append_many(env, "INBOX", [("after-nul", NOW)])
    report = await env.sync()
    assert [f.error for f in report.folders if f.error] == []
    assert env.messages.count_messages(env.account.id) == 2
    by_subject = {m.subject: m for m in env.messages.list_messages(env.account.id)}
    detail = env.messages.get_message(by_subject["nul inside"].id)
    assert "\x00" not in (detail.text or "") and "before\ufffdafter" in (detail.text or "")
    assert "\x00" not in (detail.html or "")
    assert len(detail.locations) == 2  # the Archive copy found it by key: no duplicate
    again = await env.sync()
    assert again.created == 0
    assert audit_store(env).problems == {}


def test_storable_replaces_only_what_no_backend_takes() -> None:
    data = MessageData(
        dedupe_key="mid:a\x00b@x",
        subject="plain",
        text="t\x00\ud800",
        to=(AddressData("N\x00", "n@x"),),
        attachments=(AttachmentData(filename="f\x00", content_type="text/plain", size=1),),
    )
    fixed = storable(data)
    assert fixed.dedupe_key == "mid:a\ufffdb@x"
    assert fixed.text == "t\ufffd\ufffd"
    assert fixed.to == (AddressData("N\ufffd", "n@x"),)
    assert fixed.attachments[0].filename == "f\ufffd"
    assert fixed.subject is data.subject
    clean = MessageData(dedupe_key="mid:ok@x", text="fine", to=(AddressData(None, "a@x"),))
    assert storable(clean) is clean  # nothing copied when nothing needs fixing
    assert storable({"k": ["a", "b\x00"]}) == {"k": ["a", "b\ufffd"]}


async def test_messages_without_message_id_that_differ_stay_apart(sqlite_env: Env) -> None:
    env = sqlite_env
    for payload in (b"first attachment", b"second attachment"):
        raw = (
            b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
            b"--B\r\nContent-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="scan.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(payload)
            + b"\r\n--B--\r\n"
        )
        env.server.append(env.user, "INBOX", raw)
    await env.sync()
    assert env.messages.count_messages(env.account.id) == 2


async def test_every_corpus_file_through_the_large_message_path(env: Env) -> None:
    """With a 1 KiB limit most of the corpus takes the path for big mail (BODYSTRUCTURE, text
    parts fetched one by one, attachments as metadata): every odd structure in it must go
    through that path too, without stopping the sync."""
    env.settings = env.settings.clone(max_message_bytes=1024)
    accepted, _rejected = await _append_all(env, corpus_files())
    report = await env.sync()
    assert [f.error for f in report.folders if f.error] == []
    served = remote_raw(env, "INBOX")
    assert len(served) == len(accepted)
    keys = {uid: dedupe_key(parse_message(raw)) for uid, raw in served.items()}
    stored = env.stored("INBOX")
    assert sorted(stored) == sorted(served)
    # Big mail without a Message-ID is keyed on its headers alone (the body is not fetched),
    # so only Message-ID keys are compared exactly (a reused id: the distinct key).
    mids = {u: k for u, k in keys.items() if k.startswith("mid")}
    assert {u for u, k in stored.items() if k.startswith("mid")} == set(mids)
    for u, k in mids.items():
        facts = key_facts(parse_message(served[u]))
        assert stored[u] in (k, distinct_key(k, facts)), (u, stored[u], k)
    with Session(env.messages.engine) as s:
        rows = s.execute(
            select(MessageRow.size, MessageRow.truncated, MessageRow.raw_blob_key).where(
                MessageRow.account_id == env.account.id
            )
        ).all()
    big = [r for r in rows if r.truncated]
    assert len(big) > len(rows) // 3
    assert all(r.raw_blob_key is None and (r.size or 0) > 1024 for r in big)
    assert all(r.raw_blob_key is not None for r in rows if not r.truncated)
    assert audit_store(env).problems == {}
