"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correspond.errors import ImapProtocolError
from correspond.imap.mutf7 import decode_mutf7, encode_mutf7

RFC_CASES = [
    # RFC 3501 §5.1.3 example, and the usual suspects.
    ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("&", b"&-"),
    ("Tom & Jerry", b"Tom &- Jerry"),
    ("INBOX", b"INBOX"),
    ("", b""),
    ("Entwürfe", b"Entw&APw-rfe"),
    ("Отправленные", b"&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
    ("[Gmail]/Отправленные", b"[Gmail]/&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
    ("😀", b"&2D3eAA-"),
    ("a~b", b"a~b"),
    ("tab\there", b"tab&AAk-here"),
    ("&&", b"&-&-"),
    ("Ж&Ж", b"&BBY-&-&BBY-"),
]


@pytest.mark.parametrize(("name", "wire"), RFC_CASES)
def test_encode(name: str, wire: bytes) -> None:
    assert encode_mutf7(name) == wire


@pytest.mark.parametrize(("name", "wire"), RFC_CASES)
def test_decode(name: str, wire: bytes) -> None:
    assert decode_mutf7(wire) == name


@pytest.mark.parametrize(("name", "wire"), RFC_CASES)
def test_strict_decode_re_encodes_byte_exact(name: str, wire: bytes) -> None:
    assert decode_mutf7(wire, strict=True) == name
    assert encode_mutf7(decode_mutf7(wire, strict=True)) == wire


@pytest.mark.parametrize(
    "raw",
    [
        b"&BB4EQgQ,BEAEMAQ",  # unterminated shift
        b"&",
        b"a&-&",
        b"&A-",  # 6 bits: not a whole UTF-16 unit
        b"&AAAA-",  # 24 bits: three bytes, not whole UTF-16 units
        b"&!!-",  # not base64
        b"&AG/-",  # "/" is "," in modified base64
        b"&AGE=-",  # no padding
        b"&2D0-",  # lone high surrogate
        b"&3gA-",  # lone low surrogate
        b"&AGE-",  # printable ASCII must stand for itself
        b"&BBY-&BBY-",  # two shifts in a row: the encoder writes one (&BBYEFg-)
        b"&BBZ-",  # non-zero padding bits
        b"Entw\xc3\xbcrfe",  # 8-bit: not modified UTF-7 (UTF8=ACCEPT names are not mUTF-7)
        b"Entw\xfcrfe",
        b"tab\there",  # controls are shifted, never sent as is
        b"a\x7fb",
    ],
)
def test_strict_decode_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(ImapProtocolError):
        decode_mutf7(raw, strict=True)
    assert isinstance(decode_mutf7(raw), str)  # the display form still shows something


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"&Jjo-!", "☺!"),  # RFC 2152-style example
        (b"Sent &- Archive", "Sent & Archive"),
        (b"&BB4EQgQ,BEAEMAQ", "&BB4EQgQ,BEAEMAQ"),  # unterminated shift: kept as sent
        (b"&A-", "&A-"),  # 6 bits: not a whole UTF-16 unit
        (b"&AGE", "&AGE"),  # no "-"
        (b"&!!-", "&!!-"),  # not base64
        (b"&2D0-", "&2D0-"),  # lone high surrogate: kept as sent, never invalid Unicode
        ("Entwürfe".encode(), "Entwürfe"),  # raw UTF-8 (RFC 6855 or broken server)
        (b"Entw\xfcrfe", "Entwürfe"),  # raw Latin-1 from a broken server
        (b"\xff\xfe&", "ÿþ&"),
        (b"a&AGEAYgBj-z", "aabcz"),  # base64 of printable ASCII: invalid but readable
    ],
)
def test_decode_lenient(raw: bytes, shown: str) -> None:
    assert decode_mutf7(raw) == shown


@given(st.text())
def test_round_trip_any_text(name: str) -> None:
    wire = encode_mutf7(name)
    assert wire.isascii()
    assert b"\r" not in wire and b"\n" not in wire
    assert decode_mutf7(wire) == name


@given(st.binary())
def test_decode_never_raises(raw: bytes) -> None:
    shown = decode_mutf7(raw)
    assert isinstance(shown, str)
    shown.encode("utf-8")  # always valid Unicode (no lone surrogates)


@given(st.text(alphabet=st.sampled_from("&-AZaz09+,/é")))
def test_decode_never_raises_on_shift_soup(text: str) -> None:
    assert isinstance(decode_mutf7(text.encode()), str)


@given(st.text())
def test_strict_round_trip_any_text(name: str) -> None:
    wire = encode_mutf7(name)
    try:
        shown = decode_mutf7(wire, strict=True)
    except ImapProtocolError:
        # Only a str holding a lone surrogate (not a character) has no canonical form.
        assert any("\ud800" <= c <= "\udfff" for c in name)
        return
    assert shown == name
    assert encode_mutf7(shown) == wire


@given(st.binary())
def test_strict_decode_raises_only_protocol_errors(raw: bytes) -> None:
    try:
        name = decode_mutf7(raw, strict=True)
    except ImapProtocolError:
        return
    assert encode_mutf7(name) == raw


@given(st.text(alphabet=st.sampled_from("&-AZaz09+,/ \t~")))
def test_strict_decode_on_shift_soup(text: str) -> None:
    try:
        name = decode_mutf7(text.encode(), strict=True)
    except ImapProtocolError:
        return
    assert encode_mutf7(name) == text.encode()
