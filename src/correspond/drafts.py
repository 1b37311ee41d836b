"""Drafts: the composer's state saved in the CRM, and sending one (the API and CLI call this).

A draft is its owner's alone (``store.drafts``). What it names is checked when it is saved, as
the user sees it then: the identity must be theirs, the account one they see, the message it
answers one they see in full, the template one they may use; recipients and bodies are kept
as typed (a draft may be unfinished: they are checked when it is sent).

:meth:`DraftService.send` queues a draft through the same path as ``POST /messages`` and the
reply routes (:class:`correspond.outgoing.SendService`): a new message as its identity (an
outbound-only one too) or from its account, or a reply, reply-all or forward of the message it
answers (as its identity when it names one). The
draft is claimed first (a second send of it is refused meanwhile), marked sent in the very
transaction that queues its send (``SendStore.queue`` with the draft's id: a crash leaves
either both or neither), and released when the send is refused (a bad address: nothing was
queued, the draft stays to be fixed). Sending a draft that was sent already (a retry after a
lost answer or a crash) answers with its first send: one message, however often it is sent.

Drafts are not mirrored to the mailbox's Drafts folder (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from correspond.errors import ConfigError, Conflict, NotFound
from correspond.mail.outgoing import OutgoingAttachment
from correspond.outgoing import Compose, ReplyMode, SendService, parse_recipients
from correspond.store.compose import IdentityStore, TemplateStore
from correspond.store.drafts import Draft, DraftFields, DraftFile, DraftStore
from correspond.store.repository import Store
from correspond.store.sends import SendRecord
from correspond.store.users import User, UserStore

__all__ = ["DraftService"]


class DraftService:
    """Saving, reading and sending drafts (see the module docstring). Blocking."""

    def __init__(self, store: Store, sending: SendService, *, max_drafts: int = 1000) -> None:
        self.store = store
        self.sending = sending
        self.drafts = DraftStore(
            store.engine, max_bytes=sending.settings.send_max_bytes, max_drafts=max_drafts
        )
        self.users = UserStore(store.engine)
        self.identities = IdentityStore(store.engine, store.secrets)
        self.templates = TemplateStore(store.engine)

    # -- saving ----------------------------------------------------------------------------------

    def account_id(self, user: User, name: str) -> int:
        """The id of account ``name`` if ``user`` sees it (NotFound otherwise)."""
        self.users.access_to_account(user, name)
        return self.store.get_account(name).id

    def _check_refs(self, user: User, fields: DraftFields) -> None:
        """What the draft names is the user's to use (NotFound, as for what does not exist)."""
        if fields.identity_id is not None:
            self.identities.exists_for(user, fields.identity_id)
        if fields.template_id is not None:
            self.templates.access(user, fields.template_id)
        if (
            fields.in_reply_to_id is not None
            and not self.users.access_to_message(user, fields.in_reply_to_id).full
        ):
            raise NotFound(f"no message with id {fields.in_reply_to_id}")
        for ref in fields.attachments:
            found = self.sending.sends.attachment(ref.attachment_id)
            if found is None or not self.users.access_to_message(user, found[0]).full:
                raise NotFound(f"no attachment with id {ref.attachment_id}")

    def create(self, user: User, fields: DraftFields, files: Sequence[DraftFile]) -> Draft:
        self._check_refs(user, fields)
        return self.drafts.create(user, fields, files)

    def replace(
        self,
        user: User,
        draft_id: int,
        fields: DraftFields,
        files: Sequence[DraftFile],
        *,
        keep_file_ids: Sequence[int] | None = None,
    ) -> Draft:
        self.drafts.exists_for(user, draft_id)
        self._check_refs(user, fields)
        return self.drafts.replace(user, draft_id, fields, files, keep_file_ids=keep_file_ids)

    def get(self, user: User, draft_id: int) -> Draft:
        return self.drafts.get(user, draft_id)

    def list(self, user: User, *, limit: int = 100, before_id: int | None = None) -> list[Draft]:
        return self.drafts.list(user, limit=limit, before_id=before_id)

    def delete(self, user: User, draft_id: int) -> None:
        self.drafts.delete(user, draft_id)

    # -- sending ---------------------------------------------------------------------------------

    def send(self, user: User, draft_id: int) -> SendRecord:
        """Queue the draft (see the module docstring); the draft is gone once it is queued, and
        sending it again answers with that send."""
        draft = self.drafts.claim(user, draft_id)
        if draft.sent_outbox_id is not None:
            try:
                return self.sending.sends.get(draft.sent_outbox_id)
            except NotFound:  # its outbox row is gone (pruned)
                raise Conflict("this draft was sent already") from None
        try:
            return self._queue(user, draft)
        except BaseException:
            self.drafts.release(user, draft_id)
            raise

    def _account_name(self, user: User, fields: DraftFields) -> str | None:
        """The account a draft names (None: it names an identity, or nothing)."""
        if fields.account_id is not None:
            return self.store.get_account_by_id(fields.account_id).name
        if fields.identity_id is None:
            raise ConfigError("the draft says nothing to send from: give an identity or an account")
        return None

    def _queue(self, user: User, draft: Draft) -> SendRecord:
        fields = draft.fields
        uploads = tuple(
            OutgoingAttachment(
                filename=f.filename,
                content_type=f.content_type,
                content=f.content or b"",
                content_id=f.content_id,
            )
            for f in draft.files
        )
        stored = self.sending.load_attachments(
            user, [(a.attachment_id, a.content_id) for a in fields.attachments]
        )
        compose = Compose(
            to=parse_recipients(fields.to),
            cc=parse_recipients(fields.cc),
            bcc=parse_recipients(fields.bcc),
            subject=fields.subject,
            text=fields.text,
            html=fields.html,
            attachments=uploads + stored,
        )
        if fields.in_reply_to_id is not None:
            mode: ReplyMode = fields.reply_mode or "reply"  # type: ignore[assignment]
            return self.sending.respond(
                user,
                fields.in_reply_to_id,
                mode,
                compose,
                identity_id=fields.identity_id,
                draft_id=draft.id,
            )
        # As the identity (an outbound-only one too: SendService.sender), else the account.
        account = None if fields.identity_id is not None else self._account_name(user, fields)
        return self.sending.send_new(
            user, account, compose, identity_id=fields.identity_id, draft_id=draft.id
        )
