"""CRM linking rules, pure: which timelines a message belongs on.

No IO here: the linker (:mod:`correspond.sync.linker`) reads what a batch of messages needs
(participants, the contacts and companies behind their addresses and domains, open deals,
activities) and asks :func:`links_for` per message; the tests are tables.

- Addresses are compared normalised (:func:`normalize_address`: trimmed, lower-cased, the
  domain as its IDNA A-label), whatever a message or an import wrote.
- A message's participants are From, To and Cc, and Bcc only on sent mail
  (:func:`participant_rows`): a received copy never names Bcc recipients honestly.
- A message links to each contact with a participant address, those contacts' companies,
  the companies whose domain is an *external* participant's, those contacts' open deals, and
  the activities that list a participant.
- Blocklisted addresses and domains are dropped first: they link nothing and count for
  nothing. Mail whose remaining participants are all internal (a user of the installation, or
  an address at one of the organisation's domains) links nowhere unless ``link_internal``.
- Contact auto-creation (:func:`contacts_to_create`, off by default): the external
  participants of sent mail (``sent``), or of sent and received mail (``all``), that have no
  contact yet become contacts: never an internal, blocklisted or automated address
  (:func:`is_automated_address`: no-reply, mailer-daemon, postmaster, bounces), at most a
  bounded number per batch.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ACTIVITY_KINDS",
    "AUTO_CREATE_MODES",
    "DEAL_STATUSES",
    "ROLES",
    "TARGET_KINDS",
    "AutoCreatePlan",
    "LinkContext",
    "contacts_to_create",
    "domain_of",
    "is_automated_address",
    "links_for",
    "named_participants",
    "normalize_address",
    "normalize_domain",
    "participant_rows",
]

TARGET_KINDS = ("contact", "company", "deal", "activity")
DEAL_STATUSES = ("open", "won", "lost")
ACTIVITY_KINDS = ("meeting", "call", "task")
ROLES = ("from", "to", "cc", "bcc")
#: ``Settings.auto_create_contacts``: never, from sent mail, from sent and received mail.
AUTO_CREATE_MODES = ("off", "sent", "all")

#: Longest address (RFC 5321 §4.5.3.1: 64 + 1 + 255) and domain kept; longer ones are not mail.
MAX_ADDRESS = 320
MAX_DOMAIN = 255


def normalize_domain(domain: str) -> str | None:
    """``domain`` lower-cased, as its IDNA A-label (``Bücher.example`` ->
    ``xn--bcher-kva.example``); None when it cannot be a mail domain (empty, spaces, an empty
    label, too long)."""
    value = domain.strip().rstrip(".").lower()
    if not value or any(c.isspace() for c in value) or "@" in value or ".." in value:
        return None
    if not value.isascii():
        try:
            value = value.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(value) > MAX_DOMAIN or value.startswith("."):
        return None
    return value


def normalize_address(address: str) -> str | None:
    """``address`` trimmed and lower-cased with its domain normalised (:func:`normalize_domain`);
    None when it is not an address (no ``@``, an empty side, spaces)."""
    value = address.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or any(c.isspace() for c in local):
        return None
    norm = normalize_domain(domain)
    if norm is None:
        return None
    result = f"{local.lower()}@{norm}"
    return result if len(result) <= MAX_ADDRESS else None


def domain_of(address: str) -> str:
    """The domain of a normalised address."""
    return address.rpartition("@")[2]


def _emails(items: Iterable[Mapping[str, Any]] | None) -> Iterable[str]:
    for item in items or ():
        email = item.get("email") if isinstance(item, Mapping) else None
        if isinstance(email, str):
            yield email


def participant_rows(
    from_email: str | None,
    to: Iterable[Mapping[str, Any]] | None,
    cc: Iterable[Mapping[str, Any]] | None,
    bcc: Iterable[Mapping[str, Any]] | None,
    *,
    outbound: bool,
) -> list[tuple[str, str]]:
    """A message's ``(address, role)`` pairs, normalised, without duplicates (an address may
    hold two roles). Bcc only when ``outbound`` (the sender's own copy is the only honest one).
    Anything that is not an address is left out."""
    out: dict[tuple[str, str], None] = {}
    groups: list[tuple[str, Iterable[str]]] = [
        ("from", [from_email] if from_email else []),
        ("to", _emails(to)),
        ("cc", _emails(cc)),
    ]
    if outbound:
        groups.append(("bcc", _emails(bcc)))
    for role, emails in groups:
        for email in emails:
            address = normalize_address(email)
            if address is not None:
                out[(address, role)] = None
    return list(out)


def named_participants(
    from_email: str | None,
    from_name: str | None,
    to: Iterable[Mapping[str, Any]] | None,
    cc: Iterable[Mapping[str, Any]] | None,
    bcc: Iterable[Mapping[str, Any]] | None,
    *,
    outbound: bool,
) -> list[tuple[str, str | None]]:
    """:func:`participant_rows`' addresses with the display name each carried (None when
    none), in header order: what contact auto-creation names a new contact after."""
    out: list[tuple[str, str | None]] = []
    groups: list[Iterable[Mapping[str, Any]]] = [
        [{"email": from_email, "name": from_name}] if from_email else [],
        to or (),
        cc or (),
    ]
    if outbound:
        groups.append(bcc or ())
    for items in groups:
        for item in items:
            email = item.get("email") if isinstance(item, Mapping) else None
            address = normalize_address(email) if isinstance(email, str) else None
            if address is not None:
                name = item.get("name")
                out.append((address, name if isinstance(name, str) and name.strip() else None))
    return out


@dataclass(frozen=True, slots=True)
class LinkContext:
    """What :func:`links_for` needs to know about the addresses of the messages at hand.

    ``contacts`` maps an address to its contact; ``contact_company`` a contact to its company
    (absent: none); ``domain_companies`` a domain to its company; ``open_deals`` a contact to
    its open deals; ``activities`` an address to the activities that list it. ``internal`` are
    the installation's own addresses (users, mailboxes), ``organisation_domains`` its domains,
    ``blocklist`` addresses and domains never linked; ``link_internal`` links internal-only
    mail too.
    """

    contacts: Mapping[str, int] = field(default_factory=dict)
    contact_company: Mapping[int, int] = field(default_factory=dict)
    domain_companies: Mapping[str, int] = field(default_factory=dict)
    open_deals: Mapping[int, Collection[int]] = field(default_factory=dict)
    activities: Mapping[str, Collection[int]] = field(default_factory=dict)
    internal: Collection[str] = frozenset()
    organisation_domains: Collection[str] = frozenset()
    blocklist: Collection[str] = frozenset()
    link_internal: bool = False
    #: Addresses whose contact a person deleted: never auto-created again.
    dismissed: Collection[str] = frozenset()

    def is_internal(self, address: str) -> bool:
        return address in self.internal or domain_of(address) in self.organisation_domains

    def is_blocked(self, address: str) -> bool:
        return address in self.blocklist or domain_of(address) in self.blocklist


def links_for(addresses: Iterable[str], ctx: LinkContext) -> set[tuple[str, int]]:
    """The ``(target kind, target id)`` pairs a message with these (normalised) participant
    addresses belongs to."""
    blocked, internal, org = ctx.blocklist, ctx.internal, ctx.organisation_domains
    people: list[tuple[str, str]] = []
    external = False
    for address in addresses:
        domain = address.rpartition("@")[2]
        if address in blocked or domain in blocked:
            continue
        people.append((address, domain))
        if not external and address not in internal and domain not in org:
            external = True
    if not external and not ctx.link_internal:
        return set()
    out: set[tuple[str, int]] = set()
    for address, domain in people:
        contact = ctx.contacts.get(address)
        if contact is not None:
            out.add(("contact", contact))
            company = ctx.contact_company.get(contact)
            if company is not None:
                out.add(("company", company))
            out.update(("deal", d) for d in ctx.open_deals.get(contact, ()))
        out.update(("activity", a) for a in ctx.activities.get(address, ()))
        if address not in internal and domain not in org:
            company = ctx.domain_companies.get(domain)
            if company is not None:
                out.add(("company", company))
    return out


# Local parts (without a +tag, dots, dashes and underscores) of mailboxes no person reads.
_AUTOMATED_LOCALS = frozenset(
    {"noreply", "donotreply", "mailerdaemon", "postmaster", "bounce", "bounces", "nobody"}
)
_AUTOMATED_PREFIXES = ("noreply", "donotreply", "bounce", "mailerdaemon")


def is_automated_address(address: str) -> bool:
    """Whether a normalised address is an obvious machine's (``no-reply@``,
    ``do_not_reply@``, ``mailer-daemon@``, ``postmaster@``, ``bounces+x@``, ``noreply-abc@``):
    never made a contact automatically."""
    local = address.rpartition("@")[0].split("+", 1)[0]
    squashed = local.replace(".", "").replace("-", "").replace("_", "")
    return squashed in _AUTOMATED_LOCALS or squashed.startswith(_AUTOMATED_PREFIXES)


@dataclass(frozen=True, slots=True)
class AutoCreatePlan:
    """What :func:`contacts_to_create` decided for a batch: ``contacts`` (address, name) to
    create in first-seen order, and ``covered``: how many of the batch's messages (from its
    first) were looked at whole. The caller indexes only those, and the next batch starts
    after them, so a bound never skips a message's participants (but one message with more
    new addresses than the bound gives only the first ``limit``: a mass mailing)."""

    contacts: list[tuple[str, str]]
    covered: int


def contacts_to_create(
    messages: Sequence[tuple[bool, Sequence[tuple[str, str | None]]]],
    ctx: LinkContext,
    *,
    mode: str,
    limit: int,
) -> AutoCreatePlan:
    """The contacts to create for ``messages``: each ``(outbound, participants)``, the
    participants as ``(normalised address, display name or None)``, in message order.

    ``mode`` ``off`` creates none; ``sent`` takes the participants of outbound messages;
    ``all`` those of every message. Only external addresses (not internal, not at an
    organisation domain, not blocklisted), not automated (:func:`is_automated_address`), not
    a contact already (``ctx.contacts``), not dismissed (``ctx.dismissed``: a person deleted
    its contact), each once, with the first name seen (else empty);
    at most ``limit`` (see :class:`AutoCreatePlan` for how a batch is cut)."""
    if mode not in AUTO_CREATE_MODES:
        raise ValueError(f"auto-create mode must be one of {', '.join(AUTO_CREATE_MODES)}")
    if mode == "off" or limit <= 0:
        return AutoCreatePlan([], len(messages))
    chosen: dict[str, str] = {}
    for index, (outbound, participants) in enumerate(messages):
        if mode == "sent" and not outbound:
            continue
        fresh: dict[str, str] = {}
        for address, name in participants:
            if (
                address in chosen
                or address in ctx.contacts
                or ctx.is_internal(address)
                or ctx.is_blocked(address)
                or address in ctx.dismissed
                or is_automated_address(address)
            ):
                continue
            if not fresh.get(address):  # the first name seen (From may carry none, To one)
                fresh[address] = (name or "").strip()
        if len(chosen) + len(fresh) > limit:
            if index == 0:  # one message alone over the bound: its first ``limit`` only
                chosen.update(list(fresh.items())[:limit])
                return AutoCreatePlan(list(chosen.items()), 1)
            return AutoCreatePlan(list(chosen.items()), index)
        chosen.update(fresh)
    return AutoCreatePlan(list(chosen.items()), len(messages))
