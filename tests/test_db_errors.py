"""Database errors never carry SQL text, bound values or message content out of the store.

A driver's message quotes the statement and its parameters: an address, a subject, a body. The
store turns every database error into a fixed sentence naming the kind of failure, and logs the
exception type only. Forced here with a trigger that refuses a secret-looking value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from correspond.api import create_app
from correspond.errors import StoreError
from correspond.rules.presets import AccountChanges
from correspond.settings import Settings
from correspond.store import Store
from correspond.sync.runner import sync_account_once
from correspond.testing.dovecot import DovecotServer, ImapUser
from helpers import authed_client
from test_sync_dovecot import NOW, Env, _sqlite, raw_message

SECRET = "hunter2-SECRET-7f3a"


def _refuse_secret_trigger(store: Store, table: str, column: str) -> None:
    """A trigger that refuses rows whose ``column`` holds SECRET (an integrity error whose
    driver text names the statement and its values)."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.execute(
                text(
                    f"CREATE TRIGGER refuse_secret BEFORE INSERT ON {table} "
                    f"WHEN NEW.{column} LIKE '%SECRET%' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
                )
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER refuse_secret_u BEFORE UPDATE ON {table} "
                    f"WHEN NEW.{column} LIKE '%SECRET%' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_secret() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.{column} LIKE '%SECRET%' THEN "
                    "RAISE integrity_constraint_violation USING MESSAGE = 'refused by test'; "
                    "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER refuse_secret BEFORE INSERT OR UPDATE ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_secret()"
                )
            )


def _add(store: Store) -> None:
    from correspond.rules.presets import AccountDraft

    store.add_account(
        AccountDraft(
            name="work",
            preset="custom",
            email="me@example.test",
            username="me@example.test",
            imap_host="imap.example.test",
            imap_port=993,
            imap_security="tls",
            smtp_host=None,
            smtp_port=465,
            smtp_security="tls",
        ),
        "pw",
    )


def test_store_error_is_a_fixed_sentence(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    _add(store)
    _refuse_secret_trigger(store, "accounts", "email")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError) as info:
        store.update_account("work", AccountChanges(email=f"{SECRET}@example.test"))
    message = str(info.value)
    assert message == "the database refused a value (integrity)"
    assert SECRET not in caplog.text
    assert "UPDATE" not in caplog.text and "UPDATE" not in message
    assert "IntegrityError" in caplog.text  # the type is logged, nothing else


@pytest.fixture
def client(store: Store, store_settings: Settings) -> Iterator[TestClient]:
    with authed_client(create_app(store_settings, store=store)) as c:
        yield c


def test_api_body_has_no_sql(
    client: TestClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    _add(store)
    _refuse_secret_trigger(store, "accounts", "email")
    caplog.set_level(logging.DEBUG)
    r = client.patch("/accounts/work", json={"email": f"{SECRET}@example.test"})
    assert r.status_code == 503, r.text
    assert SECRET not in r.text and "UPDATE" not in r.text
    assert "refused a value" in r.json()["detail"]
    assert SECRET not in caplog.text


@pytest.fixture
def sqlite_env(dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path) -> Iterator[Env]:
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path)


async def test_sync_state_detail_has_no_message_content(
    sqlite_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env = sqlite_env
    conn = env.server.imaplib_client(env.user)
    try:
        for n in range(3):
            conn.append(
                "INBOX",
                None,
                None,
                raw_message(n, when=NOW - timedelta(days=1), subject=f"Invoice {SECRET} {n}"),
            )
    finally:
        conn.logout()
    _refuse_secret_trigger(env.store, "messages", "subject")
    caplog.set_level(logging.DEBUG)
    result = await sync_account_once(env.store, env.settings, env.account.name)
    account = env.store.get_account(env.account.name)
    # A refused row costs only its message (the poison-mail rule): each is stored without the
    # refused value, with a defect naming the kind of refusal and nothing of the value or SQL.
    with env.store.engine.connect() as conn:
        rows = conn.execute(text("SELECT subject, defects FROM messages")).all()
    assert len(rows) == 3
    defects = [str(d) for _subject, d in rows]
    assert all("database refused" in d for d in defects), defects
    shown = [account.state_detail or "", *defects, *(str(subject) for subject, _ in rows)]
    if result.report is not None:
        shown += [f.error or "" for f in result.report.folders]
    for s in shown:
        assert SECRET not in s and "INSERT" not in s, s
    assert SECRET not in caplog.text
