"""The asyncio IMAP client against the private Dovecot (and tiny fakes where Dovecot can't)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Callable

import pytest

from correspond.errors import (
    AuthenticationFailed,
    CapabilityError,
    CertificateNotTrusted,
    ConfigError,
    ConnectionLost,
    GreetingTimeout,
    HostNotFound,
    ImapCommandError,
    ImapProtocolError,
    ImapTimeout,
    TlsError,
)
from correspond.imap.client import ImapClient, ImapEndpoint, QresyncParams
from correspond.imap.connect import map_io_errors
from correspond.imap.types import (
    ExistsResponse,
    FetchResponse,
    Multipart,
    StatusResponse,
    VanishedResponse,
)
from correspond.testing.dovecot import DovecotServer, ImapUser, _make_certificate
from correspond.testing.net import FakeImapServer, black_hole, connect_from

pytestmark = pytest.mark.dovecot

MULTIPART = (
    b"From: Ann Example <ann@example.test>\r\n"
    b"To: bob@example.test, carol@example.test\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream; name=blob.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=blob.bin\r\n"
    b"\r\n"
    b"AAECAwQFBgcICQ==\r\n"
    b"--b1--\r\n"
)


def message(subject: str, body: bytes = b"body\r\n") -> bytes:
    return f"From: x@example.test\r\nSubject: {subject}\r\n\r\n".encode() + body


def starttls(server: DovecotServer) -> ImapEndpoint:
    return ImapEndpoint(server.host, server.port, "starttls", trusted_cert_pem=server.cert_pem)


def implicit_tls(server: DovecotServer) -> ImapEndpoint:
    return ImapEndpoint(server.host, server.tls_port, "tls", trusted_cert_pem=server.cert_pem)


async def logged_in(server: DovecotServer, user: ImapUser) -> ImapClient:
    client = await ImapClient.connect(starttls(server), connect_timeout=10, command_timeout=20)
    await client.login(user.username, user.password)
    return client


@pytest.fixture
async def client(dovecot: DovecotServer, imap_user: ImapUser) -> AsyncIterator[ImapClient]:
    c = await logged_in(dovecot, imap_user)
    yield c
    await c.logout()


def record_writes(client: ImapClient) -> list[bytes]:
    """Capture what the client writes (to see which command it chose)."""
    sent: list[bytes] = []
    channel = client._channel
    original: Callable[[bytes], None] = channel.write

    def write(data: bytes) -> None:
        sent.append(data)
        original(data)

    channel.write = write  # type: ignore[method-assign]
    return sent


# -- connecting and TLS -------------------------------------------------------------------------


async def test_starttls_then_login(dovecot: DovecotServer, imap_user: ImapUser) -> None:
    async with await ImapClient.connect(starttls(dovecot)) as c:
        assert c.tls_active
        # The pre-TLS list is replaced by the one asked for over TLS (no STARTTLS any more).
        assert "STARTTLS" not in c.capabilities
        assert "IMAP4REV1" in c.capabilities
        await c.login(imap_user.username, imap_user.password)
        assert c.authenticated
        # After login the full list (from the OK's CAPABILITY code) is known.
        assert {"CONDSTORE", "QRESYNC", "MOVE", "IDLE"} <= c.capabilities


async def test_implicit_tls_login(dovecot: DovecotServer, imap_user: ImapUser) -> None:
    async with await ImapClient.connect(implicit_tls(dovecot)) as c:
        assert c.tls_active
        await c.login(imap_user.username, imap_user.password)
        assert "UIDPLUS" in c.capabilities


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_self_signed_certificate_is_refused_without_opt_in(
    dovecot: DovecotServer, security: str
) -> None:
    port = dovecot.tls_port if security == "tls" else dovecot.port
    endpoint = ImapEndpoint(dovecot.host, port, security)  # type: ignore[arg-type]
    with pytest.raises(CertificateNotTrusted) as info:
        await ImapClient.connect(endpoint, connect_timeout=10)
    assert info.value.reason == "untrusted"


async def test_pinned_certificate_must_be_the_servers(
    dovecot: DovecotServer, tmp_path: object
) -> None:
    import pathlib

    folder = pathlib.Path(str(tmp_path))
    _, _, other_pem = _make_certificate(folder)
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", trusted_cert_pem=other_pem)
    with pytest.raises(CertificateNotTrusted) as info:
        await ImapClient.connect(endpoint, connect_timeout=10)
    assert info.value.reason == "pinned"


async def test_plaintext_refused_unless_allowed(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    with pytest.raises(ConfigError, match="plaintext"):
        await ImapClient.connect(ImapEndpoint(dovecot.host, dovecot.port, "plain"))
    endpoint = ImapEndpoint(dovecot.host, dovecot.port, "plain", allow_plaintext=True)
    async with await ImapClient.connect(endpoint) as c:
        assert not c.tls_active
        await c.login(imap_user.username, imap_user.password)
        assert c.authenticated


async def test_credentials_never_sent_before_tls(dovecot: DovecotServer) -> None:
    # Same plain connection, but the endpoint does not allow plaintext credentials.
    endpoint = ImapEndpoint(dovecot.host, dovecot.port, "plain", allow_plaintext=True)
    c = await ImapClient.connect(endpoint)
    object.__setattr__(c, "endpoint", ImapEndpoint(dovecot.host, dovecot.port, "starttls"))
    sent = record_writes(c)
    with pytest.raises(ConfigError, match="without TLS"):
        await c.login("someone", "pw-never-sent")
    assert not any(b"pw-never-sent" in chunk for chunk in sent)
    await c.logout()


# -- authentication ------------------------------------------------------------------------------


async def test_login_uses_authenticate_plain_with_sasl_ir(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    c = await ImapClient.connect(starttls(dovecot))
    sent = record_writes(c)
    await c.login(imap_user.username, imap_user.password)
    assert sent[0].split(b" ")[1:3] == [b"AUTHENTICATE", b"PLAIN"]
    assert len(sent[0].split(b" ")) == 4  # initial response on the command line (SASL-IR)
    await c.logout()


async def test_login_command_when_auth_plain_absent(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    c = await ImapClient.connect(starttls(dovecot))
    c.capabilities = c.capabilities - {"AUTH=PLAIN"}
    sent = record_writes(c)
    await c.login(imap_user.username, imap_user.password)
    assert sent[0].split(b" ")[1] == b"LOGIN"
    assert "UIDPLUS" in c.capabilities
    await c.logout()


async def test_logindisabled_is_respected(dovecot: DovecotServer) -> None:
    c = await ImapClient.connect(starttls(dovecot))
    c.capabilities = (c.capabilities - {"AUTH=PLAIN"}) | {"LOGINDISABLED"}
    sent = record_writes(c)
    with pytest.raises(CapabilityError):
        await c.login("nobody", "secret")
    assert sent == []
    await c.logout()


async def test_authenticate_with_challenge_callback(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    c = await ImapClient.connect(starttls(dovecot))
    c.capabilities = c.capabilities - {"SASL-IR"}  # force the "+" round trip
    challenges: list[bytes] = []

    def respond(challenge: bytes) -> bytes:
        challenges.append(challenge)
        return f"\0{imap_user.username}\0{imap_user.password}".encode()

    await c.authenticate("PLAIN", respond, username=imap_user.username)
    assert challenges == [b""]
    assert c.authenticated
    await c.logout()


async def test_wrong_password_surfaces_server_text(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    c = await ImapClient.connect(starttls(dovecot))
    with pytest.raises(AuthenticationFailed) as info:
        await c.login(imap_user.username, "wrong-password")
    assert info.value.server_text == "Authentication failed."
    assert "wrong-password" not in str(info.value) + repr(c)
    assert not c.authenticated
    await c.logout()


# -- mailboxes -----------------------------------------------------------------------------------


async def test_list_reports_special_use_roles(client: ImapClient) -> None:
    sent = record_writes(client)
    folders = await client.list_folders()
    assert b"RETURN (SPECIAL-USE)" in sent[0]
    roles = {f.name: {x.lower() for x in f.flags} for f in folders}
    assert set(roles) == {"INBOX", "Sent", "Drafts", "Trash", "Archive", "Junk"}
    assert "\\sent" in roles["Sent"]
    assert "\\junk" in roles["Junk"]
    assert all(f.delimiter == "/" for f in folders)


async def test_list_on_basic_variant(dovecot_basic: DovecotServer) -> None:
    user = dovecot_basic.add_user()
    async with await logged_in(dovecot_basic, user) as c:
        folders = await c.list_folders()
    assert {"\\Archive"} <= {flag for f in folders for flag in f.flags}


async def test_status_and_select_examine(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    dovecot.deliver(imap_user, message("one"))
    status = await client.status("INBOX")
    assert status.values["MESSAGES"] == 1
    assert "HIGHESTMODSEQ" in status.values
    box = await client.select("INBOX", condstore=True)
    assert box.exists == 1
    assert box.uidvalidity == status.values["UIDVALIDITY"]
    assert box.uidnext == 2
    assert box.highestmodseq is not None and box.highestmodseq >= 1
    assert not box.read_only
    assert "\\Seen" in box.permanentflags
    ro = await client.examine("INBOX")
    assert ro.read_only and ro.exists == 1


async def test_qresync_select_reports_vanished_and_changed(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    for i in range(3):
        dovecot.deliver(imap_user, message(f"m{i}"))
    await client.enable()
    assert "QRESYNC" in client.enabled
    box = await client.select("INBOX")
    assert box.highestmodseq is not None
    checkpoint = box.highestmodseq
    # Another session changes the mailbox: flags on UID 2, UID 3 expunged.
    other = await logged_in(dovecot, imap_user)
    await other.select("INBOX")
    await other.uid_store([2], "+FLAGS", ["\\Flagged"])
    await other.uid_store([3], "+FLAGS.SILENT", ["\\Deleted"])
    await other.uid_expunge([3])
    await other.logout()
    await client.unselect()
    box = await client.select(
        "INBOX", qresync=QresyncParams(box.uidvalidity or 0, checkpoint, (1, 2, 3))
    )
    assert box.vanished == (3,)
    assert [(f.uid, "\\Flagged" in (f.flags or ())) for f in box.changed] == [(2, True)]
    assert box.highestmodseq is not None and box.highestmodseq > checkpoint


# -- messages ------------------------------------------------------------------------------------


async def test_append_search_fetch_byte_exact(client: ImapClient) -> None:
    big = b"".join(b"line %06d of a large attachment-ish body\r\n" % i for i in range(60000))
    when = dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.UTC)
    first = await client.append("INBOX", MULTIPART, flags=["\\Seen"], date=when)
    second = await client.append("INBOX", message("big", big))
    assert first is not None and second is not None
    assert second.uids[0] == first.uids[0] + 1
    box = await client.select("INBOX")
    assert box.uidvalidity == first.uidvalidity
    assert await client.uid_search("ALL") == [first.uids[0], second.uids[0]]
    assert await client.uid_search("SEEN") == [first.uids[0]]
    items = "(UID FLAGS INTERNALDATE RFC822.SIZE MODSEQ ENVELOPE BODYSTRUCTURE BODY.PEEK[])"
    got = await client.uid_fetch_list("1:*", items)
    assert [f.uid for f in got] == [1, 2]
    one, two = got
    assert one.sections[""] == MULTIPART
    assert two.sections[""] == message("big", big)
    assert one.size == len(MULTIPART)
    assert one.internaldate == when
    assert one.flags is not None and "\\Seen" in one.flags
    assert one.modseq is not None and one.modseq > 0
    env = one.envelope
    assert env is not None
    assert env.message_id == "<m1@example.test>"
    assert env.subject == "=?utf-8?q?caf=C3=A9?= report"
    assert [a.mailbox for a in env.to] == ["bob", "carol"]
    structure = one.bodystructure
    assert isinstance(structure, Multipart)
    assert structure.subtype == "mixed"
    assert [p.section for p in structure.parts] == ["1", "2"]
    part = structure.parts[1]
    assert part.disposition == "attachment"  # type: ignore[union-attr]


async def test_append_with_synchronising_literal_and_plain_search(client: ImapClient) -> None:
    # Without LITERAL+ the body waits for the server's "+" (RFC 3501 §7.5); without ESEARCH
    # the answer is a plain SEARCH response.
    client.capabilities = client.capabilities - {"LITERAL+", "ESEARCH"}
    sent = record_writes(client)
    raw = message("sync literal", b"x" * 5000 + b"\r\n")
    appended = await client.append("INBOX", raw)
    assert appended is not None
    assert sent[0].endswith(b"{%d}\r\n" % len(raw))
    assert sent[1] == raw + b"\r\n"
    await client.select("INBOX")
    sent.clear()
    assert await client.uid_search("ALL") == [appended.uids[0]]
    assert b"RETURN" not in sent[0]
    [got] = await client.uid_fetch_list(appended.uids, "(BODY.PEEK[])")
    assert got.sections[""] == raw


async def test_non_ascii_mailbox_names_round_trip(client: ImapClient) -> None:
    await client.create("Café/Überweisungen")
    folders = {f.name: f for f in await client.list_folders()}
    folder = folders["Café/Überweisungen"]
    assert folder.name_raw == b"Caf&AOk-/&ANw-berweisungen"
    appended = await client.append(folder.name_raw, message("accents"))
    assert appended is not None
    box = await client.select(folder.name_raw)
    assert box.exists == 1 and box.uidvalidity == appended.uidvalidity


async def test_fetch_streams_and_can_be_abandoned(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    for i in range(5):
        dovecot.deliver(imap_user, message(f"s{i}"))
    await client.select("INBOX")
    seen: list[int] = []
    async for response in client.uid_fetch([1, 2, 3, 4, 5], ["UID", "BODY.PEEK[]"]):
        seen.append(response.uid or 0)
        if len(seen) == 2:
            break
    assert seen == [1, 2]
    # The rest of that reply is drained before the next command runs.
    assert await client.uid_search("ALL") == [1, 2, 3, 4, 5]


async def test_store_flags(client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser) -> None:
    dovecot.deliver(imap_user, message("flags"))
    box = await client.select("INBOX", condstore=True)
    result = await client.uid_store([1], "+FLAGS", ["\\Flagged", "\\Seen"])
    assert len(result.fetches) == 1
    assert {"\\Flagged", "\\Seen"} <= set(result.fetches[0].flags or ())
    silent = await client.uid_store([1], "-FLAGS.SILENT", ["\\Flagged"])
    # .SILENT: no flags come back (under CONDSTORE a FETCH with only MODSEQ may, RFC 7162 §3.1.3).
    assert all(f.flags is None for f in silent.fetches)
    [fetched] = await client.uid_fetch_list([1], "(FLAGS)")
    assert "\\Flagged" not in (fetched.flags or ())
    # UNCHANGEDSINCE with a stale modseq: the server refuses and names the UID.
    stale = await client.uid_store([1], "+FLAGS", ["\\Answered"], unchangedsince=box.highestmodseq)
    assert stale.modified == (1,)


async def test_copy_returns_copyuid(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    dovecot.deliver(imap_user, message("copy me"))
    await client.select("INBOX")
    copied = await client.uid_copy([1], "Archive")
    assert copied is not None
    assert copied.source_uids == (1,) and copied.dest_uids == (1,)
    assert (await client.status("Archive")).values["MESSAGES"] == 1
    assert await client.uid_search("ALL") == [1]


async def test_move_uses_move(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    for i in range(2):
        dovecot.deliver(imap_user, message(f"mv{i}"))
    await client.select("INBOX")
    sent = record_writes(client)
    moved = await client.uid_move([1, 2], "Trash")
    assert b"UID MOVE 1:2" in sent[0]
    assert moved is not None and moved.dest_uids == (1, 2)
    assert await client.uid_search("ALL") == []
    assert (await client.status("Trash")).values["MESSAGES"] == 2
    removed = [r for r in client.drain_unsolicited() if type(r).__name__ in ("ExpungeResponse",)]
    assert len(removed) == 2


async def test_move_fallback_on_basic_server(dovecot_basic: DovecotServer) -> None:
    user = dovecot_basic.add_user()
    for i in range(3):
        dovecot_basic.deliver(user, message(f"fb{i}"))
    async with await logged_in(dovecot_basic, user) as c:
        assert "MOVE" not in c.capabilities
        await c.select("INBOX")
        await c.uid_store([3], "+FLAGS.SILENT", ["\\Deleted"])  # must survive the move
        sent = record_writes(c)
        moved = await c.uid_move([1, 2], "Archive")
        commands = [chunk.split(b" ")[1:3] for chunk in sent]
        assert [b"UID", b"COPY"] in commands and [b"UID", b"EXPUNGE"] in commands
        assert moved is not None and moved.source_uids == (1, 2)
        assert await c.uid_search("ALL") == [3]
        assert (await c.status("Archive")).values["MESSAGES"] == 2


async def test_uid_expunge_removes_only_named(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    for i in range(3):
        dovecot.deliver(imap_user, message(f"x{i}"))
    await client.select("INBOX")
    await client.uid_store([1, 2], "+FLAGS.SILENT", ["\\Deleted"])
    await client.uid_expunge([2])
    assert await client.uid_search("ALL") == [1, 3]


async def test_command_error_carries_status(client: ImapClient) -> None:
    with pytest.raises(ImapCommandError) as info:
        await client.select("No/Such/Folder")
    assert info.value.status == "NO"
    assert info.value.command == "SELECT"
    assert (await client.status("INBOX")).values["MESSAGES"] == 0  # still usable


# -- updates -------------------------------------------------------------------------------------


async def test_idle_sees_lmtp_delivery_and_done_ends_it(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    await client.select("INBOX")
    loop = asyncio.get_running_loop()
    async with client.idle() as idle:
        started = loop.time()
        await asyncio.to_thread(dovecot.deliver, imap_user, message("while idle"))
        seen = None
        while seen is None and loop.time() - started < 15:
            response = await idle.next(timeout=15)
            if isinstance(response, ExistsResponse):
                seen = response
    assert seen is not None and seen.count == 1
    # DONE was sent and acknowledged: normal commands work again.
    await client.noop()
    assert await client.uid_search("ALL") == [1]


async def test_unsolicited_updates_are_kept(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    dovecot.deliver(imap_user, message("first"))
    await client.select("INBOX")
    client.drain_unsolicited()
    other = await logged_in(dovecot, imap_user)
    await other.select("INBOX")
    await other.uid_store([1], "+FLAGS.SILENT", ["\\Flagged"])
    await other.logout()
    dovecot.deliver(imap_user, message("second"))
    await client.noop()
    updates = client.drain_unsolicited()
    assert any(isinstance(u, ExistsResponse) and u.count == 2 for u in updates)
    assert any(isinstance(u, FetchResponse) and "\\Flagged" in (u.flags or ()) for u in updates)
    assert client.drain_unsolicited() == []


async def test_expunge_from_elsewhere_arrives_as_vanished_under_qresync(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    dovecot.deliver(imap_user, message("a"))
    dovecot.deliver(imap_user, message("b"))
    await client.enable("QRESYNC")
    await client.select("INBOX")
    other = await logged_in(dovecot, imap_user)
    await other.select("INBOX")
    await other.uid_store([1], "+FLAGS.SILENT", ["\\Deleted"])
    await other.uid_expunge([1])
    await other.logout()
    await client.noop()
    updates = client.drain_unsolicited()
    assert any(isinstance(u, VanishedResponse) and u.uids == (1,) for u in updates)


async def test_logout_closes(client: ImapClient) -> None:
    await client.logout()
    await client.logout()  # idempotent
    with pytest.raises(ConnectionLost):
        await client.noop()


async def test_id(client: ImapClient) -> None:
    server_id = await client.id()
    assert server_id is not None and server_id.get("name") == "Dovecot"


# -- fakes: what a well-behaved server will not do -----------------------------------------------
# Dovecot cannot be made to stall, say BYE mid-session or send ALERT on demand, hence tiny fakes.

GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR IDLE] fake ready\r\n"


def fake_endpoint(fake: FakeImapServer) -> ImapEndpoint:
    return ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)


async def test_command_timeout_on_a_stalled_server() -> None:
    async with FakeImapServer(GREETING) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ImapTimeout):
            await c.noop()
        assert loop.time() - started < 2
        await c.aclose()


def _answers(
    fetch_1_2: bytes | list[bytes | float] | None = None,
) -> Callable[[bytes], bytes | list[bytes | float] | None]:
    """A fake mailbox: SELECT works, ``UID FETCH 1:2`` gets ``fetch_1_2`` (tag appended),
    any other UID FETCH and NOOP complete at once."""

    def reply(line: bytes) -> bytes | list[bytes | float] | None:
        tag, _, rest = line.partition(b" ")
        if rest.startswith(b"SELECT"):
            return b"* 2 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n" + tag + b" OK [READ-WRITE] in\r\n"
        if rest.startswith(b"UID FETCH 1:2") and fetch_1_2 is not None:
            if isinstance(fetch_1_2, bytes):
                return fetch_1_2 + tag + b" OK fetched\r\n"
            return [*fetch_1_2, tag + b" OK fetched\r\n"]
        if rest.startswith((b"UID FETCH", b"NOOP")):
            return tag + b" OK done\r\n"
        return None

    return reply


async def test_timeout_mid_reply_drops_the_connection() -> None:
    # The reply stalls between two FETCH responses for longer than command_timeout. Where the
    # rest of it will go is unknown: kept open, the connection handed UID 2's data to the next
    # UID FETCH as its answer. Now the client is closed and every later call fails at once.
    script: list[bytes | float] = [
        b"* 1 FETCH (UID 1 BODY[] {5}\r\nfirst)\r\n",
        1.0,
        b"* 2 FETCH (UID 2 BODY[] {6}\r\nsecond)\r\n",
    ]
    async with FakeImapServer(GREETING, reply=_answers(script)) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=0.3)
        await c.select("INBOX")
        seen: list[int | None] = []
        with pytest.raises(ImapTimeout):
            async for response in c.uid_fetch("1:2", ["UID", "BODY.PEEK[]"]):
                seen.append(response.uid)
        assert seen == [1]
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionLost, match="UID FETCH timed out"):
            await c.uid_fetch_list("3", ["UID", "BODY.PEEK[]"])
        with pytest.raises(ConnectionLost):
            await c.noop()
        assert loop.time() - started < 0.2  # promptly: nothing is sent, nothing awaited
        await asyncio.sleep(1.0)  # UID 2 and the tagged OK are sent into a closed socket
        assert c.drain_unsolicited() == []
        assert [line.split(b" ", 2)[1] for line in fake.lines] == [b"SELECT", b"UID"]
        await c.aclose()


async def test_timeout_of_a_simple_command_drops_the_connection() -> None:
    # The first NOOP's OK arrives late, with the second NOOP's answer: kept open, the session
    # would have had to tell the two apart. It is closed instead.
    noops: list[bytes] = []

    def reply(line: bytes) -> bytes | None:
        if b" NOOP" in line:
            noops.append(line.split(b" ")[0])
            if len(noops) == 2:
                return noops[0] + b" OK late\r\n" + noops[1] + b" OK noop\r\n"
        return None

    async with FakeImapServer(GREETING, reply=reply) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=0.3)
        with pytest.raises(ImapTimeout):
            await c.noop()
        with pytest.raises(ConnectionLost, match="NOOP timed out"):
            await c.noop()
        assert noops == [b"C1"]  # the second NOOP never left the client
        await c.aclose()


@pytest.mark.parametrize("where", ["simple", "fetch"])
async def test_cancelled_command_drops_the_connection(where: str) -> None:
    # asyncio.timeout cancels the task mid-command (command_timeout is far away): the same
    # unknown state as a timeout of our own.
    script: list[bytes | float] = [b"* 1 FETCH (UID 1 BODY[] {5}\r\nfirst)\r\n", 5.0]
    async with FakeImapServer(GREETING, reply=_answers(script)) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=10)
        await c.select("INBOX")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                if where == "fetch":
                    await c.uid_fetch_list("1:2", ["UID", "BODY.PEEK[]"])
                else:
                    await c._simple("CHECK")  # the fake never answers CHECK
        with pytest.raises(ConnectionLost, match="ended by CancelledError"):
            await c.noop()
        assert not any(b"NOOP" in line for line in fake.lines)
        await c.aclose()


async def test_abandoned_fetch_stream_is_drained_and_the_session_goes_on() -> None:
    # Leaving a stream early is not an interrupted command: the rest is read and dropped.
    script = b"* 1 FETCH (UID 1 BODY[] {5}\r\nfirst)\r\n* 2 FETCH (UID 2 BODY[] {6}\r\nsecond)\r\n"
    async with FakeImapServer(GREETING, reply=_answers(script)) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=2)
        await c.select("INBOX")
        async for response in c.uid_fetch("1:2", ["UID", "BODY.PEEK[]"]):
            assert response.uid == 1
            break
        assert await c.uid_fetch_list("3", ["UID"]) == []
        assert c.drain_unsolicited() == []
        await c.aclose()


# A server without LITERAL+: APPEND's message waits for "+" (a synchronising literal).
NO_LITERAL_PLUS = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake ready\r\n"


@pytest.mark.parametrize("ending", ["timeout", "cancel", "garbage"])
async def test_literal_without_continuation_drops_the_connection(ending: str) -> None:
    # The server was told a literal of n bytes follows. Kept open, the next command's bytes
    # would be taken as that literal (here: a NOOP appended into INBOX).
    def reply(line: bytes) -> bytes | None:
        if b" APPEND " in line and ending == "garbage":
            return b"* 1 FETCH (]\r\n"  # neither "+" nor IMAP
        return None

    expected: type[BaseException] = {
        "timeout": ImapTimeout,
        "cancel": TimeoutError,
        "garbage": ImapProtocolError,
    }[ending]
    async with FakeImapServer(NO_LITERAL_PLUS, reply=reply) as fake:
        timeout = 10 if ending == "cancel" else 0.3
        c = await ImapClient.connect(
            fake_endpoint(fake), connect_timeout=2, command_timeout=timeout
        )
        with pytest.raises(expected):
            async with asyncio.timeout(0.6):
                await c.append("INBOX", b"Subject: x\r\n\r\nhello\r\n")
        with pytest.raises(ConnectionLost, match="APPEND"):
            await c.noop()
        await asyncio.sleep(0.1)
        assert len(fake.lines) == 1 and fake.lines[0].startswith(b"C1 APPEND INBOX {")
        await c.aclose()


async def test_literal_refused_instead_of_continued_keeps_the_session() -> None:
    # RFC 3501 §7.5: a tagged NO in place of "+" ends the command; the literal is not sent.
    def reply(line: bytes) -> bytes | None:
        tag, _, rest = line.partition(b" ")
        if rest.startswith(b"APPEND"):
            return tag + b" NO [TRYCREATE] no such mailbox\r\n"
        if rest.startswith(b"NOOP"):
            return tag + b" OK noop\r\n"
        return None

    async with FakeImapServer(NO_LITERAL_PLUS, reply=reply) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=2)
        with pytest.raises(ImapCommandError) as info:
            await c.append("Nowhere", b"Subject: x\r\n\r\nhello\r\n")
        assert info.value.code == "TRYCREATE"
        await c.noop()
        assert [line.split(b" ")[1] for line in fake.lines] == [b"APPEND", b"NOOP"]
        await c.aclose()


async def test_idle_event_waits_are_not_command_timeouts() -> None:
    # Waiting inside IDLE longer than command_timeout is normal; only entering and leaving
    # IDLE are commands in flight.
    idle_tags: list[bytes] = []

    def reply(line: bytes) -> bytes | None:
        tag, _, rest = line.partition(b" ")
        if rest == b"IDLE":
            idle_tags.append(tag)
            return b"+ idling\r\n"
        if line == b"DONE":
            return idle_tags[-1] + b" OK idle done\r\n"
        if rest == b"NOOP":
            return tag + b" OK noop\r\n"
        return None

    async with FakeImapServer(GREETING, reply=reply) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=0.2)
        async with c.idle() as idle:
            assert await idle.next(timeout=0.5) is None
            assert await idle.next(timeout=0.3) is None
        await c.noop()
        await c.aclose()


async def test_idle_done_without_completion_drops_the_connection() -> None:
    def reply(line: bytes) -> bytes | None:
        return b"+ idling\r\n" if line.endswith(b" IDLE") else None  # DONE: never answered

    async with FakeImapServer(GREETING, reply=reply) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=0.3)
        with pytest.raises(ImapTimeout):
            async with c.idle():
                pass
        with pytest.raises(ConnectionLost, match="IDLE timed out"):
            await c.noop()
        await c.aclose()


async def test_id_response_is_parsed() -> None:
    answers = [
        b'* ID ("name" "X" "os" NIL "quoted" "a\\"b" "lit" {5}\r\nHello)\r\n',
        b"* ID NIL\r\n",
    ]

    def reply(line: bytes) -> bytes | None:
        tag, _, rest = line.partition(b" ")
        if rest.startswith(b"ID"):
            return answers.pop(0) + tag + b" OK id\r\n"
        return None

    greeting = b"* OK [CAPABILITY IMAP4rev1 ID] hi\r\n"
    async with FakeImapServer(greeting, reply=reply) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=2)
        assert await c.id() == {"name": "X", "os": None, "quoted": 'a"b', "lit": "Hello"}
        assert await c.id() == {}  # "* ID NIL"
        assert c.drain_unsolicited() == []
        await c.aclose()


async def test_repeated_spaces_in_a_tagged_reply_are_tolerated() -> None:
    def reply(line: bytes) -> bytes | None:
        tag, _, rest = line.partition(b" ")
        if rest == b"NOOP":
            return b"*  OK  [ALERT]  disk  almost full\r\n" + tag + b"  OK  noop done\r\n"
        return None

    async with FakeImapServer(GREETING, reply=reply) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=2)
        await c.noop()
        [alert] = c.drain_unsolicited()
        assert isinstance(alert, StatusResponse) and alert.text == "disk  almost full"
        await c.noop()  # the session goes on
        await c.aclose()


async def test_connect_timeout_when_no_greeting() -> None:
    async with FakeImapServer(None) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        with pytest.raises(GreetingTimeout):
            await ImapClient.connect(endpoint, connect_timeout=0.3)


async def test_bye_raises_connection_lost_and_alert_is_kept() -> None:
    def reply(line: bytes) -> bytes | None:
        tag = line.split(b" ")[0]
        if b" NOOP" in line:
            return b"* OK [ALERT] Mailbox is almost full\r\n" + tag + b" OK noop done\r\n"
        if b" CHECK" in line:
            return b"* BYE server shutting down\r\n"
        return None

    async with FakeImapServer(GREETING, reply=reply) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        c = await ImapClient.connect(endpoint, connect_timeout=2, command_timeout=2)
        await c.noop()
        [alert] = c.drain_unsolicited()
        assert isinstance(alert, StatusResponse) and alert.text == "Mailbox is almost full"
        with pytest.raises(ConnectionLost, match="shutting down"):
            await c._simple("CHECK")
        with pytest.raises(ConnectionLost):
            await c.noop()


# -- audit: TLS, STARTTLS and credentials --------------------------------------------------------


async def test_logindisabled_from_a_real_dovecot(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    # From 127.0.0.2 Dovecot does not count the connection as local: before TLS it advertises
    # LOGINDISABLED and no AUTH=PLAIN, as it would over a network (RFC 3501 §6.2.3).
    with connect_from():
        plain = ImapEndpoint(dovecot.host, dovecot.port, "plain", allow_plaintext=True)
        c = await ImapClient.connect(plain, connect_timeout=5, command_timeout=5)
        assert "LOGINDISABLED" in c.capabilities and "AUTH=PLAIN" not in c.capabilities
        sent = record_writes(c)
        with pytest.raises(CapabilityError) as info:
            await c.login(imap_user.username, imap_user.password)
        assert info.value.capability == "LOGIN"
        assert sent == []  # nothing, let alone the password, went out
        await c.logout()
        # The same server over STARTTLS: the mechanisms appear and login works.
        async with await ImapClient.connect(starttls(dovecot), connect_timeout=5) as secure:
            assert "LOGINDISABLED" not in secure.capabilities
            await secure.login(imap_user.username, imap_user.password)
            assert secure.authenticated


async def test_login_takes_capabilities_from_the_ok_code(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    c = await ImapClient.connect(starttls(dovecot))
    before = c.capabilities
    sent = record_writes(c)
    await c.login(imap_user.username, imap_user.password)
    # Dovecot puts the post-login list in the tagged OK: no CAPABILITY round trip is needed.
    assert len(sent) == 1 and b"AUTHENTICATE" in sent[0]
    assert "AUTH=PLAIN" in before and "AUTH=PLAIN" not in c.capabilities  # replaced, not merged
    assert {"CONDSTORE", "QRESYNC", "MOVE"} <= c.capabilities
    await c.logout()


@pytest.mark.parametrize(
    ("login_ok", "asks"),
    [(b"OK [CAPABILITY IMAP4rev1 X-FROM-CODE] in", False), (b"OK logged in", True)],
)
async def test_capabilities_refreshed_after_login(login_ok: bytes, asks: bool) -> None:
    def reply(line: bytes) -> bytes | None:
        tag, _, rest = line.partition(b" ")
        if rest.startswith(b"LOGIN"):
            return tag + b" " + login_ok + b"\r\n"
        return None

    async with FakeImapServer(
        b"* OK [CAPABILITY IMAP4rev1] hi\r\n", capabilities="IMAP4rev1 X-ASKED", reply=reply
    ) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        async with await ImapClient.connect(endpoint, connect_timeout=2, command_timeout=2) as c:
            await c.login("user", "pw")
            commands = [line.split(b" ")[1] for line in fake.lines]
            assert commands == ([b"LOGIN", b"CAPABILITY"] if asks else [b"LOGIN"])
            assert c.capabilities == {"IMAP4REV1", "X-ASKED" if asks else "X-FROM-CODE"}


async def test_starttls_not_offered_fails_before_anything_is_sent() -> None:
    async with FakeImapServer(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] plain only\r\n") as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "starttls", allow_plaintext=True)
        with pytest.raises(CapabilityError, match="STARTTLS not offered") as info:
            await ImapClient.connect(endpoint, connect_timeout=2)
        assert info.value.capability == "STARTTLS"
        assert fake.lines == []  # the greeting had the capabilities: no command at all


async def test_cleartext_preauth_cannot_skip_starttls() -> None:
    # A man in the middle answering PREAUTH would otherwise keep the session in cleartext.
    async with FakeImapServer(b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] welcome\r\n") as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "starttls")
        with pytest.raises(CapabilityError, match="PREAUTH") as info:
            await ImapClient.connect(endpoint, connect_timeout=2)
        assert info.value.capability == "STARTTLS"
        assert fake.lines == []


async def test_data_injected_after_starttls_ok_is_refused() -> None:
    def reply(line: bytes) -> bytes | None:
        tag = line.split(b" ")[0]
        if line.endswith(b"STARTTLS"):
            # CVE-2011-0411: cleartext sent with the OK must not be read as if it came over TLS.
            return tag + b" OK begin TLS\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"
        return None

    greeting = b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n"
    async with FakeImapServer(greeting, reply=reply) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "starttls")
        with pytest.raises(ImapProtocolError, match="after STARTTLS"):
            await ImapClient.connect(endpoint, connect_timeout=2)


async def test_failure_after_starttls_closes_promptly(dovecot: DovecotServer) -> None:
    class FailsAfterTls(ImapClient):
        async def capability(self, *, timeout: float | None = None) -> frozenset[str]:
            if self.tls_active:
                raise ImapTimeout("simulated: no CAPABILITY answer over TLS")
            return await super().capability(timeout=timeout)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ImapTimeout, match="simulated"):
        await FailsAfterTls.connect(starttls(dovecot), connect_timeout=5)
    # The TLS channel is the one waited for, not the replaced plain one (which never closes).
    assert loop.time() - started < 0.9


async def test_wrong_port_for_the_security_fails_fast_and_clearly(dovecot: DovecotServer) -> None:
    # STARTTLS chosen, but the port expects a TLS handshake: it stays silent.
    tls_port = ImapEndpoint(dovecot.host, dovecot.tls_port, "starttls")
    with pytest.raises(GreetingTimeout, match="no IMAP greeting"):
        await ImapClient.connect(tls_port, connect_timeout=0.3)
    # Implicit TLS chosen, but the port greets in plaintext: the handshake fails at once.
    plain_port = ImapEndpoint(dovecot.host, dovecot.port, "tls", trusted_cert_pem=dovecot.cert_pem)
    with pytest.raises(TlsError) as info:
        await ImapClient.connect(plain_port, connect_timeout=5)
    assert not isinstance(info.value, CertificateNotTrusted)


# -- audit: timeouts and the IO edge -------------------------------------------------------------


async def test_tcp_connect_timeout_on_a_black_hole() -> None:
    with black_hole() as port:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ImapTimeout) as info:
            await ImapClient.connect(ImapEndpoint("127.0.0.1", port, "tls"), connect_timeout=0.3)
        assert not isinstance(info.value, GreetingTimeout)
        assert loop.time() - started < 1.5


async def test_tls_handshake_timeout() -> None:
    async with FakeImapServer(None) as fake:  # accepts, never answers the ClientHello
        endpoint = ImapEndpoint(fake.host, fake.port, "tls")
        with pytest.raises(ImapTimeout) as info:
            await ImapClient.connect(endpoint, connect_timeout=0.3)
        assert not isinstance(info.value, GreetingTimeout)


async def test_invalid_host_name_is_host_not_found() -> None:
    # The IDNA codec refuses a 64-character label with UnicodeError, before any lookup.
    endpoint = ImapEndpoint("a" * 64 + ".example", 993, "tls")
    with pytest.raises(HostNotFound, match="not a valid host name"):
        await ImapClient.connect(endpoint, connect_timeout=2)


@pytest.mark.parametrize(
    ("code", "reason"), [(62, "hostname"), (64, "hostname"), (10, "expired"), (18, "untrusted")]
)
def test_certificate_errors_keep_their_reason(code: int, reason: str) -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = code
    error.verify_message = "some reason"
    with pytest.raises(CertificateNotTrusted) as info, map_io_errors("h", 993):
        raise error
    assert info.value.reason == reason
    assert info.value.__cause__ is error


@pytest.mark.parametrize(
    ("foreign", "ours"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), HostNotFound),
        (ConnectionRefusedError(111, "refused"), ConnectionLost.__mro__[1]),
        (TimeoutError(), ImapTimeout),
        (ssl.SSLError(1, "[SSL] bad"), TlsError),
        (ConnectionResetError(104, "reset"), ConnectionLost),
        (OSError(113, "No route to host"), ConnectionLost.__mro__[1]),
    ],
)
def test_foreign_errors_are_mapped_once(foreign: BaseException, ours: type) -> None:
    with pytest.raises(ours) as info, map_io_errors("h", 993):
        raise foreign
    assert info.value.__cause__ is foreign


# -- audit: MOVE without MOVE and UIDPLUS --------------------------------------------------------


async def test_move_fallback_without_uidplus(dovecot_basic: DovecotServer) -> None:
    user = dovecot_basic.add_user()
    for i in range(4):
        dovecot_basic.deliver(user, message(f"nu{i}"))
    async with await logged_in(dovecot_basic, user) as c:
        c.capabilities = c.capabilities - {"UIDPLUS"}  # as on a server without RFC 4315
        await c.select("INBOX")
        sent = record_writes(c)
        await c.uid_move([1], "Archive")
        commands = [b" ".join(chunk.split(b" ")[1:3]).strip() for chunk in sent]
        assert commands == [b"UID SEARCH", b"UID COPY", b"UID STORE", b"EXPUNGE"]
        assert await c.uid_search("ALL") == [2, 3, 4]
        # Another message already flagged \Deleted: a plain EXPUNGE would take it too, so the
        # move is refused before anything changes...
        await c.uid_store([4], "+FLAGS.SILENT", ["\\Deleted"])
        sent.clear()
        with pytest.raises(CapabilityError, match="UIDs 4") as info:
            await c.uid_move([2], "Archive")
        assert info.value.capability == "UIDPLUS"
        assert not any(b"COPY" in chunk for chunk in sent)
        assert await c.uid_search("ALL") == [2, 3, 4]
        assert (await c.status("Archive")).values["MESSAGES"] == 1
        # ... unless the caller accepts that.
        await c.uid_move([2], "Archive", expunge_without_uidplus=True)
        assert await c.uid_search("ALL") == [3]
        assert (await c.status("Archive")).values["MESSAGES"] == 2


async def test_uid_expunge_needs_uidplus(client: ImapClient) -> None:
    await client.select("INBOX")
    client.capabilities = client.capabilities - {"UIDPLUS"}
    with pytest.raises(CapabilityError) as info:
        await client.uid_expunge([1])
    assert info.value.capability == "UIDPLUS"


# -- audit: IDLE and SASL ------------------------------------------------------------------------


async def test_idle_iteration_ends_at_renew_after(client: ImapClient) -> None:
    await client.select("INBOX")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.idle(renew_after=0.3) as idle:
        seen = [r async for r in idle]  # no mail comes: ends at the deadline, never hangs
        assert idle.expired
        assert await idle.next(timeout=5) is None  # past the deadline: no wait at all
    assert seen == []
    assert loop.time() - started < 2
    await client.noop()


async def test_idle_without_continuation_times_out_and_drops_the_connection() -> None:
    async with FakeImapServer(GREETING) as fake:  # never answers IDLE
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        c = await ImapClient.connect(endpoint, connect_timeout=2, command_timeout=0.3)
        with pytest.raises(ImapTimeout):
            async with c.idle():
                pass
        # The server may be idling now: a next command would be read as a broken DONE.
        with pytest.raises(ConnectionLost):
            await c.noop()


async def test_failing_sasl_responder_cancels_the_exchange(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    c = await ImapClient.connect(starttls(dovecot))
    c.capabilities = c.capabilities - {"SASL-IR"}  # so the responder is asked after "+"
    sent = record_writes(c)

    def broken(challenge: bytes) -> bytes:
        raise RuntimeError("token provider unavailable")

    with pytest.raises(RuntimeError, match="token provider"):
        await c.authenticate("PLAIN", broken)
    assert sent[-1] == b"*\r\n"  # RFC 3501 §6.2.2 cancellation
    # The server's BAD for the cancelled exchange is skipped; the session goes on.
    await c.login(imap_user.username, imap_user.password)
    assert c.authenticated
    await c.logout()


async def test_xoauth2_seam_error_challenge_gets_an_empty_answer() -> None:
    # RFC-less but universal (Google, Microsoft): on a bad token the server sends a JSON error
    # as a challenge, the client answers empty, and the server ends with a tagged NO.
    tags: list[bytes] = []

    def reply(line: bytes) -> bytes | None:
        if b"AUTHENTICATE XOAUTH2" in line:
            tags.append(line.split(b" ")[0])
            return b"+ eyJzdGF0dXMiOiI0MDAifQ==\r\n"
        if line == b"" and tags:
            return tags[0] + b" NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
        return None

    greeting = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hi\r\n"
    async with FakeImapServer(greeting, reply=reply) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        c = await ImapClient.connect(endpoint, connect_timeout=2, command_timeout=2)
        token = b"user=u@example.test\x01auth=Bearer expired\x01\x01"
        with pytest.raises(AuthenticationFailed) as info:
            await c.authenticate("XOAUTH2", token, username="u@example.test")
        assert info.value.server_text == "Invalid credentials"
        assert fake.lines[-1] == b""  # the empty answer to the error challenge
        await c.aclose()


async def test_enable_utf8_accept_sends_utf8_mailbox_names() -> None:
    def reply(line: bytes) -> bytes | None:
        tag, _, rest = line.partition(b" ")
        if rest.startswith(b"ENABLE"):
            return b"* ENABLED UTF8=ACCEPT\r\n" + tag + b" OK enabled\r\n"
        if rest.startswith(b"CREATE"):
            return tag + b" OK created\r\n"
        return None

    greeting = b"* OK [CAPABILITY IMAP4rev1 ENABLE UTF8=ACCEPT LITERAL+] hi\r\n"
    async with FakeImapServer(greeting, reply=reply) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        c = await ImapClient.connect(endpoint, connect_timeout=2, command_timeout=2)
        assert await c.enable() == {"UTF8=ACCEPT"}
        assert fake.lines[-1].endswith(b"ENABLE UTF8=ACCEPT")  # only what is offered
        await c.create("Café")
        assert b"Caf\xc3\xa9" in fake.lines[-1]  # RFC 6855 §3: UTF-8, not modified UTF-7
        await c.aclose()


async def test_append_to_a_missing_mailbox_says_trycreate(client: ImapClient) -> None:
    with pytest.raises(ImapCommandError) as info:
        await client.append("Nowhere", message("lost"))
    assert info.value.code == "TRYCREATE"
    assert (await client.status("INBOX")).values["MESSAGES"] == 0  # the session goes on


# -- one task at a time ---------------------------------------------------------------------------


async def test_a_second_task_is_refused_while_a_command_is_in_flight(
    client: ImapClient, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    # Two NOOPs at once: one ran, the other was refused before anything was sent (it used to
    # read the first one's reply and fail on its tag, while the first hung until its timeout).
    results = await asyncio.gather(client.noop(), client.noop(), return_exceptions=True)
    assert results.count(None) == 1
    [refused] = [r for r in results if r is not None]
    assert isinstance(refused, RuntimeError) and "another task" in str(refused)
    await client.noop()  # the session is intact

    for i in range(3):
        dovecot.deliver(imap_user, message(f"c{i}", b"x" * 2000 + b"\r\n"))
    await client.select("INBOX")
    first = asyncio.Event()
    go_on = asyncio.Event()

    async def reader(stop_after: int | None) -> list[bytes]:
        bodies: list[bytes] = []
        async for response in client.uid_fetch("1:3", ["UID", "BODY.PEEK[]"]):
            bodies.append(response.sections.get("") or b"")
            if len(bodies) == 1:
                first.set()
                await go_on.wait()
            if stop_after is not None and len(bodies) == stop_after:
                break
        return bodies

    # A fetch in task A, commands in task B: refused; A gets all of its data.
    task = asyncio.create_task(reader(None))
    await first.wait()
    with pytest.raises(RuntimeError, match="UID FETCH"):
        await client.noop()
    with pytest.raises(RuntimeError):
        await client.uid_fetch_list("1", ["UID"])
    with pytest.raises(RuntimeError):
        await client.logout()
    go_on.set()
    bodies = await task
    assert len(bodies) == 3 and all(b"Subject: c" in b for b in bodies)

    # A stream abandoned by a task that is still running is still its own.
    first.clear()
    go_on.clear()
    hold = asyncio.Event()

    async def abandon_and_stay() -> None:
        await reader(1)
        await hold.wait()
        assert await client.uid_search("ALL") == [1, 2, 3]  # its own stream: drained first

    task2 = asyncio.create_task(abandon_and_stay())
    await first.wait()
    go_on.set()
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="UID FETCH"):
        await client.noop()
    hold.set()
    await task2

    # A stream abandoned by a task that has ended is drained by the next command.
    first.clear()
    go_on.set()
    assert len(await asyncio.create_task(reader(1))) == 1
    assert await client.uid_search("ALL") == [1, 2, 3]


async def test_another_task_is_refused_during_idle(client: ImapClient) -> None:
    await client.select("INBOX")
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def idler() -> None:
        async with client.idle() as session:
            entered.set()
            while not leave.is_set():
                await session.next(timeout=0.05)

    task = asyncio.create_task(idler())
    await entered.wait()
    with pytest.raises(RuntimeError, match="IDLE"):
        await client.noop()
    leave.set()
    await task
    await client.noop()


async def test_closing_wakes_the_task_waiting_for_a_reply() -> None:
    # Two tasks used to both wait for bytes, and the channel woke only the last one: the
    # first waited for its own timeout even after the close.
    async with FakeImapServer(GREETING) as fake:  # never answers NOOP
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=10)
        first = asyncio.create_task(c.noop())
        second = asyncio.create_task(c.noop())
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await c.aclose()
        async with asyncio.timeout(1):
            results = await asyncio.gather(first, second, return_exceptions=True)
        assert loop.time() - started < 1
        assert isinstance(results[0], ConnectionLost)
        assert isinstance(results[1], RuntimeError)  # refused, never sent
        assert [line.split(b" ")[1] for line in fake.lines] == [b"NOOP"]


# -- IDLE: cancel, wrong tag, unexpected "+" ------------------------------------------------------


def _idle_reply(
    idle_answer: bytes | list[bytes | float] = b"+ idling\r\n",
    done_answer: Callable[[bytes], bytes | None] | None = None,
) -> Callable[[bytes], bytes | list[bytes | float] | None]:
    idle_tags: list[bytes] = []

    def reply(line: bytes) -> bytes | list[bytes | float] | None:
        tag, _, rest = line.partition(b" ")
        if rest == b"IDLE":
            idle_tags.append(tag)
            return idle_answer
        if line == b"DONE" and done_answer is not None:
            return done_answer(idle_tags[-1])
        if rest == b"NOOP":
            return tag + b" OK noop\r\n"
        return None

    return reply


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_cancel_during_an_idle_wait_drops_the_connection_at_once(how: str) -> None:
    # DONE's OK never comes: the cancel used to wait command_timeout for it and turn into
    # ImapTimeout. Now nothing is sent, the connection is dropped and the cancel goes on.
    async with FakeImapServer(GREETING, reply=_idle_reply()) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=10)
        entered = asyncio.Event()

        async def idler() -> None:
            async with c.idle() as session:
                entered.set()
                await session.next()

        loop = asyncio.get_running_loop()
        if how == "cancel":
            task = asyncio.create_task(idler())
            await entered.wait()
            started = loop.time()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await idler()
            started = loop.time() - 0.2
        assert loop.time() - started < 1
        with pytest.raises(ConnectionLost, match="IDLE"):
            await c.noop()
        await asyncio.sleep(0.05)
        assert not any(line in (b"DONE", b"C3 NOOP") for line in fake.lines)
        await c.aclose()


async def test_wrong_tag_during_an_idle_wait_drops_the_connection() -> None:
    reply = _idle_reply([b"+ idling\r\n", 0.05, b"X9 OK not yours\r\n"])
    async with FakeImapServer(GREETING, reply=reply) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=2)
        with pytest.raises(ImapProtocolError, match="unexpected tag"):
            async with c.idle() as session:
                await session.next(timeout=1)
        # The server may still be idling: a next command would be its broken DONE.
        with pytest.raises(ConnectionLost, match="IDLE"):
            await c.noop()
        await asyncio.sleep(0.05)
        assert [line.split(b" ")[-1] for line in fake.lines] == [b"IDLE"]
        await c.aclose()


def _fetch_then_plus(line: bytes) -> bytes | None:
    tag, _, rest = line.partition(b" ")
    if rest.startswith(b"SELECT"):
        return b"* 2 EXISTS\r\n" + tag + b" OK [READ-WRITE] in\r\n"
    if rest.startswith(b"UID FETCH"):
        return b"* 1 FETCH (UID 1)\r\n+ more?\r\n* 2 FETCH (UID 2)\r\n" + tag + b" OK done\r\n"
    if rest == b"NOOP":
        return b"+ more?\r\n" + tag + b" OK noop\r\n"
    return None


@pytest.mark.parametrize("where", ["simple", "fetch", "done", "idle-wait"])
async def test_unexpected_continuation_drops_the_connection(where: str) -> None:
    replies = {
        "simple": _fetch_then_plus,
        "fetch": _fetch_then_plus,
        "done": _idle_reply(done_answer=lambda tag: b"+ again\r\n" + tag + b" OK done\r\n"),
        "idle-wait": _idle_reply([b"+ idling\r\n", 0.05, b"+ again\r\n"]),
    }
    async with FakeImapServer(GREETING, reply=replies[where]) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=2)
        with pytest.raises(ImapProtocolError, match="continuation"):
            if where == "simple":
                await c.noop()
            elif where == "fetch":
                await c.select("INBOX")
                await c.uid_fetch_list("1:2", ["UID"])
            else:
                async with c.idle() as session:
                    await session.next(timeout=1)
        with pytest.raises(ConnectionLost):
            await c.noop()
        assert c.drain_unsolicited() == []
        if where == "idle-wait":
            await asyncio.sleep(0.05)
            assert b"DONE" not in fake.lines
        await c.aclose()


# -- LOGOUT with a half-read fetch; calls on a closed client --------------------------------------


@pytest.mark.parametrize("how", ["logout", "async-with"])
async def test_logout_with_a_half_read_fetch_closes_without_draining(how: str) -> None:
    # The rest of the reply is 3 s away (longer than command_timeout): LOGOUT used to drain
    # it first, waiting up to command_timeout and downloading the remainder.
    script: list[bytes | float] = [
        b"* 1 FETCH (UID 1 BODY[] {5}\r\nfirst)\r\n",
        3.0,
        b"* 2 FETCH (UID 2 BODY[] {6}\r\nsecond)\r\n",
    ]
    async with FakeImapServer(GREETING, reply=_answers(script)) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=2)
        await c.select("INBOX")
        sent = record_writes(c)
        loop = asyncio.get_running_loop()
        if how == "logout":
            stream = c.uid_fetch("1:2", ["UID", "BODY.PEEK[]"])
            async for response in stream:
                assert response.uid == 1
                break
            started = loop.time()
            await c.logout()
        else:
            async with c:
                stream = c.uid_fetch("1:2", ["UID", "BODY.PEEK[]"])
                async for response in stream:
                    assert response.uid == 1
                    break
                started = loop.time()
        assert loop.time() - started < 0.5
        assert not any(b"LOGOUT" in data for data in sent)
        with pytest.raises(ConnectionLost):
            await stream.__anext__()
        with pytest.raises(ConnectionLost):
            await c.noop()


async def test_every_call_on_a_closed_client_says_connection_lost() -> None:
    # SELECT times out (the fake never answers it): the connection is dropped with
    # selected=None. Local checks (a selected mailbox, ENABLE/IDLE offered) must not answer
    # first: every call says why the connection is gone.
    async with FakeImapServer(GREETING) as fake:
        c = await ImapClient.connect(fake_endpoint(fake), connect_timeout=2, command_timeout=0.2)
        with pytest.raises(ImapTimeout):
            await c.select("INBOX")
        assert c.selected is None
        calls: list[Callable[[], object]] = [
            lambda: c.uid_search("ALL"),
            lambda: c.uid_store("1", "+FLAGS", ["\\Seen"]),
            lambda: c.uid_fetch("1", ["UID"]),
            lambda: c.uid_fetch_list("1", ["UID"]),
            lambda: c.uid_copy("1", "X"),
            lambda: c.uid_move("1", "X"),
            lambda: c.uid_expunge("1"),
            lambda: c.expunge(),
            lambda: c.unselect(),
            lambda: c.enable("QRESYNC"),
            lambda: c.idle(),
            lambda: c.id(),
            lambda: c.starttls(),
            lambda: c.login("u", "p"),
            lambda: c.authenticate("XOAUTH2", b"x"),
            lambda: c.capability(),
            lambda: c.noop(),
            lambda: c.list(),
            lambda: c.list_folders(),
            lambda: c.create("X"),
            lambda: c.status("INBOX"),
            lambda: c.select("INBOX", qresync=QresyncParams(1, 1)),
            lambda: c.examine("INBOX", condstore=True),
            lambda: c.append("INBOX", b"x"),
        ]
        for call in calls:
            with pytest.raises(ConnectionLost, match="SELECT timed out"):
                result = call()
                if asyncio.iscoroutine(result):
                    await result
        await c.aclose()
