"""One SMTP submission with aiosmtplib: connect, TLS, AUTH, MAIL, RCPT, DATA, QUIT.

The thin IO edge of sending. aiosmtplib's exceptions (and OSError, ssl.SSLError, timeouts) are
translated here, once, into :class:`~correspond.errors.SmtpError` with the server's reply code
and words and whether a retry can help (RFC 5321 §4.2.1: 4yz is a transient negative
completion, 5yz a permanent one; a lost connection or a timeout is transient).

The whole message is refused when any recipient is (RFC 5321 §3.3 lets a server refuse some and
take others): a partial send could not be retried without sending twice to the accepted ones,
so RSET is sent and the error names every refused address with the server's words.

Security: ``tls`` is implicit TLS (RFC 8314 §3.3, port 465), ``starttls`` upgrades before AUTH
(RFC 3207; a server that does not offer it is refused, never a plaintext login), ``plain`` only
with ``allow_plaintext``. The message size is checked against the server's SIZE (RFC 1870)
before MAIL.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiosmtplib

from correspond.errors import ConfigError, SmtpError
from correspond.imap.connect import ImapEndpoint, make_ssl_context

__all__ = ["SmtpEndpoint", "SubmitResult", "submit"]

#: Seconds for the connection and for each command (DATA's end waits on the server's checks).
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class SmtpEndpoint:
    """Where and how to submit: host, port, ``tls`` | ``starttls`` | ``plain``, and the TLS
    trust (the account's pinned certificate, else the system's store)."""

    host: str
    port: int
    security: str
    allow_plaintext: bool = False
    trusted_cert_pem: str | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.security})"

    def ssl_context(self) -> ssl.SSLContext:
        if self.security not in ("tls", "starttls", "plain"):
            raise ConfigError(f"unknown SMTP security {self.security!r}: use tls or starttls")
        return make_ssl_context(
            ImapEndpoint(
                self.host,
                self.port,
                "tls",
                allow_plaintext=self.allow_plaintext,
                trusted_cert_pem=self.trusted_cert_pem,
            )
        )


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The server took the message: its final reply (``250 2.0.0 Ok: queued as ...``)."""

    code: int
    text: str


def _error(what: str, exc: BaseException) -> SmtpError:
    """``exc`` as an SmtpError: a reply code decides transient (4xx) or permanent (5xx)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code = int(exc.code)
        words = str(exc.message).strip()
        return SmtpError(
            f"{what}: {code} {words}", code=code, server_text=words, transient=400 <= code < 500
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SmtpError(f"{what}: the server's certificate is not trusted: {exc}", transient=False)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return SmtpError(f"{what}: {exc}", transient=False)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return SmtpError(f"{what}: no answer in time", transient=True)
    if isinstance(exc, aiosmtplib.SMTPException | OSError | ssl.SSLError):
        return SmtpError(f"{what}: {exc or type(exc).__name__}", transient=True)
    return SmtpError(f"{what}: {exc!r}", transient=True)


def _hold_midway(smtp: aiosmtplib.SMTP, hold: Callable[[], None]) -> None:
    """Test hook (see ``sync.sender``): the message's first half goes out, then ``hold`` runs
    and the rest is never written (the server waits in DATA until the process is killed)."""
    protocol = smtp.protocol
    assert protocol is not None
    original = protocol.write

    def write(data: bytes) -> None:
        if data == b"DATA\r\n":
            original(data)
            return
        original(data[: len(data) // 2])
        hold()

    protocol.write = write  # type: ignore[method-assign]


async def submit(
    endpoint: SmtpEndpoint,
    *,
    username: str,
    secret: str,
    envelope_from: str,
    recipients: Sequence[str],
    data: bytes,
    timeout: float = DEFAULT_TIMEOUT,
    local_hostname: str | None = None,
    hold_data: Callable[[], None] | None = None,
    before_data: Callable[[], Awaitable[object]] | None = None,
) -> SubmitResult:
    """Submit ``data`` to ``recipients``; :class:`SmtpError` says why not (and whether to
    retry). ``before_data`` is awaited once every recipient is accepted, just before DATA
    (the sender records there that from now on the server may take the message).
    ``hold_data`` is a test hook that stops the transfer midway through DATA."""
    if endpoint.security == "plain" and not endpoint.allow_plaintext:
        raise SmtpError(
            f"{endpoint}: refusing to send a password without TLS (allow plaintext first)",
            transient=False,
        )
    if not recipients:
        raise SmtpError("no recipients", transient=False)
    context = endpoint.ssl_context()
    smtp = aiosmtplib.SMTP(
        hostname=endpoint.host,
        port=endpoint.port,
        use_tls=endpoint.security == "tls",
        start_tls=False,
        tls_context=context,
        timeout=timeout,
        local_hostname=local_hostname,
    )
    step = f"connecting to {endpoint}"
    try:
        await smtp.connect()
        step = "EHLO"
        await smtp.ehlo()
        if endpoint.security == "starttls":
            step = "STARTTLS"
            if not smtp.supports_extension("starttls"):
                raise SmtpError(
                    f"{endpoint} does not offer STARTTLS: refusing to send the password in "
                    "clear (choose tls on port 465, or a server that offers STARTTLS)",
                    transient=False,
                )
            await smtp.starttls(tls_context=context)
        step = "AUTH"
        await smtp.login(username, secret)
        size_limit = smtp.esmtp_extensions.get("size", "").strip()
        if size_limit.isdigit() and int(size_limit) and len(data) > int(size_limit):
            raise SmtpError(
                f"the message is {len(data):,} bytes after encoding; the server takes at most "
                f"{int(size_limit):,} (SIZE)",
                transient=False,
            )
        step = "MAIL FROM"
        await smtp.mail(envelope_from, options=[f"SIZE={len(data)}"] if size_limit else [])
        refused: list[tuple[str, aiosmtplib.SMTPResponseException]] = []
        for address in recipients:
            try:
                await smtp.rcpt(address)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append((address, exc))
        if refused:
            await smtp.rset()
            words = "; ".join(f"{a}: {e.code} {str(e.message).strip()}" for a, e in refused)
            transient = all(400 <= int(e.code) < 500 for _, e in refused)
            first = refused[0][1]
            raise SmtpError(
                f"the server refused {len(refused)} recipient(s): {words}",
                code=int(first.code),
                server_text=str(first.message).strip(),
                transient=transient,
            )
        if before_data is not None:
            await before_data()
        step = "DATA"
        if hold_data is not None:
            _hold_midway(smtp, hold_data)
        response = await smtp.data(data)
        result = SubmitResult(int(response.code), str(response.message).strip())
    except SmtpError:
        smtp.close()
        raise
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
        smtp.close()
        error = _error(step, exc)
        # No reply to DATA's end: whether the server took the message is unknown.
        error.maybe_taken = step == "DATA" and error.code is None
        raise error from exc
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError):
        smtp.close()  # the message is taken: a failed goodbye changes nothing
    return result
