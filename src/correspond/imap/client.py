"""A thin asyncio IMAP4rev1 client (RFC 3501) over the sans-IO parser.

The client only pumps bytes: commands are encoded by ``protocol.encode_command``, replies are
decoded by ``protocol.ResponseParser``; this module adds tags,
TLS/STARTTLS, authentication, timeouts, IDLE and the routing of untagged responses.

One command runs at a time, and one task runs it: while a task has a command in flight, an IDLE
session open, or a UID FETCH stream not read to its end, a command from any other (still running)
task raises RuntimeError at once, before anything is sent; the connection is left as it was. (The
same task may start a command after abandoning its own stream: the rest is read and dropped first.)
Untagged responses that answer the running command are returned by it; everything else the server
volunteers (``EXISTS``, ``EXPUNGE``, flag ``FETCH``, ``VANISHED``, ``[ALERT]``) is kept, in
order, for :meth:`ImapClient.drain_unsolicited`.
``* BYE`` outside LOGOUT raises :class:`~correspond.errors.ConnectionLost`.

Timeouts, every wait bounded: ``connect_timeout`` bounds each step of the handshake (TCP
connect with the implicit-TLS handshake, greeting, CAPABILITY, STARTTLS and its handshake);
``command_timeout`` bounds every silence while a reply is awaited, and the ``+`` of IDLE;
inside IDLE each wait is the caller's ``timeout``, never past ``renew_after``. Each command
(and the greeting) also has an overall deadline: its silence timeout plus one second per
``ImapLimits.min_rate`` bytes received, counting only time spent waiting for the server, so a
server that trickles a byte every few seconds is cut off while a big FETCH at a working rate is
not. Memory is bounded per command whatever the server sends (:class:`ImapLimits`: FETCH bodies
above ``max_message_bytes`` are dropped as they arrive, literal and response bytes, response
counts and search results are capped; an overflow raises ImapLimitExceeded). Silence where a
greeting is due is probed (a port for implicit TLS waits for a ClientHello), as is a failed
implicit-TLS handshake (a plaintext port greets): both raise SecurityMismatch. Foreign errors
are mapped once, in :mod:`correspond.imap.connect`.

A command is *in flight* from its first byte sent until its tagged completion is read. Anything
that ends the wait in between (a timeout, a cancelled task, bytes that are not IMAP, a literal
whose ``+`` never came) leaves the connection in an unknown state: the rest of the reply would be
taken for the next command's, and after an announced synchronising literal the next command would
become literal data. So the connection is aborted then, and every later call raises
:class:`~correspond.errors.ConnectionLost` at once. A tagged NO/BAD completes the command, and the
session goes on. Inside IDLE, waiting for the next event is not a command: only entering and
leaving IDLE are. But an IDLE wait that ends in anything else than an event, a timeout or the
server's own OK (a cancel, a wrong tag, bytes that are not IMAP) aborts the connection too; so
does a ``+`` where none was asked for, in any state. A cancel is never turned into a wait for
DONE's OK. LOGOUT with a UID FETCH not read to its end closes the connection without LOGOUT
(the rest of the reply is not downloaded). Closing the connection wakes the task waiting on it.

Extensions used when advertised: SASL-IR (RFC 4959), LITERAL+ (RFC 7888), ENABLE (RFC 5161),
CONDSTORE/QRESYNC (RFC 7162), ESEARCH (RFC 4731), UIDPLUS (RFC 4315), MOVE (RFC 6851),
IDLE (RFC 2177), SPECIAL-USE (RFC 6154) with LIST-EXTENDED (RFC 5258), ID (RFC 2971),
UTF8=ACCEPT (RFC 6855).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import datetime as dt
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from correspond.errors import (
    AuthenticationFailed,
    CapabilityError,
    CertificateNotTrusted,
    ConfigError,
    ConnectionLost,
    CorrespondError,
    GreetingTimeout,
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
from correspond.imap.connect import (
    ByteChannel,
    ImapEndpoint,
    Security,
    open_channel,
    probe_plain_greeting,
    probe_tls,
    start_tls,
)
from correspond.imap.mutf7 import encode_mutf7
from correspond.imap.protocol import (
    Arg,
    EncodedCommand,
    Raw,
    ResponseParser,
    encode_command,
    format_sequence_set,
    parse_sequence_set,
)
from correspond.imap.protocol import Literal as LiteralArg
from correspond.imap.types import (
    AppendUid,
    CapabilityResponse,
    ContinuationRequest,
    CopyUid,
    EnabledResponse,
    ESearchResponse,
    ExistsResponse,
    FetchResponse,
    FlagsResponse,
    IdResponse,
    ListResponse,
    RecentResponse,
    Response,
    ResponseCode,
    SearchResponse,
    StatusDataResponse,
    StatusResponse,
    TaggedResponse,
    VanishedResponse,
)

if TYPE_CHECKING:
    from correspond.settings import Settings

__all__ = [
    "FetchStream",
    "IdleSession",
    "ImapClient",
    "ImapEndpoint",
    "ImapLimits",
    "QresyncParams",
    "Security",
    "SelectedMailbox",
    "StoreResult",
    "release_clients",
]

SaslResponder = Callable[[bytes], bytes]
StoreAction = Literal["+FLAGS", "-FLAGS", "FLAGS", "+FLAGS.SILENT", "-FLAGS.SILENT", "FLAGS.SILENT"]
_SESSION_INTACT = (ImapCommandError, AuthenticationFailed, CapabilityError)
UidSet = str | Iterable[int]

# A probe only confirms a suspicion (a second connection, a ClientHello or a greeting read).
_PROBE_SECONDS = 5.0

# RFC 2177 §3: servers may log an idle client off after 30 minutes; re-issue IDLE before.
IDLE_RENEW_SECONDS = 29 * 60.0

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class ImapLimits:
    """What one connection may hold or wait for, whatever the server sends.

    * ``max_message_bytes``: a literal of a FETCH response above it (a body, whatever
      RFC822.SIZE claimed) is read and dropped as it arrives; the response lists the section in
      ``FetchResponse.dropped``.
    * ``max_command_bytes``: the literal bytes one command may hold, and for a command whose
      answers are collected (everything but the FETCH responses of ``uid_fetch``, which are
      handed over one by one) the bytes of every response. Checked at each literal's ``{n}``
      marker, before it is read.
    * ``max_command_responses``: untagged responses one command may collect (what it returns;
      the responses the server volunteers meanwhile go to the unsolicited queue).
    * ``max_search_results``: UIDs one SEARCH may return across its responses, and the numbers
      any sequence set (ESEARCH, VANISHED, COPYUID, MODIFIED) may expand to: counted before a
      range is expanded.
    * ``max_literal``: a literal outside FETCH (a folder name, an ID value).
    * ``max_unsolicited``: responses kept for :meth:`ImapClient.drain_unsolicited` (and at
      most ``max_command_bytes`` of them); older ones are dropped first.
    * ``min_rate``: a command's overall deadline is ``command_timeout`` (its silence timeout)
      plus one second per ``min_rate`` bytes received, counting only time spent waiting for
      the server: one byte every few seconds cannot keep a command alive, a big FETCH can.
    * ``greeting_probe_after``: silence after connecting, before probing (on a second
      connection) whether the port waits for a TLS handshake instead of greeting.

    Each overflow raises :class:`~correspond.errors.ImapLimitExceeded` (naming the setting)
    or :class:`~correspond.errors.ImapTimeout`, and the connection is dropped.
    """

    max_message_bytes: int = 25 * 1024 * 1024
    max_command_bytes: int = 64 * 1024 * 1024
    max_command_responses: int = 100_000
    max_search_results: int = 1_000_000
    max_literal: int = 1024 * 1024
    max_unsolicited: int = 10_000
    min_rate: float = 4096.0
    greeting_probe_after: float = 3.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ImapLimits:
        return cls(
            max_message_bytes=settings.max_message_bytes,
            # A message at the limit must fit, with its headers and the command's other lines.
            max_command_bytes=max(
                settings.imap_max_command_bytes, settings.max_message_bytes + 1024 * 1024
            ),
            max_command_responses=settings.imap_max_command_responses,
            max_search_results=settings.imap_max_search_results,
            min_rate=settings.imap_command_min_rate,
            greeting_probe_after=settings.imap_greeting_probe_seconds,
        )


class _Command:
    """Accounting for the command in flight: time spent waiting, bytes, responses."""

    __slots__ = (
        "base",
        "mark_lit",
        "mark_resp",
        "name",
        "received",
        "results",
        "stream",
        "used",
        "waited",
    )

    def __init__(self, name: str, base: float, stream: bool, parser: ResponseParser) -> None:
        self.name = name
        self.base = base  # seconds allowed before the per-byte allowance
        self.stream = stream  # FETCH responses are handed over, not collected
        self.received = 0
        self.waited = 0.0  # seconds spent waiting for the server (not for the caller)
        self.results = 0  # UIDs of SEARCH, ESEARCH and VANISHED responses
        self.used = 0
        self.mark_resp = parser.response_bytes
        self.mark_lit = parser.literal_bytes


@dataclass(frozen=True)
class QresyncParams:
    """``SELECT mailbox (QRESYNC (uidvalidity modseq [known-uids]))`` (RFC 7162 §3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: tuple[int, ...] | None = None


@dataclass
class SelectedMailbox:
    """What SELECT/EXAMINE reported (RFC 3501 §6.3.1; RFC 7162 §3.1.2, §3.2.5).

    ``vanished`` and ``changed`` hold the ``VANISHED (EARLIER)`` UIDs and the ``FETCH`` responses
    a QRESYNC select returned. ``highestmodseq`` is None when the server sent ``NOMODSEQ`` or
    nothing.
    """

    name_raw: bytes
    exists: int = 0
    recent: int = 0
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    unseen: int | None = None
    flags: tuple[str, ...] = ()
    permanentflags: tuple[str, ...] = ()
    read_only: bool = False
    nomodseq: bool = False
    vanished: tuple[int, ...] = ()
    changed: list[FetchResponse] = field(default_factory=list)


@dataclass(frozen=True)
class StoreResult:
    """The answer to UID STORE: FETCH responses (unless ``.SILENT``), ``[MODIFIED set]`` UIDs."""

    fetches: tuple[FetchResponse, ...]
    modified: tuple[int, ...] = ()


def _uid_set(uids: UidSet) -> str:
    if isinstance(uids, str):
        return uids
    values = sorted(set(uids))
    if not values:
        raise ValueError("empty UID set")
    return format_sequence_set(values)


def _imap_date_time(when: dt.datetime) -> str:
    """``date-time`` of RFC 3501 §9: ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` (naive = UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


def _flag_list(flags: Iterable[str]) -> Raw:
    flags = tuple(flags)
    for flag in flags:
        if not flag or any(c in flag for c in ' ()"{\r\n'):
            raise ValueError(f"not a flag: {flag!r}")
    return Raw(("(" + " ".join(flags) + ")").encode("ascii"))


def _code_name(code: ResponseCode | None) -> str | None:
    return code.name if code is not None else None


_CAPABILITY_SETS: dict[frozenset[str], frozenset[str]] = {}
_CAPABILITY_SETS_MAX = 256


def _shared_capabilities(names: Iterable[str]) -> frozenset[str]:
    """``frozenset(names)``, the same object for every connection that got the same list.

    A server's capability list is ~40 names (~4.5 KB as a set of strings) and every connection
    to it keeps one: 1,000 live accounts on one server share one copy. Bounded: a process that
    meets more distinct lists than this starts the table again.
    """
    fresh = frozenset(names)
    shared = _CAPABILITY_SETS.get(fresh)
    if shared is None:
        if len(_CAPABILITY_SETS) >= _CAPABILITY_SETS_MAX:
            _CAPABILITY_SETS.clear()
        shared = _CAPABILITY_SETS[fresh] = fresh
    return shared


class ImapClient:
    """An IMAP session. Make one with :meth:`connect`; use ``async with`` to log out on exit."""

    def __init__(
        self,
        endpoint: ImapEndpoint,
        channel: ByteChannel,
        *,
        connect_timeout: float,
        command_timeout: float,
        limits: ImapLimits | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._channel = channel
        self.limits = limits or ImapLimits()
        self._parser = self._new_parser()
        self._cmd: _Command | None = None
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.capabilities: frozenset[str] = frozenset()
        self.enabled: frozenset[str] = frozenset()
        self.tls_active = endpoint.security == "tls"
        self.authenticated = False
        self.selected: SelectedMailbox | None = None
        self.greeting: StatusResponse | None = None
        # Responses the server volunteered, with their sizes: bounded by count and by bytes.
        # Made on the first one (an empty deque is 760 bytes, on every idle connection).
        self._unsolicited: deque[tuple[Response, int]] | None = None
        self._unsolicited_bytes = 0
        self._last_size = 0  # bytes of the response last returned by _next_response
        self._size_mark = 0
        self._tag_counter = 0
        self._logging_out = False
        self._closed = False
        self._open_stream: FetchStream | None = None
        self._idle: IdleSession | None = None
        self._username: str | None = None
        # Why the connection was dropped, for the error every later call raises.
        self._closed_reason: str | None = None
        # The task whose command, IDLE session or unfinished UID FETCH holds the connection.
        self._owner: asyncio.Task[object] | None = None
        self._owner_what = ""
        # True while a task waits for bytes: there is never a second waiting reader.
        self._reading = False

    def __repr__(self) -> str:
        who = f" user={self._username!r}" if self._username else ""
        return f"<ImapClient {self.endpoint}{who}>"

    def peer_certificate(self) -> bytes | None:
        """The certificate (DER) the server presented, once TLS is active; else None."""
        transport = self._channel.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        if sslobj is None:
            return None
        der = sslobj.getpeercert(binary_form=True)
        return der if isinstance(der, bytes) else None

    def _new_parser(self) -> ResponseParser:
        limits = self.limits
        return ResponseParser(
            max_literal=limits.max_literal,
            max_message_literal=limits.max_message_bytes,
            max_response=limits.max_command_bytes,
            max_sequence_set=limits.max_search_results,
        )

    # -- connecting ------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        endpoint: ImapEndpoint,
        *,
        connect_timeout: float = 20.0,
        command_timeout: float = 120.0,
        limits: ImapLimits | None = None,
    ) -> ImapClient:
        """Connect, read the greeting, do STARTTLS when asked, and learn the capabilities.

        ``connect_timeout`` bounds each wait of the handshake on its own: TCP connect (with the
        TLS handshake for implicit TLS), the greeting, CAPABILITY, STARTTLS and its handshake.

        Raises HostNotFound, ConnectionRefused, ImapTimeout (GreetingTimeout when the TCP
        connection stands but no greeting comes: a TLS-only port spoken to in plaintext),
        TlsError/CertificateNotTrusted, ConnectionLost (a ``BYE`` greeting), CapabilityError (no
        IMAP4rev1; no STARTTLS, or a ``PREAUTH`` greeting, when ``security="starttls"``),
        ConfigError (``security="plain"`` without ``allow_plaintext``).
        """
        if endpoint.security == "plain" and not endpoint.allow_plaintext:
            raise ConfigError(
                f"{endpoint.host}:{endpoint.port}: plaintext IMAP is refused; use tls or "
                "starttls, or allow plaintext explicitly"
            )
        try:
            channel = await open_channel(endpoint, timeout=connect_timeout)
        except TlsError as exc:
            if isinstance(exc, CertificateNotTrusted) or endpoint.security != "tls":
                raise
            # A plaintext port answers a ClientHello with its greeting: the handshake fails at
            # once. Named here, so that the engine stops retrying what only a settings change
            # can fix.
            probe = min(connect_timeout, _PROBE_SECONDS)
            if await probe_plain_greeting(endpoint.host, endpoint.port, timeout=probe):
                raise SecurityMismatch(
                    f"{endpoint.host}:{endpoint.port} speaks plaintext IMAP, not implicit TLS: "
                    "set the security to starttls (or use the implicit TLS port, usually 993).",
                    expected="plain",
                ) from exc
            raise
        client = cls(
            endpoint,
            channel,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            limits=limits,
        )
        try:
            await client._handshake()
        except BaseException:
            client._abort()
            # After STARTTLS the live channel is the TLS one; the plain one never hears of
            # the close, and waiting on it would only run into its timeout.
            await client._channel.wait_closed(1.0)
            raise
        return client

    async def _read_greeting(self) -> Response:
        """The greeting, within ``connect_timeout`` (overall, not per silence). A port for
        implicit TLS says nothing until it sees a ClientHello: after ``greeting_probe_after``
        seconds of silence a second connection asks whether it completes a TLS handshake, and
        if so :class:`SecurityMismatch` names the problem at once."""
        total = self.connect_timeout
        first = min(self.limits.greeting_probe_after, total)
        self._begin_command("the greeting", total)
        try:
            try:
                return await self._next_response(first)
            except ImapTimeout:
                if first >= total or self._closed:
                    raise
            if self.endpoint.security == "tls":
                return await self._next_response(total - first)
            host, port = self.endpoint.host, self.endpoint.port
            probe = asyncio.ensure_future(
                probe_tls(host, port, timeout=min(total - first, _PROBE_SECONDS))
            )
            read = asyncio.ensure_future(self._next_response(total - first))
            try:
                await asyncio.wait({probe, read}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done() and probe.result():
                    raise SecurityMismatch(
                        f"{host}:{port} expects implicit TLS, not {self.endpoint.security}: set "
                        "the security to tls (or use the STARTTLS port, usually 143).",
                        expected="tls",
                    )
                return await read
            finally:
                for task in (probe, read):
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(BaseException):
                            await task
        finally:
            self._end_command()

    async def _handshake(self) -> None:
        try:
            greeting = await self._read_greeting()
        except ImapTimeout as exc:
            raise GreetingTimeout(
                f"{self.endpoint.host}:{self.endpoint.port} accepted the connection but sent no "
                f"IMAP greeting in {self.connect_timeout:g} s"
            ) from exc
        if not isinstance(greeting, StatusResponse):
            raise ImapProtocolError(f"{self.endpoint}: expected a greeting, got {greeting!r}")
        self.greeting = greeting
        if greeting.status == "BYE":
            self._abort()
            raise ConnectionLost(f"{self.endpoint} refused the session: {greeting.text}")
        if greeting.status == "PREAUTH":
            if self.endpoint.security == "starttls":
                # RFC 3501 §6.2.1 allows STARTTLS only before authentication: a cleartext
                # PREAUTH would skip TLS (the STARTTLS-stripping attack of CVE-2020-12398).
                raise CapabilityError(
                    f"{self.endpoint.host}:{self.endpoint.port} greeted with PREAUTH in "
                    "cleartext, so STARTTLS is not possible",
                    capability="STARTTLS",
                )
            self.authenticated = True
        if not self._take_capability_code(greeting.code):
            await self.capability(timeout=self.connect_timeout)
        self._require_imap4rev1()
        if self.endpoint.security == "starttls":
            await self.starttls()

    def _require_imap4rev1(self) -> None:
        if not self.capabilities & {"IMAP4REV1", "IMAP4REV2"}:
            raise CapabilityError("server lacks IMAP4rev1", capability="IMAP4rev1")

    async def starttls(self) -> None:
        """STARTTLS (RFC 3501 §6.2.1), then CAPABILITY again (the old list is void, §6.2.1)."""
        self._check_ready()
        if self.tls_active:
            return
        if "STARTTLS" not in self.capabilities:
            # Checked before anything else is sent: no credentials ever go out in cleartext.
            raise CapabilityError(
                f"STARTTLS not offered by {self.endpoint.host}:{self.endpoint.port}",
                capability="STARTTLS",
            )
        await self._simple("STARTTLS", timeout=self.connect_timeout)
        if self._parser_has_pending():
            # Bytes after the OK and before the handshake would be a plaintext injection
            # (CVE-2011-0411 class); refuse them.
            raise StartTlsInjection("server sent data after STARTTLS before the TLS handshake")
        self._channel = await start_tls(self._channel, self.endpoint, timeout=self.connect_timeout)
        # Whatever plaintext the parser might still hold is dropped with it.
        self._parser = self._new_parser()
        self.tls_active = True
        self.capabilities = frozenset()
        await self.capability(timeout=self.connect_timeout)
        self._require_imap4rev1()

    def _parser_has_pending(self) -> bool:
        # Bytes still in the socket buffer, or a whole response the parser already holds
        # (sent in the same packet as the OK). A partial line in the parser is dropped with it.
        return self._channel.buffered() or self._parser.next_response() is not None

    # -- the response pump -----------------------------------------------------------------------

    def _next_tag(self) -> str:
        self._tag_counter += 1
        return f"C{self._tag_counter}"

    async def _next_response(self, timeout: float | None = -1.0) -> Response:
        """The next parsed response, reading more bytes as needed.

        ``timeout`` bounds each wait for bytes: negative means ``command_timeout``, None forever.
        """
        parser = self._parser
        cmd = self._cmd
        while True:
            try:
                response = parser.next_response()
            except ImapLimitExceeded as exc:
                raise self._limit_error(exc) from exc
            if response is not None:
                self._last_size = parser.response_bytes - self._size_mark
                self._size_mark = parser.response_bytes
                if cmd is not None:
                    self._account(cmd, response)
                if type(response) is StatusResponse:
                    self._on_status(response)
                return response
            if self._closed:
                raise self._closed_error()
            if self._reading:
                raise RuntimeError(f"{self.endpoint}: another task is already reading a reply")
            wait = self.command_timeout if timeout is not None and timeout < 0 else timeout
            if cmd is not None:
                left = self._deadline_left(cmd)
                if left <= 0:
                    raise self._deadline_error(cmd)
                wait = left if wait is None else min(wait, left)
            self._reading = True
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                data = await self._channel.read(wait)
            except ImapTimeout:
                if self._closed:
                    raise self._closed_error() from None
                if cmd is not None:
                    cmd.waited += loop.time() - started
                    if self._deadline_left(cmd) <= 0:
                        raise self._deadline_error(cmd) from None
                raise
            except ImapConnectionError:
                if self._closed:  # closed by us while waiting (close and abort wake the reader)
                    raise self._closed_error() from None
                raise
            finally:
                self._reading = False
            if cmd is not None:
                cmd.waited += loop.time() - started
                cmd.received += len(data)
            parser.feed(data)

    # -- per-command bounds ----------------------------------------------------------------------

    def _begin_command(self, name: str, base: float | None = None, *, stream: bool = False) -> None:
        """Start the accounting of a command in flight (time, bytes, responses)."""
        self._cmd = _Command(
            name, self.command_timeout if base is None else base, stream, self._parser
        )
        self._parser.max_response = self.limits.max_command_bytes

    def _end_command(self) -> None:
        self._cmd = None
        self._parser.max_response = self.limits.max_command_bytes

    def _limit_error(self, exc: ImapLimitExceeded) -> ImapLimitExceeded:
        """The parser's error restated with the command and the whole limit (the parser only
        knows the bytes left)."""
        if exc.setting != "imap_max_command_bytes":
            return exc
        limit = self.limits.max_command_bytes
        what = self._cmd.name if self._cmd is not None else "a response"
        return ImapLimitExceeded(
            f"{self.endpoint}: {what} sent more than {limit} bytes to keep in memory "
            f"({exc.detail})",
            setting=exc.setting,
            limit=limit,
        )

    def _deadline_left(self, cmd: _Command) -> float:
        return cmd.base + cmd.received / self.limits.min_rate - cmd.waited

    def _deadline_error(self, cmd: _Command) -> ImapTimeout:
        return ImapTimeout(
            f"{self.endpoint}: {cmd.name} did not complete in time ({cmd.waited:.0f} s waiting "
            f"for {cmd.received} bytes; the deadline is {cmd.base:g} s plus 1 s per "
            f"{self.limits.min_rate:g} bytes)"
        )

    def _account(self, cmd: _Command, response: Response) -> None:
        """Count a response against the command's limits; ImapLimitExceeded when over."""
        parser = self._parser
        limits = self.limits
        if cmd.stream and type(response) is FetchResponse:
            cmd.used += parser.literal_bytes - cmd.mark_lit
        else:
            cmd.used += parser.response_bytes - cmd.mark_resp
            kind = type(response)
            if kind is ESearchResponse or kind is SearchResponse or kind is VanishedResponse:
                cmd.results += len(
                    response.all  # type: ignore[union-attr]
                    if kind is ESearchResponse
                    else response.numbers  # type: ignore[union-attr]
                    if kind is SearchResponse
                    else response.uids  # type: ignore[union-attr]
                )
                if cmd.results > limits.max_search_results:
                    raise ImapLimitExceeded(
                        f"{self.endpoint}: {cmd.name} returned more than "
                        f"{limits.max_search_results} UIDs",
                        setting="imap_max_search_results",
                        limit=limits.max_search_results,
                    )
        cmd.mark_resp = parser.response_bytes
        cmd.mark_lit = parser.literal_bytes
        left = limits.max_command_bytes - cmd.used
        if left < 0:
            raise ImapLimitExceeded(
                f"{self.endpoint}: {cmd.name} sent more than {limits.max_command_bytes} bytes",
                setting="imap_max_command_bytes",
                limit=limits.max_command_bytes,
            )
        parser.max_response = left

    def _collect(self, answers: list[Response], response: Response) -> None:
        """Add a response to what the running command returns, within
        ``max_command_responses`` (what goes to the unsolicited queue is bounded there)."""
        limit = self.limits.max_command_responses
        if len(answers) >= limit:
            what = self._cmd.name if self._cmd is not None else "a command"
            raise ImapLimitExceeded(
                f"{self.endpoint}: {what} returned more than {limit} untagged responses",
                setting="imap_max_command_responses",
                limit=limit,
            )
        answers.append(response)

    def _queue(self, response: Response) -> None:
        """Keep a volunteered response for :meth:`drain_unsolicited`: the newest
        ``max_unsolicited``, and no more than ``max_command_bytes`` of them."""
        queue = self._unsolicited
        if queue is None:
            queue = self._unsolicited = deque()
        size = self._last_size
        queue.append((response, size))
        self._unsolicited_bytes += size
        limits = self.limits
        while len(queue) > limits.max_unsolicited or (
            self._unsolicited_bytes > limits.max_command_bytes and len(queue) > 1
        ):
            _, dropped = queue.popleft()
            self._unsolicited_bytes -= dropped

    def _on_status(self, response: StatusResponse) -> None:
        if response.status == "BYE" and not self._logging_out and self.greeting is not None:
            self._abort(f"BYE {response.text}".strip())
            raise ConnectionLost(f"{self.endpoint} closed the session: BYE {response.text}".strip())
        if response.code is not None and response.code.name == "ALERT":
            # RFC 3501 §7.1: ALERT text must be shown to the user; never swallow it.
            self._queue(response)

    def _take_capability_code(self, code: ResponseCode | None) -> bool:
        if code is not None and code.name == "CAPABILITY" and code.value:
            self.capabilities = _shared_capabilities(str(c).upper() for c in code.value)
            return True
        return False

    def _keep(self, response: Response) -> None:
        """Route a response the running command did not ask for.

        A ``+`` nobody asked for is a protocol error: the caller (a command in flight) aborts.
        """
        if type(response) is ContinuationRequest:
            raise ImapProtocolError(f"{self.endpoint}: unexpected continuation request")
        if type(response) is CapabilityResponse:
            self.capabilities = _shared_capabilities(response.capabilities)
        elif type(response) is StatusResponse:
            if response.code is not None and response.code.name == "ALERT":
                return  # already queued by _on_status
            self._queue(response)
        else:
            self._queue(response)

    def _closed_error(self) -> ConnectionLost:
        why = f" ({self._closed_reason})" if self._closed_reason else ""
        return ConnectionLost(f"{self.endpoint}: the connection is closed{why}")

    def _check_ready(self) -> None:
        """Raise ConnectionLost when closed, RuntimeError while another task holds the session.

        Called first by every public command, before any local check and before anything is
        sent.
        """
        if self._closed:
            raise self._closed_error()
        owner = self._owner
        if owner is not None and owner is not asyncio.current_task() and not owner.done():
            raise RuntimeError(
                f"{self.endpoint}: another task is running {self._owner_what} on this "
                "connection; an ImapClient runs one command at a time (use one per task)"
            )

    def _claim(self, what: str) -> None:
        """Make the current task the holder of the session (after :meth:`_check_ready`)."""
        self._check_ready()
        self._owner = asyncio.current_task()
        self._owner_what = what

    def _release(self) -> None:
        self._owner = None

    async def _prepare(self) -> None:
        self._check_ready()
        if self._idle is not None:
            raise RuntimeError("the client is in IDLE; leave the idle() block first")
        if self._open_stream is not None:
            await self._open_stream.aclose()

    def _encode(self, tag: str, name: str, args: Sequence[Arg]) -> EncodedCommand:
        """Encode before anything is sent: a refused argument (ValueError) leaves the session
        as it was."""
        return encode_command(
            tag,
            name,
            *args,
            literal_plus="LITERAL+" in self.capabilities,
            utf8="UTF8=ACCEPT" in self.enabled,
        )

    async def _send(self, encoded: EncodedCommand, name: str, *, timeout: float) -> None:
        """Write the command; wait for ``+`` before each further literal chunk (RFC 3501 §7.5).

        The command is in flight from the first write: the caller aborts the connection when
        this raises anything but ImapCommandError (see :meth:`_abort_in_flight`).
        """
        chunks = encoded.chunks
        self._channel.write(chunks[0])
        for chunk in chunks[1:]:
            while True:
                response = await self._next_response(timeout)
                if isinstance(response, ContinuationRequest):
                    break
                if isinstance(response, TaggedResponse):
                    # A tagged NO/BAD instead of "+" refuses the command; the literal is never
                    # sent and the server waits for none (RFC 3501 §7.5).
                    self._check_tagged(name, encoded.tag, response)
                    raise ImapProtocolError(f"{name}: completed before its literal was sent")
                self._keep(response)
            self._channel.write(chunk)

    def _abort_in_flight(self, name: str, exc: BaseException) -> None:
        """Drop the connection: ``name`` was sent and its completion was not read.

        Neither side knows where the other is: the rest of the reply would be read as the next
        command's, and a server still waiting for an announced literal would take the next
        command's bytes as literal data.
        """
        if not self._closed:
            what = "timed out" if isinstance(exc, ImapTimeout) else f"ended by {type(exc).__name__}"
            self._abort(f"{name} {what} before its completion")

    def _check_tagged(self, name: str, tag: str, response: TaggedResponse) -> TaggedResponse:
        if response.tag != tag:
            raise ImapProtocolError(f"{name}: unexpected tag {response.tag!r} (waiting for {tag})")
        if response.status != "OK":
            raise ImapCommandError(name, response.status, response.text, _code_name(response.code))
        self._take_capability_code(response.code)
        return response

    async def _simple(
        self,
        name: str,
        *args: Arg,
        accept: tuple[type, ...] = (),
        timeout: float | None = None,
    ) -> tuple[TaggedResponse, list[Response]]:
        """Run one command to completion.

        Untagged responses of the types in ``accept`` are returned, the rest go to the
        unsolicited queue. Tagged NO/BAD raise ImapCommandError.
        """
        await self._prepare()
        wait = self.command_timeout if timeout is None else timeout
        tag = self._next_tag()
        encoded = self._encode(tag, name, args)
        answers: list[Response] = []
        self._claim(name)
        self._begin_command(name, wait)
        try:
            await self._send(encoded, name, timeout=wait)
            while True:
                response = await self._next_response(wait)
                kind = type(response)
                if kind is TaggedResponse:
                    assert isinstance(response, TaggedResponse)
                    return self._check_tagged(name, tag, response), answers
                if kind in accept:
                    self._collect(answers, response)
                elif kind is ContinuationRequest:
                    raise ImapProtocolError(f"{name}: unexpected continuation request")
                else:
                    self._keep(response)
        except ImapCommandError:
            raise  # the tagged NO/BAD: the command is complete, the session intact
        except BaseException as exc:
            self._abort_in_flight(name, exc)
            raise
        finally:
            self._end_command()
            self._release()

    # -- unsolicited -----------------------------------------------------------------------------

    def drain_unsolicited(self) -> list[Response]:
        """Everything the server volunteered since the last drain, in arrival order (at most
        ``limits.max_unsolicited``: the oldest are dropped first)."""
        queue, self._unsolicited = self._unsolicited, None
        self._unsolicited_bytes = 0
        return [] if queue is None else [response for response, _ in queue]

    # -- any state -------------------------------------------------------------------------------

    async def capability(self, *, timeout: float | None = None) -> frozenset[str]:
        """CAPABILITY (RFC 3501 §6.1.1); upper-cased names."""
        self._check_ready()
        _, answers = await self._simple("CAPABILITY", accept=(CapabilityResponse,), timeout=timeout)
        for response in answers:
            assert isinstance(response, CapabilityResponse)
            self.capabilities = _shared_capabilities(c.upper() for c in response.capabilities)
        return self.capabilities

    async def noop(self) -> None:
        """NOOP (RFC 3501 §6.1.2): lets pending updates arrive; drain them afterwards."""
        self._check_ready()
        await self._simple("NOOP")

    async def id(self, **fields: str) -> dict[str, str | None] | None:
        """ID (RFC 2971): send our fields (default name=correspond), return the server's.

        None when the server does not offer ID or sends no ID response; ``{}`` for ``ID NIL``.
        """
        self._check_ready()
        if "ID" not in self.capabilities:
            return None
        ours = fields or {"name": "correspond"}
        params: list[Arg] = []
        for key, value in ours.items():
            params.extend((key, value))
        _, answers = await self._simple("ID", params, accept=(IdResponse,))
        for response in answers:
            assert isinstance(response, IdResponse)
            return dict(response.fields) if response.fields is not None else {}
        return None

    async def logout(self) -> None:
        """LOGOUT (RFC 3501 §6.1.3) and close; never raises for a connection already gone.

        With a UID FETCH not read to its end the connection is closed without LOGOUT: the rest
        of the reply is not waited for. RuntimeError while another task holds the session.
        """
        if self._closed:
            return
        self._check_ready()
        self._logging_out = True
        try:
            if self._open_stream is not None:
                # Reading on would take up to command_timeout per silence, and download the
                # rest; the stream, iterated on, raises ConnectionLost.
                self._open_stream = None
                self._release()
                self._abort("logged out with a UID FETCH not read to its end")
                return
            if self._idle is not None:
                await self._idle.done()
            await self._simple("LOGOUT", timeout=min(self.command_timeout, 10.0))
        except (ImapError, RuntimeError):
            pass
        finally:
            self._close()
            await self._channel.wait_closed(2.0)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._channel.close()

    def _abort(self, reason: str | None = None) -> None:
        if reason is not None and not self._closed:
            self._closed_reason = reason
        self._closed = True
        self._channel.abort()  # wakes a task waiting for bytes: it raises ConnectionLost

    async def aclose(self) -> None:
        """Drop the connection without LOGOUT (after errors) and wait until it is closed."""
        self._abort()
        await self._channel.wait_closed(1.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After a refused command the session is still sound: say goodbye properly.
        if exc is None or isinstance(exc, _SESSION_INTACT):
            await self.logout()
        else:
            self._abort()
            await self._channel.wait_closed(1.0)

    # -- authentication --------------------------------------------------------------------------

    def _check_may_send_credentials(self) -> None:
        if not self.tls_active and not self.endpoint.allow_plaintext:
            raise ConfigError(
                f"{self.endpoint}: refusing to send credentials without TLS "
                "(allow plaintext explicitly to override)"
            )

    async def login(self, username: str, password: str) -> None:
        """Authenticate: AUTHENTICATE PLAIN (RFC 4616) when offered, else LOGIN (§6.2.3).

        Honours LOGINDISABLED (RFC 3501 §6.2.3). Refreshes capabilities afterwards (from the
        tagged OK's CAPABILITY code when present, else by asking). A refusal raises
        AuthenticationFailed carrying the server's words in ``server_text``.
        """
        self._check_ready()
        self._check_may_send_credentials()
        if "AUTH=PLAIN" in self.capabilities:
            initial = b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8")
            await self.authenticate("PLAIN", initial, username=username)
            return
        if "LOGINDISABLED" in self.capabilities:
            # RFC 3501 §6.2.3: the server refuses LOGIN on this connection (usually: not TLS).
            raise CapabilityError(
                "server disables LOGIN (LOGINDISABLED) and offers no AUTH=PLAIN",
                capability="LOGIN",
            )
        try:
            tagged, _ = await self._simple("LOGIN", username, password, accept=())
        except ImapCommandError as exc:
            self._raise_auth_failed(exc)
        await self._after_login(tagged, username)

    @staticmethod
    def _raise_auth_failed(exc: ImapCommandError) -> None:
        if exc.status == "NO" or exc.code in ("AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED"):
            raise AuthenticationFailed(
                f"authentication failed: {exc.text}", server_text=exc.text
            ) from None
        raise exc

    async def _after_login(self, tagged: TaggedResponse, username: str) -> None:
        self.authenticated = True
        self._username = username
        # The list usually grows after login (RFC 3501 §6.2.3); ask if the OK did not carry it.
        if not self._take_capability_code(tagged.code):
            await self.capability()

    async def authenticate(
        self,
        mechanism: str,
        initial_response: bytes | SaslResponder,
        *,
        username: str | None = None,
    ) -> None:
        """AUTHENTICATE (RFC 3501 §6.2.2) with any SASL mechanism (PLAIN, XOAUTH2, ...).

        ``initial_response`` is either the client's first message (sent with SASL-IR, RFC 4959,
        when offered, else after the first ``+``; later challenges get an empty answer, which
        is what XOAUTH2 expects after an error) or a callable mapping each decoded challenge to
        the answer.
        """
        self._check_ready()
        self._check_may_send_credentials()
        await self._prepare()
        mech = mechanism.upper()
        if f"AUTH={mech}" not in self.capabilities:
            raise CapabilityError(f"server does not offer AUTH={mech}", capability=f"AUTH={mech}")
        responder = initial_response if callable(initial_response) else None
        first = initial_response if isinstance(initial_response, bytes) else None
        tag = self._next_tag()
        args: list[Arg] = [Raw(mech.encode("ascii"))]
        if first is not None and "SASL-IR" in self.capabilities:
            # RFC 4959: an empty initial response is sent as "=".
            args.append(Raw(base64.b64encode(first) if first else b"="))
            first = None
        encoded = self._encode(tag, "AUTHENTICATE", args)
        refused_by_us: Exception | None = None
        self._claim("AUTHENTICATE")
        self._begin_command("AUTHENTICATE")
        try:
            await self._send(encoded, "AUTHENTICATE", timeout=self.command_timeout)
            while True:
                response = await self._next_response()
                if isinstance(response, ContinuationRequest):
                    if responder is not None:
                        try:
                            challenge = base64.b64decode(response.text.strip() or b"")
                        except ValueError:
                            challenge = response.text.encode("utf-8", "replace")
                        try:
                            answer = responder(challenge)
                        except Exception as exc:
                            # RFC 3501 §6.2.2: "*" cancels; the server ends the exchange with a
                            # tagged BAD, read here so that the session stays usable. The
                            # responder's error is raised once the command is complete.
                            self._channel.write(b"*\r\n")
                            refused_by_us = exc
                            await self._end_cancelled_authenticate(tag)
                            break
                    elif first is not None:
                        answer, first = first, None
                    else:
                        answer = b""
                    self._channel.write(base64.b64encode(answer) + b"\r\n")
                    continue
                if isinstance(response, TaggedResponse):
                    tagged = self._check_tagged("AUTHENTICATE", tag, response)
                    break
                self._keep(response)
        except ImapCommandError as exc:
            self._raise_auth_failed(exc)
            raise  # unreachable: _raise_auth_failed always raises
        except BaseException as exc:
            self._abort_in_flight("AUTHENTICATE", exc)
            raise
        finally:
            self._end_command()
            self._release()
        if refused_by_us is not None:
            raise refused_by_us
        await self._after_login(tagged, username or "")

    async def _end_cancelled_authenticate(self, tag: str) -> None:
        """Read up to the completion of an AUTHENTICATE the client cancelled with ``*``."""
        while True:
            response = await self._next_response()
            if isinstance(response, TaggedResponse):
                if response.tag != tag or response.status == "OK":
                    # Not the refusal a cancel earns: whether we are logged in is unknown.
                    self._abort("AUTHENTICATE did not end as cancelled")
                return
            if isinstance(response, ContinuationRequest):
                self._abort("AUTHENTICATE went on after it was cancelled")
                return
            self._keep(response)

    # -- authenticated state ---------------------------------------------------------------------

    def _mailbox(self, mailbox: str | bytes) -> bytes:
        """Wire form of a mailbox name: raw bytes pass through byte-exact (from LIST)."""
        if isinstance(mailbox, bytes):
            return mailbox
        if "UTF8=ACCEPT" in self.enabled:
            return mailbox.encode("utf-8")
        return encode_mutf7(mailbox)

    async def enable(self, *capabilities: str) -> frozenset[str]:
        """ENABLE (RFC 5161) those of ``capabilities`` the server offers; returns what is on.

        With no arguments: CONDSTORE, QRESYNC and UTF8=ACCEPT where offered.
        """
        self._check_ready()
        if "ENABLE" not in self.capabilities:
            return self.enabled
        wanted = capabilities or ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT")
        offered = [c.upper() for c in wanted if c.upper() in self.capabilities]
        offered = [c for c in offered if c not in self.enabled]
        if not offered:
            return self.enabled
        _, answers = await self._simple(
            "ENABLE", *[Raw(c.encode("ascii")) for c in offered], accept=(EnabledResponse,)
        )
        now = set(self.enabled)
        for response in answers:
            assert isinstance(response, EnabledResponse)
            now.update(c.upper() for c in response.capabilities)
        if "QRESYNC" in now:
            now.add("CONDSTORE")  # RFC 7162 §3.2.3: enabling QRESYNC implies CONDSTORE
        self.enabled = frozenset(now)
        return self.enabled

    async def list(
        self, pattern: str | bytes = "*", *, reference: str = "", special_use: bool = True
    ) -> list[ListResponse]:
        """LIST (RFC 3501 §6.3.8); with SPECIAL-USE roles (RFC 6154 §2) where offered.

        Uses ``LIST "" "*" RETURN (SPECIAL-USE)`` when both SPECIAL-USE and LIST-EXTENDED
        (RFC 5258) are advertised, else plain LIST (servers with SPECIAL-USE still put the role
        flags in plain LIST answers). Duplicate names are merged, keeping every flag seen.
        """
        self._check_ready()
        args: list[Arg] = [self._mailbox(reference), self._mailbox(pattern)]
        if special_use and {"SPECIAL-USE", "LIST-EXTENDED"} <= self.capabilities:
            args.append(Raw(b"RETURN (SPECIAL-USE)"))
        _, answers = await self._simple("LIST", *args, accept=(ListResponse,))
        merged: dict[bytes, ListResponse] = {}
        for response in answers:
            assert isinstance(response, ListResponse)
            seen = merged.get(response.name_raw)
            if seen is None:
                merged[response.name_raw] = response
            else:
                flags = seen.flags + tuple(
                    f for f in response.flags if f.lower() not in {g.lower() for g in seen.flags}
                )
                merged[response.name_raw] = ListResponse(
                    flags, seen.delimiter, seen.name_raw, seen.name, seen.kind
                )
        return list(merged.values())

    async def create(self, mailbox: str | bytes, *, special_use: str | None = None) -> bool:
        """CREATE (RFC 3501 §6.3.3); a str name is encoded as modified UTF-7 (§5.1.3).

        ``special_use`` (e.g. ``"\\Archive"``) is asked for with ``(USE (...))`` of RFC 6154 §3
        where the server offers CREATE-SPECIAL-USE, and left out elsewhere (a server without it
        would refuse the whole command). True when it was asked for."""
        self._check_ready()
        args: list[Arg] = [self._mailbox(mailbox)]
        asked = special_use is not None and "CREATE-SPECIAL-USE" in self.capabilities
        if asked:
            assert special_use is not None
            if not special_use.startswith("\\") or not special_use[1:].isalpha():
                raise ValueError(f"not a special-use attribute: {special_use!r}")
            args.append(Raw(f"(USE ({special_use}))".encode("ascii")))
        await self._simple("CREATE", *args)
        return asked

    async def list_folders(self) -> builtins.list[ListResponse]:
        """Every folder, with special-use roles where the server tells them."""
        return await self.list("*")

    async def status(
        self, mailbox: str | bytes, items: Sequence[str] | None = None
    ) -> StatusDataResponse:
        """STATUS (RFC 3501 §6.3.10); default items include HIGHESTMODSEQ under CONDSTORE."""
        self._check_ready()
        if items is None:
            items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"]
            if "CONDSTORE" in self.capabilities:
                items.append("HIGHESTMODSEQ")
        item_list = Raw(("(" + " ".join(i.upper() for i in items) + ")").encode("ascii"))
        _, answers = await self._simple(
            "STATUS", self._mailbox(mailbox), item_list, accept=(StatusDataResponse,)
        )
        for response in answers:
            assert isinstance(response, StatusDataResponse)
            return response
        raise ImapProtocolError("STATUS completed without a STATUS response")

    async def select(
        self,
        mailbox: str | bytes,
        *,
        readonly: bool = False,
        condstore: bool = False,
        qresync: QresyncParams | None = None,
    ) -> SelectedMailbox:
        """SELECT or EXAMINE (RFC 3501 §6.3.1/§6.3.2), optionally with CONDSTORE or QRESYNC.

        ``qresync`` enables QRESYNC first when needed (RFC 7162 §3.2.3); the server's
        ``VANISHED (EARLIER)`` and ``FETCH`` replies land in ``vanished`` / ``changed``.
        """
        self._check_ready()
        if qresync is not None:
            if "QRESYNC" not in self.capabilities:
                raise CapabilityError("server does not offer QRESYNC", capability="QRESYNC")
            if "QRESYNC" not in self.enabled:
                await self.enable("QRESYNC")
        elif condstore and "CONDSTORE" not in self.capabilities:
            raise CapabilityError("server does not offer CONDSTORE", capability="CONDSTORE")
        name_raw = self._mailbox(mailbox)
        args: list[Arg] = [name_raw]
        if qresync is not None:
            inner = f"{qresync.uidvalidity} {qresync.modseq}"
            if qresync.known_uids:
                inner += " " + _uid_set(qresync.known_uids)
            args.append(Raw(f"(QRESYNC ({inner}))".encode("ascii")))
        elif condstore:
            args.append(Raw(b"(CONDSTORE)"))
        self.selected = None
        tagged, answers = await self._simple(
            "EXAMINE" if readonly else "SELECT",
            *args,
            accept=(
                ExistsResponse,
                RecentResponse,
                FlagsResponse,
                StatusResponse,
                VanishedResponse,
                FetchResponse,
            ),
        )
        box = SelectedMailbox(name_raw=name_raw, read_only=readonly)
        vanished: list[int] = []
        for response in answers:
            if isinstance(response, ExistsResponse):
                box.exists = response.count
            elif isinstance(response, RecentResponse):
                box.recent = response.count
            elif isinstance(response, FlagsResponse):
                box.flags = response.flags
            elif isinstance(response, VanishedResponse):
                vanished.extend(response.uids)
            elif isinstance(response, FetchResponse):
                box.changed.append(response)
            elif isinstance(response, StatusResponse) and not self._select_code(box, response.code):
                self._keep(response)
        self._select_code(box, tagged.code)
        box.vanished = tuple(sorted(set(vanished)))
        self.selected = box
        return box

    @staticmethod
    def _select_code(box: SelectedMailbox, code: ResponseCode | None) -> bool:
        if code is None:
            return False
        name = code.name
        value = code.value
        # The parser leaves the value None when it is not a number below 2^63 ([UIDVALIDITY -1]).
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if name == "UIDVALIDITY":
            if number is None:
                # Without a usable UIDVALIDITY no UID of the mailbox can be trusted.
                raise ImapProtocolError(
                    f"SELECT {box.name_raw!r}: the server sent a UIDVALIDITY that is not a "
                    "number (RFC 3501 §2.3.1.1 nz-number)"
                )
            box.uidvalidity = number
        elif name == "UIDNEXT":
            box.uidnext = number  # optional; the sync works out the next UID without it
        elif name == "HIGHESTMODSEQ":
            if number is None:
                box.nomodseq = True  # no usable mod-sequence: as if the server had none
            box.highestmodseq = number
        elif name == "NOMODSEQ":
            box.nomodseq = True
        elif name == "UNSEEN":
            box.unseen = number
        elif name == "PERMANENTFLAGS":
            box.permanentflags = tuple(code.value or ())
        elif name == "READ-ONLY":
            box.read_only = True
        elif name == "READ-WRITE":
            box.read_only = False
        elif name == "CLOSED":
            pass  # RFC 7162 §3.2.11: the previous mailbox was closed
        else:
            return False
        return True

    async def examine(
        self,
        mailbox: str | bytes,
        *,
        condstore: bool = False,
        qresync: QresyncParams | None = None,
    ) -> SelectedMailbox:
        """EXAMINE: SELECT read-only (RFC 3501 §6.3.2)."""
        return await self.select(mailbox, readonly=True, condstore=condstore, qresync=qresync)

    async def append(
        self,
        mailbox: str | bytes,
        message: bytes,
        *,
        flags: Iterable[str] = (),
        date: dt.datetime | None = None,
    ) -> AppendUid | None:
        """APPEND (RFC 3501 §6.3.11), as a LITERAL+ (RFC 7888) when offered.

        Returns the ``[APPENDUID]`` of UIDPLUS (RFC 4315 §3) when the server sends one.
        """
        self._check_ready()
        args: list[Arg] = [self._mailbox(mailbox)]
        flags = tuple(flags)
        if flags:
            args.append(_flag_list(flags))
        if date is not None:
            args.append(_imap_date_time(date))
        args.append(LiteralArg(message))
        tagged, _ = await self._simple("APPEND", *args)
        if tagged.code is not None and tagged.code.name == "APPENDUID":
            value = tagged.code.value
            if isinstance(value, AppendUid):
                return value
        return None

    # -- selected state --------------------------------------------------------------------------

    def _require_selected(self, what: str) -> SelectedMailbox:
        if self.selected is None:
            raise RuntimeError(f"{what} needs a selected mailbox")
        return self.selected

    async def uid_search(
        self, criteria: str | Sequence[Arg] = "ALL", *, charset: str | None = None
    ) -> builtins.list[int]:
        """UID SEARCH (RFC 3501 §6.4.4); ``ESEARCH RETURN (ALL)`` (RFC 4731) when offered.

        A str ``criteria`` is sent as written (the caller quotes its strings); a sequence is
        encoded argument by argument. Returns UIDs ascending.
        """
        self._check_ready()
        self._require_selected("UID SEARCH")
        args: list[Arg] = []
        esearch = "ESEARCH" in self.capabilities
        if esearch:
            args.append(Raw(b"RETURN (ALL)"))
        if charset:
            args.extend((Raw(b"CHARSET"), Raw(charset.encode("ascii"))))
        if isinstance(criteria, str):
            args.append(Raw(criteria.encode("utf-8")))
        else:
            args.extend(criteria)
        _, answers = await self._simple(
            "UID SEARCH", *args, accept=(ESearchResponse, SearchResponse)
        )
        uids: set[int] = set()
        for response in answers:
            if isinstance(response, ESearchResponse):
                uids.update(response.all)
            elif isinstance(response, SearchResponse):
                uids.update(response.numbers)
        return sorted(uids)

    def uid_fetch(
        self,
        uids: UidSet,
        items: str | Sequence[str],
        *,
        changedsince: int | None = None,
        vanished: bool = False,
    ) -> FetchStream:
        """UID FETCH (RFC 3501 §6.4.8) as an async iterator of FetchResponse, as they arrive.

        ``changedsince`` adds the CONDSTORE modifier (RFC 7162 §3.1.4); ``vanished`` the QRESYNC
        one (§3.2.6), whose ``VANISHED (EARLIER)`` UIDs collect in ``stream.vanished``.
        ``items``: a str is sent as written (e.g. ``"(UID FLAGS BODY.PEEK[])"``), a sequence is
        joined into a parenthesised list.
        """
        self._check_ready()
        self._require_selected("UID FETCH")
        item_arg = items if isinstance(items, str) else "(" + " ".join(items) + ")"
        args: list[Arg] = [Raw(_uid_set(uids).encode("ascii")), Raw(item_arg.encode("ascii"))]
        if changedsince is not None or vanished:
            if vanished and "QRESYNC" not in self.enabled:
                raise CapabilityError("VANISHED needs QRESYNC enabled", capability="QRESYNC")
            if changedsince is None:
                raise ValueError("VANISHED needs CHANGEDSINCE (RFC 7162 §3.2.6)")
            mod = f"(CHANGEDSINCE {changedsince}{' VANISHED' if vanished else ''})"
            args.append(Raw(mod.encode("ascii")))
        return FetchStream(self, args)

    async def uid_fetch_list(
        self,
        uids: UidSet,
        items: str | Sequence[str],
        *,
        changedsince: int | None = None,
    ) -> builtins.list[FetchResponse]:
        """:meth:`uid_fetch`, collected into a list."""
        self._check_ready()
        return [r async for r in self.uid_fetch(uids, items, changedsince=changedsince)]

    async def uid_store(
        self,
        uids: UidSet,
        action: StoreAction,
        flags: Iterable[str],
        *,
        unchangedsince: int | None = None,
    ) -> StoreResult:
        """UID STORE (RFC 3501 §6.4.6), optionally ``UNCHANGEDSINCE`` (RFC 7162 §3.1.3)."""
        self._check_ready()
        self._require_selected("UID STORE")
        args: list[Arg] = [Raw(_uid_set(uids).encode("ascii"))]
        if unchangedsince is not None:
            args.append(Raw(f"(UNCHANGEDSINCE {unchangedsince})".encode("ascii")))
        args.extend((Raw(action.upper().encode("ascii")), _flag_list(flags)))
        tagged, answers = await self._simple("UID STORE", *args, accept=(FetchResponse,))
        modified: tuple[int, ...] = ()
        if tagged.code is not None and tagged.code.name == "MODIFIED":
            modified = tuple(
                parse_sequence_set(str(tagged.code.value), limit=self.limits.max_search_results)
            )
        return StoreResult(tuple(a for a in answers if isinstance(a, FetchResponse)), modified)

    @staticmethod
    def _copyuid(*codes: ResponseCode | None) -> CopyUid | None:
        for code in codes:
            if code is not None and code.name == "COPYUID" and isinstance(code.value, CopyUid):
                return code.value
        return None

    async def uid_copy(self, uids: UidSet, mailbox: str | bytes) -> CopyUid | None:
        """UID COPY (RFC 3501 §6.4.7); the ``[COPYUID]`` of UIDPLUS (RFC 4315) when sent."""
        self._check_ready()
        self._require_selected("UID COPY")
        tagged, _ = await self._simple(
            "UID COPY", Raw(_uid_set(uids).encode("ascii")), self._mailbox(mailbox)
        )
        return self._copyuid(tagged.code)

    async def uid_move(
        self, uids: UidSet, mailbox: str | bytes, *, expunge_without_uidplus: bool = False
    ) -> CopyUid | None:
        """Move messages: UID MOVE (RFC 6851) when offered, else COPY + \\Deleted + UID EXPUNGE.

        Without MOVE the fallback needs UIDPLUS's UID EXPUNGE (RFC 4315 §2.1) to remove only
        these messages. Without UIDPLUS too, only a plain EXPUNGE is left, which removes *every*
        ``\\Deleted`` message of the mailbox. So it is checked first (``UID SEARCH DELETED NOT
        UID set``) that no other message is flagged ``\\Deleted``; when one is, CapabilityError
        is raised before anything changes, unless ``expunge_without_uidplus`` accepts expunging
        them too. (Another session can still flag a message between that check and the
        EXPUNGE: a window RFC 4315 exists to close.)
        The EXPUNGE/VANISHED responses go to the unsolicited queue (sequence numbers shift).
        """
        self._check_ready()
        self._require_selected("UID MOVE")
        uid_text = _uid_set(uids)
        if "MOVE" in self.capabilities:
            tagged, answers = await self._simple(
                "UID MOVE",
                Raw(uid_text.encode("ascii")),
                self._mailbox(mailbox),
                accept=(StatusResponse,),
            )
            # RFC 6851 §4.3: COPYUID comes in an untagged OK before the expunges.
            codes = [tagged.code]
            for response in answers:
                assert isinstance(response, StatusResponse)
                if response.code is not None and response.code.name == "COPYUID":
                    codes.insert(0, response.code)
                else:
                    self._keep(response)
            return self._copyuid(*codes)
        uidplus = "UIDPLUS" in self.capabilities
        if not uidplus and not expunge_without_uidplus:
            others = await self.uid_search(f"DELETED NOT UID {uid_text}")
            if others:
                raise CapabilityError(
                    "the server offers neither MOVE nor UIDPLUS, and other messages "
                    f"(UIDs {format_sequence_set(others)}) are flagged \\Deleted: the EXPUNGE "
                    "that completes a move would remove them too",
                    capability="UIDPLUS",
                )
        copied = await self.uid_copy(uid_text, mailbox)
        await self.uid_store(uid_text, "+FLAGS.SILENT", ["\\Deleted"])
        if uidplus:
            await self.uid_expunge(uid_text)
        else:
            await self._simple("EXPUNGE")
        return copied

    async def uid_expunge(self, uids: UidSet) -> None:
        """UID EXPUNGE (RFC 4315 §2.1): remove only these ``\\Deleted`` messages."""
        self._check_ready()
        self._require_selected("UID EXPUNGE")
        if "UIDPLUS" not in self.capabilities:
            raise CapabilityError(
                "server does not offer UIDPLUS (UID EXPUNGE)", capability="UIDPLUS"
            )
        await self._simple("UID EXPUNGE", Raw(_uid_set(uids).encode("ascii")))

    async def expunge(self) -> None:
        """EXPUNGE (RFC 3501 §6.4.3): removes every ``\\Deleted`` message of the mailbox."""
        self._check_ready()
        self._require_selected("EXPUNGE")
        await self._simple("EXPUNGE")

    async def unselect(self) -> None:
        """UNSELECT (RFC 3691) when offered, else CLOSE (which also expunges, RFC 3501 §6.4.2)."""
        self._check_ready()
        await self._simple("UNSELECT" if "UNSELECT" in self.capabilities else "CLOSE")
        self.selected = None

    def idle(self, *, renew_after: float = IDLE_RENEW_SECONDS) -> IdleSession:
        """IDLE (RFC 2177) as ``async with client.idle() as session: ...``.

        Inside, ``session.next(timeout)`` / ``async for response in session`` yield untagged
        responses as they come; leaving the block sends DONE and waits for the tagged OK.
        Servers may drop an IDLE after 30 minutes of inactivity (RFC 2177 §3), so no wait
        inside goes past ``renew_after`` (default 29 minutes): ``async for`` ends then, and
        the caller issues IDLE again.
        """
        self._check_ready()
        if "IDLE" not in self.capabilities:
            raise CapabilityError("server does not offer IDLE", capability="IDLE")
        return IdleSession(self, renew_after)


class FetchStream:
    """The FETCH responses of one UID FETCH, as they arrive (see :meth:`ImapClient.uid_fetch`).

    Iterate it with ``async for``. If iteration stops early, the rest of the reply is read and
    dropped before the same task's next command (or at ``aclose``); ``logout`` closes the
    connection instead. Until then, other tasks' commands are refused. A timeout, error or
    cancellation while a response is awaited drops the connection (see the module docstring).
    """

    def __init__(self, client: ImapClient, args: list[Arg]) -> None:
        self._client = client
        self._args = args
        self._tag: str | None = None
        self._finished = False
        self._command: _Command | None = None
        self.vanished: list[int] = []
        self.tagged: TaggedResponse | None = None

    def __aiter__(self) -> AsyncIterator[FetchResponse]:
        return self

    async def __anext__(self) -> FetchResponse:
        if self._finished:
            raise StopAsyncIteration
        client = self._client
        if self._tag is None:
            await client._prepare()
            tag = client._next_tag()
            encoded = client._encode(tag, "UID FETCH", self._args)
            client._claim("UID FETCH")
            self._tag = tag
            client._open_stream = self
            client._begin_command("UID FETCH", stream=True)
            self._command = client._cmd
        else:
            encoded = None
            if client._closed:
                self._finish()
                raise client._closed_error()
            if client._owner is not asyncio.current_task():
                client._claim("UID FETCH")  # refused while another live task holds it
            client._cmd = self._command  # the caller may have run no command in between
        try:
            if encoded is not None:
                await client._send(encoded, "UID FETCH", timeout=client.command_timeout)
            while True:
                response = await client._next_response()
                kind = type(response)
                if kind is FetchResponse:
                    return response  # type: ignore[return-value]
                if kind is TaggedResponse:
                    assert isinstance(response, TaggedResponse)
                    self._finish()
                    self.tagged = client._check_tagged("UID FETCH", self._tag or "", response)
                    raise StopAsyncIteration
                if kind is VanishedResponse and response.earlier:  # type: ignore[union-attr]
                    self.vanished.extend(response.uids)  # type: ignore[union-attr]
                else:
                    client._keep(response)
        except StopAsyncIteration:
            raise
        except ImapCommandError:
            self._finish()  # the tagged NO/BAD (also one refusing a literal): complete
            raise
        except BaseException as exc:
            self._finish()
            client._abort_in_flight("UID FETCH", exc)
            raise

    def _finish(self) -> None:
        self._finished = True
        client = self._client
        if client._open_stream is self:
            client._open_stream = None
            client._end_command()
            client._release()

    async def aclose(self) -> None:
        """Read and drop the rest of the reply (so the connection can take the next command)."""
        if self._finished or self._tag is None:
            self._finish()
            return
        async for _ in self:
            pass

    async def __aenter__(self) -> FetchStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def release_clients(clients: Iterable[ImapClient], *, logout: bool) -> None:
    """Say goodbye to every client (LOGOUT when ``logout``, else a plain close), and make
    sure each socket is let go even when a cancel arrives half-way: the ones not yet closed
    are aborted, so a cancelled shutdown never leaves a connection behind."""
    pending = list(clients)
    try:
        for client in pending:
            if logout and not client._closed:
                with contextlib.suppress(CorrespondError):
                    await client.logout()
            else:
                await client.aclose()
    finally:
        for client in pending:
            if not client._channel.closed:
                client._abort()


class IdleSession:
    """One IDLE command (RFC 2177): yields untagged responses until DONE.

    Every wait is bounded: entering waits ``command_timeout`` for the ``+``, each
    :meth:`next` at most its ``timeout``, and nothing waits past ``renew_after`` seconds from
    the start (``async for`` then ends), so the caller re-issues IDLE before the server's
    30-minute cut-off (RFC 2177 §3).
    """

    def __init__(self, client: ImapClient, renew_after: float = IDLE_RENEW_SECONDS) -> None:
        self._client = client
        self._tag: str | None = None
        self._pending: list[Response] = []
        self._done = False
        self._interrupted = False
        self._renew_after = renew_after
        self._deadline = 0.0

    async def __aenter__(self) -> IdleSession:
        client = self._client
        await client._prepare()
        self._tag = client._next_tag()
        client._claim("IDLE")
        client._idle = self
        client._begin_command("IDLE")
        try:
            client._channel.write(f"{self._tag} IDLE\r\n".encode("ascii"))
            while True:
                response = await client._next_response()
                if isinstance(response, ContinuationRequest):
                    self._deadline = asyncio.get_running_loop().time() + self._renew_after
                    client._end_command()  # waiting inside IDLE is not a command
                    return self
                if isinstance(response, TaggedResponse):
                    self._end()
                    client._check_tagged("IDLE", self._tag, response)
                    raise ImapProtocolError("IDLE completed without a continuation")
                client._collect(self._pending, response)
        except ImapCommandError:
            self._end()
            raise
        except BaseException as exc:
            self._end()
            # Whether the server is idling now is unknown, and a command sent to an idling
            # server is taken as a broken DONE: the connection cannot be trusted any more.
            client._abort_in_flight("IDLE", exc)
            raise
        finally:
            client._end_command()

    def _end(self) -> None:
        """The IDLE command is over (or the connection is): the session is free again."""
        self._done = True
        client = self._client
        if client._idle is self:
            client._idle = None
            client._release()

    def _check_no_reader(self) -> None:
        if self._client._reading:
            raise RuntimeError(f"{self._client.endpoint}: another task is waiting in this IDLE")

    @property
    def expired(self) -> bool:
        """True once ``renew_after`` has passed: leave the block and IDLE again."""
        return asyncio.get_running_loop().time() >= self._deadline

    async def next(self, timeout: float | None = None) -> Response | None:
        """The next untagged response, or None when ``timeout`` s pass without one.

        ``timeout=None`` waits until ``renew_after`` runs out; no call waits longer than that.
        """
        if self._pending:
            return self._pending.pop(0)
        if self._done:
            return None
        client = self._client
        if client._closed:
            self._end()
            raise client._closed_error()
        left = self._deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return None
        self._check_no_reader()
        wait = left if timeout is None else min(timeout, left)
        try:
            response = await client._next_response(wait)
            if type(response) is TaggedResponse:
                assert isinstance(response, TaggedResponse)
                # The server ended IDLE on its own; only a NO/BAD is an error (and a wrong
                # tag, which aborts below: the server may still be idling).
                tag = self._tag or ""
                if response.tag != tag:
                    client._check_tagged("IDLE", tag, response)
                self._end()
                client._check_tagged("IDLE", tag, response)
                return None
            if type(response) is ContinuationRequest:
                raise ImapProtocolError(f"{client.endpoint}: unexpected continuation in IDLE")
        except ImapTimeout:
            return None
        except ImapCommandError:
            raise  # a tagged NO/BAD ended IDLE: the session is intact
        except BaseException as exc:
            # A cancel, bytes that are not IMAP, a wrong tag: where the stream stands is
            # unknown, and the server may still be idling.
            self._end()
            if not client._closed:
                client._abort(f"IDLE wait ended by {type(exc).__name__}")
            raise
        return response

    def __aiter__(self) -> AsyncIterator[Response]:
        return self

    async def __anext__(self) -> Response:
        response = await self.next(None)
        if response is None:
            raise StopAsyncIteration
        return response

    def interrupt(self) -> None:
        """Send DONE from outside the task waiting in :meth:`next`, which then returns None
        when the server's tagged OK arrives (the IDLE command is over; leave the block).

        This is how a watcher that waits without a timeout is stopped cleanly: no timer per
        connection to look at a stop flag, and no cancel (which would drop the connection).
        Nothing happens when IDLE is already over or the connection closed.
        """
        client = self._client
        if self._done or self._interrupted or client._closed:
            return
        self._interrupted = True
        try:
            client._channel.write(b"DONE\r\n")
        except CorrespondError as exc:
            self._end()
            client._abort(f"DONE not sent: {exc}")

    async def done(self) -> None:
        """Send DONE and read up to the tagged OK; late responses go to the unsolicited queue."""
        if self._done:
            return
        client = self._client
        if client._closed:
            self._end()
            return
        self._check_no_reader()
        self._done = True
        for response in self._pending:
            client._queue(response)
        self._pending.clear()
        client._begin_command("IDLE")
        try:
            if not self._interrupted:  # else DONE is on its way already
                client._channel.write(b"DONE\r\n")
            while True:
                response = await client._next_response()
                if isinstance(response, TaggedResponse):
                    client._check_tagged("IDLE", self._tag or "", response)
                    return
                client._keep(response)  # a "+" here raises: aborted below
        except ImapCommandError:
            raise
        except BaseException as exc:
            # The server may still be idling, or its OK may arrive later: either would be
            # taken as the answer to the next command.
            client._abort_in_flight("IDLE", exc)
            raise
        finally:
            client._end_command()
            self._end()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client = self._client
        if client._closed:
            self._end()
            return
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            # Cancelled inside the block: no DONE and no wait for its OK (which may never
            # come): the cancel goes on at once, and the connection, its position in the
            # stream unknown, is dropped.
            self._end()
            client._abort("IDLE cancelled")
            return
        await self.done()
