"""The pure parts of sending, as tables: who files the Sent copy, the envelope, what an
interrupted send means, Bcc stripping, subjects, and the builder's refusals of injection
(../shared/corpus/injection/README.md, section 1) and path-like attachment names (section 2)."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime
from email import policy

import pytest

from correspond.errors import ConfigError
from correspond.mail.compose import Address, Draft, build_message, message_bytes
from correspond.mail.outgoing import (
    build_outgoing,
    forward_subject,
    reply_subject,
    safe_filename,
    uploaded,
)
from correspond.outgoing import parse_recipients
from correspond.rules.send import (
    after_interruption,
    envelope_recipients,
    probe_finding,
    sent_copy_policy,
    strip_bcc,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("preset", "recorded", "policy_"),
    [
        ("google", None, "server"),
        ("office365", "append", "server"),  # the preset knows better than a stale finding
        ("exchange-online", None, "server"),
        ("other", None, "probe"),
        ("generic", "append", "append"),
        ("exchange", "server", "server"),
        ("other", "nonsense", "probe"),
    ],
)
def test_who_files_the_sent_copy(preset: str, recorded: str | None, policy_: str) -> None:
    assert sent_copy_policy(preset, recorded) == policy_


def test_probe_finding() -> None:
    assert probe_finding(True) == "server" and probe_finding(False) == "append"


@pytest.mark.parametrize(
    ("in_sent", "receipt", "since", "decision"),
    [
        (True, False, 0.0, "sent"),
        (False, True, 0.0, "sent"),
        (True, True, 999.0, "sent"),
        (False, False, 1.0, "wait"),  # the receipt may be on its way
        (False, False, 119.9, "wait"),
        (False, False, 120.0, "resend"),  # never taken: send again
    ],
)
def test_after_an_interruption(in_sent: bool, receipt: bool, since: float, decision: str) -> None:
    assert (
        after_interruption(
            copy_in_sent=in_sent,
            receipt_found=receipt,
            seconds_since_attempt=since,
            receipt_wait=120.0,
        )
        == decision
    )


def test_envelope_names_each_once_and_the_receipt_last() -> None:
    to, cc, bcc = ["A@x.test", "b@x.test"], ["a@x.test", "c@x.test"], ["d@x.test", "B@X.test"]
    assert envelope_recipients(to, cc, bcc, own="me@x.test", receipt=True) == [
        "A@x.test",
        "b@x.test",
        "c@x.test",
        "d@x.test",
        "me@x.test",
    ]
    assert envelope_recipients(to, [], [], own="me@x.test", receipt=False) == to
    # Sending to oneself needs no separate receipt address.
    assert envelope_recipients(["me@x.test"], [], [], own="ME@x.test", receipt=True) == [
        "me@x.test"
    ]


@pytest.mark.parametrize(
    ("raw", "stripped"),
    [
        (b"From: a\r\nBcc: x@y\r\nTo: b\r\n\r\nbody\r\n", b"From: a\r\nTo: b\r\n\r\nbody\r\n"),
        (
            b"Bcc: x@y,\r\n y@z\r\nSubject: s\r\n\r\nBcc: in the body stays\r\n",
            b"Subject: s\r\n\r\nBcc: in the body stays\r\n",
        ),
        (b"BCC : x\r\nTo: b\r\n\r\n", b"To: b\r\n\r\n"),
        (b"To: b\r\n X-Bcc: folded\r\n\r\n", b"To: b\r\n X-Bcc: folded\r\n\r\n"),
        (b"From: a\r\nTo: b\r\n\r\n", b"From: a\r\nTo: b\r\n\r\n"),
    ],
)
def test_strip_bcc(raw: bytes, stripped: bytes) -> None:
    assert strip_bcc(raw) == stripped


@pytest.mark.parametrize(
    ("subject", "reply", "forward"),
    [
        ("Hello", "Re: Hello", "Fwd: Hello"),
        ("Re: Hello", "Re: Hello", "Fwd: Re: Hello"),
        # A subject that already has a prefix keeps it as it is (mail.compose's rule).
        ("RE: re:  AW: Hello", "RE: re: AW: Hello", "Fwd: RE: re: AW: Hello"),
        ("Fwd: FW: Hello", "Re: Fwd: FW: Hello", "Fwd: FW: Hello"),
        ("Re[2]: Hello", "Re[2]: Hello", "Fwd: Re[2]: Hello"),
    ],
)
def test_prefixes_are_not_stacked(subject: str, reply: str, forward: str) -> None:
    assert reply_subject(subject) == reply
    assert forward_subject(subject) == forward


def draft(**changes: object) -> Draft:
    """A draft as the sending path builds it; ``(name, address)`` pairs are taken as given
    (``Address`` itself, not ``Address.of``: nothing cleaned before the builder's checks)."""
    base: dict[str, object] = {
        "from_": ("Ann Example", "ann@example.test"),
        "to": (("Bob", "bob@example.test"),),
        "subject": "Hello",
        "text": "Hi",
    }
    merged = {**base, **changes}
    for key in ("to", "cc", "bcc"):
        if key in merged:
            merged[key] = tuple(Address(email, name) for name, email in merged[key])  # type: ignore[attr-defined]
    name, email = merged["from_"]  # type: ignore[misc]
    merged["from_"] = Address(email, name)
    return Draft(**merged)  # type: ignore[arg-type]


def built(d: Draft) -> bytes:
    return build_outgoing(d, message_id_domain="example.test", now=NOW).as_bytes(policy=policy.SMTP)


def header_names(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line[:1] not in (" ", "\t")]


@pytest.mark.parametrize(
    "evil",
    [
        "Hi\r\nBcc: victim@example.com",
        "Hi\nBcc: victim@example.com",
        "Hi\rBcc: victim@example.com",
        "Hi\u2028Bcc: victim@example.com",
        "Hi\u2029x",
        "Hi\u0085x",
        "Hi\x0bx",
        "Hi\x0cx",
        "Hi\x1cx",
        "Hi\x00x",
    ],
)
def test_a_line_break_in_a_subject_or_name_is_refused(evil: str) -> None:  # H1, H2, H6
    with pytest.raises(ConfigError, match="line break"):
        built(draft(subject=evil))
    with pytest.raises(ConfigError, match="line break"):
        built(draft(to=((evil, "bob@example.test"),)))


def test_an_encoded_word_that_decodes_to_a_line_break_is_refused() -> None:  # H2
    # Python before 3.12.5 writes what such a word decodes to (CVE-2024-6923): a new header.
    # The sending path refuses it; the composer's builder alone turns it into text (one
    # Subject, no Bcc), whatever the Python.
    sneaky = "=?UTF-8?B?ZXZlDQpCY2M6IHhAZXhhbXBsZS5jb20=?="
    with pytest.raises(ConfigError, match="line break"):
        built(draft(to=((sneaky, "bob@example.test"),)))
    with pytest.raises(ConfigError, match="line break"):
        built(draft(subject=sneaky))
    # A harmless encoded word is kept as text.
    raw = built(draft(subject="=?UTF-8?B?aGVsbG8=?="))
    assert header_names(raw).count("Subject") == 1 and "Bcc" not in header_names(raw)
    alone = build_message(draft(subject=sneaky), message_id_domain="example.test", now=NOW)
    names = header_names(message_bytes(alone))
    assert names.count("Subject") == 1 and "Bcc" not in names
    # A word inside a word (decoded twice) is refused too.
    nested = "=?UTF-8?Q?=3D=3FUTF-8=3FB=3FZXZlDQpCY2M6IHhAZXhhbXBsZS5jb20=3D=3F=3D?="
    with pytest.raises(ConfigError, match="line break"):
        built(draft(subject=nested))


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com>\r\nRCPT TO:<b@example.net",  # H3
        "a@example.com\r\nDATA",
        "a@b@c.test",  # H4
        "alice@example.org)<bob@example.org>",
        "undisclosed-recipients:;",
        "no-at-sign",
        "a@-bad-.test",
        "a@x..test",
        "",
    ],
)
def test_a_bad_recipient_is_refused_by_name(address: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_recipients([address])
        built(draft(to=(("", address),)))
    assert "address" in str(refused.value)


def test_the_address_checked_is_the_one_sent_to() -> None:  # H4
    (pair,) = parse_recipients(["Bob Example <bob@example.test>"])
    assert pair == ("Bob Example", "bob@example.test")
    raw = built(draft(to=(pair,)))
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@example.test"]


def test_bodies_are_crlf_and_lines_folded() -> None:  # H5, H7
    raw = built(draft(subject="word " * 190, text="a\n.\r\nb\r\n.\nc\rd\n.\n", html=None))
    assert re.search(rb"(?<!\r)\n", raw) is None
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == ("word " * 190).strip()
    with pytest.raises(ConfigError, match="longer than 1000"):  # bounded
        built(draft(subject="word " * 400))


def test_html_only_gets_a_text_part_and_attachments_keep_no_path() -> None:  # section 2
    raw = built(
        draft(
            text=None,
            html="<p>Hello <b>there</b></p><script>x()</script>",
            attachments=(
                uploaded("../../etc/passwd", "text/plain", b"root"),
                uploaded("..\\..\\Windows\\x.dll", "application/x-evil\r\nX: 1", b"x"),
                uploaded("r\u00e9sum\u00e9 final.pdf", "application/pdf", b"%PDF"),
            ),
        )
    )
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed.get_content_type() == "multipart/mixed"
    body = parsed.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Hello there"
    names = [p.get_filename() for p in parsed.iter_attachments()]
    assert names == ["passwd", "x.dll", "r\u00e9sum\u00e9 final.pdf"]
    types = [p.get_content_type() for p in parsed.iter_attachments()]
    assert types == ["text/plain", "application/octet-stream", "application/pdf"]


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("C:\\x.exe", "x.exe"),
        ("\\\\server\\share\\x", "x"),
        ("..", "attachment"),
        ("", "attachment"),
        ("a.pdf\x00.exe", "a.pdf.exe"),
        (".hidden", "hidden"),
    ],
)
def test_safe_filename(name: str, safe: str) -> None:
    assert safe_filename(name) == safe


def test_replies_carry_in_reply_to_and_references() -> None:
    raw = built(draft(in_reply_to="orig@x.test", references=("root@x.test", "orig@x.test")))
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["In-Reply-To"] == "<orig@x.test>"
    assert parsed["References"] == "<root@x.test> <orig@x.test>"
    assert str(parsed["Message-ID"]).endswith("@example.test>")
    with pytest.raises(ConfigError, match="no recipient"):
        built(draft(to=()))


def test_a_recipient_name_that_decodes_to_a_line_break_is_refused() -> None:  # H2
    sneaky = '"=?UTF-8?B?ZXZlDQpCY2M6IHhAZXhhbXBsZS5jb20=?=" <bob@example.test>'
    with pytest.raises(ConfigError, match="line break"):
        parse_recipients([sneaky])
    assert parse_recipients(['"=?UTF-8?B?aGVsbG8=?=" <bob@example.test>'])[0][1] == (
        "bob@example.test"
    )
