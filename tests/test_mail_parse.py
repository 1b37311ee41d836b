"""correspond.mail.parse: headers, bodies, attachments, defects, and input that must not raise."""

from __future__ import annotations

import base64
import binascii
import re
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from correspond.mail.parse import (
    MAX_DEPTH,
    MAX_HEADERS,
    MAX_PARTS,
    ParsedAddress,
    ParsedMessage,
    _b64,
    decode_header_value,
    parse_message,
    sanitize_filename,
    uudecode,
)


def raw(headers: str, body: bytes | str = b"hello\r\n", *, crlf: bool = True) -> bytes:
    """A message from a header block written with \\n and a body."""
    head = headers.strip("\n").replace("\n", "\r\n" if crlf else "\n").encode("utf-8")
    if isinstance(body, str):
        body = body.replace("\n", "\r\n" if crlf else "\n").encode("utf-8")
    return head + (b"\r\n\r\n" if crlf else b"\n\n") + body


def subject_of(value: str) -> str:
    return parse_message(raw(f"Subject: {value}")).subject


# --------------------------------------------------------------------------------------------
# Header values: RFC 2047


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        ("=?UTF-8?B?w6l0w6kgMjAyNg==?=", "été 2026"),
        ("=?iso-8859-1?Q?Caf=E9_cr=E8me?=", "Café crème"),
        ("=?ISO-8859-15?q?=A4uro?=", "€uro"),
        ("=?koi8-r?B?8NLJ18XU?=", "Привет"),
        ("=?iso-2022-jp?B?GyRCRnxLXDhsGyhC?=", "日本語"),
        ("=?windows-1251?Q?=CF=F0=E8=E2=E5=F2?=", "Привет"),
        ("=?gb2312?B?xOO6ww==?=", "你好"),
        ("=?utf-8*en?Q?hello?=", "hello"),  # RFC 2231 §5 language tag
        # RFC 2047 §6.2: whitespace between adjacent encoded-words disappears...
        ("=?UTF-8?Q?a?= =?UTF-8?Q?b?=", "ab"),
        ("=?UTF-8?Q?a?=\t =?UTF-8?Q?_b?=", "a b"),
        # ...but not between a word and plain text.
        ("Re: =?UTF-8?Q?caf=C3=A9?= now", "Re: café now"),
        # A multi-byte character split across two words still decodes.
        ("=?UTF-8?B?4oI=?= =?UTF-8?B?rA==?=", "€"),
        # Missing padding is tolerated.
        ("=?UTF-8?B?w6k?=", "é"),
        ("plain subject", "plain subject"),
        ("=?bogus-charset?Q?abc?=", "abc"),
    ],
)
def test_rfc2047_subjects(encoded: str, expected: str) -> None:
    assert subject_of(encoded) == expected


def test_decoded_crlf_cannot_inject_a_header_line() -> None:
    # RFC 2047 word that decodes to "eve\r\nBcc: x@example.com" (injection README H2).
    m = parse_message(raw("Subject: =?UTF-8?B?ZXZlDQpCY2M6IHhAZXhhbXBsZS5jb20=?="))
    assert "\r" not in m.subject and "\n" not in m.subject
    assert m.subject.startswith("eve") and "Bcc: x@example.com" in m.subject
    assert all("\n" not in v and "\r" not in v for _, v in m.headers)


def test_decode_header_value_records_defects() -> None:
    defects: list[str] = []
    assert decode_header_value("=?x-nonexistent?Q?abc?=", defects) == "abc"
    assert any("unknown charset" in d for d in defects)


def test_folded_headers_are_unfolded_and_kept_in_order() -> None:
    m = parse_message(
        raw("Received: from a\n\tby b\nSubject: a long\n  subject line\nX-Empty:\nReceived: from c")
    )
    assert m.subject == "a long  subject line"
    assert [n for n, _ in m.headers] == ["Received", "Subject", "X-Empty", "Received"]
    assert m.headers[0] == ("Received", "from a\tby b")
    assert m.defects == ()


def test_lf_only_and_crlf_messages_parse_the_same() -> None:
    hdr = "From: A <a@example.com>\nSubject: same\nContent-Type: text/plain; charset=utf-8"
    a = parse_message(raw(hdr, "line one\nline two\n"))
    b = parse_message(raw(hdr, "line one\nline two\n", crlf=False))
    assert a.text == b.text == "line one\nline two\n"
    assert a.subject == b.subject and a.from_ == b.from_


# --------------------------------------------------------------------------------------------
# 8-bit headers (RFC 6532 allows UTF-8; anything else is a defect, read as best we can)


def test_raw_utf8_headers_are_accepted() -> None:
    m = parse_message(
        "From: Jürgen <jd\u00f6e@m\u00e4chine.example>\r\nSubject: Grüße\r\n\r\nx".encode()
    )
    assert m.subject == "Grüße"
    assert m.from_ == (ParsedAddress("Jürgen", "jdöe@mächine.example"),)
    assert m.defects == ()


def test_raw_latin1_header_uses_the_body_charset() -> None:
    m = parse_message(
        b"Subject: Caf\xe9 cr\xe8me\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nx"
    )
    assert m.subject == "Café crème"
    assert any("8-bit header" in d for d in m.defects)


def test_raw_8bit_header_in_unknown_charset_falls_back() -> None:
    m = parse_message(
        b"Subject: \x93quoted\x94 \xff\r\nContent-Type: text/plain; charset=x-foo\r\n\r\n"
    )
    assert m.subject.startswith("\u201cquoted\u201d")
    assert m.defects


# --------------------------------------------------------------------------------------------
# Addresses (RFC 5322 §3.4)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a@example.com", [("", "a@example.com")]),
        ('"Doe, John" <john@example.com>', [("Doe, John", "john@example.com")]),
        (
            "John Doe <john@example.com>, b@example.org",
            [("John Doe", "john@example.com"), ("", "b@example.org")],
        ),
        ("=?UTF-8?Q?Ren=C3=A9e?= <r@example.com>", [("Renée", "r@example.com")]),
        ('"=?UTF-8?B?w4lsb2lzZQ==?=" <e@example.com>', [("Éloise", "e@example.com")]),
        ("john@example.com (John Doe)", [("John Doe", "john@example.com")]),
        (
            "Pete(A \\) chap) <pete(his account)@silly.test(his host)>",
            [("Pete", "pete@silly.test")],
        ),
        ("<user@xn--bcher-kva.example>", [("", "user@bücher.example")]),
        ("User <CaseKept@Example.COM>", [("User", "CaseKept@Example.COM")]),
        ("undisclosed-recipients:;", []),
        (
            'Team: a@x.example, "B" <b@y.example>;, c@z.example',
            [("", "a@x.example"), ("B", "b@y.example"), ("", "c@z.example")],
        ),
        ("<@relay.example:route@example.com>", [("", "route@example.com")]),
        ('"a b"@example.com', [("", '"a b"@example.com')]),
        ("alice@example.com <bob@example.com>", [("alice@example.com", "bob@example.com")]),
        ("Big Bug bb@bug.com", [("Big Bug", "bb@bug.com")]),
        ("a@x.example b@y.example", [("", "a@x.example"), ("", "b@y.example")]),
        ("", []),
        (",,,", []),
    ],
)
def test_address_lists(value: str, expected: list[tuple[str, str]]) -> None:
    m = parse_message(raw(f"To: {value}"))
    assert [(a.name, a.email) for a in m.to] == expected


@pytest.mark.parametrize(
    "value",
    [
        "<unterminated@example.com",
        '"unterminated <a@b.example>',
        "a@b@c.example",
        "(open comment a@b",
        "Name Only",
        ">>>@<<<",
        "a@b.example) <c@d.example>",
        "\x00<n@ul.example>",
    ],
)
def test_broken_addresses_never_raise_and_are_flagged(value: str) -> None:
    m = parse_message(raw(f"From: {value}"))
    assert isinstance(m.from_, tuple)
    assert all("\x00" not in a.email and "\n" not in a.name for a in m.from_)
    assert m.defects, value


def test_all_address_headers_are_read() -> None:
    m = parse_message(
        raw(
            "From: f@example.com\nSender: s@example.com\nReply-To: r@example.com\n"
            "To: t@example.com\nCc: c1@example.com, c2@example.com\nBcc: b@example.com"
        )
    )
    assert [a.email for a in m.from_] == ["f@example.com"]
    assert [a.email for a in m.sender] == ["s@example.com"]
    assert [a.email for a in m.reply_to] == ["r@example.com"]
    assert [a.email for a in m.to] == ["t@example.com"]
    assert [a.email for a in m.cc] == ["c1@example.com", "c2@example.com"]
    assert [a.email for a in m.bcc] == ["b@example.com"]


# --------------------------------------------------------------------------------------------
# Ids and dates


def test_message_ids_and_references() -> None:
    m = parse_message(
        raw(
            "Message-ID:  <abc@Example.COM> \nIn-Reply-To: <p@x> (message from Bob)\n"
            "References: <r1@x>\n <r2@x> <r1@x>\n\t<p@x>"
        )
    )
    assert m.message_id == "abc@Example.COM"
    assert m.in_reply_to == "p@x"
    assert m.references == ("r1@x", "r2@x", "p@x")


def test_missing_and_empty_ids_are_none() -> None:
    m = parse_message(raw("Message-ID: <>\nIn-Reply-To:"))
    assert m.message_id is None and m.in_reply_to is None and m.references == ()


def test_ids_without_brackets_are_accepted() -> None:
    m = parse_message(raw("Message-ID: bare@example.com\nReferences: a@x, b@x"))
    assert m.message_id == "bare@example.com"
    assert m.references == ("a@x", "b@x")


def test_huge_references_are_capped_keeping_root_and_recent() -> None:
    refs = " ".join(f"<r{i}@x>" for i in range(5000))
    m = parse_message(raw(f"References: {refs}"))
    assert len(m.references) == 100
    assert m.references[0] == "r0@x" and m.references[-1] == "r4999@x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Tue, 24 May 2016 13:09:41 +0100", datetime(2016, 5, 24, 12, 9, 41, tzinfo=UTC)),
        ("24 May 2016 13:09:41 -0700", datetime(2016, 5, 24, 20, 9, 41, tzinfo=UTC)),
        ("Tue, 24 May 2016 13:09 +0000", datetime(2016, 5, 24, 13, 9, tzinfo=UTC)),
        ("Tue, 24 May 16 13:09:41 GMT", datetime(2016, 5, 24, 13, 9, 41, tzinfo=UTC)),
        ("Tue, 24 May 2016 13:09:41 EST", datetime(2016, 5, 24, 18, 9, 41, tzinfo=UTC)),
        ("Tue, 24 May 2016 13:09:41 +0000 (UTC)", datetime(2016, 5, 24, 13, 9, 41, tzinfo=UTC)),
        ("Tue, 24 May 2016 13:09:41 -0000", datetime(2016, 5, 24, 13, 9, 41, tzinfo=UTC)),
    ],
)
def test_dates(value: str, expected: datetime) -> None:
    m = parse_message(raw(f"Date: {value}"))
    assert m.date == expected
    assert m.date is not None and m.date.tzinfo is not None


def test_date_keeps_its_offset() -> None:
    m = parse_message(raw("Date: Mon, 2 Mar 2026 10:00:00 +0530"))
    assert m.date is not None and m.date.utcoffset() == timedelta(hours=5, minutes=30)
    assert m.date.tzinfo == timezone(timedelta(hours=5, minutes=30))


@pytest.mark.parametrize(
    "value", ["yesterday", "Tue, 45 Foo 2016 99:99:99 +0000", "", "31 Feb 2020 10:00 +0000"]
)
def test_bad_dates_are_none_with_a_defect(value: str) -> None:
    m = parse_message(raw(f"Date: {value}"))
    assert m.date is None
    assert any("Date" in d for d in m.defects)


def test_absent_date_is_none_without_defect() -> None:
    m = parse_message(raw("Subject: x"))
    assert m.date is None and m.defects == ()


# --------------------------------------------------------------------------------------------
# Bodies


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        (
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable",
            b"caf=C3=A9 au lait, soft=\r\n break\r\n",
            "café au lait, soft break\n",
        ),
        (
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64",
            base64.b64encode("naïve résumé\r\n".encode()) + b"\r\n",
            "naïve résumé\n",
        ),
        (
            "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit",
            "déjà vu".encode("latin-1"),
            "déjà vu",
        ),
        ("Content-Type: text/plain; charset=windows-1251", "Привет".encode("cp1251"), "Привет"),
        ("Content-Type: text/plain; charset=iso-2022-jp", "日本語".encode("iso2022_jp"), "日本語"),
        ("Content-Type: text/plain; charset=ks_c_5601-1987", "한국어".encode("cp949"), "한국어"),
        ("Content-Type: text/plain; charset=shift_jis", "①日本".encode("cp932"), "①日本"),
        ("Content-Type: text/plain; charset=uft-8", "typo\u2019d".encode(), "typo\u2019d"),
        ("Content-Type: text/plain; charset=unicode-1-1-utf-7", b"Hi Mom -+Jjo--!", "Hi Mom -☺-!"),
        ("Content-Type: text/plain", "no charset ✓".encode(), "no charset ✓"),
        ("", b"no content-type at all", "no content-type at all"),
        ('Content-Type: TEXT/PLAIN; CHARSET="UTF-8"', "upper ✓".encode(), "upper ✓"),
    ],
)
def test_text_bodies(headers: str, body: bytes, expected: str) -> None:
    m = parse_message(raw("Subject: t\n" + headers, body))
    assert m.text == expected
    assert m.html is None


@pytest.mark.parametrize(
    ("charset", "body", "expected", "defect"),
    [
        # Declared Latin-1, sent as UTF-8: the UTF-8 reading wins.
        ("iso-8859-1", "Grüße".encode(), "Grüße", "is UTF-8"),
        # Declared UTF-8, sent as Latin-1: read as windows-1252.
        ("utf-8", "Grüße".encode("latin-1"), "Grüße", "declared UTF-8"),
        # Declared UTF-8, mostly UTF-8 with one bad byte: keep UTF-8, replace the byte.
        ("utf-8", "Grüße ".encode() + b"\xff", "Grüße \ufffd", "invalid UTF-8"),
        # Declared ASCII with 8-bit UTF-8 in it.
        ("us-ascii", "naïve".encode(), "naïve", None),
        ("x-unknown", "naïve".encode("cp1252"), "naïve", "8-bit bytes"),
    ],
)
def test_mislabelled_charsets(charset: str, body: bytes, expected: str, defect: str | None) -> None:
    m = parse_message(raw(f"Content-Type: text/plain; charset={charset}", body))
    assert m.text == expected
    if defect is None:
        assert m.defects == ()
    else:
        assert any(defect in d for d in m.defects), m.defects


ALT = """From: A <a@example.com>
Subject: alt
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b1"

preamble is ignored
--b1
Content-Type: text/plain; charset=utf-8

Plain version
--b1
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<p>HTML <b>version</b> =E2=9C=93</p>
--b1--
epilogue is ignored
"""


def test_multipart_alternative() -> None:
    m = parse_message(raw(ALT.split("\n\n", 1)[0], ALT.split("\n\n", 1)[1]))
    assert m.text == "Plain version"
    assert m.html == "<p>HTML <b>version</b> ✓</p>"
    assert m.attachments == ()
    assert m.defects == ()
    assert m.snippet == "Plain version"


def test_multipart_mixed_related_nested() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    att = b"%PDF-1.4 fake" * 10
    body = (
        "--outer\n"
        'Content-Type: multipart/related; boundary="rel"\n\n'
        "--rel\n"
        'Content-Type: multipart/alternative; boundary="alt"\n\n'
        "--alt\nContent-Type: text/plain\n\nsee the logo\n"
        '--alt\nContent-Type: text/html\n\n<img src="cid:logo@x">\n'
        "--alt--\n"
        "--rel\n"
        "Content-Type: image/png\nContent-ID: <logo@x>\nContent-Disposition: inline\n"
        "Content-Transfer-Encoding: base64\n\n"
        f"{base64.encodebytes(png).decode()}"
        "--rel--\n"
        "--outer\n"
        'Content-Type: application/pdf; name="ignored.pdf"\n'
        'Content-Disposition: attachment; filename="report.pdf"\n'
        "Content-Transfer-Encoding: base64\n\n"
        f"{base64.encodebytes(att).decode()}"
        "--outer--\n"
    )
    m = parse_message(raw('Content-Type: multipart/mixed; boundary="outer"', body))
    assert m.text == "see the logo"
    assert m.html == '<img src="cid:logo@x">'
    assert [
        (a.filename, a.content_type, a.inline, a.content_id, a.section) for a in m.attachments
    ] == [
        (None, "image/png", True, "logo@x", "1.2"),
        ("report.pdf", "application/pdf", False, None, "2"),
    ]
    assert m.attachments[0].content == png and m.attachments[0].size == len(png)
    assert m.attachments[1].content == att and m.attachments[1].size == len(att)
    assert m.defects == ()

    lean = parse_message(
        raw('Content-Type: multipart/mixed; boundary="outer"', body), keep_attachment_content=False
    )
    assert [a.content for a in lean.attachments] == [None, None]
    assert [a.size for a in lean.attachments] == [len(png), len(att)]
    assert lean.text == m.text and lean.html == m.html


def test_nested_rfc822_is_an_attachment_named_by_its_subject() -> None:
    inner = "From: x@example.com\nSubject: =?UTF-8?Q?Original_caf=C3=A9?=\n\ninner body\n"
    body = (
        "--m\nContent-Type: text/plain\n\nsee attached\n"
        f"--m\nContent-Type: message/rfc822\n\n{inner}"
        "--m--\n"
    )
    m = parse_message(raw('Content-Type: multipart/mixed; boundary="m"', body))
    assert m.text == "see attached"
    (att,) = m.attachments
    assert att.content_type == "message/rfc822"
    assert att.filename == "Original café.eml"
    assert att.content is not None and b"inner body" in att.content
    assert parse_message(att.content).text == "inner body"


def test_missing_end_boundary_keeps_the_last_part() -> None:
    body = "--b\nContent-Type: text/plain\n\nfirst\n--b\nContent-Type: text/html\n\n<p>cut off"
    m = parse_message(raw('Content-Type: multipart/alternative; boundary="b"', body))
    assert m.text == "first"
    assert m.html == "<p>cut off"
    assert any("missing closing boundary" in d for d in m.defects)


def test_wrong_boundary_parameter_is_recovered_from_the_body() -> None:
    body = (
        "--real\nContent-Type: text/plain\n\nthe text\n"
        "--real\nContent-Type: text/html\n\n<b>x</b>\n--real--\n"
    )
    m = parse_message(raw('Content-Type: multipart/alternative; boundary="wrong"', body))
    assert m.text == "the text"
    assert m.html == "<b>x</b>"
    assert any("boundary" in d for d in m.defects)


def test_multipart_without_any_boundary_is_shown_as_text() -> None:
    m = parse_message(raw("Content-Type: multipart/mixed", "just text\n"))
    assert m.text == "just text\n"
    assert any("boundary" in d for d in m.defects)


def test_unindented_boundary_continuation() -> None:
    body = "--b\nContent-Type: text/plain\n\nok\n--b--\n"
    m = parse_message(raw('Content-Type: multipart/mixed;\nboundary="b"', body))
    assert m.text == "ok"
    assert m.defects


def test_boundary_prefix_of_a_nested_boundary() -> None:
    body = (
        '--b\nContent-Type: multipart/alternative; boundary="b-inner"\n\n'
        "--b-inner\nContent-Type: text/plain\n\ninner text\n--b-inner--\n"
        "--b\nContent-Type: application/octet-stream\n\nxyz\n--b--\n"
    )
    m = parse_message(raw('Content-Type: multipart/mixed; boundary="b"', body))
    assert m.text == "inner text"
    assert [a.content for a in m.attachments] == [b"xyz"]
    assert m.defects == ()


def test_html_only_message_gets_text_and_snippet() -> None:
    html = (
        "<html><head><style>p{color:red}</style><title>T</title></head><body>"
        "<script>alert(1)</script><p>Hello&nbsp;<b>world</b> &amp; friends</p><div>Line 2</div>"
        "</body></html>"
    )
    m = parse_message(raw("Content-Type: text/html; charset=utf-8", html))
    assert m.html == html
    assert m.text == "Hello world & friends\n\nLine 2"
    assert m.snippet == "Hello world & friends Line 2"


def test_second_inline_text_part_is_kept_as_attachment() -> None:
    body = "--b\nContent-Type: text/plain\n\none\n--b\nContent-Type: text/plain\n\ntwo\n--b--\n"
    m = parse_message(raw('Content-Type: multipart/mixed; boundary="b"', body))
    assert m.text == "one"
    assert [(a.content_type, a.inline, a.content) for a in m.attachments] == [
        ("text/plain", True, b"two")
    ]


def test_text_attachment_is_not_the_body() -> None:
    body = (
        "--b\nContent-Type: text/plain; name=notes.txt\nContent-Disposition: attachment\n\nnotes\n"
        "--b\nContent-Type: text/html\n\n<p>the body</p>\n--b--\n"
    )
    m = parse_message(raw('Content-Type: multipart/mixed; boundary="b"', body))
    assert m.html == "<p>the body</p>"
    assert m.text == "the body"
    assert [(a.filename, a.inline) for a in m.attachments] == [("notes.txt", False)]


def test_non_multipart_attachment_only_message() -> None:
    m = parse_message(
        raw(
            "Content-Type: application/pdf; name=x.pdf\nContent-Transfer-Encoding: base64",
            base64.b64encode(b"%PDF") + b"\r\n",
        )
    )
    assert m.text is None and m.html is None and m.snippet == ""
    assert [(a.filename, a.content, a.inline) for a in m.attachments] == [("x.pdf", b"%PDF", True)]


def test_invalid_content_type_falls_back_to_text() -> None:
    m = parse_message(raw("Content-Type: garbage", "body"))
    assert m.text == "body"
    assert any("Content-Type" in d for d in m.defects)


def test_invalid_base64_is_tolerated() -> None:
    m = parse_message(
        raw("Content-Type: text/plain\nContent-Transfer-Encoding: base64", "aGVsbG8*gd29ybGQ")
    )
    assert m.text is not None and m.text.startswith("hello")


# --------------------------------------------------------------------------------------------
# Attachment names (RFC 2231, RFC 2047 in parameters, hostile names)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ('; filename="report.pdf"', "report.pdf"),
        ("; filename*=UTF-8''%E2%82%AC%20rates.pdf", "€ rates.pdf"),
        ("; filename*=iso-8859-1'fr'r%E9sum%E9.doc", "résumé.doc"),
        (
            '; filename*0*=UTF-8\'\'na%C3%AF; filename*1="ve "; filename*2="part.txt"',
            "naïve part.txt",
        ),
        ('; filename*1="second.txt"; filename*0="first-"', "first-second.txt"),
        ('; filename="=?UTF-8?B?w6l0w6kucGRm?="', "été.pdf"),
        ("; filename=\"plain.txt\"; filename*=UTF-8''preferred.txt", "preferred.txt"),
        ("; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd", "passwd"),
        ('; filename="../../etc/passwd"', "passwd"),
        ('; filename="1234/../../1234.txt"', "1234.txt"),
        ('; filename="C:\\\\Windows\\\\x.exe"', "x.exe"),
        ('; filename="con.txt"', "_con.txt"),
        ('; filename="LPT1"', "_LPT1"),
        ('; filename="..."', None),
        ('; filename=""', None),
    ],
)
def test_attachment_filenames(params: str, expected: str | None) -> None:
    body = (
        "--b\nContent-Type: text/plain\n\nbody\n--b\nContent-Type: application/octet-stream\n"
        f"Content-Disposition: attachment{params}\n\ndata\n--b--\n"
    )
    m = parse_message(raw('Content-Type: multipart/mixed; boundary="b"', body))
    assert [a.filename for a in m.attachments] == [expected]


def test_name_parameter_of_content_type_is_used() -> None:
    body = '--b\nContent-Type: image/jpeg; name="=?UTF-8?Q?f=C3=B6to.jpg?="\n\nxx\n--b--\n'
    m = parse_message(raw('Content-Type: multipart/mixed; boundary="b"', body))
    assert m.attachments[0].filename == "föto.jpg"
    assert m.attachments[0].content_type == "image/jpeg"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.pdf\x00.exe", "a.pdf.exe"),
        ("a\r\nb.txt", "ab.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("x.exe. . ", "x.exe"),
        ("\\\\server\\share\\x.doc", "x.doc"),
        ("file:///etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        (".htaccess", "htaccess"),
        ("PRN.txt", "_PRN.txt"),
        ("ok name.txt", "ok name.txt"),
        ("..", None),
        (None, None),
    ],
)
def test_sanitize_filename(name: str | None, expected: str | None) -> None:
    assert sanitize_filename(name) == expected


def test_sanitize_filename_caps_length_and_keeps_extension() -> None:
    out = sanitize_filename("é" * 300 + ".pdf")
    assert out is not None and out.endswith(".pdf") and len(out.encode()) <= 255


# --------------------------------------------------------------------------------------------
# Snippet


def test_snippet_collapses_whitespace_skips_quotes_and_is_bounded() -> None:
    text = "Thanks,\n\n  that   works.\n\nOn Mon, Bob wrote:\n> old stuff\n> more\n" + "word " * 200
    m = parse_message(raw("Subject: s", text))
    assert m.snippet.startswith("Thanks, that works. On Mon, Bob wrote: word word")
    assert "old stuff" not in m.snippet
    assert 150 <= len(m.snippet) <= 201


def test_snippet_of_only_quotes_uses_the_quotes() -> None:
    m = parse_message(raw("Subject: s", "> only\n> quoted\n"))
    assert m.snippet == "> only > quoted"


# --------------------------------------------------------------------------------------------
# Never raises; bounded work


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 1000,
        b"\r\n\r\n",
        b"\n",
        b"no colon anywhere",
        b"Subject: only headers, no separator",
        b":\r\n:\r\n\r\n",
        b" leading continuation\r\n\r\nbody",
        b"From mbox line\nSubject: x\n\nbody",
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n",
        b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n',
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!",
        b'Content-Type: text/plain; charset="\r\n\r\nx',
        b"Content-Type: text/plain; charset=rot13\r\n\r\nuryyb",
        b"Content-Type: ;;;===;\r\nContent-Disposition: ;filename*0*=%%%\r\n\r\nx",
        b"Date: \xff\xfe\r\nFrom: \xc3\r\n\r\n\xc3\x28",
        bytes(range(256)) * 20,
    ],
)
def test_odd_input_never_raises(data: bytes) -> None:
    m = parse_message(data)
    assert isinstance(m, ParsedMessage)
    assert_storable(m)


def assert_storable(m: ParsedMessage) -> None:
    """Every string the parser returns can be stored as UTF-8 and holds no header line break."""
    strings = [m.subject, m.text or "", m.html or "", m.snippet, m.message_id or "",
               m.in_reply_to or "", *m.references, *m.defects]  # fmt: skip
    for name, value in m.headers:
        strings += [name, value]
        assert "\n" not in value and "\r" not in value
    for group in (m.from_, m.sender, m.reply_to, m.to, m.cc, m.bcc):
        strings += [x for a in group for x in (a.name, a.email)]
    strings += [x or "" for a in m.attachments for x in (a.filename, a.content_id)]
    for text in strings:
        text.encode("utf-8")  # raises on lone surrogates
    assert "\n" not in m.subject
    assert all("parser failure" not in d for d in m.defects), m.defects


@pytest.mark.parametrize(
    "data",
    [
        # 8-bit bytes inside header *names* (found by fuzzing the corpus).
        b"Subj\xc0ct: x\r\nMessag\xcd-ID: <a@b>\r\n\r\nbody",
        # A charset label that is not ASCII.
        b'Content-Type: text/plain; charset="\xa4\xa4"\r\n\r\nbody',
        # RFC 2231 value with raw 8-bit bytes.
        b"Content-Type: text/plain; name*=utf-8''\xe9t\xe9.txt\r\n\r\nbody",
        # UTF-7 that decodes to a lone surrogate.
        b"Content-Type: text/plain; charset=utf-7\r\n\r\n+2D3cAA-",
        b"Subject: =?utf-7?Q?+2D0-?=\r\n\r\n",
        # Unindented continuation with 8-bit garbage in the name.
        b"Conte\x94t-Type: multipart/mixed;\r\nboundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--",
        # 8-bit part headers and an attached message with an 8-bit subject.
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822"
        b"\r\nX-\xff: \xff\r\n\r\nSubject: \xe9t\xe9\r\n\r\nhi\r\n--x--\r\n",
    ],
)
def test_fuzz_regressions_are_storable(data: bytes) -> None:
    assert_storable(parse_message(data))


def test_empty_message_is_a_defect() -> None:
    m = parse_message(b"")
    assert m.defects and m.text is None and m.subject == "" and m.headers == ()


def test_missing_separator_between_header_and_body() -> None:
    m = parse_message(b"Subject: x\r\nthis is body text\r\nmore\r\n")
    assert m.subject == "x"
    assert m.text == "this is body text\nmore\n"
    assert any("blank line" in d for d in m.defects)


@given(st.binary(max_size=4000))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    m = parse_message(data)
    assert isinstance(m, ParsedMessage)
    assert_storable(m)


_FRAGMENTS = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Content-Disposition: attachment; filename*0*=x\r\n",
        b"Subject: =?utf-8?B?w6k?= =?x?Q?=FF?=\r\n",
        b'From: <a@b>, "c\r\n',
        b"\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"=E9=\r\n",
        b"\xff\xfe\x00",
        b"  folded\r\n",
        b"Date: 99 Foo 99999 99:99 +9999\r\n",
        b"SGVsbG8=\r\n",
    ]
)


@given(st.lists(_FRAGMENTS, max_size=60))
@settings(max_examples=300, deadline=None)
def test_structured_garbage_never_raises(chunks: list[bytes]) -> None:
    assert_storable(parse_message(b"".join(chunks)))


_SEED = raw(ALT.split("\n\n", 1)[0], ALT.split("\n\n", 1)[1])


@given(
    st.lists(
        st.tuples(st.integers(0, len(_SEED)), st.binary(max_size=8), st.integers(0, 8)),
        min_size=1,
        max_size=12,
    )
)
@settings(max_examples=400, deadline=None)
def test_mutated_message_never_raises(edits: list[tuple[int, bytes, int]]) -> None:
    """Splice random bytes into a well-formed multipart message (insert and delete)."""
    data = bytearray(_SEED)
    for pos, insert, delete in edits:
        pos = min(pos, len(data))
        data[pos : pos + delete] = insert
    assert_storable(parse_message(bytes(data)))


def _timed(data: bytes) -> tuple[ParsedMessage, float]:
    t0 = time.perf_counter()
    m = parse_message(data, keep_attachment_content=False)
    return m, time.perf_counter() - t0


def test_deep_multipart_nesting_is_capped() -> None:
    depth = 5000
    head = "".join(
        f'--b{i}\r\nContent-Type: multipart/mixed; boundary="b{i + 1}"\r\n\r\n'
        for i in range(depth)
    )
    data = b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n' + head.encode() + b"--bX\r\n"
    m, dt = _timed(data)
    assert any(f"deeper than {MAX_DEPTH}" in d for d in m.defects)
    assert dt < 5


def test_deep_rfc822_nesting_costs_nothing() -> None:
    data = b"Subject: leaf\r\n\r\nleaf text\r\n"
    for _ in range(2000):
        data = b"Content-Type: message/rfc822\r\n\r\n" + data
    m, dt = _timed(data)
    assert [a.content_type for a in m.attachments] == ["message/rfc822"]
    assert dt < 2


def test_many_parts_are_capped() -> None:
    data = (
        b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n'
        + b"--x\r\n\r\na\r\n" * 100_000
        + b"--x--\r\n"
    )
    m, dt = _timed(data)
    assert len(m.attachments) < MAX_PARTS
    assert any(f"more than {MAX_PARTS}" in d for d in m.defects)
    assert dt < 5


def test_many_headers_are_capped() -> None:
    data = b"".join(b"X-H%d: v\r\n" % i for i in range(20_000)) + b"Subject: late\r\n\r\nbody"
    m, dt = _timed(data)
    assert len(m.headers) == MAX_HEADERS
    assert any("header fields" in d for d in m.defects)
    assert dt < 5


def test_one_megabyte_header_line() -> None:
    data = b"Subject: " + b"A" * (1 << 20) + b"\r\nFrom: a@example.com\r\n\r\nbody"
    m, dt = _timed(data)
    assert m.text == "body"
    assert dt < 5


def test_huge_single_line_base64_attachment() -> None:
    payload = base64.b64encode(b"\x00" * (8 << 20))  # 8 MiB decoded, one line
    data = (
        b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n'
        b"--z\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--z\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"\r\n--z--\r\n"
    )
    m, dt = _timed(data)
    assert m.attachments[0].size == 8 << 20 and m.attachments[0].content is None
    assert dt < 5


def test_boundary_on_every_line() -> None:
    data = b'Content-Type: multipart/alternative; boundary="-"\r\n\r\n' + b"---\r\n" * 200_000
    m, dt = _timed(data)
    assert dt < 5
    assert all("parser failure" not in d for d in m.defects)


# --- uuencoded parts (Content-Transfer-Encoding: x-uuencode, uuencode, x-uue) -----------------

UU_PAYLOAD = bytes(range(256)) * 3 + b"tail"


def uuencoded(payload: bytes, begin: bytes = b"begin 644 report.bin") -> bytes:
    lines = [binascii.b2a_uu(payload[i : i + 45]) for i in range(0, len(payload), 45)]
    return begin + b"\n" + b"".join(lines) + b"`\nend\n"


def uu_message(encoding: str, body: bytes, *, name: str | None = "data.bin") -> bytes:
    ctype = f'application/octet-stream; name="{name}"' if name else "application/octet-stream"
    return (
        b"From: a@example.test\r\nSubject: uu\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        + f"--b\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n".encode()
        + body.replace(b"\n", b"\r\n")
        + b"\r\n--b--\r\n"
    )


@pytest.mark.parametrize("encoding", ["x-uuencode", "uuencode", "x-uue", "X-UUEncode"])
def test_uuencoded_attachment_is_decoded(encoding: str) -> None:
    m = parse_message(uu_message(encoding, uuencoded(UU_PAYLOAD)))
    assert m.text == "See attached."
    (att,) = m.attachments
    assert att.content == UU_PAYLOAD and att.size == len(UU_PAYLOAD)
    assert att.filename == "data.bin"  # the header's name wins over the begin line's
    assert m.defects == ()
    measured = parse_message(
        uu_message(encoding, uuencoded(UU_PAYLOAD)), keep_attachment_content=False
    )
    assert measured.attachments[0].size == len(UU_PAYLOAD)
    assert measured.attachments[0].content is None


def test_uuencode_begin_line_names_the_file_and_its_mode() -> None:
    body = b"Some text the encoder's user wrote first.\n" + uuencoded(
        UU_PAYLOAD, b"begin 0600 Q3 report.pdf"
    )
    m = parse_message(uu_message("x-uuencode", body, name=None))
    (att,) = m.attachments
    assert att.filename == "Q3 report.pdf" and att.content == UU_PAYLOAD
    defects: list[str] = []
    decoded = uudecode(uuencoded(b"hi", b"begin 755 ../../etc/passwd"), defects)
    assert (decoded.content, decoded.mode, defects) == (b"hi", 0o755, [])
    assert decoded.filename == "../../etc/passwd"  # for display; stored names are sanitised
    attached = parse_message(
        uu_message("x-uuencode", uuencoded(b"hi", b"begin 755 ../../etc/passwd"), name=None)
    )
    assert attached.attachments[0].filename == sanitize_filename("../../etc/passwd")
    assert "/" not in (attached.attachments[0].filename or "")


def test_uuencode_base64_frame() -> None:
    frame = b"begin-base64 644 f.bin\n" + base64.encodebytes(UU_PAYLOAD) + b"====\n"
    defects: list[str] = []
    decoded = uudecode(frame, defects)
    assert (decoded.content, decoded.filename, decoded.mode, defects) == (
        UU_PAYLOAD,
        "f.bin",
        0o644,
        [],
    )


def test_malformed_uuencode_is_a_defect_not_an_error() -> None:
    # No begin line: kept as sent.
    m = parse_message(uu_message("x-uuencode", b"not uuencoded at all\n"))
    assert m.attachments[0].content == b"not uuencoded at all\r\n"
    assert any("without a begin line" in d for d in m.defects)
    # No end line: what was read is kept.
    cut = uuencoded(UU_PAYLOAD).replace(b"`\nend\n", b"")
    m = parse_message(uu_message("x-uuencode", cut))
    assert m.attachments[0].content == UU_PAYLOAD
    assert any("without an end line" in d for d in m.defects)
    # Garbage lines are skipped, each up to a few, then counted.
    good = uuencoded(b"abc")
    noisy = good.replace(b"`\nend", b"\x7f\x7f\x7f\x7f\x7f\n" * 40 + b"`\nend")
    defects: list[str] = []
    decoded = uudecode(noisy, defects)
    assert decoded.content.startswith(b"abc")
    assert len(defects) <= 6 and any("40 malformed" in d for d in defects), defects


def test_uuencode_work_is_bounded() -> None:
    # Megabytes of one long line or of empty lines: linear, and never more out than in.
    for body in (
        b"begin 644 x\n" + b"M" * 2_000_000 + b"\nend\n",
        b"begin 644 x\n" + b"\n" * 2_000_000,
    ):
        defects: list[str] = []
        decoded = uudecode(body, defects)
        assert len(decoded.content) <= len(body)


def _b64_as_binascii(data: bytes) -> tuple[bytes, bool]:
    """The base64 decoding before the SIMD path: binascii, else the cleaned-up retry."""
    try:
        return binascii.a2b_base64(data), False
    except binascii.Error:
        pass
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    clean += b"=" * (-len(clean) % 4)
    try:
        return binascii.a2b_base64(clean), True
    except binascii.Error:
        return b"", True


@settings(max_examples=3000, deadline=None)
@given(
    st.binary(max_size=40)
    | st.text("ABCXYZabcxyz0189+/=\r\n -_.!\x00", max_size=40).map(str.encode)
)
def test_base64_bodies_decode_as_binascii_decodes_them(data: bytes) -> None:
    # The fast decoder (pybase64) reads past a "=" where binascii stops; _b64 keeps binascii's
    # result for every input, padding in the middle, stray characters and errors included.
    defects: list[str] = []
    assert (_b64(data, defects, "body"), bool(defects)) == _b64_as_binascii(data)


def test_base64_attachment_with_padding_mid_stream_decodes_as_binascii() -> None:
    # Two base64 chunks glued together (some mailers do): binascii stops at the first "=".
    body = base64.b64encode(b"first") + b"\r\n" + base64.b64encode(b"second part")
    assert _b64(body, [], "body") == binascii.a2b_base64(body) == b"first"
    big = base64.encodebytes(bytes(range(256)) * 4000)
    assert _b64(big, [], "body") == bytes(range(256)) * 4000
