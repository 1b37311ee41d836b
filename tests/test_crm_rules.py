"""The CRM linking rules as tables (pure: no store)."""

from __future__ import annotations

from typing import Any

import pytest

from correspond.rules.crm import (
    LinkContext,
    contacts_to_create,
    is_automated_address,
    links_for,
    normalize_address,
    normalize_domain,
    participant_rows,
)
from correspond.rules.crm_import import parse_rows


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Ann@Acme.COM", "ann@acme.com"),
        ("  ann@acme.com ", "ann@acme.com"),
        ("ann@Bücher.example", "ann@xn--bcher-kva.example"),
        ("ann@acme.com.", "ann@acme.com"),
        ("no-at-sign", None),
        ("@acme.com", None),
        ("ann@", None),
        ("a b@acme.com", None),
        ("ann@acme..com", None),
        ("a@" + "x" * 400 + ".com", None),
    ],
)
def test_normalize_address(given: str, expected: str | None) -> None:
    assert normalize_address(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [("ACME.com", "acme.com"), ("bücher.example", "xn--bcher-kva.example"), ("", None)],
)
def test_normalize_domain(given: str, expected: str | None) -> None:
    assert normalize_domain(given) == expected


def _a(*emails: str) -> list[dict[str, Any]]:
    return [{"name": None, "email": e} for e in emails]


@pytest.mark.parametrize(
    ("outbound", "expected"),
    [
        # Bcc of a received copy is never trusted; of a sent one it is a participant.
        (False, [("me@org.test", "from"), ("ann@acme.com", "to"), ("bob@acme.com", "cc")]),
        (
            True,
            [
                ("me@org.test", "from"),
                ("ann@acme.com", "to"),
                ("bob@acme.com", "cc"),
                ("eve@else.test", "bcc"),
            ],
        ),
    ],
)
def test_participant_rows_take_bcc_only_on_sent_mail(
    outbound: bool, expected: list[tuple[str, str]]
) -> None:
    rows = participant_rows(
        "Me@Org.test",
        _a("ANN@acme.com", "not an address"),
        _a("bob@acme.com"),
        _a("eve@else.test"),
        outbound=outbound,
    )
    assert rows == expected


def test_participant_rows_keep_each_role_once() -> None:
    rows = participant_rows("a@x.test", _a("a@x.test", "A@X.test"), None, None, outbound=False)
    assert rows == [("a@x.test", "from"), ("a@x.test", "to")]


CTX = LinkContext(
    contacts={"ann@acme.com": 1, "bob@other.com": 2, "colleague@org.test": 3},
    contact_company={1: 10},
    domain_companies={"acme.com": 10, "beta.com": 11, "org.test": 12},
    open_deals={1: [100, 101], 2: [102]},
    activities={"ann@acme.com": [1000], "carl@beta.com": [1001]},
    internal=frozenset({"me@org.test", "boss@org.test"}),
    organisation_domains=frozenset({"org.test"}),
    blocklist=frozenset({"noreply@acme.com", "spam.test"}),
)


@pytest.mark.parametrize(
    ("addresses", "ctx", "expected"),
    [
        # A contact: the contact, its company, its open deals, its activities.
        (
            ["me@org.test", "ann@acme.com"],
            CTX,
            {("contact", 1), ("company", 10), ("deal", 100), ("deal", 101), ("activity", 1000)},
        ),
        # No contact, but an external participant's domain is a company's.
        (["me@org.test", "dora@beta.com"], CTX, {("company", 11)}),
        # An activity lists an address that is no contact's.
        (["me@org.test", "carl@beta.com"], CTX, {("company", 11), ("activity", 1001)}),
        # A contact without a company: no company link from it.
        (["me@org.test", "bob@other.com"], CTX, {("contact", 2), ("deal", 102)}),
        # Nobody known.
        (["me@org.test", "zed@nowhere.test"], CTX, set()),
        # Internal-only mail (users and the organisation's domain): nothing, not even the
        # colleague who is also a contact.
        (["me@org.test", "boss@org.test", "colleague@org.test"], CTX, set()),
        # ... unless the setting says so; the organisation's own domain is no company match.
        (
            ["me@org.test", "colleague@org.test"],
            LinkContext(
                contacts=CTX.contacts,
                domain_companies=CTX.domain_companies,
                internal=CTX.internal,
                organisation_domains=CTX.organisation_domains,
                link_internal=True,
            ),
            {("contact", 3)},
        ),
        # Blocklisted address and domain: never linked, and they make mail internal-only.
        (["me@org.test", "noreply@acme.com"], CTX, set()),
        (["me@org.test", "x@spam.test"], CTX, set()),
        # A blocklisted participant does not stop the others.
        (
            ["noreply@acme.com", "bob@other.com"],
            CTX,
            {("contact", 2), ("deal", 102)},
        ),
        ([], CTX, set()),
    ],
)
def test_links_for(addresses: list[str], ctx: LinkContext, expected: set[tuple[str, int]]) -> None:
    assert links_for(addresses, ctx) == expected


@pytest.mark.parametrize(
    ("kind", "data", "fmt", "expected"),
    [
        (
            "contacts",
            b"name,emails,external_id\nAnn,ann@a.test; ann2@a.test,c1\n",
            "csv",
            [{"name": "Ann", "emails": ["ann@a.test", "ann2@a.test"], "external_id": "c1"}],
        ),
        (
            "companies",
            b'[{"name": "Acme", "domain": "acme.test"}, 5, {"colour": "red"}]',
            "json",
            [
                {"name": "Acme", "domains": ["acme.test"]},
                "a row must be an object",
                "unknown column 'colour'",
            ],
        ),
        (
            "deals",
            b"name,status,contact_emails,company_id\nBig,open,a@a.test,x\n",
            "csv",
            ["company_id is not a number: 'x'"],
        ),
    ],
)
def test_parse_import_rows(kind: str, data: bytes, fmt: str, expected: list[Any]) -> None:
    assert parse_rows(kind, data, fmt) == expected


@pytest.mark.parametrize(
    ("data", "fmt"), [(b"{", "json"), (b'{"a": 1}', "json"), (b"\xff", "csv"), (b"", "xml")]
)
def test_unreadable_import_is_refused_whole(data: bytes, fmt: str) -> None:
    with pytest.raises(ValueError):
        parse_rows("contacts", data, fmt)


@pytest.mark.parametrize(
    ("address", "automated"),
    [
        ("noreply@x.com", True),
        ("no-reply@x.com", True),
        ("no_reply+abc@x.com", True),
        ("do-not-reply@x.com", True),
        ("donotreply@x.com", True),
        ("mailer-daemon@x.com", True),
        ("postmaster@x.com", True),
        ("bounces+12345@x.com", True),
        ("bounce-abc@x.com", True),
        ("noreply-billing@x.com", True),
        ("nobody@x.com", True),
        ("ann@x.com", False),
        ("reply@x.com", False),
        ("noreen@x.com", False),
        ("no@x.com", False),
    ],
)
def test_is_automated_address(address: str, automated: bool) -> None:
    assert is_automated_address(address) is automated


AUTO_CTX = LinkContext(
    contacts={"known@cust.com": 1},
    internal=frozenset({"me@home.com"}),
    organisation_domains=frozenset({"home.com"}),
    blocklist=frozenset({"spam.com", "pest@cust.com"}),
)
SENT_TO_ANN = (True, [("me@home.com", "Me"), ("ann@cust.com", "Ann A")])
FROM_BOB = (False, [("bob@cust.com", "Bob B"), ("me@home.com", None)])
SENT_MANY = (
    True,
    [
        ("me@home.com", None),
        ("known@cust.com", "Known"),  # already a contact
        ("colleague@home.com", None),  # an organisation domain
        ("pest@cust.com", None),  # blocklisted address
        ("x@spam.com", None),  # blocklisted domain
        ("no-reply@cust.com", None),  # automated
        ("carl@cust.com", None),  # no name here ...
        ("dora@other.org", "Dora"),
    ],
)
SENT_CARL_NAMED = (True, [("me@home.com", None), ("carl@cust.com", "Carl C")])


@pytest.mark.parametrize(
    ("messages", "mode", "limit", "contacts", "covered"),
    [
        ([SENT_TO_ANN, FROM_BOB], "off", 10, [], 2),
        ([SENT_TO_ANN, FROM_BOB], "sent", 10, [("ann@cust.com", "Ann A")], 2),
        (
            [SENT_TO_ANN, FROM_BOB],
            "all",
            10,
            [("ann@cust.com", "Ann A"), ("bob@cust.com", "Bob B")],
            2,
        ),
        # Only external, unknown, unblocked, human addresses; each once.
        (
            [SENT_MANY, SENT_TO_ANN, SENT_TO_ANN],
            "sent",
            10,
            [("carl@cust.com", ""), ("dora@other.org", "Dora"), ("ann@cust.com", "Ann A")],
            3,
        ),
        # The bound cuts the batch before the message that would pass it ...
        (
            [SENT_TO_ANN, FROM_BOB, SENT_MANY],
            "all",
            2,
            [("ann@cust.com", "Ann A"), ("bob@cust.com", "Bob B")],
            2,
        ),
        ([SENT_TO_ANN, SENT_MANY], "sent", 2, [("ann@cust.com", "Ann A")], 1),
        # ... but always covers the first message (a mass mailing gives its first `limit`).
        ([SENT_MANY, SENT_TO_ANN], "sent", 1, [("carl@cust.com", "")], 1),
        # Received mail does not count in "sent" mode, nor against the bound.
        ([FROM_BOB, SENT_TO_ANN], "sent", 1, [("ann@cust.com", "Ann A")], 2),
        ([], "all", 5, [], 0),
    ],
)
def test_contacts_to_create(
    messages: list[tuple[bool, list[tuple[str, str | None]]]],
    mode: str,
    limit: int,
    contacts: list[tuple[str, str]],
    covered: int,
) -> None:
    plan = contacts_to_create(messages, AUTO_CTX, mode=mode, limit=limit)
    assert (plan.contacts, plan.covered) == (contacts, covered)


def test_contacts_to_create_takes_a_name_seen_later_in_the_same_message() -> None:
    message = (True, [("carl@cust.com", None), ("carl@cust.com", "Carl C")])
    plan = contacts_to_create([message, SENT_CARL_NAMED], AUTO_CTX, mode="sent", limit=5)
    assert plan.contacts == [("carl@cust.com", "Carl C")]
    with pytest.raises(ValueError, match="off, sent, all"):
        contacts_to_create([], AUTO_CTX, mode="always", limit=5)


def test_contacts_to_create_never_makes_a_dismissed_address_again() -> None:
    from dataclasses import replace

    ctx = replace(AUTO_CTX, dismissed=frozenset({"ann@cust.com"}))
    plan = contacts_to_create([SENT_TO_ANN, FROM_BOB], ctx, mode="all", limit=10)
    assert plan.contacts == [("bob@cust.com", "Bob B")]
