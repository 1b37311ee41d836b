"""Teams, sharing and the thread order preference over the API, on SQLite and PostgreSQL.

The route walk with another team's user and a metadata-only viewer is in test_auth_api.py;
the rule itself as a table in test_visibility.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient

from correspond.api import create_app
from correspond.api.security import authorize
from correspond.settings import Settings
from correspond.store import Store
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mirror import SeededMirror, seed_mirror
from helpers import authed_client, user_client

NEW = {"email": "m@example.com", "imap_host": "mail.example.com", "password": "pw"}


@pytest.fixture
def app(store: Store, store_settings: Settings) -> FastAPI:
    return create_app(store_settings, store=store)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with authed_client(app) as client:
        yield client


def _id(client: TestClient) -> int:
    return int(client.get("/session").json()["id"])


def test_admins_manage_teams_and_members_read_their_own(app: FastAPI, admin: TestClient) -> None:
    ann = user_client(app, "ann@example.test")
    bob = user_client(app, "bob@example.test")
    created = admin.post("/teams", json={"name": "Sales"})
    assert created.status_code == 201 and created.json()["members"] == []
    sales = created.json()["id"]
    assert admin.post("/teams", json={"name": "sales"}).status_code == 409
    assert admin.post("/teams", json={"name": " "}).status_code == 422
    # Members may not manage teams: not even their own.
    assert ann.post("/teams", json={"name": "Mine"}).status_code == 403
    assert ann.get(f"/teams/{sales}").status_code == 404  # not in it: as if it did not exist
    added = admin.put(f"/teams/{sales}/members/{_id(ann)}")
    assert [m["email"] for m in added.json()["members"]] == ["ann@example.test"]
    assert admin.put(f"/teams/{sales}/members/{_id(ann)}").status_code == 200  # idempotent
    assert admin.put(f"/teams/{sales}/members/987654").status_code == 404
    assert ann.get(f"/teams/{sales}").json()["name"] == "Sales"
    assert ann.put(f"/teams/{sales}/members/{_id(bob)}").status_code == 403
    assert ann.delete(f"/teams/{sales}").status_code == 403
    assert [t["name"] for t in ann.get("/teams").json()] == ["Sales"]
    assert bob.get("/teams").json() == []
    assert admin.delete(f"/teams/{sales}/members/{_id(ann)}").status_code == 200
    assert admin.delete(f"/teams/{sales}/members/{_id(ann)}").status_code == 404
    assert ann.get(f"/teams/{sales}").status_code == 404
    assert admin.delete(f"/teams/{sales}").status_code == 204
    assert admin.get("/teams").json() == []


def test_sharing_and_team_inboxes_are_chosen_by_owner_or_admin(
    app: FastAPI, admin: TestClient
) -> None:
    ann = user_client(app, "ann@example.test")
    bob = user_client(app, "bob@example.test")
    carl = user_client(app, "carl@example.test")
    sales = admin.post("/teams", json={"name": "Sales"}).json()["id"]
    other = admin.post("/teams", json={"name": "Other"}).json()["id"]
    for who in (ann, bob):
        admin.put(f"/teams/{sales}/members/{_id(who)}")
    # A member makes a team inbox of their own team, not of one they are not in.
    refused = ann.post("/accounts", json={**NEW, "name": "x", "team_id": other})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "team_id"]
    assert admin.get("/accounts").json() == []  # nothing was created
    inbox = ann.post("/accounts", json={**NEW, "name": "sales-inbox", "team_id": sales})
    assert inbox.status_code == 201 and inbox.json()["team_id"] == sales
    assert bob.get("/accounts/sales-inbox").json()["access"] == {
        "level": "full",
        "can_manage": False,
    }
    assert carl.get("/accounts/sales-inbox").status_code == 404
    # A personal account: private until its owner shares it; a teammate cannot share it.
    mine = ann.post("/accounts", json={**NEW, "name": "ann-mail"}).json()
    assert mine["sharing"] == "private" and mine["team_id"] is None
    assert bob.get("/accounts/ann-mail").status_code == 404
    assert ann.patch("/accounts/ann-mail", json={"sharing": "metadata"}).status_code == 200
    assert bob.get("/accounts/ann-mail").json()["access"]["level"] == "metadata"
    assert bob.patch("/accounts/ann-mail", json={"sharing": "team"}).status_code == 403
    assert bob.patch("/accounts/ann-mail", json={"window_days": 3}).status_code == 403
    assert bob.post("/accounts/ann-mail/pause").status_code == 403
    assert bob.delete("/accounts/ann-mail").status_code == 403
    assert ann.get("/accounts/ann-mail").json()["window_days"] != 3
    assert admin.patch("/accounts/ann-mail", json={"sharing": "bogus"}).status_code == 422
    # Sharing changes nothing of the mailbox's settings (the password is kept).
    assert ann.get("/accounts/ann-mail").json()["has_password"] is True
    # Back to personal: team_id null.
    back = admin.patch("/accounts/sales-inbox", json={"team_id": None})
    assert back.status_code == 200 and back.json()["team_id"] is None
    assert bob.get("/accounts/sales-inbox").status_code == 404
    assert [a["name"] for a in bob.get("/accounts").json()] == ["ann-mail"]


@pytest.fixture
def mirror(
    store: Store, store_settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> SeededMirror:
    return seed_mirror(store, store_settings, dovecot, imap_user)


def test_thread_order_is_each_users_preference_saved_at_once(
    app: FastAPI, admin: TestClient, mirror: SeededMirror
) -> None:
    """Two people read the same team inbox thread, each in their own order."""
    ann = user_client(app, "ann@example.test")
    team = admin.post("/teams", json={"name": "Inbox"}).json()["id"]
    admin.put(f"/teams/{team}/members/{_id(ann)}")
    assert admin.patch(f"/accounts/{mirror.account}", json={"team_id": team}).status_code == 200
    page = admin.get(f"/accounts/{mirror.account}/messages", params={"q": "kickoff"}).json()
    thread_id = page["messages"][0]["thread_id"]

    def order(client: TestClient) -> tuple[str, list[str | None]]:
        thread = client.get(f"/threads/{thread_id}").json()
        return thread["order"], [m["message_id"] for m in thread["messages"]]

    oldest = [mirror.kickoff_mid, mirror.reply_mid]
    assert ann.get("/me/preferences").json() == {"thread_order": "oldest_first"}
    assert order(ann) == ("oldest_first", oldest)
    saved = ann.put("/me/preferences", json={"thread_order": "newest_first"})
    assert saved.json() == {"thread_order": "newest_first"}
    assert ann.get("/me/preferences").json() == {"thread_order": "newest_first"}
    assert order(ann) == ("newest_first", oldest[::-1])
    assert order(admin) == ("oldest_first", oldest)  # another user's preference is theirs
    # An explicit order still wins for one request.
    explicit = ann.get(f"/threads/{thread_id}", params={"order": "oldest_first"}).json()
    assert explicit["order"] == "oldest_first"
    assert ann.put("/me/preferences", json={"thread_order": "sideways"}).status_code == 422
    assert ann.put("/me/preferences", json={}).json() == {"thread_order": "newest_first"}
    # The preference is stored, not held by the client: a new token of the same user sees it.
    assert order(user_client(app, "ann@example.test")) == ("newest_first", oldest[::-1])


def test_a_new_route_fails_closed(store: Store, store_settings: Settings) -> None:
    """A route nobody marked with ``needs``: a GET naming an account needs full access, and
    anything else needs its owner or an admin, so a metadata-only viewer (or a teammate) gets a
    403 from it until it is marked."""
    app = create_app(store_settings, store=store)
    extra = APIRouter()

    @extra.get("/accounts/{name}/new-thing")
    def new_thing(name: str) -> dict[str, str]:
        return {"body": "the mail's text"}

    @extra.post("/accounts/{name}/new-action")
    def new_action(name: str) -> dict[str, str]:
        return {"done": name}

    app.include_router(extra, dependencies=[Depends(authorize)])
    admin = authed_client(app)
    owner = user_client(app, "owner@example.test")
    mate = user_client(app, "mate@example.test")
    team = admin.post("/teams", json={"name": "T"}).json()["id"]
    for who in (owner, mate):
        admin.put(f"/teams/{team}/members/{_id(who)}")
    created = owner.post("/accounts", json={**NEW, "name": "acc", "sharing": "metadata"})
    assert created.status_code == 201 and created.json()["sharing"] == "metadata"
    assert owner.get("/accounts/acc/new-thing").status_code == 200
    assert mate.get("/accounts/acc/new-thing").status_code == 403
    assert mate.post("/accounts/acc/new-action").status_code == 403
    assert owner.patch("/accounts/acc", json={"sharing": "team"}).status_code == 200
    assert mate.get("/accounts/acc/new-thing").status_code == 200
    assert mate.post("/accounts/acc/new-action").status_code == 403
    assert owner.post("/accounts/acc/new-action").json() == {"done": "acc"}
