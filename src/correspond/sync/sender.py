"""Sending: the applier of ``send`` outbox rows, exactly once (DESIGN.md invariant 4).

Run by the account's syncer (the lease holder) on its command connection, like the other outbox
rows (``sync.outbox`` hands ``send`` rows here). One row goes through its stages
(``store.sends``), each recorded before the next step is taken:

1. ``queued`` → ``smtp`` (with ``attempt_at``), then the SMTP submission (``smtp.client``);
2. the server's 250 → ``accepted``;
3. the Sent copy filed: nothing where the server files its own (``server``), else APPEND with
   ``\\Seen`` to the Sent-role folder (``append``); on an unknown server the first send looks in
   Sent for ``send_probe_seconds`` and records the finding on the account (``probe``); the
   receipt copy (``rules.send``) is removed from the mailbox; → ``sent`` (the row applied), or
   ``filed`` (shown as sent) while the receipt has not arrived yet: the row is looked at again
   until it has been removed, or ``send_receipt_wait_seconds`` have passed.

**Outbound-only identities** (payload ``transport: identity``: an SMTP identity with no
mailbox; the row rides on the user's home account's outbox, whose session sends it): there is
no Sent folder to file in or look in, and no receipt (the envelope names only the recipients).
What remains is the order of the records: ``smtp`` before connecting, ``data`` (awaited through
``submit``'s ``before_data``) once every recipient is accepted and just before DATA, then
``accepted`` and ``sent``. A row found at ``smtp`` never reached DATA, so the server cannot have
the message: it is sent again. A row found at ``data``, or a connection lost during DATA with
no reply, may or may not have gone: it is never sent again by itself; it fails with status
``unknown`` and the user decides (``POST /outbox/{id}/mark-sent``, or ``/resend``: the same
bytes and Message-ID, which a recipient's client shows once if both arrive). A reply to the
end of DATA (4xx, 5xx) is an answer: retried or failed as below.

A row found at ``smtp`` or ``accepted`` was interrupted (the process died, or the connection was
cut without a reply): before anything is sent again the mailbox is asked
(:func:`correspond.rules.send.after_interruption`): the copy in Sent or the receipt means the
server took it (file the copy, never send again); neither, after ``send_receipt_wait_seconds``,
means it did not (send again). An SMTP reply of 4xx (or a lost connection before DATA) is
retried with jittered backoff; 5xx fails the row with the server's words, shown on the message.

Test hook (crash tests only): ``CORRESPOND_TEST_SEND_PAUSE=<stage>`` with
``CORRESPOND_TEST_SEND_PAUSE_FILE=<path>`` makes the sender write ``path`` and stop for good at
``before_smtp`` (stage ``smtp`` recorded, nothing sent), ``data`` (midway through the message
in DATA) or ``after_250`` (the server took it, nothing recorded yet), so a test can SIGKILL it
there. Unset, the hook costs one dictionary lookup per send.
"""

from __future__ import annotations

import asyncio
import os
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from correspond.errors import Conflict, ImapCommandError, NotFound, SmtpError
from correspond.imap.client import ImapClient
from correspond.imap.protocol import Atom
from correspond.rules.send import (
    after_interruption,
    probe_finding,
    sent_copy_policy,
    strip_bcc,
)
from correspond.rules.sync_plan import backoff_delay
from correspond.settings import Settings
from correspond.smtp.client import SmtpEndpoint, submit
from correspond.store.blobs import BlobStore
from correspond.store.compose import IdentityStore
from correspond.store.outbox import OutboxAction, OutboxStore
from correspond.store.records import Account
from correspond.store.repository import Store
from correspond.store.sends import SendStore
from correspond.store.tables import utcnow
from correspond.store.users import UserStore
from correspond.sync.threads import in_thread

__all__ = ["PAUSE_ENV", "PAUSE_FILE_ENV", "UNKNOWN_FATE", "SendApplier", "smtp_endpoint"]

PAUSE_ENV = "CORRESPOND_TEST_SEND_PAUSE"
PAUSE_FILE_ENV = "CORRESPOND_TEST_SEND_PAUSE_FILE"
#: Attempts after which a send that keeps failing transiently is failed for good.
MAX_SEND_ATTEMPTS = 10
#: How often a send looks for its receipt again (interrupted, or filed before it arrived).
RECEIPT_RECHECK_SECONDS = 1.0
#: The first look for a receipt that had not arrived when the Sent copy was filed.
RECEIPT_FIRST_LOOK_SECONDS = 0.2
#: Shown on an outbound-only identity's send cut during DATA (status ``unknown``).
UNKNOWN_FATE = (
    "interrupted while the server was receiving the message: whether it went cannot be known "
    "(this identity has no mailbox to look in); check with a recipient, then mark it sent or "
    "send it again"
)


def _pause_requested(stage: str) -> bool:
    return os.environ.get(PAUSE_ENV) == stage


def _announce_pause() -> None:
    path = os.environ.get(PAUSE_FILE_ENV)
    if path:
        Path(path).write_text(str(os.getpid()))


async def _pause(stage: str) -> None:
    """The test hook (module docstring): at ``stage``, say so and wait to be killed."""
    if _pause_requested(stage):
        _announce_pause()
        await asyncio.Event().wait()


def smtp_endpoint(account: Account) -> SmtpEndpoint:
    """Where the account submits mail: its SMTP settings (the host defaults to its IMAP
    host), with the same TLS trust as its IMAP connection."""
    return SmtpEndpoint(
        host=account.smtp_host or account.imap_host,
        port=account.smtp_port,
        security=account.smtp_security,
        allow_plaintext=account.allow_plaintext,
        trusted_cert_pem=account.trusted_cert_pem,
    )


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class SendApplier:
    """Applies ``send`` rows (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        outbox: OutboxStore,
        blobs: BlobStore,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        backoff_base: float = 2.0,
        backoff_cap: float = 300.0,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.sends = SendStore(store.engine)
        self.blobs = blobs
        self.settings = settings
        self.rng = rng or random.Random()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap

    async def apply(self, client: ImapClient, account: Account, row: OutboxAction) -> None:
        """Take one send row as far as it goes now. IMAP errors are raised (the caller's
        session handles them); SMTP errors are recorded on the row."""
        payload = row.payload
        stage = str(payload.get("stage", "queued"))
        mid = str(payload.get("message_id_header") or "")
        if not mid:
            await in_thread(self.outbox.mark_failed, row.id, "the send carries no Message-ID")
            return
        if payload.get("transport") == "identity":
            await self._apply_identity(row)
            return
        if stage == "filed":
            await self._settle_receipt(client, account, row)
            return
        recorded = await in_thread(self.sends.sent_copy, account.id)
        policy = sent_copy_policy(account.preset, recorded)
        if stage in ("smtp", "accepted"):
            in_sent = await self._find(client, account, "sent", mid)
            receipt = stage == "accepted" or (
                bool(payload.get("receipt")) and await self._find(client, account, "inbox", mid)
            )
            started = _when(payload.get("attempt_at")) or row.created_at
            decision = after_interruption(
                copy_in_sent=in_sent,
                receipt_found=receipt,
                seconds_since_attempt=(utcnow() - started).total_seconds(),
                receipt_wait=self.settings.send_receipt_wait_seconds,
            )
            if decision == "sent":
                await self._file(client, account, row.id, payload, policy, in_sent=in_sent)
                return
            if decision == "wait":
                when = utcnow() + timedelta(seconds=RECEIPT_RECHECK_SECONDS)
                note = "interrupted while sending: looking for the server's receipt first"
                await in_thread(self.sends.set_due, row.id, when, note)
                return
        await self._submit(client, account, row, policy)

    # -- SMTP ------------------------------------------------------------------------------------

    async def _submit(
        self, client: ImapClient, account: Account, row: OutboxAction, policy: str
    ) -> None:
        payload = row.payload
        try:
            payload = await in_thread(
                lambda: self.sends.update_payload(
                    row.id, stage="smtp", attempt_at=utcnow().isoformat()
                )
            )
        except Conflict:
            return  # cancelled meanwhile: nothing to send
        await _pause("before_smtp")
        try:
            raw = await in_thread(self.blobs.get, str(payload["blob_key"]))
            secret = await in_thread(self.store.account_secret, account.name, for_account=account)
        except NotFound as exc:
            await in_thread(self.outbox.mark_failed, row.id, f"the message is gone: {exc}")
            return
        hold = _announce_pause if _pause_requested("data") else None
        try:
            result = await submit(
                smtp_endpoint(account),
                username=account.username,
                secret=secret,
                envelope_from=str(payload["envelope_from"]),
                recipients=[str(r) for r in payload["recipients"]],
                data=strip_bcc(raw),
                hold_data=hold,
            )
        except SmtpError as exc:
            await self._smtp_failed(row, exc)
            return
        await _pause("after_250")
        payload = await in_thread(
            lambda: self.sends.update_payload(
                row.id, stage="accepted", smtp_reply=f"{result.code} {result.text}"[:500]
            )
        )
        await self._file(client, account, row.id, payload, policy, in_sent=False)

    async def _apply_identity(self, row: OutboxAction) -> None:
        """An outbound-only identity's send (see the module docstring)."""
        stage = str(row.payload.get("stage", "queued"))
        if stage == "accepted":
            await in_thread(lambda: self.sends.mark_sent(row.id, sent_copy="none"))
            return
        if stage == "data":
            await in_thread(self.outbox.mark_failed, row.id, UNKNOWN_FATE)
            return
        try:
            payload = await in_thread(
                lambda: self.sends.update_payload(
                    row.id, stage="smtp", attempt_at=utcnow().isoformat()
                )
            )
        except Conflict:
            return  # cancelled meanwhile: nothing to send
        await _pause("before_smtp")
        identity_id = int(payload.get("identity_id") or 0)
        try:
            identity, secret = await in_thread(self._identity, row.user_id, identity_id)
            raw = await in_thread(self.blobs.get, str(payload["blob_key"]))
        except NotFound as exc:
            await in_thread(self.outbox.mark_failed, row.id, f"not sent: {exc}")
            return

        async def entering_data() -> None:
            await in_thread(lambda: self.sends.update_payload(row.id, stage="data"))

        hold = _announce_pause if _pause_requested("data") else None
        try:
            result = await submit(
                SmtpEndpoint(
                    host=str(identity.smtp_host),
                    port=int(identity.smtp_port or 587),
                    security=str(identity.smtp_security),
                ),
                username=identity.smtp_username or identity.address,
                secret=secret,
                envelope_from=str(payload["envelope_from"]),
                recipients=[str(r) for r in payload["recipients"]],
                data=strip_bcc(raw),
                hold_data=hold,
                before_data=entering_data,
            )
        except SmtpError as exc:
            if exc.maybe_taken:
                reason = f"{UNKNOWN_FATE} ({exc})"
                await in_thread(self.outbox.mark_failed, row.id, reason)
                return
            # An answer (or no DATA at all): the server does not have it.
            await in_thread(lambda: self.sends.update_payload(row.id, stage="queued"))
            await self._smtp_failed(row, exc)
            return
        await _pause("after_250")
        reply = f"{result.code} {result.text}"[:500]
        await in_thread(
            lambda: self.sends.update_payload(row.id, stage="accepted", smtp_reply=reply)
        )
        await in_thread(lambda: self.sends.mark_sent(row.id, sent_copy="none"))

    def _identity(self, user_id: int | None, identity_id: int) -> tuple[Any, str]:
        """The identity a send goes out as, and its secret, read as its owner (NotFound when
        it is gone, is no longer theirs to use, or has no password)."""
        user = UserStore(self.store.engine).get_user_by_id(user_id) if user_id else None
        if user is None:
            raise NotFound("the user who sent it is gone")
        identities = IdentityStore(self.store.engine, self.store.secrets)
        identity = identities.get(user, identity_id)
        secret = identities.smtp_secret(user, identity_id)
        if secret is None:
            raise NotFound(
                f"the identity {identity.address} has no password (its server was changed)"
            )
        return identity, secret

    async def _smtp_failed(self, row: OutboxAction, exc: SmtpError) -> None:
        attempts = row.attempts + 1
        if not exc.transient or attempts >= MAX_SEND_ATTEMPTS:
            reason = str(exc) if not exc.transient else f"gave up after {attempts} tries: {exc}"
            await in_thread(self.outbox.mark_failed, row.id, reason)
            return
        if not exc.maybe_taken:
            # The server answered (4xx), or the connection failed before the message was
            # sent: it did not take it, so the next attempt need not look for it first (and
            # the user may still take it back). Otherwise the row stays at ``smtp``.
            await in_thread(lambda: self.sends.update_payload(row.id, stage="queued"))
        # Half jitter: a retry never comes straight back at a server that just failed.
        delay = backoff_delay(
            attempts, rng=self.rng, base=self.backoff_base, cap=self.backoff_cap, floor=0.5
        )
        await in_thread(
            self.outbox.mark_retry, row.id, str(exc), utcnow() + timedelta(seconds=delay)
        )

    # -- the Sent copy -------------------------------------------------------------------------

    async def _file(
        self,
        client: ImapClient,
        account: Account,
        row_id: int,
        payload: dict[str, Any],
        policy: str,
        *,
        in_sent: bool,
    ) -> None:
        """After the server took the message: exactly one copy in Sent, the receipt gone,
        the row applied."""
        mid = str(payload["message_id_header"])
        folders = await in_thread(self.sends.folders_by_role, account.id, ("sent", "inbox"))
        sent = folders.get("sent")
        if policy == "probe" and sent is not None:
            in_sent = in_sent or await self._look_for_server_copy(client, sent, mid)
            policy = probe_finding(in_sent)
            await in_thread(self.sends.set_sent_copy, account.id, policy)
        if policy != "server" and not in_sent and sent is not None:
            raw = await in_thread(self.blobs.get, str(payload["blob_key"]))
            try:
                await client.append(sent, raw, flags=("\\Seen",))
            except ImapCommandError as exc:
                # Sent, but not filed: say so on the row; the message went.
                error = str(exc)[:500]
                await in_thread(lambda: self.sends.mark_sent(row_id, sent_copy_error=error))
                return
        if payload.get("receipt") and not await self._remove_receipt(
            client, folders.get("inbox"), mid
        ):
            # Not delivered yet: the row stays (``filed``, shown as sent) until the receipt is
            # there to remove, or it has had ``send_receipt_wait_seconds``.
            await in_thread(
                lambda: self.sends.update_payload(
                    row_id, stage="filed", sent_copy=policy, filed_at=utcnow().isoformat()
                )
            )
            when = utcnow() + timedelta(seconds=RECEIPT_FIRST_LOOK_SECONDS)
            await in_thread(self.sends.set_due, row_id, when, None)
            return
        await in_thread(lambda: self.sends.mark_sent(row_id, sent_copy=policy))

    async def _settle_receipt(
        self, client: ImapClient, account: Account, row: OutboxAction
    ) -> None:
        """A sent and filed message whose receipt had not arrived: remove it now if it has,
        else look again later, up to ``send_receipt_wait_seconds`` after filing."""
        mid = str(row.payload["message_id_header"])
        folders = await in_thread(self.sends.folders_by_role, account.id, ("inbox",))
        if await self._remove_receipt(client, folders.get("inbox"), mid):
            await in_thread(self.sends.mark_sent, row.id)
            return
        filed = _when(row.payload.get("filed_at")) or row.created_at
        if (utcnow() - filed).total_seconds() >= self.settings.send_receipt_wait_seconds:
            await in_thread(lambda: self.sends.mark_sent(row.id, receipt="not seen"))
            return
        when = utcnow() + timedelta(seconds=RECEIPT_RECHECK_SECONDS)
        await in_thread(self.sends.set_due, row.id, when, None)

    async def _look_for_server_copy(self, client: ImapClient, sent: bytes, mid: str) -> bool:
        """Whether the server filed a copy in Sent within ``send_probe_seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.send_probe_seconds
        while True:
            if await self._search(client, sent, mid, write=False):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.25)

    async def _find(self, client: ImapClient, account: Account, role: str, mid: str) -> bool:
        folders = await in_thread(self.sends.folders_by_role, account.id, (role,))
        name = folders.get(role)
        return name is not None and bool(await self._search(client, name, mid, write=False))

    async def _search(self, client: ImapClient, name: bytes, mid: str, *, write: bool) -> list[int]:
        """The UIDs in folder ``name`` whose Message-ID is ``mid``."""
        current = client.selected
        if current is None or current.name_raw != name or (write and current.read_only):
            if write:
                await client.select(name)
            else:
                await client.examine(name)
        return await client.uid_search([Atom("HEADER"), Atom("Message-ID"), f"<{mid}>"])

    async def _remove_receipt(self, client: ImapClient, inbox: bytes | None, mid: str) -> bool:
        """Remove the receipt copy from INBOX (UID EXPUNGE of its UIDs only, never a bare
        EXPUNGE); False when it is not there (yet). Without INBOX or UIDPLUS there is nothing
        safe to do: True."""
        if inbox is None or "UIDPLUS" not in client.capabilities:
            return True
        uids = await self._search(client, inbox, mid, write=True)
        if not uids:
            return False
        found = ",".join(str(u) for u in uids)
        await client.uid_store(found, "+FLAGS.SILENT", ["\\Deleted"])
        await client.uid_expunge(found)
        return True
