"""The one error tree of Correspond.

Foreign exceptions (OSError, ssl.SSLError, asyncio.TimeoutError, SQLAlchemy errors, ...) are
translated into these exactly once, at the IO edge that saw them (``raise ... from exc``). Code
above the adapters only ever catches these.

::

    CorrespondError
    ├── ConfigError                  settings or input that cannot work (permanent)
    ├── NotFound                     a named account, folder or message does not exist
    ├── StoreError                   the database or blob store failed
    └── ImapError
        ├── ImapProtocolError        the server sent bytes that are not IMAP
        │   ├── StartTlsInjection    cleartext arrived between STARTTLS's OK and the handshake
        │   └── ImapLimitExceeded    a reply over a memory or count limit (names the setting)
        ├── ImapCommandError         a tagged NO or BAD (carries status, code and the server's text)
        ├── AuthenticationFailed     credentials refused (permanent until the user acts)
        ├── CapabilityError          the server lacks something we need (IMAP4rev1, STARTTLS, ...)
        └── ImapConnectionError      transient: retry with backoff
            ├── HostNotFound         the name does not resolve
            ├── ConnectionRefused    nothing listens on that port
            ├── ImapTimeout          no answer in time
            │   └── GreetingTimeout  connected, but no IMAP greeting (a TLS-only port?)
            ├── TlsError             TLS handshake failed
            │   ├── CertificateNotTrusted
            │   └── SecurityMismatch the port speaks implicit TLS where STARTTLS/plain was
            │                        chosen, or plaintext where TLS was (permanent)
            └── ConnectionLost       closed by the peer, or BYE
    └── SmtpError                    sending failed: the server's reply code and words; transient
                                     for 4xx, a lost connection or a timeout, else permanent

``transient`` tells the engine whether retrying can help.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "CapabilityError",
    "CertificateNotTrusted",
    "ConfigError",
    "Conflict",
    "ConnectionLost",
    "ConnectionRefused",
    "CorrespondError",
    "GreetingTimeout",
    "HostNotFound",
    "ImapCommandError",
    "ImapConnectionError",
    "ImapError",
    "ImapLimitExceeded",
    "ImapProtocolError",
    "ImapTimeout",
    "NotFound",
    "SecurityMismatch",
    "SmtpError",
    "StartTlsInjection",
    "StoreError",
    "TlsError",
]


class CorrespondError(Exception):
    """Root of every error Correspond raises on purpose."""

    transient: bool = False


class ConfigError(CorrespondError):
    """Settings or user input that cannot work as given."""


class NotFound(CorrespondError):
    """A named account, folder or message does not exist."""


class StoreError(CorrespondError):
    """The database or the blob store failed."""

    transient = True


class ImapError(CorrespondError):
    """Anything that went wrong talking IMAP."""


class ImapProtocolError(ImapError):
    """The server sent bytes that do not parse as an IMAP response."""


class StartTlsInjection(ImapProtocolError):
    """Bytes arrived after the STARTTLS OK and before the handshake: something on the path
    injected cleartext meant to pass as encrypted (CVE-2011-0411 class), or a proxy is broken."""


class ImapLimitExceeded(ImapProtocolError):
    """The server sent more than a limit allows for one command (literal bytes, buffered
    responses, UIDs of a search): the connection is dropped rather than the memory exhausted.

    ``setting`` names the :class:`~correspond.settings.Settings` field that sets the limit
    (``imap_max_command_bytes``, ...), ``limit`` its value.
    """

    def __init__(self, message: str, *, setting: str, limit: int) -> None:
        self.setting = setting
        self.limit = limit
        self.detail = message
        super().__init__(f"{message} (the limit is CORRESPOND_{setting.upper()})")


class ImapCommandError(ImapError):
    """The server answered a command with a tagged NO or BAD."""

    def __init__(self, command: str, status: str, text: str, code: str | None = None) -> None:
        self.command = command
        self.status = status
        self.text = text
        self.code = code
        shown = f"[{code}] {text}" if code else text
        super().__init__(f"{command} failed: {status} {shown}".rstrip())


class AuthenticationFailed(ImapError):
    """The server refused the credentials; ``server_text`` holds its exact words."""

    def __init__(self, message: str, server_text: str = "") -> None:
        self.server_text = server_text
        super().__init__(message)


class CapabilityError(ImapError):
    """The server lacks a capability we need (IMAP4rev1, STARTTLS, AUTH=PLAIN, ...).

    ``capability`` names what is missing (``"IMAP4rev1"``, ``"STARTTLS"``, ``"LOGIN"`` for
    LOGINDISABLED, ...) so callers can tell cases apart without parsing the message.
    """

    def __init__(self, message: str, capability: str | None = None) -> None:
        self.capability = capability
        super().__init__(message)


class ImapConnectionError(ImapError):
    """The connection could not be made or was lost; retrying later may help."""

    transient = True


class HostNotFound(ImapConnectionError):
    """The host name does not resolve."""


class ConnectionRefused(ImapConnectionError):
    """The host answered but nothing listens on the port."""


class ImapTimeout(ImapConnectionError):
    """No answer within the configured timeout."""


class GreetingTimeout(ImapTimeout):
    """The TCP connection was made but the server sent no greeting in time.

    A port that expects implicit TLS (usually 993) stays silent like this when spoken to in
    plaintext, so this is kept apart from a connect timeout.
    """


class TlsError(ImapConnectionError):
    """The TLS handshake failed."""


class CertificateNotTrusted(TlsError):
    """The server's certificate does not chain to a trusted root (or to the pinned certificate).

    ``reason`` says why, for a message that tells the person what to do: ``"untrusted"`` (no
    trusted root: self-signed or a private CA), ``"expired"`` (or not yet valid),
    ``"hostname"`` (issued for another name), ``"pinned"`` (not the certificate the user
    chose to trust).
    """

    transient = False

    def __init__(self, message: str, reason: str = "untrusted") -> None:
        self.reason = reason
        super().__init__(message)


class SecurityMismatch(TlsError):
    """The port speaks another security than the account's setting, confirmed by a probe: it
    waits for a TLS handshake where STARTTLS (or plaintext) was chosen, or greets in plaintext
    where implicit TLS was. Retrying cannot help until the settings change.

    ``expected`` is what the port speaks: ``"tls"`` (implicit TLS) or ``"plain"``.
    """

    transient = False

    def __init__(self, message: str, *, expected: str) -> None:
        self.expected = expected
        super().__init__(message)


class ConnectionLost(ImapConnectionError):
    """The peer closed the connection, or said BYE."""


class Conflict(ConfigError):
    """What was asked clashes with what is stored (a duplicate external id, an address that
    belongs to another contact): 409 on the API."""


class SmtpError(CorrespondError):
    """Sending failed. ``code`` is the server's reply code (None: no reply, e.g. the connection
    was lost or timed out), ``server_text`` its words; ``transient`` says whether a retry can
    help (4xx and connection failures: yes; 5xx, a refused login, bad TLS: no);
    ``maybe_taken`` that the message may have been accepted all the same (no reply to the end
    of DATA: the server may have taken it just before the connection went)."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        server_text: str = "",
        transient: bool,
        maybe_taken: bool = False,
    ) -> None:
        self.code = code
        self.server_text = server_text
        self.transient = transient
        self.maybe_taken = maybe_taken
        super().__init__(message)
