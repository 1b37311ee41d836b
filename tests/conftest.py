"""Shared pytest fixtures.

Sections are kept apart so other suites can add theirs (or load a plugin via ``pytest_plugins``)
without touching these.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from correspond.testing.dovecot import DovecotServer, ImapUser, dovecot_binary
from correspond.testing.postfix import PostfixServer, postfix_binary

# Store fixtures (SQLite and PostgreSQL) live in their own plugin module.
pytest_plugins = ["conftest_store"]

# ---------------------------------------------------------------------------------------------
# Shared corpus (../shared beside the checkout, or CORRESPOND_SHARED_DIR)
# ---------------------------------------------------------------------------------------------


def shared_dir() -> Path:
    """Where the shared corpus and bench live (may not exist)."""
    env = os.environ.get("CORRESPOND_SHARED_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared"


# ---------------------------------------------------------------------------------------------
# Private Dovecot (correspond.testing.dovecot): started once per session, a fresh user per test
# ---------------------------------------------------------------------------------------------


def _start_dovecot(variant: str) -> Iterator[DovecotServer]:
    if dovecot_binary() is None:
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)")
    server = DovecotServer(variant)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """The full-featured private Dovecot (CONDSTORE, QRESYNC, MOVE, IDLE, SPECIAL-USE)."""
    yield from _start_dovecot("full")


@pytest.fixture(scope="session")
def dovecot_basic() -> Iterator[DovecotServer]:
    """A private Dovecot that does not advertise CONDSTORE, QRESYNC or MOVE."""
    yield from _start_dovecot("basic")


@pytest.fixture
def imap_user(dovecot: DovecotServer) -> ImapUser:
    """A fresh user on ``dovecot``: an empty INBOX plus the special-use folders."""
    return dovecot.add_user()


# ---------------------------------------------------------------------------------------------
# Private Postfix (correspond.testing.postfix): submission on loopback, SASL and LMTP delivery
# through the session's Dovecot; started once per session
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postfix(dovecot: DovecotServer) -> Iterator[PostfixServer]:
    """A private Postfix: STARTTLS submission with the Dovecot users' passwords, mail for
    example.test delivered into ``dovecot`` by LMTP, anything else bounced."""
    if postfix_binary() is None:
        pytest.skip("postfix is not installed (bash scripts/ensure-system-packages.sh)")
    server = PostfixServer(dovecot)
    server.start()
    try:
        yield server
    finally:
        server.stop()
