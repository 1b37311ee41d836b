"""The private Dovecot fixture itself: ports, users, delivery, variants, clean shutdown."""

from __future__ import annotations

import imaplib
import os
import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from correspond.testing.dovecot import DovecotServer, DovecotStartError, dovecot_binary

pytestmark = pytest.mark.dovecot


def _capabilities(server: DovecotServer, username: str, password: str) -> set[str]:
    conn = imaplib.IMAP4(server.host, server.port, timeout=10)
    try:
        conn.starttls(ssl_context=server.ssl_context())
        conn.login(username, password)
        typ, data = conn.capability()
        assert typ == "OK"
        return {c.upper() for c in data[0].decode().split()}
    finally:
        conn.logout()


def test_ports_accept_and_tls_uses_the_generated_certificate(dovecot: DovecotServer) -> None:
    for port in (dovecot.port, dovecot.tls_port, dovecot.lmtp_port):
        with socket.create_connection((dovecot.host, port), timeout=5):
            pass
    assert dovecot.cert_path.read_text() == dovecot.cert_pem
    # Implicit TLS verifies against exactly this certificate, host name included.
    with (
        socket.create_connection((dovecot.host, dovecot.tls_port), timeout=5) as raw,
        dovecot.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(100).startswith(b"* OK")
    # ... and the system store does not trust it.
    with (
        socket.create_connection((dovecot.host, dovecot.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_everything_lives_in_its_own_folder_on_loopback(dovecot: DovecotServer) -> None:
    root = dovecot.root
    assert root is not None
    conf = dovecot.config_path.read_text()
    assert dovecot.config_path.is_relative_to(root)
    for key in ("base_dir", "state_dir", "log_path"):
        found = re.search(rf"^{key} = (.+)$", conf, re.MULTILINE)
        assert found is not None and Path(found.group(1)).is_relative_to(root), key
    # listen plus the imap, imaps and lmtp listeners: loopback only, on high ports.
    assert re.findall(r"^\s*(?:listen|address) = (.+)$", conf, re.MULTILINE) == ["127.0.0.1"] * 5
    assert min(dovecot.port, dovecot.tls_port, dovecot.lmtp_port) > 1024
    user = dovecot.add_user()
    dovecot.deliver(user, b"Subject: where\r\n\r\nhere\r\n")
    maildir = dovecot.maildir(user)
    assert maildir.is_relative_to(root)
    assert len(list((maildir / "new").iterdir())) == 1


def test_fresh_users_log_in_and_have_special_use_folders(dovecot: DovecotServer) -> None:
    users = [dovecot.add_user() for _ in range(3)]
    assert len({u.username for u in users}) == 3
    named = dovecot.add_user("alice-fixture", "s3cret-pw")  # appended while running
    assert "s3cret-pw" not in repr(named)
    for user in [*users, named]:
        conn = dovecot.imaplib_client(user)
        typ, data = conn.list()
        conn.logout()
        assert typ == "OK"
        listing = b"\n".join(data)
        for role in (b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Archive", b"\\Junk"):
            assert role in listing


def test_many_users_beyond_the_pool(dovecot: DovecotServer) -> None:
    # More users than the pool written at start: the refill must be visible to Dovecot.
    users = [dovecot.add_user() for _ in range(120)]
    conn = dovecot.imaplib_client(users[-1])
    conn.logout()


def test_deliver_and_append(dovecot: DovecotServer) -> None:
    user = dovecot.add_user()
    dovecot.deliver(user, b"Subject: by lmtp\r\n\r\nhello\r\n")
    dovecot.append(user, "Sent", b"Subject: appended\r\n\r\nbye\r\n", flags=["\\Seen"])
    conn = dovecot.imaplib_client(user)
    try:
        assert conn.select("INBOX")[1] == [b"1"]
        _, data = conn.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"by lmtp" in data[0][1]
        assert conn.select("Sent")[1] == [b"1"]
        _, data = conn.fetch("1", "(FLAGS BODY.PEEK[])")
        assert b"\\Seen" in data[0][0]
        assert data[0][1] == b"Subject: appended\r\n\r\nbye\r\n"
    finally:
        conn.logout()


def test_non_ascii_mailbox_names_go_as_modified_utf7(dovecot: DovecotServer) -> None:
    # Dovecot (no UTF8=ACCEPT here) names mailboxes in modified UTF-7 (RFC 3501 §5.1.3); the
    # helpers take display names, as the tests write them.
    user = dovecot.add_user()
    for name in ("Entwürfe", "Café/Überweisungen", "R&D"):
        dovecot.create_mailbox(user, name)
    dovecot.append(user, "Entwürfe", b"Subject: draft\r\n\r\nhi\r\n")
    conn = dovecot.imaplib_client(user)
    try:
        _, listing = conn.list()
        names = {
            line.rsplit(b" ", 1)[-1].strip(b'"') for line in listing if isinstance(line, bytes)
        }
        assert {b"Entw&APw-rfe", b"Caf&AOk-/&ANw-berweisungen", b"R&-D"} <= names
        assert conn.select('"Entw&APw-rfe"')[1] == [b"1"]
    finally:
        conn.logout()


def test_variants_advertise_the_right_capabilities(
    dovecot: DovecotServer, dovecot_basic: DovecotServer
) -> None:
    full_user = dovecot.add_user()
    basic_user = dovecot_basic.add_user()
    full = _capabilities(dovecot, full_user.username, full_user.password)
    basic = _capabilities(dovecot_basic, basic_user.username, basic_user.password)
    for cap in ("CONDSTORE", "QRESYNC", "MOVE", "IDLE", "SPECIAL-USE", "UIDPLUS"):
        assert cap in full
    for cap in ("CONDSTORE", "QRESYNC", "MOVE"):
        assert cap not in basic
    for cap in ("IMAP4REV1", "IDLE", "SPECIAL-USE", "UIDPLUS", "ESEARCH"):
        assert cap in basic


def test_stop_kills_dovecot_and_removes_its_folder() -> None:
    if dovecot_binary() is None:
        pytest.skip("dovecot is not installed")
    server = DovecotServer().start()
    root = server.root
    assert root is not None and root.exists()
    assert server._proc is not None
    master = server._proc.pid
    server.stop()
    assert not server.running
    assert not root.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(master, 0)
    # No Dovecot process of that instance is left (children named after its config).
    leftover = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True)
    assert leftover.stdout == ""
    server.stop()  # idempotent


class _BrokenConfig(DovecotServer):
    def _config(self, key_path: Path) -> str:
        return "this is not a dovecot setting\n"


def test_start_failure_reports_dovecot_output() -> None:
    if dovecot_binary() is None:
        pytest.skip("dovecot is not installed")
    server = _BrokenConfig(start_timeout=5)
    with pytest.raises(DovecotStartError) as info:
        server.start()
    # Dovecot's own complaint about the configuration is in the message.
    assert "dovecot.conf" in str(info.value)
    assert not server.running
