"""The private Postfix of the tests: submission with STARTTLS and SASL through the test Dovecot,
delivery by LMTP into it, nothing relayed elsewhere, and no process left after stop."""

from __future__ import annotations

import smtplib
import ssl
import time

import pytest

from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.postfix import PostfixServer, _group_alive


def _inbox_count(dovecot: DovecotServer, user: ImapUser) -> int:
    conn = dovecot.imaplib_client(user)
    try:
        typ, data = conn.select("INBOX", readonly=True)
        assert typ == "OK"
        return int(data[0] or b"0")
    finally:
        conn.logout()


def _smtp(postfix: PostfixServer) -> smtplib.SMTP:
    client = smtplib.SMTP(postfix.host, postfix.port, timeout=10)
    client.ehlo()
    client.starttls(context=ssl.create_default_context(cadata=postfix.cert_pem))
    client.ehlo()
    return client


def test_submission_needs_tls_then_auth_and_delivers_by_lmtp(
    postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    alice, bob = dovecot.add_user(), dovecot.add_user()
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as plain:
        plain.ehlo()
        assert plain.has_extn("starttls")
        assert not plain.has_extn("auth")  # AUTH only after STARTTLS
        assert plain.has_extn("size")
        assert int(plain.esmtp_features["size"]) == postfix.message_size_limit
    with _smtp(postfix) as client:
        assert client.has_extn("auth")
        # Not signed in: nothing is relayed.
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail(alice.address, [bob.address], b"Subject: x\r\n\r\nx\r\n")
    with _smtp(postfix) as client, pytest.raises(smtplib.SMTPAuthenticationError):
        client.login(alice.username, "wrong password")
    with _smtp(postfix) as client:
        client.login(alice.username, alice.password)
        raw = b"From: <%s>\r\nTo: <%s>\r\nSubject: hi\r\n\r\nbody\r\n" % (
            alice.address.encode(),
            bob.address.encode(),
        )
        assert client.sendmail(alice.address, [bob.address], raw) == {}
    postfix.wait_queue_empty()
    assert _inbox_count(dovecot, bob) == 1
    assert _inbox_count(dovecot, alice) == 0


def test_other_domains_bounce_to_the_sender(postfix: PostfixServer, dovecot: DovecotServer) -> None:
    alice = dovecot.add_user()
    with _smtp(postfix) as client:
        client.login(alice.username, alice.password)
        client.sendmail(alice.address, ["someone@elsewhere.invalid"], b"Subject: x\r\n\r\nx\r\n")
    postfix.wait_queue_empty()
    deadline = time.monotonic() + 5
    while _inbox_count(dovecot, alice) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _inbox_count(dovecot, alice) == 1  # the bounce, delivered back by LMTP


def test_starts_fast_and_stops_without_leaving_a_process(dovecot: DovecotServer) -> None:
    server = PostfixServer(dovecot)
    started = time.monotonic()
    server.start()
    assert time.monotonic() - started < 3.0
    assert server.running
    assert server._proc is not None
    group = server._proc.pid
    root = server.root
    assert root is not None and root.exists()
    server.stop()
    assert not _group_alive(group)
    assert not root.exists()
    server.stop()  # idempotent


def test_the_refused_and_deferred_recipients(
    postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    alice = dovecot.add_user()
    for address, code in ((postfix.REFUSED, 554), (postfix.DEFERRED, 450)):
        with _smtp(postfix) as client:
            client.login(alice.username, alice.password)
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail(alice.address, [address], b"Subject: x\r\n\r\nx\r\n")
            assert refused.value.recipients[address][0] == code
