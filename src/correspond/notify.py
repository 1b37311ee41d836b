"""Notifications and webhooks at run time: the fan-out loop, live event streams, the sender.

Runs in every API process (``create_app`` starts it with the app), beside or apart from the
sync worker:

- :class:`NotificationHub` wakes on PostgreSQL NOTIFY (``store.wakeups``; the ingest sends
  one per stored batch) or every ``notify_poll_seconds`` on SQLite, runs the fan-out when new
  messages exist (``store.notifications``; again every ``notify_rescan_seconds`` while ids wait
  to settle), announces account state changes to webhooks, and pushes the new notifications of
  the users who have a stream open, with one query for all of them.
- A stream (:class:`Stream`) is a bounded queue: a client that does not keep up is dropped
  (it reconnects with ``Last-Event-ID`` and loses nothing), never buffered without end. At most
  ``notify_max_streams_per_user`` per user and ``notify_max_streams`` per process.
- :class:`WebhookSender` posts due deliveries (``store.webhooks``), signed per Standard
  Webhooks, to a checked address of the URL's host (resolved once, every address checked, the
  connection made to that IP: no DNS rebinding), no redirects, with timeouts and a cap on the
  response read; failures are retried with jittered exponential backoff for
  ``webhook_retry_for_seconds`` (24 h), then the delivery is ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine

from correspond import __version__
from correspond.rules.webhooks import (
    UnsafeWebhookUrl,
    address_is_internal,
    check_webhook_url,
    sign,
)
from correspond.settings import Settings
from correspond.store.notifications import Notification, NotificationStore
from correspond.store.tables import utcnow
from correspond.store.wakeups import listen_for_wakeups
from correspond.store.webhooks import DueDelivery, WebhookStore
from correspond.waiting import wait_set

__all__ = [
    "DeliveryOutcome",
    "NotificationHub",
    "Stream",
    "TooManyStreams",
    "WebhookSender",
    "retry_delay",
]

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]


class TooManyStreams(Exception):
    """The user (or this process) has as many event streams open as allowed."""


@dataclass(eq=False)
class Stream:
    """One open event stream of one user."""

    user_id: int
    is_admin: bool
    after: int  # notifications up to this id are not pushed (sent already, or before it opened)
    queue: asyncio.Queue[Notification] = field(repr=False)
    dropped: bool = False

    def offer(self, item: Notification) -> None:
        # Whether the user may still see the account was asked of the rule by the query
        # that read ``item`` (NotificationStore.after).
        if self.dropped or item.id <= self.after or item.user_id != self.user_id:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped = True  # a slow client: dropped, it resumes with Last-Event-ID
            log.info("dropped a slow notification stream of user %s", self.user_id)


class NotificationHub:
    """The fan-out loop and the registry of open streams of one process."""

    def __init__(
        self,
        notes: NotificationStore,
        webhooks: WebhookStore,
        settings: Settings,
        *,
        postgres: bool,
        engine: Engine | None = None,
        on_events: Callable[[], None] | None = None,
    ) -> None:
        self.notes = notes
        self.webhooks = webhooks
        self.settings = settings
        self._postgres = postgres
        self._engine = engine
        self._on_events = on_events or (lambda: None)
        self._streams: dict[int, set[Stream]] = {}
        # One (loop, event) per running loop: tests run an app's lifespan once per client.
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cursor = 0
        self._newest_message = -1
        self._last_rescan = 0.0

    # -- streams ---------------------------------------------------------------------------------

    def stream_count(self) -> int:
        return sum(len(v) for v in self._streams.values())

    def open(self, user_id: int, is_admin: bool, after: int) -> Stream:
        """Register a stream that gets the user's notifications above ``after``."""
        mine = self._streams.setdefault(user_id, set())
        if len(mine) >= self.settings.notify_max_streams_per_user:
            raise TooManyStreams("too many event streams open for this user")
        if self.stream_count() >= self.settings.notify_max_streams:
            raise TooManyStreams("too many event streams open on this server")
        if self.stream_count() == 0:
            self._cursor = max(self._cursor, after)
        else:
            self._cursor = min(self._cursor, after)
        stream = Stream(user_id, is_admin, after, asyncio.Queue(self.settings.notify_stream_queue))
        mine.add(stream)
        self.wake()
        return stream

    def close(self, stream: Stream) -> None:
        mine = self._streams.get(stream.user_id)
        if mine is not None:
            mine.discard(stream)
            if not mine:
                del self._streams[stream.user_id]

    # -- the loop --------------------------------------------------------------------------------

    def wake(self) -> None:
        """Run a pass soon (thread-safe)."""
        for loop, event in list(self._wakers):
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    async def run(self) -> None:
        """Until cancelled."""
        waker = (asyncio.get_running_loop(), asyncio.Event())
        self._wakers.append(waker)
        try:
            await self._run(waker[1])
        finally:
            self._wakers.remove(waker)

    async def _run(self, wake: asyncio.Event) -> None:
        self._cursor = await asyncio.to_thread(self.notes.latest_id)
        listener: asyncio.Task[None] | None = None
        if self._postgres and self._engine is not None:
            listener = asyncio.create_task(listen_for_wakeups(self._engine, self.wake))
        # PostgreSQL wakes us; the interval is only a safety net there.
        interval = 1.0 if listener is not None else self.settings.notify_poll_seconds
        try:
            while True:
                await wait_set(wake, interval)
                wake.clear()
                try:
                    await self.run_pass()
                except Exception as exc:  # a database hiccup: the next pass tries again
                    log.warning("notification pass failed: %s", type(exc).__name__)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def run_pass(self) -> None:
        """Fan out what is new, then push to the open streams."""
        events = await asyncio.to_thread(self._store_pass)
        if events:
            self._on_events()
        users = {uid for uid, streams in self._streams.items() if streams}
        if not users:
            return
        while True:
            items = await asyncio.to_thread(self.notes.after, users, self._cursor)
            for item in items:
                self._cursor = max(self._cursor, item.id)
                for stream in list(self._streams.get(item.user_id, ())):
                    stream.offer(item)
            if len(items) < 500:
                break

    def _store_pass(self) -> int:
        """The fan-out and state announcements (in a worker thread): events queued."""
        events = 0
        newest = self.notes.newest_message_id()
        now = time.monotonic()
        rescan = now - self._last_rescan >= self.settings.notify_rescan_seconds
        if rescan and not self.notes.fanout_pending():
            self._last_rescan, rescan = now, False  # nothing waits to settle
        if newest != self._newest_message or rescan:
            if rescan:
                self._last_rescan = now
            while True:
                result = self.notes.fan_out(
                    grace_seconds=self.settings.notify_fanout_grace_seconds, rescan=rescan
                )
                events += result.events
                if not result.more:
                    break
            self._newest_message = newest
        events += self.webhooks.announce_state_changes()
        return events


# -- webhooks ------------------------------------------------------------------------------------


def retry_delay(attempts: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: exponential (x3) from
    ``webhook_retry_base_seconds`` up to ``webhook_retry_max_delay_seconds``, with jitter (half
    to all of it), so receivers that come back are not hit by every sender at once."""
    rng = rng or random.Random()
    cap = settings.webhook_retry_max_delay_seconds
    full = min(cap, settings.webhook_retry_base_seconds * 3 ** max(attempts - 1, 0))
    return full * rng.uniform(0.5, 1.0)


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    status: int | None
    error: str


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


class WebhookSender:
    """Sends due webhook deliveries until cancelled (one per API process; several processes
    share the work through the store's claims)."""

    def __init__(
        self,
        webhooks: WebhookStore,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.webhooks = webhooks
        self.settings = settings
        self._resolve = resolver or _resolve
        self._rng = rng or random.Random()
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def wake(self) -> None:
        for loop, event in list(self._wakers):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    async def run(self) -> None:
        waker = (asyncio.get_running_loop(), asyncio.Event())
        self._wakers.append(waker)
        try:
            await self._run(waker[1])
        finally:
            self._wakers.remove(waker)

    async def _run(self, wake: asyncio.Event) -> None:
        while True:
            try:
                sent = await self.send_due()
            except Exception as exc:
                log.warning("webhook pass failed: %s", type(exc).__name__)
                sent = 0
            if sent:
                continue
            wait = 1.0
            with contextlib.suppress(Exception):
                due = await asyncio.to_thread(self.webhooks.next_due_at)
                if due is not None:
                    wait = min(wait, max((due - utcnow()).total_seconds(), 0.05))
            await wait_set(wake, wait)
            wake.clear()

    async def send_due(self) -> int:
        """Claim and send what is due now; how many were attempted."""
        settings = self.settings
        lease = settings.webhook_timeout_seconds * 4 + 30
        due = await asyncio.to_thread(
            self.webhooks.claim_due,
            now=utcnow(),
            limit=settings.webhook_concurrency,
            lease_seconds=lease,
        )
        if due:
            await asyncio.gather(*(self._attempt(d) for d in due))
        return len(due)

    async def _attempt(self, delivery: DueDelivery) -> None:
        outcome = await self.deliver(delivery)
        now = utcnow()
        retry_at: datetime | None = None
        if not outcome.delivered:
            delay = retry_delay(delivery.attempts + 1, self.settings, self._rng)
            retry_at = now + timedelta(seconds=delay)
            deadline = delivery.created_at + timedelta(
                seconds=self.settings.webhook_retry_for_seconds
            )
            if retry_at > deadline:
                retry_at = None  # retried long enough: failed for good
        await asyncio.to_thread(
            self.webhooks.record_attempt,
            delivery.id,
            now=now,
            delivered=outcome.delivered,
            response_status=outcome.status,
            error=outcome.error,
            retry_at=retry_at,
        )

    async def deliver(self, delivery: DueDelivery) -> DeliveryOutcome:
        """One attempt, never raising: the outcome says what happened."""
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds * 3):
                return await self._post(delivery)
        except UnsafeWebhookUrl as exc:
            return DeliveryOutcome(False, None, f"refused: {exc}")
        except TimeoutError:
            return DeliveryOutcome(False, None, "timed out")
        except Exception as exc:  # connection refused, TLS, protocol: retried
            return DeliveryOutcome(False, None, f"{type(exc).__name__}")

    async def _post(self, delivery: DueDelivery) -> DeliveryOutcome:
        import httpx2

        settings = self.settings
        # Checked again at send time: the admin may have narrowed the allowed hosts since.
        target = check_webhook_url(
            delivery.url,
            settings.webhook_allowed_hosts,
            allow_internal=settings.webhook_allow_internal,
        )
        try:
            ip = ipaddress.ip_address(target.host)
            addresses = [str(ip)]
        except ValueError:
            addresses = await self._resolve(target.host, target.port)
        if not addresses:
            return DeliveryOutcome(False, None, "the host name resolves to no address")
        if not settings.webhook_allow_internal:
            for address in addresses:
                if address_is_internal(ipaddress.ip_address(address)):
                    raise UnsafeWebhookUrl(f"{target.host} resolves to an internal address")
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        url = f"{target.scheme}://{literal}:{target.port}{target.target}"
        body = delivery.payload.encode("utf-8")
        timestamp = int(time.time())
        headers = {
            "host": target.host_header,
            "content-type": "application/json",
            "user-agent": f"Correspond-Webhooks/{__version__}",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(delivery.secret, delivery.event_id, timestamp, body),
        }
        extensions = {}
        if target.scheme == "https" and address != target.host:
            extensions["sni_hostname"] = target.host  # the certificate is checked for the name
        timeout = httpx2.Timeout(settings.webhook_timeout_seconds)
        async with (
            httpx2.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout) as client,
            client.stream(
                "POST", url, content=body, headers=headers, extensions=extensions
            ) as response,
        ):
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= settings.webhook_max_response_bytes:
                    break  # the rest is not read: the status is what counts
            status = response.status_code
        if 200 <= status < 300:
            return DeliveryOutcome(True, status, "")
        return DeliveryOutcome(False, status, f"HTTP {status}")
