"""Email Settings → Full Email Sync in a real Chromium (the fixtures of tests/test_web.py:
Debian's /usr/bin/chromium, one per module; the app under uvicorn over the test store with a
mailbox mirrored from the real Dovecot), on SQLite and PostgreSQL.

Journeys: the mirrored account's state in words; a toggle saved and kept after a reload;
Disable then Enable; Disconnect shows the dry-run plan and only its POST disconnects;
connecting with a wrong password shows the connection test's sentence and creates nothing;
connecting a Dovecot user creates the account, owned by the caller, paused until its folders
are chosen (the rest of that journey: tests/test_web_connect.py); an account in auth_failed or
error shows a banner on every page, with its reason and a link to fix the password there.
"""

# The fixtures of tests/test_web.py are imported by name, so test arguments "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI

from correspond.api.schemas import account_public
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mirror import SeededMirror
from correspond.testing.store import dovecot_account_draft
from correspond.web.csrf import session_token
from correspond.web.settings_sync import AWAITING_FOLDERS
from test_web import (  # noqa: F401  (fixtures, used by name)
    ADMIN,
    Watched,
    _first_run,
    _signed_in,
    app,
    browser,
    mirror,
    served,
    settings,
    web,
)
from test_web import store_url as store_url  # SQLite only: conftest_store.sqlite_store_url


def _state_message(app: FastAPI, name: str) -> str:
    return account_public(app.state.accounts.get_account(name)).state_message


@pytest.mark.dovecot
def test_sync_list_toggles_disable_enable_and_disconnect(
    web: Watched, app: FastAPI, mirror: SeededMirror
) -> None:
    page = web.page
    service = app.state.accounts
    _first_run(web)
    page.goto("/settings/sync")
    row = page.locator(f"article.sync-account[data-account='{mirror.account}']")
    assert row.locator(".state").inner_text() == _state_message(app, mirror.account)
    last = service.get_account(mirror.account).account.last_sync_at
    shown = "never" if last is None else f"{last:%Y-%m-%d %H:%M} UTC"
    assert row.locator(".last-sync").inner_text() == f"Last sync: {shown}"
    # A toggle: off, saved through the account's update, kept after a reload.
    toggle = row.locator("input[name=delete_remote_on_crm_delete]")
    before = service.get_account(mirror.account).account.toggles["delete_remote_on_crm_delete"]
    toggle.set_checked(not before)
    row.locator("button", has_text="Save toggles").click()
    page.wait_for_url(f"{web.base}/settings/sync?done=saved")
    page.reload()
    assert toggle.is_checked() is (not before)
    toggles = service.get_account(mirror.account).account.toggles
    assert toggles["delete_remote_on_crm_delete"] is (not before)
    # Sharing.
    row.locator("select[name=sharing]").select_option("metadata")
    row.locator("button", has_text="Save sharing").click()
    page.wait_for_url(f"{web.base}/settings/sync?done=sharing")
    assert service.get_account(mirror.account).account.sharing == "metadata"
    # Disable, then Enable: the state in words follows.
    row.locator("button.disable").click()
    page.wait_for_url(f"{web.base}/settings/sync?done=paused")
    assert service.get_account(mirror.account).account.state == "paused"
    assert row.locator(".state").inner_text().startswith("Paused")
    row.locator("button.enable").click()
    page.wait_for_url(f"{web.base}/settings/sync?done=resumed")
    assert service.get_account(mirror.account).account.state == "connecting"
    assert row.locator(".state").inner_text() == _state_message(app, mirror.account)
    assert row.locator("button.disable").is_visible()
    # Disconnect: the confirmation shows the plan; nothing happens until its POST.
    row.locator("a.disconnect").click()
    page.wait_for_url(f"{web.base}/settings/sync/{mirror.account}/disconnect")
    summary = page.locator("#plan-summary").inner_text()
    assert summary.startswith(f"Disconnecting {mirror.account} would remove")
    kept = page.locator("ul.plan-kept").inner_text()
    messages = service.get_account(mirror.account).message_count
    assert messages > 0 and f"Messages: {messages}" in kept
    assert service.get_account(mirror.account).account.disconnected_at is None
    page.click("#confirm-disconnect")
    page.wait_for_url(f"{web.base}/settings/sync?done=disconnected")
    account = service.get_account(mirror.account).account
    assert account.disconnected_at is not None
    assert service.get_account(mirror.account).message_count == messages  # history kept
    assert row.locator(".state").inner_text().startswith("Disconnected on")
    assert not web.dialogs and not web.remote


@pytest.mark.dovecot
def test_connect_a_mailbox_tested_first(web: Watched, app: FastAPI, dovecot: DovecotServer) -> None:
    page = web.page
    service = app.state.accounts
    _first_run(web)
    user = dovecot.add_user()
    page.goto("/settings/sync")
    page.click("#connect-link")
    page.wait_for_url(f"{web.base}/settings/sync/new")
    # A preset fills the server settings (and says what this app cannot do for it).
    page.select_option("#choose-preset select[name=preset]", "google")
    page.click("#choose-preset button")
    page.wait_for_url(f"{web.base}/settings/sync/new?preset=google")
    assert page.input_value("#connect input[name=imap_host]") == "imap.gmail.com"
    assert "OAuth2" in page.locator("#oauth-note").inner_text()
    page.select_option("#choose-preset select[name=preset]", "other")
    page.click("#choose-preset button")
    page.wait_for_url(f"{web.base}/settings/sync/new?preset=other")
    assert page.input_value("#connect input[name=imap_port]") == "143"

    def fill(password: str) -> None:
        page.fill("#connect input[name=email]", user.address)
        page.fill("#connect input[name=name]", user.username)
        page.fill("#connect input[name=username]", user.username)
        page.fill("#connect input[name=password]", password)
        page.fill("#connect input[name=imap_host]", dovecot.host)
        page.fill("#connect input[name=imap_port]", str(dovecot.port))
        page.select_option("#connect select[name=imap_security]", "starttls")
        page.fill("#connect textarea[name=trusted_cert_pem]", dovecot.cert_pem)
        page.click("#connect button[type=submit]")

    # A wrong password: the connection test's own sentence beside the form, nothing created.
    draft = dovecot_account_draft(dovecot, user)
    with ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
        expected = pool.submit(asyncio.run, service.test_draft(draft, "wrong")).result()
    assert not expected.ok
    fill("wrong")
    error = page.locator("#connect-error")
    error.wait_for()
    assert error.inner_text() == expected.message
    assert page.input_value("#connect input[name=imap_host]") == dovecot.host
    assert not service.account_exists(user.username)
    # The right one: created, owned by the caller, its folders listed for the choice; it
    # waits paused (nothing synced) until the folders are chosen (tests/test_web_connect.py).
    fill(user.password)
    page.wait_for_url(f"{web.base}/settings/sync/{user.username}/folders?new=1")
    page.locator("#choose-folders tr[data-folder=INBOX]").wait_for()
    account = service.get_account(user.username).account
    ada = app.state.auth.users.get_user(ADMIN[0])
    assert account.owner_id == ada.id and account.imap_port == dovecot.port
    assert account.has_secret
    assert (account.state, account.state_detail) == ("paused", AWAITING_FOLDERS)
    page.goto("/settings/sync")
    row = page.locator(f"article.sync-account[data-account='{user.username}']")
    assert row.locator("a", has_text="Choose the folders to start syncing").is_visible()
    assert not web.dialogs and not web.remote


@pytest.mark.dovecot
def test_sync_forms_need_their_token_and_hide_others_accounts(
    app: FastAPI, mirror: SeededMirror
) -> None:
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    admin = _signed_in(app, *ADMIN)
    service = app.state.accounts
    name = mirror.account
    forms = {
        f"/settings/sync/{name}/toggles": {"delete_remote_on_crm_delete": "on"},
        f"/settings/sync/{name}/sharing": {"sharing": "team"},
        f"/settings/sync/{name}/pause": {"go": "1"},
        f"/settings/sync/{name}/disconnect": {"go": "1"},
        "/settings/sync/new": {"email": "x@example.test", "password": "p", "imap_host": "h"},
        f"/settings/sync/{name}/folders": {"mode": "selected", "folder": "1"},
        f"/settings/sync/{name}/folders/refresh": {"go": "1"},
        f"/settings/sync/accounts/{name}/password": {"password": "p"},
    }
    selected = [f.name for f in service.list_folders(name) if f.selected]
    before = service.get_account(name).account
    for path, fields in forms.items():
        for csrf in (None, "0" * 64):
            data = fields if csrf is None else {**fields, "csrf": csrf}
            assert admin.post(path, data=data).status_code == 403, (path, csrf)
    after = service.get_account(name).account
    assert (after.toggles, after.sharing, after.state) == (
        before.toggles,
        before.sharing,
        before.state,
    )
    assert after.disconnected_at is None
    assert [f.name for f in service.list_folders(name) if f.selected] == selected
    # The account's pages answer its owner.
    assert admin.get(f"/settings/sync/{name}/folders").status_code == 200
    assert admin.get(f"/settings/sync/accounts/{name}").status_code == 200
    # The confirmation page changes nothing.
    confirm = admin.get(f"/settings/sync/{name}/disconnect")
    assert confirm.status_code == 200 and "would remove" in confirm.text
    assert service.get_account(name).account.disconnected_at is None
    # Another user: the admin's account is not listed, and its pages are 404s, as for none.
    app.state.auth.create_user("mo@example.test", "another good password")
    member = _signed_in(app, "mo@example.test", "another good password")
    token = session_token(member.cookies["correspond_session"])
    assert f'data-account="{name}"' not in member.get("/settings/sync").text
    for path in (
        f"/settings/sync/{name}/disconnect",
        f"/settings/sync/{name}/folders",
        f"/settings/sync/accounts/{name}",
    ):
        assert member.get(path).status_code == 404, path
    for path in (
        f"/settings/sync/{name}/pause",
        f"/settings/sync/{name}/disconnect",
        f"/settings/sync/{name}/folders",
        f"/settings/sync/accounts/{name}/password",
    ):
        assert member.post(path, data={"csrf": token}).status_code == 404, path
    assert member.get("/settings/sync/nobody/disconnect").status_code == 404
    assert service.get_account(name).account.state == before.state


@pytest.mark.dovecot
def test_an_account_in_trouble_shows_a_banner_with_its_reason_and_the_fix(
    web: Watched, app: FastAPI, mirror: SeededMirror, imap_user: ImapUser
) -> None:
    page = web.page
    service = app.state.accounts
    name = mirror.account
    _first_run(web)
    assert page.locator("#account-trouble").count() == 0
    # The reason is the server's words: shown as text, never as markup.
    reason = 'The server said <b class="x">AUTHENTICATIONFAILED</b> & "no"'
    service.store.set_account_state(name, "auth_failed", reason)
    banner = page.locator(f"#account-trouble p[data-account='{name}']")
    for path in ("/", "/compose", "/crm/contacts", "/settings/smtp", "/email-templates"):
        page.goto(path)
        assert banner.locator(".reason").inner_text() == reason, path
        assert banner.locator("b").count() == 0, path
        assert banner.inner_text().startswith(f"{name} ({mirror.address}): Sign-in failed.")
    # Another user who does not see the account sees no banner.
    app.state.auth.create_user("mo@example.test", "another good password")
    member = _signed_in(app, "mo@example.test", "another good password")
    assert 'id="account-trouble"' not in member.get("/").text
    # The link leads to the account's settings, where a new password is tested first.
    page.goto("/")
    banner.locator("a.fix").click()
    page.wait_for_url(f"{web.base}/settings/sync/accounts/{name}")
    assert page.locator("#account .state").inner_text() == _state_message(app, name)
    page.fill("#fix-password input[name=password]", "not the password")
    page.click("#fix-password button[type=submit]")
    page.locator("#password-error").wait_for()
    assert service.get_account(name).account.state == "auth_failed"
    assert banner.is_visible()
    page.fill("#fix-password input[name=password]", imap_user.password)
    page.click("#fix-password button[type=submit]")
    page.wait_for_url(f"{web.base}/settings/sync/accounts/{name}?done=password")
    assert service.get_account(name).account.state == "connecting"
    assert page.locator("#account-trouble").count() == 0
    # An error stops sync too: the banner says so.
    service.store.set_account_state(name, "error", "The server's certificate changed.")
    page.goto("/")
    assert banner.inner_text().startswith(f"{name} ({mirror.address}): Sync stopped.")
    assert banner.locator(".reason").inner_text() == "The server's certificate changed."
    assert not web.dialogs and not web.remote


@pytest.mark.dovecot
def test_folder_choice_all_or_some_of_a_running_account(app: FastAPI, mirror: SeededMirror) -> None:
    app.state.auth.create_user(ADMIN[0], ADMIN[1], admin=True)
    admin = _signed_in(app, *ADMIN)
    token = session_token(admin.cookies["correspond_session"])
    service = app.state.accounts
    name = mirror.account
    folders = {f.name: f for f in service.list_folders(name)}
    before = service.get_account(name).account
    path = f"/settings/sync/{name}/folders"
    page = admin.get(path)
    assert page.status_code == 200 and "Save folders" in page.text  # not waiting: no start
    # None checked: refused with its sentence, nothing changed.
    refused = admin.post(path, data={"csrf": token, "mode": "selected"})
    assert refused.status_code == 422 and "Check at least one folder" in refused.text
    assert {f.name for f in service.list_folders(name) if f.selected} == {
        n for n, f in folders.items() if f.selected
    }
    # Some: exactly those, mode "selected"; the state of a running account is kept.
    some = [folders["INBOX"].id, folders["Sent"].id]
    sent = admin.post(
        path,
        data={"csrf": token, "mode": "selected", "folder": [str(i) for i in some]},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    assert sent.headers["location"] == f"/settings/sync/accounts/{name}?done=folders"
    assert {f.name for f in service.list_folders(name) if f.selected} == {"INBOX", "Sent"}
    after = service.get_account(name).account
    assert after.folders_mode == "selected" and after.state == before.state
    # All: every selectable folder, Junk and Trash too, and new ones.
    admin.post(path, data={"csrf": token, "mode": "all"}, follow_redirects=False)
    chosen = {f.name for f in service.list_folders(name) if f.selected}
    assert chosen == {f.name for f in service.list_folders(name) if f.selectable}
    assert {"Junk", "Trash"} <= chosen
    assert service.get_account(name).account.folders_mode == "all"
