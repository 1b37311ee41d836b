"""Composing, for the API and the CLI: identities saved only once their SMTP settings work,
templates rendered with the records a person chose, and the composer's defaults.

Sending itself (the outbox, SMTP, the copy in Sent) is another module's: it takes a
:class:`correspond.mail.compose.Draft`, the identity (:meth:`ComposeService.identity_for`,
refused unless the user owns it) and builds the message with
:func:`correspond.mail.compose.build_message`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from correspond.errors import ConfigError, NotFound
from correspond.mail.compose import DEFAULT_SIZE_LIMIT, Address
from correspond.mail.merge import RenderedTemplate, merge_values, render_template
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.compose import (
    Identity,
    IdentityChanges,
    IdentityStore,
    SmtpSettings,
    TemplateStore,
    check_smtp_settings,
)
from correspond.store.crm import Company, Contact, CrmStore, Deal
from correspond.store.visibility import Viewer
from correspond.sync.smtp_check import SmtpReport, check_smtp

__all__ = ["ComposeService", "IdentityRefused", "RecordMissing", "SmtpCheck"]

_R = TypeVar("_R")

#: How an SMTP identity's settings are tested (the API and the CLI use :func:`check_smtp`).
SmtpCheck = Callable[[SmtpSettings, str], Awaitable[SmtpReport]]


class IdentityRefused(ConfigError):
    """The SMTP test failed: nothing was saved. ``report`` says why."""

    def __init__(self, report: SmtpReport) -> None:
        super().__init__(report.message)
        self.report = report


class RecordMissing(ConfigError):
    """A record a render names does not exist; ``field`` is the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class ComposeService:
    """Identities, templates and the composer's defaults over one store."""

    store: Store
    settings: Settings
    check: SmtpCheck | None = None

    def __post_init__(self) -> None:
        self.identities = IdentityStore(self.store.engine, self.store.secrets)
        self.templates = TemplateStore(self.store.engine)
        self.crm = CrmStore(self.store.engine)
        if self.check is None:
            self.check = self._check_smtp

    async def _check_smtp(self, smtp: SmtpSettings, password: str) -> SmtpReport:
        return await check_smtp(
            smtp.host,
            smtp.port,
            smtp.security,
            smtp.username,
            password,
            timeout=self.settings.imap_connect_timeout,
            deadline=self.settings.connection_test_timeout,
        )

    async def _tested(self, smtp: SmtpSettings, password: str) -> None:
        assert self.check is not None
        report = await self.check(smtp, password)
        if not report.ok:
            raise IdentityRefused(report)

    # -- identities ------------------------------------------------------------------------

    async def create_smtp_identity(
        self,
        user: Viewer,
        *,
        address: str,
        display_name: str,
        host: str,
        port: int | None,
        security: str,
        username: str | None,
        password: str,
        signature: str = "",
        make_default: bool = False,
    ) -> Identity:
        """Test the settings (EHLO, TLS, AUTH), then save; nothing is saved when the test
        fails (:class:`IdentityRefused` with the test's sentence)."""
        smtp = check_smtp_settings(host, port, security, username or address)
        await self._tested(smtp, password)
        return self.identities.create_smtp(
            user,
            address=address,
            display_name=display_name,
            smtp=smtp,
            secret=password,
            signature=signature,
            make_default=make_default,
        )

    async def update_identity(
        self,
        user: Viewer,
        identity_id: int,
        *,
        display_name: str | None = None,
        signature: str | None = None,
        host: str | None = None,
        port: int | None = None,
        security: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> Identity:
        """Change an identity. New SMTP settings with a password (given, or the stored one
        when only the password is new) are tested first; new settings without a password
        drop the stored one (a secret only goes where it was entered for)."""
        current = self.identities.get(user, identity_id)
        smtp: SmtpSettings | None = None
        if any(v is not None for v in (host, port, security, username)):
            if current.kind != "smtp":
                raise ConfigError(
                    "an account identity sends with its account's server: change it on the account"
                )
            new_security = security or current.smtp_security or "starttls"
            new_port = port
            if new_port is None and security is None:
                new_port = current.smtp_port
            smtp = check_smtp_settings(
                host or current.smtp_host or "",
                new_port,
                new_security,
                username or current.smtp_username or current.address,
            )
        if password is not None:
            if current.kind != "smtp":
                raise ConfigError(
                    "an account identity sends with its account's password: change it on the "
                    "account"
                )
            target = smtp or check_smtp_settings(
                current.smtp_host or "",
                current.smtp_port,
                current.smtp_security or "starttls",
                current.smtp_username or current.address,
            )
            await self._tested(target, password)
        return self.identities.update(
            user,
            identity_id,
            IdentityChanges(display_name=display_name, signature=signature, smtp=smtp),
            secret=password,
        )

    def identity_for(self, user: Viewer, identity_id: int | None) -> Identity:
        """The identity to send as: ``identity_id`` when the user may use it (else
        :class:`NotFound`: another user's identity is refused as if it did not exist), or
        the user's default. :class:`ConfigError` when they have none."""
        if identity_id is not None:
            return self.identities.get(user, identity_id)
        found = self.identities.default(user)
        if found is None:
            raise ConfigError(
                "you have no identity to send from: add an account or an SMTP identity"
            )
        return found

    def own_addresses(self, user: Viewer) -> list[str]:
        """Every address the user sends as (reply-all leaves them all out)."""
        return [i.address for i in self.identities.list(user)]

    @staticmethod
    def sender_of(identity: Identity) -> Address:
        """The From of a message sent as ``identity``."""
        return Address.of(identity.address, identity.display_name, field="from")

    def size_limit(self) -> int:
        return min(DEFAULT_SIZE_LIMIT, self.settings.max_message_bytes) or DEFAULT_SIZE_LIMIT

    # -- templates -------------------------------------------------------------------------

    def _record(self, field: str, read: Callable[[], _R]) -> _R:
        try:
            return read()
        except NotFound as exc:
            raise RecordMissing(field, str(exc)) from exc

    def render(
        self,
        user: Viewer,
        template_id: int,
        *,
        contact_id: int | None = None,
        company_id: int | None = None,
        deal_id: int | None = None,
        identity_id: int | None = None,
        user_name: str = "",
        user_email: str = "",
    ) -> RenderedTemplate:
        """The template filled with the chosen records' fields. The company defaults to the
        deal's, else the contact's; the contact to the deal's first one. Raises
        ``MissingMergeFields`` naming every field without a value (nothing is blanked)."""
        template = self.templates.get(user, template_id)
        deal: Deal | None = None
        contact: Contact | None = None
        company: Company | None = None
        if deal_id is not None:
            deal = self._record("deal_id", partial(self.crm.get_deal, deal_id))
            if contact_id is None and deal.contact_ids:
                contact_id = deal.contact_ids[0]
        if contact_id is not None:
            contact = self._record("contact_id", partial(self.crm.get_contact, contact_id))
        if company_id is None:
            company_id = (deal.company_id if deal else None) or (
                contact.company_id if contact else None
            )
        if company_id is not None:
            company = self._record("company_id", partial(self.crm.get_company, company_id))
        identity: Identity | None
        try:
            identity = self.identity_for(user, identity_id)
        except ConfigError:
            identity = None
        except NotFound as exc:
            raise RecordMissing("identity_id", str(exc)) from exc
        values = merge_values(
            contact_name=contact.name if contact else None,
            contact_email=contact.emails[0] if contact and contact.emails else None,
            company_name=company.name if company else None,
            company_domain=company.domains[0] if company and company.domains else None,
            deal_name=deal.name if deal else None,
            deal_status=deal.status if deal else None,
            user_name=user_name,
            user_email=user_email,
            signature=identity.signature if identity is not None else None,
            sender_name=identity.display_name if identity is not None else None,
            sender_email=identity.address if identity is not None else None,
        )
        return render_template(template.subject, template.text, template.html, values)
