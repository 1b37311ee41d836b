"""Provider presets fill an account draft; overrides and missing fields are handled."""

from __future__ import annotations

import re
from typing import get_args

import pytest

from correspond.errors import ConfigError
from correspond.rules.presets import (
    PRESETS,
    AccountChanges,
    AccountDraft,
    PresetKey,
    apply_changes,
    check_account_name,
    check_certificate_pem,
    check_email,
    check_host,
    check_username,
    default_imap_port,
    default_smtp_port,
    draft_from_preset,
    get_preset,
    missing_fields,
    port_security_conflict,
    security_for_port,
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
    assert d.smtp_host == "imap.b.example"  # most servers send from the IMAP host
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


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"imap_port": 993}, (993, "tls", 465, "tls")),
        ({"imap_port": 143}, (143, "starttls", 587, "starttls")),
        ({"imap_port": 10993}, (10993, "starttls", 587, "starttls")),  # not well known
        ({"smtp_port": 465}, (143, "starttls", 465, "tls")),
        ({"smtp_port": 25}, (143, "starttls", 25, "starttls")),
        ({"imap_port": 993, "smtp_port": 587}, (993, "tls", 587, "starttls")),
        ({"imap_port": 993, "imap_security": "starttls"}, (993, "starttls", 587, "starttls")),
    ],
)
def test_a_well_known_port_given_alone_picks_its_security(
    args: dict[str, object], expected: tuple[object, ...]
) -> None:
    d = draft_from_preset("other", name="o", email="a@b.example", imap_host="h", **args)  # type: ignore[arg-type]
    assert (d.imap_port, d.imap_security, d.smtp_port, d.smtp_security) == expected


def test_well_known_ports_and_conflicts() -> None:
    assert [security_for_port("imap", p) for p in (993, 143, 1143)] == ["tls", "starttls", None]
    assert [security_for_port("smtp", p) for p in (465, 587, 25, 2525)] == [
        "tls",
        "starttls",
        "starttls",
        None,
    ]
    assert port_security_conflict("imap", 993, "tls") is None
    assert port_security_conflict("imap", 10993, "starttls") is None
    assert port_security_conflict("imap", 143, "plain") is None  # STARTTLS port, no upgrade
    assert port_security_conflict("imap", 993, "starttls") == (
        "IMAP port 993 normally speaks implicit TLS (tls), not starttls; stored as given"
    )
    assert "IMAP port 143 normally speaks STARTTLS" in str(
        port_security_conflict("imap", 143, "tls")
    )
    assert "SMTP port 465" in str(port_security_conflict("smtp", 465, "plain"))
    assert "SMTP port 587" in str(port_security_conflict("smtp", 587, "tls"))


def test_smtp_host_defaults_to_the_imap_host_where_the_preset_says() -> None:
    for key in ("other", "exchange"):
        d = draft_from_preset(key, name="x", email="a@b.example", imap_host="mail.b.example")
        assert d.smtp_host == "mail.b.example", key
        given = draft_from_preset(
            key, name="x", email="a@b.example", imap_host="mail.b.example", smtp_host="smtp.b"
        )
        assert given.smtp_host == "smtp.b"
    assert PRESETS["other"].ask_smtp_host and not PRESETS["exchange"].ask_smtp_host
    assert draft_from_preset("google", name="g", email="a@gmail.com").smtp_host == "smtp.gmail.com"


def test_user_names() -> None:
    assert check_username(" me ") == "me"
    assert check_username("DOMAIN\\me") == "DOMAIN\\me"
    with pytest.raises(ConfigError, match="empty"):
        check_username("  ")
    with pytest.raises(ConfigError, match="control characters"):
        check_username("me\r\nA1 LOGOUT")
    with pytest.raises(ConfigError, match="control characters"):
        draft_from_preset("other", name="o", email="a@b", imap_host="h", username="a\nb")
    # Empty means "the default", as when left out.
    assert (
        draft_from_preset("other", name="o", email="a@b", imap_host="h", username=" ").username
        == "a@b"
    )


def _account(**overrides: object) -> AccountDraft:
    base = draft_from_preset("other", name="o", email="a@b.example", imap_host="h.example")
    return base.with_changes(**overrides)


TLS_993 = {"imap_port": 993, "imap_security": "tls"}
TLS_10993 = {"imap_port": 10993, "imap_security": "tls"}


@pytest.mark.parametrize(
    ("current", "changes", "imap"),
    [
        ({}, {"imap_port": 993}, (993, "tls")),
        ({}, {"imap_security": "tls"}, (993, "tls")),
        ({}, {"imap_security": "TLS", "imap_port": 10993}, (10993, "tls")),
        ({}, {"imap_port": 10143}, (10143, "starttls")),
        (TLS_993, {"imap_port": 143}, (143, "starttls")),
        (TLS_993, {"imap_security": "starttls"}, (143, "starttls")),
        # A custom port is the server's choice: a new security leaves it alone.
        (TLS_10993, {"imap_security": "starttls"}, (10993, "starttls")),
        # Given both, they are kept as given, even against a well-known port.
        ({}, {"imap_port": 993, "imap_security": "starttls"}, (993, "starttls")),
    ],
)  # fmt: skip
def test_apply_changes_ports_and_security(
    current: dict[str, object], changes: dict[str, object], imap: tuple[int, str]
) -> None:
    after = apply_changes(_account(**current), AccountChanges(**changes))  # type: ignore[arg-type]
    assert (after.imap_port, after.imap_security) == imap
    assert (after.smtp_port, after.smtp_security) == (587, "starttls")  # the other side stays


def test_apply_changes_smtp_side_and_following_fields() -> None:
    current = _account()
    assert current.smtp_host == "h.example" and current.username == "a@b.example"
    after = apply_changes(
        current, AccountChanges(email="c@d.example", imap_host="mail.d.example", smtp_port=465)
    )
    assert (after.email, after.username) == ("c@d.example", "c@d.example")
    assert after.smtp_host == "mail.d.example"  # it was the IMAP host: it follows
    assert (after.smtp_port, after.smtp_security) == (465, "tls")
    own = current.with_changes(username="me", smtp_host="smtp.example")
    kept = apply_changes(own, AccountChanges(email="c@d.example", imap_host="mail.d.example"))
    assert (kept.username, kept.smtp_host) == ("me", "smtp.example")
    google = draft_from_preset("google", name="g", email="a@gmail.com")
    moved = apply_changes(google, AccountChanges(imap_host="imap2.gmail.com"))
    assert moved.smtp_host == "smtp.gmail.com"  # a fixed SMTP server does not follow


def test_apply_changes_checks_the_whole_account() -> None:
    current = _account()
    with pytest.raises(ConfigError, match="allow_plaintext"):
        apply_changes(current, AccountChanges(imap_security="plain"))
    plain = apply_changes(current, AccountChanges(imap_security="plain", allow_plaintext=True))
    assert (plain.imap_security, plain.imap_port, plain.allow_plaintext) == ("plain", 143, True)
    with pytest.raises(ConfigError, match="allow_plaintext"):
        apply_changes(plain, AccountChanges(allow_plaintext=False))
    for changes, words in (
        (AccountChanges(email="nobody"), "not an e-mail address"),
        (AccountChanges(username=""), "user name is empty"),
        (AccountChanges(imap_host="h.example:993"), "without a port"),
        (AccountChanges(smtp_host="smtp://x"), "not a URL"),
        (AccountChanges(imap_port=0), "between 1 and 65535"),
        (AccountChanges(smtp_security="ssl"), "smtp_security must be one of"),
        (AccountChanges(trusted_cert_pem="hello"), "not a PEM certificate"),
        (AccountChanges(window_days=0), "window_days"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            apply_changes(current, changes)


def test_apply_changes_certificate_toggles_and_nothing() -> None:
    current = _account(trusted_cert_pem=PEM, window_days=60)
    assert AccountChanges().is_empty() and not AccountChanges().touches_connection()
    assert apply_changes(current, AccountChanges()) == current
    assert apply_changes(current, AccountChanges(trusted_cert_pem=None)).trusted_cert_pem is None
    assert AccountChanges(trusted_cert_pem=None).touches_connection()
    assert not AccountChanges(window_days=3, email="x@y").touches_connection()
    assert AccountChanges(imap_port=993).touches("imap")
    assert not AccountChanges(imap_port=993).touches("smtp")
    toggled = apply_changes(
        current.with_changes(toggles={"a": False, "b": False}),
        AccountChanges(toggles={"b": True}),
    )
    assert toggled.toggles == {"a": False, "b": True}


def test_a_provider_preset_with_another_imap_host_is_flagged() -> None:
    from correspond.rules.presets import preset_host_mismatch

    warning = preset_host_mismatch("google", "other.example", "smtp.gmail.com")
    assert warning is not None and "smtp.gmail.com" in warning and "--smtp-host" in warning
    assert preset_host_mismatch("google", "imap.gmail.com", "smtp.gmail.com") is None
    assert preset_host_mismatch("google", "other.example", "smtp.other.example") is None
    assert preset_host_mismatch("other", "mail.example.com", "mail.example.com") is None
