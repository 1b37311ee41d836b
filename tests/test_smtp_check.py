"""sync.smtp_check against real servers: each failure named in one sentence, nothing sent.

The wrong-server cases use the test Dovecot's ports (IMAP, IMAP over TLS, LMTP: real servers
that are not SMTP submission); success, a refused password and the SIZE limit need the
private Postfix (``postfix`` fixture, from ``correspond.testing.postfix``).
"""

from __future__ import annotations

import ssl

import pytest

from correspond.sync.smtp_check import check_smtp
from correspond.testing.dovecot import DovecotServer
from correspond.testing.net import free_port
from correspond.testing.postfix import PostfixServer

FAST = {"timeout": 2.0, "deadline": 3.0}


@pytest.mark.parametrize(
    ("where", "security", "problem", "words"),
    [
        ("port", "starttls", "not_smtp", "not as an SMTP server would"),
        ("port", "tls", "wrong_security", "may expect STARTTLS"),
        ("tls_port", "tls", "tls_untrusted", "self-signed certificate"),
        ("tls_port", "starttls", "timeout", "stays silent until TLS starts"),
        ("lmtp_port", "starttls", "not_smtp", "Unknown command"),
        ("closed", "tls", "refused", "Connection refused"),
    ],
)
async def test_the_wrong_server_or_port_is_named(
    dovecot: DovecotServer, where: str, security: str, problem: str, words: str
) -> None:
    port = free_port() if where == "closed" else getattr(dovecot, where)
    report = await check_smtp("127.0.0.1", port, security, "user", "secret-pw", **FAST)
    assert not report.ok
    assert report.problem == problem, report.message
    assert words in report.message
    assert f"127.0.0.1:{port}" in report.message
    assert "secret-pw" not in report.message


async def test_a_name_that_does_not_resolve() -> None:
    report = await check_smtp("no-such-host.invalid", 587, "starttls", "u", "p", **FAST)
    assert report.problem == "dns" and "does not resolve" in report.message


async def test_plaintext_is_not_a_choice() -> None:
    report = await check_smtp("127.0.0.1", 25, "plain", "u", "p", **FAST)
    assert report.problem == "config" and not report.ok


def _trusting(pem: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=pem)


async def test_postfix_submission_passes_and_tells_its_size(
    postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    user = dovecot.add_user()
    host, port, pem = postfix.host, postfix.port, postfix.cert_pem
    good = await check_smtp(
        host, port, "starttls", user.username, user.password, tls_context=_trusting(pem), **FAST
    )
    assert good.ok, good.message
    assert good.size_limit == postfix.message_size_limit  # type: ignore[attr-defined]
    assert "auth" in good.extensions
    bad = await check_smtp(
        host, port, "starttls", user.username, "wrong", tls_context=_trusting(pem), **FAST
    )
    assert bad.problem == "auth_failed" and user.username in bad.message
    assert "535" in bad.message
    untrusted = await check_smtp(host, port, "starttls", user.username, user.password, **FAST)
    assert untrusted.problem == "tls_untrusted"
