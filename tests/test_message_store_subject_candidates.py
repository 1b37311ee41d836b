"""Same-subject threading candidates: capped in SQL, yet exactly what a full scan would give."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from correspond.store.message_tables import MessageRow
from correspond.store.messages import (
    AddressData,
    FolderCheckpointUpdate,
    IncomingMessage,
    MessageData,
    MessageStore,
    ThreadCandidate,
    ThreadChoice,
)
from correspond.store.tables import AccountRow, FolderRow
from correspond.testing.postgres import PostgresServer, temporary_database
from correspond.testing.store import migrated_engine

__all__: list[str] = []

SUBJECT = "quarterly numbers"
# The store's documented bounds (messages.py): 50 candidates within 31 days either side.
LIMIT = 50
WINDOW = timedelta(days=31)


@pytest.fixture(scope="module")
def pg_engine(pg_server: PostgresServer) -> Iterator[Engine]:
    with (
        temporary_database(pg_server, prefix="correspond_subj") as url,
        migrated_engine(url) as eng,
    ):
        yield eng


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        with migrated_engine(f"sqlite:///{tmp_path / 'store.db'}") as eng:
            yield eng
    else:
        yield request.getfixturevalue("pg_engine")


def _account_and_folder(engine: Engine) -> tuple[int, int]:
    name = f"acct-{secrets.token_hex(4)}"
    with Session(engine) as s, s.begin():
        acct = AccountRow(
            name=name,
            preset="generic",
            email=f"{name}@example.test",
            imap_host="127.0.0.1",
            imap_port=143,
            imap_security="starttls",
            smtp_host=None,
            smtp_port=587,
            smtp_security="starttls",
            username=name,
        )
        s.add(acct)
        s.flush()
        folder = FolderRow(
            account_id=acct.id, remote_name_raw=b"INBOX", name="INBOX", role="inbox", selected=True
        )
        s.add(folder)
        s.flush()
        return acct.id, folder.id


def _msg(key: str, date: datetime | None) -> MessageData:
    return MessageData(
        dedupe_key=key,
        message_id=f"<{key}@example.test>",
        subject=SUBJECT,
        normalized_subject=SUBJECT,
        from_=AddressData("Ann", "ann@example.test"),
        to=(AddressData(None, "bob@example.test"),),
        date=date,
    )


def _new_threads(
    data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
) -> ThreadChoice:
    return ThreadChoice(None)


def _expected(engine: Engine, account_id: int, when: datetime | None) -> list[int]:
    """A full scan, filtered, ordered and capped the way the store documents it."""
    with Session(engine) as s:
        rows = s.execute(
            select(MessageRow.id, MessageRow.date).where(
                MessageRow.account_id == account_id, MessageRow.normalized_subject == SUBJECT
            )
        ).all()
    keep = [
        (mid, date)
        for mid, date in rows
        if when is None or date is None or abs(date - when) <= WINDOW
    ]
    keep.sort(key=lambda r: (r[1] is not None, r[1], r[0]), reverse=True)
    return [mid for mid, _ in keep[:LIMIT]]


def test_same_subject_candidates_are_the_newest_within_each_messages_own_window(
    engine: Engine,
) -> None:
    store = MessageStore(engine)
    account_id, folder_id = _account_and_folder(engine)
    recent = datetime(2026, 11, 20, tzinfo=UTC)
    old = datetime(2026, 10, 10, tzinfo=UTC)
    stored = [_msg(f"recent-{k}", recent + timedelta(hours=k)) for k in range(60)]
    stored += [_msg(f"old-{k}", old + timedelta(hours=k)) for k in range(10)]
    stored += [_msg(f"undated-{k}", None) for k in range(2)]
    items = [IncomingMessage(uid=n + 1, flags=frozenset(), data=d) for n, d in enumerate(stored)]
    store.ingest_batch(account_id, folder_id, items, FolderCheckpointUpdate(), chooser=_new_threads)

    seen: dict[str, list[int]] = {}

    def recording(
        data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
    ) -> ThreadChoice:
        seen[data.dedupe_key] = [c.id for c in same]
        return ThreadChoice(None)

    # One batch holding a message near the recent ones and one 49 days older: a cap over the
    # batch's whole date range would hand the older one the recent rows, not its own.
    late = recent + timedelta(days=3)  # after the newest stored one
    early = datetime(2026, 10, 5, tzinfo=UTC)
    # What a full scan of the stored rows gives, taken before the batch stores its own.
    expected = {"late": _expected(engine, account_id, late)}
    expected["early"] = _expected(engine, account_id, early)
    expected["nodate"] = _expected(engine, account_id, None)
    batch = [
        IncomingMessage(uid=100, flags=frozenset(), data=_msg("late", late)),
        IncomingMessage(uid=101, flags=frozenset(), data=_msg("early", early)),
        IncomingMessage(uid=102, flags=frozenset(), data=_msg("nodate", None)),
    ]
    store.ingest_batch(account_id, folder_id, batch, FolderCheckpointUpdate(), chooser=recording)

    assert seen["late"] == expected["late"]
    assert len(seen["late"]) == LIMIT
    # The ten old rows, then the undated ones: the recent rows are out of its window.
    assert len(expected["early"]) == 12
    assert seen["early"] == expected["early"]
    # An undated message has no window: the batch's two earlier messages (stand-in ids < 0,
    # both dated) are candidates too and rank by date with the stored rows.
    nodate = seen["nodate"]
    assert len(nodate) == LIMIT
    assert nodate[0] < 0  # "late" is the newest of all
    assert [i for i in nodate if i > 0] == expected["nodate"][: LIMIT - 1]
