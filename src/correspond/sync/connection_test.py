"""The account connection test: DNS, TCP, TLS/STARTTLS, IMAP4rev1, authentication, folders.

Every failure becomes a short ``problem`` code plus one specific sentence that tells a person what
to check; nothing is raised for a failure of the server or of the settings. Secrets never appear
in the report.

Problem codes: ``dns``, ``refused``, ``timeout``, ``tls_untrusted``, ``tls_failed``,
``starttls_missing``, ``not_imap4rev1``, ``plaintext_refused``, ``auth_failed``,
``login_unavailable``, ``connection_lost``, ``protocol``, ``command_failed``, ``unreachable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from correspond.errors import (
    AuthenticationFailed,
    CapabilityError,
    CertificateNotTrusted,
    ConfigError,
    ConnectionLost,
    ConnectionRefused,
    HostNotFound,
    ImapCommandError,
    ImapConnectionError,
    ImapError,
    ImapProtocolError,
    ImapTimeout,
    TlsError,
)
from correspond.imap.client import ImapClient, ImapEndpoint
from correspond.imap.types import ListResponse

__all__ = ["ConnectionReport", "check_connection"]


@dataclass(frozen=True)
class ConnectionReport:
    """The outcome of :func:`check_connection`.

    ``capabilities`` are those after login on success (else whatever was learnt before the
    failure); ``folders`` is the special-use-aware LIST on success.
    """

    ok: bool
    problem: str | None
    message: str
    capabilities: frozenset[str] = frozenset()
    folders: list[ListResponse] = field(default_factory=list)


def _explain(
    exc: ImapError | ConfigError, endpoint: ImapEndpoint, timeout: float
) -> tuple[str, str]:
    """Map one error of the tree to (problem code, sentence for a person)."""
    where = f"{endpoint.host}:{endpoint.port}"
    if isinstance(exc, HostNotFound):
        return "dns", f"{endpoint.host} does not resolve: check the server name."
    if isinstance(exc, ConnectionRefused):
        return "refused", (
            f"Connection refused by {where}: check the port and that IMAP is enabled on the server."
        )
    if isinstance(exc, ImapTimeout):
        return "timeout", (
            f"{where} did not answer within {timeout:g} s: check the server name and port, and "
            "that no firewall blocks the connection."
        )
    if isinstance(exc, CertificateNotTrusted):
        return "tls_untrusted", (
            f"The server's certificate is not trusted (self-signed?): {exc}. If you know this "
            "server uses its own certificate, trust exactly that one with "
            "`correspond account update NAME --trust-cert FILE`."
        )
    if isinstance(exc, TlsError):
        return "tls_failed", (
            f"The TLS handshake with {where} failed ({exc}): check that the port matches the "
            "security setting (993 is usually implicit TLS, 143 STARTTLS)."
        )
    if isinstance(exc, ConnectionLost):
        return "connection_lost", f"{where} closed the connection: {exc}."
    if isinstance(exc, ImapConnectionError):
        return "unreachable", f"Cannot reach {where}: {exc}."
    if isinstance(exc, AuthenticationFailed):
        return "auth_failed", f"Authentication failed: the server said: {exc.server_text}"
    if isinstance(exc, CapabilityError):
        text = str(exc)
        if "STARTTLS" in text:
            return "starttls_missing", (
                f"{where} does not offer STARTTLS: use implicit TLS (usually port 993) instead; "
                "sending the password unencrypted is refused."
            )
        if "IMAP4rev1" in text:
            return "not_imap4rev1", (
                f"{where} does not speak IMAP4rev1 (its greeting lacks it): check that this is "
                "the IMAP port and not, say, POP3 or SMTP."
            )
        return "login_unavailable", f"{where} cannot be used: {text}."
    if isinstance(exc, ConfigError):
        return "plaintext_refused", f"{exc}."
    if isinstance(exc, ImapProtocolError):
        return "protocol", (
            f"{where} answered with something that is not IMAP ({exc}): check the port."
        )
    if isinstance(exc, ImapCommandError):
        return "command_failed", f"The server refused a command: {exc}."
    return "unreachable", f"{where}: {exc}."


async def check_connection(
    endpoint: ImapEndpoint, username: str, password: str, *, timeout: float = 20.0
) -> ConnectionReport:
    """Try the account's IMAP settings end to end and say what, if anything, is wrong.

    Steps: resolve and connect (``timeout`` for the connection and for each reply), TLS or
    STARTTLS (RFC 3501 §6.2.1, RFC 8314), check IMAP4rev1, authenticate, then LIST with
    SPECIAL-USE (RFC 6154) and log out.
    """
    client: ImapClient | None = None
    try:
        client = await ImapClient.connect(
            endpoint, connect_timeout=timeout, command_timeout=timeout
        )
        await client.login(username, password)
        folders = await client.list_folders()
        capabilities = client.capabilities
        await client.logout()
        return ConnectionReport(
            ok=True,
            problem=None,
            message=(
                f"Connected to {endpoint.host}:{endpoint.port} and logged in as {username}; "
                f"{len(folders)} folders found."
            ),
            capabilities=capabilities,
            folders=folders,
        )
    except (ImapError, ConfigError) as exc:
        problem, message = _explain(exc, endpoint, timeout)
        caps = client.capabilities if client is not None else frozenset()
        if client is not None:
            await client.logout()
        return ConnectionReport(ok=False, problem=problem, message=message, capabilities=caps)
