"""check_connection: every failure is a real case with a specific message for a person."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from correspond.imap.client import ImapClient, ImapEndpoint
from correspond.sync.connection_test import check_connection
from correspond.testing.dovecot import DovecotServer, ImapUser, _make_certificate
from correspond.testing.net import FakeImapServer, black_hole, connect_from, free_port


async def test_success_lists_folders(dovecot: DovecotServer, imap_user: ImapUser) -> None:
    endpoint = ImapEndpoint(
        dovecot.host, dovecot.tls_port, "tls", trusted_cert_pem=dovecot.cert_pem
    )
    report = await check_connection(endpoint, imap_user.username, imap_user.password, timeout=10)
    assert report.ok, report.message
    assert report.problem is None
    assert "IMAP4REV1" in report.capabilities and "IDLE" in report.capabilities
    assert {f.name for f in report.folders} == {
        "INBOX",
        "Sent",
        "Drafts",
        "Trash",
        "Archive",
        "Junk",
    }
    assert imap_user.username in report.message


async def test_unresolvable_name() -> None:
    endpoint = ImapEndpoint("no-such-host.invalid", 993, "tls")
    report = await check_connection(endpoint, "u", "p", timeout=10)
    assert (report.ok, report.problem) == (False, "dns")
    assert report.message == "no-such-host.invalid does not resolve: check the server name."


async def test_refused() -> None:
    port = free_port()  # nothing listens there
    report = await check_connection(ImapEndpoint("127.0.0.1", port, "tls"), "u", "p", timeout=5)
    assert report.problem == "refused"
    assert report.message == (
        f"Connection refused by 127.0.0.1:{port}: check the port and that IMAP is enabled "
        "on the server."
    )


async def test_timeout_on_a_black_hole() -> None:
    with black_hole() as port:  # TCP connects never complete, as behind a dropping firewall
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = await check_connection(
            ImapEndpoint("127.0.0.1", port, "tls"), "u", "p", timeout=0.3
        )
    assert report.problem == "timeout"
    assert report.message == (
        f"127.0.0.1:{port} did not answer within 0.3 s: check the server name and port, and "
        "that no firewall blocks the connection."
    )
    assert loop.time() - started < 1.5


async def test_timeout_when_the_server_never_speaks() -> None:
    async with FakeImapServer(None) as fake:  # accepts the connection, never sends a byte
        endpoint = ImapEndpoint(fake.host, fake.port, "starttls")
        report = await check_connection(endpoint, "u", "p", timeout=0.3)
    assert report.problem == "timeout"
    assert report.message.startswith(
        f"127.0.0.1:{fake.port} accepted the connection but sent no IMAP greeting within 0.3 s"
    )


async def test_starttls_chosen_on_the_implicit_tls_port(dovecot: DovecotServer) -> None:
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "starttls")
    report = await check_connection(endpoint, "u", "p", timeout=0.5)
    assert report.problem == "wrong_security"
    assert report.message == (
        f"127.0.0.1:{dovecot.tls_port} expects implicit TLS, not starttls: set the security to "
        "tls (or use the STARTTLS port, usually 143)."
    )


async def test_name_lookup_without_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def no_dns(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(loop, "getaddrinfo", no_dns)
    report = await check_connection(ImapEndpoint("imap.example.com", 993, "tls"), "u", "p")
    assert report.problem == "dns"
    assert report.message.startswith("imap.example.com could not be looked up")


async def test_invalid_host_name() -> None:
    host = "x" * 64 + ".example"
    report = await check_connection(ImapEndpoint(host, 993, "tls"), "u", "p", timeout=5)
    assert report.problem == "dns"
    assert report.message == f"{host} is not a valid host name: check the server name."


async def test_untrusted_certificate_and_the_opt_in(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    plain = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls")
    report = await check_connection(plain, imap_user.username, imap_user.password, timeout=10)
    assert report.problem == "tls_untrusted"
    # Said once, in OpenSSL's words ("self-signed certificate"; "self signed" before 3.0), not
    # "not trusted (self-signed?): ... is not trusted: self-signed certificate".
    assert report.message.startswith(
        f"The certificate of 127.0.0.1:{dovecot.tls_port} is not trusted (self"
    )
    assert report.message.count("not trusted") == 1
    assert report.message.count("self") == 1
    assert "correspond account update NAME --trust-cert FILE" in report.message
    trusted = ImapEndpoint(
        dovecot.host, dovecot.tls_port, "tls", trusted_cert_pem=dovecot.cert_path.read_text()
    )
    report = await check_connection(trusted, imap_user.username, imap_user.password, timeout=10)
    assert report.ok, report.message


async def test_tls_chosen_on_the_plaintext_port(dovecot: DovecotServer) -> None:
    # Implicit TLS against the STARTTLS port: the server's plaintext greeting is not TLS.
    endpoint = ImapEndpoint(dovecot.host, dovecot.port, "tls", trusted_cert_pem=dovecot.cert_pem)
    report = await check_connection(endpoint, "u", "p", timeout=10)
    assert report.problem == "wrong_security"
    assert report.message == (
        f"127.0.0.1:{dovecot.port} speaks plaintext IMAP, not implicit TLS: set the security "
        "to starttls (or use the implicit TLS port, usually 993)."
    )


async def test_tls_failure_on_a_port_that_is_not_imap() -> None:
    # A TLS handshake answered with non-TLS bytes that are not an IMAP greeting either.
    async with FakeImapServer(b"220 smtp.example.test ESMTP\r\n") as fake:
        report = await check_connection(ImapEndpoint(fake.host, fake.port, "tls"), "u", "p")
    assert report.problem == "tls_failed"
    assert "993 is usually implicit TLS, 143 STARTTLS" in report.message


async def test_pinned_certificate_that_changed(dovecot: DovecotServer, tmp_path: Path) -> None:
    _, _, other_pem = _make_certificate(tmp_path)
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", trusted_cert_pem=other_pem)
    report = await check_connection(endpoint, "u", "p", timeout=10)
    assert report.problem == "tls_untrusted"
    assert "other than the one you chose to trust" in report.message
    assert "--trust-cert FILE" in report.message


async def test_unusable_trusted_certificate_is_a_settings_problem(dovecot: DovecotServer) -> None:
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", trusted_cert_pem="garbage")
    report = await check_connection(endpoint, "u", "p", timeout=10)
    assert report.problem == "config"
    assert report.message.startswith("The account settings cannot be used: the trusted cert")


async def test_starttls_not_offered() -> None:
    # A fake: every real server in reach offers STARTTLS, and one that does not is the case here.
    greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] no tls here\r\n"
    async with FakeImapServer(greeting) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "starttls")
        report = await check_connection(endpoint, "u", "secret-pw", timeout=5)
        sent = b"\n".join(fake.lines)
    assert report.problem == "starttls_missing"
    assert report.message.startswith(f"127.0.0.1:{fake.port} does not offer STARTTLS")
    assert b"secret-pw" not in sent  # nothing was sent in the clear


async def test_wrong_password_quotes_the_server(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    endpoint = ImapEndpoint(
        dovecot.host, dovecot.port, "starttls", trusted_cert_pem=dovecot.cert_pem
    )
    report = await check_connection(endpoint, imap_user.username, "not-the-password", timeout=10)
    assert report.problem == "auth_failed"
    assert report.message == (
        f'Authentication failed for {imap_user.username}: the server said "Authentication '
        'failed.". Check the user name and password (some providers require an app password).'
    )
    assert "not-the-password" not in report.message
    assert "AUTH=PLAIN" in report.capabilities


@pytest.mark.parametrize(
    ("greeting", "capabilities"),
    [
        # Capabilities in the greeting, without IMAP4rev1.
        (b"* OK [CAPABILITY XPOP3 STARTTLS] hello\r\n", "XPOP3"),
        # No code in the greeting: the client asks CAPABILITY, which lacks it too.
        (b"* OK hello\r\n", "IMAP4 STARTTLS"),
    ],
)
async def test_server_lacks_imap4rev1(greeting: bytes, capabilities: str) -> None:
    # A fake: no real server at hand speaks IMAP without IMAP4rev1.
    async with FakeImapServer(greeting, capabilities=capabilities) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "starttls")
        report = await check_connection(endpoint, "u", "p", timeout=5)
    assert report.problem == "not_imap4rev1"
    assert "does not speak IMAP4rev1" in report.message


async def test_plaintext_is_refused_by_default(dovecot: DovecotServer) -> None:
    endpoint = ImapEndpoint(dovecot.host, dovecot.port, "plain")
    report = await check_connection(endpoint, "u", "p", timeout=5)
    assert report.problem == "plaintext_refused"
    assert "plaintext IMAP is refused" in report.message


async def test_login_disabled_without_tls(dovecot: DovecotServer, imap_user: ImapUser) -> None:
    # Plaintext explicitly allowed, but the server (seen from another address) demands TLS.
    endpoint = ImapEndpoint(dovecot.host, dovecot.port, "plain", allow_plaintext=True)
    with connect_from():
        report = await check_connection(endpoint, imap_user.username, imap_user.password, timeout=5)
    assert report.problem == "login_unavailable"
    assert report.message == (
        f"127.0.0.1:{dovecot.port} refuses to log in on this connection (LOGINDISABLED, usually "
        "because it is not encrypted): set the security to starttls or tls."
    )


async def test_cancelled_test_leaves_no_connection(dovecot: DovecotServer) -> None:
    # The fake answers the greeting and then stalls: the test is cancelled mid-login.
    greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n"
    async with FakeImapServer(greeting) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        task = asyncio.create_task(check_connection(endpoint, "u", "p", timeout=30))
        while not fake.lines:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The client side is gone: the fake's reader sees EOF and its handler ends.
        await asyncio.sleep(0.05)
        assert all(w.is_closing() for w in fake._writers)


def _plain_fake_reply(list_answer: bytes) -> Callable[[bytes], bytes | None]:
    """LOGIN succeeds; LIST gets ``list_answer`` before its tagged OK."""

    def reply(line: bytes) -> bytes | None:
        tag, _, rest = line.partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        if command == b"LOGIN":
            return tag + b" OK [CAPABILITY IMAP4rev1] logged in\r\n"
        if command == b"LIST":
            return list_answer + tag + b" OK done\r\n"
        return None

    return reply


async def test_unparsable_reply_after_a_valid_greeting_is_a_bug_not_the_port() -> None:
    # A fake: a reply Correspond cannot parse must come from somewhere, and Dovecot's now parse.
    # The escape sequence stands for anything hostile: it must not reach the terminal.
    garbage = b'* LIST () "/" "Odd\x1b[31m\r\n'
    greeting = b"* OK [CAPABILITY IMAP4rev1] hi\r\n"
    async with FakeImapServer(greeting, reply=_plain_fake_reply(garbage)) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        report = await check_connection(endpoint, "u", "p", timeout=5)
    assert (report.ok, report.problem) == (False, "protocol")
    assert report.message == (
        f"127.0.0.1:{fake.port} is an IMAP server but sent a reply that Correspond could not "
        'parse (\'* LIST () "/" "Odd?[31m\': unterminated quoted string in response). The '
        "account settings look right: this is a bug in Correspond, worth reporting with this "
        "message."
    )
    assert "check the port" not in report.message
    assert "IMAP4REV1" in report.capabilities


async def test_unparsable_capability_reply_during_connect_is_a_bug_not_the_port() -> None:
    # The greeting is IMAP; the CAPABILITY answer that follows it (still inside connect) is not.
    async with FakeImapServer(b"* OK hello\r\n", capabilities="IMAP4rev1 (") as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        report = await check_connection(endpoint, "u", "p", timeout=5)
    assert report.problem == "protocol"
    assert "could not parse" in report.message and "bug in Correspond" in report.message
    assert "check the port" not in report.message


@pytest.mark.parametrize(
    "greeting",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",  # not IMAP at all
        b"+OK POP3 server ready\r\n",  # parses (as a continuation) but is no greeting
    ],
)
async def test_greeting_that_is_not_imap_says_check_the_port(greeting: bytes) -> None:
    async with FakeImapServer(greeting) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        report = await check_connection(endpoint, "u", "p", timeout=5)
    assert report.problem == "protocol"
    assert report.message.startswith(f"127.0.0.1:{fake.port} answered with something that is not")
    assert report.message.endswith(": check the port.")


async def test_folder_names_with_unbalanced_brackets(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    # Dovecot lists all of these unquoted, e.g. * LIST (\Noselect \HasChildren) "/" [red]Alert[
    # for the parent of "[red]Alert[/red]": "[" is an ATOM-CHAR and "]" an ASTRING-CHAR.
    endpoint = ImapEndpoint(
        dovecot.host, dovecot.port, "starttls", trusted_cert_pem=dovecot.cert_pem
    )
    created = ["[red]Alert[/red]", "x]y", "a[b", "]start", "end["]
    async with await ImapClient.connect(endpoint, connect_timeout=10, command_timeout=20) as client:
        await client.login(imap_user.username, imap_user.password)
        for name in created:
            await client.create(name)
        listed = {f.name: f for f in await client.list_folders()}
        assert set(created) | {"[red]Alert["} <= set(listed)
        for name in created:
            status = await client.status(listed[name].name_raw)
            assert (status.name, status.values["MESSAGES"]) == (name, 0)
    report = await check_connection(endpoint, imap_user.username, imap_user.password, timeout=10)
    assert report.ok, report.message
    assert set(created) | {"[red]Alert["} <= {f.name for f in report.folders}


async def test_starttls_injection_is_named_as_such() -> None:
    """Cleartext sent with the STARTTLS OK (CVE-2011-0411 class) is called what it is, not a
    parse failure and not a wrong port."""

    def reply(line: bytes) -> bytes | None:
        if line.endswith(b"STARTTLS"):
            return line.split(b" ")[0] + b" OK begin TLS\r\n* CAPABILITY IMAP4rev1\r\n"
        return None

    greeting = b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n"
    async with FakeImapServer(greeting, reply=reply) as fake:
        report = await check_connection(
            ImapEndpoint(fake.host, fake.port, "starttls"), "u", "p", timeout=3
        )
    assert report.problem == "tls_failed"
    assert "after STARTTLS" in report.message and "injected" in report.message
    assert "check the port" not in report.message
    assert not any(line.split(b" ")[1:2] == [b"LOGIN"] for line in fake.lines)
