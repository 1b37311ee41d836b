"""Users and authentication on the API, on SQLite and PostgreSQL, over a real backfilled mirror.

Every route of the app is walked (from ``app.routes`` and the OpenAPI document, so a new route
cannot be missed) without credentials and as another member: 401 / 404 and no data. Then sign-in
sessions, tokens, throttling, the Host/Origin/size perimeter, and the 422s for ids past 2^63 and
passwords with NUL.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from starlette.routing import Mount, Route

from correspond.api import create_app
from correspond.auth import LoginLimiter, LoginThrottled
from correspond.rules.presets import AccountChanges, draft_from_preset
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.linker import LinkerStore, LinkPolicy
from correspond.store.message_queries import encode_cursor
from correspond.store.message_tables import MessageRow
from correspond.store.notify_tables import NotificationRow
from correspond.store.repository import SettingsChanged
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mirror import SeededMirror, seed_mirror
from correspond.web import router as web_router
from correspond.web.compose_drafts import router as drafts_router
from correspond.web.composer import router as composer_router
from correspond.web.pages import PUBLIC_PAGES
from helpers import API_BASE_URL, authed_client, user_client

# Reachable without signing in: the process is up; signing in itself; the documentation
# (the API's shape, no data: docs/ARCHITECTURE.md, "Users and authentication").
PUBLIC = {
    ("GET", "/health"),
    ("POST", "/session"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
# Routes that name nothing owned: a member gets an answer about their own things.
OWN_THINGS = {
    ("GET", "/accounts"),
    ("POST", "/accounts"),
    ("GET", "/session"),
    ("DELETE", "/session"),
    ("GET", "/tokens"),
    ("POST", "/tokens"),
    ("GET", "/teams"),
    ("GET", "/me/preferences"),
    ("PUT", "/me/preferences"),
    ("GET", "/notifications"),
    ("GET", "/notifications/unread-count"),
    ("POST", "/notifications/read-all"),
    ("GET", "/notifications/stream"),
    ("GET", "/webhooks"),
    ("POST", "/webhooks"),
    # The caller's own identities and the templates they see (checked after the walk).
    ("GET", "/identities"),
    ("POST", "/identities"),
    ("GET", "/templates"),
    ("POST", "/templates"),
    ("GET", "/compose/defaults"),
    # The caller's own drafts (checked after the walk: a member lists none of the admin's).
    ("GET", "/drafts"),
    ("POST", "/drafts"),
    # The body names the account to send from (refused unless the caller may send as it).
    ("POST", "/messages"),
    # Search and the personal inbox answer from the caller's own accounts only (checked
    # after the walk).
    ("GET", "/search"),
    ("GET", "/inbox"),
    # One action on many messages: each id is checked in the answer (404 entries for what
    # the caller may not see; tests/test_api_bulk.py).
    ("POST", "/messages/bulk"),
}
# Routes for admins only that name nothing: a member gets 403 (there is nothing to hide).
ADMIN_ONLY = {("POST", "/teams")}
# What a metadata-only viewer never sees, at any depth of any answer.
BODY_KEYS = {"snippet", "text", "html", "attachments", "has_attachments", "has_raw", "defects"}
# CRM records are the organisation's (every signed-in user's): a member gets them too, but a
# record's timeline holds only the messages the member may see (none of the admin's here).
SHARED_PREFIXES = (
    "/contacts",
    "/contact-dismissals",
    "/companies",
    "/deals",
    "/activities",
    "/import",
)
# Never-ending answers (Server-Sent Events): walked for 401s, opened over HTTP elsewhere
# (tests/test_notify_live.py).
STREAMS = {("GET", "/notifications/stream")}
# The web app's pages (HTML, not in the OpenAPI document): walked on their own. Without a
# session each answers 303 to /login, but sign-in and first run (tests/test_web.py).
WEB_PAGES = {
    (method, route.path)
    for route in (*web_router.routes, *composer_router.routes, *drafts_router.routes)
    for method in getattr(route, "methods", ()) or ()
    if method != "HEAD"
}
BIG_ID = 2**63


def _shared(path: str) -> bool:
    return path.startswith(SHARED_PREFIXES)


@pytest.fixture
def mirror(
    store: Store, store_settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> SeededMirror:
    return seed_mirror(store, store_settings, dovecot, imap_user)


@pytest.fixture
def settings(store_settings: Settings) -> Settings:
    """The store's settings with cheap password hashes (argon2id still, at 1 pass over 1 MiB:
    the tests hash and verify dozens of passwords), and a host webhooks may go to."""
    return store_settings.clone(
        password_hash_time_cost=1,
        password_hash_memory_kib=1024,
        webhook_allowed_hosts=["hooks.example.com"],
    )


@pytest.fixture
def app(store: Store, settings: Settings) -> FastAPI:
    return create_app(settings, store=store)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with authed_client(app) as client:
        yield client


def _api_routes(app: FastAPI) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Every (method, path) the app routes, and those of them its OpenAPI document should list.

    Routers included with ``include_router`` are walked too: as APIRoutes in older FastAPI, as
    included-router nodes with their effective routes in newer ones. Static mounts (the docs'
    assets) are left out: files, no data.
    """
    every: set[tuple[str, str]] = set()
    documented: set[tuple[str, str]] = set()

    def add(methods: set[str] | None, path: str, in_schema: bool) -> None:
        for method in methods or ():
            if method != "HEAD":
                every.add((method, path))
                if in_schema:
                    documented.add((method, path))

    for route in app.routes:
        if getattr(route, "path", None) is not None and any(
            (m, route.path) in WEB_PAGES for m in getattr(route, "methods", None) or ()
        ):
            continue
        if isinstance(route, APIRoute):
            add(route.methods, route.path, route.include_in_schema)
        elif hasattr(route, "effective_route_contexts"):
            for ctx in route.effective_route_contexts():
                if not any((m, ctx.path) in WEB_PAGES for m in ctx.methods or ()):
                    add(ctx.methods, ctx.path, ctx.include_in_schema)
        elif isinstance(route, Route):
            add(route.methods, route.path, route.include_in_schema)
        else:
            assert isinstance(route, Mount), route
    return every, documented


def _openapi_routes(client: TestClient) -> set[tuple[str, str]]:
    """The documented operations; each one that needs credentials says so (bearer or cookie)."""
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if (method.upper(), path) not in PUBLIC:
                assert op.get("security") == [{"HTTPBearer": []}, {"APIKeyCookie": []}], path
    return {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}


# Ids and a name that exist nowhere: what "not found" looks like.
GHOSTS: dict[str, Any] = {
    "name": "ghost-account",
    "message_id": 987654321,
    "attachment_id": 987654322,
    "thread_id": 987654323,
    "token_id": 987654324,
    "team_id": 987654325,
    "user_id": 987654326,
    "deal_id": 987654327,
    "notification_id": 987654328,
    "webhook_id": 987654329,
    "identity_id": 987654330,
    "template_id": 987654331,
    "outbox_id": 987654332,
    "draft_id": 987654333,
}


def _blank(text: str, ids: dict[str, Any]) -> str:
    """``text`` with the ids and name the caller gave replaced by their parameter names."""
    for key, value in sorted(ids.items(), key=lambda kv: -len(str(kv[1]))):
        text = text.replace(repr(str(value)) if key == "name" else str(value), f"<{key}>")
    return text


def _concrete(path: str, ids: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), path)


def _notify(admin: TestClient, message_id: int) -> int:
    """A notification of the admin about one of their messages (the mirror's mail is a
    backfill, which announces nothing)."""
    app = admin.app
    assert isinstance(app, FastAPI)
    user_id = admin.get("/session").json()["id"]
    with Session(app.state.notifications._engine) as s, s.begin():
        row = NotificationRow(
            user_id=user_id,
            message_id=message_id,
            account_id=s.get(MessageRow, message_id).account_id,  # type: ignore[union-attr]
            created_at=datetime.now(UTC),
        )
        s.add(row)
        s.flush()
        return row.id


def _outbox_row(admin: TestClient, message_id: int) -> int:
    """An outbox row of the admin's account (a CRM action waiting for the syncer)."""
    answer = admin.post(f"/messages/{message_id}/star")
    assert answer.status_code == 200, answer.text
    return int(answer.json()["pending_actions"][0]["id"])


def _secrets_of(admin: TestClient, mirror: SeededMirror) -> tuple[dict[str, Any], list[str]]:
    """Ids of real things the admin owns, and strings that only their data contains."""
    page = admin.get(f"/accounts/{mirror.account}/messages", params={"limit": 100}).json()
    with_attachment = next(
        m for m in (admin.get(f"/messages/{i['id']}").json() for i in page["messages"]) if
        m["attachments"]
    )  # fmt: skip
    token_id = admin.get("/tokens").json()[0]["id"]
    team = admin.post("/teams", json={"name": "Walkers"})
    assert team.status_code == 201, team.text
    # Records with mail on their timelines (linked by the linker, as a worker would).
    company = admin.post("/companies", json={"name": "Example", "domains": ["example.test"]})
    contact = admin.post("/contacts", json={"emails": ["alice@example.test"]}).json()
    deal = admin.post("/deals", json={"name": "Kickoff", "contact_ids": [contact["id"]]}).json()
    activity = admin.post(
        "/activities",
        json={"kind": "meeting", "title": "Kickoff", "participants": ["alice@example.test"]},
    ).json()
    LinkerStore(admin.app.state.crm.engine, LinkPolicy()).run_until_idle()  # type: ignore[attr-defined]
    assert admin.get(f"/contacts/{contact['id']}/timeline").json()["messages"]
    hook = {"url": "https://hooks.example.com/in", "events": ["message.received"]}
    created = admin.post("/webhooks", json=hook)
    assert created.status_code == 201, created.text
    # An account of the admin's own: every account one may send from is an identity.
    own = {"name": "walker", "email": "walker@example.com", "imap_host": "mail.example.com"}
    assert admin.post("/accounts", json={**own, "password": "pw"}).status_code == 201
    identity = admin.get("/identities").json()[0]
    template = admin.post("/templates", json={"name": "Walk", "subject": "s", "text": "t"})
    assert template.status_code == 201, template.text
    # A draft of the admin's: nobody else's to read, change, send or delete.
    draft = admin.post("/drafts", json={"to": ["x@example.test"], "subject": "Walk draft"})
    assert draft.status_code == 201, draft.text
    ids = {
        "name": mirror.account,
        "message_id": with_attachment["id"],
        "attachment_id": with_attachment["attachments"][0]["id"],
        "thread_id": with_attachment["thread_id"],
        "token_id": token_id,
        "team_id": team.json()["id"],
        "user_id": admin.get("/session").json()["id"],
        "contact_id": contact["id"],
        "company_id": company.json()["id"],
        "deal_id": deal["id"],
        "activity_id": activity["id"],
        "kind": "contacts",
        "dismissed_address": "gone@example.test",
        "notification_id": _notify(admin, with_attachment["id"]),
        "webhook_id": created.json()["id"],
        "identity_id": identity["id"],
        "template_id": template.json()["id"],
        "outbox_id": _outbox_row(admin, with_attachment["id"]),
        "draft_id": draft.json()["id"],
        "file_id": 1,  # a draft's file (the web's /compose/drafts/{id}/files/{file_id})
    }
    subjects = [m["subject"] for m in page["messages"] if m["subject"]]
    return ids, [mirror.account, mirror.address, *subjects[:5]]


def test_every_route_needs_credentials_and_hides_others_accounts(
    app: FastAPI, admin: TestClient, mirror: SeededMirror
) -> None:
    routes, documented = _api_routes(app)
    # The OpenAPI document and the routing table agree: nothing is served off the record.
    assert _openapi_routes(admin) == documented
    assert routes - documented <= PUBLIC
    ids, private = _secrets_of(admin, mirror)
    anonymous = TestClient(app, base_url=API_BASE_URL)
    member = user_client(app, "member@example.test")
    checked = 0
    for method, path in sorted(routes):
        url = _concrete(path, ids)
        body = {} if method in ("POST", "PUT", "PATCH") else None
        answer = anonymous.request(method, url, json=body)
        if (method, path) in PUBLIC:
            assert answer.status_code != 401, (method, path)
        else:
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert answer.json().keys() == {"detail"}, (method, path)
            assert answer.headers["www-authenticate"] == "Bearer"
        assert not any(s in answer.text for s in private), (method, path)
        if _shared(path):
            if method == "GET":  # the records are the member's too; the mail on them is not
                answer = member.get(url)
                assert answer.status_code == 200, (method, path, answer.status_code)
                assert not any(s in answer.text for s in private[1:]), (method, path)
                checked += 1
            continue
        if (method, path) in ADMIN_ONLY:
            assert member.request(method, url, json=body).status_code == 403, (method, path)
        elif (method, path) not in PUBLIC | OWN_THINGS:
            answer = member.request(method, url, json=body)
            assert answer.status_code == 404, (method, path, answer.status_code)
            # The same answer as for things that do not exist (the names the caller gave are
            # echoed in both): nothing tells another user's account from no account.
            ghost = admin.request(method, _concrete(path, GHOSTS), json=body)
            assert ghost.status_code == 404, (method, path, ghost.status_code)
            params = re.findall(r"\{(\w+)\}", path)
            real = {k: ids[k] for k in params}
            assert _blank(answer.text, real) == _blank(ghost.text, GHOSTS), (method, path)
            assert not any(s in answer.text for s in private[1:]), (method, path)
            checked += 1
    assert checked >= 15
    # The web app's pages: none answers without a session but sign-in and first run, and none
    # takes a bearer token (pages are for browsers); each sends the pages' CSP.
    for method, path in sorted(WEB_PAGES):
        url = _concrete(path, ids)
        for client in (anonymous, member):
            form = {"csrf": "forged"} if method == "POST" else None
            answer = client.request(method, url, data=form, follow_redirects=False)
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
            assert not any(s in answer.text for s in private), (method, path)
            if (method, path) in PUBLIC_PAGES:
                # GET /login 200, GET /welcome 404 (a user exists), the forms 403 (forged token)
                assert answer.status_code in (200, 403, 404), (method, path)
            else:
                assert answer.status_code == 303, (method, path, answer.status_code)
                # A page asked for by GET is returned to after the sign-in (``next``).
                back = urlencode({"next": url}) if method == "GET" and url != "/" else ""
                expected = f"/login?{back}" if back else "/login"
                assert answer.headers["location"] == expected, (method, path)
    # A member's own view of the lists holds none of the admin's data.
    assert member.get("/accounts").json() == []
    assert member.get("/teams").json() == []
    assert member.get("/identities").json() == []
    assert member.get("/templates").json() == []
    assert member.get("/drafts").json() == []
    assert member.get("/compose/defaults").json()["identity"] is None
    app.state.search.index.index_all()
    assert admin.get("/search").json()["messages"]
    assert member.get("/search").json() == {"messages": [], "next_cursor": None}
    assert member.get("/search", params={"account": mirror.account}).status_code == 404
    assert member.get("/inbox").json() == {"threads": [], "next_cursor": None}
    assert admin.get("/inbox", params={"account": mirror.account}).json()["threads"]
    hidden = member.get("/inbox", params={"account": mirror.account})
    assert hidden.status_code == 404 and not any(s in hidden.text for s in private[1:])
    assert all(t["user"] == "member@example.test" for t in member.get("/tokens").json())
    assert member.get("/session").json()["email"] == "member@example.test"
    # The same walk as the owner reaches every GET (the ids were real, not merely unknown).
    for method, path in sorted(routes):
        if method == "GET" and (method, path) not in PUBLIC | STREAMS:
            answer = admin.get(_concrete(path, ids))
            assert answer.status_code == 200, (path, answer.status_code)
    # And the account is still there with its mail: nothing the walk sent changed it.
    assert admin.get(f"/accounts/{mirror.account}").json()["message_count"] > 0


def _keys(value: Any) -> set[str]:
    """Every key of every object in a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


def _json(answer: Any) -> Any:
    return answer.json() if answer.headers.get("content-type") == "application/json" else None


def _bodies_of(admin: TestClient, mirror: SeededMirror) -> list[str]:
    """Strings of the account's mail that only its bodies hold (snippets, text, attachment
    names): none of them is in what a metadata-only viewer may see of the same messages."""
    page = admin.get(f"/accounts/{mirror.account}/messages", params={"limit": 100}).json()
    views = [admin.get(f"/messages/{m['id']}").json() for m in page["messages"]]
    candidates = {m["snippet"][:24] for m in page["messages"]}
    for view in views:
        candidates.update(line.strip()[:24] for line in (view["text"] or "").splitlines())
        candidates.update(a["filename"] for a in view["attachments"] if a["filename"])
    metadata = str([{k: v for k, v in view.items() if k not in BODY_KEYS} for view in views])
    bodies = sorted(c for c in candidates if len(c) >= 8 and c not in metadata)
    assert len(bodies) >= 5, bodies
    return bodies


def admin_finds(admin: TestClient, account: str, text: str) -> bool:
    found = admin.get(f"/accounts/{account}/messages", params={"q": text}).json()
    return bool(found["messages"])


# Writes that need full access to the mail, not ownership of the account: CRM actions on it.
FULL_ACCESS_WRITES = {
    ("PUT", "/threads/{thread_id}/deals/{deal_id}"),
    ("DELETE", "/threads/{thread_id}/deals/{deal_id}"),
    # A user's actions on mail they see in full (issue 9): not the account's settings.
    *(
        ("POST", f"/messages/{{message_id}}/{action}")
        for action in (
            "read",
            "unread",
            "star",
            "unstar",
            "archive",
            "unarchive",
            "delete",
            "restore",
        )
    ),
}
# Allowed with full access, refused for the walk's empty body (it names no folder).
FULL_ACCESS_NEEDS_BODY = {("POST", "/messages/{message_id}/move")}
# Replies and forwards: sent as the caller's identity of the message's account, else their
# default identity (issue 10).
SENDS = {("POST", f"/messages/{{message_id}}/{mode}") for mode in ("reply", "reply-all", "forward")}

# What a metadata-only viewer may read (without bodies); every other route naming the account
# is a 403 for them.
METADATA_READS = {
    ("GET", "/accounts/{name}"),
    ("GET", "/accounts/{name}/progress"),
    ("GET", "/accounts/{name}/folders"),
    ("GET", "/accounts/{name}/messages"),
    ("GET", "/messages/{message_id}"),
    ("GET", "/messages/{message_id}/actions"),
    ("GET", "/messages/{message_id}/send"),
    ("GET", "/threads/{thread_id}"),
}


def test_another_team_sees_nothing_and_a_metadata_viewer_no_bodies(
    app: FastAPI, admin: TestClient, mirror: SeededMirror
) -> None:
    """The account belongs to a member who shares it as metadata with their team. Walked as
    a user of another team: 404 from every route, as for things that do not exist. Walked as a
    teammate: the metadata routes answer without a body field or any text of a body, every
    other route is a 403 (or a 404 for a team they are not in). Then shared in full, and then a
    team inbox of the other team: those see every body and still change nothing."""
    routes, _ = _api_routes(app)
    ids, private = _secrets_of(admin, mirror)
    bodies = _bodies_of(admin, mirror)
    auth = app.state.auth
    owner = user_client(app, "owner@example.test")
    teammate = user_client(app, "teammate@example.test")
    outsider = user_client(app, "outsider@example.test")
    uid = {
        e: auth.users.get_user(f"{e}@example.test").id for e in ("owner", "teammate", "outsider")
    }
    auth.users.set_account_owner(mirror.account, uid["owner"])
    sales = admin.post("/teams", json={"name": "Sales"}).json()["id"]
    support = admin.post("/teams", json={"name": "Support"}).json()["id"]
    for team, who in ((sales, "owner"), (sales, "teammate"), (support, "outsider")):
        assert admin.put(f"/teams/{team}/members/{uid[who]}").status_code == 200
    changed = owner.patch(f"/accounts/{mirror.account}", json={"sharing": "metadata"})
    assert changed.status_code == 200 and changed.json()["sharing"] == "metadata"
    names = re.compile(r"\{(name|message_id|thread_id|outbox_id)\}")
    walked = 0
    for method, path in sorted(routes):
        if (method, path) in PUBLIC | OWN_THINGS | ADMIN_ONLY:
            continue
        url = _concrete(path, ids)
        if _shared(path):
            # CRM records are everyone's; the mail on their timelines is only what each sees
            # in full (a metadata-only account's mail stays off: entries carry snippets).
            if method == "GET":
                for reader in (outsider, teammate):
                    answer = reader.get(url)
                    assert answer.status_code == 200, (method, path, answer.status_code)
                    assert not any(s in answer.text for s in private[1:] + bodies), (path,)
            continue
        body = {} if method in ("POST", "PUT", "PATCH") else None
        answer = outsider.request(method, url, json=body)
        assert answer.status_code == 404, (method, path, answer.status_code)
        ghost = admin.request(method, _concrete(path, GHOSTS), json=body)
        real = {k: ids[k] for k in re.findall(r"\{(\w+)\}", path)}
        assert _blank(answer.text, real) == _blank(ghost.text, GHOSTS), (method, path)
        assert not any(s in answer.text for s in private[1:] + bodies), (method, path)
        seen = teammate.request(method, url, json=body)
        if (method, path) in METADATA_READS:
            assert seen.status_code == 200, (method, path, seen.status_code)
        elif names.search(path):
            assert seen.status_code == 403, (method, path, seen.status_code)
        else:
            assert seen.status_code == 404, (method, path, seen.status_code)  # not their team
        assert not _keys(_json(seen)) & BODY_KEYS, (method, path)
        assert not any(b in seen.text for b in bodies), (method, path)
        walked += 1
    assert walked >= 15
    # A search cannot probe the bodies either: text only a snippet holds finds nothing for
    # the teammate (the admin finds it).
    snippets = [b for b in bodies if admin_finds(admin, mirror.account, b)]
    assert snippets
    for text in snippets:
        found = teammate.get(f"/accounts/{mirror.account}/messages", params={"q": text})
        assert found.status_code == 200 and found.json()["messages"] == [], text
    # Its inbox view: threads, counts and participants, no snippet or attachment mark.
    inbox = teammate.get("/inbox", params={"account": mirror.account})
    assert inbox.status_code == 200 and inbox.json()["threads"], inbox.text
    assert not _keys(inbox.json()) & BODY_KEYS
    assert not any(b in inbox.text for b in bodies)
    assert outsider.get("/inbox", params={"account": mirror.account}).status_code == 404
    # The lists: the outsider sees nothing of it; the teammate sees it, marked metadata.
    assert outsider.get("/accounts").json() == []
    listed = teammate.get("/accounts").json()
    assert [(a["name"], a["access"]) for a in listed] == [
        (mirror.account, {"level": "metadata", "can_manage": False})
    ]
    # Its counts are the account's own (counted for the accounts the viewer sees only).
    whole = admin.get("/accounts").json()[0]
    assert whole["name"] == mirror.account
    assert [listed[0][k] for k in ("message_count", "folder_count", "selected_folder_count")] == [
        whole[k] for k in ("message_count", "folder_count", "selected_folder_count")
    ]
    assert whole["message_count"] > 0
    assert [t["name"] for t in teammate.get("/teams").json()] == ["Sales"]
    # Shared in full: the teammate reads everything, and still changes nothing.
    assert owner.patch(f"/accounts/{mirror.account}", json={"sharing": "team"}).status_code == 200
    # A team inbox of the other team: its member reads everything, and changes nothing; the
    # owner (not in that team) may not move it there, an admin may.
    refused = owner.patch(f"/accounts/{mirror.account}", json={"team_id": support})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "team_id"]
    moved = admin.patch(f"/accounts/{mirror.account}", json={"team_id": support})
    assert moved.status_code == 200 and moved.json()["team_id"] == support
    for reader in (teammate, outsider):
        for method, path in sorted(routes):
            if names.search(path) and (method, path) not in PUBLIC:
                body = {} if method in ("POST", "PUT", "PATCH") else None
                answer = reader.request(method, _concrete(path, ids), json=body)
                full_ok = method == "GET" or (method, path) in FULL_ACCESS_WRITES
                expected = 200 if full_ok else 403
                if (method, path) in FULL_ACCESS_NEEDS_BODY:
                    expected = 422
                if (method, path) in SENDS:
                    # Sending as a team inbox is its members' (the outsider is in Support).
                    # Reading a teammate's shared mail does not let one send as them: a reply
                    # goes as one of the reader's own identities, and this teammate has none
                    # (400 saying so). (A forward needs a recipient: the empty body is refused.)
                    sent = 400 if path.endswith("/forward") else 202
                    expected = sent if reader is outsider else 400
                    if reader is teammate:
                        assert "no identity" in answer.text, answer.text
                assert answer.status_code == expected, (method, path, answer.status_code)
    assert any(b in outsider.get(f"/messages/{ids['message_id']}").text for b in bodies)
    assert owner.get(f"/accounts/{mirror.account}").json()["access"]["can_manage"] is True
    assert admin.get(f"/accounts/{mirror.account}").json()["message_count"] > 0


def test_members_own_what_they_add_and_admins_see_all(app: FastAPI, admin: TestClient) -> None:
    member = user_client(app, "member@example.test")
    other = user_client(app, "other@example.test")
    new = {"name": "mine", "email": "m@example.com", "imap_host": "mail.example.com"}
    assert member.post("/accounts", json={**new, "password": "pw"}).status_code == 201
    listed = member.get("/accounts").json()
    assert [a["name"] for a in listed] == ["mine"]
    assert listed[0]["owner_id"] == member.get("/session").json()["id"]
    assert other.get("/accounts").json() == []
    assert other.get("/accounts/mine").status_code == 404
    assert other.patch("/accounts/mine", json={"window_days": 3}).status_code == 404
    assert other.delete("/accounts/mine").status_code == 404
    assert other.post("/accounts/mine/pause").status_code == 404
    assert [a["name"] for a in admin.get("/accounts").json()] == ["mine"]
    assert member.get("/accounts/mine").json()["window_days"] != 3  # nothing changed


def test_sign_in_sets_a_safe_cookie_and_sign_out_ends_it(app: FastAPI) -> None:
    app.state.auth.create_user("Person@Example.test", "correct horse", admin=False)
    _, stored = app.state.auth.users.credentials("person@example.test")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    client = TestClient(app, base_url=API_BASE_URL)
    wrong = client.post("/session", json={"email": "person@example.test", "password": "nope"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    ok = client.post("/session", json={"email": "PERSON@example.test", "password": "correct horse"})
    assert ok.status_code == 200 and ok.json()["email"] == "Person@Example.test"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    assert client.get("/session").json()["email"] == "Person@Example.test"
    assert client.get("/accounts").status_code == 200
    assert client.delete("/session").status_code == 204
    client.cookies.clear()
    assert client.get("/session").status_code == 401
    # The ended session's cookie is refused even when sent again.
    value = ok.cookies["correspond_session"]
    client.cookies.set("correspond_session", value)
    assert client.get("/accounts").status_code == 401
    # Over HTTPS the cookie is Secure.
    https = TestClient(app, base_url="https://localhost")
    secure = https.post(
        "/session", json={"email": "person@example.test", "password": "correct horse"}
    )
    assert "Secure" in secure.headers["set-cookie"]


def test_sign_in_is_throttled_per_user_and_per_address(store: Store, settings: Settings) -> None:
    settings = settings.clone(login_max_failures_per_user=3, login_max_failures_per_address=5)
    app = create_app(settings, store=store)
    app.state.auth.create_user("a@example.test", "right", admin=False)
    client = TestClient(app, base_url=API_BASE_URL)

    def login(email: str, password: str) -> Any:
        return client.post("/session", json={"email": email, "password": password})

    for _ in range(3):
        assert login("a@example.test", "wrong").status_code == 401
    refused = login("a@example.test", "right")  # even the right password, for a while
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    # Per address: two more failures for other names reach this client's limit of five.
    assert login("b@example.test", "x").status_code == 401
    assert login("c@example.test", "x").status_code == 401
    assert login("d@example.test", "x").status_code == 429
    assert len(app.state.auth.limiter) <= settings.login_limiter_max_entries


def test_an_unknown_user_costs_a_password_hash_too(app: FastAPI) -> None:
    """Constant-time behaviour: the answer for an unknown address verifies a (dummy) argon2
    hash like the answer for a wrong password does, so timing does not tell them apart."""
    app.state.auth.create_user("known@example.test", "right", admin=False)
    calls: list[str] = []

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            calls.append("verify")
            return super().verify(hash, password)

    app.state.auth.hasher = Counting(time_cost=1, memory_cost=1024)
    client = TestClient(app, base_url=API_BASE_URL)
    unknown = client.post("/session", json={"email": "nobody@example.test", "password": "x"})
    wrong = client.post("/session", json={"email": "known@example.test", "password": "x"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()
    assert calls == ["verify", "verify"]


def test_tokens_are_shown_once_listed_by_prefix_and_revocable(app: FastAPI) -> None:
    admin = authed_client(app)
    created = admin.post("/tokens", json={"name": "crm import"})
    assert created.status_code == 201
    token = created.json()["token"]
    assert token.startswith("ct_") and len(token) > 40
    listed = admin.get("/tokens").json()
    assert token not in str(listed)
    mine = next(t for t in listed if t["id"] == created.json()["id"])
    assert token.startswith(mine["prefix"]) and mine["revoked_at"] is None
    with_token = TestClient(
        app, base_url=API_BASE_URL, headers={"Authorization": f"Bearer {token}"}
    )
    assert with_token.get("/accounts").status_code == 200
    used = next(t for t in admin.get("/tokens").json() if t["id"] == mine["id"])
    assert used["last_used_at"] is not None
    # Another user cannot revoke it (nor learn it exists).
    member = user_client(app, "member@example.test")
    assert member.delete(f"/tokens/{mine['id']}").status_code == 404
    assert with_token.get("/accounts").status_code == 200
    assert admin.delete(f"/tokens/{mine['id']}").status_code == 204
    assert with_token.get("/accounts").status_code == 401
    # The token store keeps hashes only.
    with app.state.auth.users._sessions() as s:
        from sqlalchemy import text

        stored = " ".join(str(r) for r in s.execute(text("SELECT * FROM api_tokens")).all())
    assert token not in stored


def test_a_disabled_user_is_refused_everywhere(app: FastAPI) -> None:
    authed_client(app)  # an admin exists, so the member can be disabled
    member = user_client(app, "member@example.test")
    assert member.get("/accounts").status_code == 200
    app.state.auth.users.set_disabled("member@example.test", True)
    assert member.get("/accounts").status_code == 401


def test_wrong_credentials_are_401(app: FastAPI) -> None:
    client = TestClient(app, base_url=API_BASE_URL)
    for header in ("Bearer ct_not-a-token", "Basic YTpi", "Bearer ", "ct_abc"):
        answer = client.get("/accounts", headers={"Authorization": header})
        assert answer.status_code == 401, header
    client.cookies.set("correspond_session", "forged")
    assert client.get("/accounts").status_code == 401


# --- the perimeter ------------------------------------------------------------------------------


def test_only_configured_host_names_are_answered(app: FastAPI) -> None:
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends its own name."""
    admin = authed_client(app)
    for host in ("evil.example", "127.0.0.1.evil.example", "testserver"):
        answer = admin.get("/accounts", headers={"Host": host})
        assert answer.status_code == 400, host
        assert "host" in answer.json()["detail"]
    for host in ("localhost", "localhost:8025", "127.0.0.1:8025", "[::1]:8025", "LOCALHOST"):
        assert admin.get("/accounts", headers={"Host": host}).status_code == 200, host


def test_configured_names_extend_the_loopback_ones(store: Store, store_settings: Settings) -> None:
    settings = store_settings.clone(allowed_hosts=["crm.example.com"])
    client = TestClient(create_app(settings, store=store), base_url="http://crm.example.com")
    assert client.get("/health").status_code == 200
    assert client.get("/health", headers={"Host": "localhost"}).status_code == 400


def test_cross_site_state_changes_are_refused(store: Store, store_settings: Settings) -> None:
    settings = store_settings.clone(allowed_origins=["https://crm.example.com"])
    admin = authed_client(create_app(settings, store=store))
    new = {"name": "w", "email": "m@example.com", "imap_host": "mail.example.com", "password": "p"}
    evil = admin.post("/accounts", json=new, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert admin.get("/accounts").json() == []  # nothing was created
    null = admin.post("/tokens", json={"name": "x"}, headers={"Origin": "null"})
    assert null.status_code == 403
    own = admin.post("/accounts", json=new, headers={"Origin": API_BASE_URL})
    assert own.status_code == 201
    allowed = admin.post("/accounts/w/pause", headers={"Origin": "https://crm.example.com"})
    assert allowed.status_code == 200
    # Reads are not state changes; and no CORS header is ever sent.
    read = admin.get("/accounts", headers={"Origin": "https://evil.example"})
    assert read.status_code == 200
    assert not any(h.startswith("access-control-") for h in read.headers)


def test_request_bodies_over_the_limit_are_413(store: Store, store_settings: Settings) -> None:
    settings = store_settings.clone(max_request_bytes=2000)
    admin = authed_client(create_app(settings, store=store))
    big = {"name": "x" * 3000}
    assert admin.post("/tokens", json=big).status_code == 413  # by Content-Length

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    # Streamed without a Content-Length: the bytes are counted as they arrive.
    streamed = admin.post("/tokens", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert admin.get("/tokens").json()[0]["name"] == "tests"  # none was created
    assert len(admin.get("/tokens").json()) == 1


# --- section 4: 422s, never 500s ----------------------------------------------------------------


def test_ids_past_two_to_the_63_are_422(admin: TestClient, mirror: SeededMirror) -> None:
    for url in (
        f"/messages/{BIG_ID}",
        f"/messages/{BIG_ID}/raw",
        f"/messages/1/attachments/{BIG_ID}",
        f"/threads/{BIG_ID}",
        f"/accounts/{mirror.account}/messages?thread={BIG_ID}",
        f"/messages/{10**30}",
    ):
        answer = admin.get(url)
        assert answer.status_code == 422, (url, answer.status_code)
    assert admin.delete(f"/tokens/{BIG_ID}").status_code == 422
    # A page cursor carrying such an id is refused like any invalid cursor, never a 500.
    messages = f"/accounts/{mirror.account}/messages"
    garbage = admin.get(messages, params={"before": "garbage"}).status_code
    big = encode_cursor(datetime.now(UTC), BIG_ID)
    assert admin.get(messages, params={"before": big}).status_code == garbage != 500
    assert admin.get(f"/messages/{BIG_ID - 1}").status_code == 404  # the largest id is fine


def test_a_password_with_nul_is_422(admin: TestClient) -> None:
    new = {"name": "w", "email": "m@example.com", "imap_host": "mail.example.com"}
    bad = admin.post("/accounts", json={**new, "password": "a\x00b"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "password"]
    assert "a\x00b" not in bad.text
    assert admin.post("/accounts", json={**new, "password": "ab"}).status_code == 201
    assert admin.patch("/accounts/w", json={"password": "x\x00"}).status_code == 422
    login = admin.post("/session", json={"email": "admin@example.test", "password": "x\x00"})
    assert login.status_code == 422


# --- a secret only goes where it was entered for ------------------------------------------------


class Listener:
    """A TCP listener on loopback that records whether anyone connected (and what they sent)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(1)
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
                with contextlib.suppress(OSError):
                    self.received += conn.recv(65536)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_patch_to_another_server_never_sends_the_stored_password(admin: TestClient) -> None:
    """The attack from the issue: PATCH the host to a server of one's choosing with plaintext
    allowed, then ask for a connection test. The stored password is dropped by the PATCH, and
    the test says so without contacting anything."""
    new = {
        "name": "w", "email": "m@example.com", "imap_host": "mail.example.com",
        "password": "the-real-secret",
    }  # fmt: skip
    assert admin.post("/accounts", json=new).status_code == 201
    listener = Listener()
    try:
        patch = {
            "imap_host": "127.0.0.1", "imap_port": listener.port, "imap_security": "plain",
            "allow_plaintext": True,
        }  # fmt: skip
        changed = admin.patch("/accounts/w", json=patch).json()
        assert changed["has_password"] is False
        assert changed["state"] == "error" and "password" in changed["state_detail"]
        report = admin.post("/accounts/w/test").json()
        assert report["ok"] is False and report["problem"] == "no_password"
        assert listener.connections == 0 and b"the-real-secret" not in listener.received
        # With a password in the same request the change keeps it (the user entered it for
        # this server).
        again = admin.patch("/accounts/w", json={"imap_port": listener.port, "password": "new"})
        assert again.json()["has_password"] is True
    finally:
        listener.close()


@pytest.mark.parametrize(
    "change",
    [
        {"imap_host": "other.example.com"},
        {"imap_port": 1143},
        {"imap_security": "tls"},
        {"username": "someone"},
        {"allow_plaintext": True},
        {"smtp_host": "smtp.other.example.com"},
        {"smtp_port": 2525},
        {"smtp_security": "tls"},
    ],
)
def test_each_connection_field_drops_the_password(
    admin: TestClient, change: dict[str, Any]
) -> None:
    new = {"name": "w", "email": "m@example.com", "imap_host": "mail.example.com", "password": "p"}
    assert admin.post("/accounts", json=new).status_code == 201
    assert admin.patch("/accounts/w", json={"window_days": 9}).json()["has_password"] is True
    assert admin.patch("/accounts/w", json=change).json()["has_password"] is False


def test_the_sign_in_limiter_stays_bounded() -> None:
    """A flood of failed sign-ins under ever new names and addresses keeps at most
    ``max_entries`` keys; the newest are the ones remembered."""
    limiter = LoginLimiter(per_user=2, per_address=1000, window_seconds=60, max_entries=50)
    for n in range(5000):
        limiter.failed(f"user{n}@example.test", f"10.0.{n // 250}.{n % 250}")
    assert len(limiter) <= 50
    limiter.failed("user4999@example.test", "10.0.0.1")
    with pytest.raises(LoginThrottled):
        limiter.check("user4999@example.test", "192.0.2.1")
    limiter.check("user0@example.test", "192.0.2.1")  # forgotten: not refused


def test_a_secret_is_not_handed_out_for_settings_read_before_a_change(store: Store) -> None:
    """A task that read the account, then asks for its secret after the user moved the account
    to another server (with the new server's password), does not get that password for the
    old endpoint it is about to connect to."""
    draft = draft_from_preset("other", name="w", email="m@example.com", imap_host="old.example.com")
    store.add_account(draft, "old-password")
    before = store.get_account("w")
    store.update_account("w", AccountChanges(imap_host="new.example.com"), secret="new-password")
    with pytest.raises(SettingsChanged):
        store.account_secret("w", for_account=before)
    assert store.account_secret("w", for_account=store.get_account("w")) == "new-password"
