"""Accounts in trouble (store.trouble): the banner's query follows the one visibility rule,
on SQLite and PostgreSQL (the world of tests/test_visibility.py)."""

from __future__ import annotations

import pytest

from correspond.store import Store
from correspond.store.lifecycle import disconnect_account
from correspond.store.trouble import accounts_in_trouble
from test_visibility import TABLE, _world

STATES = {"private": "auth_failed", "shared": "error", "meta": "auth_failed", "inbox": "error"}


@pytest.mark.parametrize("viewer", sorted(TABLE))
def test_what_each_viewer_is_told_of(store: Store, viewer: str) -> None:
    people, _, _ = _world(store)
    for name, state in STATES.items():
        store.set_account_state(name, state, f"why {name} <b>stopped</b>")
    found = accounts_in_trouble(store.engine, people[viewer])
    expected = {a: cell[1] for a, cell in TABLE[viewer].items() if cell is not None}
    assert {t.name: t.manage for t in found} == expected
    for t in found:
        assert (t.state, t.detail) == (STATES[t.name], f"why {t.name} <b>stopped</b>")
        assert t.email == f"{t.name}@x.test"
    assert [t.name for t in found] == sorted(expected)


def test_only_failed_and_connected_accounts(store: Store) -> None:
    people, _, _ = _world(store)
    owner = people["owner"]
    assert accounts_in_trouble(store.engine, owner) == []  # all "connecting"
    for name in STATES:
        store.set_account_state(name, "auth_failed", "refused")
    store.set_account_state("private", "live", "")
    store.set_account_state("meta", "paused", "Paused by the user.")
    disconnect_account(store.engine, "shared")
    # A failure written after the disconnect (a worker's last word): still not trouble, its
    # sync was stopped on purpose.
    store.set_account_state("shared", "auth_failed", "refused")
    assert [t.name for t in accounts_in_trouble(store.engine, owner)] == ["inbox"]
