"""Changing things from the web app: CRM records (contacts, companies, deals, activities:
create, edit, delete with a confirmation, errors beside their field, the linker woken so the
timeline fills), a sending identity (edit, delete; the stored password dropped by new server
settings), templates (delete; a preview for a contact, a deal and an identity, its HTML in a
sandboxed frame). In Debian's Chromium (``test_web``'s fixtures, with ``serve``'s sync runner
in the app so its linker runs, on an hour-long poll: only a wake-up links in time) on SQLite
and PostgreSQL, and over HTTP: every new form refused without its CSRF token, and what a
member may not change (another user's identity: 404; a teammate's shared template: 403).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from correspond.api import create_app
from correspond.errors import NotFound
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.compose import SmtpSettings, TemplateFields
from correspond.sync.runner import SyncRunner
from correspond.testing.mirror import SeededMirror
from correspond.testing.net import free_port
from correspond.web.csrf import session_token
from test_web import ADMIN, Watched, _first_run, _signed_in
from test_web import browser as browser  # fixtures, used by name
from test_web import mirror as mirror
from test_web import served as served
from test_web import settings as settings
from test_web import store_url as store_url  # SQLite only: conftest_store.sqlite_store_url
from test_web import web as web


@pytest.fixture
def app(store: Store, settings: Settings, mirror: SeededMirror) -> Iterator[FastAPI]:
    """The app with ``serve``'s runner (no account of its own to sync: ``names=[]``), whose
    linker only a record change can wake in time (its poll is an hour)."""
    slow = settings.clone(linker_poll_seconds=3600)
    runner = SyncRunner(store, slow, names=[])
    yield create_app(slow, store=store, runner=runner)


def _open(page: Any, selector: str) -> None:
    """Open a ``<details>`` (the "New ..." and "Edit" forms) unless it is open."""
    if page.locator(selector).get_attribute("open") is None:
        page.click(f"{selector} > summary")


def _timeline_fills(page: Any, url: str, at_least: int = 1) -> int:
    """Reload ``url`` until its email timeline has entries (the linker was woken)."""
    deadline = time.monotonic() + 20
    while True:
        page.goto(url)
        count = int(page.locator("#timeline li.entry").count())
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.3)


@pytest.mark.dovecot
def test_crm_records_created_edited_and_deleted(web: Watched, app: FastAPI) -> None:
    page = web.page
    crm = app.state.crm
    _first_run(web)
    # A company; a bad domain is named beside Domains, what was typed kept.
    page.goto("/crm/companies")
    _open(page, "#new-record")
    page.fill("#new-company input[name=name]", "Acme")
    page.fill("#new-company textarea[name=domains]", "acme.test, not a domain!")
    page.click("#new-company button[type=submit]")
    assert "not a domain" in page.locator("#new-company #error-domains").inner_text()
    assert page.input_value("#new-company input[name=name]") == "Acme"
    page.fill("#new-company textarea[name=domains]", "acme.test")
    page.click("#new-company button[type=submit]")
    page.wait_for_url(re.compile(r"/crm/companies/(\d+)\?done=created$"))
    acme_id = int(page.url.split("/")[-1].split("?")[0])
    assert page.locator("dd.domains").inner_text() == "acme.test"
    # A second company with the same domain: refused beside Domains.
    page.goto("/crm/companies")
    _open(page, "#new-record")
    page.fill("#new-company input[name=name]", "Copycat")
    page.fill("#new-company textarea[name=domains]", "ACME.test")
    page.click("#new-company button[type=submit]")
    taken = page.locator("#new-company #error-domains").inner_text()
    assert "acme.test is already on another company" in taken, taken
    assert [c.name for c in crm.list_companies().items] == ["Acme"]

    # A contact with two addresses at Acme: her mail fills her timeline (the linker woken).
    page.goto("/crm/contacts")
    _open(page, "#new-record")
    page.fill("#new-contact input[name=name]", "Alice Example")
    page.fill("#new-contact textarea[name=emails]", "alice@example.test\nalice@acme.test")
    page.select_option("#new-contact select[name=company_id]", str(acme_id))
    page.click("#new-contact button[type=submit]")
    page.wait_for_url(re.compile(r"/crm/contacts/(\d+)\?done=created$"))
    alice_url = page.url.split("?")[0]
    alice_id = int(alice_url.split("/")[-1])
    assert page.locator("#crm-done").inner_text() == "Created."
    assert page.locator("dd.addresses").inner_text() == "alice@example.test, alice@acme.test"
    assert page.locator("dd.company").inner_text() == "Acme"
    assert _timeline_fills(page, alice_url) > 0
    assert "Project kickoff" in page.locator("#timeline").inner_text()
    # Another contact with one of her addresses, or a bad one: named beside the addresses.
    page.goto("/crm/contacts")
    _open(page, "#new-record")
    page.fill("#new-contact input[name=name]", "Bob")
    page.fill("#new-contact textarea[name=emails]", "bob@example.test, Alice@Example.test")
    page.click("#new-contact button[type=submit]")
    error = page.locator("#new-contact #error-emails").inner_text()
    assert f"alice@example.test is already on another contact (#{alice_id})" in error, error
    other = page.locator("#new-contact #error-emails a.other-record")
    assert other.get_attribute("href") == f"/crm/contacts/{alice_id}"
    page.fill("#new-contact textarea[name=emails]", "bob@")
    page.click("#new-contact button[type=submit]")
    assert "not an e-mail address" in page.locator("#new-contact #error-emails").inner_text()
    assert page.input_value("#new-contact input[name=name]") == "Bob"
    assert len(crm.list_contacts().items) == 1

    # Edited: a new name, one address fewer.
    page.goto(alice_url)
    _open(page, "#edit-record")
    page.fill("#edit-contact input[name=name]", "Alice Cooper")
    page.fill("#edit-contact textarea[name=emails]", "alice@example.test")
    page.click("#edit-contact button[type=submit]")
    page.wait_for_url(f"{alice_url}?done=saved")
    assert page.locator("h1").inner_text() == "Alice Cooper"
    assert page.locator("dd.addresses").inner_text() == "alice@example.test"
    assert crm.get_contact(alice_id).emails == ("alice@example.test",)
    # A bad address on save: beside the field, nothing changed.
    _open(page, "#edit-record")
    page.fill("#edit-contact textarea[name=emails]", "alice@example.test, nope")
    page.click("#edit-contact button[type=submit]")
    assert "'nope'" in page.locator("#edit-contact #error-emails").inner_text()
    assert crm.get_contact(alice_id).emails == ("alice@example.test",)

    # A deal with Acme and Alice; its timeline holds her mail; then won.
    page.goto("/crm/deals")
    _open(page, "#new-record")
    page.click("#new-deal button[type=submit]")  # no name
    assert page.locator("#new-deal #error-name").inner_text() == "A deal needs a name."
    page.fill("#new-deal input[name=name]", "Acme renewal")
    page.select_option("#new-deal select[name=company_id]", str(acme_id))
    page.select_option("#new-deal select[name=contact_ids]", [str(alice_id)])
    page.click("#new-deal button[type=submit]")
    page.wait_for_url(re.compile(r"/crm/deals/(\d+)\?done=created$"))
    deal_url = page.url.split("?")[0]
    deal_id = int(deal_url.split("/")[-1])
    assert page.locator("dd.status").inner_text() == "open"
    assert page.locator("dd.contacts").inner_text() == "Alice Cooper"
    assert _timeline_fills(page, deal_url) > 0
    _open(page, "#edit-record")
    page.select_option("#edit-deal select[name=status]", "won")
    page.click("#edit-deal button[type=submit]")
    page.wait_for_url(f"{deal_url}?done=saved")
    assert page.locator("dd.status").inner_text() == "won"
    assert crm.get_deal(deal_id).contact_ids == (alice_id,)

    # An activity from her page ("Add activity": her address prefilled).
    page.goto(alice_url)
    page.click("a.add-activity")
    page.wait_for_url(re.compile(r"/crm/activities\?participants="))
    assert page.input_value("#new-activity textarea[name=participants]") == "alice@example.test"
    page.select_option("#new-activity select[name=kind]", "call")
    page.fill("#new-activity input[name=title]", "Intro call")
    page.fill("#new-activity input[name=at]", "2030-01-31T09:00")
    page.click("#new-activity button[type=submit]")
    page.wait_for_url(re.compile(r"/crm/activities/(\d+)\?done=created$"))
    activity_url = page.url.split("?")[0]
    assert page.locator("dd.kind").inner_text() == "call"
    # Typed in the browser's zone (its offset sent beside it), stored in UTC, shown local.
    offset = page.evaluate("new Date('2030-01-31T09:00').getTimezoneOffset()")
    stored = crm.get_activity(int(activity_url.split("/")[-1])).at
    assert stored == datetime(2030, 1, 31, 9, 0, tzinfo=UTC) + timedelta(minutes=offset)
    assert page.locator("dd.at").inner_text() == "2030-01-31 09:00"
    page.goto(alice_url)
    assert page.locator("#activities .subject").all_inner_texts() == ["Intro call"]
    page.click("#activities a.subject")
    page.wait_for_url(activity_url)
    _open(page, "#edit-record")
    page.fill("#edit-activity input[name=title]", "Intro call, rescheduled")
    page.fill("#edit-activity textarea[name=participants]", "alice@example.test, x@")
    page.click("#edit-activity button[type=submit]")
    assert "x@" in page.locator("#edit-activity #error-participants").inner_text()
    page.fill("#edit-activity textarea[name=participants]", "alice@example.test")
    page.click("#edit-activity button[type=submit]")
    page.wait_for_url(f"{activity_url}?done=saved")
    assert page.locator("h1").inner_text() == "Intro call, rescheduled"

    # Deleted, each after its confirmation: the activity, the deal, the contact.
    for url, plural in ((activity_url, "activities"), (deal_url, "deals"), (alice_url, "contacts")):
        page.goto(url)
        _open(page, "#edit-record")
        page.click("#delete-record")
        page.wait_for_url(f"{url}/delete")
        assert "No email is deleted" in page.locator(".delete-plan").inner_text()
        page.click("#confirm-delete")
        page.wait_for_url(f"{web.base}/crm/{plural}?done=deleted")
        assert page.locator("p.confirm").inner_text() == "Deleted."
    for read, record_id in ((crm.get_deal, deal_id), (crm.get_contact, alice_id)):
        with pytest.raises(NotFound):
            read(record_id)
    assert crm.list_activities().items == []
    assert crm.get_company(acme_id).name == "Acme"
    assert not web.dialogs and not web.remote


@pytest.mark.dovecot
def test_an_activity_time_is_typed_and_shown_in_the_browsers_zone(
    browser: Any, served: str, app: FastAPI
) -> None:
    """In Asia/Kolkata (UTC+05:30): 09:30 there is stored as 04:00 UTC, shown and edited as
    09:30, and kept as it was by a save that does not touch it."""
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    context = browser.new_context(base_url=served, timezone_id="Asia/Kolkata")
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto("/crm/activities")
        page.fill("input[name=email]", ADMIN[0])
        page.fill("input[name=password]", ADMIN[1])
        page.click("button[type=submit]")
        page.wait_for_url(f"{served}/crm/activities")
        _open(page, "#new-record")
        page.select_option("#new-activity select[name=kind]", "meeting")
        page.fill("#new-activity input[name=title]", "Kickoff in Pune")
        page.fill("#new-activity input[name=at]", "2030-01-31T09:30")
        page.click("#new-activity button[type=submit]")
        page.wait_for_url(re.compile(r"/crm/activities/(\d+)\?done=created$"))
        activity_id = int(page.url.split("/")[-1].split("?")[0])
        when = datetime(2030, 1, 31, 4, 0, tzinfo=UTC)
        assert app.state.crm.get_activity(activity_id).at == when
        assert page.locator("dd.at").inner_text() == "2030-01-31 09:30"
        _open(page, "#edit-record")
        assert page.input_value("#edit-activity input[name=at]") == "2030-01-31T09:30"
        page.fill("#edit-activity input[name=title]", "Kickoff in Pune, confirmed")
        page.click("#edit-activity button[type=submit]")
        page.wait_for_url(re.compile(r"\?done=saved$"))
        assert app.state.crm.get_activity(activity_id).at == when
        page.goto("/crm/activities")
        listed = page.locator("li.record", has_text="Kickoff in Pune")
        assert "2030-01-31 09:30" in listed.inner_text()
    finally:
        context.close()


def _smtp_identity(app: FastAPI, port: int) -> Any:
    """An SMTP identity of the admin's, stored as the API stores one after its test."""
    ada = app.state.auth.users.get_user(ADMIN[0])
    settings = SmtpSettings(host="127.0.0.1", port=port, security="tls", username="out")
    return app.state.composer.identities.create_smtp(
        ada, address="out@example.test", display_name="Outbound", smtp=settings, secret="s3cret"
    )


@pytest.mark.dovecot
def test_identity_edited_and_deleted_and_a_template_previewed_and_deleted(
    web: Watched, app: FastAPI, mirror: SeededMirror
) -> None:
    page = web.page
    _first_run(web)
    ada = app.state.auth.users.get_user(ADMIN[0])
    identities = app.state.composer.identities
    port = free_port()
    smtp = _smtp_identity(app, port)
    page.goto("/settings/smtp")
    note = page.locator("#bcc-note").inner_text()
    assert "No BCC address is needed" in note and "automatically" in note
    page.locator(f"li.identity[data-identity='{smtp.id}'] a.edit").click()
    page.wait_for_url(f"{web.base}/settings/smtp/{smtp.id}")
    # The display name alone: the stored password stays.
    page.fill("#edit-identity input[name=name]", "Sales desk")
    page.click("#edit-identity button[type=submit]")
    page.wait_for_url(f"{web.base}/settings/smtp/{smtp.id}?done=saved")
    saved = identities.get(ada, smtp.id)
    assert saved.display_name == "Sales desk" and saved.has_secret
    # A new port with a new password: tested first; the server does not answer, so the
    # test's sentence is shown and nothing is saved.
    closed = free_port()
    page.fill("#edit-identity input[name=port]", str(closed))
    page.fill("#edit-identity input[name=password]", "new secret")
    page.click("#edit-identity button[type=submit]")
    refused = page.locator("#error-smtp").inner_text()
    assert "127.0.0.1" in refused or "connect" in refused.lower(), refused
    assert page.input_value("#edit-identity input[name=port]") == str(closed)
    assert page.input_value("#edit-identity input[name=password]") == ""
    kept = identities.get(ada, smtp.id)
    assert kept.smtp_port == port and kept.has_secret
    # The same change without a password: saved, and the old server's password dropped.
    page.click("#edit-identity button[type=submit]")
    page.wait_for_url(f"{web.base}/settings/smtp/{smtp.id}?done=dropped")
    assert "stored password was dropped" in page.locator("#identity-done").inner_text()
    assert page.locator("#no-password").count() == 1
    dropped = identities.get(ada, smtp.id)
    assert dropped.smtp_port == closed and not dropped.has_secret
    # The mailbox's own address cannot be removed: the store's sentence on the confirmation.
    own = next(i for i in identities.list(ada) if i.kind == "account")
    page.goto(f"/settings/smtp/{own.id}/delete")
    page.click("#confirm-delete")
    assert "remove the account" in page.locator("#delete-error").inner_text()
    # The SMTP identity is removed after its confirmation.
    page.goto(f"/settings/smtp/{smtp.id}")
    page.click("#delete-identity")
    page.wait_for_url(f"{web.base}/settings/smtp/{smtp.id}/delete")
    page.click("#confirm-delete")
    page.wait_for_url(f"{web.base}/settings/smtp?done=deleted")
    assert page.locator(f"li.identity[data-identity='{smtp.id}']").count() == 0
    assert [i.id for i in identities.list(ada)] == [own.id]

    # A template previewed for a contact, a deal and an identity: the HTML in a sandboxed
    # frame, filled and sanitised (its script and remote image neither run nor load).
    crm = app.state.crm
    acme = crm.create_company(name="Acme", domains=["acme.test"])
    grace = crm.create_contact(name="Grace Hopper", emails=["grace@acme.test"])
    deal = crm.create_deal(name="Acme renewal", company_id=acme.id, contact_ids=[grace.id])
    alias = identities.create_for_account(
        ada, account_name=mirror.account, address="sales@example.test", display_name="Sales"
    )
    html = (
        "<p>Dear {{contact.first_name}} of {{company.name}}, about {{deal.name}}.</p>"
        "<p>{{sender.name}} &lt;{{sender.email}}&gt;</p>"
        "<script>top.__pwned = 1</script><img src='https://attacker.example/p.png'>"
    )
    fields = TemplateFields(name="Renewal", subject="{{deal.name}}", text="Hi", html=html)
    template = app.state.composer.templates.create(ada, fields)
    page.goto(f"/email-templates/{template.id}")
    page.select_option("#preview-form select[name=contact_id]", str(grace.id))
    page.select_option("#preview-form select[name=deal_id]", str(deal.id))
    page.select_option("#preview-form select[name=identity_id]", str(alias.id))
    page.click("#preview-form button[type=submit]")
    page.locator("#preview").wait_for()
    assert page.locator("#preview .subject").inner_text() == "Acme renewal"
    frame_element = page.locator("iframe#preview-html")
    sandbox = frame_element.get_attribute("sandbox") or ""
    assert "allow-scripts" not in sandbox and "allow-same-origin" not in sandbox
    frame = page.frame_locator("iframe#preview-html")
    paragraphs = frame.locator("p")
    paragraphs.first.wait_for()
    assert paragraphs.all_inner_texts() == [
        "Dear Grace of Acme, about Acme renewal.",
        "Sales <sales@example.test>",
    ]
    assert frame.locator("script").count() == 0
    assert page.evaluate("window.__pwned") is None
    # The choices are kept for the next preview.
    assert page.input_value("#preview-form select[name=deal_id]") == str(deal.id)
    # Deleted after its confirmation.
    page.click("#delete-template")
    page.wait_for_url(f"{web.base}/email-templates/{template.id}/delete")
    page.click("#confirm-delete")
    page.wait_for_url(f"{web.base}/email-templates?done=deleted")
    assert page.locator("li.template").count() == 0
    assert app.state.composer.templates.list(ada) == []
    assert not web.dialogs and not web.remote


# --- over HTTP ------------------------------------------------------------------------------


@pytest.mark.dovecot
def test_new_forms_need_their_token_and_members_change_only_what_they_may(
    app: FastAPI, mirror: SeededMirror
) -> None:
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    admin = _signed_in(app, *ADMIN)
    ada = app.state.auth.users.get_user(ADMIN[0])
    crm = app.state.crm
    acme = crm.create_company(name="Acme", domains=["acme.test"])
    alice = crm.create_contact(name="Alice", emails=["alice@acme.test"])
    deal = crm.create_deal(name="Renewal", contact_ids=[alice.id])
    call = crm.create_activity(kind="call", title="Call", participants=["alice@acme.test"])
    smtp = _smtp_identity(app, free_port())
    support = app.state.auth.teams.create("Support")
    shared = app.state.composer.templates.create(
        ada, TemplateFields(name="Shared", text="Hi", html="<b>Hi</b>", team_id=support.id)
    )
    forms: dict[str, dict[str, str]] = {
        "/crm/contacts": {"name": "Forged", "emails": "forged@example.test"},
        f"/crm/contacts/{alice.id}": {"name": "Forged"},
        f"/crm/contacts/{alice.id}/delete": {"go": "1"},
        "/crm/companies": {"name": "Forged"},
        f"/crm/companies/{acme.id}": {"name": "Forged"},
        f"/crm/companies/{acme.id}/delete": {"go": "1"},
        "/crm/deals": {"name": "Forged"},
        f"/crm/deals/{deal.id}": {"name": "Forged"},
        f"/crm/deals/{deal.id}/delete": {"go": "1"},
        "/crm/activities": {"kind": "task", "title": "Forged"},
        f"/crm/activities/{call.id}": {"kind": "task", "title": "Forged"},
        f"/crm/activities/{call.id}/delete": {"go": "1"},
        f"/settings/smtp/{smtp.id}": {"name": "Forged"},
        f"/settings/smtp/{smtp.id}/delete": {"go": "1"},
        f"/email-templates/{shared.id}/delete": {"go": "1"},
    }
    for path, fields in forms.items():
        for csrf in (None, "0" * 64):
            data = fields if csrf is None else {**fields, "csrf": csrf}
            assert admin.post(path, data=data).status_code == 403, (path, csrf)
    assert [c.name for c in crm.list_contacts().items] == ["Alice"]
    assert [c.name for c in crm.list_companies().items] == ["Acme"]
    assert [d.name for d in crm.list_deals().items] == ["Renewal"]
    assert [a.title for a in crm.list_activities().items] == ["Call"]
    assert app.state.composer.identities.get(ada, smtp.id).display_name == "Outbound"
    assert [t.name for t in app.state.composer.templates.list(ada)] == ["Shared"]
    # The confirmations and pages themselves are there for the admin.
    for path in (
        f"/crm/contacts/{alice.id}/delete",
        f"/crm/activities/{call.id}",
        f"/settings/smtp/{smtp.id}",
        f"/settings/smtp/{smtp.id}/delete",
        f"/email-templates/{shared.id}/delete",
    ):
        assert admin.get(path).status_code == 200, path

    # A member: records are the organisation's (as in the API), so they change them too.
    app.state.auth.create_user("mo@example.test", "another good password")
    member = _signed_in(app, "mo@example.test", "another good password")
    token = session_token(member.cookies["correspond_session"])
    renamed = member.post(f"/crm/contacts/{alice.id}", data={"csrf": token, "name": "Alice B"})
    assert renamed.status_code == 303 and crm.get_contact(alice.id).name == "Alice B"
    # Another user's identity: 404 pages, as one that does not exist; nothing changed.
    for path in (f"/settings/smtp/{smtp.id}", f"/settings/smtp/{smtp.id}/delete"):
        assert member.get(path).status_code == 404, path
        answer = member.post(path, data={"csrf": token, "name": "Mine now"})
        assert answer.status_code == 404 and "out@example.test" not in answer.text, path
    assert app.state.composer.identities.get(ada, smtp.id).display_name == "Outbound"
    # A template: not shared with them, a 404 (its preview frame too); shared with their
    # team, theirs to read and preview but not to delete (403).
    frame = f"/email-templates/{shared.id}/preview/frame"
    assert member.get(frame).status_code == 404
    assert (
        member.post(f"/email-templates/{shared.id}/delete", data={"csrf": token}).status_code == 404
    )
    app.state.auth.teams.add_member(support.id, app.state.auth.users.get_user("mo@example.test").id)
    assert member.get(f"/email-templates/{shared.id}").status_code == 200
    seen = member.get(frame)
    assert seen.status_code == 200 and "<b>Hi</b>" in seen.text
    assert member.get(f"/email-templates/{shared.id}/delete").status_code == 403
    refused = member.post(f"/email-templates/{shared.id}/delete", data={"csrf": token})
    assert refused.status_code == 403
    assert [t.name for t in app.state.composer.templates.list(ada)] == ["Shared"]
    # The preview frame's policy: the message frame's, never remote images.
    csp = seen.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'") and "sandbox" in csp
    assert "allow-scripts" not in csp and "https:" not in csp
    # A preview frame with a merge field missing says so (422), never a blank.
    missing = app.state.composer.templates.create(
        ada, TemplateFields(name="Needs", text="x", html="<p>{{contact.name}}</p>")
    )
    gap = admin.get(f"/email-templates/{missing.id}/preview/frame")
    assert gap.status_code == 422 and "{{contact.name}}" in gap.text
    # The admin deletes the shared template with the token.
    admin_token = session_token(admin.cookies["correspond_session"])
    done = admin.post(f"/email-templates/{shared.id}/delete", data={"csrf": admin_token})
    assert done.status_code == 303 and done.headers["location"] == "/email-templates?done=deleted"
    # Bad ids in a form: the field's sentence, not a crash.
    odd = admin.post("/crm/deals", data={"csrf": admin_token, "name": "D", "contact_ids": "x"})
    assert odd.status_code == 422 and "Choose contacts from the list." in odd.text
    assert isinstance(admin, TestClient)
