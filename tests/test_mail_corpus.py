"""correspond.mail.parse on the shared real-world corpus, compared with the stdlib ``email``.

Reads ``../shared/corpus`` beside the checkout (or ``$CORRESPOND_SHARED_DIR/corpus``); skips when
it is absent. Nothing from the corpus is copied into the project.
"""

from __future__ import annotations

import email
import email.policy
import io
import os
import re
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from correspond.mail.parse import ParsedMessage, parse_message


def _shared() -> Path:
    env = os.environ.get("CORRESPOND_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


DEV = _shared() / "corpus" / "dev"

needs_corpus = pytest.mark.skipif(not DEV.is_dir(), reason=f"shared corpus not found at {DEV}")


def _files() -> list[Path]:
    if not DEV.is_dir():
        return []
    return sorted(p for p in DEV.rglob("*") if p.is_file() and p.name != "SOURCES.md")


def _norm(s: str | None) -> str:
    return " ".join((s or "").split())


@needs_corpus
def test_every_dev_file_parses_without_raising() -> None:
    files = _files()
    assert len(files) > 500  # SOURCES.md: 583 files
    slowest = 0.0
    for p in files:
        data = p.read_bytes()
        t0 = time.perf_counter()
        m = parse_message(data)
        slowest = max(slowest, time.perf_counter() - t0)
        assert isinstance(m, ParsedMessage)
        assert not any(d.startswith("parser failure") for d in m.defects), (p, m.defects)
        # Decoded values never carry a line break or NUL out of a header.
        assert all("\n" not in v and "\x00" not in v for _, v in m.headers), p
        assert "\n" not in m.subject
        if m.text is not None:
            assert "\r\n" not in m.text
    assert slowest < 2.0


@needs_corpus
def test_agreement_with_stdlib_email() -> None:
    """Subject, Message-ID, From and plain-text body agree with ``email`` (policy.default).

    Measured on the dev corpus (568 messages the stdlib can parse): subject 98.8 %, Message-ID
    99.8 %, From 98.6 %, text 93.5 % of the 539 with a text body. Nearly every disagreement is
    the stdlib being wrong: mislabelled charsets it shows as U+FFFD (Japanese bounces declared
    ISO-2022-JP but sent as UTF-8, unlabelled UTF-8), multiparts whose boundary parameter does
    not match the body (we recover the delimiter), windows-1252 vs Latin-1 for C1 bytes. The
    floors below sit a little under the measured rates.
    """
    counts = {"subject": 0, "message_id": 0, "from": 0, "text": 0}
    n = n_text = 0
    misses: dict[str, list[str]] = {k: [] for k in counts}
    for p in _files():
        if p.suffix in (".html",):
            continue
        data = p.read_bytes()
        ours = parse_message(data)
        try:
            theirs = email.message_from_bytes(data, policy=email.policy.default)
            subject = str(theirs["subject"] or "")
            mid_header = theirs["message-id"]
            mid = "".join(str(mid_header).split()).strip("<>") if mid_header else None
            from_header = theirs["from"]
            froms = [a.addr_spec.lower() for a in from_header.addresses] if from_header else []
            body = theirs.get_body(("plain",))
            text = body.get_content() if body is not None else None
        except Exception:  # the stdlib gives up on some messages; ours must not, tested above
            continue
        n += 1
        name = str(p.relative_to(DEV))
        if _norm(subject) == _norm(ours.subject):
            counts["subject"] += 1
        else:
            misses["subject"].append(name)
        if (mid or None) == ours.message_id:
            counts["message_id"] += 1
        else:
            misses["message_id"].append(name)
        if froms == [a.email.lower() for a in ours.from_]:
            counts["from"] += 1
        else:
            misses["from"].append(name)
        if text is not None or ours.text is not None:
            n_text += 1
            same = _norm(text) == _norm(ours.text)  # an empty part and no part read the same
            derived = text is None and ours.html is not None and ours.text is not None
            if same or derived:
                counts["text"] += 1
            else:
                misses["text"].append(name)
    rates = {
        "subject": counts["subject"] / n,
        "message_id": counts["message_id"] / n,
        "from": counts["from"] / n,
        "text": counts["text"] / n_text,
    }
    print(f"\nagreement with stdlib on {n} messages ({n_text} with text):")
    for key, rate in rates.items():
        print(f"  {key:<10} {rate:7.2%}  disagree: {misses[key][:8]}")
    assert n > 500
    assert rates["subject"] >= 0.97, misses["subject"]
    assert rates["message_id"] >= 0.99, misses["message_id"]
    assert rates["from"] >= 0.97, misses["from"]
    assert rates["text"] >= 0.90, misses["text"]


@needs_corpus
@pytest.mark.parametrize(
    "name",
    [
        "mailgun-flanker/torture.eml",
        "mailgun-flanker/enclosed-endless.eml",
        "mailgun-flanker/long-header.eml",
        "nodemailer-mailparser/outofmemory.eml",
        "nodemailer-mailparser/htmllargecallstack.eml",
        "nodemailer-mailparser/large_text.eml",
        "rspamd/gargantua.eml",
        "rspamd/dkim_huge_hlist.eml",
    ],
)
def test_named_hazards_are_bounded(name: str) -> None:
    """The structure bombs and oversized inputs named in corpus/injection/README.md §3-4."""
    path = DEV / name
    if not path.is_file():
        pytest.skip(f"{name} not in this corpus snapshot")
    data = path.read_bytes()
    tracemalloc.start()
    t0 = time.perf_counter()
    m = parse_message(data)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not any(d.startswith("parser failure") for d in m.defects)
    assert elapsed < 3.0
    # Work and memory proportional to the input, never to what it claims to contain.
    assert peak < 12 * len(data) + (16 << 20), (peak, len(data))


@needs_corpus
def test_path_traversal_samples_are_sanitised() -> None:
    names = []
    for sample in ("php-mime-mail-parser/m0027", "php-mime-mail-parser/m0124"):
        path = DEV / sample
        if path.is_file():
            names += [a.filename for a in parse_message(path.read_bytes()).attachments]
    if not names:
        pytest.skip("traversal samples not in this corpus snapshot")
    assert "1234.txt" in names
    assert all(
        n is None or ("/" not in n and "\\" not in n and not n.startswith(".")) for n in names
    )


def _zip_bomb(entries: int, size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(entries):
            zf.writestr(f"../../evil{i}.bin", b"\0" * size)
    return buf.getvalue()


def test_zip_bomb_attachment_is_only_measured_never_extracted() -> None:
    import base64

    bomb = _zip_bomb(20, 5 << 20)  # 100 MiB of zeroes, ~100 KB compressed
    data = (
        b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n'
        b"--z\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b'--z\r\nContent-Type: application/zip; name="../bomb.zip"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(bomb) + b"--z--\r\n"
    )
    tracemalloc.start()
    m = parse_message(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (att,) = m.attachments
    assert att.filename == "bomb.zip"
    assert att.content == bomb and att.size == len(bomb)
    assert peak < 20 * len(data)  # nothing near the 100 MiB it would inflate to


def test_rfc822_wrapped_many_times_is_bounded() -> None:
    inner = b"Subject: leaf\r\n\r\nleaf\r\n"
    for _ in range(500):
        inner = b"Content-Type: message/rfc822\r\nSubject: wrap\r\n\r\n" + inner
    t0 = time.perf_counter()
    m = parse_message(inner)
    assert time.perf_counter() - t0 < 1.0
    assert [a.filename for a in m.attachments] == ["wrap.eml"]


@needs_corpus
def test_uuencoded_parts_of_the_corpus_are_decoded() -> None:
    # Every x-uuencode part of the corpus: decoded where it carries data (the one dev file
    # has its part cut to nothing), never kept encoded with its "begin" line.
    found = 0
    for p in _files():
        data = p.read_bytes()
        if not re.search(rb"(?im)^content-transfer-encoding:\s*(x-)?uu(e|encode)\s*$", data):
            continue
        found += 1
        m = parse_message(data)
        assert not any(d.startswith("parser failure") for d in m.defects), p
        for att in m.attachments:
            assert not (att.content or b"").lstrip().startswith(b"begin "), p
    assert found >= 1
