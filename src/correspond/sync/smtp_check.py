"""The SMTP connection test: DNS, TCP, TLS or STARTTLS, EHLO, AUTH, then QUIT; nothing is sent.

Used when an outbound identity is saved (``POST``/``PATCH /identities``): like the IMAP test
(:mod:`correspond.sync.connection_test`), every failure becomes a ``problem`` code and one
sentence telling a person what to check; nothing is raised for a failure of the server or the
settings, and the secret never appears in the report. Through ``aiosmtplib`` (the client the
sending path uses); certificates are checked against the system's trust store.

Problem codes: ``dns``, ``refused``, ``timeout``, ``tls_failed``, ``tls_untrusted``,
``wrong_security`` (implicit TLS against a STARTTLS port or the reverse), ``starttls_missing``,
``not_smtp``, ``auth_unavailable``, ``auth_failed``, ``connection_lost``, ``unreachable``.
The report carries the server's SIZE (RFC 1870) when it announces one, for the size check
before sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass

import aiosmtplib

__all__ = ["SmtpReport", "check_smtp"]


@dataclass(frozen=True, slots=True)
class SmtpReport:
    """The outcome of :func:`check_smtp`: ``ok``, a ``problem`` code and a sentence; the
    server's announced SIZE limit (None: not announced) and ESMTP extensions on success."""

    ok: bool
    problem: str | None
    message: str
    size_limit: int | None = None
    extensions: frozenset[str] = frozenset()


def _cause_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _server_words(text: str) -> str:
    # The server's reply, as one printable line (never markup or escapes: H9).
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:300]


def _explain(
    exc: BaseException, where: str, host: str, security: str, username: str
) -> tuple[str, str]:
    chain = _cause_chain(exc)
    if any(isinstance(e, socket.gaierror) for e in chain):
        return "dns", f"{host} does not resolve: check the server name."
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        cert = next(e for e in chain if isinstance(e, ssl.SSLCertVerificationError))
        return "tls_untrusted", (
            f"The certificate of {where} is not trusted ({cert.verify_message}): check the "
            "server name, or ask its administrator for a certificate from a public authority."
        )
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return "auth_failed", (
            f'Authentication failed for {username}: the server said "{exc.code} '
            f'{_server_words(exc.message)}". Check the user name and password (some providers '
            "require an app password)."
        )
    if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError | aiosmtplib.SMTPTimeoutError):
        if security == "tls":
            return "timeout", (
                f"{where} did not complete a TLS handshake in time: check the port (465 is "
                "implicit TLS, 587 STARTTLS) and that no firewall blocks it."
            )
        return "timeout", (
            f"{where} did not answer in time: check the server name and port, and that no "
            "firewall blocks the connection (port 465 waits silently for a TLS handshake)."
        )
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "refused", f"Connection refused by {where}: check the port."
    if any(isinstance(e, ssl.SSLError) for e in chain):
        if security == "tls":
            return "wrong_security", (
                f"{where} did not start TLS: it may expect STARTTLS (usually port 587) rather "
                "than implicit TLS (port 465). Set the security to match the port."
            )
        return "tls_failed", f"The TLS handshake with {where} failed: {exc}."
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError) or (
        isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code < 0
    ):
        said = exc.message if isinstance(exc, aiosmtplib.SMTPResponseException) else str(exc)
        return "not_smtp", (
            f"{where} answered, but not as an SMTP server would ({_server_words(said)}): "
            "check the port (587 or 465 for sending)."
        )
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "connection_lost", f"{where} closed the connection: {_server_words(str(exc))}."
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return "not_smtp", (
            f'{where} refused the session: "{exc.code} {_server_words(exc.message)}". Check '
            "the port (587 or 465 for sending)."
        )
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
        return "unreachable", f"Cannot reach {where}: {_server_words(str(exc))}."
    return "unreachable", f"{where}: {_server_words(str(exc))}."


async def check_smtp(
    host: str,
    port: int,
    security: str,
    username: str,
    password: str,
    *,
    timeout: float = 20.0,
    deadline: float = 60.0,
    tls_context: ssl.SSLContext | None = None,
) -> SmtpReport:
    """Connect to ``host:port`` with ``security`` (``tls``: implicit TLS, RFC 8314;
    ``starttls``: STARTTLS is required, never plaintext), EHLO, AUTH as ``username`` and QUIT.
    Each wait is bounded by ``timeout`` and the whole test by ``deadline``."""
    where = f"{host}:{port}"
    if security not in ("tls", "starttls"):
        return SmtpReport(False, "config", f"security must be tls or starttls, not {security!r}")
    client = aiosmtplib.SMTP(
        hostname=host,
        port=port,
        timeout=timeout,
        use_tls=security == "tls",
        start_tls=security == "starttls",
        tls_context=tls_context,
    )
    try:
        async with asyncio.timeout(deadline):
            try:
                await client.connect()
            except aiosmtplib.SMTPException as exc:
                if type(exc) is aiosmtplib.SMTPException and "STARTTLS extension not" in str(exc):
                    return SmtpReport(
                        False,
                        "starttls_missing",
                        f"{where} does not offer STARTTLS: use implicit TLS (usually port "
                        "465) instead; sending the password unencrypted is refused.",
                    )
                raise
            # The extensions after STARTTLS are another list (AUTH is often offered only
            # then): EHLO again.
            await client.ehlo()
            extensions = frozenset(client.esmtp_extensions)
            if "auth" not in client.esmtp_extensions:
                return SmtpReport(
                    False,
                    "auth_unavailable",
                    f"{where} offers no authentication (AUTH) on this connection: it is a "
                    "relay for other servers, not a submission port. Use the port for sending "
                    "(587 or 465).",
                    extensions=extensions,
                )
            await client.login(username, password)
            size = client.esmtp_extensions.get("size", "").strip()
            with_size = int(size) if size.isdigit() and int(size) > 0 else None
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()  # logged in: that was the test
            return SmtpReport(
                True,
                None,
                f"Connected to {where} and logged in as {username}.",
                size_limit=with_size,
                extensions=extensions,
            )
    except TimeoutError:
        silent = (
            " A port for implicit TLS (usually 465) stays silent until TLS starts: set the "
            "security to tls there."
            if security == "starttls"
            else ""
        )
        return SmtpReport(
            False,
            "timeout",
            f"The SMTP test with {where} did not finish within {deadline:g} s: check the server "
            f"name and port, or try again later if the server is slow.{silent}",
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        problem, message = _explain(exc, where, host, security, username)
        return SmtpReport(False, problem, message)
    finally:
        if client.is_connected:
            client.close()
