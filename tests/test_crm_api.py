"""The CRM API on SQLite and PostgreSQL: records' CRUD, search and paging, bulk import,
timelines (paged, visibility-filtered) and manual thread-deal links."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.linker import LinkerStore, LinkPolicy
from correspond.store.message_tables import MessageRow
from correspond.testing.synthetic import fill_messages, make_account_with_folders
from helpers import authed_client, user_client

OWNER = "owner@example.test"


@pytest.fixture
def app(store: Store, store_settings: Settings) -> FastAPI:
    return create_app(store_settings, store=store)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with authed_client(app) as client:
        yield client


def _link(app: FastAPI) -> None:
    LinkerStore(app.state.crm.engine, LinkPolicy()).run_until_idle()


def test_contact_crud_search_and_paging(admin: TestClient) -> None:
    made = [
        admin.post("/contacts", json={"name": f"Person {n}", "emails": [f"P{n}@Acme.test"]})
        for n in range(5)
    ]
    assert [r.status_code for r in made] == [201] * 5
    first = made[0].json()
    assert first["emails"] == ["p0@acme.test"]
    # An address is one contact's; an external id is one record's.
    clash = admin.post("/contacts", json={"emails": ["p0@ACME.test"]})
    assert clash.status_code == 409 and "belongs to contact" in clash.json()["detail"]
    assert admin.post("/contacts", json={"emails": ["not-an-address"]}).status_code == 400
    assert admin.post("/contacts", json={"surname": "x"}).status_code == 422
    assert admin.post("/contacts", json={"company_id": 999}).status_code == 400
    # Pages by id cursor.
    page = admin.get("/contacts", params={"limit": 2}).json()
    seen = [c["id"] for c in page["items"]]
    while page["next_cursor"] is not None:
        page = admin.get("/contacts", params={"limit": 2, "after": page["next_cursor"]}).json()
        seen += [c["id"] for c in page["items"]]
    assert seen == sorted(r.json()["id"] for r in made)
    # Search by name or address.
    assert [c["name"] for c in admin.get("/contacts", params={"q": "p3@"}).json()["items"]] == [
        "Person 3"
    ]
    assert len(admin.get("/contacts", params={"q": "PERSON"}).json()["items"]) == 5
    # Change, read, delete.
    changed = admin.patch(f"/contacts/{first['id']}", json={"emails": ["p0@acme.test", "x@y.test"]})
    assert changed.status_code == 200 and changed.json()["name"] == "Person 0"
    assert admin.get(f"/contacts/{first['id']}").json()["emails"] == ["p0@acme.test", "x@y.test"]
    assert admin.delete(f"/contacts/{first['id']}").status_code == 204
    assert admin.get(f"/contacts/{first['id']}").status_code == 404
    assert admin.patch(f"/contacts/{first['id']}", json={"name": "x"}).status_code == 404


def test_companies_deals_and_activities(admin: TestClient) -> None:
    company = admin.post(
        "/companies", json={"name": "Acme", "domains": ["ACME.test", "@acme.example"]}
    )
    assert company.status_code == 201
    assert company.json()["domains"] == ["acme.test", "acme.example"]
    assert admin.post("/companies", json={"name": "B", "domains": ["acme.test"]}).status_code == 409
    assert admin.get("/companies", params={"q": "acme.ex"}).json()["items"][0]["name"] == "Acme"
    contact = admin.post("/contacts", json={"emails": ["a@acme.test"]}).json()
    deal = admin.post(
        "/deals",
        json={
            "name": "Renewal",
            "company_id": company.json()["id"],
            "contact_ids": [contact["id"]],
        },
    )
    assert deal.status_code == 201 and deal.json()["status"] == "open"
    assert admin.patch(f"/deals/{deal.json()['id']}", json={"status": "done"}).status_code == 422
    won = admin.patch(f"/deals/{deal.json()['id']}", json={"status": "won"}).json()
    assert won["status"] == "won" and won["contact_ids"] == [contact["id"]]
    assert admin.post("/deals", json={"name": "X", "contact_ids": [999]}).status_code == 400
    meeting = admin.post(
        "/activities",
        json={
            "kind": "call",
            "title": "Intro",
            "at": "2026-01-02T10:00:00Z",
            "participants": ["B@acme.test", "a@acme.test"],
        },
    )
    assert meeting.status_code == 201
    assert meeting.json()["participants"] == ["a@acme.test", "b@acme.test"]
    assert admin.get("/activities", params={"q": "b@acme"}).json()["items"][0]["title"] == "Intro"
    assert admin.delete(f"/companies/{company.json()['id']}").status_code == 204
    assert admin.get(f"/deals/{deal.json()['id']}").json()["company_id"] is None


def test_bulk_import_is_idempotent_and_reports_bad_rows(admin: TestClient) -> None:
    companies = b'[{"name": "Acme", "domains": "acme.test", "external_id": "co-1"}]'
    assert admin.post(
        "/import/companies", content=companies, headers={"content-type": "application/json"}
    ).json() == {"created": 1, "updated": 0, "errors": []}
    csv = (
        b"name,emails,external_id,company_external_id\n"
        b"Ann,ann@acme.test;ann@home.test,c-1,co-1\n"
        b"Bad,not an address,c-2,\n"
        b"Bob,bob@acme.test,,co-404\n"
        b"Cy,cy@acme.test,,\n"
    )
    first = admin.post("/import/contacts", content=csv, headers={"content-type": "text/csv"})
    assert first.status_code == 200
    report = first.json()
    assert (report["created"], report["updated"]) == (2, 0)
    assert [e["row"] for e in report["errors"]] == [2, 3]
    assert "co-404" in report["errors"][1]["error"]
    again = admin.post("/import/contacts", content=csv, headers={"content-type": "text/csv"})
    assert (again.json()["created"], again.json()["updated"]) == (0, 2)
    # Matched by address when there is no external id: the name changes, nothing is added.
    renamed = admin.post("/import/contacts", json=[{"name": "Cyrus", "email": "CY@acme.test"}])
    assert renamed.json() == {"created": 0, "updated": 1, "errors": []}
    items = admin.get("/contacts").json()["items"]
    assert sorted(c["name"] for c in items) == ["Ann", "Cyrus"]
    ann = next(c for c in items if c["name"] == "Ann")
    assert ann["company_id"] is not None and ann["emails"] == ["ann@acme.test", "ann@home.test"]
    deals = admin.post(
        "/import/deals",
        json=[{"name": "Big", "external_id": "d-1", "contact_emails": ["ann@acme.test"]}],
    )
    assert deals.json()["created"] == 1
    assert admin.get("/deals").json()["items"][0]["contact_ids"] == [ann["id"]]
    assert (
        admin.post(
            "/import/contacts", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert admin.post("/import/people", json=[]).status_code == 404


def test_timelines_page_newest_first_and_hide_others_mail(app: FastAPI, admin: TestClient) -> None:
    store_engine = app.state.crm.engine
    account_id, folders = make_account_with_folders(store_engine, "acc")
    fill_messages(store_engine, account_id, folders, 120)
    contact = admin.post("/contacts", json={"emails": [OWNER]}).json()
    deal = admin.post("/deals", json={"name": "Hand-picked"}).json()
    _link(app)
    ids: list[int] = []
    before = None
    while True:
        params: dict[str, object] = {"limit": 50}
        if before:
            params["before"] = before
        page = admin.get(f"/contacts/{contact['id']}/timeline", params=params).json()
        ids += [m["id"] for m in page["messages"]]
        before = page["next_cursor"]
        if before is None:
            break
    with store_engine.connect() as conn:
        expected = list(
            conn.scalars(
                select(MessageRow.id).order_by(MessageRow.sort_at.desc(), MessageRow.id.desc())
            )
        )
    assert ids == expected
    member = user_client(app, "member@example.test")
    assert member.get(f"/contacts/{contact['id']}/timeline").json()["messages"] == []
    assert member.get(f"/contacts/{contact['id']}").status_code == 200  # records are shared
    # A thread linked to a deal by hand: on its timeline, and a member cannot link it.
    thread_id = admin.get(f"/messages/{ids[0]}").json()["thread_id"]
    linked = admin.put(f"/threads/{thread_id}/deals/{deal['id']}")
    assert linked.status_code == 200 and linked.json()["messages"] >= 1
    assert member.put(f"/threads/{thread_id}/deals/{deal['id']}").status_code == 404
    assert admin.put(f"/threads/{thread_id}/deals/987654").status_code == 404
    on_deal = admin.get(f"/deals/{deal['id']}/timeline").json()["messages"]
    assert {m["thread_id"] for m in on_deal} == {thread_id}
    assert admin.delete(f"/threads/{thread_id}/deals/{deal['id']}").status_code == 200
    assert admin.get(f"/deals/{deal['id']}/timeline").json()["messages"] == []
    assert admin.get("/contacts/987654/timeline").status_code == 404


def test_serve_links_a_new_contacts_mail_at_once_not_at_the_next_poll(
    store: Store, store_settings: Settings
) -> None:
    """With the sync runner in the process (``serve``), its linker indexes existing mail when
    it starts and is woken by a record change: linked well before its (hour-long) poll."""
    from correspond.sync.runner import SyncRunner

    settings = store_settings.clone(linker_poll_seconds=3600)
    account_id, folders = make_account_with_folders(store.engine, "acc")
    fill_messages(store.engine, account_id, folders, 40)
    runner = SyncRunner(store, settings, names=[])
    app = create_app(settings, store=store, runner=runner)
    links = LinkerStore(store.engine, LinkPolicy())
    with authed_client(app) as admin:
        deadline = time.monotonic() + 20
        while links.watermark() < 40 and time.monotonic() < deadline:
            time.sleep(0.05)  # the first pass (at start) is over: what follows needs a wake-up
        assert links.watermark() == 40
        contact = admin.post("/contacts", json={"emails": [OWNER]}).json()
        linked: list[object] = []
        while time.monotonic() < deadline:
            linked = admin.get(f"/contacts/{contact['id']}/timeline").json()["messages"]
            if len(linked) == 40:
                break
            time.sleep(0.05)
        assert len(linked) == 40


def test_contacts_filter_by_origin_and_dismissals_can_be_lifted(admin: TestClient) -> None:
    made = admin.post("/contacts", json={"name": "Ann", "emails": ["ann@cust.test"]})
    assert made.status_code == 201 and made.json()["origin"] == "manual"
    admin.post("/import/contacts", json=[{"name": "Cy", "emails": ["cy@cust.test"]}])
    imported = admin.get("/contacts", params={"origin": "import"}).json()["items"]
    assert [c["emails"] for c in imported] == [["cy@cust.test"]]
    assert admin.get("/contacts", params={"origin": "nope"}).status_code == 422
    assert admin.delete(f"/contacts/{made.json()['id']}").status_code == 204
    page = admin.get("/contact-dismissals").json()
    assert [d["address"] for d in page["items"]] == ["ann@cust.test"]
    assert page["next_cursor"] is None
    assert admin.delete("/contact-dismissals/ann@cust.test").status_code == 204
    assert admin.delete("/contact-dismissals/ann@cust.test").status_code == 404
    assert admin.get("/contact-dismissals").json()["items"] == []
