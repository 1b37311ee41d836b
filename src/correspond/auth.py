"""Users and authentication, engine side: passwords, API tokens, sessions, login throttling,
and the questions asked of the one visibility rule (:mod:`correspond.store.visibility`).

The CLI and the API call this; all SQL is in :mod:`correspond.store.users`.

- Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommended
  option). Signing in as an unknown user verifies against a dummy hash, so the time taken does
  not tell which addresses have accounts.
- API tokens are ``ct_`` + 32 random bytes (url-safe base64); the store keeps the SHA-256 and a
  short prefix for display. The token is shown once, when created.
- Session cookies are 32 random bytes too, stored hashed with an expiry.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from correspond.errors import ConfigError, NotFound
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.compose import IdentityStore, TemplateStore
from correspond.store.drafts import DraftStore
from correspond.store.tables import utcnow
from correspond.store.teams import TeamStore
from correspond.store.users import ApiToken, Caller, PathRef, User, UserStore, email_key
from correspond.store.visibility import Access

__all__ = [
    "SESSION_COOKIE",
    "TOKEN_PREFIX",
    "AuthService",
    "LoginLimiter",
    "LoginThrottled",
    "NewToken",
    "check_password",
    "hash_token",
]

TOKEN_PREFIX = "ct_"
SESSION_COOKIE = "correspond_session"
MAX_PASSWORD_CHARS = 1024
_DISPLAY_PREFIX_CHARS = 8  # after "ct_": enough to tell one's tokens apart, useless to guess


def hash_token(token: str) -> str:
    """The SHA-256 (hex) of a token or session value: what the store keeps."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_password(password: str) -> str:
    """``password`` if it can be a user's password, else :class:`ConfigError` saying why."""
    if not password:
        raise ConfigError("the password is empty")
    if "\x00" in password:
        raise ConfigError("the password contains a NUL character")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ConfigError(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    return password


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just created: ``token`` is the only time the secret is available."""

    token: str
    info: ApiToken


class LoginThrottled(Exception):
    """Too many failed sign-ins for this user or from this address; retry after a while."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed sign-ins; try again in {math.ceil(retry_after)} s")
        self.retry_after = max(1, math.ceil(retry_after))


class LoginLimiter:
    """Failed sign-ins counted per user and per client address over a sliding window.

    In memory and bounded: at most ``max_entries`` keys are remembered (the least recently
    failed are forgotten first), each with at most its limit of timestamps. Once a key reaches
    its limit, sign-ins for it are refused (even with the right password) until the oldest
    failure leaves the window. A successful sign-in clears the user's count.
    """

    def __init__(
        self,
        *,
        per_user: int,
        per_address: int,
        window_seconds: float,
        max_entries: int = 10_000,
    ) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window = window_seconds
        self.max_entries = max_entries
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _now(self) -> float:
        return time.monotonic()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def check(self, user: str, address: str) -> None:
        """:class:`LoginThrottled` when either key has reached its limit."""
        now = self._now()
        with self._lock:
            for key, limit in (
                (f"u:{email_key(user)}", self.per_user),
                (f"a:{address}", self.per_address),
            ):
                times = self._recent(key, now)
                if len(times) >= limit:
                    raise LoginThrottled(self.window - (now - times[0]))

    def failed(self, user: str, address: str) -> None:
        now = self._now()
        with self._lock:
            for key, limit in (
                (f"u:{email_key(user)}", self.per_user),
                (f"a:{address}", self.per_address),
            ):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times[-limit:]
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_entries:
                self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(f"u:{email_key(user)}", None)

    def __len__(self) -> int:
        return len(self._failures)


class AuthService:
    """Users, tokens, sessions and account visibility over one store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.users = UserStore(store.engine)
        self.teams = TeamStore(store.engine)
        self.identities = IdentityStore(store.engine, store.secrets)
        self.templates = TemplateStore(store.engine)
        self.drafts = DraftStore(store.engine, max_bytes=settings.send_max_bytes)
        self.settings = settings
        self.hasher = PasswordHasher(
            time_cost=settings.password_hash_time_cost,
            memory_cost=settings.password_hash_memory_kib,
        )
        self._dummy: str | None = None
        self.limiter = LoginLimiter(
            per_user=settings.login_max_failures_per_user,
            per_address=settings.login_max_failures_per_address,
            window_seconds=settings.login_window_seconds,
            max_entries=settings.login_limiter_max_entries,
        )

    def _dummy_hash(self) -> str:
        """Verified against when the user does not exist, so that costs the same time (made
        with the same parameters on first use, not at start-up)."""
        if self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy

    # -- users -----------------------------------------------------------------------------

    def create_user(
        self,
        email: str,
        password: str | None,
        *,
        admin: bool = False,
        display_name: str = "",
    ) -> tuple[User, int]:
        """A new user (and how many ownerless accounts it took, see
        :meth:`UserStore.create_user`). ``password`` None: API tokens only."""
        email = email.strip()
        if "@" not in email or len(email) > 320 or any(c.isspace() for c in email):
            raise ConfigError(f"{email!r} is not an e-mail address")
        hashed = None if password is None else self.hasher.hash(check_password(password))
        return self.users.create_user(
            email,
            display_name=display_name.strip(),
            password_hash=hashed,
            role="admin" if admin else "member",
        )

    def set_password(self, email: str, password: str) -> User:
        return self.users.set_password_hash(email, self.hasher.hash(check_password(password)))

    def authenticate_password(self, email: str, password: str, address: str) -> User:
        """The enabled user with this e-mail and password.

        :class:`LoginThrottled` once too many attempts failed for the user or the address;
        :class:`NotFound` with one message for every other failure (unknown user, wrong
        password, disabled user, no password), in about the same time.
        """
        self.limiter.check(email, address)
        found = self.users.credentials(email)
        user, hashed = found if found is not None else (None, None)
        ok = False
        try:
            ok = self.hasher.verify(hashed or self._dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or user is None or hashed is None or user.disabled:
            self.limiter.failed(email, address)
            raise NotFound("unknown user or wrong password")
        self.limiter.succeeded(email)
        if self.hasher.check_needs_rehash(hashed):
            self.users.rehash(user.id, self.hasher.hash(password))
        return user

    # -- tokens ----------------------------------------------------------------------------

    def create_token(self, user: User, name: str) -> NewToken:
        name = name.strip()
        if not name or len(name) > 100 or any(not c.isprintable() for c in name):
            raise ConfigError("a token name is 1 to 100 printable characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        prefix = token[: len(TOKEN_PREFIX) + _DISPLAY_PREFIX_CHARS]
        info = self.users.add_token(user.id, name, hash_token(token), prefix)
        return NewToken(token=token, info=info)

    def user_for_token(self, token: str) -> User | None:
        caller = self.caller_for_token(token)
        return None if caller is None else caller.user

    def caller_for_token(self, token: str, refs: tuple[PathRef, ...] = ()) -> Caller | None:
        """The token's user and the owners of ``refs`` (:meth:`UserStore.caller`), else None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        return self.users.caller("token", hash_token(token), refs)

    # -- sessions --------------------------------------------------------------------------

    def start_session(self, user: User) -> str:
        """A new session for ``user``: the cookie value (only its hash is stored)."""
        value = secrets.token_urlsafe(32)
        expires = utcnow() + timedelta(seconds=self.settings.session_ttl_seconds)
        self.users.add_session(user.id, hash_token(value), expires)
        return value

    def user_for_session(self, value: str) -> User | None:
        caller = self.caller_for_session(value)
        return None if caller is None else caller.user

    def caller_for_session(self, value: str, refs: tuple[PathRef, ...] = ()) -> Caller | None:
        """The session's user and the owners of ``refs`` (:meth:`UserStore.caller`), else
        None."""
        if not value or len(value) > 200:
            return None
        return self.users.caller("session", hash_token(value), refs)

    def end_session(self, value: str) -> None:
        self.users.delete_session(hash_token(value))

    # -- visibility: the one rule (store.visibility), asked through the store -------------

    def account_access(self, user: User, name: str) -> Access:
        """``user``'s access to account ``name``: :class:`NotFound` (the same as for no such
        account) unless they may see it."""
        return self.users.access_to_account(user, name)

    def message_access(self, user: User, message_id: int) -> Access:
        return self.users.access_to_message(user, message_id)

    def messages_access(self, user: User, message_ids: Collection[int]) -> dict[int, Access]:
        """``user``'s access to each message they may see (absent: hidden or no such id)."""
        return self.users.access_to_messages(user, message_ids)

    def thread_access(self, user: User, thread_id: int) -> Access:
        return self.users.access_to_thread(user, thread_id)

    def identity_visible(self, user: User, identity_id: int) -> None:
        """:class:`NotFound` unless ``identity_id`` is ``user``'s and usable by them (the
        rule of ``store.visibility.identity_terms``: nobody else's, admins included)."""
        self.identities.exists_for(user, identity_id)

    def draft_visible(self, user: User, draft_id: int) -> None:
        """:class:`NotFound` unless ``draft_id`` is ``user``'s: nobody else's, admins
        included (a sent one too: its send route answers a retry with the send;
        ``DraftStore.exists_for``)."""
        self.drafts.exists_for(user, draft_id)

    def template_access(self, user: User, template_id: int) -> Access:
        """``user``'s access to a template (``manage``: may change it); :class:`NotFound`
        unless they may see it (``store.visibility.template_terms``)."""
        return self.templates.access(user, template_id)

    def outbox_access(self, user: User, outbox_id: int) -> Access:
        return self.users.access_to_outbox(user, outbox_id)

    def team_visible(self, user: User, team_id: int) -> None:
        """:class:`NotFound` unless the team exists and ``user`` is an admin or in it."""
        if user.disabled or not (
            (user.is_admin and self._team_exists(team_id)) or self.teams.is_member(team_id, user.id)
        ):
            raise NotFound(f"no team {team_id}")

    def _team_exists(self, team_id: int) -> bool:
        try:
            self.teams.get(team_id)
        except NotFound:
            return False
        return True

    def check_team_choice(self, user: User, team_id: int) -> None:
        """Whether ``user`` may make an account a team inbox of ``team_id``: an admin, or a
        member of that team. :class:`NotFound` for a team they cannot see, so ids do not
        leak."""
        self.team_visible(user, team_id)

    def default_owner(self, owner_email: str | None) -> User | None:
        """The owner of a new account added from the CLI: the user ``owner_email``, else the
        first admin; None when there are no users yet (the first admin will take it)."""
        if owner_email is not None:
            user = self.users.get_user(owner_email)
            if user.disabled:
                raise ConfigError(f"user {user.email} is disabled")
            return user
        if self.users.count_users() == 0:
            return None
        admin = self.users.first_admin()
        if admin is None:
            raise ConfigError("there is no enabled admin: give the owner with --owner EMAIL")
        return admin
