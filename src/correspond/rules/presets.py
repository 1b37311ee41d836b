"""Provider presets: where a provider's IMAP and SMTP servers are and how to reach them.

Pure data plus :func:`draft_from_preset`, which fills an :class:`AccountDraft` from a preset and
the user's overrides and reports what is still missing. Ports follow RFC 8314 §3.3 (implicit TLS:
IMAP 993, submission 465) and RFC 6409 §3.1 (submission with STARTTLS on 587); 143 is IMAP with
STARTTLS (RFC 3501 §6.2.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from correspond.errors import ConfigError

__all__ = [
    "AUTH_KINDS",
    "PRESETS",
    "SECURITIES",
    "AccountDraft",
    "AuthKind",
    "Preset",
    "Security",
    "default_imap_port",
    "default_smtp_port",
    "draft_from_preset",
    "get_preset",
    "missing_fields",
]

Security = Literal["tls", "starttls", "plain"]
AuthKind = Literal["password", "oauth2"]
SECURITIES: tuple[Security, ...] = ("tls", "starttls", "plain")
AUTH_KINDS: tuple[AuthKind, ...] = ("password", "oauth2")


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
    # Exchange serves IMAP and SMTP from one host: the SMTP host defaults to the IMAP host.
    smtp_host_from_imap: bool = False
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
            label="Other IMAP/SMTP server",
            imap_host=None,
            imap_port=143,
            imap_security="starttls",
            smtp_host=None,
            smtp_port=587,
            smtp_security="starttls",
        ),
    )
}

_IMAP_PORTS: dict[Security, int] = {"tls": 993, "starttls": 143, "plain": 143}
_SMTP_PORTS: dict[Security, int] = {"tls": 465, "starttls": 587, "plain": 25}


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


def get_preset(key: str) -> Preset:
    """The preset called ``key``; :class:`ConfigError` naming the known ones otherwise."""
    try:
        return PRESETS[key]
    except KeyError:
        known = ", ".join(PRESETS)
        raise ConfigError(f"unknown preset {key!r}; choose one of: {known}") from None


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

    A security given without a port picks that security's standard port. The username defaults
    to the e-mail address. Raises :class:`ConfigError` listing every missing field at once, and
    for plaintext without ``allow_plaintext`` (RFC 8314 §4: cleartext must be an explicit choice).
    """
    p = get_preset(preset)
    missing = missing_fields(preset, name=name, email=email, imap_host=imap_host)
    if missing:
        raise ConfigError("missing: " + ", ".join(missing))
    host = imap_host or p.imap_host

    i_sec = _security(imap_security, "imap_security") or p.imap_security
    s_sec = _security(smtp_security, "smtp_security") or p.smtp_security
    if imap_port is None:
        imap_port = p.imap_port if imap_security is None else default_imap_port(i_sec)
    if smtp_port is None:
        smtp_port = p.smtp_port if smtp_security is None else default_smtp_port(s_sec)
    s_host = smtp_host or p.smtp_host or (host if p.smtp_host_from_imap else None)
    for label, port in (("imap_port", imap_port), ("smtp_port", smtp_port)):
        if not 0 < port < 65536:
            raise ConfigError(f"{label} must be between 1 and 65535 (got {port})")
    if not allow_plaintext and "plain" in (i_sec, s_sec if s_host else None):
        raise ConfigError(
            "plaintext connections send the password unencrypted; "
            "pass allow_plaintext (--allow-plaintext) to permit them"
        )
    if window_days is not None and window_days < 1:
        raise ConfigError(f"window_days must be at least 1 (got {window_days})")
    assert host is not None and email is not None  # checked above; narrows for type checkers
    return AccountDraft(
        name=name.strip(),
        preset=p.key,
        email=email.strip(),
        username=(username or email).strip(),
        imap_host=host.strip(),
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
