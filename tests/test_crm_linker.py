"""The background linker on SQLite and PostgreSQL: past messages link when a record comes
later, removing an address unlinks (auto links only), manual thread links hold, the one
visibility rule filters timelines, and a step killed at any point leaves nothing half done."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from correspond.errors import NotFound, StoreError
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.crm import CrmStore
from correspond.store.crm_tables import MessageParticipantRow, TimelineLinkRow
from correspond.store.linker import LinkerStore, LinkPolicy
from correspond.store.visibility import Viewer
from correspond.testing.synthetic import fill_messages, make_account_with_folders
from helpers import Who

ADMIN = Who(1, is_admin=True)
OWNER = "owner@example.test"  # in To of every synthetic message


def _fill(store: Store, count: int) -> int:
    account_id, folders = make_account_with_folders(store.engine, "acc")
    fill_messages(store.engine, account_id, folders, count)
    return account_id


def _timeline_ids(crm: CrmStore, kind: str, target: int, viewer: Viewer = ADMIN) -> list[int]:
    ids: list[int] = []
    before = None
    while True:
        page = crm.timeline(kind, target, viewer, limit=37, before=before)
        ids += [m.id for m in page.items]
        if page.next_cursor is None:
            return ids
        before = page.next_cursor


def _links(store: Store) -> set[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return set(
            conn.execute(
                select(
                    TimelineLinkRow.message_id,
                    TimelineLinkRow.target_kind,
                    TimelineLinkRow.target_id,
                    TimelineLinkRow.source,
                )
            ).tuples()
        )


def test_a_contact_added_later_gets_its_past_messages_and_loses_them_with_its_address(
    store: Store,
) -> None:
    _fill(store, 300)
    crm = CrmStore(store.engine)
    linker = LinkerStore(store.engine, LinkPolicy(), batch=64)
    assert linker.run_until_idle() == (300, 0)
    contact = crm.create_contact(name="Owner", emails=["Owner@Example.TEST"])
    assert contact.emails == (OWNER,)
    assert _timeline_ids(crm, "contact", contact.id) == []  # not linked until the linker runs
    _, relinked = linker.run_until_idle()
    assert relinked == 300
    ids = _timeline_ids(crm, "contact", contact.id)
    assert len(ids) == len(set(ids)) == 300
    # Newest first, as the message list orders them.
    with store.engine.connect() as conn:
        from correspond.store.message_tables import MessageRow

        order = [
            r[0]
            for r in conn.execute(
                select(MessageRow.id).order_by(MessageRow.sort_at.desc(), MessageRow.id.desc())
            )
        ]
    assert ids == order
    # A message that arrives afterwards is indexed and linked by the next pass.
    _fill_more(store)
    linker.run_until_idle()
    assert len(_timeline_ids(crm, "contact", contact.id)) == 310
    crm.update_contact(contact.id, emails=["someone@else.test"])
    linker.run_until_idle()
    assert _timeline_ids(crm, "contact", contact.id) == []


def _fill_more(store: Store) -> int:
    from correspond.store.tables import AccountRow, FolderRow

    with store.engine.connect() as conn:
        account_id = conn.scalar(select(AccountRow.id))
        folders = {
            role: fid
            for fid, role in conn.execute(
                select(FolderRow.id, FolderRow.role).where(FolderRow.account_id == account_id)
            )
        }
    fill_messages(store.engine, int(account_id or 0), folders, 10)
    return int(account_id or 0)


def test_companies_deals_and_activities_follow_their_addresses(store: Store) -> None:
    _fill(store, 200)
    crm = CrmStore(store.engine)
    linker = LinkerStore(store.engine, LinkPolicy(), batch=500)
    linker.run_until_idle()
    with store.engine.connect() as conn:
        domain = conn.scalar(
            select(MessageParticipantRow.domain)
            .where(MessageParticipantRow.role == "from")
            .group_by(MessageParticipantRow.domain)
            .order_by(func.count().desc(), MessageParticipantRow.domain)
            .limit(1)
        )
        from_domain = int(
            conn.scalar(
                select(func.count()).where(
                    MessageParticipantRow.domain == domain, MessageParticipantRow.role == "from"
                )
            )
            or 0
        )
    company = crm.create_company(name="Client", domains=[str(domain)])
    contact = crm.create_contact(name="Owner", emails=[OWNER], company_id=company.id)
    deal = crm.create_deal(name="Renewal", contact_ids=[contact.id])
    activity = crm.create_activity(kind="meeting", title="Kick-off", participants=[OWNER])
    linker.run_until_idle()
    # Every message (the contact's company is this company), the deal and the meeting too.
    assert len(_timeline_ids(crm, "company", company.id)) == 200 > from_domain
    assert len(_timeline_ids(crm, "deal", deal.id)) == 200
    assert len(_timeline_ids(crm, "activity", activity.id)) == 200
    # Without the contact's company only the domain's own messages stay on the company.
    crm.update_contact(contact.id, company_id=None)
    linker.run_until_idle()
    assert len(_timeline_ids(crm, "company", company.id)) == from_domain
    # Only open deals gain mail: closing one takes its automatic links away.
    crm.update_deal(deal.id, status="won")
    linker.run_until_idle()
    assert _timeline_ids(crm, "deal", deal.id) == []


def test_record_pages_activities_are_those_of_the_records_addresses(store: Store) -> None:
    from datetime import UTC, datetime

    crm = CrmStore(store.engine)
    acme = crm.create_company(name="Acme", domains=["acme.example"])
    ann = crm.create_contact(name="Ann", emails=["ann@acme.example"], company_id=acme.id)
    bob = crm.create_contact(name="Bob", emails=["bob@else.example"], company_id=acme.id)
    eve = crm.create_contact(name="Eve", emails=["eve@else.example"])
    deal = crm.create_deal(name="Renewal", contact_ids=[bob.id])
    at = datetime(2026, 5, 1, 9, tzinfo=UTC)
    call = crm.create_activity(kind="call", title="Call", participants=["ann@acme.example"], at=at)
    meet = crm.create_activity(
        kind="meeting",
        title="Meeting",
        participants=["bob@else.example", "zed@acme.example"],
        at=at.replace(day=2),
    )
    other = crm.create_activity(kind="task", title="Other", participants=["eve@else.example"])
    # A domain is matched whole: "%" and "_" in it are not wildcards, a look-alike is not in.
    crm.create_activity(kind="task", title="Look-alike", participants=["x@xacme.example"])

    def titles(kind: str, record: int) -> list[str]:
        return [a.title for a in crm.activities_of(kind, record)]

    assert titles("contact", ann.id) == ["Call"]
    assert titles("contact", bob.id) == ["Meeting"]
    assert titles("deal", deal.id) == ["Meeting"]
    # The company's: its contacts' and any address at its domain (zed@), newest first.
    assert titles("company", acme.id) == ["Meeting", "Call"]
    assert titles("contact", eve.id) == ["Other"]
    assert [a.id for a in crm.activities_of("company", acme.id, limit=1)] == [meet.id]
    assert call.id != other.id
    with pytest.raises(NotFound):
        crm.activities_of("contact", 10**9)


def test_deal_choices_put_open_deals_first_newest_change_first(store: Store) -> None:
    crm = CrmStore(store.engine)
    old = crm.create_deal(name="Old open")
    won = crm.create_deal(name="Won", status="won")
    new = crm.create_deal(name="New open")
    crm.update_deal(old.id, name="Old open, renamed")  # changed last: first of the open ones
    assert [(d.name, d.status) for d in crm.deal_choices()] == [
        ("Old open, renamed", "open"),
        ("New open", "open"),
        ("Won", "won"),
    ]
    assert [d.id for d in crm.deal_choices(limit=1)] == [old.id]
    assert new.id != won.id


def test_manual_thread_links_are_never_undone_by_the_rules(store: Store) -> None:
    _fill(store, 50)
    crm = CrmStore(store.engine)
    linker = LinkerStore(store.engine, LinkPolicy(), batch=500)
    contact = crm.create_contact(name="Owner", emails=[OWNER])
    auto_deal = crm.create_deal(name="Auto", contact_ids=[contact.id])
    by_hand = crm.create_deal(name="By hand")
    linker.run_until_idle()
    on_auto = _timeline_ids(crm, "deal", auto_deal.id)
    assert len(on_auto) == 50
    from correspond.store.message_tables import MessageRow

    with store.engine.connect() as conn:
        thread_id, in_thread = conn.execute(
            select(MessageRow.thread_id, func.count())
            .group_by(MessageRow.thread_id)
            .order_by(MessageRow.thread_id)
            .limit(1)
        ).one()
    # Unlinked by hand from the automatic deal: off, and the rules do not put it back.
    crm.set_thread_deal(thread_id, auto_deal.id, linked=False)
    assert len(_timeline_ids(crm, "deal", auto_deal.id)) == 50 - in_thread
    crm.update_contact(contact.id, name="Owner 2", emails=[OWNER, "x@y.test"])
    linker.run_until_idle()
    assert len(_timeline_ids(crm, "deal", auto_deal.id)) == 50 - in_thread
    # Linked by hand to a deal the rules would never pick: it stays through any relink, and
    # a later message of the thread follows.
    assert crm.set_thread_deal(thread_id, by_hand.id, linked=True) == in_thread
    crm.delete_contact(contact.id)
    linker.run_until_idle()
    assert len(_timeline_ids(crm, "deal", by_hand.id)) == in_thread
    assert _timeline_ids(crm, "deal", auto_deal.id) == []
    assert {s for m, k, t, s in _links(store) if k == "deal"} == {"manual"}


def test_timelines_show_only_what_the_viewer_may_see(store: Store) -> None:
    from correspond.auth import AuthService
    from correspond.settings import Settings

    auth = AuthService(store, Settings())
    admin, _ = auth.create_user("admin@example.test", None, admin=True)
    member, _ = auth.create_user("member@example.test", None, admin=False)
    _fill(store, 20)  # owned by the first admin (ownerless accounts go to it)
    crm = CrmStore(store.engine)
    contact = crm.create_contact(emails=[OWNER])
    LinkerStore(store.engine, LinkPolicy()).run_until_idle()
    assert len(_timeline_ids(crm, "contact", contact.id, Who(admin.id, is_admin=True))) == 20
    assert _timeline_ids(crm, "contact", contact.id, Who(member.id, is_admin=False)) == []
    from correspond.store.users import UserStore

    UserStore(store.engine).set_account_owner("acc", member.id)
    assert len(_timeline_ids(crm, "contact", contact.id, Who(member.id, is_admin=False))) == 20


@pytest.mark.parametrize(
    ("policy", "linked"),
    [
        (LinkPolicy.build([], [], False), True),
        (LinkPolicy.build([], ["OWNER@example.test"], False), False),
        (LinkPolicy.build([], ["@example.test"], False), False),
    ],
)
def test_blocklist_setting_keeps_mail_off_timelines(
    store: Store, policy: LinkPolicy, linked: bool
) -> None:
    _fill(store, 10)
    crm = CrmStore(store.engine)
    contact = crm.create_contact(emails=[OWNER])
    LinkerStore(store.engine, policy).run_until_idle()
    assert len(_timeline_ids(crm, "contact", contact.id)) == (10 if linked else 0)


def test_a_failed_step_leaves_nothing_and_the_next_one_does_it_all(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(store, 120)
    crm = CrmStore(store.engine)
    crm.create_contact(emails=[OWNER])
    linker = LinkerStore(store.engine, LinkPolicy(), batch=50)
    real = LinkerStore._relink

    def broken(self: LinkerStore, conn: Any, scope: Any) -> None:
        real(self, conn, scope)  # the rows are written ... and then the step fails
        raise StoreError("killed")

    monkeypatch.setattr(LinkerStore, "_relink", broken)
    with pytest.raises(StoreError):
        linker.index_batch()
    assert linker.watermark() == 0
    assert _links(store) == set()
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(MessageParticipantRow)) == 0
    monkeypatch.setattr(LinkerStore, "_relink", real)
    linker.run_until_idle()
    assert len(_links(store)) == 120


KILL_SCRIPT = """
import sys
from correspond.store.engine import create_store_engine
from correspond.store.linker import LinkerStore, LinkPolicy
linker = LinkerStore(create_store_engine(sys.argv[1]), LinkPolicy(), batch=25)
print("ready", flush=True)
linker.run_until_idle()
print("done", flush=True)
"""


def test_sigkill_mid_run_leaves_a_state_the_next_run_completes(store: Store) -> None:
    """A linker process killed with SIGKILL at some point of its run, then run again, ends
    with exactly the links of an uninterrupted run."""
    _fill(store, 3000)
    crm = CrmStore(store.engine)
    contact = crm.create_contact(emails=[OWNER])
    url = store.engine.url.render_as_string(hide_password=False)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 30
    linker = LinkerStore(store.engine, LinkPolicy(), batch=25)
    while linker.watermark() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    killed_at = linker.watermark()
    assert killed_at > 0  # killed somewhere in the middle (or, on a fast run, at the end)
    linker.run_until_idle()
    links = _links(store)
    assert len(_timeline_ids(crm, "contact", contact.id)) == 3000
    assert {(k, t, s) for _, k, t, s in links} == {("contact", contact.id, "auto")}
    with store.engine.connect() as conn:
        participants = conn.scalar(select(func.count()).select_from(MessageParticipantRow))
    assert participants == 6000  # From and To of each, once


def test_a_sent_copy_found_later_brings_its_bcc_recipients_to_the_timelines(
    store: Store,
) -> None:
    """A message stored first from INBOX, indexed, then found in Sent with Bcc (ingest
    rewrites the row): queued by the Sent folder's UIDs, indexed again, the Bcc recipient's
    contact gets it. The same UIDs in a folder that is not Sent queue nothing."""
    from sqlalchemy import update

    from correspond.store.message_tables import MessageLocationRow, MessageRow

    account_id, folders = make_account_with_folders(store.engine, "acc")
    fill_messages(store.engine, account_id, folders, 10)
    crm = CrmStore(store.engine)
    hidden = crm.create_contact(emails=["hidden@client.test"])
    linker = LinkerStore(store.engine, LinkPolicy())
    linker.run_until_idle()
    with store.engine.begin() as conn:
        mid, uid = conn.execute(
            select(MessageLocationRow.message_id, MessageLocationRow.uid)
            .where(MessageLocationRow.folder_id == folders["sent"])
            .limit(1)
        ).one()
        conn.execute(
            update(MessageRow)
            .where(MessageRow.id == mid)
            .values(bcc_addrs=[{"name": None, "email": "Hidden@Client.test"}], direction="outbound")
        )
    assert linker.requeue_sent_copies(folders["inbox"], [uid]) == 0
    assert linker.requeue_sent_copies(folders["sent"], [uid]) == 1
    assert _timeline_ids(crm, "contact", hidden.id) == []
    linker.run_until_idle()
    assert _timeline_ids(crm, "contact", hidden.id) == [mid]
    assert not linker.pending()


# --- contact auto-creation ----------------------------------------------------------------------


def _mail(
    store: Store,
    account_id: int,
    key: str,
    *,
    outbound: bool,
    sender: tuple[str | None, str],
    to: list[tuple[str | None, str]],
    cc: list[tuple[str | None, str]] = (),  # type: ignore[assignment]
    bcc: list[tuple[str | None, str]] = (),  # type: ignore[assignment]
) -> int:
    from datetime import UTC, datetime

    from sqlalchemy.orm import Session

    from correspond.store.message_tables import MessageRow

    def people(pairs: list[tuple[str | None, str]]) -> list[dict[str, Any]]:
        return [{"name": name, "email": email} for name, email in pairs]

    now = datetime.now(UTC)
    with Session(store.engine) as s, s.begin():
        row = MessageRow(
            account_id=account_id,
            dedupe_key=key,
            subject=key,
            from_name=sender[0],
            from_email=sender[1],
            to_addrs=people(to),
            cc_addrs=people(list(cc)),
            bcc_addrs=people(list(bcc)),
            date=now,
            internaldate=now,
            sort_at=now,
            direction="outbound" if outbound else "inbound",
        )
        s.add(row)
        s.flush()
        return row.id


def _contacts(crm: CrmStore) -> dict[str, tuple[int, str]]:
    """address -> (contact id, name)."""
    found: dict[str, tuple[int, str]] = {}
    after = None
    while True:
        page = crm.list_contacts(after=after, limit=200)
        for contact in page.items:
            for address in contact.emails:
                found[address] = (contact.id, contact.name)
        if page.next_cursor is None:
            return found
        after = page.next_cursor


def _policy(mode: str, limit: int = 200) -> LinkPolicy:
    return LinkPolicy.build(
        ["home.test"], ["pest@cust.test"], False, auto_create=mode, auto_create_limit=limit
    )


def test_contacts_are_created_for_external_participants_of_sent_mail(store: Store) -> None:
    account_id, _ = make_account_with_folders(store.engine, "box")  # box@example.test
    crm = CrmStore(store.engine)
    known = crm.create_contact(name="Known", emails=["known@cust.test"])
    me = (None, "box@example.test")
    received = _mail(
        store, account_id, "r1", outbound=False, sender=("Bob B", "bob@cust.test"), to=[me]
    )
    stranger = _mail(
        store, account_id, "r2", outbound=False, sender=("Zed", "zed@far.test"), to=[me]
    )
    sent = _mail(
        store,
        account_id,
        "s1",
        outbound=True,
        sender=me,
        to=[("Ann A", "ann@cust.test"), ("Known", "KNOWN@cust.test")],
        cc=[(None, "colleague@home.test"), (None, "no-reply@cust.test"), (None, "pest@cust.test")],
        bcc=[("Bob B", "bob@cust.test")],
    )
    again = _mail(store, account_id, "s2", outbound=True, sender=me, to=[(None, "ann@cust.test")])
    linker = LinkerStore(store.engine, _policy("sent"), batch=500)
    linker.run_until_idle()
    contacts = _contacts(crm)
    # Ann and Bob (Bcc on sent mail) are new; the known contact, the colleague (an organisation
    # domain), the mailbox itself, no-reply, the blocklisted address and Zed (he only wrote to
    # us: "sent" mode) are not.
    assert {a: n for a, (_, n) in contacts.items()} == {
        "known@cust.test": "Known",
        "ann@cust.test": "Ann A",
        "bob@cust.test": "Bob B",
    }
    assert contacts["known@cust.test"][0] == known.id
    # The new contacts' timelines are filled by the normal linking, mail received before they
    # were made included.
    assert sorted(_timeline_ids(crm, "contact", contacts["ann@cust.test"][0])) == [sent, again]
    assert sorted(_timeline_ids(crm, "contact", contacts["bob@cust.test"][0])) == [
        received,
        sent,
    ]
    # Idempotent: indexing everything again makes no second contact for an address.
    linker.reset()
    linker.run_until_idle()
    assert _contacts(crm) == contacts
    # "all": received mail's senders too, once the setting says so.
    all_linker = LinkerStore(store.engine, _policy("all"), batch=500)
    all_linker.reset()
    all_linker.run_until_idle()
    everyone = _contacts(crm)
    assert set(everyone) == {*contacts, "zed@far.test"}
    assert _timeline_ids(crm, "contact", everyone["zed@far.test"][0]) == [stranger]


def test_the_bound_per_batch_cuts_batches_and_loses_nobody(store: Store) -> None:
    account_id, _ = make_account_with_folders(store.engine, "box")
    me = (None, "box@example.test")
    ids = [
        _mail(
            store,
            account_id,
            f"m{n}",
            outbound=True,
            sender=me,
            to=[(f"P{n}", f"p{n}@cust.test"), (f"Q{n}", f"q{n}@cust.test")],
        )
        for n in range(6)
    ]
    linker = LinkerStore(store.engine, _policy("sent", limit=3), batch=500)
    # Each step makes at most three: the batch ends after the message that fits.
    assert linker.index_batch() == 1
    assert len(_contacts(CrmStore(store.engine))) == 2
    assert linker.watermark() == ids[0]
    linker.run_until_idle()
    contacts = _contacts(CrmStore(store.engine))
    assert len(contacts) == 12 and contacts["q5@cust.test"][1] == "Q5"
    assert linker.watermark() == ids[-1]
    with store.engine.connect() as conn:
        indexed = set(conn.scalars(select(MessageParticipantRow.message_id).distinct()))
    assert indexed == set(ids)


def _mixed_people(k: int) -> tuple[str, list[str]]:
    """Participants that exercise every rule: contacts with and without a company, a
    domain's company, open and won deals, an activity, a blocklisted domain, an organisation
    domain and an installation user (internal), in varying combinations."""
    senders = [
        "ann@acme.example",  # contact with company Acme
        "bob@acme.example",  # no contact: Acme by domain
        "cat@beta.example",  # contact, no company, in an open and a won deal
        "dan@blocked.example",  # contact, but its domain is blocklisted
        "eve@org.example",  # contact at an organisation domain (internal)
        "user@example.test",  # an installation user (internal)
        "fay@gamma.example",  # activity participant only
        "zed@zeta.example",  # an installation user (internal) at a company's domain
    ]
    cc = [senders[(k * 3 + 1) % 8]] if k % 3 else []
    if k % 4 == 0:
        cc.append("eve@org.example")
    return senders[k % 8], cc


@pytest.mark.parametrize("link_internal", [False, True])
def test_set_based_relink_writes_exactly_the_links_of_the_rules(
    store: Store, store_settings: Settings, link_internal: bool
) -> None:
    """The links a queued address's relink writes (set-based SQL) are those the rules
    (``rules.crm.links_for``, asked per message by the indexing step) give, manual thread
    links included, from any starting state of the links."""
    from sqlalchemy import delete, text

    from correspond.auth import AuthService

    account_id, folders = make_account_with_folders(store.engine, "acc")
    fill_messages(store.engine, account_id, folders, 140, people=_mixed_people)
    auth = AuthService(store, store_settings)
    auth.create_user("user@example.test", None)
    auth.create_user("zed@zeta.example", None)
    crm = CrmStore(store.engine)
    acme = crm.create_company(name="Acme", domains=["acme.example"])
    crm.create_company(name="Org", domains=["org.example"])
    crm.create_company(name="Blocked", domains=["blocked.example"])
    crm.create_company(name="Zeta", domains=["zeta.example"])
    ann = crm.create_contact(emails=["ann@acme.example"], company_id=acme.id)
    cat = crm.create_contact(emails=["cat@beta.example"])
    crm.create_contact(emails=["dan@blocked.example"])
    eve = crm.create_contact(emails=["eve@org.example", "owner@example.test"])
    open_deal = crm.create_deal(name="Open", contact_ids=[cat.id, ann.id])
    crm.create_deal(name="Won", status="won", contact_ids=[cat.id])
    other = crm.create_deal(name="Other", contact_ids=[eve.id])
    crm.create_activity(kind="call", title="Call", participants=["fay@gamma.example"])
    crm.set_thread_deal(1, open_deal.id, linked=False)  # the rules would link it
    crm.set_thread_deal(2, other.id, linked=True)
    # example.test (owner@, in To of every message) is the organisation's: mail among
    # eve, user, zed and the owner is internal-only.
    policy = LinkPolicy.build(["org.example", "example.test"], ["blocked.example"], link_internal)
    linker = LinkerStore(store.engine, policy, batch=1000, relink_size=1000)
    while linker.index_batch():  # the rules, per message
        pass
    by_rules = _links(store)
    assert {k for _, k, _, _ in by_rules} == {"contact", "company", "deal", "activity"}
    assert any(s == "manual" for *_, s in by_rules)
    with store.engine.connect() as conn:
        linked = set(conn.scalars(select(TimelineLinkRow.message_id)))
    assert (len(linked) == 140) is link_internal  # internal-only mail links only if asked
    # Any state: some wanted links gone, a stray auto link, a manual link stored as auto.
    with store.engine.begin() as conn:
        conn.execute(delete(TimelineLinkRow).where(TimelineLinkRow.message_id % 3 == 0))
        conn.execute(
            text("UPDATE timeline_links SET source = 'auto' WHERE source = 'manual' AND id % 2 = 0")
        )
        conn.execute(
            text(
                "INSERT INTO timeline_links "
                "(message_id, target_kind, target_id, source, sort_at, created_at) "
                "SELECT id, 'deal', :d, 'auto', sort_at, created_at FROM messages WHERE id % 5 = 1"
            ),
            {"d": other.id + 1000},
        )
    mark = linker.watermark()
    with store.engine.begin() as conn:
        domains = list(conn.scalars(select(MessageParticipantRow.domain).distinct()))
        for domain in domains:
            linker._relink_set(conn, "domain", domain, 0, mark)
    assert _links(store) == by_rules


def test_a_deleted_message_takes_its_links_with_it(store: Store) -> None:
    """timeline_links has no foreign key (its per-row check was most of a large re-link's
    time); the trigger on ``messages`` removes a message's links with the message, whether
    the message is deleted alone or with its account."""
    from sqlalchemy import delete

    from correspond.store.message_tables import MessageRow

    _fill(store, 30)
    crm = CrmStore(store.engine)
    crm.create_contact(emails=[OWNER])
    linker = LinkerStore(store.engine, LinkPolicy.build([], [], True), batch=1000)
    while linker.index_batch():
        pass
    links = _links(store)
    assert len({m for m, *_ in links}) == 30
    gone = min(m for m, *_ in links)
    with store.engine.begin() as conn:
        conn.execute(delete(MessageRow).where(MessageRow.id == gone))
    after = _links(store)
    assert after == {link for link in links if link[0] != gone}
    store.remove_account("acc")
    assert _links(store) == set()


def test_auto_created_contacts_say_so_and_a_deleted_one_is_not_made_again(store: Store) -> None:
    """Auto-created contacts carry ``origin`` ``auto`` until a person changes them; deleting
    a contact dismisses its addresses, so the next mail does not bring it back, until a
    person makes a contact with the address (or lifts the dismissal)."""
    account_id, _ = make_account_with_folders(store.engine, "box")
    crm = CrmStore(store.engine)
    me = (None, "box@example.test")
    _mail(store, account_id, "s1", outbound=True, sender=me, to=[("Ann A", "ann@cust.test")])
    _mail(store, account_id, "s2", outbound=True, sender=me, to=[("Bob B", "bob@cust.test")])
    linker = LinkerStore(store.engine, _policy("sent"), batch=500)
    linker.run_until_idle()
    made = {c.emails[0]: c for c in crm.list_contacts(origin="auto").items}
    assert set(made) == {"ann@cust.test", "bob@cust.test"}
    assert crm.list_contacts(origin="manual").items == []
    # A person's change adopts the contact.
    assert crm.update_contact(made["bob@cust.test"].id, name="Bob").origin == "manual"
    crm.delete_contact(made["ann@cust.test"].id)
    rows, cursor = crm.list_dismissals()
    assert [a for a, _ in rows] == ["ann@cust.test"] and cursor is None
    later = _mail(store, account_id, "s3", outbound=True, sender=me, to=[(None, "ann@cust.test")])
    linker.run_until_idle()
    assert "ann@cust.test" not in _contacts(crm)
    # Made by hand again: no longer dismissed, and her mail is on her timeline.
    ann = crm.create_contact(name="Ann", emails=["ANN@cust.test"])
    assert ann.origin == "manual" and crm.list_dismissals()[0] == []
    linker.run_until_idle()
    assert later in _timeline_ids(crm, "contact", ann.id)
    # Imported contacts say so; lifting a dismissal that is not there is NotFound.
    crm.import_records("contact", [{"name": "Cy", "emails": ["cy@cust.test"]}])
    assert [c.emails for c in crm.list_contacts(origin="import").items] == [("cy@cust.test",)]
    from correspond.errors import NotFound

    with pytest.raises(NotFound):
        crm.undismiss("nobody@cust.test")
    crm.delete_contact(ann.id)
    crm.undismiss("ann@cust.test")
    _mail(store, account_id, "s4", outbound=True, sender=me, to=[(None, "ann@cust.test")])
    linker.run_until_idle()
    assert _contacts(crm)["ann@cust.test"][1] == ""
