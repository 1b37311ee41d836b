"""The account connection test: DNS, TCP, TLS/STARTTLS, IMAP4rev1, authentication, folders.

Every failure becomes a short ``problem`` code plus one specific sentence that tells a person what
to check; nothing is raised for a failure of the server or of the settings. Secrets never appear
in the report.

Problem codes: ``dns``, ``refused``, ``timeout``, ``tls_untrusted``, ``tls_failed``,
``wrong_security`` (the port speaks implicit TLS where STARTTLS was chosen, or the reverse),
``starttls_missing``, ``not_imap4rev1``, ``plaintext_refused``, ``config``, ``auth_failed``,
``login_unavailable``, ``connection_lost``, ``protocol``, ``command_failed``, ``unreachable``.
``protocol`` says "check the port" only when the greeting was not IMAP; a reply that does not
parse after a valid greeting is reported as a Correspond bug instead. ``limit`` is a server that
sent more than a memory limit allows (naming the setting), ``timeout`` also a test that did not
finish within its overall deadline (a server that trickles its answers).

Where TLS is involved the report carries the SHA-256 fingerprint of the certificate the server
presented (fetched without trusting it when the handshake refused it), so a person can pin a
self-signed certificate with ``correspond account update NAME --trust-presented-cert SHA256``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field

from correspond.errors import (
    AuthenticationFailed,
    CapabilityError,
    CertificateNotTrusted,
    ConfigError,
    ConnectionLost,
    ConnectionRefused,
    GreetingTimeout,
    HostNotFound,
    ImapCommandError,
    ImapConnectionError,
    ImapError,
    ImapLimitExceeded,
    ImapProtocolError,
    ImapTimeout,
    SecurityMismatch,
    StartTlsInjection,
    TlsError,
)
from correspond.imap.client import ImapClient, ImapEndpoint, ImapLimits
from correspond.imap.connect import (
    certificate_fingerprint,
    fetch_presented_certificate,
    probe_plain_greeting,
    probe_tls,
)
from correspond.imap.protocol import response_excerpt
from correspond.imap.types import ListResponse

__all__ = ["ConnectionReport", "check_connection", "explain_error"]


def trust_hint(account_name: str | None, fingerprint: str | None = None) -> str:
    """The command that trusts a certificate, with the account's name when it is known: the
    presented certificate by its fingerprint when it is known, else a PEM file."""
    name = account_name or "NAME"
    by_file = f"`correspond account update {name} --trust-cert FILE`"
    if fingerprint:
        return (
            f"`correspond account update {name} --trust-presented-cert {fingerprint}` (or "
            f"{by_file} with the certificate in PEM)"
        )
    return by_file


# A probe only confirms a suspicion; it need not wait as long as the test itself.
_PROBE_TIMEOUT = 5.0


class _AfterGreeting(ImapProtocolError):
    """A reply that did not parse during connect, after a valid IMAP greeting (``__cause__``)."""


class _Client(ImapClient):
    """ImapClient whose handshake tells a bad greeting (wrong port) from a bad later reply.

    ``ImapClient.connect`` raises the same ImapProtocolError for both and returns no client on
    failure, so the greeting it read is only visible here.
    """

    async def _handshake(self) -> None:
        try:
            await super()._handshake()
        except ImapProtocolError as exc:
            if self.greeting is None:
                raise
            raise _AfterGreeting(str(exc)) from exc


@dataclass(frozen=True)
class ConnectionReport:
    """The outcome of :func:`check_connection`.

    ``capabilities`` are those after login on success (else whatever was learnt before the
    failure); ``folders`` is the special-use-aware LIST on success. ``certificate_sha256`` is
    the fingerprint (``AB:CD:...``) of the certificate the server presented, when TLS got that
    far (or, for an untrusted certificate, as fetched again without trusting it).
    """

    ok: bool
    problem: str | None
    message: str
    capabilities: frozenset[str] = frozenset()
    folders: list[ListResponse] = field(default_factory=list)
    certificate_sha256: str | None = None


def _dns_message(exc: HostNotFound, host: str) -> str:
    cause = exc.__cause__
    if isinstance(cause, UnicodeError):
        return f"{host} is not a valid host name: check the server name."
    if isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_AGAIN:
        # No answer from DNS at all: the name may be fine, the network is not.
        return (
            f"{host} could not be looked up (DNS did not answer): check the network "
            "connection and try again."
        )
    return f"{host} does not resolve: check the server name."


def _certificate_message(
    exc: CertificateNotTrusted, where: str, account_name: str | None, fingerprint: str | None
) -> str:
    if exc.reason == "pinned":
        presented = f" (SHA-256 {fingerprint})" if fingerprint else ""
        return (
            f"{where} presented a certificate other than the one you chose to trust{presented}. "
            "If the server's certificate was replaced on purpose, trust the new one with "
            f"{trust_hint(account_name, fingerprint)}; otherwise something is intercepting the "
            "connection."
        )
    if exc.reason == "hostname":
        return (
            f"The certificate of {where} is issued for another name ({exc}): use the server "
            "name the certificate is issued for."
        )
    if exc.reason == "expired":
        return (
            f"The certificate of {where} has expired or is not valid yet ({exc}): tell the "
            "server's administrator."
        )
    # OpenSSL's own words ("self-signed certificate", "unable to get local issuer certificate")
    # name the cause; the exception's message would repeat "is not trusted" around them.
    cause = exc.__cause__
    detail = cause.verify_message if isinstance(cause, ssl.SSLCertVerificationError) else None
    presented = f" Its SHA-256 fingerprint is {fingerprint}." if fingerprint else ""
    return (
        f"The certificate of {where} is not trusted ({detail or exc}).{presented} If you know "
        "this server uses its own certificate (compare the fingerprint with the one the "
        f"server's administrator gives you), trust exactly that one with "
        f"{trust_hint(account_name, fingerprint)}."
    )


def _capability_message(exc: CapabilityError, where: str) -> tuple[str, str]:
    if exc.capability == "STARTTLS":
        return "starttls_missing", (
            f"{where} does not offer STARTTLS ({exc}): use implicit TLS (usually port 993) "
            "instead; sending the password unencrypted is refused."
        )
    if exc.capability == "IMAP4rev1":
        return "not_imap4rev1", (
            f"{where} does not speak IMAP4rev1 (its capabilities lack it): check that this is "
            "the IMAP port and not, say, POP3 or SMTP."
        )
    if exc.capability == "LOGIN":
        return "login_unavailable", (
            f"{where} refuses to log in on this connection (LOGINDISABLED, usually because it "
            "is not encrypted): set the security to starttls or tls."
        )
    return "login_unavailable", f"{where} cannot be used: {exc}."


def _parse_failure_message(exc: ImapProtocolError, where: str) -> str:
    original = exc.__cause__ if isinstance(exc, _AfterGreeting) else exc
    excerpt = response_excerpt(original) if original is not None else None
    said = f"{excerpt!r}: {exc}" if excerpt else str(exc)
    return (
        f"{where} is an IMAP server but sent a reply that Correspond could not parse ({said}). "
        "The account settings look right: this is a bug in Correspond, worth reporting with "
        "this message."
    )


def _tls_failed_message(exc: TlsError, where: str) -> str:
    return (
        f"The TLS handshake with {where} failed ({exc}): check that the port matches the "
        "security setting (993 is usually implicit TLS, 143 STARTTLS)."
    )


def explain_error(
    exc: ImapError | ConfigError,
    endpoint: ImapEndpoint,
    *,
    username: str = "",
    timeout: float = 20.0,
    account_name: str | None = None,
    greeted: bool = True,
    fingerprint: str | None = None,
) -> tuple[str, str]:
    """Map one error of the tree to (problem code, sentence for a person), without probing
    (the engine uses it for the state detail of a sync that failed the same way).

    ``greeted``: the server's greeting was IMAP, so a reply that does not parse means a gap in
    Correspond's parser, not the wrong port. ``fingerprint``: of the certificate presented.
    """
    where = f"{endpoint.host}:{endpoint.port}"
    if isinstance(exc, HostNotFound):
        return "dns", _dns_message(exc, endpoint.host)
    if isinstance(exc, ConnectionRefused):
        return "refused", (
            f"Connection refused by {where}: check the port and that IMAP is enabled on the server."
        )
    if isinstance(exc, SecurityMismatch):
        return "wrong_security", str(exc)
    if isinstance(exc, GreetingTimeout):
        return "timeout", (
            f"{where} accepted the connection but sent no IMAP greeting within {timeout:g} s: "
            "check the port (a port for implicit TLS, usually 993, stays silent until TLS "
            "starts)."
        )
    if isinstance(exc, ImapTimeout):
        if "did not complete in time" in str(exc):  # the command's overall deadline
            return "timeout", (
                f"{where} answers too slowly ({exc}): the server may be overloaded, or sending "
                "its replies a few bytes at a time; try again later."
            )
        return "timeout", (
            f"{where} did not answer within {timeout:g} s: check the server name and port, and "
            "that no firewall blocks the connection."
        )
    if isinstance(exc, CertificateNotTrusted):
        return "tls_untrusted", _certificate_message(exc, where, account_name, fingerprint)
    if isinstance(exc, TlsError):
        return "tls_failed", _tls_failed_message(exc, where)
    if isinstance(exc, ConnectionLost):
        return "connection_lost", f"{where} closed the connection: {exc}."
    if isinstance(exc, ImapConnectionError):
        return "unreachable", f"Cannot reach {where}: {exc}."
    if isinstance(exc, AuthenticationFailed):
        return "auth_failed", (
            f'Authentication failed for {username}: the server said "{exc.server_text}". Check '
            "the user name and password (some providers require an app password)."
        )
    if isinstance(exc, CapabilityError):
        return _capability_message(exc, where)
    if isinstance(exc, ConfigError):
        if endpoint.security == "plain" and not endpoint.allow_plaintext:
            return "plaintext_refused", f"{exc}."
        return "config", f"The account settings cannot be used: {exc}."
    if isinstance(exc, StartTlsInjection) or isinstance(exc.__cause__, StartTlsInjection):
        return "tls_failed", (
            f"Data arrived from {where} after STARTTLS and before encryption began: something "
            "on the way injected text meant to pass as encrypted (an attack), or a proxy is "
            "broken. Nothing was sent; use implicit TLS (usually port 993) or check the network."
        )
    if isinstance(exc, ImapLimitExceeded):
        return "limit", (
            f"{where} sent more than Correspond accepts for one command ({exc}). A normal server "
            "does not; if this one does, raise that setting."
        )
    if isinstance(exc, ImapProtocolError):
        if greeted:
            return "protocol", _parse_failure_message(exc, where)
        return "protocol", (
            f"{where} answered with something that is not IMAP ({exc}): check the port."
        )
    if isinstance(exc, ImapCommandError):
        return "command_failed", f"The server refused a command: {exc}."
    return "unreachable", f"{where}: {exc}."


async def _explain(
    exc: ImapError | ConfigError,
    endpoint: ImapEndpoint,
    username: str,
    timeout: float,
    account_name: str | None,
    greeted: bool,
    fingerprint: str | None,
) -> tuple[str, str]:
    """:func:`explain_error`, after a short probe where two failures look alike from the
    client's side but have one clear cause: silence after connecting (a port for implicit TLS
    waits for a handshake; the client probes too, once ``greeting_probe_after`` has passed)
    and a failed TLS handshake (a plaintext port greets in clear text)."""
    where = f"{endpoint.host}:{endpoint.port}"
    probe = min(timeout, _PROBE_TIMEOUT)
    if isinstance(exc, GreetingTimeout) and await probe_tls(
        endpoint.host, endpoint.port, timeout=probe
    ):
        return "wrong_security", (
            f"{where} expects implicit TLS, not {endpoint.security}: set the security to "
            "tls (or use the STARTTLS port, usually 143)."
        )
    if (
        isinstance(exc, TlsError)
        and not isinstance(exc, CertificateNotTrusted | SecurityMismatch)
        and endpoint.security == "tls"
        and await probe_plain_greeting(endpoint.host, endpoint.port, timeout=probe)
    ):
        return "wrong_security", (
            f"{where} speaks plaintext IMAP, not implicit TLS: set the security to starttls "
            "(or use the implicit TLS port, usually 993)."
        )
    return explain_error(
        exc,
        endpoint,
        username=username,
        timeout=timeout,
        account_name=account_name,
        greeted=greeted,
        fingerprint=fingerprint,
    )


async def check_connection(
    endpoint: ImapEndpoint,
    username: str,
    password: str,
    *,
    timeout: float = 20.0,
    account_name: str | None = None,
    deadline: float = 60.0,
    limits: ImapLimits | None = None,
) -> ConnectionReport:
    """Try the account's IMAP settings end to end and say what, if anything, is wrong.

    Steps: resolve and connect (``timeout`` for each wait: connection, TLS handshake, greeting,
    each reply), TLS or STARTTLS (RFC 3501 §6.2.1, RFC 8314), check IMAP4rev1, authenticate,
    then LIST with SPECIAL-USE (RFC 6154) and log out. The whole test, probes included, ends
    within ``deadline`` seconds whatever the server does (problem ``timeout``).
    """
    try:
        async with asyncio.timeout(deadline) as scope:
            return await _check(endpoint, username, password, timeout, account_name, limits)
    except TimeoutError:
        if not scope.expired():
            raise
    where = f"{endpoint.host}:{endpoint.port}"
    return ConnectionReport(
        ok=False,
        problem="timeout",
        message=(
            f"The connection test with {where} did not finish within {deadline:g} s: the server "
            "answers too slowly (overloaded, or sending its replies a few bytes at a time). Try "
            "again later, and check the server name and port."
        ),
    )


def _fingerprint(der: bytes | None) -> str | None:
    return certificate_fingerprint(der) if der else None


async def _check(
    endpoint: ImapEndpoint,
    username: str,
    password: str,
    timeout: float,
    account_name: str | None,
    limits: ImapLimits | None,
) -> ConnectionReport:
    client: ImapClient | None = None
    fingerprint: str | None = None
    try:
        client = await _Client.connect(
            endpoint, connect_timeout=timeout, command_timeout=timeout, limits=limits
        )
        fingerprint = _fingerprint(client.peer_certificate())
        # Leaving the block logs out when the session is sound, else drops the connection at
        # once (no second wait on a server that just timed out), also on cancellation.
        async with client:
            await client.login(username, password)
            folders = await client.list_folders()
            capabilities = client.capabilities
        return ConnectionReport(
            ok=True,
            problem=None,
            message=(
                f"Connected to {endpoint.host}:{endpoint.port} and logged in as {username}; "
                f"{len(folders)} folders found."
            ),
            capabilities=capabilities,
            folders=folders,
            certificate_sha256=fingerprint,
        )
    except (ImapError, ConfigError) as exc:
        # A client exists only once connect() is through, i.e. after a valid greeting.
        greeted = client is not None or isinstance(exc, _AfterGreeting)
        if isinstance(exc, CertificateNotTrusted):
            # The handshake refused it: fetch it again, trusting nothing, to show what it is.
            der = await fetch_presented_certificate(
                endpoint.host, endpoint.port, endpoint.security, timeout=min(timeout, 10.0)
            )
            fingerprint = _fingerprint(der)
        problem, message = await _explain(
            exc, endpoint, username, timeout, account_name, greeted, fingerprint
        )
        caps = client.capabilities if client is not None else frozenset()
        return ConnectionReport(
            ok=False,
            problem=problem,
            message=message,
            capabilities=caps,
            certificate_sha256=fingerprint,
        )
