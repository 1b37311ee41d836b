"""The one visibility rule (store.visibility) as a table, on SQLite and PostgreSQL.

Accounts: a private one, one shared with the owner's teams in full, one shared as metadata,
and a team inbox; all owned by ``owner`` (in team Sales). Viewers: the owner, an admin, a
teammate (Sales), a member of the inbox's team only (Support), a member of no team, a
disabled teammate, and someone in both teams. Each cell is what the rule yields: None (not
visible: not listed, NotFound), or (access level, may manage).
"""

from __future__ import annotations

import pytest

from correspond.errors import ConfigError, NotFound
from correspond.rules.presets import draft_from_preset
from correspond.store import Store
from correspond.store.teams import TeamExists, TeamStore
from correspond.store.users import User, UserStore

ACCOUNTS = ("private", "shared", "meta", "inbox")
FULL_MANAGE = ("full", True)
FULL = ("full", False)
META = ("metadata", False)

TABLE: dict[str, dict[str, tuple[str, bool] | None]] = {
    "owner": dict.fromkeys(ACCOUNTS, FULL_MANAGE),
    "admin": dict.fromkeys(ACCOUNTS, FULL_MANAGE),
    "teammate": {"private": None, "shared": FULL, "meta": META, "inbox": None},
    "inboxer": {"private": None, "shared": None, "meta": None, "inbox": FULL},
    "stranger": dict.fromkeys(ACCOUNTS),
    "disabled": dict.fromkeys(ACCOUNTS),
    "both": {"private": None, "shared": FULL, "meta": META, "inbox": FULL},
}


def _world(store: Store) -> tuple[dict[str, User], TeamStore, UserStore]:
    users = UserStore(store.engine)
    teams = TeamStore(store.engine)
    people: dict[str, User] = {}
    for name in TABLE:
        people[name], _ = users.create_user(
            f"{name}@example.test",
            display_name="",
            password_hash=None,
            role="admin" if name == "admin" else "member",
        )
    sales, support = teams.create("Sales"), teams.create("Support")
    for who in ("owner", "teammate", "disabled", "both"):
        teams.add_member(sales.id, people[who].id)
    for who in ("inboxer", "both"):
        teams.add_member(support.id, people[who].id)
    for name in ACCOUNTS:
        draft = draft_from_preset("other", name=name, email=f"{name}@x.test", imap_host="imap.x")
        store.add_account(draft, "pw", owner_id=people["owner"].id)
    teams.set_account_sharing("shared", sharing="team")
    teams.set_account_sharing("meta", sharing="metadata")
    teams.set_account_sharing("inbox", team_id=support.id)
    users.set_disabled("disabled@example.test", True)
    people["disabled"] = users.get_user("disabled@example.test")
    return people, teams, users


@pytest.mark.parametrize("viewer", sorted(TABLE))
def test_the_rule_as_a_table(store: Store, viewer: str) -> None:
    people, _, users = _world(store)
    expected = TABLE[viewer]
    listed = {
        s.account.name: (s.access.level, s.access.manage)
        for s in store.list_accounts(viewer=people[viewer])
        if s.access is not None
    }
    assert listed == {a: cell for a, cell in expected.items() if cell is not None}
    for account, cell in expected.items():
        if cell is None:
            with pytest.raises(NotFound) as refused:
                users.access_to_account(people[viewer], account)
            # The same answer as for an account that does not exist.
            with pytest.raises(NotFound) as ghost:
                users.access_to_account(people[viewer], "ghost")
            assert str(refused.value).replace(account, "ghost") == str(ghost.value)
        else:
            found = users.access_to_account(people[viewer], account)
            assert (found.level, found.manage) == cell, account


def test_leaving_a_team_or_deleting_it_takes_the_view_away(store: Store) -> None:
    people, teams, users = _world(store)
    teammate, inboxer = people["teammate"], people["inboxer"]
    sales = teams.get("sales")  # by name, whatever its case
    teams.remove_member(sales.id, teammate.id)
    assert store.list_accounts(viewer=teammate) == []
    with pytest.raises(NotFound):
        teams.remove_member(sales.id, teammate.id)  # not in it any more
    # Deleting the team makes its inbox its owner's personal (private) account again.
    support = teams.get("Support")
    assert support.accounts == ("inbox",)
    teams.delete(support.id)
    assert store.list_accounts(viewer=inboxer) == []
    assert users.access_to_account(people["owner"], "inbox").manage
    assert teams.list(member_id=inboxer.id) == []


def test_team_names_are_unique_whatever_their_case(store: Store) -> None:
    teams = TeamStore(store.engine)
    teams.create("Sales")
    with pytest.raises(TeamExists):
        teams.create("  sALES ")
    with pytest.raises(ConfigError):
        teams.create("   ")
    with pytest.raises(NotFound):
        teams.add_member(teams.get("Sales").id, 424242)  # no such user
    assert [t.name for t in teams.list()] == ["Sales"]


def test_migration_0008_down_and_up_again(store: Store) -> None:
    """Down to 0007 and up again: accounts keep working (SQLite keeps the tables and
    columns, since dropping them would rebuild `accounts`; team inboxes are cleared), and
    teams can be made again afterwards."""
    from alembic import command

    from correspond.store.engine import _alembic_config, current_revision, head_revision, migrate

    people, teams, users = _world(store)
    cfg = _alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0007")
    assert current_revision(store.engine) == "0007"
    migrate(store.engine)
    assert current_revision(store.engine) == head_revision()
    assert [s.account.name for s in store.list_accounts()] == sorted(ACCOUNTS)
    assert all(s.account.team_id is None for s in store.list_accounts())
    sales = teams.create("Sales Again")
    teams.add_member(sales.id, people["teammate"].id)
    assert users.access_to_account(people["owner"], "private").manage
