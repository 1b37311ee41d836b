"""Users, API tokens, sign-in sessions, and who may see which account: all their SQL.

Only hashes are stored: passwords as argon2id hashes (made by :mod:`correspond.auth`, never
here), tokens and session cookies as the SHA-256 of their random value, so a copy of the
database signs nobody in.

Visibility is asked here through the one query-level rule of :mod:`correspond.store.visibility`
(:meth:`UserStore.access_to_account`, :meth:`UserStore.access_to_message`,
:meth:`UserStore.access_to_thread` add its terms to their lookup), as the ``viewer`` of
:meth:`~correspond.store.repository.Store.list_accounts` joins its subquery.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import BindParameter, Engine, Select, bindparam, delete, func, null, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import ConfigError, NotFound, StoreError
from correspond.store.engine import (
    database_failure,
    log_database_failure,
    read_retrying,
    reading_engine,
    register_table_modules,
    unit_of_work,
)
from correspond.store.message_tables import MessageRow, ThreadRow
from correspond.store.outbox_tables import OutboxRow
from correspond.store.tables import (
    THREAD_ORDERS,
    USER_ROLES,
    AccountRow,
    ApiTokenRow,
    UserRow,
    UserSessionRow,
    UtcDateTime,
    utcnow,
)
from correspond.store.visibility import (
    Access,
    Viewer,
    access_of,
    terms_for,
    viewer_kind,
    viewer_params,
)

__all__ = ["ApiToken", "Caller", "Owner", "PathRef", "User", "UserStore", "email_key"]

log = logging.getLogger(__name__)

#: ``last_used_at`` of a token is written at most this often (not on every request).
LAST_USED_RESOLUTION = timedelta(seconds=60)


def email_key(email: str) -> str:
    """The form two addresses are compared in: users differ by more than letter case."""
    return email.strip().lower()


@dataclass(frozen=True, slots=True)
class User:
    """A person who signs in. ``has_password``, never the hash."""

    id: int
    email: str
    display_name: str
    role: str
    disabled: bool
    has_password: bool
    created_at: datetime
    thread_order: str = "oldest_first"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A personal API token as listed: its prefix, never the token or its hash."""

    id: int
    user_id: int
    user_email: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


#: What a request's path may name that has an owner: ("account", name), ("message", id),
#: ("thread", id), ("outbox", id) (an outbox row: a CRM action or a send, of its account).
PathRef = tuple[Literal["account", "message", "thread", "outbox"], str | int]

#: Found, and its owner's user id (None: no owner yet).
Owner = tuple[bool, int | None]


@dataclass(frozen=True, slots=True)
class Caller:
    """A signed-in user, and the owner of each thing the request's path names (in the order
    asked), read in the same statement."""

    user: User
    owners: tuple[Owner, ...]


def _user(row: UserRow) -> User:
    return User(
        id=row.id,
        email=row.email,
        display_name=row.display_name,
        role=row.role,
        disabled=row.disabled,
        has_password=row.password_hash is not None,
        created_at=row.created_at,
        thread_order=row.thread_order,
    )


def _token(row: ApiTokenRow, email: str) -> ApiToken:
    return ApiToken(
        id=row.id,
        user_id=row.user_id,
        user_email=email,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


@functools.cache
def _access_statement(lookup: str, kind: str) -> Select[Any]:
    """The account that ``lookup`` (account by name, message or thread by id: ``key``) names,
    filtered by the visibility rule, as (level, manage). Built once per lookup and kind."""
    if lookup == "account":
        query = select(AccountRow.id).where(AccountRow.name == bindparam("key"))
    elif lookup == "message":
        query = (
            select(AccountRow.id)
            .join(MessageRow, MessageRow.account_id == AccountRow.id)
            .where(MessageRow.id == bindparam("key"))
        )
    elif lookup == "outbox":
        query = (
            select(AccountRow.id)
            .join(OutboxRow, OutboxRow.account_id == AccountRow.id)
            .where(OutboxRow.id == bindparam("key"))
        )
    else:
        query = (
            select(AccountRow.id)
            .join(ThreadRow, ThreadRow.account_id == AccountRow.id)
            .where(ThreadRow.id == bindparam("key"))
        )
    terms = terms_for(kind)
    return query.where(terms.visible).with_only_columns(terms.level, terms.manage)


class UserStore:
    """Users, tokens and sessions in the store's database. Thread-safe: one session per call."""

    def __init__(self, engine: Engine) -> None:
        register_table_modules()
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read = reading_engine(engine)
        self._statements: dict[tuple[str, tuple[str, ...]], Select[Any]] = {}

    # -- users -----------------------------------------------------------------------------

    @staticmethod
    def _row(s: Session, email: str) -> UserRow:
        row = s.scalars(select(UserRow).where(UserRow.email_key == email_key(email))).one_or_none()
        if row is None:
            raise NotFound(f"no user {email!r}")
        return row

    def create_user(
        self, email: str, *, display_name: str, password_hash: str | None, role: str
    ) -> tuple[User, int]:
        """A new user, and how many ownerless accounts it took: the first admin created takes
        every account that has no owner (accounts added, or migrated, before any user)."""
        if role not in USER_ROLES:
            raise ConfigError(f"unknown role {role!r}: use admin or member")
        try:
            with unit_of_work(self._sessions) as s:
                if s.scalar(select(UserRow.id).where(UserRow.email_key == email_key(email))):
                    raise ConfigError(f"a user {email!r} already exists")
                first_admin = role == "admin" and not s.scalar(
                    select(func.count()).select_from(UserRow).where(UserRow.role == "admin")
                )
                row = UserRow(
                    email=email.strip(),
                    email_key=email_key(email),
                    display_name=display_name,
                    password_hash=password_hash,
                    role=role,
                    disabled=False,
                )
                s.add(row)
                s.flush()
                taken = 0
                if first_admin:
                    ownerless = list(
                        s.scalars(select(AccountRow.id).where(AccountRow.owner_id.is_(None)))
                    )
                    if ownerless:
                        s.execute(
                            update(AccountRow)
                            .where(AccountRow.id.in_(ownerless))
                            .values(owner_id=row.id)
                        )
                    taken = len(ownerless)
                return _user(row), taken
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise ConfigError(f"a user {email!r} already exists") from exc
            raise

    def get_user(self, email: str) -> User:
        with unit_of_work(self._sessions) as s:
            return _user(self._row(s, email))

    def get_user_by_id(self, user_id: int) -> User | None:
        with unit_of_work(self._sessions) as s:
            row = s.get(UserRow, user_id)
            return None if row is None else _user(row)

    def credentials(self, email: str) -> tuple[User, str | None] | None:
        """The user signing in as ``email`` and their password hash; None for no such user."""
        with unit_of_work(self._sessions) as s:
            row = s.scalars(
                select(UserRow).where(UserRow.email_key == email_key(email))
            ).one_or_none()
            return None if row is None else (_user(row), row.password_hash)

    def list_users(self) -> list[User]:
        with unit_of_work(self._sessions) as s:
            return [_user(r) for r in s.scalars(select(UserRow).order_by(UserRow.id))]

    def count_users(self) -> int:
        with unit_of_work(self._sessions) as s:
            return int(s.scalar(select(func.count()).select_from(UserRow)) or 0)

    def first_admin(self) -> User | None:
        """The oldest enabled admin, the default owner of new accounts."""
        with unit_of_work(self._sessions) as s:
            row = s.scalars(
                select(UserRow)
                .where(UserRow.role == "admin", UserRow.disabled.is_(False))
                .order_by(UserRow.id)
                .limit(1)
            ).first()
            return None if row is None else _user(row)

    def set_password_hash(self, email: str, password_hash: str) -> User:
        """Replace the password; every session of the user ends (tokens stay)."""
        with unit_of_work(self._sessions) as s:
            row = self._row(s, email)
            row.password_hash = password_hash
            s.execute(delete(UserSessionRow).where(UserSessionRow.user_id == row.id))
            return _user(row)

    def rehash(self, user_id: int, password_hash: str) -> None:
        """Store a fresher hash of the same password (after a parameter change)."""
        with unit_of_work(self._sessions) as s:
            row = s.get(UserRow, user_id)
            if row is not None:
                row.password_hash = password_hash

    def set_disabled(self, email: str, disabled: bool) -> User:
        """Disable (or enable) a user; disabling ends their sessions at once. A disabled user's
        tokens are refused while disabled. The last enabled admin cannot be disabled."""
        with unit_of_work(self._sessions) as s:
            row = self._row(s, email)
            if disabled and row.role == "admin" and not row.disabled:
                admins = s.scalar(
                    select(func.count())
                    .select_from(UserRow)
                    .where(UserRow.role == "admin", UserRow.disabled.is_(False))
                )
                if (admins or 0) <= 1:
                    raise ConfigError(
                        f"{row.email} is the only enabled admin; create another admin first"
                    )
            row.disabled = disabled
            if disabled:
                s.execute(delete(UserSessionRow).where(UserSessionRow.user_id == row.id))
            return _user(row)

    # -- API tokens ------------------------------------------------------------------------

    def add_token(self, user_id: int, name: str, token_hash: str, prefix: str) -> ApiToken:
        with unit_of_work(self._sessions) as s:
            user = s.get(UserRow, user_id)
            if user is None:
                raise NotFound(f"no user with id {user_id}")
            row = ApiTokenRow(user_id=user_id, name=name, token_hash=token_hash, prefix=prefix)
            s.add(row)
            s.flush()
            return _token(row, user.email)

    def list_tokens(self, user_id: int | None = None) -> list[ApiToken]:
        """Tokens of ``user_id`` (None: everyone's), revoked ones included, oldest first."""
        with unit_of_work(self._sessions) as s:
            q = select(ApiTokenRow, UserRow.email).join(UserRow, UserRow.id == ApiTokenRow.user_id)
            if user_id is not None:
                q = q.where(ApiTokenRow.user_id == user_id)
            return [_token(r, e) for r, e in s.execute(q.order_by(ApiTokenRow.id)).all()]

    def revoke_token(self, token_id: int, *, user_id: int | None = None) -> ApiToken:
        """Revoke a token (of ``user_id`` only, when given): :class:`NotFound` otherwise, so a
        member cannot learn which ids other users' tokens have."""
        with unit_of_work(self._sessions) as s:
            row = s.get(ApiTokenRow, token_id)
            if row is None or (user_id is not None and row.user_id != user_id):
                raise NotFound(f"no token with id {token_id}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            email = s.scalar(select(UserRow.email).where(UserRow.id == row.user_id)) or ""
            return _token(row, email)

    def user_for_token(self, token_hash: str) -> User | None:
        """The enabled user whose live token has this hash (its last use noted), else None."""
        caller = self.caller("token", token_hash)
        return None if caller is None else caller.user

    def caller(
        self, kind: Literal["token", "session"], token_hash: str, refs: tuple[PathRef, ...] = ()
    ) -> Caller | None:
        """The enabled user holding this live API token (``kind`` "token": its last use noted,
        at most once a minute) or unexpired session, with the owner of each of ``refs``
        (the visibility rule's input), in one statement: a request's sign-in check and
        visibility facts cost one round trip, not one each. None: no such user."""
        statement = self._caller_statement(kind, tuple(what for what, _ in refs))
        params: dict[str, Any] = {"hash": token_hash, "now": utcnow()}
        params.update({f"ref{i}": value for i, (_, value) in enumerate(refs)})
        try:
            row = read_retrying(self._read, lambda c: c.execute(statement, params).first())
        except SQLAlchemyError as exc:
            log_database_failure(log, "database error", exc)
            raise StoreError(database_failure(exc)) from exc
        if row is None or row.disabled:
            return None
        user = User(
            id=row.id,
            email=row.email,
            display_name=row.display_name,
            role=row.role,
            disabled=row.disabled,
            has_password=bool(row.has_password),
            created_at=row.created_at,
            thread_order=row.thread_order,
        )
        if kind == "token":
            last = row.last_used_at
            if last is None or params["now"] - last >= LAST_USED_RESOLUTION:
                self._note_token_use(row.token_id, params["now"])
        # Owners are read as owner_id + 1 (user ids start at 1): NULL is "not found", 1 is
        # "found, no owner yet".
        owners = tuple(
            (False, None) if v is None else (True, None if v == 1 else int(v) - 1)
            for v in row[_CALLER_COLUMNS:]
        )
        return Caller(user=user, owners=owners)

    def _note_token_use(self, token_id: int, now: datetime) -> None:
        with unit_of_work(self._sessions) as s:
            s.execute(
                update(ApiTokenRow).where(ApiTokenRow.id == token_id).values(last_used_at=now)
            )

    def _caller_statement(self, kind: str, refs: tuple[str, ...]) -> Select[Any]:
        """The statement :meth:`caller` runs, built once per kind and path shape."""
        key = (kind, refs)
        found = self._statements.get(key)
        if found is None:
            found = self._statements[key] = _caller_statement(kind, refs)
        return found

    # -- sessions --------------------------------------------------------------------------

    def add_session(self, user_id: int, token_hash: str, expires_at: datetime) -> None:
        with unit_of_work(self._sessions) as s:
            # Expired sessions go when new ones come: the table never grows without bound.
            s.execute(delete(UserSessionRow).where(UserSessionRow.expires_at <= utcnow()))
            s.add(UserSessionRow(user_id=user_id, token_hash=token_hash, expires_at=expires_at))

    def user_for_session(self, token_hash: str) -> User | None:
        """The enabled user of an unexpired session with this hash, else None."""
        caller = self.caller("session", token_hash)
        return None if caller is None else caller.user

    def delete_session(self, token_hash: str) -> None:
        with unit_of_work(self._sessions) as s:
            s.execute(delete(UserSessionRow).where(UserSessionRow.token_hash == token_hash))

    # -- visibility: through the one rule (store.visibility) ------------------------------

    def _access(self, what: str, lookup: str, key: object, viewer: Viewer) -> Access:
        with unit_of_work(self._sessions) as s:
            found = (
                s.connection()
                .execute(
                    _access_statement(lookup, viewer_kind(viewer)),
                    {"key": key, **viewer_params(viewer)},
                )
                .first()
            )
            if found is None:
                raise NotFound(what)
            return access_of(*found)

    def access_to_account(self, viewer: Viewer, name: str) -> Access:
        """``viewer``'s access to account ``name``; NotFound when it does not exist or they
        may not see it (one answer for both)."""
        return self._access(f"no account named {name!r}", "account", name, viewer)

    def access_to_message(self, viewer: Viewer, message_id: int) -> Access:
        return self._access(f"no message with id {message_id}", "message", message_id, viewer)

    def access_to_messages(self, viewer: Viewer, message_ids: Collection[int]) -> dict[int, Access]:
        """``viewer``'s access to each of ``message_ids`` they may see, in one statement (the
        visibility rule as :meth:`access_to_message` applies it); an id they may not see, or
        that does not exist, is simply absent."""
        ids = sorted(set(message_ids))
        if not ids:
            return {}
        terms = terms_for(viewer_kind(viewer))
        query = (
            select(MessageRow.id, terms.level, terms.manage)
            .join(AccountRow, AccountRow.id == MessageRow.account_id)
            .where(MessageRow.id.in_(ids), terms.visible)
        )
        with unit_of_work(self._sessions) as s:
            found = s.connection().execute(query, viewer_params(viewer)).all()
        return {int(mid): access_of(level, manage) for mid, level, manage in found}

    def access_to_thread(self, viewer: Viewer, thread_id: int) -> Access:
        return self._access(f"no thread with id {thread_id}", "thread", thread_id, viewer)

    def access_to_outbox(self, viewer: Viewer, outbox_id: int) -> Access:
        return self._access(f"no outbox row with id {outbox_id}", "outbox", outbox_id, viewer)

    def set_thread_order(self, user_id: int, order: str) -> User:
        """Save the user's thread order (``oldest_first`` or ``newest_first``) at once."""
        if order not in THREAD_ORDERS:
            raise ConfigError(f"thread order must be one of {', '.join(THREAD_ORDERS)}")
        with unit_of_work(self._sessions) as s:
            row = s.get(UserRow, user_id)
            if row is None:
                raise NotFound(f"no user with id {user_id}")
            row.thread_order = order
            return _user(row)

    def set_account_owner(self, account_name: str, user_id: int) -> None:
        with unit_of_work(self._sessions) as s:
            row = s.scalars(select(AccountRow).where(AccountRow.name == account_name)).first()
            if row is None:
                raise NotFound(f"no account named {account_name!r}")
            row.owner_id = user_id

    def account_owners(self) -> dict[str, str | None]:
        """Each account's owner's e-mail address (None: no owner yet), by account name."""
        with unit_of_work(self._sessions) as s:
            rows = s.execute(
                select(AccountRow.name, UserRow.email).outerjoin(
                    UserRow, UserRow.id == AccountRow.owner_id
                )
            ).all()
            return {name: email for name, email in rows}


#: Columns of :func:`_caller_statement` before the owners.
_CALLER_COLUMNS = 10


def _caller_statement(kind: str, refs: tuple[str, ...]) -> Select[Any]:
    """See :meth:`UserStore.caller`. Each owner is a scalar subquery by primary key or a unique
    name, ``owner_id + 1`` (0 for no owner) so that NULL means only "not found"."""
    owned: list[Any] = []
    for i, what in enumerate(refs):
        value: BindParameter[Any] = bindparam(f"ref{i}")
        if what == "account":
            query = select(AccountRow.owner_id).where(AccountRow.name == value)
        elif what == "message":
            query = (
                select(AccountRow.owner_id)
                .join(MessageRow, MessageRow.account_id == AccountRow.id)
                .where(MessageRow.id == value)
            )
        elif what == "thread":
            query = (
                select(AccountRow.owner_id)
                .join(ThreadRow, ThreadRow.account_id == AccountRow.id)
                .where(ThreadRow.id == value)
            )
        elif what == "outbox":
            query = (
                select(AccountRow.owner_id)
                .join(OutboxRow, OutboxRow.account_id == AccountRow.id)
                .where(OutboxRow.id == value)
            )
        else:
            raise ValueError(f"no owner rule for {what!r}")
        column = query.with_only_columns(func.coalesce(AccountRow.owner_id, 0) + 1)
        owned.append(column.scalar_subquery().label(f"owner{i}"))
    user_columns = (
        UserRow.id,
        UserRow.email,
        UserRow.display_name,
        UserRow.role,
        UserRow.disabled,
        UserRow.password_hash.is_not(None).label("has_password"),
        UserRow.created_at,
        UserRow.thread_order,
    )
    if kind == "token":
        return (
            select(
                *user_columns,
                ApiTokenRow.id.label("token_id"),
                ApiTokenRow.last_used_at,
                *owned,
            )
            .join_from(ApiTokenRow, UserRow, UserRow.id == ApiTokenRow.user_id)
            .where(ApiTokenRow.token_hash == bindparam("hash"), ApiTokenRow.revoked_at.is_(None))
        )
    if kind == "session":
        return (
            select(*user_columns, null().label("token_id"), null().label("last_used_at"), *owned)
            .join_from(UserSessionRow, UserRow, UserRow.id == UserSessionRow.user_id)
            .where(
                UserSessionRow.token_hash == bindparam("hash"),
                UserSessionRow.expires_at > bindparam("now", type_=UtcDateTime()),
            )
        )
    raise ValueError(f"unknown credential kind {kind!r}")
