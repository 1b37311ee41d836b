"""Provider presets fill an account draft; overrides and missing fields are handled."""

from __future__ import annotations

import re
from typing import get_args

import pytest

from correspond.errors import ConfigError
from correspond.rules.presets import (
    PRESETS,
    PresetKey,
    check_account_name,
    check_certificate_pem,
    check_email,
    check_host,
    default_imap_port,
    default_smtp_port,
    draft_from_preset,
    get_preset,
    missing_fields,
)

# A real (if tiny) DER certificate is not needed: the check is that the PEM block holds base64
# of an ASN.1 SEQUENCE, which "MIIB..." is.
PEM = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n"


def test_google() -> None:
    d = draft_from_preset("google", name="me", email="me@gmail.com")
    assert (d.imap_host, d.imap_port, d.imap_security) == ("imap.gmail.com", 993, "tls")
    assert (d.smtp_host, d.smtp_port, d.smtp_security) == ("smtp.gmail.com", 465, "tls")
    assert d.username == "me@gmail.com"
    assert d.auth_kind == "password"
    assert d.preset == "google"


@pytest.mark.parametrize("key", ["office365", "exchange-online"])
def test_exchange_online(key: str) -> None:
    d = draft_from_preset(key, name="w", email="a@contoso.com", username="alias@contoso.com")
    assert (d.imap_host, d.imap_port, d.imap_security) == ("outlook.office365.com", 993, "tls")
    assert (d.smtp_host, d.smtp_port, d.smtp_security) == ("smtp.office365.com", 587, "starttls")
    assert d.username == "alias@contoso.com"


def test_self_hosted_exchange_needs_a_host_and_uses_it_for_smtp() -> None:
    with pytest.raises(ConfigError, match="imap_host"):
        draft_from_preset("exchange", name="x", email="a@corp.example")
    d = draft_from_preset(
        "exchange", name="x", email="a@corp.example", imap_host="mail.corp.example"
    )
    assert (d.imap_host, d.imap_port, d.imap_security) == ("mail.corp.example", 993, "tls")
    assert (d.smtp_host, d.smtp_port, d.smtp_security) == ("mail.corp.example", 587, "starttls")


def test_other_defaults_to_starttls_and_security_picks_ports() -> None:
    d = draft_from_preset("other", name="o", email="a@b.example", imap_host="imap.b.example")
    assert (d.imap_port, d.imap_security, d.smtp_port, d.smtp_security) == (
        143,
        "starttls",
        587,
        "starttls",
    )
    assert d.smtp_host is None
    t = draft_from_preset(
        "other",
        name="o",
        email="a@b.example",
        imap_host="imap.b.example",
        imap_security="tls",
        smtp_host="smtp.b.example",
        smtp_security="TLS",
    )
    assert (t.imap_port, t.imap_security, t.smtp_port, t.smtp_security) == (993, "tls", 465, "tls")
    explicit = draft_from_preset(
        "other", name="o", email="a@b.example", imap_host="h", imap_security="tls", imap_port=1993
    )
    assert explicit.imap_port == 1993


def test_missing_fields_are_listed_together() -> None:
    assert missing_fields("other", name="", email=None, imap_host=None) == [
        "name",
        "email",
        "imap_host",
    ]
    assert missing_fields("google", name="g", email="x@gmail.com", imap_host=None) == []
    with pytest.raises(ConfigError, match="missing: email, imap_host"):
        draft_from_preset("other", name="o", email=None)


def test_plaintext_needs_explicit_permission() -> None:
    with pytest.raises(ConfigError, match="allow_plaintext"):
        draft_from_preset("other", name="o", email="a@b", imap_host="h", imap_security="plain")
    d = draft_from_preset(
        "other", name="o", email="a@b", imap_host="h", imap_security="plain", allow_plaintext=True
    )
    assert (d.imap_security, d.imap_port, d.allow_plaintext) == ("plain", 143, True)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'yahooo'.*google"):
        get_preset("yahooo")
    with pytest.raises(ConfigError, match="imap_security"):
        draft_from_preset("other", name="o", email="a@b", imap_host="h", imap_security="ssl")
    with pytest.raises(ConfigError, match="imap_port"):
        draft_from_preset("other", name="o", email="a@b", imap_host="h", imap_port=70000)
    with pytest.raises(ConfigError, match="window_days"):
        draft_from_preset("other", name="o", email="a@b", imap_host="h", window_days=0)


def test_whitespace_is_trimmed_and_overrides_kept() -> None:
    d = draft_from_preset(
        "other",
        name=" work ",
        email=" a@b.example ",
        imap_host=" h.example ",
        window_days=30,
        trusted_cert_pem=PEM,
        toggles={"delete_remote_on_crm_delete": True},
    )
    assert (d.name, d.email, d.imap_host) == ("work", "a@b.example", "h.example")
    assert d.window_days == 30 and d.trusted_cert_pem == PEM
    assert d.toggles == {"delete_remote_on_crm_delete": True}
    assert d.with_changes(name="other").name == "other"


def test_every_preset_has_sane_ports() -> None:
    assert set(PRESETS) == {"google", "office365", "exchange-online", "exchange", "other"}
    for p in PRESETS.values():
        assert p.imap_security in ("tls", "starttls")
        assert p.smtp_security in ("tls", "starttls")
        assert p.imap_port in (993, 143) and p.smtp_port in (465, 587)
    assert default_imap_port("tls") == 993 and default_imap_port("starttls") == 143
    assert default_smtp_port("tls") == 465 and default_smtp_port("starttls") == 587


def test_preset_keys_match_the_api_literal() -> None:
    assert set(get_args(PresetKey)) == set(PRESETS)


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("Google", "google"),
        ("gmail", "google"),
        ("Office 365", "office365"),
        ("microsoft365", "office365"),
        ("Exchange Office", "exchange-online"),
        ("exchange_online", "exchange-online"),
        ("Exchange self-hosted", "exchange"),
        ("Other IMAP", "other"),
        ("imap", "other"),
    ],
)
def test_presets_by_other_spellings(spelling: str, key: str) -> None:
    assert get_preset(spelling).key == key


def test_other_imap_security_picks_the_standard_pair() -> None:
    """Other IMAP: 143/587 with STARTTLS, or 993/465 with TLS, from one choice."""
    tls = draft_from_preset(
        "other", name="o", email="a@b.example", imap_host="h", imap_security="tls"
    )
    assert (tls.imap_port, tls.smtp_port, tls.smtp_security) == (993, 465, "tls")
    starttls = draft_from_preset(
        "other", name="o", email="a@b.example", imap_host="h", imap_security="starttls"
    )
    assert (starttls.imap_port, starttls.smtp_port, starttls.smtp_security) == (
        143,
        587,
        "starttls",
    )
    mixed = draft_from_preset(
        "other",
        name="o",
        email="a@b.example",
        imap_host="h",
        imap_security="tls",
        smtp_security="starttls",
    )
    assert (mixed.imap_port, mixed.smtp_port) == (993, 587)
    # Google's SMTP side is fixed by the preset, whatever the IMAP security.
    g = draft_from_preset("google", name="g", email="a@gmail.com", imap_security="tls")
    assert (g.smtp_port, g.smtp_security) == (465, "tls")
    plain = draft_from_preset(
        "other",
        name="o",
        email="a@b.example",
        imap_host="h",
        imap_security="plain",
        allow_plaintext=True,
    )
    assert (plain.imap_port, plain.smtp_port, plain.smtp_security) == (143, 587, "starttls")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "has space"}, "account name 'has space' is not allowed"),
        ({"name": "a/b"}, "is not allowed"),
        ({"name": "x" * 101}, "is not allowed"),
        ({"email": "nobody"}, "not an e-mail address"),
        ({"email": "a b@c.d"}, "not an e-mail address"),
        ({"imap_host": "mail.example.com:993"}, "without a port"),
        ({"imap_host": "https://mail.example.com"}, "not a URL"),
        ({"imap_host": "mail example.com"}, "spaces"),
        ({"smtp_host": "smtp.example.com:587"}, "smtp_port"),
        ({"trusted_cert_pem": "hello"}, "not a PEM certificate"),
        ({"trusted_cert_pem": PEM.replace("MIIBAA==", "aGVsbG8=")}, "not a certificate"),
    ],
)
def test_malformed_fields_are_refused_with_the_reason(kwargs: dict[str, str], words: str) -> None:
    args: dict[str, str] = {"name": "o", "email": "a@b.example", "imap_host": "h", **kwargs}
    name, email = args.pop("name"), args.pop("email")
    with pytest.raises(ConfigError, match=re.escape(words)):
        draft_from_preset("other", name=name, email=email, **args)  # type: ignore[arg-type]


def test_field_checks_accept_what_servers_use() -> None:
    assert check_account_name(" work ") == "work"
    assert check_account_name("me@example.com") == "me@example.com"
    assert check_email("first.last+crm@sub.example.co.uk") == "first.last+crm@sub.example.co.uk"
    assert check_email("root@localhost") == "root@localhost"
    assert check_host("127.0.0.1", "imap_host") == "127.0.0.1"
    assert check_host("[::1]", "imap_host") == "::1"
    assert check_host("mail.bücher.example", "imap_host") == "mail.bücher.example"
    assert check_certificate_pem(PEM) == PEM
