"""check_connection: every failure is a real case with a specific message for a person."""

from __future__ import annotations

import pytest

from correspond.imap.client import ImapEndpoint
from correspond.sync.connection_test import check_connection
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.net import FakeImapServer, free_port


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


async def test_timeout_when_the_server_never_speaks() -> None:
    async with FakeImapServer(None) as fake:  # accepts the connection, never sends a byte
        endpoint = ImapEndpoint(fake.host, fake.port, "starttls")
        report = await check_connection(endpoint, "u", "p", timeout=0.5)
    assert report.problem == "timeout"
    assert report.message.startswith(f"127.0.0.1:{fake.port} did not answer within 0.5 s")


async def test_untrusted_certificate_and_the_opt_in(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    plain = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls")
    report = await check_connection(plain, imap_user.username, imap_user.password, timeout=10)
    assert report.problem == "tls_untrusted"
    assert "self-signed" in report.message
    assert "correspond account update NAME --trust-cert FILE" in report.message
    trusted = ImapEndpoint(
        dovecot.host, dovecot.tls_port, "tls", trusted_cert_pem=dovecot.cert_path.read_text()
    )
    report = await check_connection(trusted, imap_user.username, imap_user.password, timeout=10)
    assert report.ok, report.message


async def test_tls_to_a_plain_port_fails_the_handshake(dovecot: DovecotServer) -> None:
    # Implicit TLS against the STARTTLS port: the server's plaintext greeting is not TLS.
    endpoint = ImapEndpoint(dovecot.host, dovecot.port, "tls", trusted_cert_pem=dovecot.cert_pem)
    report = await check_connection(endpoint, "u", "p", timeout=10)
    assert report.problem == "tls_failed"
    assert "993 is usually implicit TLS, 143 STARTTLS" in report.message


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
    assert report.message == "Authentication failed: the server said: Authentication failed."
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
