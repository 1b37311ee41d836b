"""``correspond import KIND FILE`` on SQLite and PostgreSQL: idempotent, bad rows reported."""

from __future__ import annotations

import json
from pathlib import Path

from correspond.settings import Settings
from correspond.store import Store
from correspond.store.crm import CrmStore
from helpers import StoreCli


def test_import_contacts_csv_then_json_is_idempotent(
    store: Store, store_settings: Settings, store_url: str, tmp_path: Path
) -> None:
    cli = StoreCli(store_settings, store_url)
    companies = tmp_path / "companies.json"
    companies.write_text(
        json.dumps([{"name": "Acme", "domains": ["acme.test"], "external_id": "a"}])
    )
    assert cli.json("import", "companies", str(companies)) == {
        "created": 1,
        "updated": 0,
        "errors": [],
    }
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(
        "name,email,company_external_id\nAnn,ann@acme.test,a\nNobody,,\nBad,x@,\n",
        encoding="utf-8",
    )
    first = cli("import", "contacts", str(contacts))
    assert first.exit_code == 1
    assert "contacts: 2 created, 0 updated" in first.stdout
    assert "row 3: not an e-mail address: 'x@'" in first.stderr
    again = cli("import", "contacts", str(contacts))
    # Ann is matched by her address; the row without one cannot be matched, so it is new.
    assert "contacts: 1 created, 1 updated" in again.stdout
    page = CrmStore(store.engine).list_contacts(q="ann@")
    assert [c.name for c in page.items] == ["Ann"] and page.items[0].company_id is not None
    broken = tmp_path / "broken.json"
    broken.write_text("[")
    result = cli("import", "contacts", str(broken))
    assert result.exit_code == 2 and "not JSON" in result.output


def test_relink_applies_changed_settings_to_past_mail(
    store: Store, store_settings: Settings, store_url: str
) -> None:
    from correspond.store.linker import LinkerStore, LinkPolicy
    from correspond.testing.synthetic import fill_messages, make_account_with_folders
    from helpers import Who

    account_id, folders = make_account_with_folders(store.engine, "acc")
    fill_messages(store.engine, account_id, folders, 30)
    crm = CrmStore(store.engine)
    contact = crm.create_contact(emails=["owner@example.test"])
    LinkerStore(store.engine, LinkPolicy()).run_until_idle()
    assert len(crm.timeline("contact", contact.id, Who(1, is_admin=True)).items) == 30
    cli = StoreCli(store_settings, store_url)
    cli.env["CORRESPOND_LINK_BLOCKLIST"] = '["owner@example.test"]'
    result = cli("relink")
    assert result.exit_code == 0, result.output
    assert "Linked 30 messages" in result.stdout
    assert crm.timeline("contact", contact.id, Who(1, is_admin=True)).items == []
