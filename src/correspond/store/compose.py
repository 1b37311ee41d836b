"""Outbound identities and templates: all their SQL (tables in ``store.compose_tables``).

Every read and write goes through the visibility rule (:func:`~correspond.store.visibility.
identity_terms`, :func:`~correspond.store.visibility.template_terms`): an identity is its
owner's alone, and one of kind ``account`` only while its owner may send from that account;
a template is its owner's and, when shared, its team's. Something the viewer may not see is a
:class:`NotFound` with the same words as something that does not exist.

A secret only goes where it was entered for (the accounts' rule, issue 7): changing an SMTP
identity's host, port, security or user name without a new secret drops the stored one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import ConfigError, Conflict, NotFound, StoreError
from correspond.mail.compose import ComposeError, check_address, clean_header_text
from correspond.mail.merge import check_template
from correspond.rules.presets import check_host, check_username
from correspond.store.compose_tables import IdentityRow, TemplateRow
from correspond.store.engine import register_table_modules, unit_of_work
from correspond.store.secrets import SecretBox
from correspond.store.tables import AccountRow, TeamMemberRow, TeamRow
from correspond.store.visibility import (
    Access,
    Viewer,
    identity_terms,
    sendable_accounts_terms,
    template_terms,
    viewer_params,
)

__all__ = [
    "MAX_SIGNATURE",
    "Identity",
    "IdentityChanges",
    "IdentityStore",
    "SmtpSettings",
    "Template",
    "TemplateFields",
    "TemplateStore",
    "check_smtp_settings",
]

MAX_SIGNATURE = 10_000
MAX_TEMPLATE_NAME = 200
#: The port each security uses unless one is given.
DEFAULT_PORTS = {"starttls": 587, "tls": 465}


@dataclass(frozen=True, slots=True)
class Identity:
    """An address a user sends as; ``has_secret``, never the secret. For kind ``account``
    the SMTP fields are the account's."""

    id: int
    owner_id: int
    kind: str
    account_id: int | None
    account_name: str | None
    address: str
    display_name: str
    smtp_host: str | None
    smtp_port: int | None
    smtp_security: str | None
    smtp_username: str | None
    has_secret: bool
    signature: str
    is_default: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where an SMTP identity sends through (checked by :func:`check_smtp_settings`)."""

    host: str
    port: int
    security: str
    username: str


def check_smtp_settings(host: str, port: int | None, security: str, username: str) -> SmtpSettings:
    """Checked SMTP settings; ``port`` defaults to 587 for ``starttls`` and 465 for ``tls``.
    Plaintext is refused: an identity's password never crosses an unencrypted connection."""
    if security not in DEFAULT_PORTS:
        raise ConfigError("smtp_security must be starttls (port 587) or tls (port 465)")
    chosen = DEFAULT_PORTS[security] if port is None else port
    if not 1 <= chosen <= 65535:
        raise ConfigError(f"smtp_port {chosen} is not a port (1-65535)")
    return SmtpSettings(
        host=check_host(host, "smtp_host"),
        port=chosen,
        security=security,
        username=check_username(username),
    )


@dataclass(frozen=True, slots=True)
class IdentityChanges:
    """What a ``PATCH`` changes (None: unchanged)."""

    display_name: str | None = None
    signature: str | None = None
    smtp: SmtpSettings | None = None


def _display_name(value: str) -> str:
    try:
        return clean_header_text(value, limit=200, what="display name")
    except ComposeError as exc:
        raise ConfigError(str(exc)) from exc


def _signature(value: str) -> str:
    if len(value) > MAX_SIGNATURE:
        raise ConfigError(f"the signature is longer than {MAX_SIGNATURE} characters")
    if "\x00" in value:
        raise ConfigError("the signature holds a NUL character")
    return value


class IdentityStore:
    """Identities in the store's database. Thread-safe: one session per call."""

    def __init__(self, engine: Engine, secrets: SecretBox) -> None:
        register_table_modules()
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._secrets = secrets

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _select(viewer: Viewer) -> Any:
        return (
            select(IdentityRow, AccountRow)
            .outerjoin(AccountRow, AccountRow.id == IdentityRow.account_id)
            .where(identity_terms(viewer))
        )

    @staticmethod
    def _identity(row: IdentityRow, account: AccountRow | None) -> Identity:
        host: str | None
        port: int | None
        security: str | None
        if row.kind == "account" and account is not None:
            host, port, security = account.smtp_host, account.smtp_port, account.smtp_security
            username: str | None = account.username
            has_secret = account.secret_encrypted is not None
        else:
            host, port, security = row.smtp_host, row.smtp_port, row.smtp_security
            username = row.smtp_username
            has_secret = row.secret_encrypted is not None
        return Identity(
            id=row.id,
            owner_id=row.owner_id,
            kind=row.kind,
            account_id=row.account_id,
            account_name=account.name if account is not None else None,
            address=row.address,
            display_name=row.display_name,
            smtp_host=host,
            smtp_port=port,
            smtp_security=security,
            smtp_username=username,
            has_secret=has_secret,
            signature=row.signature,
            is_default=row.is_default,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _row(self, s: Session, viewer: Viewer, identity_id: int) -> tuple[IdentityRow, Any]:
        found = s.execute(
            self._select(viewer).where(IdentityRow.id == identity_id), viewer_params(viewer)
        ).first()
        if found is None:
            raise NotFound(f"no identity with id {identity_id}")
        return found[0], found[1]

    def get(self, viewer: Viewer, identity_id: int) -> Identity:
        """``viewer``'s identity ``identity_id``: :class:`NotFound` for one that is not
        theirs (or whose account they may no longer send from), as for one that does not
        exist. What sending calls to refuse an identity the user does not own."""
        with unit_of_work(self._sessions) as s:
            return self._identity(*self._row(s, viewer, identity_id))

    def list(self, viewer: Viewer) -> list[Identity]:
        """``viewer``'s identities, the default first, then by address. Every account they
        may send from has one (made here the first time: :meth:`ensure_account_identities`)."""
        self.ensure_account_identities(viewer)
        with unit_of_work(self._sessions) as s:
            rows = s.execute(
                self._select(viewer).order_by(
                    IdentityRow.is_default.desc(), IdentityRow.address_key, IdentityRow.id
                ),
                viewer_params(viewer),
            ).all()
            return [self._identity(r[0], r[1]) for r in rows]

    def default(self, viewer: Viewer) -> Identity | None:
        """The identity marked default (the first one made, until another is marked)."""
        found = self.list(viewer)
        return found[0] if found and found[0].is_default else None

    def ensure_account_identities(self, viewer: Viewer) -> None:
        """Give ``viewer`` an identity for each account they may send from that has none
        (their own accounts, their teams' inboxes), in one transaction; the first identity a
        user gets is their default. A concurrent caller doing the same is harmless (the
        unique key (owner, address) refuses the second; this one reads again next time)."""
        if viewer.disabled:
            return
        try:
            self._ensure(viewer)
        except StoreError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            # Another request made them meanwhile: they exist now, which is what was wanted.

    def _ensure(self, viewer: Viewer) -> None:
        params = viewer_params(viewer)
        with unit_of_work(self._sessions) as s:
            have = select(IdentityRow.address_key).where(IdentityRow.owner_id == viewer.id)
            missing = s.execute(
                select(AccountRow.id, AccountRow.email, AccountRow.name)
                .where(sendable_accounts_terms(viewer))
                .where(func.lower(AccountRow.email).not_in(have))
                .order_by(AccountRow.id),
                params,
            ).all()
            if not missing:
                return
            has_default = s.scalar(
                select(IdentityRow.id).where(
                    IdentityRow.owner_id == viewer.id, IdentityRow.is_default
                )
            )
            seen: set[str] = set()
            for account_id, email, _name in missing:
                key = email.strip().lower()
                if key in seen:
                    continue
                seen.add(key)
                s.add(
                    IdentityRow(
                        owner_id=viewer.id,
                        kind="account",
                        account_id=account_id,
                        address=email.strip(),
                        address_key=key,
                        display_name=getattr(viewer, "display_name", "") or "",
                        signature="",
                        is_default=has_default is None,
                    )
                )
                has_default = has_default or -1

    # -- writing ---------------------------------------------------------------------------

    def create_smtp(
        self,
        viewer: Viewer,
        *,
        address: str,
        display_name: str,
        smtp: SmtpSettings,
        secret: str,
        signature: str = "",
        make_default: bool = False,
    ) -> Identity:
        """A new outbound-only identity (test its settings first: the API does, with
        :func:`correspond.sync.smtp_check.check_smtp`). 409 for an address the user has."""
        email = check_address(address, field="address")
        row = IdentityRow(
            owner_id=viewer.id,
            kind="smtp",
            address=email,
            address_key=email.lower(),
            display_name=_display_name(display_name),
            smtp_host=smtp.host,
            smtp_port=smtp.port,
            smtp_security=smtp.security,
            smtp_username=smtp.username,
            secret_encrypted=self._secrets.encrypt(secret),
            signature=_signature(signature),
            is_default=False,
        )
        return self._insert(viewer, row, make_default)

    def create_for_account(
        self,
        viewer: Viewer,
        *,
        account_name: str,
        address: str | None,
        display_name: str,
        signature: str = "",
        make_default: bool = False,
    ) -> Identity:
        """An identity sending through account ``account_name`` (one the viewer may send
        from, else :class:`NotFound`): its own address, or an alias it may send as."""
        with unit_of_work(self._sessions) as s:
            account = s.execute(
                select(AccountRow.id, AccountRow.email).where(
                    AccountRow.name == account_name, sendable_accounts_terms(viewer)
                ),
                viewer_params(viewer),
            ).first()
        if account is None:
            raise NotFound(f"no account named {account_name!r} you may send from")
        email = check_address(address or account[1], field="address")
        row = IdentityRow(
            owner_id=viewer.id,
            kind="account",
            account_id=account[0],
            address=email,
            address_key=email.lower(),
            display_name=_display_name(display_name),
            signature=_signature(signature),
            is_default=False,
        )
        return self._insert(viewer, row, make_default)

    def _insert(self, viewer: Viewer, row: IdentityRow, make_default: bool) -> Identity:
        try:
            with unit_of_work(self._sessions) as s:
                has_default = s.scalar(
                    select(IdentityRow.id).where(
                        IdentityRow.owner_id == viewer.id, IdentityRow.is_default
                    )
                )
                if make_default and has_default is not None:
                    s.execute(
                        update(IdentityRow)
                        .where(IdentityRow.owner_id == viewer.id, IdentityRow.is_default)
                        .values(is_default=False)
                    )
                row.is_default = make_default or has_default is None
                s.add(row)
                s.flush()
                new_id = row.id
        except StoreError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            raise Conflict(f"you already have an identity for {row.address}") from exc
        return self.get(viewer, new_id)

    def update(
        self, viewer: Viewer, identity_id: int, changes: IdentityChanges, *, secret: str | None
    ) -> Identity:
        """Apply ``changes`` (and a new ``secret``, kind ``smtp`` only). New SMTP settings
        without a secret drop the stored one: it was entered for the old server."""
        with unit_of_work(self._sessions) as s:
            row, _account = self._row(s, viewer, identity_id)
            if changes.display_name is not None:
                row.display_name = _display_name(changes.display_name)
            if changes.signature is not None:
                row.signature = _signature(changes.signature)
            if (changes.smtp is not None or secret is not None) and row.kind != "smtp":
                raise ConfigError(
                    "an account identity sends with its account's server and password: change "
                    "them on the account"
                )
            if changes.smtp is not None:
                before = (row.smtp_host, row.smtp_port, row.smtp_security, row.smtp_username)
                after = (
                    changes.smtp.host,
                    changes.smtp.port,
                    changes.smtp.security,
                    changes.smtp.username,
                )
                if before != after:
                    row.smtp_host, row.smtp_port, row.smtp_security, row.smtp_username = after
                    if secret is None:
                        row.secret_encrypted = None
            if secret is not None:
                row.secret_encrypted = self._secrets.encrypt(secret)
        return self.get(viewer, identity_id)

    def owner_of(self, identity_id: int) -> int | None:
        """Whose identity this is (None: no such identity). For the operator's command line,
        which then acts as that user through the rule above."""
        with unit_of_work(self._sessions) as s:
            owner = s.scalar(select(IdentityRow.owner_id).where(IdentityRow.id == identity_id))
        return None if owner is None else int(owner)

    def smtp_secret(self, viewer: Viewer, identity_id: int) -> str | None:
        """The decrypted secret of ``viewer``'s SMTP identity (only for handing to its
        server); None when it has none (dropped by a change of server, or kind ``account``:
        the account's secret is read through ``Store.account_secret``)."""
        with unit_of_work(self._sessions) as s:
            row, _ = self._row(s, viewer, identity_id)
            token = row.secret_encrypted if row.kind == "smtp" else None
        return None if token is None else self._secrets.decrypt(bytes(token))

    def set_default(self, viewer: Viewer, identity_id: int) -> Identity:
        """Mark ``identity_id`` the viewer's default, and no other, in one transaction."""
        with unit_of_work(self._sessions) as s:
            self._row(s, viewer, identity_id)
            s.execute(
                update(IdentityRow)
                .where(
                    IdentityRow.owner_id == viewer.id,
                    IdentityRow.is_default,
                    IdentityRow.id != identity_id,
                )
                .values(is_default=False)
            )
            s.flush()
            s.execute(
                update(IdentityRow).where(IdentityRow.id == identity_id).values(is_default=True)
            )
        return self.get(viewer, identity_id)

    def delete(self, viewer: Viewer, identity_id: int) -> None:
        """Remove an identity. An account's own address cannot be removed (every synced
        account can send: remove the account instead); an alias can. When the default goes,
        the oldest remaining identity becomes the default."""
        with unit_of_work(self._sessions) as s:
            row, account = self._row(s, viewer, identity_id)
            if (
                row.kind == "account"
                and account is not None
                and account.email.strip().lower() == row.address_key
            ):
                raise ConfigError(
                    f"{row.address} is the address of account {account.name!r}, which can "
                    "always send; remove the account to stop sending from it"
                )
            was_default = row.is_default
            s.delete(row)
            s.flush()
            if was_default:
                successor = s.scalar(
                    select(IdentityRow.id)
                    .where(IdentityRow.owner_id == viewer.id)
                    .where(identity_terms(viewer))
                    .order_by(IdentityRow.id)
                    .limit(1),
                    viewer_params(viewer),
                )
                if successor is not None:
                    s.execute(
                        update(IdentityRow)
                        .where(IdentityRow.id == successor)
                        .values(is_default=True)
                    )

    def exists_for(self, viewer: Viewer, identity_id: int) -> None:
        """:class:`NotFound` unless ``viewer`` may see and use ``identity_id`` (the check
        ``api.security.authorize`` makes for an ``identity_id`` in a path)."""
        with unit_of_work(self._sessions) as s:
            found = s.scalar(
                select(IdentityRow.id).where(IdentityRow.id == identity_id, identity_terms(viewer)),
                viewer_params(viewer),
            )
        if found is None:
            raise NotFound(f"no identity with id {identity_id}")


# -- Templates -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    id: int
    owner_id: int
    team_id: int | None
    name: str
    subject: str
    text: str | None
    html: str | None
    created_at: datetime
    updated_at: datetime
    #: Whether the viewer it was read for may change it (its owner, or an admin).
    can_edit: bool


@dataclass(frozen=True, slots=True)
class TemplateFields:
    """A template's fields as given (None: unchanged on update; ``team_id`` 0 on update makes
    it personal)."""

    name: str | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    team_id: int | None = None


def _template_name(name: str) -> str:
    name = " ".join(name.split())
    if not name or len(name) > MAX_TEMPLATE_NAME or any(not c.isprintable() for c in name):
        raise ConfigError(f"a template name is 1 to {MAX_TEMPLATE_NAME} printable characters")
    return name


class TemplateStore:
    """Templates in the store's database. Thread-safe: one session per call."""

    def __init__(self, engine: Engine) -> None:
        register_table_modules()
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @staticmethod
    def _template(row: TemplateRow, manage: Any) -> Template:
        return Template(
            id=row.id,
            owner_id=row.owner_id,
            team_id=row.team_id,
            name=row.name,
            subject=row.subject,
            text=row.body_text,
            html=row.body_html,
            created_at=row.created_at,
            updated_at=row.updated_at,
            can_edit=bool(manage),
        )

    def _found(self, s: Session, viewer: Viewer, template_id: int) -> tuple[TemplateRow, bool]:
        terms = template_terms(viewer)
        found = s.execute(
            select(TemplateRow, terms.manage).where(TemplateRow.id == template_id, terms.visible),
            viewer_params(viewer),
        ).first()
        if found is None:
            raise NotFound(f"no template with id {template_id}")
        return found[0], bool(found[1])

    def access(self, viewer: Viewer, template_id: int) -> Access:
        """``viewer``'s access to a template (``manage``: may change it); :class:`NotFound`
        when they may not see it."""
        with unit_of_work(self._sessions) as s:
            _row, manage = self._found(s, viewer, template_id)
        return Access(level="full", manage=manage)

    def get(self, viewer: Viewer, template_id: int) -> Template:
        with unit_of_work(self._sessions) as s:
            return self._template(*self._found(s, viewer, template_id))

    def list(self, viewer: Viewer, *, limit: int = 500) -> list[Template]:
        """The templates ``viewer`` sees (own, shared with their teams; an admin: all), by
        name."""
        terms = template_terms(viewer)
        with unit_of_work(self._sessions) as s:
            rows = s.execute(
                select(TemplateRow, terms.manage)
                .where(terms.visible)
                .order_by(func.lower(TemplateRow.name), TemplateRow.id)
                .limit(limit),
                viewer_params(viewer),
            ).all()
            return [self._template(r[0], r[1]) for r in rows]

    @staticmethod
    def _check_team(s: Session, viewer: Viewer, team_id: int) -> None:
        """A template may be shared only with a team the viewer is in (an admin: any)."""
        if getattr(viewer, "is_admin", False):
            ok = s.scalar(select(TeamRow.id).where(TeamRow.id == team_id))
        else:
            ok = s.scalar(
                select(TeamMemberRow.team_id).where(
                    and_(TeamMemberRow.team_id == team_id, TeamMemberRow.user_id == viewer.id)
                )
            )
        if ok is None:
            raise ConfigError(f"team_id {team_id} is not a team you are in")

    def create(self, viewer: Viewer, fields: TemplateFields) -> Template:
        name = _template_name(fields.name or "")
        check_template(subject=fields.subject, text=fields.text, html=fields.html)
        if fields.text is None and fields.html is None:
            raise ConfigError("a template needs a text or an HTML body")
        with unit_of_work(self._sessions) as s:
            if fields.team_id is not None:
                self._check_team(s, viewer, fields.team_id)
            row = TemplateRow(
                owner_id=viewer.id,
                team_id=fields.team_id,
                name=name,
                subject=fields.subject or "",
                body_text=fields.text,
                body_html=fields.html,
            )
            s.add(row)
            s.flush()
            return self._template(row, True)

    def update(self, viewer: Viewer, template_id: int, fields: TemplateFields) -> Template:
        """Change the fields given (the owner or an admin: else :class:`ConfigError` is not
        reached, the API refuses with 403 first)."""
        check_template(subject=fields.subject, text=fields.text, html=fields.html)
        with unit_of_work(self._sessions) as s:
            row, manage = self._found(s, viewer, template_id)
            if not manage:
                raise ConfigError("only the template's owner or an admin may change it")
            if fields.name is not None:
                row.name = _template_name(fields.name)
            if fields.subject is not None:
                row.subject = fields.subject
            if fields.text is not None:
                row.body_text = fields.text or None
            if fields.html is not None:
                row.body_html = fields.html or None
            if fields.team_id is not None:
                if fields.team_id == 0:
                    row.team_id = None
                else:
                    self._check_team(s, viewer, fields.team_id)
                    row.team_id = fields.team_id
            if row.body_text is None and row.body_html is None:
                raise ConfigError("a template needs a text or an HTML body")
            s.flush()
            return self._template(row, True)

    def delete(self, viewer: Viewer, template_id: int) -> None:
        with unit_of_work(self._sessions) as s:
            row, manage = self._found(s, viewer, template_id)
            if not manage:
                raise ConfigError("only the template's owner or an admin may delete it")
            s.delete(row)
