"""Who sees which account, and how much of it: the one visibility rule, as SQL.

:func:`rule_terms` is the rule, written once, as SQL over the ``accounts`` row;
:func:`visible_accounts` makes it a subquery of ``(account_id, access, manage)`` rows, one per
account the user may see. Every read that names an account, a message or a thread goes
through it (:class:`~correspond.store.users.UserStore`'s ``access_to_*`` add the terms to
their lookup; the ``viewer`` of :meth:`~correspond.store.repository.Store.list_accounts` joins
the subquery), so nothing outside it is ever found. The rule:

- a disabled user sees nothing; an admin sees every account, in full, and manages it;
- a member sees in full and manages the accounts they own;
- a member sees in full every team inbox (``accounts.team_id``) of a team they are in;
- a member sees the personal accounts of the people they share a team with: in full when the
  owner shares them with ``team``, metadata only (participants, subject, date, folders and
  flags; never bodies, snippets, attachments or raw) with ``metadata``, not at all when
  ``private`` (the default). The most generous path wins.

The same rule read the other way, "who sees this account", is :func:`account_audience` (who is
told of an account's new mail, whose webhooks hear of it): candidates by index, each passed
through the rule's member terms; and :func:`terms_for_users` is the rule with the viewer taken
per row (one statement for many viewers).

``manage`` (change, delete, pause, resume, test, refresh or choose folders) is the owner's or an
admin's alone, team inboxes included: seeing a team's mail does not let every member stop
its sync or move its credentials.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Subquery,
    and_,
    bindparam,
    case,
    false,
    literal,
    or_,
    select,
    true,
    union,
)
from sqlalchemy.orm import QueryableAttribute, Session, aliased

from correspond.store.compose_tables import IdentityRow, TemplateRow
from correspond.store.draft_tables import DraftRow
from correspond.store.tables import AccountRow, TeamMemberRow, UserRow

__all__ = [
    "ACCESS_LEVELS",
    "Access",
    "RuleTerms",
    "Viewer",
    "access_of",
    "account_audience",
    "audience_params",
    "draft_terms",
    "identity_terms",
    "read_audience",
    "rule_terms",
    "sendable_accounts_terms",
    "template_terms",
    "terms_for",
    "terms_for_users",
    "viewer_kind",
    "viewer_params",
    "visible_accounts",
    "visible_accounts_clause",
    "visible_message_filter",
]

#: The bound parameter that carries the viewer's user id.
VIEWER_ID = "viewer_id"
#: The bound parameter of :func:`account_audience`: the accounts whose audience is asked.
AUDIENCE_ACCOUNTS = "audience_accounts"
#: What a viewer may read of an account: everything, or only its metadata.
ACCESS_LEVELS = ("full", "metadata")


class Viewer(Protocol):
    """Who is looking (a :class:`~correspond.store.users.User`)."""

    @property
    def id(self) -> int: ...
    @property
    def is_admin(self) -> bool: ...
    @property
    def disabled(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Access:
    """A viewer's access to one account: ``level`` full or metadata; ``manage`` whether they
    may change it (owner or admin)."""

    level: str
    manage: bool

    @property
    def full(self) -> bool:
        return self.level == "full"


def access_of(level: Any, manage: Any) -> Access:
    """An :class:`Access` from a row of :func:`visible_accounts` (SQLite gives 0/1)."""
    return Access(level=str(level), manage=bool(manage))


@dataclass(frozen=True, slots=True)
class RuleTerms:
    """The rule as three SQL expressions over ``accounts`` (no join of its own): ``visible``
    (a WHERE), ``level`` ('full' | 'metadata') and ``manage`` (bool)."""

    visible: ColumnElement[bool]
    level: ColumnElement[str]
    manage: ColumnElement[bool]


def viewer_kind(viewer: Viewer) -> str:
    """Which form of the rule applies: ``disabled``, ``admin`` or ``member``."""
    return "disabled" if viewer.disabled else "admin" if viewer.is_admin else "member"


def viewer_params(viewer: Viewer) -> dict[str, int]:
    """The bound parameters of a statement built with :func:`rule_terms`."""
    return {VIEWER_ID: viewer.id}


def rule_terms(viewer: Viewer) -> RuleTerms:
    """The rule for ``viewer`` over the ``accounts`` row of the query it is added to (bind
    :func:`viewer_params` when running it). Lookups of one account (by name, or through a
    message or thread) add these to their own statement, so the database finds the row by its
    index first and then evaluates the rule for it alone; :func:`visible_accounts` makes the
    same terms a subquery to join lists to."""
    return terms_for(viewer_kind(viewer))


@functools.cache
def terms_for(kind: str) -> RuleTerms:
    # Built once per kind with the viewer as a bound parameter: the statements that use them
    # are built once too (building these nested selects cost more than running them).
    if kind == "disabled":
        return RuleTerms(false(), literal("metadata"), false())
    if kind == "admin":
        return RuleTerms(true(), literal("full"), true())
    return _member_terms(bindparam(VIEWER_ID, type_=Integer()))


def _member_terms(viewer_id: ColumnElement[int] | QueryableAttribute[int]) -> RuleTerms:
    """The rule for a member whose id is ``viewer_id``: a bound parameter (one viewer), or a
    column of the enclosing query (:func:`terms_for_users`: one viewer per row)."""
    my_teams = select(TeamMemberRow.team_id).where(TeamMemberRow.user_id == viewer_id)
    teammates = select(TeamMemberRow.user_id).where(TeamMemberRow.team_id.in_(my_teams))
    own = AccountRow.owner_id == viewer_id
    team_inbox = AccountRow.team_id.in_(my_teams)
    shared_in_full = and_(AccountRow.sharing == "team", AccountRow.owner_id.in_(teammates))
    shared_metadata = and_(AccountRow.sharing == "metadata", AccountRow.owner_id.in_(teammates))
    full = or_(own, team_inbox, shared_in_full)
    return RuleTerms(
        visible=or_(full, shared_metadata),
        level=case((full, literal("full")), else_=literal("metadata")),
        manage=case((own, true()), else_=false()),
    )


def terms_for_users(
    user_id: ColumnElement[int] | QueryableAttribute[int],
    is_admin: ColumnElement[bool],
    disabled: ColumnElement[bool] | QueryableAttribute[bool],
) -> RuleTerms:
    """The rule with the viewer taken from columns of the enclosing query, one viewer per row
    (the notifications of every user with a live stream, read in one statement): the same
    three forms as :func:`terms_for` (disabled, admin, member), chosen per row."""
    member = _member_terms(user_id)
    enabled = disabled.is_(False)
    return RuleTerms(
        visible=and_(enabled, or_(is_admin, member.visible)),
        level=case((is_admin, literal("full")), else_=member.level),
        manage=and_(enabled, or_(is_admin, member.manage)),
    )


def read_audience(s: Session, account_ids: Collection[int]) -> list[tuple[int, int, str]]:
    """:func:`account_audience` of ``account_ids`` run in ``s``'s transaction: rows
    ``(account_id, user_id, access)``."""
    if not account_ids:
        return []
    # (PostgreSQL's estimate for the rule's subqueries passes jit_above_cost: compiling took
    # ~0.45 s, running ~5 ms. The engine turns JIT off for every connection: store/engine.py.)
    rows = s.execute(account_audience(), audience_params(account_ids)).all()
    return [(int(r[0]), int(r[1]), str(r[2])) for r in rows]


def audience_params(account_ids: Collection[int]) -> dict[str, list[int]]:
    """The bound parameters of :func:`account_audience` for ``account_ids``."""
    return {AUDIENCE_ACCOUNTS: sorted(set(account_ids))}


@functools.cache
def account_audience() -> Select[tuple[int, int, str]]:
    """Who follows each of the accounts bound by :func:`audience_params` (who is told of
    its new mail, whose webhooks hear of it): rows ``(account_id, user_id, access)``, one per
    enabled user the rule lets see the account through a path of their own: its owner, the
    members of its team inbox's team, and the owner's teammates when the owner shares it
    (``access`` ``metadata`` for a metadata-only share). An admin sees every account, but
    that power is not a subscription: admins are in the audience only through those same
    paths (with full access).

    The candidates come from the three paths by index (the owner; members of the account's
    team; members of the owner's teams when it is shared), and each candidate then passes the
    rule itself (:func:`_member_terms` with the candidate as the viewer), so the rule stays
    the only authority on who sees what; ``tests/test_notifications.py`` checks the audience
    against the rule asked viewer by viewer. Built once (building it cost more than running
    it); the accounts are an expanding parameter."""
    ids = bindparam(AUDIENCE_ACCOUNTS, expanding=True, type_=Integer())
    owner = select(AccountRow.id.label("account_id"), AccountRow.owner_id.label("user_id")).where(
        AccountRow.id.in_(ids), AccountRow.owner_id.is_not(None)
    )
    inbox = (
        select(AccountRow.id, TeamMemberRow.user_id)
        .join(TeamMemberRow, TeamMemberRow.team_id == AccountRow.team_id)
        .where(AccountRow.id.in_(ids))
    )
    owners_team, mate = aliased(TeamMemberRow), aliased(TeamMemberRow)
    shared = (
        select(AccountRow.id, mate.user_id)
        .join(owners_team, owners_team.user_id == AccountRow.owner_id)
        .join(mate, mate.team_id == owners_team.team_id)
        .where(AccountRow.id.in_(ids), AccountRow.sharing != "private")
    )
    candidates = union(owner, inbox, shared).subquery("candidates")
    member = _member_terms(candidates.c.user_id)
    is_admin = UserRow.role == "admin"
    return (
        select(
            candidates.c.account_id,
            candidates.c.user_id,
            case((is_admin, literal("full")), else_=member.level).label("access"),
        )
        .join(AccountRow, AccountRow.id == candidates.c.account_id)
        .join(UserRow, UserRow.id == candidates.c.user_id)
        .where(UserRow.disabled.is_(False), member.visible)
    )


def visible_accounts(viewer: Viewer) -> Subquery:
    """The accounts ``viewer`` may see: ``account_id``, ``access`` (full | metadata) and
    ``manage`` (bool), one row per account (:func:`rule_terms` as a subquery; bind
    :func:`viewer_params`)."""
    return _subquery(viewer_kind(viewer))


@functools.cache
def _subquery(kind: str) -> Subquery:
    terms = terms_for(kind)
    return (
        select(
            AccountRow.id.label("account_id"),
            terms.level.label("access"),
            terms.manage.label("manage"),
        )
        .where(terms.visible)
        .subquery("visible")
    )


def visible_message_filter(viewer: Viewer, account_id: Any) -> ColumnElement[bool]:
    """A WHERE clause for cross-account message queries (timelines): the row's account
    (``account_id``, a column) is one ``viewer`` sees **in full** (bind :func:`viewer_params`).
    An account shared as metadata only stays off its viewers' timelines: a timeline entry
    carries the snippet, which is body text."""
    kind = viewer_kind(viewer)
    if kind == "admin":
        return true()
    if kind == "disabled":
        return false()
    terms = terms_for(kind)
    full = select(AccountRow.id).where(terms.visible, terms.level == literal("full"))
    return account_id.in_(full)  # type: ignore[no-any-return]


def visible_accounts_clause(viewer: Viewer, account_id: Any) -> ColumnElement[bool]:
    """:func:`visible_message_filter` with the viewer already bound: a condition for queries
    over many accounts (search) that run it without :func:`viewer_params`. Only accounts seen
    in full: a search of a metadata-only account would probe its bodies."""
    if viewer_kind(viewer) != "member":
        return visible_message_filter(viewer, account_id)  # true() or false(): nothing to bind
    return visible_message_filter(viewer, account_id).params({VIEWER_ID: viewer.id})


# -- Identities and templates ------------------------------------------------------------------
# The same rule, for the two things a user composes with.


def sendable_accounts_terms(viewer: Viewer) -> ColumnElement[bool]:
    """A WHERE over ``accounts``: the accounts ``viewer`` may send from (bind
    :func:`viewer_params`). Their own accounts and the team inboxes of their teams; not a
    teammate's personal account, even shared in full (reading someone's mail is not writing
    as them), and an admin's power to manage every account is not a right to send as it."""
    if viewer.disabled:
        return false()
    viewer_id = bindparam(VIEWER_ID, type_=Integer())
    my_teams = select(TeamMemberRow.team_id).where(TeamMemberRow.user_id == viewer_id)
    return or_(AccountRow.owner_id == viewer_id, AccountRow.team_id.in_(my_teams))


def identity_terms(viewer: Viewer) -> ColumnElement[bool]:
    """A WHERE over ``identities``: the identities ``viewer`` may see and send as (bind
    :func:`viewer_params`): their own, and of kind ``account`` only while they may still send
    from that account (:func:`sendable_accounts_terms`). Nobody else's, admins included."""
    if viewer.disabled:
        return false()
    viewer_id = bindparam(VIEWER_ID, type_=Integer())
    sendable = select(AccountRow.id).where(sendable_accounts_terms(viewer))
    return and_(
        IdentityRow.owner_id == viewer_id,
        or_(IdentityRow.account_id.is_(None), IdentityRow.account_id.in_(sendable)),
    )


def template_terms(viewer: Viewer) -> RuleTerms:
    """The rule over ``templates`` (bind :func:`viewer_params`): a member sees their own
    templates and those shared with a team they are in, and changes their own; an admin sees
    and changes every template. ``level`` is always ``full`` (a template has no metadata-only
    view)."""
    kind = viewer_kind(viewer)
    if kind == "disabled":
        return RuleTerms(false(), literal("full"), false())
    if kind == "admin":
        return RuleTerms(true(), literal("full"), true())
    viewer_id = bindparam(VIEWER_ID, type_=Integer())
    my_teams = select(TeamMemberRow.team_id).where(TeamMemberRow.user_id == viewer_id)
    own = TemplateRow.owner_id == viewer_id
    return RuleTerms(
        visible=or_(own, TemplateRow.team_id.in_(my_teams)),
        level=literal("full"),
        manage=case((own, true()), else_=false()),
    )


def draft_terms(viewer: Viewer) -> ColumnElement[bool]:
    """A WHERE over ``drafts``: the drafts ``viewer`` may see, change and send (bind
    :func:`viewer_params`): their own, nobody else's, admins included (a draft is unsent
    writing, as private as a note to oneself); not one already sent (``sent_outbox_id``)."""
    if viewer.disabled:
        return false()
    return and_(
        DraftRow.owner_id == bindparam(VIEWER_ID, type_=Integer()),
        DraftRow.sent_outbox_id.is_(None),
    )
