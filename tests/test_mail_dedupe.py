"""correspond.mail.dedupe: one key per mailbox message, stable across folders and servers."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from correspond.mail.dedupe import (
    MAX_KEY_ID,
    KeyFacts,
    dedupe_key,
    distinct_key,
    header_dedupe_key,
    header_key_facts,
    key_facts,
    normalize_message_id,
    reusable_key,
    same_message,
    unfetched_body_key,
)
from correspond.mail.parse import parse_message

BASE = (
    "From: Ann <ann@example.com>\nTo: Bob <bob@example.com>\nCc: carol@example.com\n"
    "Subject: Budget 2026\nDate: Sun, 1 Mar 2026 09:00:00 +0000\n"
)


def msg(
    extra: str = "", body: str = "Hello Bob,\nthe numbers.\n", base: str = BASE, crlf: bool = True
) -> bytes:
    eol = "\r\n" if crlf else "\n"
    head = (base + extra).strip("\n").replace("\n", eol)
    return (head + eol + eol + body.replace("\n", eol)).encode()


def test_gmail_id_wins() -> None:
    p = parse_message(msg("Message-ID: <a@x>\n"))
    assert dedupe_key(p, gm_msgid=1278455344230334865) == "gm:1278455344230334865"


def test_message_id_key_normalises_the_domain_only() -> None:
    a = dedupe_key(parse_message(msg("Message-ID: <AbC.123@Mail.Example.COM>\n")))
    b = dedupe_key(parse_message(msg("Message-ID:   <AbC.123@mail.example.com>  \n")))
    c = dedupe_key(parse_message(msg("Message-ID: <abc.123@mail.example.com>\n")))
    assert a == b == "mid:AbC.123@mail.example.com"
    assert c != a  # the local part is case-sensitive (RFC 5322 §3.6.4 compares it as sent)


def test_message_id_key_ignores_everything_else() -> None:
    a = dedupe_key(parse_message(msg("Message-ID: <same@x>\n")))
    b = dedupe_key(parse_message(msg("Message-ID: <same@x>\nX-Folder: Sent\n", body="other body")))
    assert a == b == "mid:same@x"


def test_normalize_message_id() -> None:
    assert normalize_message_id("<Local.Part@EXAMPLE.org>") == "Local.Part@example.org"
    assert normalize_message_id(" no-at-sign ") == "no-at-sign"
    assert normalize_message_id("a@b@C.D") == "a@b@c.d"


def test_very_long_message_id_is_hashed() -> None:
    long_id = "x" * (MAX_KEY_ID + 10) + "@example.com"
    key = dedupe_key(parse_message(msg(f"Message-ID: <{long_id}>\n")))
    assert re.fullmatch(r"midh:[0-9a-f]{64}", key)
    same_upper_domain = long_id[: -len("example.com")] + "EXAMPLE.com"
    assert key == dedupe_key(parse_message(msg(f"Message-ID: <{same_upper_domain}>\n")))
    assert key != dedupe_key(parse_message(msg(f"Message-ID: <y{long_id}>\n")))


def test_header_hash_without_message_id() -> None:
    key = dedupe_key(parse_message(msg()))
    assert re.fullmatch(r"h:[0-9a-f]{64}", key)


def test_header_hash_is_stable_across_servers() -> None:
    """Same message as two servers store it: line ends, extra trace headers, header order."""
    a = parse_message(msg())
    reordered = (
        "Received: from mx.example by imap.example\nX-Spam-Score: 0.1\n"
        "Subject: Budget 2026\nDate: Sun, 01 Mar 2026 10:00:00 +0100\n"
        'Cc: carol@example.com\nTo: "Bob" <BOB@example.com>\n'
        "From: =?utf-8?Q?Ann?= <ann@example.com>\n"
    )
    b = parse_message(msg(base=reordered, body="Hello Bob,  \nthe numbers.", crlf=False))
    assert dedupe_key(a) == dedupe_key(b)


def test_header_hash_changes_with_content() -> None:
    base = dedupe_key(parse_message(msg()))
    assert dedupe_key(parse_message(msg(body="Different body\n"))) != base
    assert dedupe_key(parse_message(msg(base=BASE.replace("Budget 2026", "Budget 2027")))) != base
    assert dedupe_key(parse_message(msg(base=BASE.replace("09:00:00", "09:00:01")))) != base
    assert dedupe_key(parse_message(msg(base=BASE.replace("carol@", "dave@")))) != base


def test_header_hash_uses_only_the_first_4k_of_body() -> None:
    head = "x" * 5000
    a = dedupe_key(parse_message(msg(body=head + " tail one")))
    b = dedupe_key(parse_message(msg(body=head + " tail two")))
    assert a == b


def test_unparseable_date_still_contributes() -> None:
    a = dedupe_key(
        parse_message(msg(base=BASE.replace("Sun, 1 Mar 2026 09:00:00 +0000", "garbage one")))
    )
    b = dedupe_key(
        parse_message(msg(base=BASE.replace("Sun, 1 Mar 2026 09:00:00 +0000", "garbage two")))
    )
    assert a != b


def test_garbage_message_still_has_a_key() -> None:
    for raw in (b"", b"\x00\xff", b"no headers at all"):
        assert dedupe_key(parse_message(raw)).startswith("h:")


# --- the key from a header block alone (backfill's metadata pass) ------------------------------

HEADER_CASES = [
    b"Message-ID: <Abc.1@Example.COM>\r\nSubject: x\r\n\r\n",
    b"Message-Id:\r\n <folded.id@Host.Example>\r\nFrom: a@b.test\r\n\r\n",
    b"Message-ID: <first@x.test>\r\nMessage-ID: <second@x.test>\r\n\r\n",
    b"Message-ID: no-brackets@x.test (comment)\r\n\r\n",
    b"Message-ID: <>\r\nSubject: empty id\r\n\r\n",
    b"Subject: no id at all\r\nFrom: a@b.test\r\n\r\n",
    b"Subject: caf\xe9 in latin-1\r\nMessage-ID: <latin@x.test>\r\n\r\n",
    b"Message-ID: <utf8-\xc3\xa9@x.test>\r\n\r\n",
    b"Message-ID: <" + b"a" * 500 + b"@long.test>\r\n\r\n",
    b"From nobody Mon Jan  1 00:00:00 2024\r\nMessage-ID: <mbox@x.test>\r\n\r\n",
    b"",
    b"\x00\xff garbage",
]


@pytest.mark.parametrize("block", HEADER_CASES)
def test_header_key_agrees_with_the_parsed_key(block: bytes) -> None:
    parsed = parse_message(block, keep_attachment_content=False)
    quick = header_dedupe_key(block)
    if quick is None:
        # Only undecided when the full parse falls back to the hash or must re-decode bytes.
        assert dedupe_key(parsed).startswith("h:") or not block.isascii()
    else:
        assert quick == dedupe_key(parsed)
    assert header_dedupe_key(block, gm_msgid=7) == "gm:7"


def test_header_key_agrees_on_the_real_world_corpus() -> None:
    env = os.environ.get("CORRESPOND_SHARED_DIR")
    corpus = (Path(env) if env else Path(__file__).resolve().parents[2] / "shared") / "corpus/dev"
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.name != "SOURCES.md")
    if not files:
        pytest.skip(f"shared corpus not found at {corpus}")
    decided = 0
    for path in files:
        raw = path.read_bytes()
        quick = header_dedupe_key(raw)
        if quick is not None:
            decided += 1
            assert quick == dedupe_key(parse_message(raw)), path.name
    assert decided > len(files) // 2


# --- a Message-ID reused by another message --------------------------------------------------

D = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # A copy: same sender, same Date (a list's copy keeps both; only a footer is added).
        (KeyFacts("ann@example.com", D), KeyFacts("ann@example.com", D), True),
        # Dates written by two hops in two zones, or a resend the same day: within a day.
        (
            KeyFacts("ann@example.com", D),
            KeyFacts("ann@example.com", D + timedelta(hours=23)),
            True,
        ),
        (KeyFacts("ann@example.com", D), KeyFacts("ann@example.com", D - timedelta(days=1)), True),
        # A spoofer reusing a real id: another sender.
        (KeyFacts("ann@example.com", D), KeyFacts("mallory@evil.test", D), False),
        # A broken mailer reusing ids: same sender, another day.
        (KeyFacts("ann@example.com", D), KeyFacts("ann@example.com", D + timedelta(days=3)), False),
        (
            KeyFacts("ann@example.com", D),
            KeyFacts("ann@example.com", D - timedelta(hours=25)),
            False,
        ),
        # What is missing cannot tell two messages apart.
        (KeyFacts(None, D), KeyFacts("ann@example.com", D), True),
        (KeyFacts("ann@example.com", None), KeyFacts("ann@example.com", D), True),
        (KeyFacts(None, None), KeyFacts("mallory@evil.test", D + timedelta(days=9)), True),
        # Naive and aware Dates compare as UTC.
        (KeyFacts("a@x", D.replace(tzinfo=None)), KeyFacts("a@x", D + timedelta(hours=2)), True),
    ],
)
def test_same_message(a: KeyFacts, b: KeyFacts, same: bool) -> None:
    assert same_message(a, b) is same
    assert same_message(b, a) is same


def test_key_facts_read_the_sender_address_and_date() -> None:
    p = parse_message(msg("Message-ID: <a@x>\n", base=BASE.replace("Ann <ann@", "Ann <ANN@")))
    assert key_facts(p) == KeyFacts("ann@example.com", D)
    bare = parse_message(b"Message-ID: <a@x>\r\n\r\nbody\r\n")
    assert key_facts(bare) == KeyFacts(None, None)


def test_distinct_key_is_one_per_sender_and_day() -> None:
    key = "mid:a@x"
    spoof = distinct_key(key, KeyFacts("mallory@evil.test", D))
    assert re.fullmatch(r"mid:a@x#[0-9a-f]{16}", spoof)
    # Every copy of the spoofed message finds the same key, whatever its hour.
    assert spoof == distinct_key(key, KeyFacts("mallory@evil.test", D + timedelta(hours=5)))
    assert spoof != distinct_key(key, KeyFacts("mallory@evil.test", D + timedelta(days=1)))
    assert spoof != distinct_key(key, KeyFacts("eve@evil.test", D))
    assert spoof != distinct_key("mid:b@x", KeyFacts("mallory@evil.test", D))
    assert distinct_key(key, KeyFacts(None, None)) != key


def test_reusable_keys_are_the_message_id_ones() -> None:
    assert reusable_key("mid:a@x") and reusable_key("midh:" + "0" * 64)
    assert not reusable_key("gm:1") and not reusable_key("h:" + "0" * 64)


def test_unfetched_body_key_adds_the_size_to_a_header_hash_only() -> None:
    h = "h:" + "0" * 64
    assert unfetched_body_key(h, 5000) == unfetched_body_key(h, 5000)
    assert unfetched_body_key(h, 5000) != unfetched_body_key(h, 5001)
    assert re.fullmatch(r"h:[0-9a-f]{64}", unfetched_body_key(h, None))
    assert unfetched_body_key("mid:a@x", 5000) == "mid:a@x"
    assert unfetched_body_key("gm:7", 5000) == "gm:7"


FACT_CASES = [
    *HEADER_CASES,
    b"From: Ann <ANN@Example.COM>, bob@x.test\r\nDate: Sun, 1 Mar 2026 09:00:00 +0100\r\n\r\n",
    b"Date: not a date\r\nFrom: =?utf-8?q?Ann?= <ann@x.test>\r\n\r\n",
    b"From: undisclosed-recipients:;\r\n\r\n",
    b"From: first@x.test\r\nFrom: second@x.test\r\nDate: 1 Mar 2026 09:00 GMT\r\n\r\n",
    b"From: caf\xe9 <cafe@x.test>\r\n\r\n",
]


@pytest.mark.parametrize("block", FACT_CASES)
def test_header_facts_agree_with_the_parsed_facts(block: bytes) -> None:
    quick = header_key_facts(block)
    if quick is None:
        assert not block.isascii()  # only bytes the full parse re-decodes are left to it
    else:
        assert quick == key_facts(parse_message(block, keep_attachment_content=False))


def test_header_facts_agree_on_the_real_world_corpus() -> None:
    env = os.environ.get("CORRESPOND_SHARED_DIR")
    corpus = (Path(env) if env else Path(__file__).resolve().parents[2] / "shared") / "corpus/dev"
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.name != "SOURCES.md")
    if not files:
        pytest.skip(f"shared corpus not found at {corpus}")
    decided = 0
    for path in files:
        raw = path.read_bytes()
        quick = header_key_facts(raw)
        if quick is not None:
            decided += 1
            assert quick == key_facts(parse_message(raw)), path.name
    assert decided > len(files) // 2
