"""Connection problems a new user trips over, against the private Dovecot and scripted fakes:
the wrong security named within seconds, an overall deadline for the connection test, and a
self-signed certificate shown by fingerprint and pinned by it without openssl."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from correspond.api import create_app
from correspond.cli import base as cli_base
from correspond.cli import main
from correspond.errors import ConfigError, SecurityMismatch
from correspond.imap.client import ImapClient, ImapEndpoint, ImapLimits
from correspond.imap.connect import (
    certificate_fingerprint,
    fetch_presented_certificate,
    normalize_fingerprint,
)
from correspond.settings import Settings
from correspond.store import Store
from correspond.sync.connection_test import check_connection
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.net import FakeImapServer
from helpers import authed_client

pytestmark = pytest.mark.dovecot


def dovecot_fingerprint(dovecot: DovecotServer) -> str:
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(dovecot.cert_pem)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


# -- the wrong security, named at once ---------------------------------------------------------


async def test_starttls_on_the_implicit_tls_port_is_named_within_5_s(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    # Before: the silent TLS port was only suspected after the whole 20 s connect timeout.
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "starttls")
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await check_connection(
        endpoint, imap_user.username, imap_user.password, timeout=20, limits=ImapLimits()
    )
    assert loop.time() - started < 5
    assert report.problem == "wrong_security"
    assert report.message == (
        f"127.0.0.1:{dovecot.tls_port} expects implicit TLS, not starttls: set the security to "
        "tls (or use the STARTTLS port, usually 143)."
    )
    # The sync connects through the same client: a permanent error naming the fix.
    started = loop.time()
    with pytest.raises(SecurityMismatch) as caught:
        await ImapClient.connect(endpoint, connect_timeout=20)
    assert loop.time() - started < 5
    assert caught.value.expected == "tls" and not caught.value.transient
    assert str(caught.value) == report.message


async def test_tls_on_the_plaintext_port_is_a_permanent_mismatch(dovecot: DovecotServer) -> None:
    endpoint = ImapEndpoint(dovecot.host, dovecot.port, "tls", trusted_cert_pem=dovecot.cert_pem)
    with pytest.raises(SecurityMismatch) as caught:
        await ImapClient.connect(endpoint, connect_timeout=10)
    assert caught.value.expected == "plain" and not caught.value.transient
    assert "speaks plaintext IMAP, not implicit TLS: set the security to starttls" in str(
        caught.value
    )


async def test_a_slow_greeting_is_still_waited_for() -> None:
    # Silence past greeting_probe_after on a port that does not speak TLS: the probe says no,
    # and the greeting that comes late is taken.
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await asyncio.sleep(0.6)
            writer.write(b"* OK [CAPABILITY IMAP4rev1] slow but fine\r\n")
            while line := await reader.readline():
                tag = line.split(b" ", 1)[0]
                writer.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        client = await ImapClient.connect(
            ImapEndpoint("127.0.0.1", port, "plain", allow_plaintext=True),
            connect_timeout=5,
            limits=ImapLimits(greeting_probe_after=0.2),
        )
        assert client.greeting is not None and client.greeting.text == "slow but fine"
        await client.logout()
    finally:
        for task in list(handlers):
            task.cancel()
        await asyncio.sleep(0.05)
        listener.close()
        await listener.wait_closed()


# -- an overall deadline for the connection test --------------------------------------------------


def _trickle(data: bytes, pause: float) -> Iterator[bytes | float]:
    for i in range(len(data)):
        yield data[i : i + 1]
        yield pause


async def test_connection_test_has_an_overall_deadline() -> None:
    # Every reply trickles a byte every 0.1 s: no silence is ever long enough for a timeout,
    # and each command's own deadline is made generous here (1 s per byte), so only the test's
    # overall deadline can end it. Before, `account test` ran for ever against such a server.
    def reply(line: bytes) -> Iterator[bytes | float]:
        tag = line.split(b" ", 1)[0]
        return _trickle(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n", 0.1)

    async with FakeImapServer(b"* OK hi\r\n", reply=reply) as fake:
        endpoint = ImapEndpoint(fake.host, fake.port, "plain", allow_plaintext=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = await check_connection(
            endpoint, "u", "p", timeout=1, deadline=1.5, limits=ImapLimits(min_rate=1)
        )
        assert loop.time() - started < 3
    assert (report.ok, report.problem) == (False, "timeout")
    assert report.message.startswith(
        f"The connection test with 127.0.0.1:{fake.port} did not finish within 1.5 s"
    )


# -- a self-signed certificate: fingerprint shown, pinned by it -----------------------------------


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_fetch_presented_certificate(dovecot: DovecotServer, security: str) -> None:
    port = dovecot.tls_port if security == "tls" else dovecot.port
    der = await fetch_presented_certificate(dovecot.host, port, security, timeout=10)  # type: ignore[arg-type]
    assert der is not None
    assert certificate_fingerprint(der) == dovecot_fingerprint(dovecot)


def test_fingerprints_are_read_the_way_people_write_them() -> None:
    colons = "AB:" * 31 + "CD"
    assert normalize_fingerprint(colons.lower()) == colons
    assert normalize_fingerprint("sha256 Fingerprint=" + colons) == colons
    assert normalize_fingerprint(colons.replace(":", "")) == colons
    for bad in ("", "AB:CD", "ZZ" * 32, colons + ":EF"):
        with pytest.raises(ConfigError, match="not a SHA-256 fingerprint"):
            normalize_fingerprint(bad)


async def test_report_shows_the_presented_certificate(
    dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    fingerprint = dovecot_fingerprint(dovecot)
    untrusted = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls")
    report = await check_connection(untrusted, imap_user.username, imap_user.password, timeout=10)
    assert report.problem == "tls_untrusted"
    assert report.certificate_sha256 == fingerprint
    assert f"Its SHA-256 fingerprint is {fingerprint}." in report.message
    assert f"--trust-presented-cert {fingerprint}" in report.message
    pinned = ImapEndpoint(dovecot.host, dovecot.port, "starttls", trusted_cert_pem=dovecot.cert_pem)
    ok = await check_connection(pinned, imap_user.username, imap_user.password, timeout=10)
    assert ok.ok and ok.certificate_sha256 == fingerprint


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    return CliRunner()


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_trust_presented_cert_pins_the_certificate_without_openssl(
    tmp_path: Path, dovecot: DovecotServer, runner: CliRunner, security: str
) -> None:
    user = dovecot.add_user()
    port = dovecot.tls_port if security == "tls" else dovecot.port
    base = ["--data-dir", str(tmp_path / "d")]
    add = [
        *base, "account", "add", "lab", "--email", f"{user.username}@example.test",
        "--username", user.username, "--imap-host", dovecot.host,
        "--imap-port", str(port), "--imap-security", security, "--password-stdin",
    ]  # fmt: skip
    assert runner.invoke(main, add, input=f"{user.password}\n").exit_code == 0
    fingerprint = dovecot_fingerprint(dovecot)

    failed = runner.invoke(main, [*base, "account", "test", "lab"])
    assert failed.exit_code == 1
    assert f"Server certificate SHA-256: {fingerprint}" in failed.output
    data = json.loads(runner.invoke(main, [*base, "account", "test", "lab", "--json"]).stdout)
    assert (data["problem"], data["certificate_sha256"]) == ("tls_untrusted", fingerprint)
    assert (
        f"correspond account update lab --trust-presented-cert {fingerprint}" in (data["message"])
    )

    # Another fingerprint: refused, naming what was presented; nothing is trusted.
    wrong = "00:" * 31 + "00"
    refused = runner.invoke(
        main, [*base, "account", "update", "lab", "--trust-presented-cert", wrong]
    )
    assert refused.exit_code != 0
    assert f"presents a certificate with SHA-256 {fingerprint}, not {wrong}" in refused.output
    still = json.loads(runner.invoke(main, [*base, "account", "test", "lab", "--json"]).stdout)
    assert still["problem"] == "tls_untrusted"

    # The fingerprint as a person may paste it (lower case, no colons): pinned, test passes.
    pasted = fingerprint.replace(":", "").lower()
    # A new trusted certificate drops the stored password unless the same change brings it
    # (issue 7: a secret only goes where it was entered for).
    pinned = runner.invoke(
        main,
        [*base, "account", "update", "lab", "--trust-presented-cert", pasted, "--password-stdin"],
        input=f"{user.password}\n",
    )
    assert pinned.exit_code == 0, pinned.output
    ok = runner.invoke(main, [*base, "account", "test", "lab", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    both = runner.invoke(
        main,
        [*base, "account", "update", "lab", "--trust-presented-cert", pasted, "--no-trust-cert"],
    )
    assert both.exit_code == 2 and "contradict" in both.output


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_api_trusts_the_presented_certificate_by_its_fingerprint(
    dovecot: DovecotServer, store: Store, store_settings: Settings, security: str
) -> None:
    """``POST /accounts/{name}/trust-certificate``: the API's ``--trust-presented-cert``."""
    user = dovecot.add_user()
    port = dovecot.tls_port if security == "tls" else dovecot.port
    fingerprint = dovecot_fingerprint(dovecot)
    with authed_client(create_app(store_settings, store=store)) as client:
        added = client.post(
            "/accounts",
            json={
                "name": "lab",
                "email": f"{user.username}@example.test",
                "username": user.username,
                "imap_host": dovecot.host,
                "imap_port": port,
                "imap_security": security,
                "password": user.password,
            },
        )
        assert added.status_code == 201, added.text
        report = client.post("/accounts/lab/test").json()
        assert (report["problem"], report["certificate_sha256"]) == ("tls_untrusted", fingerprint)

        # Not a fingerprint at all: 422 before anything is contacted.
        garbage = client.post("/accounts/lab/trust-certificate", json={"fingerprint": "AB:CD"})
        assert garbage.status_code == 422
        assert garbage.json()["detail"][0]["loc"] == ["body", "fingerprint"]
        # Another certificate's fingerprint: 422 naming the one presented; nothing changes.
        wrong = "00:" * 31 + "00"
        refused = client.post("/accounts/lab/trust-certificate", json={"fingerprint": wrong})
        assert refused.status_code == 422
        assert f"presents a certificate with SHA-256 {fingerprint}" in refused.text
        assert client.get("/accounts/lab").json()["has_trusted_cert"] is False
        assert client.post("/accounts/lab/test").json()["problem"] == "tls_untrusted"

        # The right one, pasted as a person may (lower case, no colons), without the
        # password: pinned, and the new certificate dropped the stored password (a secret only
        # goes where it was entered for), so the test contacts nothing.
        pasted = fingerprint.replace(":", "").lower()
        pinned = client.post("/accounts/lab/trust-certificate", json={"fingerprint": pasted})
        assert pinned.status_code == 200, pinned.text
        assert (pinned.json()["has_trusted_cert"], pinned.json()["has_password"]) == (True, False)
        assert client.post("/accounts/lab/test").json()["problem"] == "no_password"

        # The same certificate with the password: nothing moves, the password is kept.
        both = client.post(
            "/accounts/lab/trust-certificate",
            json={"fingerprint": fingerprint, "password": user.password},
        )
        assert both.status_code == 200, both.text
        assert both.json()["has_password"] is True
        assert client.post("/accounts/lab/test").json()["ok"] is True
