"""The IO edge of the IMAP client: endpoints, TLS contexts, the byte pipe, error mapping.

Everything foreign (``OSError``, ``ssl.SSLError``, ``TimeoutError``, ``socket.gaierror``, the
IDNA codec's ``UnicodeError``) is translated into the error tree of :mod:`correspond.errors` here
and only here (:func:`map_io_errors`; the probes of the connection test answer yes or no).

The byte pipe (:class:`ByteChannel`) is a minimal ``asyncio.BufferedProtocol``: the transport
receives straight into one buffer, :meth:`ByteChannel.read` hands every buffered byte over in one
piece, so a large FETCH moves through with few copies and no per-chunk formatting. Reading
pauses the transport when too much is buffered (back-pressure for slow consumers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import re
import socket
import ssl
from asyncio import sslproto
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

from correspond.errors import (
    CertificateNotTrusted,
    ConfigError,
    ConnectionLost,
    ConnectionRefused,
    HostNotFound,
    ImapConnectionError,
    ImapTimeout,
    TlsError,
)

__all__ = [
    "ByteChannel",
    "ImapEndpoint",
    "Security",
    "certificate_fingerprint",
    "check_pinned_certificate",
    "enable_keepalive",
    "fetch_presented_certificate",
    "make_ssl_context",
    "map_io_errors",
    "normalize_fingerprint",
    "open_channel",
    "probe_plain_greeting",
    "probe_tls",
    "shared_ssl_context",
    "start_tls",
]

Security = Literal["tls", "starttls", "plain"]

# A connection parked in IDLE for up to 29 minutes sends nothing; keepalive probes notice a peer
# that vanished (NAT timeout, unplugged server) within about two minutes instead.
KEEPALIVE_IDLE_SECONDS = 60
KEEPALIVE_INTERVAL_SECONDS = 20
KEEPALIVE_PROBES = 3


def enable_keepalive(sock: socket.socket) -> None:
    """Turn on TCP keepalive with short timers where the platform allows setting them."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


# Pause the socket once this much undigested data is buffered (flow control for slow consumers).
_HIGH_WATER = 8 * 1024 * 1024
# Free space offered to the transport for each read; the buffer grows when it runs short.
_READ_SPACE = 256 * 1024
# What a TLS channel holds while little arrives (an IDLE connection hears a line now and then):
# it starts at this size, grows toward ``_READ_SPACE`` steps while data streams in, and falls
# back once a read finds little. A 256 KiB buffer per connection from the start was 256 KiB of
# resident memory for every idle connection (three per account then); 4 KiB each (ours and
# asyncio's) was still 8 KiB of a ~140 KB idle account, for lines of ~100 bytes.
_IDLE_SPACE = 1024
# asyncio's TLS protocol (``SSLProtocol``) receives the encrypted bytes into a buffer of its own,
# 256 KiB per connection, allocated and zero-filled when the protocol is made. Ours
# (:class:`_LeanSSLProtocol`) starts at ``_SSL_IDLE_SPACE`` and grows fourfold, up to
# ``_SSL_RECV_SPACE``, while each recv fills it (a full-body fetch), back again once a recv finds
# little; a TLS record is at most 16 KiB.
_SSL_IDLE_SPACE = 1024
_SSL_RECV_SPACE = 256 * 1024


@dataclass(frozen=True)
class ImapEndpoint:
    """Where and how to reach an IMAP server.

    ``security``: ``"tls"`` is implicit TLS (RFC 8314 §3.2, port 993), ``"starttls"`` upgrades a
    plain connection (RFC 3501 §6.2.1, port 143), ``"plain"`` never encrypts and needs
    ``allow_plaintext=True``. Credentials are never sent without TLS unless ``allow_plaintext``.

    ``trusted_cert_pem``: an explicit opt-in to trust one self-signed certificate (PEM). The
    server must then present exactly that certificate; the host name is not checked because the
    user vouched for this certificate itself. Without it the system trust store applies, with
    host name checking.
    """

    host: str
    port: int
    security: Security
    allow_plaintext: bool = False
    trusted_cert_pem: str | None = None

    def __post_init__(self) -> None:
        if self.security not in ("tls", "starttls", "plain"):
            raise ConfigError(f"unknown IMAP security {self.security!r}: use tls or starttls")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range")

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.security})"


def _pinned_ders(pem: str) -> list[bytes]:
    blocks: list[bytes] = []
    marker = "-----END CERTIFICATE-----"
    for part in pem.split(marker):
        if "-----BEGIN CERTIFICATE-----" in part:
            blocks.append(ssl.PEM_cert_to_DER_cert(part.strip() + "\n" + marker + "\n"))
    if not blocks:
        raise ConfigError("the trusted certificate is not a PEM certificate")
    return blocks


def make_ssl_context(endpoint: ImapEndpoint) -> ssl.SSLContext:
    """The client TLS context: system trust store with host name checking, or the pinned cert.

    TLS 1.2 is the floor (RFC 8996 deprecates older versions; RFC 8314 §4.1 requires TLS).
    A new context each call; IMAP connections share theirs (:func:`shared_ssl_context`).
    """
    return _new_ssl_context(endpoint.trusted_cert_pem)


SHARED_SSL_CONTEXTS = 64
"""How many distinct trust settings (the system store, each pinned certificate) keep a shared
TLS context: one per process for the system store, one per pinned certificate in use."""


def shared_ssl_context(endpoint: ImapEndpoint) -> ssl.SSLContext:
    """The TLS context of an IMAP connection, shared by every connection with the same trust
    (the system store, or the same pinned certificate); not to be changed by the caller.

    A connection keeps its context for its whole life (OpenSSL's SSL object refers to it), and a
    context loaded with the system trust store holds ~830 KB of parsed certificates (~22 KB with
    one pinned certificate): made per connection, that was most of an idle live account's
    memory on a real server (bench/README.md, idle_accounts.py). A changed system store is read
    by the next process.
    """
    return _cached_ssl_context(endpoint.trusted_cert_pem or None)


@functools.lru_cache(maxsize=SHARED_SSL_CONTEXTS)
def _cached_ssl_context(trusted_cert_pem: str | None) -> ssl.SSLContext:
    return _new_ssl_context(trusted_cert_pem)  # a certificate that fails to load is not cached


def _new_ssl_context(trusted_cert_pem: str | None) -> ssl.SSLContext:
    if trusted_cert_pem:
        try:
            ctx = ssl.create_default_context(cadata=trusted_cert_pem)
        except ssl.SSLError as exc:
            raise ConfigError(f"the trusted certificate cannot be loaded: {exc}") from exc
        # The exact certificate is compared after the handshake (check_pinned_certificate).
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def check_pinned_certificate(endpoint: ImapEndpoint, transport: asyncio.BaseTransport) -> None:
    """With ``trusted_cert_pem``, require that the server presented exactly that certificate."""
    if not endpoint.trusted_cert_pem:
        return
    sslobj = transport.get_extra_info("ssl_object")
    peer = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if peer is None or peer not in _pinned_ders(endpoint.trusted_cert_pem):
        raise CertificateNotTrusted(
            f"{endpoint.host}:{endpoint.port} presented a certificate other than the trusted one",
            reason="pinned",
        )


# OpenSSL X509_V_ERR_* codes that call for another remedy than "trust this certificate".
_VERIFY_REASONS = {
    9: "expired",  # CERT_NOT_YET_VALID
    10: "expired",  # CERT_HAS_EXPIRED
    62: "hostname",  # HOSTNAME_MISMATCH
    64: "hostname",  # IP_ADDRESS_MISMATCH
}


@contextlib.contextmanager
def map_io_errors(host: str, port: int, *, pinned: bool = False) -> Iterator[None]:
    """Translate foreign network/TLS errors into the Correspond error tree, once.

    ``pinned``: the user trusts one certificate, so any verification failure other than expiry
    means "not that certificate" (reason ``"pinned"``).
    """
    where = f"{host}:{port}"
    try:
        yield
    except socket.gaierror as exc:
        raise HostNotFound(f"{host} does not resolve ({exc.strerror})") from exc
    except UnicodeError as exc:
        # The IDNA codec refuses some names before any lookup (a label over 63 characters...).
        raise HostNotFound(f"{host} is not a valid host name ({exc})") from exc
    except ConnectionRefusedError as exc:
        raise ConnectionRefused(f"connection refused by {where}") from exc
    except TimeoutError as exc:
        raise ImapTimeout(f"no answer from {where} in time") from exc
    except ssl.SSLCertVerificationError as exc:
        reason = _VERIFY_REASONS.get(exc.verify_code, "untrusted")
        if pinned and reason != "expired":
            reason = "pinned"
        raise CertificateNotTrusted(
            f"the certificate of {where} is not trusted: {exc.verify_message}", reason=reason
        ) from exc
    except ssl.SSLError as exc:
        raise TlsError(f"TLS with {where} failed: {getattr(exc, 'reason', None) or exc}") from exc
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, EOFError) as exc:
        raise ConnectionLost(f"{where} closed the connection ({exc})") from exc
    except OSError as exc:
        raise ImapConnectionError(f"cannot reach {where}: {exc.strerror or exc}") from exc


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ByteChannel(asyncio.Protocol):
    """A bytes-in pipe over a plain asyncio transport (TLS: :class:`TlsByteChannel`)."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._size = 0  # bytes received and not yet read
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._close_exc: BaseException | None = None
        self._paused = False
        self._lost_future: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # The plain transport hands over fresh bytes objects: keep them, no copy.
        self._chunks.append(data)
        self._received(len(data))

    def _received(self, nbytes: int) -> None:
        self._size += nbytes
        if self._size > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        return data

    def eof_received(self) -> bool:
        self._mark_closed(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed(exc)
        if not self._lost_future.done():
            self._lost_future.set_result(None)

    def _mark_closed(self, exc: BaseException | None) -> None:
        self._closed = True
        if exc is not None and self._close_exc is None:
            self._close_exc = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- API -------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def set_transport(self, transport: asyncio.Transport) -> None:
        """After STARTTLS the TLS transport replaces the plain one."""
        self.transport = transport

    def buffered(self) -> bool:
        return self._size > 0

    async def read(self, timeout: float | None) -> bytes:
        """Every byte received so far (waiting up to ``timeout`` s for at least one).

        Raises ImapTimeout when nothing arrives in time, ConnectionLost at EOF.
        """
        if not self._size:
            if self._closed:
                raise self._lost()
            # A bare TimerHandle per wait: cheaper than asyncio.timeout() on this hot path.
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _expire, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._size:
                if self._closed:
                    raise self._lost()
                raise ImapTimeout(f"no answer from {self._where} in {timeout:g} s")
        data = self._take()
        self._size = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def _lost(self) -> ConnectionLost:
        exc = self._close_exc
        detail = f" ({exc})" if exc is not None else ""
        lost = ConnectionLost(f"{self._where} closed the connection{detail}")
        lost.__cause__ = exc
        return lost

    def write(self, data: bytes) -> None:
        if self.transport is None or self._closed or self.transport.is_closing():
            raise self._lost()
        self.transport.write(data)

    def close(self) -> None:
        """Close the transport; a task waiting in :meth:`read` is woken at once (it raises
        ConnectionLost) rather than when the transport reports the close, which for TLS waits
        on the peer's close_notify."""
        if self.transport is not None:
            self.transport.close()
        self._mark_closed(None)

    def abort(self) -> None:
        """Drop the transport at once; a waiting reader is woken as by :meth:`close`."""
        if self.transport is not None:
            self.transport.abort()
        self._mark_closed(None)

    async def wait_closed(self, timeout: float) -> None:
        """Wait until the transport has really let go of the socket (TLS close_notify done).

        Aborts when that takes longer than ``timeout``.
        """
        if self.transport is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._lost_future)
        except TimeoutError:
            self.transport.abort()
            # abort() schedules connection_lost on the next loop iteration.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await asyncio.shield(self._lost_future)


class TlsByteChannel(ByteChannel, asyncio.BufferedProtocol):
    """The pipe for TLS transports: asyncio decrypts straight into one reusable buffer.

    asyncio's copying TLS path (``data_received``) allocates a 256 KiB bytes object for every
    TLS record it reads; as a BufferedProtocol each record lands in ``_buf`` instead, and
    :meth:`read` makes one copy of everything received.
    """

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self._buf = bytearray(_IDLE_SPACE)

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._buf) - self._size < max(sizehint, _IDLE_SPACE // 2):
            # Double while data streams in, in steps of at most _READ_SPACE.
            self._buf.extend(bytes(min(max(len(self._buf), sizehint), _READ_SPACE)))
        return memoryview(self._buf)[self._size :]

    def buffer_updated(self, nbytes: int) -> None:
        self._received(nbytes)

    def _take(self) -> bytes:
        with memoryview(self._buf) as view:
            data = bytes(view[: self._size])
        if len(self._buf) > _IDLE_SPACE and self._size < _IDLE_SPACE:
            self._buf = bytearray(_IDLE_SPACE)  # the burst is over: do not keep its buffer
        return data


def _lean_tls_supported() -> bool:
    """Does this Python's ``SSLProtocol`` look the way :class:`_LeanSSLProtocol` expects?

    Python 3.11-3.13 share it: ``max_size`` (a class attribute) is the size of the buffer
    ``__init__`` allocates as ``_ssl_buffer``/``_ssl_buffer_view``, which ``get_buffer`` hands to
    the socket transport and ``buffer_updated`` feeds to OpenSSL. Any other shape: the stdlib
    path, with asyncio's own buffer.
    """
    try:
        params = inspect.signature(sslproto.SSLProtocol.__init__).parameters
    except (TypeError, ValueError):
        return False
    wanted = (
        "loop",
        "app_protocol",
        "sslcontext",
        "waiter",
        "server_side",
        "server_hostname",
        "call_connection_made",
        "ssl_handshake_timeout",
    )
    return (
        all(name in params for name in wanted)
        and isinstance(vars(sslproto.SSLProtocol).get("max_size"), int)
        and callable(getattr(sslproto.SSLProtocol, "get_buffer", None))
        and callable(getattr(sslproto.SSLProtocol, "buffer_updated", None))
    )


_LEAN_TLS = _lean_tls_supported()


class _LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a receive buffer sized to the traffic, not 256 KiB each.

    Everything else (handshake, certificate and host name checks, SNI, timeouts, shutdown) is
    the stdlib's: only the buffer the socket transport receives the encrypted bytes into
    changes. It is made the way ``loop.create_connection(ssl=...)`` and ``loop.start_tls`` make
    theirs (:func:`_open_tls`, :func:`_start_tls`).
    """

    # Read by SSLProtocol.__init__ as the size of the buffer it allocates.
    max_size = _SSL_IDLE_SPACE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lean = isinstance(getattr(self, "_ssl_buffer", None), bytearray) and isinstance(
            getattr(self, "_ssl_buffer_view", None), memoryview
        )

    def _resize(self, size: int) -> None:
        self._ssl_buffer = bytearray(size)
        self._ssl_buffer_view = memoryview(self._ssl_buffer)

    def get_buffer(self, n: int) -> memoryview:
        if not self._lean:
            return cast(memoryview, super().get_buffer(n))
        return cast(memoryview, self._ssl_buffer_view)

    def buffer_updated(self, nbytes: int) -> None:
        super().buffer_updated(nbytes)  # hands the bytes to OpenSSL: the buffer is free again
        if not self._lean:
            return
        size = len(self._ssl_buffer)
        if nbytes >= size and size < _SSL_RECV_SPACE:
            self._resize(min(size * 4, _SSL_RECV_SPACE))  # a stream: fewer, larger recvs
        elif nbytes < _SSL_IDLE_SPACE and size > _SSL_IDLE_SPACE:
            self._resize(_SSL_IDLE_SPACE)  # the burst is over: do not keep its buffer


async def _open_tls(
    loop: asyncio.AbstractEventLoop,
    channel: TlsByteChannel,
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    handshake_timeout: float,
) -> asyncio.Transport:
    """``loop.create_connection(ssl=ctx)`` with :class:`_LeanSSLProtocol`: TCP, then the
    handshake, as base_events does it; on any failure the socket is dropped."""
    waiter: asyncio.Future[None] = loop.create_future()
    protocol = _LeanSSLProtocol(
        loop,
        channel,
        ctx,
        waiter,
        server_side=False,
        server_hostname=host,
        call_connection_made=True,
        ssl_handshake_timeout=handshake_timeout,
    )
    # What the stdlib hands back and closes on failure: closing it now (not when the socket's
    # connection_lost runs) is what keeps it from warning "unclosed transport" when collected.
    app_transport = getattr(protocol, "_app_transport", None)
    try:
        raw, _ = await loop.create_connection(lambda: protocol, host, port)
    except BaseException:
        if isinstance(app_transport, asyncio.BaseTransport):
            app_transport.close()
        raise
    try:
        await waiter
        if channel.transport is None:
            raise ConnectionResetError("the connection closed during the TLS handshake")
    except BaseException:
        if isinstance(app_transport, asyncio.BaseTransport):
            app_transport.close()
        raw.abort()
        raise
    return channel.transport


async def _start_tls(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    channel: TlsByteChannel,
    host: str,
    ctx: ssl.SSLContext,
    handshake_timeout: float,
) -> asyncio.Transport | None:
    """``loop.start_tls`` with :class:`_LeanSSLProtocol`, step for step as base_events does it
    (the stdlib's own where the transport cannot take it)."""
    if not _LEAN_TLS or not getattr(transport, "_start_tls_compatible", False):
        return await loop.start_tls(
            transport, channel, ctx, server_hostname=host, ssl_handshake_timeout=handshake_timeout
        )
    waiter: asyncio.Future[None] = loop.create_future()
    protocol = _LeanSSLProtocol(
        loop,
        channel,
        ctx,
        waiter,
        server_side=False,
        server_hostname=host,
        call_connection_made=True,
        ssl_handshake_timeout=handshake_timeout,
    )
    # Paused first so that no data reaches the protocol before its connection_made.
    transport.pause_reading()
    transport.set_protocol(protocol)
    conmade = loop.call_soon(protocol.connection_made, transport)
    resume = loop.call_soon(transport.resume_reading)
    app_transport = getattr(protocol, "_app_transport", None)
    try:
        await waiter
    except BaseException:
        if isinstance(app_transport, asyncio.BaseTransport):
            app_transport.close()
        transport.close()
        conmade.cancel()
        resume.cancel()
        raise
    return channel.transport


async def open_channel(endpoint: ImapEndpoint, *, timeout: float) -> ByteChannel:
    """Open TCP (and implicit TLS for ``security="tls"``) to the endpoint within ``timeout``."""
    loop = asyncio.get_running_loop()
    where = f"{endpoint.host}:{endpoint.port}"
    ctx = shared_ssl_context(endpoint) if endpoint.security == "tls" else None
    with map_io_errors(endpoint.host, endpoint.port, pinned=bool(endpoint.trusted_cert_pem)):
        async with asyncio.timeout(timeout):
            if ctx is not None and _LEAN_TLS:
                tls_channel = TlsByteChannel(where)
                channel: ByteChannel = tls_channel
                transport: asyncio.Transport = await _open_tls(
                    loop,
                    tls_channel,
                    endpoint.host,
                    endpoint.port,
                    ctx,
                    # asyncio's own handshake timeout fires a less precise error; ours first.
                    timeout + 5,
                )
            else:
                transport, channel = await loop.create_connection(
                    lambda: TlsByteChannel(where) if ctx is not None else ByteChannel(where),
                    endpoint.host,
                    endpoint.port,
                    ssl=ctx,
                    server_hostname=endpoint.host if ctx is not None else None,
                    ssl_handshake_timeout=timeout + 5 if ctx is not None else None,
                )
    try:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Commands are small and latency-bound (IDLE's DONE, tagged round trips).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            enable_keepalive(sock)
        if ctx is not None:
            check_pinned_certificate(endpoint, transport)
    except BaseException:
        transport.abort()
        await channel.wait_closed(1.0)
        raise
    return channel


async def start_tls(channel: ByteChannel, endpoint: ImapEndpoint, *, timeout: float) -> ByteChannel:
    """Upgrade the connection to TLS (RFC 3501 §6.2.1 STARTTLS); returns the new TLS channel.

    The old channel must be empty (the caller checked): nothing read in plaintext carries over.
    On failure the connection is closed before the error is raised.
    """
    loop = asyncio.get_running_loop()
    ctx = shared_ssl_context(endpoint)
    transport = channel.transport
    assert transport is not None
    tls_channel = TlsByteChannel(channel._where)
    try:
        with map_io_errors(endpoint.host, endpoint.port, pinned=bool(endpoint.trusted_cert_pem)):
            async with asyncio.timeout(timeout):
                tls_transport = await _start_tls(
                    loop, transport, tls_channel, endpoint.host, ctx, timeout + 5
                )
        if tls_transport is None:
            raise ConnectionLost(f"{endpoint} closed the connection during STARTTLS")
        tls_channel.set_transport(tls_transport)
        check_pinned_certificate(endpoint, tls_transport)
    except BaseException:
        transport.abort()
        await asyncio.sleep(0)  # abort() closes the socket on the next loop iteration
        channel.connection_lost(None)
        raise
    return tls_channel


# -- probes for the connection test's diagnosis ---------------------------------------------------
# Each answers one yes/no question about a port within ``timeout`` and never raises: a failure
# of any kind is a "no". Nothing is sent but a TLS ClientHello; no credentials, ever.


async def probe_tls(host: str, port: int, *, timeout: float) -> bool:
    """Does ``host:port`` complete a TLS handshake (any certificate)? Then it is implicit TLS."""
    ctx = ssl.create_default_context()
    # Only "does this port speak TLS" is asked here; trust is decided by the real connection.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host, ssl_handshake_timeout=timeout + 5
            )
    except (OSError, ssl.SSLError, TimeoutError, UnicodeError):
        return False
    writer.transport.abort()
    return True


async def probe_plain_greeting(host: str, port: int, *, timeout: float) -> bool:
    """Does ``host:port`` greet in plaintext IMAP (``* OK``/``* PREAUTH``/``* BYE``)?"""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                line = await reader.readline()
            finally:
                writer.transport.abort()
    except (OSError, TimeoutError, UnicodeError, ValueError):
        return False
    return line.upper().startswith((b"* OK", b"* PREAUTH", b"* BYE"))


async def fetch_presented_certificate(
    host: str, port: int, security: Security, *, timeout: float
) -> bytes | None:
    """The certificate (DER) ``host:port`` presents, whatever its trust, or None.

    Implicit TLS: a handshake that verifies nothing. STARTTLS: the greeting, then ``STARTTLS``
    and the handshake. No credentials are sent; the connection is dropped at once after. For
    showing a fingerprint and pinning exactly that certificate, never for trusting it silently.
    """
    if security == "plain":
        return None
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            if security == "tls":
                _, writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=host, ssl_handshake_timeout=timeout + 5
                )
            else:
                reader, writer = await asyncio.open_connection(host, port)
                if not (await reader.readline()).upper().startswith(b"* OK"):
                    return None
                writer.write(b"P1 STARTTLS\r\n")
                while True:
                    line = await reader.readline()
                    if not line:
                        return None
                    if line.startswith(b"P1 "):
                        if line[3:5].upper() != b"OK":
                            return None
                        break
                await writer.start_tls(ctx, server_hostname=host, ssl_handshake_timeout=timeout + 5)
            sslobj = writer.get_extra_info("ssl_object")
            return sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    except (OSError, ssl.SSLError, TimeoutError, UnicodeError, ValueError, EOFError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()


def certificate_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as OpenSSL prints it: ``AB:CD:...`` (32 pairs)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


_FINGERPRINT_NOISE = re.compile(r"[\s:]")


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as given by a person (``AB:CD...``, ``abcd...``, with an optional
    ``sha256:``/``SHA256 Fingerprint=`` prefix) in :func:`certificate_fingerprint`'s form;
    ConfigError when it is not 32 bytes of hex."""
    value = text.strip()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
    value = _FINGERPRINT_NOISE.sub("", value).upper()
    if len(value) != 64 or any(c not in "0123456789ABCDEF" for c in value):
        raise ConfigError(
            "not a SHA-256 fingerprint: expected 64 hex digits, as `correspond account test` "
            "shows them (AB:CD:...)"
        )
    return ":".join(value[i : i + 2] for i in range(0, 64, 2))
