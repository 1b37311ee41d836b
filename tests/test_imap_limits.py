"""Memory and time bounds of the IMAP client against scripted hostile servers on loopback.

Each test has a server send what a hostile or broken server could (a huge literal after a small
RFC822.SIZE, a huge ESEARCH range, a flood of untagged lines, a reply trickled one byte at a
time) and checks that the client ends with a clear error, or drops what is too big, in bounded
memory (``tracemalloc`` peak: the server's chunks are made once and reused, so the peak is the
client's) and bounded time. The limits are made small so that the tests stay fast.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from correspond.errors import (
    ConnectionLost,
    GreetingTimeout,
    ImapLimitExceeded,
    ImapProtocolError,
    ImapTimeout,
)
from correspond.imap.client import ImapClient, ImapEndpoint, ImapLimits
from correspond.imap.protocol import ResponseParser
from correspond.imap.types import (
    ESearchResponse,
    FetchResponse,
    SearchResponse,
    VanishedResponse,
)
from correspond.settings import Settings
from correspond.testing.net import Answer, FakeImapServer

GREETING = b"* OK [CAPABILITY IMAP4rev1 ESEARCH] hostile ready\r\n"
MB = 1024 * 1024


def endpoint(fake: FakeImapServer) -> ImapEndpoint:
    return ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)


def server(on: bytes, answer: Callable[[bytes], Answer]) -> Callable[[bytes], Answer | None]:
    """A mailbox that SELECTs and NOOPs at once, and answers the command ``on`` with
    ``answer(tag)``."""

    def reply(line: bytes) -> Answer | None:
        tag, _, rest = line.partition(b" ")
        if rest.startswith(b"SELECT"):
            return b"* 1 EXISTS\r\n" + tag + b" OK [READ-WRITE] in\r\n"
        if rest.startswith(on):
            return answer(tag)
        if rest.startswith(b"NOOP"):
            return tag + b" OK done\r\n"
        return None

    return reply


def literal_flood(size: int, chunk: int = MB) -> Iterator[bytes]:
    """``size`` bytes of literal data made from one reused chunk."""
    block = b"x" * chunk
    sent = 0
    while sent + chunk <= size:
        yield block
        sent += chunk
    if size > sent:
        yield block[: size - sent]


class Peak:
    """Peak of Python allocations (bytes) inside the block, above what was allocated before."""

    def __enter__(self) -> Peak:
        tracemalloc.start()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = tracemalloc.get_traced_memory()[1] - self.base
        tracemalloc.stop()


async def connect(fake: FakeImapServer, limits: ImapLimits, **kw: float) -> ImapClient:
    return await ImapClient.connect(
        endpoint(fake),
        connect_timeout=kw.get("connect_timeout", 5.0),
        command_timeout=kw.get("command_timeout", 5.0),
        limits=limits,
    )


# -- a message literal above max_message_bytes, whatever RFC822.SIZE said ------------------------


async def test_body_over_the_limit_is_read_and_dropped_in_bounded_memory() -> None:
    # Before: a literal of any size after RFC822.SIZE 100 was kept whole (1 GB took the process
    # to 3.7 GB). Now it is skipped as it arrives; the FETCH says the body was dropped, with
    # the size the server really sent, and the command (and the session) go on.
    huge = 256 * MB

    def answer(tag: bytes) -> Iterator[bytes]:
        yield b"* 1 FETCH (UID 1 RFC822.SIZE 100 BODY[] {%d}\r\n" % huge
        yield from literal_flood(huge)
        yield b")\r\n* 2 FETCH (UID 2 RFC822.SIZE 5 BODY[] {5}\r\nhello)\r\n"
        yield tag + b" OK done\r\n"

    limits = ImapLimits(max_message_bytes=1 * MB, max_command_bytes=4 * MB)
    async with FakeImapServer(GREETING, reply=server(b"UID FETCH", answer)) as fake:
        client = await connect(fake, limits)
        await client.select("INBOX")
        with Peak() as peak:
            got = await client.uid_fetch_list("1:2", "(UID RFC822.SIZE BODY.PEEK[])")
        assert [r.uid for r in got] == [1, 2]
        assert got[0].dropped == {"": huge}
        assert "" not in got[0].sections
        assert got[0].size == 100  # the claim stays as sent; ``dropped`` has the truth
        assert got[1].sections == {"": b"hello"} and got[1].dropped == {}
        await client.noop()  # the session is intact
        await client.aclose()
    assert peak.bytes < 24 * MB, peak.bytes


def test_parser_drops_only_fetch_literals_and_keeps_the_rest_of_the_response() -> None:
    parser = ResponseParser(max_literal=10, max_message_literal=20)
    parser.feed(b"* 3 FETCH (UID 9 BODY[HEADER] {4}\r\nH: x BODY[] {25}\r\n")
    for _ in range(25):
        parser.feed(b"y")  # one byte at a time: nothing of it is kept
    parser.feed(b" FLAGS (\\Seen))\r\n")
    got = parser.next_response()
    assert isinstance(got, FetchResponse)
    assert got.uid == 9 and got.flags == ("\\Seen",)
    assert got.sections == {"HEADER": b"H: x"} and got.dropped == {"": 25}
    # The fast path (one literal, the shape of a sync) says the same.
    parser.feed(b"* 4 FETCH (UID 10 BODY[] {21}\r\n" + b"z" * 21 + b")\r\n")
    fast = parser.next_response()
    assert isinstance(fast, FetchResponse)
    assert fast.uid == 10 and fast.dropped == {"": 21} and fast.sections == {}
    # Header blocks are kept whatever their size (messages are keyed on them); the command's
    # byte budget bounds them instead.
    header = b"X-Long: " + b"h" * 40 + b"\r\n\r\n"
    parser.feed(b"* 5 FETCH (UID 11 BODY[HEADER] {%d}\r\n%s)\r\n" % (len(header), header))
    kept = parser.next_response()
    assert isinstance(kept, FetchResponse)
    assert kept.sections == {"HEADER": header} and kept.dropped == {}
    # Outside FETCH a literal over max_literal is an error, not a drop.
    parser.feed(b'* LIST () "/" {11}\r\n')
    with pytest.raises(ImapProtocolError, match="literal of 11 bytes"):
        parser.next_response()


async def test_literals_of_one_command_over_the_total_are_a_connection_error() -> None:
    # Each body is under max_message_bytes (RFC822.SIZE lies low), but together they would
    # fill memory: the literal that would take the command over max_command_bytes is refused at
    # its {n} marker, before any of it is read.
    one = 900 * 1024

    def answer(tag: bytes) -> Iterator[bytes]:
        for uid in range(1, 1000):
            yield b"* %d FETCH (UID %d RFC822.SIZE 10 BODY[] {%d}\r\n" % (uid, uid, one)
            yield from literal_flood(one, 300 * 1024)
            yield b")\r\n"
        yield tag + b" OK done\r\n"

    limits = ImapLimits(max_message_bytes=1 * MB, max_command_bytes=8 * MB)
    async with FakeImapServer(GREETING, reply=server(b"UID FETCH", answer)) as fake:
        client = await connect(fake, limits)
        await client.select("INBOX")
        kept: list[FetchResponse] = []
        with Peak() as peak, pytest.raises(ImapLimitExceeded) as caught:
            async for response in client.uid_fetch("1:*", "(UID BODY.PEEK[])"):
                kept.append(response)  # the caller holds every body, as a batch does
        assert caught.value.setting == "imap_max_command_bytes"
        assert "8388608 bytes" in str(caught.value)
        assert len(kept) == 8 * MB // one
        with pytest.raises(ConnectionLost):
            await client.noop()
        await client.aclose()
    assert peak.bytes < 20 * MB, peak.bytes


def test_one_response_with_many_literals_is_bounded_before_it_completes() -> None:
    # A single FETCH response with endless kept literals: the parser refuses at the marker
    # that would go over its budget, not once the response is complete.
    parser = ResponseParser(max_message_literal=1000, max_response=10_000)
    parser.feed(b"* 1 FETCH (UID 1")
    with pytest.raises(ImapLimitExceeded):
        for i in range(100):
            parser.feed(b" BODY[%d] {900}\r\n" % i + b"a" * 900)
            assert parser.next_response() is None


# -- search results: counted before a range is expanded, across responses ----------------------


async def test_esearch_range_is_counted_before_it_is_expanded() -> None:
    # Before: "* ESEARCH ... ALL 1:10000000" was expanded into ten million ints (735 MB).
    def answer(tag: bytes) -> bytes:
        return b'* ESEARCH (TAG "' + tag + b'") UID ALL 1:10000000\r\n' + tag + b" OK done\r\n"

    limits = ImapLimits(max_search_results=100_000)
    async with FakeImapServer(GREETING, reply=server(b"UID SEARCH", answer)) as fake:
        client = await connect(fake, limits)
        await client.select("INBOX")
        with Peak() as peak, pytest.raises(ImapLimitExceeded) as caught:
            await client.uid_search("ALL")
        assert caught.value.setting == "imap_max_search_results"
        assert caught.value.limit == 100_000
        await client.aclose()
    assert peak.bytes < 2 * MB, peak.bytes


@pytest.mark.parametrize(
    "responses",
    [
        [b"* SEARCH " + b" ".join(b"%d" % n for n in range(i, i + 40_000)) for i in (1, 40_001)],
        [b"* ESEARCH UID ALL 1:40000", b"* ESEARCH UID ALL 40001:80000"],
    ],
    ids=["search", "esearch"],
)
async def test_search_results_are_capped_across_responses(responses: list[bytes]) -> None:
    def answer(tag: bytes) -> bytes:
        return b"".join(r + b"\r\n" for r in responses) + tag + b" OK done\r\n"

    limits = ImapLimits(max_search_results=60_000)
    async with FakeImapServer(GREETING, reply=server(b"UID SEARCH", answer)) as fake:
        client = await connect(fake, limits)
        await client.select("INBOX")
        with pytest.raises(ImapLimitExceeded, match="more than 60000 UIDs"):
            await client.uid_search("ALL")
        await client.aclose()
    # Under the cap the same answers are fine.
    async with FakeImapServer(GREETING, reply=server(b"UID SEARCH", answer)) as fake:
        client = await connect(fake, ImapLimits(max_search_results=80_000))
        await client.select("INBOX")
        assert await client.uid_search("ALL") == list(range(1, 80_001))
        await client.aclose()


@pytest.mark.parametrize(
    "line",
    [
        b"* ESEARCH UID ALL 1:5,7:200",
        b"* VANISHED (EARLIER) 1:300",
        b"* SEARCH " + b" ".join(b"%d" % n for n in range(1, 150)),
        b"* OK [COPYUID 7 1:500 1:500] moved",
    ],
)
def test_every_sequence_set_the_parser_expands_is_capped(line: bytes) -> None:
    parser = ResponseParser(max_sequence_set=100)
    parser.feed(line + b"\r\n")
    if b"COPYUID" in line:
        # A broken code must not hide the command's result: kept as the server's text.
        response = parser.next_response()
        assert response is not None
        assert response.code is not None and response.code.value == "7 1:500 1:500"  # type: ignore[union-attr]
        return
    with pytest.raises(ImapLimitExceeded) as caught:
        parser.next_response()
    assert caught.value.setting == "imap_max_search_results"
    # Within the cap the same shapes parse.
    parser = ResponseParser(max_sequence_set=1000)
    parser.feed(line + b"\r\n")
    response = parser.next_response()
    if isinstance(response, ESearchResponse):
        numbers: tuple[int, ...] = response.all
    elif isinstance(response, VanishedResponse):
        numbers = response.uids
    else:
        assert isinstance(response, SearchResponse)
        numbers = response.numbers
    assert len(numbers) > 100


# -- untagged floods --------------------------------------------------------------------------


async def test_untagged_flood_during_list_is_capped_by_count() -> None:
    # Before: ten million untagged lines during LIST took the process to 629 MB.
    def answer(tag: bytes) -> Iterator[bytes]:
        chunk = b"".join(b'* LIST () "/" "folder%07d"\r\n' % i for i in range(10_000))
        for _ in range(1000):  # ten million lines, made from one chunk
            yield chunk
        yield tag + b" OK done\r\n"

    limits = ImapLimits(max_command_responses=5_000)
    async with FakeImapServer(GREETING, reply=server(b"LIST", answer)) as fake:
        client = await connect(fake, limits)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with Peak() as peak, pytest.raises(ImapLimitExceeded) as caught:
            await client.list_folders()
        assert caught.value.setting == "imap_max_command_responses"
        assert loop.time() - started < 10
        await client.aclose()
    assert peak.bytes < 40 * MB, peak.bytes


async def test_unsolicited_flood_is_capped_by_bytes() -> None:
    # Long lines (each under the line limit) that the command keeps: capped by bytes.
    def answer(tag: bytes) -> Iterator[bytes]:
        line = b"* XSTUFF " + b"a" * 500_000 + b"\r\n"
        for _ in range(1000):
            yield line
        yield tag + b" OK done\r\n"

    limits = ImapLimits(max_command_bytes=8 * MB)
    async with FakeImapServer(GREETING, reply=server(b"NOOP", answer)) as fake:
        client = await connect(fake, limits)
        with Peak() as peak, pytest.raises(ImapLimitExceeded) as caught:
            await client.noop()
        assert caught.value.setting == "imap_max_command_bytes"
        await client.aclose()
    assert peak.bytes < 24 * MB, peak.bytes


async def test_unsolicited_queue_keeps_only_the_newest() -> None:
    def answer(tag: bytes) -> bytes:
        return b"".join(b"* %d EXISTS\r\n" % n for n in range(1, 51)) + tag + b" OK done\r\n"

    async with FakeImapServer(GREETING, reply=server(b"CHECK", answer)) as fake:
        client = await connect(fake, ImapLimits(max_unsolicited=10))
        await client._simple("CHECK")
        await client._simple("CHECK")
        kept = client.drain_unsolicited()
        assert [r.count for r in kept] == list(range(41, 51))  # type: ignore[union-attr]
        await client.aclose()


async def test_volunteered_responses_are_bounded_by_bytes_not_counted_as_answers() -> None:
    # Another client expunging a big mailbox floods any command with EXPUNGE: not an error
    # (they are not the command's answers), and what is kept for drain_unsolicited stays
    # within the byte budget across commands.
    def answer(tag: bytes) -> bytes:
        flood = b"".join(b"* %d EXPUNGE\r\n" % n for n in range(3000, 0, -1))
        return flood + b"* XSTUFF " + b"s" * 400_000 + b"\r\n" + tag + b" OK done\r\n"

    limits = ImapLimits(max_command_responses=1000, max_command_bytes=1 * MB)
    async with FakeImapServer(GREETING, reply=server(b"CHECK", answer)) as fake:
        client = await connect(fake, limits)
        for _ in range(3):
            await client._simple("CHECK")
        assert client._unsolicited_bytes <= 1 * MB
        kept = client.drain_unsolicited()
        assert 0 < len(kept) < 3 * 3001
        assert type(kept[-1]).__name__ == "GenericUntagged"  # the newest are the ones kept
        await client.aclose()


# -- overall deadlines ------------------------------------------------------------------------


def trickle(data: bytes, pause: float) -> Iterator[bytes | float]:
    for i in range(len(data)):
        yield data[i : i + 1]
        yield pause


async def test_a_trickling_reply_meets_the_command_deadline() -> None:
    # One byte every 0.2 s never lets the silence timeout (0.5 s) fire: before, NOOP waited
    # for ever. The deadline (0.5 s + 1 s per 1000 bytes) ends it.
    def answer(tag: bytes) -> Iterator[bytes | float]:
        yield from trickle(b"* OK " + b"z" * 10_000 + b"\r\n" + tag + b" OK done\r\n", 0.2)

    limits = ImapLimits(min_rate=1000)
    async with FakeImapServer(GREETING, reply=server(b"NOOP", answer)) as fake:
        client = await connect(fake, limits, command_timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ImapTimeout, match="NOOP did not complete in time"):
            await client.noop()
        assert loop.time() - started < 2.5
        with pytest.raises(ConnectionLost):
            await client.noop()
        await client.aclose()


async def test_a_big_fetch_at_a_fair_rate_outlives_the_base_deadline() -> None:
    # 3 MB in 100 KB pieces with pauses: far longer than the 0.5 s base, but each byte buys
    # time (1 s per MB), so a large transfer at a working rate is never cut off.
    size = 3 * MB

    def answer(tag: bytes) -> Iterator[bytes | float]:
        yield b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % size
        for piece in literal_flood(size, 100 * 1024):
            yield piece
            yield 0.04
        yield b")\r\n" + tag + b" OK done\r\n"

    limits = ImapLimits(min_rate=MB)
    async with FakeImapServer(GREETING, reply=server(b"UID FETCH", answer)) as fake:
        client = await connect(fake, limits, command_timeout=0.5)
        await client.select("INBOX")
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await client.uid_fetch_list("1", "(UID BODY.PEEK[])")
        assert loop.time() - started > 0.5
        assert len(got[0].sections[""] or b"") == size
        await client.aclose()


async def test_a_trickled_greeting_meets_the_connect_deadline() -> None:
    # Before, each byte reset the wait and a greeting trickled one byte per 0.2 s kept
    # connect() waiting for ever.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for part in trickle(b"* OK " + b"g" * 1000 + b"\r\n", 0.2):
                if isinstance(part, float):
                    await asyncio.sleep(part)
                else:
                    writer.write(part)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(GreetingTimeout):
            await ImapClient.connect(
                ImapEndpoint("127.0.0.1", port, "plain", allow_plaintext=True),
                connect_timeout=1.0,
                limits=ImapLimits(min_rate=10_000),
            )
        assert loop.time() - started < 3
    finally:
        listener.close()
        await listener.wait_closed()


def test_limits_come_from_settings() -> None:
    settings = Settings(
        max_message_bytes=2 * MB,
        imap_max_command_bytes=4 * MB,
        imap_max_command_responses=5000,
        imap_max_search_results=7000,
        imap_command_min_rate=123.0,
        imap_greeting_probe_seconds=1.5,
    )
    limits = ImapLimits.from_settings(settings)
    assert limits == ImapLimits(
        max_message_bytes=2 * MB,
        max_command_bytes=4 * MB,
        max_command_responses=5000,
        max_search_results=7000,
        min_rate=123.0,
        greeting_probe_after=1.5,
    )
    # A message at the limit always fits in a command.
    small = ImapLimits.from_settings(settings.clone(imap_max_command_bytes=MB))
    assert small.max_command_bytes == 3 * MB


# -- values that do not parse --------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b'* LIST () "/" "a\x00b"',
        b'* LIST () "/" {3}\r\na\x00b',
        b"* STATUS {3}\r\na\x00b (MESSAGES 1)",
        b"* 1 FETCH (UID -5)",
        b"* 1 FETCH (RFC822.SIZE -1)",
        b"* 1 FETCH (UID 99999999999999999999)",
        b"* 1 FETCH (X-GM-MSGID -1)",
        b"* 1 FETCH (UID 1 BODY[]<-5> {1}\r\nx)",
        b"* ESEARCH UID MIN -1",
        b"* ESEARCH UID COUNT 99999999999999999999",
        b"* ESEARCH UID ALL 1:-5",
        b"* ESEARCH UID ALL 9223372036854775808",
        b"* VANISHED 1:-5",
        b"* SEARCH 1 -2",
        b"* SEARCH 1 99999999999999999999",
        b"* SEARCH 1 (MODSEQ -1)",
        b"* 99999999999999999999 EXISTS",
        b"* 99999999999999999999 FETCH (UID 1)",
    ],
)
def test_values_that_do_not_parse_are_protocol_errors(line: bytes) -> None:
    parser = ResponseParser()
    parser.feed(line + b"\r\n* 1 EXISTS\r\n")
    with pytest.raises(ImapProtocolError):
        parser.next_response()
    assert parser.next_response() is not None  # the parser goes on with the next response


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (b"[UIDVALIDITY -1]", None),
        (b"[UIDVALIDITY 18446744073709551616]", None),
        (b"[UIDNEXT -1]", {"uidnext": None}),
        (b"[UIDNEXT x]", {"uidnext": None}),
        (b"[HIGHESTMODSEQ -1]", {"highestmodseq": None, "nomodseq": True}),
        (b"[UNSEEN -3]", {"unseen": None}),
    ],
)
async def test_select_with_unusable_numbers(
    code: bytes, expected: dict[str, object] | None
) -> None:
    # Before: int(None) raised TypeError out of select() for every one of these.
    def reply(line: bytes) -> bytes | None:
        tag, _, rest = line.partition(b" ")
        if rest.startswith(b"SELECT"):
            valid = b"" if b"UIDVALIDITY" in code else b"* OK [UIDVALIDITY 7] ok\r\n"
            return b"* 1 EXISTS\r\n" + valid + b"* OK " + code + b" x\r\n" + tag + b" OK in\r\n"
        return None

    async with FakeImapServer(GREETING, reply=reply) as fake:
        client = await connect(fake, ImapLimits())
        if expected is None:
            with pytest.raises(ImapProtocolError, match="UIDVALIDITY"):
                await client.select("INBOX")
        else:
            box = await client.select("INBOX")
            assert box.uidvalidity == 7
            for name, value in expected.items():
                assert getattr(box, name) == value
        await client.aclose()
