"""Webhooks, the pure part: event types, Standard Webhooks signatures, and which URLs and
addresses a delivery may go to (no IO: the sender in ``correspond.notify`` resolves and
connects).

Signatures follow the Standard Webhooks specification: the secret is ``whsec_`` + base64 of
random bytes; each request carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body" under the secret bytes>``.

A URL is deliverable when its scheme is http or https, it has no user info, its host is one the
admin allowed (``Settings.webhook_allowed_hosts``: exact names, ``*.example.com`` for the
subdomains of one, or IP literals) and, unless ``Settings.webhook_allow_internal``, every
address it resolves to is public (:func:`address_is_internal`). Numeric host forms that a
resolver reads as an IPv4 address but that are not the dotted-quad form (``2130706433``,
``0177.0.0.1``, ``0x7f.1``) are refused outright: they only exist to slip past checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "EVENT_TYPES",
    "SECRET_PREFIX",
    "UnsafeWebhookUrl",
    "WebhookTarget",
    "address_is_internal",
    "check_webhook_url",
    "decode_secret",
    "host_allowed",
    "sign",
]

EVENT_TYPES = (
    "message.received",
    "message.sent",
    "message.updated",
    "message.deleted",
    "account.state_changed",
)
SECRET_PREFIX = "whsec_"


class UnsafeWebhookUrl(ValueError):
    """A URL a webhook may not be sent to; the message says why (it names no secret)."""


@dataclass(frozen=True)
class WebhookTarget:
    """A checked URL, split for the sender: it connects to a checked IP of ``host`` itself."""

    scheme: str
    host: str  # lower-case name or IP literal, without brackets
    port: int
    target: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def decode_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_...`` secret (the prefix is optional, as in the spec)."""
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one request."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


# Forms a resolver (inet_aton) reads as IPv4 that are not a plain dotted quad: 1 to 4 parts of
# decimal, octal (leading 0) or hex (0x) numbers.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$")


_DNS_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]*[a-z0-9])?)*")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_is_internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for anything but a public unicast address: loopback, private, link-local (the
    cloud metadata service at 169.254.169.254), CGNAT, multicast, reserved, unspecified, and
    IPv6 addresses that embed an IPv4 one (mapped, compatible, 6to4, Teredo, NAT64) when the
    embedded one is internal."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: list[ipaddress.IPv4Address] = []
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        packed = ip.packed
        if packed[:12] == bytes(12) and ip not in (ipaddress.IPv6Address("::"),):
            embedded.append(ipaddress.IPv4Address(packed[12:]))  # IPv4-compatible ::a.b.c.d
        if ip in ipaddress.IPv6Network("64:ff9b::/96"):
            embedded.append(ipaddress.IPv4Address(packed[12:]))  # NAT64
        if any(address_is_internal(v4) for v4 in embedded):
            return True
        if ip.ipv4_mapped is not None:
            return False  # a mapped public IPv4 address is that address
    return bool(
        not ip.is_global
        or ip.is_multicast
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_reserved
        or ip.is_unspecified
    )


def host_allowed(host: str, allowed_hosts: list[str] | tuple[str, ...]) -> bool:
    """Whether ``host`` (lower-case) is one of the admin's: an exact name or IP, or a subdomain
    of a ``*.name`` entry (not the name itself)."""
    ip = _ip(host)
    for entry in allowed_hosts:
        entry = entry.strip().lower().strip("[]")
        if not entry:
            continue
        if ip is not None:
            if _ip(entry) == ip:
                return True
            continue
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry.rstrip("."):
            return True
    return False


def check_webhook_url(
    url: str, allowed_hosts: list[str] | tuple[str, ...], *, allow_internal: bool = False
) -> WebhookTarget:
    """Split ``url`` for delivery, or :class:`UnsafeWebhookUrl` saying why it may not be used.

    Checks what can be checked without resolving: the sender still checks every address the
    name resolves to (:func:`address_is_internal`) and connects to a checked one.
    """
    if len(url) > 2000:
        raise UnsafeWebhookUrl("the URL is longer than 2000 characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise UnsafeWebhookUrl("the URL holds spaces, control characters or a backslash")
    try:
        parts = urlsplit(url)
        port_value = parts.port
    except ValueError as exc:
        raise UnsafeWebhookUrl("the URL does not parse") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeWebhookUrl("only http and https URLs can receive webhooks")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrl("a webhook URL may not carry a user name or password")
    if parts.fragment:
        raise UnsafeWebhookUrl("a webhook URL has no #fragment")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise UnsafeWebhookUrl("the URL names no host")
    if "%" in host:
        raise UnsafeWebhookUrl("an IPv6 zone or a percent-encoded host is not accepted")
    ip = _ip(host)
    if ip is None:
        if _NUMERIC_HOST.match(host):
            raise UnsafeWebhookUrl("the host is an IP address in an unusual form")
        if not _DNS_NAME.fullmatch(host):
            raise UnsafeWebhookUrl("the host is not a valid DNS name")
    elif not allow_internal and address_is_internal(ip):
        raise UnsafeWebhookUrl("the host is an internal address")
    if not host_allowed(host, allowed_hosts):
        raise UnsafeWebhookUrl(
            f"the host {host} is not in the allowed webhook hosts (webhook_allowed_hosts)"
        )
    port = port_value if port_value is not None else (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise UnsafeWebhookUrl("the port is out of range")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return WebhookTarget(scheme=scheme, host=host, port=port, target=target)
