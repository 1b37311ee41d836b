"""correspond.mail.compose: building outgoing mail, as tables.

Injection cases follow ``shared/corpus/injection/README.md`` §1-2 (H1-H8, attachment names);
the real-world samples it names are read from ``../shared/corpus/dev`` and skipped when the
corpus is absent. Every built message is parsed back with the project's own
``mail.parse.parse_message`` and must give the same fields, with no header the builder did not
write.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from correspond.mail.compose import (
    DEFAULT_SIZE_LIMIT,
    MAX_REFERENCES,
    Address,
    Attachment,
    BadRecipient,
    ComposeError,
    Draft,
    MessageTooLarge,
    build_message,
    check_address,
    check_size,
    clean_header_text,
    encoded_size,
    envelope_recipients,
    envelope_sender,
    forward_draft,
    forward_subject,
    html_to_plain_text,
    make_message_id,
    message_bytes,
    needs_smtputf8,
    parse_recipient,
    reply_draft,
    reply_subject,
    safe_attachment_name,
    size_limit,
    with_signature,
)
from correspond.mail.parse import parse_message

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
ME = Address.of("me@example.com", "Me Myself")


def _shared() -> Path:
    env = os.environ.get("CORRESPOND_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


DEV = _shared() / "corpus" / "dev"
INJECTION = _shared() / "corpus" / "injection" / "README.md"
needs_corpus = pytest.mark.skipif(not DEV.is_dir(), reason=f"shared corpus not found at {DEV}")


def _build(draft: Draft, **kw: object) -> bytes:
    return message_bytes(build_message(draft, message_id_domain="example.com", now=NOW, **kw))  # type: ignore[arg-type]


def _header_names(raw: bytes) -> list[str]:
    """The names of the top-level header lines, as a receiving parser sees them (any line not
    starting with a space or tab starts a header)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = []
    for line in head.split(b"\r\n"):
        assert line, "an empty line inside the header block"
        assert len(line) <= 998
        if line[:1] not in (b" ", b"\t"):
            names.append(line.split(b":", 1)[0].decode("ascii").lower())
    return names


EXPECTED_HEADERS = {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"}


def _only_expected_headers(raw: bytes, *extra: str) -> None:
    names = _header_names(raw)
    assert len(names) == len(set(names)), names
    assert set(names) <= EXPECTED_HEADERS | {"content-transfer-encoding", *extra}, names
    assert "bcc" not in names
    # No bare CR or LF anywhere in the message (SMTP smuggling, H5).
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", raw) is None


# ---- H1, H2, H6: line breaks in a subject or a display name never make a header -------------

LINE_BREAK_PAYLOADS = [
    "Hi\r\nBcc: victim@example.com",
    "Hi\nBcc: victim@example.com",
    "Hi\rBcc: victim@example.com",
    "Hi\x00Bcc: victim@example.com",
    "Hi\x0bBcc: victim@example.com",
    "Hi\x0cBcc: victim@example.com",
    "Hi\x1cBcc: victim@example.com",
    "Hi\x1dBcc: victim@example.com",
    "Hi\x1eBcc: victim@example.com",
    "Hi\x85Bcc: victim@example.com",
    "Hi\u2028Bcc: victim@example.com",
    "Hi\u2029Bcc: victim@example.com",
    # An RFC 2047 word that decodes to CR LF (Python's email decodes it again when folding).
    "=?UTF-8?B?ZXZlDQpCY2M6IHhAZXhhbXBsZS5jb20=?=",
    "x =?UTF-8?Q?eve=0D=0ABcc:_x@example.com?= y",
    # Encoded twice: decoding once leaves another encoded word.
    "=?UTF-8?B?PT9VVEYtOD9CP1pYWmxEUXBDWTJNNklIaEFaWGhoYlhCc1pTNWpiMjA9Pz0=?=",
]


@pytest.mark.parametrize("payload", LINE_BREAK_PAYLOADS)
def test_a_line_break_in_the_subject_never_makes_a_header(payload: str) -> None:
    raw = _build(Draft(from_=ME, to=(Address.of("a@example.org"),), subject=payload, text="x"))
    _only_expected_headers(raw)
    parsed = parse_message(raw)
    assert "\n" not in parsed.subject and "\r" not in parsed.subject
    assert not parsed.bcc
    # The stdlib's strict parser agrees: one Subject, no Bcc.
    strict = message_from_bytes(raw, policy=policy.default)
    assert strict.get_all("Bcc") is None and len(strict.get_all("Subject") or []) == 1


@pytest.mark.parametrize("payload", LINE_BREAK_PAYLOADS)
def test_a_line_break_in_a_display_name_never_makes_a_header(payload: str) -> None:
    sender = Address(email="me@example.com", name=payload)  # not cleaned: build must cope
    to = Address(email="a@example.org", name=payload)
    raw = _build(Draft(from_=sender, to=(to,), subject="s", text="x"))
    _only_expected_headers(raw)
    parsed = parse_message(raw)
    assert [a.email for a in parsed.from_] == ["me@example.com"]
    assert [a.email for a in parsed.to] == ["a@example.org"]
    assert not parsed.bcc


def test_clean_header_text_keeps_ordinary_text_and_decodes_words() -> None:
    assert clean_header_text("  Budget\t 2026  ") == "Budget 2026"
    assert clean_header_text("=?UTF-8?Q?Caf=C3=A9?=") == "Café"
    assert clean_header_text("a\r\nb") == "a b"
    with pytest.raises(ComposeError, match="subject"):
        clean_header_text("x" * 2000)


# ---- H3, H4: an address is one addr-spec, validated as sent ---------------------------------

BAD_ADDRESSES = [
    ("a@example.com>\r\nRCPT TO:<b@example.net", "line break"),
    ("a@example.com\r\nDATA", "line break"),
    ("a@example.com\nDATA", "line break"),
    ("a@example.com\x00", "line break"),
    ("a@example.com\u2028b@example.net", "line break"),
    ("a@example.com\x1b", "control"),
    ("alice@example.org)<bob@example.org>", "more than one @"),
    ('"a@b"@c.example', "more than one @"),
    ('"a b"@c.example', "quoted"),
    ("a@b@c.example", "more than one @"),
    ("a(x)@example.org", "not allowed"),
    ("undisclosed-recipients:;", "expected name@domain"),
    ("a@example.org, b@example.org", "not"),
    ("a b@example.org", "not allowed"),
    ("<a@example.org>", "not allowed"),
    ("a@", "domain is empty"),
    ("@example.org", "expected name@domain"),
    ("a@-bad-.example", "not a valid name"),
    ("a@exa_mple.org", "not a valid name"),
    ("a@[127.0.0.1]", "literals"),
    (".a@example.org", "misplaced dot"),
    ("a..b@example.org", "misplaced dot"),
    ("x" * 65 + "@example.org", "64 octets"),
    ("", "expected name@domain"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_ADDRESSES)
def test_a_bad_address_is_refused_naming_it(value: str, reason: str) -> None:
    with pytest.raises(BadRecipient) as caught:
        check_address(value, field="cc")
    message = str(caught.value)
    assert message.startswith("cc: ") and reason in message
    assert caught.value.address == value and caught.value.field == "cc"
    assert "\r" not in message and "\n" not in message  # the name is shown escaped


def test_a_bad_recipient_stops_the_build_naming_it() -> None:
    draft = Draft(from_=ME, to=(Address(email="a@example.com\r\nDATA"),), text="x")
    with pytest.raises(BadRecipient, match=r"to: .*a@example\.com\\r\\nDATA"):
        build_message(draft, message_id_domain="example.com", now=NOW)
    with pytest.raises(BadRecipient, match="bcc: "):
        envelope_recipients(Draft(from_=ME, bcc=(Address(email="a@b@c.example"),)))


GOOD_ADDRESSES = [
    ("a@example.org", "a@example.org"),
    ("  A.B+tag@Example.ORG ", "A.B+tag@example.org"),
    ("o'brien@example.org", "o'brien@example.org"),
    ("user@bücher.example", "user@xn--bcher-kva.example"),
    ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"),
    ("a@localhost", "a@localhost"),
]


@pytest.mark.parametrize(("value", "expected"), GOOD_ADDRESSES)
def test_good_addresses_come_out_as_sent(value: str, expected: str) -> None:
    assert check_address(value) == expected


RECIPIENTS = [
    ("a@example.org", Address("a@example.org", "")),
    ("Ann Lee <ann@example.org>", Address("ann@example.org", "Ann Lee")),
    ('"Lee, Ann" <ann@example.org>', Address("ann@example.org", "Lee, Ann")),
    ('"A \\"Q\\" B" <ann@example.org>', Address("ann@example.org", 'A "Q" B')),
]


@pytest.mark.parametrize(("value", "expected"), RECIPIENTS)
def test_a_typed_recipient_is_one_address(value: str, expected: Address) -> None:
    assert parse_recipient(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "Ann <ann@example.org>, bob@example.org",
        "Ann <ann@example.org> <bob@example.org>",
        "Ann <ann@example.org> trailing",
        "Lee, Ann <ann@example.org>",
        "Ann (boss) <ann@example.org>",
        "group: ann@example.org;",
        '"unclosed <ann@example.org>',
        "Ann\r\nBcc: x@example.org <ann@example.org>",
    ],
)
def test_a_typed_recipient_smuggling_a_second_one_is_refused(value: str) -> None:
    with pytest.raises(BadRecipient):
        parse_recipient(value)


# ---- H7, H8: folding, Message-ID, threading headers, extra headers -------------------------


def test_long_headers_are_folded_within_rfc_5322_limits() -> None:
    refs = tuple(f"<{i:04d}-{'x' * 60}@mail.example.com>" for i in range(50))
    to = tuple(Address.of(f"user{i}@example.org", f"Ünïcode Person {i}") for i in range(60))
    draft = Draft(from_=ME, to=to, subject="Ü" * 300 + " word" * 100, text="x", references=refs)
    raw = _build(draft)
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        assert len(line) <= 78 or b" " not in line.strip(), line
        assert len(line) <= 998
    for word in re.findall(rb"=\?[^?]+\?[bq]\?[^?]*\?=", raw, re.I):
        # RFC 2047 says 75; Python's folder makes some words one longer (a known stdlib
        # deviation; every reader we know takes them). Lines stay within 78.
        assert len(word) <= 76
    parsed = parse_message(raw)
    assert parsed.subject == "Ü" * 300 + " word" * 100
    assert len(parsed.to) == 60 and parsed.to[59].name == "Ünïcode Person 59"
    # References are bounded: the first and the latest.
    assert len(parsed.references) == MAX_REFERENCES
    assert parsed.references[0] == refs[0].strip("<>")
    assert parsed.references[-1] == refs[-1].strip("<>")


def test_message_id_is_made_here_from_the_senders_domain() -> None:
    msg = build_message(
        Draft(from_=ME, to=(ME,), text="x"), message_id_domain="Bücher.example", now=NOW
    )
    assert re.fullmatch(r"<[0-9a-f]{32}@xn--bcher-kva\.example>", msg["Message-ID"])
    fixed = make_message_id("example.com", token="abc")
    assert fixed == "<abc@example.com>"
    again = build_message(
        Draft(from_=ME, to=(ME,), text="x"), message_id_domain="x.org", now=NOW, message_id=fixed
    )
    assert again["Message-ID"] == fixed
    with pytest.raises(ComposeError):
        build_message(
            Draft(from_=ME, to=(ME,), text="x"),
            message_id_domain="x.org",
            now=NOW,
            message_id="<a\r\nBcc: x@y>",
        )


@pytest.mark.parametrize(
    "bad", ["<a@b>\r\nBcc: x@example.org", "no-brackets-no-at", "<a b@c>", "<=?utf-8?b?eA==?=@c>"]
)
def test_only_well_formed_ids_reach_in_reply_to_and_references(bad: str) -> None:
    draft = Draft(
        from_=ME, to=(ME,), text="x", in_reply_to=bad, references=(bad, "<ok@example.org>")
    )
    raw = _build(draft)
    _only_expected_headers(raw, "references")
    assert parse_message(raw).references == ("ok@example.org",)


def test_extra_headers_are_an_allow_list_with_clean_values() -> None:
    draft = Draft(
        from_=ME,
        to=(ME,),
        text="x",
        extra_headers=(
            ("List-Unsubscribe", "<mailto:u@example.com>\r\nBcc: x@example.org"),
            ("X-Campaign", "q1"),
        ),
    )
    raw = _build(draft)
    _only_expected_headers(raw, "list-unsubscribe", "x-campaign")
    for name in (
        "Bcc",
        "Sender",
        "Return-Path",
        "Message-ID",
        "Content-Type",
        "From",
        "Received",
        "X-Original-To",
        "Bad Name",
    ):
        with pytest.raises(ComposeError):
            _build(Draft(from_=ME, to=(ME,), text="x", extra_headers=((name, "v"),)))


def test_extra_headers_are_bounded_in_number() -> None:
    many = tuple((f"X-H{i}", "v") for i in range(51))
    with pytest.raises(ComposeError, match="at most 50"):
        _build(Draft(from_=ME, to=(ME,), text="x", extra_headers=many))


# ---- H5: bodies never carry a bare CR or LF; a line of one dot stays text ------------------

BODIES = [
    ("a\n.\r\nb", "a\n.\nb\n"),
    ("a\r\n.\nb", "a\n.\nb\n"),
    ("a\rb", "a\nb\n"),
    ("a\nb", "a\nb\n"),
    (".", ".\n"),
    ("a\r\n.\r\n", "a\n.\n"),
    ("line\u2028same\x85line", "line\u2028same\x85line\n"),
]


@pytest.mark.parametrize(("text", "expected"), BODIES)
def test_bodies_have_crlf_line_ends_only(text: str, expected: str) -> None:
    raw = _build(Draft(from_=ME, to=(ME,), subject="s", text=text))
    _only_expected_headers(raw)
    assert parse_message(raw).text == expected


# ---- Structure, round trip ---------------------------------------------------------------------


def test_round_trip_of_every_part_through_our_parser() -> None:
    draft = Draft(
        from_=Address.of("me@example.com", "Zoë Ünïcode"),
        to=(parse_recipient('"Doe, John" <john@example.org>'),),
        cc=(Address.of("ann@example.org", "Ann"),),
        bcc=(Address.of("hidden@example.org"),),
        reply_to=(Address.of("team@example.com", "Team"),),
        subject="Résumé for the Q1 deal",
        text="Hello John,\r\n.\r\nA line that is only a dot above; bare\rCR here.\n",
        html='<p>Hello <b>John</b></p><img src="cid:logo@example.com">',
        inline=(
            Attachment(
                "logo.png", "image/png", b"\x89PNG\r\n\x1a\nfake", content_id="logo@example.com"
            ),
        ),
        attachments=(
            Attachment("naïve report.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(range(256))),
            Attachment("notes.txt", "text/plain", b"line one\r\nline two\n"),
        ),
        in_reply_to="<parent@example.org>",
        references=("<root@example.org>", "<parent@example.org>"),
    )
    msg = build_message(
        draft, message_id_domain="example.com", now=NOW, message_id="<fixed@example.com>"
    )
    raw = message_bytes(msg)
    _only_expected_headers(raw, "cc", "reply-to", "in-reply-to", "references")
    parsed = parse_message(raw)
    assert parsed.defects == ()
    assert parsed.message_id == "fixed@example.com"
    assert parsed.subject == draft.subject
    assert [(a.name, a.email) for a in parsed.from_] == [("Zoë Ünïcode", "me@example.com")]
    assert [(a.name, a.email) for a in parsed.to] == [("Doe, John", "john@example.org")]
    assert [(a.name, a.email) for a in parsed.cc] == [("Ann", "ann@example.org")]
    assert [(a.name, a.email) for a in parsed.reply_to] == [("Team", "team@example.com")]
    assert parsed.bcc == () and b"hidden@example.org" not in raw
    assert parsed.in_reply_to == "parent@example.org"
    assert parsed.references == ("root@example.org", "parent@example.org")
    assert parsed.date == NOW
    assert parsed.text == "Hello John,\n.\nA line that is only a dot above; bare\nCR here.\n"
    assert parsed.html is not None and "<b>John</b>" in parsed.html
    by_name = {a.filename: a for a in parsed.attachments}
    assert by_name["naïve report.pdf"].content == b"%PDF-1.4\n" + bytes(range(256))
    assert by_name["notes.txt"].content == b"line one\r\nline two\n"
    assert by_name["notes.txt"].content_type == "text/plain"
    logo = by_name["logo.png"]
    assert (
        logo.inline and logo.content_id == "logo@example.com" and logo.content_type == "image/png"
    )
    # The structure: mixed[alternative[text, related[html, image]], pdf, txt].
    assert msg.get_content_type() == "multipart/mixed"
    top = msg.get_payload()
    assert isinstance(top, list)
    assert [p.get_content_type() for p in top] == [
        "multipart/alternative",
        "application/pdf",
        "text/plain",
    ]
    alternative = top[0].get_payload()
    assert [p.get_content_type() for p in alternative] == ["text/plain", "multipart/related"]
    assert [p.get_content_type() for p in alternative[1].get_payload()] == [
        "text/html",
        "image/png",
    ]
    assert envelope_recipients(draft) == (
        "john@example.org",
        "ann@example.org",
        "hidden@example.org",
    )


def test_html_only_gets_a_text_part_derived_from_it() -> None:
    html = (
        "<html><head><style>p{color:red}</style><title>t</title></head><body>"
        "<h1>Offer</h1><p>Dear&nbsp;Ann, see <a href='https://example.com/x'>the offer</a>.</p>"
        "<ul><li>One</li><li>Two</li></ul><ol><li>first</li><li>second</li></ol>"
        "<blockquote>quoted</blockquote><script>alert(1)</script>Bye<br>Me</body></html>"
    )
    msg = build_message(
        Draft(from_=ME, to=(ME,), html=html), message_id_domain="example.com", now=NOW
    )
    assert msg.get_content_type() == "multipart/alternative"
    text = parse_message(message_bytes(msg)).text
    assert text == (
        "Offer\n\nDear Ann, see the offer (https://example.com/x).\n\n- One\n- Two\n\n"
        "1. first\n2. second\n\nquoted\n\nBye\nMe\n"
    )


def test_html_to_text_is_bounded() -> None:
    deep = "<div>" * 100_000 + "x" + "</div>" * 100_000
    assert html_to_plain_text(deep) == "x"
    huge = "<p>" + "word " * 1_000_000 + "</p>"
    assert len(html_to_plain_text(huge)) <= 500_000


def test_text_only_is_a_single_part_and_long_lines_are_encoded() -> None:
    line = "é" * 2000
    msg = build_message(
        Draft(from_=ME, to=(ME,), text=line), message_id_domain="example.com", now=NOW
    )
    raw = message_bytes(msg)
    assert msg.get_content_type() == "text/plain"
    assert all(len(x) <= 998 for x in raw.split(b"\r\n"))
    assert parse_message(raw).text == line + "\n"


def test_smtputf8_is_needed_only_for_non_ascii_local_parts() -> None:
    plain = Draft(from_=ME, to=(Address.of("a@bücher.example"),), text="x")
    assert not needs_smtputf8(plain)
    wide = Draft(from_=ME, to=(Address.of("用户@例子.广告", "中文"),), text="x")
    assert needs_smtputf8(wide)
    parsed = parse_message(_build(wide))
    assert [(a.name, a.email) for a in parsed.to] == [("中文", "用户@例子.广告")]


# ---- Attachment names (README §2) -------------------------------------------------------------

NAMES = [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\Windows\\System32\\x.dll", "x.dll"),
    ("/etc/passwd", "passwd"),
    ("C:\\x.exe", "x.exe"),
    ("\\\\server\\share\\x", "x"),
    ("file:///etc/passwd", "passwd"),
    ("1234/../../1234.txt", "1234.txt"),
    ("a.pdf\x00.exe", "a.pdf.exe"),
    ("a\r\nb.txt", "ab.txt"),
    ("invoice\u202efdp.exe", "invoicefdp.exe"),
    ("x.exe.", "x.exe"),
    ("x.exe ", "x.exe"),
    ("CON", "_CON"),
    ("PRN.txt", "_PRN.txt"),
    ("", "attachment"),
    ("..", "attachment"),
]


@pytest.mark.parametrize(("name", "expected"), NAMES)
def test_attachment_names_are_sanitised(name: str, expected: str) -> None:
    assert safe_attachment_name(name) == expected
    raw = _build(
        Draft(
            from_=ME, to=(ME,), text="x", attachments=(Attachment(name, "application/pdf", b"1"),)
        )
    )
    _only_expected_headers(raw)
    (found,) = parse_message(raw).attachments
    assert found.filename == expected and found.content == b"1"


def test_a_long_name_fits_255_bytes_and_keeps_its_extension() -> None:
    name = "é" * 300 + ".pdf"
    assert len(safe_attachment_name(name).encode()) <= 255
    assert safe_attachment_name(name).endswith(".pdf")


def test_a_content_type_that_is_not_one_is_refused() -> None:
    for bad in ("text/html\r\nX: y", "nonsense", "a/b c"):
        with pytest.raises(ComposeError, match="content type"):
            _build(Draft(from_=ME, to=(ME,), text="x", attachments=(Attachment("a", bad, b"1"),)))
    # A multipart type from a person goes as bytes, not as structure.
    raw = _build(
        Draft(from_=ME, to=(ME,), text="x", attachments=(Attachment("a", "multipart/mixed", b"1"),))
    )
    assert parse_message(raw).attachments[0].content_type == "application/octet-stream"


def test_attachments_by_blob_reference_are_resolved() -> None:
    blobs = {"k1": b"stored bytes"}
    draft = Draft(from_=ME, to=(ME,), text="x", attachments=(Attachment("a.bin", blob_key="k1"),))
    raw = _build(draft, resolve=blobs.__getitem__)
    assert parse_message(raw).attachments[0].content == b"stored bytes"
    never = Draft(from_=ME, to=(ME,), text="x", attachments=(Attachment("big.iso"),))
    with pytest.raises(ComposeError, match=r"big\.iso"):
        _build(never)


# ---- Size -----------------------------------------------------------------------------------


def test_size_is_measured_after_encoding_and_checked_before_sending() -> None:
    payload = os.urandom(300_000)
    msg = build_message(
        Draft(from_=ME, to=(ME,), text="x", attachments=(Attachment("r.bin", content=payload),)),
        message_id_domain="example.com",
        now=NOW,
    )
    size = encoded_size(msg)
    assert size == len(message_bytes(msg))
    assert size > len(payload) * 4 // 3  # base64 with CRLF every 76 characters
    check_size(size, size)
    with pytest.raises(MessageTooLarge, match=r"0\.4 MB .* at most 0\.3 MB") as caught:
        check_size(size, 300_000)
    assert caught.value.size == size and caught.value.limit == 300_000
    assert size_limit(None) == DEFAULT_SIZE_LIMIT == 25 * 1024 * 1024
    assert size_limit(0) == DEFAULT_SIZE_LIMIT  # SIZE 0: no announced limit
    assert size_limit(10_000_000) == 10_000_000


def test_the_envelope_sender_is_checked_too() -> None:
    assert envelope_sender(Draft(from_=Address("Me@Example.COM "))) == "Me@example.com"
    with pytest.raises(BadRecipient, match="from: "):
        envelope_sender(Draft(from_=Address("me@example.com>\r\nRCPT TO:<x@example.org")))


def test_recipients_are_bounded_and_deduplicated() -> None:
    same = Draft(
        from_=ME,
        to=(Address.of("a@example.org"),),
        cc=(Address.of("A@Example.org"),),
        bcc=(Address.of("b@example.org"),),
    )
    assert envelope_recipients(same) == ("a@example.org", "b@example.org")
    with pytest.raises(ComposeError, match="no recipient"):
        envelope_recipients(Draft(from_=ME))
    many = Draft(from_=ME, bcc=tuple(Address.of(f"u{i}@example.org") for i in range(501)))
    with pytest.raises(ComposeError, match="501 recipients"):
        envelope_recipients(many)


# ---- Reply, reply-all, forward ----------------------------------------------------------------


@dataclass(frozen=True)
class _Addr:
    email: str
    name: str | None = None


@dataclass(frozen=True)
class _Att:
    filename: str | None
    content_type: str
    blob_key: str | None
    inline: bool = False


@dataclass(frozen=True)
class _Original:
    subject: str = "Budget 2026"
    from_: _Addr | None = _Addr("ann@example.org", "Ann")
    reply_to: tuple[_Addr, ...] = ()
    to: tuple[_Addr, ...] = (_Addr("me@example.com"), _Addr("bob@example.org", "Bob"))
    cc: tuple[_Addr, ...] = (_Addr("ME2@example.net"), _Addr("carol@example.org"))
    message_id: str | None = "orig@example.org"
    in_reply_to: str | None = "parent@example.org"
    references: tuple[str, ...] = ("root@example.org", "parent@example.org")
    date: datetime | None = NOW
    text: str | None = "The numbers.\nSecond line."
    html: str | None = None
    attachments: tuple[_Att, ...] = field(default_factory=tuple)


OWN = ("me@example.com", "me2@example.net")


@pytest.mark.parametrize(
    ("subject", "reply", "forward"),
    [
        ("Budget", "Re: Budget", "Fwd: Budget"),
        ("Re: Budget", "Re: Budget", "Fwd: Re: Budget"),
        ("RE: Budget", "RE: Budget", "Fwd: RE: Budget"),
        ("Aw: Budget", "Aw: Budget", "Fwd: Aw: Budget"),
        ("Re[2]: Budget", "Re[2]: Budget", "Fwd: Re[2]: Budget"),
        ("Fwd: Budget", "Re: Fwd: Budget", "Fwd: Budget"),
        ("Fw: Budget", "Re: Fw: Budget", "Fw: Budget"),
        ("FW: Budget", "Re: FW: Budget", "FW: Budget"),
        ("WG: Budget", "Re: WG: Budget", "WG: Budget"),
        ("", "Re:", "Fwd:"),
        ("Regarding x", "Re: Regarding x", "Fwd: Regarding x"),
    ],
)
def test_prefixes_are_not_stacked(subject: str, reply: str, forward: str) -> None:
    assert reply_subject(subject) == reply
    assert forward_subject(subject) == forward


def test_reply_goes_to_the_sender_and_threads() -> None:
    draft = reply_draft(_Original(), from_=ME, own_addresses=OWN, text="Thanks!")
    assert [a.email for a in draft.to] == ["ann@example.org"] and draft.cc == ()
    assert draft.subject == "Re: Budget 2026"
    assert draft.in_reply_to == "<orig@example.org>"
    assert draft.references == ("<root@example.org>", "<parent@example.org>", "<orig@example.org>")
    assert draft.text is not None and draft.text.startswith("Thanks!\n\nOn Sun, 01 Mar 2026")
    assert "> The numbers.\n> Second line." in draft.text
    parsed = parse_message(_build(draft))
    assert parsed.in_reply_to == "orig@example.org"
    assert parsed.references == ("root@example.org", "parent@example.org", "orig@example.org")


def test_reply_all_leaves_out_every_own_address() -> None:
    draft = reply_draft(_Original(), from_=ME, own_addresses=OWN, reply_all=True)
    assert [a.email for a in draft.to] == ["ann@example.org", "bob@example.org"]
    assert [a.email for a in draft.cc] == ["carol@example.org"]


def test_reply_uses_reply_to_and_skips_broken_addresses() -> None:
    original = _Original(reply_to=(_Addr("list@example.org"), _Addr("bad\r\nRCPT TO:<x@y>")))
    draft = reply_draft(original, from_=ME, own_addresses=OWN)
    assert [a.email for a in draft.to] == ["list@example.org"]


def test_a_long_stored_name_does_not_drop_the_recipient() -> None:
    original = _Original(from_=_Addr("ann@example.org", "A" * 5000))
    draft = reply_draft(original, from_=ME, own_addresses=OWN)
    assert [(a.email, len(a.name)) for a in draft.to] == [("ann@example.org", 200)]


def test_replying_to_my_own_message_goes_to_its_recipients() -> None:
    mine = _Original(from_=_Addr("Me@Example.com"), to=(_Addr("bob@example.org"),), cc=())
    draft = reply_draft(mine, from_=ME, own_addresses=OWN)
    assert [a.email for a in draft.to] == ["bob@example.org"]


def test_references_stay_bounded_on_a_long_thread() -> None:
    long = _Original(references=tuple(f"r{i}@example.org" for i in range(200)))
    draft = reply_draft(long, from_=ME, own_addresses=OWN)
    assert len(draft.references) == MAX_REFERENCES
    assert (
        draft.references[0] == "<r0@example.org>" and draft.references[-1] == "<orig@example.org>"
    )


def test_reply_html_quotes_the_original_escaped() -> None:
    original = _Original(text="<script>alert(1)</script>")
    draft = reply_draft(original, from_=ME, own_addresses=OWN, html="<p>Yes</p>")
    assert (
        draft.html is not None and "&lt;script&gt;" in draft.html and "<script>" not in draft.html
    )


def test_forward_carries_the_attachments_as_attachments() -> None:
    original = _Original(
        subject="Fw: Contract",
        attachments=(
            _Att("contract.pdf", "application/pdf", "k-pdf"),
            _Att("../logo.png", "image/png", "k-logo", inline=True),
        ),
    )
    draft = forward_draft(original, from_=ME, to=(Address.of("dan@example.org"),), text="FYI")
    assert draft.subject == "Fw: Contract" and draft.in_reply_to is None
    assert draft.text is not None and "---------- Forwarded message ----------" in draft.text
    assert "From: Ann <ann@example.org>" in draft.text and "The numbers." in draft.text
    blobs = {"k-pdf": b"%PDF", "k-logo": b"PNG"}
    parsed = parse_message(_build(draft, resolve=blobs.__getitem__))
    assert [(a.filename, a.content, a.inline) for a in parsed.attachments] == [
        ("contract.pdf", b"%PDF", False),
        ("logo.png", b"PNG", False),
    ]


def test_a_signature_goes_below_the_body() -> None:
    draft = with_signature(
        Draft(from_=ME, to=(ME,), text="Hi", html="<p>Hi</p>"), "Me\n<b>Acme</b>"
    )
    assert draft.text == "Hi\n\n-- \nMe\n<b>Acme</b>\n"
    assert draft.html is not None and "&lt;b&gt;Acme&lt;/b&gt;" in draft.html


# ---- The real samples the injection README names --------------------------------------------


@needs_corpus
@pytest.mark.parametrize(
    "sample",
    [
        "mikel-mail/plain_emails/raw_email_double_at_in_header.eml",
        "mikel-mail/error_emails/weird_to_header.eml",
        "mikel-mail/error_emails/empty_group_lists.eml",
        "php-mime-mail-parser/m0027",
        "php-mime-mail-parser/m0124",
    ],
)
def test_replying_to_and_forwarding_the_corpus_samples_stays_safe(sample: str) -> None:
    """Whatever their headers hold, a reply-all to these messages goes only to addresses that
    pass the check (as sent), and a forward carries their attachments under safe names."""
    path = DEV / sample
    if not path.is_file():
        pytest.skip(f"{sample} is not in this copy of the corpus")
    parsed = parse_message(path.read_bytes())

    @dataclass(frozen=True)
    class View:
        subject: str
        from_: object
        reply_to: tuple[object, ...]
        to: tuple[object, ...]
        cc: tuple[object, ...]
        message_id: str | None
        in_reply_to: str | None
        references: tuple[str, ...]
        date: datetime | None
        text: str | None
        html: str | None
        attachments: tuple[_Att, ...]

    view = View(
        subject=parsed.subject,
        from_=parsed.from_[0] if parsed.from_ else None,
        reply_to=parsed.reply_to,
        to=parsed.to,
        cc=parsed.cc,
        message_id=parsed.message_id,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        date=parsed.date,
        text=parsed.text,
        html=parsed.html,
        attachments=tuple(
            _Att(a.filename, a.content_type, f"k{i}") for i, a in enumerate(parsed.attachments)
        ),
    )
    reply = reply_draft(view, from_=ME, own_addresses=OWN, reply_all=True)  # type: ignore[arg-type]
    for address in (*reply.to, *reply.cc):
        assert check_address(address.email) == address.email
    if reply.to or reply.cc:
        raw = _build(reply)
        _only_expected_headers(raw, "cc", "in-reply-to", "references")
    forward = forward_draft(view, from_=ME, to=(Address.of("dan@example.org"),))  # type: ignore[arg-type]
    contents = {f"k{i}": a.content or b"" for i, a in enumerate(parsed.attachments)}
    raw = _build(forward, resolve=contents.__getitem__)
    _only_expected_headers(raw)
    for attachment in parse_message(raw).attachments:
        assert attachment.filename is not None
        assert "/" not in attachment.filename and "\\" not in attachment.filename
        assert not attachment.filename.startswith(".")


@pytest.mark.skipif(not INJECTION.is_file(), reason="shared/corpus/injection/README.md not found")
def test_the_line_breaks_of_the_injection_readme_are_all_covered() -> None:
    """H6 lists the characters some parser treats as a line break: each one is in the table
    above (and in ``compose.LINE_BREAKS``)."""
    from correspond.mail.compose import LINE_BREAKS

    text = INJECTION.read_text()
    listed = {chr(int(h, 16)) for h in re.findall(r"U\+([0-9A-F]{4})", text.split("H7")[0])}
    listed |= {chr(int(h, 16)) for h in re.findall(r"`\\x([0-9a-f]{2})`", text.split("H7")[0])}
    listed |= {"\r", "\n"}
    assert listed, "the README's H6 row was not found"
    covered = {p[2] for p in LINE_BREAK_PAYLOADS if p.startswith("Hi")}
    assert listed <= covered and listed <= set(LINE_BREAKS), listed - covered
