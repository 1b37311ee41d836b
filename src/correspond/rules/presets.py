"""Provider presets: where a provider's IMAP and SMTP servers are and how to reach them.

Pure data plus :func:`draft_from_preset`, which fills an :class:`AccountDraft` from a preset and
the user's overrides and reports what is still missing. Ports follow RFC 8314 §3.3 (implicit TLS:
IMAP 993, submission 465) and RFC 6409 §3.1 (submission with STARTTLS on 587); 143 is IMAP with
STARTTLS (RFC 3501 §6.2.1).

:func:`apply_changes` does the same for an existing account: it applies a partial
:class:`AccountChanges` and checks the result as a whole, with the same rules as a new account.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import EllipsisType
from typing import Literal

from correspond.errors import ConfigError

__all__ = [
    "ACCOUNT_NAME_PATTERN",
    "AUTH_KINDS",
    "PRESETS",
    "PRESET_ALIASES",
    "SECURITIES",
    "AccountChanges",
    "AccountDraft",
    "AuthKind",
    "Preset",
    "PresetKey",
    "Security",
    "Side",
    "apply_changes",
    "check_account_name",
    "check_certificate_pem",
    "check_email",
    "check_host",
    "check_username",
    "default_imap_port",
    "default_smtp_port",
    "draft_from_preset",
    "get_preset",
    "missing_fields",
    "port_security_conflict",
    "preset_help",
    "preset_host_mismatch",
    "security_for_port",
]

Security = Literal["tls", "starttls", "plain"]
AuthKind = Literal["password", "oauth2"]
PresetKey = Literal["google", "office365", "exchange-online", "exchange", "other"]
Side = Literal["imap", "smtp"]
SECURITIES: tuple[Security, ...] = ("tls", "starttls", "plain")
AUTH_KINDS: tuple[AuthKind, ...] = ("password", "oauth2")

#: An account name is a handle typed on command lines and in URLs: no spaces or slashes.
ACCOUNT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$"
_ACCOUNT_NAME = re.compile(ACCOUNT_NAME_PATTERN)
_ACCOUNT_NAME_MAX = 100


@dataclass(frozen=True, slots=True)
class Preset:
    """What a provider fixes. ``None`` hosts are asked of the user."""

    key: str
    label: str
    imap_host: str | None
    imap_port: int
    imap_security: Security
    smtp_host: str | None
    smtp_port: int
    smtp_security: Security
    auth_kind: AuthKind = "password"
    # Exchange serves IMAP and SMTP from one host, and so do most other IMAP servers: the SMTP
    # host defaults to the IMAP host.
    smtp_host_from_imap: bool = False
    # "Other" servers sometimes send from a separate host: the guided set-up asks for it
    # (defaulting to the IMAP host); self-hosted Exchange is one host.
    ask_smtp_host: bool = False
    # "Other IMAP" comes in two standard pairs (143/587 STARTTLS, 993/465 TLS): choosing the
    # IMAP security picks the SMTP one too, unless the SMTP security is given.
    smtp_security_from_imap: bool = False
    note: str = ""


PRESETS: dict[str, Preset] = {
    p.key: p
    for p in (
        Preset(
            key="google",
            label="Google (Gmail, Workspace)",
            imap_host="imap.gmail.com",
            imap_port=993,
            imap_security="tls",
            smtp_host="smtp.gmail.com",
            smtp_port=465,
            smtp_security="tls",
            note="Use an app password until OAuth2 sign-in is available.",
        ),
        Preset(
            key="office365",
            label="Microsoft 365 (Exchange Online)",
            imap_host="outlook.office365.com",
            imap_port=993,
            imap_security="tls",
            smtp_host="smtp.office365.com",
            smtp_port=587,
            smtp_security="starttls",
        ),
        Preset(
            key="exchange-online",
            label="Exchange Office (Exchange Online)",
            imap_host="outlook.office365.com",
            imap_port=993,
            imap_security="tls",
            smtp_host="smtp.office365.com",
            smtp_port=587,
            smtp_security="starttls",
        ),
        Preset(
            key="exchange",
            label="Microsoft Exchange (self-hosted)",
            imap_host=None,
            imap_port=993,
            imap_security="tls",
            smtp_host=None,
            smtp_port=587,
            smtp_security="starttls",
            smtp_host_from_imap=True,
        ),
        Preset(
            key="other",
            label="Other IMAP (143/587 STARTTLS, or 993/465 TLS)",
            imap_host=None,
            imap_port=143,
            imap_security="starttls",
            smtp_host=None,
            smtp_port=587,
            smtp_security="starttls",
            smtp_host_from_imap=True,
            ask_smtp_host=True,
            smtp_security_from_imap=True,
        ),
    )
}

#: Other spellings people use for the presets (compared after lower-casing, with spaces and
#: underscores as hyphens).
PRESET_ALIASES: dict[str, str] = {
    "gmail": "google",
    "google-workspace": "google",
    "office-365": "office365",
    "microsoft365": "office365",
    "microsoft-365": "office365",
    "m365": "office365",
    "exchange-office": "exchange-online",
    "exchangeonline": "exchange-online",
    "exchange-self-hosted": "exchange",
    "exchange-server": "exchange",
    "other-imap": "other",
    "imap": "other",
}

_IMAP_PORTS: dict[Security, int] = {"tls": 993, "starttls": 143, "plain": 143}
_SMTP_PORTS: dict[Security, int] = {"tls": 465, "starttls": 587, "plain": 25}


# What a well-known port implies when no security is given: implicit TLS on 993 and 465
# (RFC 8314 §3.3), STARTTLS on 143 (RFC 3501 §6.2.1), 587 (RFC 6409) and 25 (RFC 3207).
_PORT_SECURITY: dict[Side, dict[int, Security]] = {
    "imap": {993: "tls", 143: "starttls"},
    "smtp": {465: "tls", 587: "starttls", 25: "starttls"},
}
_SECURITY_WORDS: dict[Security, str] = {
    "tls": "implicit TLS",
    "starttls": "STARTTLS",
    "plain": "no encryption",
}


def security_for_port(side: Side, port: int) -> Security | None:
    """The security a well-known ``port`` implies on ``side`` (``None`` for other ports)."""
    return _PORT_SECURITY[side].get(port)


def port_security_conflict(side: Side, port: int, security: str) -> str | None:
    """A one-line warning when ``security`` contradicts a well-known ``port`` (STARTTLS on 993,
    TLS on 143...), else ``None``. Such a pair is allowed (some servers do odd things), so this
    is advice, not an error. Plaintext on a STARTTLS port is that port without the upgrade."""
    expected = security_for_port(side, port)
    if expected is None or expected == security or (security, expected) == ("plain", "starttls"):
        return None
    label = side.upper()
    return (
        f"{label} port {port} normally speaks {_SECURITY_WORDS[expected]} ({expected}), "
        f"not {security}; stored as given"
    )


def preset_host_mismatch(preset: str, imap_host: str, smtp_host: str | None) -> str | None:
    """A one-line warning when a provider preset's IMAP host was replaced but its SMTP host was
    kept (mail read from one provider, sent through another), else ``None``."""
    p = PRESETS.get(preset)
    if p is None or p.imap_host is None or imap_host.lower() == p.imap_host:
        return None
    if smtp_host is None or p.smtp_host is None or smtp_host.lower() != p.smtp_host:
        return None
    return (
        f"IMAP host {imap_host} is not the {preset} preset's {p.imap_host}, but SMTP stays "
        f"{p.smtp_host}; give --smtp-host too, or use --preset other for another provider"
    )


def default_imap_port(security: Security) -> int:
    """993 for implicit TLS (RFC 8314 §3.3), else 143."""
    return _IMAP_PORTS[security]


def default_smtp_port(security: Security) -> int:
    """465 for implicit TLS (RFC 8314 §3.3), 587 for STARTTLS submission (RFC 6409), 25 plain."""
    return _SMTP_PORTS[security]


@dataclass(frozen=True, slots=True)
class AccountDraft:
    """Everything needed to create an account except its secret."""

    name: str
    preset: str
    email: str
    username: str
    imap_host: str
    imap_port: int
    imap_security: Security
    smtp_host: str | None
    smtp_port: int
    smtp_security: Security
    auth_kind: AuthKind = "password"
    allow_plaintext: bool = False
    trusted_cert_pem: str | None = None
    window_days: int | None = None
    toggles: dict[str, bool] = field(default_factory=dict)

    def with_changes(self, **changes: object) -> AccountDraft:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def connection(self) -> tuple[object, ...]:
        """What reaching and signing in to the servers depends on (secret aside)."""
        return (
            self.username,
            self.imap_host,
            self.imap_port,
            self.imap_security,
            self.smtp_host,
            self.smtp_port,
            self.smtp_security,
            self.allow_plaintext,
            self.trusted_cert_pem,
        )


@dataclass(frozen=True, slots=True)
class AccountChanges:
    """A partial update of an account: ``None`` (``...`` for the certificate, where ``None``
    means "forget it") leaves a field as it is. Checked by :func:`apply_changes`."""

    email: str | None = None
    username: str | None = None
    imap_host: str | None = None
    imap_port: int | None = None
    imap_security: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str | None = None
    allow_plaintext: bool | None = None
    trusted_cert_pem: str | EllipsisType | None = ...
    window_days: int | None = None
    toggles: Mapping[str, bool] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """Whether nothing at all is to change."""
        return self == AccountChanges()

    def touches_connection(self) -> bool:
        """Whether a field the connection depends on is given (the user acted on it)."""
        return any(
            value is not None
            for value in (
                self.username,
                self.imap_host,
                self.imap_port,
                self.imap_security,
                self.smtp_host,
                self.smtp_port,
                self.smtp_security,
                self.allow_plaintext,
            )
        ) or not isinstance(self.trusted_cert_pem, EllipsisType)

    def touches(self, side: Side) -> bool:
        """Whether the port or security of ``side`` is given."""
        if side == "imap":
            return self.imap_port is not None or self.imap_security is not None
        return self.smtp_port is not None or self.smtp_security is not None


def get_preset(key: str) -> Preset:
    """The preset called ``key`` (any case; aliases such as ``gmail`` or ``exchange-office``);
    :class:`ConfigError` naming the known ones otherwise."""
    wanted = re.sub(r"[\s_]+", "-", key.strip().lower())
    found = PRESETS.get(wanted) or PRESETS.get(PRESET_ALIASES.get(wanted, ""))
    if found is None:
        known = ", ".join(PRESETS)
        raise ConfigError(f"unknown preset {key!r}; choose one of: {known}")
    return found


def preset_help() -> str:
    """One line per preset, ``key: label``, for help texts."""
    return "; ".join(f"{p.key}: {p.label}" for p in PRESETS.values())


def check_account_name(name: str) -> str:
    """The trimmed account name, or :class:`ConfigError` saying what a name may hold."""
    name = name.strip()
    if not name:
        raise ConfigError("the account name is empty")
    if len(name) > _ACCOUNT_NAME_MAX or not _ACCOUNT_NAME.match(name):
        raise ConfigError(
            f"account name {name!r} is not allowed: use up to {_ACCOUNT_NAME_MAX} letters, "
            "digits and . _ @ + - (starting with a letter or digit), e.g. work"
        )
    return name


def check_email(email: str) -> str:
    """The trimmed address if it looks like ``local@domain`` (RFC 5322 §3.4.1, loosely: the
    server decides the rest), else :class:`ConfigError`."""
    email = email.strip()
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in email) or "@" in domain:
        raise ConfigError(f"{email!r} is not an e-mail address (expected name@domain)")
    return email


def check_username(username: str) -> str:
    """The trimmed sign-in name, or :class:`ConfigError` when it is empty or holds control
    characters (a line break would end the IMAP command that carries it)."""
    username = username.strip()
    if not username:
        raise ConfigError("the user name is empty")
    if any(unicodedata.category(c).startswith("C") for c in username):
        raise ConfigError("the user name holds control characters")
    return username


def check_host(host: str, field_name: str) -> str:
    """A trimmed server name or IP address, or :class:`ConfigError` with the likely mistake
    (a URL, a ``host:port``, a space)."""
    host = host.strip()
    if not host:
        raise ConfigError(f"{field_name} is empty")
    if "://" in host or "/" in host:
        raise ConfigError(f"{field_name} {host!r} should be a server name, not a URL")
    if ":" in host:
        with_brackets = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.IPv6Address(with_brackets)
            return with_brackets
        except ValueError:
            port = field_name.replace("_host", "_port")
            flag = "--" + port.replace("_", "-")
            raise ConfigError(
                f"{field_name} {host!r} should be a server name without a port "
                f"(give the port separately: {port}, or {flag} on the command line)"
            ) from None
    if any(c.isspace() or unicodedata.category(c).startswith("C") for c in host):
        raise ConfigError(f"{field_name} {host!r} holds spaces or control characters")
    if len(host) > 253:
        raise ConfigError(f"{field_name} is longer than a DNS name can be (253 characters)")
    return host


_PEM_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL | re.ASCII
)


def check_certificate_pem(pem: str) -> str:
    """``pem`` if it holds PEM certificates (RFC 7468 §5) whose bodies are base64 DER, else
    :class:`ConfigError`, so a wrong file is refused when the account is saved rather than at
    its first connection. (Pure: TLS itself loads it at connect time.)"""
    blocks = _PEM_BLOCK.findall(pem)
    if not blocks:
        raise ConfigError(
            "the trusted certificate is not a PEM certificate "
            "(expected a -----BEGIN CERTIFICATE----- block)"
        )
    for body in blocks:
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            der = b""
        if not der.startswith(b"\x30"):  # a DER certificate is an ASN.1 SEQUENCE
            raise ConfigError("the trusted certificate's PEM block is not a certificate")
    return pem


def _security(value: str | None, field_name: str) -> Security | None:
    if value is None:
        return None
    lowered = value.lower()
    for s in SECURITIES:
        if s == lowered:
            return s
    raise ConfigError(f"{field_name} must be one of tls, starttls, plain (got {value!r})")


def missing_fields(
    preset: str, *, name: str | None, email: str | None, imap_host: str | None
) -> list[str]:
    """The required fields (draft field names) that neither the user nor the preset supplied."""
    p = get_preset(preset)
    missing: list[str] = []
    if not name or not name.strip():
        missing.append("name")
    if not email or not email.strip():
        missing.append("email")
    if not (imap_host or p.imap_host):
        missing.append("imap_host")
    return missing


def draft_from_preset(
    preset: str,
    *,
    name: str,
    email: str | None,
    username: str | None = None,
    imap_host: str | None = None,
    imap_port: int | None = None,
    imap_security: str | None = None,
    smtp_host: str | None = None,
    smtp_port: int | None = None,
    smtp_security: str | None = None,
    allow_plaintext: bool = False,
    trusted_cert_pem: str | None = None,
    window_days: int | None = None,
    toggles: dict[str, bool] | None = None,
) -> AccountDraft:
    """Fill an account from ``preset`` and overrides.

    A security given without a port picks that security's standard port, and a well-known port
    given without a security picks the security it implies (IMAP 993: tls, 143: starttls; SMTP
    465: tls, 587 and 25: starttls); for "other", the IMAP security also picks the SMTP pair
    (TLS: 993/465, STARTTLS: 143/587) unless the SMTP side is given. The username defaults to
    the e-mail address; for "exchange" and "other" the SMTP host defaults to the IMAP host.
    Raises :class:`ConfigError` listing
    every missing field at once, for a malformed name, address, host or certificate, and for
    plaintext without ``allow_plaintext`` (RFC 8314 §4: cleartext must be an explicit choice).
    """
    p = get_preset(preset)
    missing = missing_fields(preset, name=name, email=email, imap_host=imap_host)
    if missing:
        raise ConfigError("missing: " + ", ".join(missing))
    assert email is not None  # checked above; narrows for type checkers
    name = check_account_name(name)
    email = check_email(email)
    host = check_host(imap_host, "imap_host") if imap_host else p.imap_host
    if smtp_host is not None and smtp_host.strip():
        smtp_host = check_host(smtp_host, "smtp_host")
    # An empty user name means "the default" (the e-mail address), as when it is left out.
    username = check_username(username) if username and username.strip() else None
    if trusted_cert_pem is not None:
        trusted_cert_pem = check_certificate_pem(trusted_cert_pem)

    given_i_sec = _security(imap_security, "imap_security")
    if given_i_sec is None and imap_port is not None:
        # A well-known port says what it speaks: 993 alone means TLS, not the preset's STARTTLS.
        given_i_sec = security_for_port("imap", imap_port)
    i_sec = given_i_sec or p.imap_security
    s_sec = _security(smtp_security, "smtp_security")
    if s_sec is None and smtp_port is not None:
        s_sec = security_for_port("smtp", smtp_port)
    if s_sec is None and given_i_sec is not None and p.smtp_security_from_imap:
        # Plaintext IMAP still submits on 587 with STARTTLS: cleartext is chosen per side.
        s_sec = i_sec if i_sec != "plain" else None
    explicit_smtp_security = s_sec is not None
    s_sec = s_sec or p.smtp_security
    if imap_port is None:
        imap_port = p.imap_port if given_i_sec is None else default_imap_port(i_sec)
    if smtp_port is None:
        smtp_port = default_smtp_port(s_sec) if explicit_smtp_security else p.smtp_port
    s_host = smtp_host or p.smtp_host or (host if p.smtp_host_from_imap else None)
    assert host is not None  # checked above; narrows for type checkers
    return _checked_whole(
        AccountDraft(
            name=name,
            preset=p.key,
            email=email,
            username=username or email,
            imap_host=host,
            imap_port=imap_port,
            imap_security=i_sec,
            smtp_host=s_host.strip() if s_host else None,
            smtp_port=smtp_port,
            smtp_security=s_sec,
            auth_kind=p.auth_kind,
            allow_plaintext=allow_plaintext,
            trusted_cert_pem=trusted_cert_pem,
            window_days=window_days,
            toggles=dict(toggles or {}),
        )
    )


def _checked_whole(draft: AccountDraft) -> AccountDraft:
    """``draft`` if its fields make sense together (ports in range, plaintext only with
    permission, a positive window), else :class:`ConfigError`: the one check of a whole
    account, new or updated."""
    for label, port in (("imap_port", draft.imap_port), ("smtp_port", draft.smtp_port)):
        if not 0 < port < 65536:
            raise ConfigError(f"{label} must be between 1 and 65535 (got {port})")
    smtp_security = draft.smtp_security if draft.smtp_host else None
    if not draft.allow_plaintext and "plain" in (draft.imap_security, smtp_security):
        raise ConfigError(
            "plaintext connections send the password unencrypted; "
            "pass allow_plaintext (--allow-plaintext) to permit them"
        )
    if draft.window_days is not None and draft.window_days < 1:
        raise ConfigError(f"window_days must be at least 1 (got {draft.window_days})")
    return draft


def _side_after(
    side: Side,
    current_port: int,
    current_security: Security,
    port: int | None,
    security: str | None,
) -> tuple[int, Security]:
    """The port and security of one side after an update.

    A port given alone brings the security it implies when it is well known (993: tls); a
    security given alone moves a well-known port that contradicts it to its standard one (143
    to 993 for tls) and keeps a custom port (the server's own choice).
    """
    given = _security(security, f"{side}_security")
    if given is None and port is not None:
        given = security_for_port(side, port)
    new_security = given or current_security
    if port is None:
        port = current_port
        if given is not None and port_security_conflict(side, port, new_security):
            port = (
                default_imap_port(new_security)
                if side == "imap"
                else default_smtp_port(new_security)
            )
    return port, new_security


def apply_changes(current: AccountDraft, changes: AccountChanges) -> AccountDraft:
    """``current`` with ``changes`` applied, each field checked as for a new account and the
    result checked as a whole (plaintext without permission is refused, whichever of the two
    changed). Raises :class:`ConfigError`; pure, so a refused change has changed nothing.

    Two fields follow others unless given: the user name follows the e-mail address when it
    was the old address (the default), and for presets whose SMTP server is the IMAP host the
    SMTP host follows the IMAP host when it was the old one.
    """
    email = current.email if changes.email is None else check_email(changes.email)
    username = current.username
    if changes.username is not None:
        username = check_username(changes.username)
    elif changes.email is not None and current.username == current.email:
        username = email
    imap_host = current.imap_host
    if changes.imap_host is not None:
        imap_host = check_host(changes.imap_host, "imap_host")
    smtp_host = current.smtp_host
    if changes.smtp_host is not None:
        smtp_host = check_host(changes.smtp_host, "smtp_host")
    elif changes.imap_host is not None and current.smtp_host in (None, current.imap_host):
        preset = PRESETS.get(current.preset)
        if preset is not None and preset.smtp_host_from_imap:
            smtp_host = imap_host
    cert = current.trusted_cert_pem
    if not isinstance(changes.trusted_cert_pem, EllipsisType):
        cert = changes.trusted_cert_pem
        if cert is not None:
            cert = check_certificate_pem(cert)
    for label, port in (("imap_port", changes.imap_port), ("smtp_port", changes.smtp_port)):
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"{label} must be between 1 and 65535 (got {port})")
    imap_port, imap_security = _side_after(
        "imap",
        current.imap_port,
        current.imap_security,
        changes.imap_port,
        changes.imap_security,
    )
    smtp_port, smtp_security = _side_after(
        "smtp",
        current.smtp_port,
        current.smtp_security,
        changes.smtp_port,
        changes.smtp_security,
    )
    allow_plaintext = (
        current.allow_plaintext if changes.allow_plaintext is None else changes.allow_plaintext
    )
    window_days = current.window_days if changes.window_days is None else changes.window_days
    return _checked_whole(
        current.with_changes(
            email=email,
            username=username,
            imap_host=imap_host,
            imap_port=imap_port,
            imap_security=imap_security,
            smtp_host=smtp_host,
            smtp_port=smtp_port,
            smtp_security=smtp_security,
            allow_plaintext=allow_plaintext,
            trusted_cert_pem=cert,
            window_days=window_days,
            toggles={**current.toggles, **changes.toggles},
        )
    )
