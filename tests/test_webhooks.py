"""Webhooks: Standard Webhooks signatures (the spec's test vector), SSRF refusals (hostile URLs,
names that resolve inside), delivery with retries and jittered backoff against a local HTTP
receiver, giving up after the retry period, the API (on SQLite and PostgreSQL, with
``authed_client``) and the events queued for account state changes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from correspond.api import create_app
from correspond.auth import AuthService
from correspond.notify import WebhookSender, retry_delay
from correspond.rules.webhooks import UnsafeWebhookUrl, check_webhook_url, sign
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.message_tables import MessageLocationRow
from correspond.store.messages import MessageStore
from correspond.store.notifications import NotificationStore
from correspond.store.notify_tables import WebhookDeliveryRow
from correspond.store.webhooks import DueDelivery, WebhookStore
from correspond.testing.synthetic import make_account_with_folders
from helpers import authed_client, user_client
from test_notifications import _teams_world, add_account, add_message, add_user

pytest_plugins = ["tests.conftest_store"]

EVENTS = ["message.received", "message.sent", "message.updated", "message.deleted"]

# --- signatures ---------------------------------------------------------------------------------


def test_signature_matches_the_specs_test_vector() -> None:
    # From the Standard Webhooks specification's reference libraries.
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# --- which URLs -------------------------------------------------------------------------------

ALLOWED = ["hooks.example.com", "*.example.org", "127.0.0.1", "localhost", "[::1]", "10.0.0.1"]

HOSTILE = [
    ("http://127.0.0.1/in", "internal"),
    ("http://2130706433/in", "unusual form"),  # decimal 127.0.0.1
    ("http://0177.0.0.1/in", "unusual form"),  # octal
    ("http://0x7f.0.0.1/in", "unusual form"),  # hex
    ("http://127.1/in", "unusual form"),  # short form
    ("http://017700000001/in", "unusual form"),
    ("http://[::1]/in", "internal"),
    ("http://[::ffff:127.0.0.1]/in", "internal"),  # IPv4-mapped loopback
    ("http://[::ffff:7f00:1]/in", "internal"),
    ("http://[::127.0.0.1]/in", "internal"),  # IPv4-compatible
    ("http://[64:ff9b::7f00:1]/in", "internal"),  # NAT64 of loopback
    ("http://[2002:7f00:1::]/in", "internal"),  # 6to4 of loopback
    ("http://[fe80::1]/in", "internal"),
    ("http://[fc00::1]/in", "internal"),
    ("http://[::]/in", "internal"),
    ("http://169.254.169.254/latest/meta-data/", "internal"),  # cloud metadata
    ("http://[::ffff:169.254.169.254]/", "internal"),
    ("http://10.0.0.1/in", "internal"),
    ("http://192.168.1.1/in", "internal"),
    ("http://172.16.0.1/in", "internal"),
    ("http://100.64.0.1/in", "internal"),  # carrier-grade NAT
    ("http://0.0.0.0/in", "internal"),
    ("http://224.0.0.1/in", "internal"),  # multicast
    ("http://hooks.example.com@127.0.0.1/in", "user name"),  # userinfo tricks
    ("http://user:pw@hooks.example.com/in", "user name"),
    ("http://127.0.0.1#@hooks.example.com/in", "fragment"),
    ("http://hooks.example.com\\@127.0.0.1/in", "backslash"),
    ("http://hooks.example.com.evil.test/in", "not in the allowed"),
    ("http://evil.test/in", "not in the allowed"),
    ("http://example.org/in", "not in the allowed"),  # *.example.org is its subdomains only
    ("http://[::1%25lo]/in", "zone"),
    ("ftp://hooks.example.com/in", "only http"),
    ("file:///etc/passwd", "only http"),
    ("gopher://hooks.example.com/", "only http"),
    ("http:///in", "no host"),
    ("http://hooks.example.com:99999/in", "parse"),
    ("http://hooks example.com/in", "spaces"),
]


@pytest.mark.parametrize(("url", "why"), HOSTILE)
def test_hostile_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeWebhookUrl, match=why):
        check_webhook_url(url, ALLOWED)


def test_allowed_urls_are_split_for_the_sender() -> None:
    target = check_webhook_url("https://Hooks.Example.com/in?x=1", ALLOWED)
    assert (target.scheme, target.host, target.port, target.target) == (
        "https",
        "hooks.example.com",
        443,
        "/in?x=1",
    )
    assert check_webhook_url("http://a.b.example.org:8080/", ALLOWED).host_header == (
        "a.b.example.org:8080"
    )
    # Internal addresses only when the admin says so (a receiver on the same network).
    assert check_webhook_url("http://127.0.0.1:9/", ALLOWED, allow_internal=True).port == 9
    assert check_webhook_url("http://[::1]/", ALLOWED, allow_internal=True).host_header == "[::1]"


def _due(url: str, payload: str = "{}") -> DueDelivery:
    return DueDelivery(
        id=1,
        webhook_id=1,
        event_id="msg_test",
        url=url,
        secret="whsec_" + base64.b64encode(b"k" * 24).decode(),
        payload=payload,
        attempts=0,
        created_at=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("http://localhost/in", None),  # the real resolver: 127.0.0.1 / ::1
        ("http://hooks.example.com/in", ["127.0.0.1"]),
        ("http://hooks.example.com/in", ["::ffff:127.0.0.1"]),
        ("http://hooks.example.com/in", ["93.184.216.34", "169.254.169.254"]),  # one bad is enough
    ],
)
def test_names_that_resolve_inside_are_refused(url: str, addresses: list[str] | None) -> None:
    settings = Settings(webhook_allowed_hosts=ALLOWED)

    async def fake(host: str, port: int) -> list[str]:
        assert addresses is not None
        return addresses

    sender = WebhookSender(
        WebhookStore.__new__(WebhookStore), settings, resolver=None if addresses is None else fake
    )
    outcome = asyncio.run(sender.deliver(_due(url)))
    assert not outcome.delivered
    assert "internal address" in outcome.error, outcome


def test_retry_delays_grow_with_jitter_and_a_cap() -> None:
    settings = Settings(webhook_retry_base_seconds=5, webhook_retry_max_delay_seconds=3600)
    rng = random.Random(7)
    for attempts, full in [(1, 5), (2, 15), (3, 45), (4, 135), (9, 3600), (30, 3600)]:
        delays = {retry_delay(attempts, settings, rng) for _ in range(50)}
        assert all(full * 0.5 <= d <= full for d in delays), (attempts, delays)
        assert len(delays) > 40  # jittered, not one value


# --- delivery against a local receiver --------------------------------------------------------


class Receiver:
    """A local HTTP receiver answering a scripted list of statuses, recording each request."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[float, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.requests.append(
                    (
                        time.monotonic(),
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                status = outer.statuses[min(len(outer.requests), len(outer.statuses)) - 1]
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                self.wfile.write(b"x" * 1_000_000)  # more than the sender reads

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([500, 302, 200])
    try:
        yield r
    finally:
        r.close()


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Verification as a receiver following the spec would do it (not our signing code)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        part.split(",", 1) == ["v1", expected] for part in headers["webhook-signature"].split()
    )


def test_deliveries_retry_with_backoff_until_the_receiver_takes_them(
    store: Store, receiver: Receiver
) -> None:
    settings = Settings(
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_allow_internal=True,
        webhook_retry_base_seconds=0.2,
        webhook_max_response_bytes=1024,
    )
    hooks = WebhookStore(store.engine, store.secrets)
    ann = add_user(store, "ann@example.test")
    box = add_account(store, "ann-box", ann)
    webhook, secret = hooks.create(ann.id, receiver.url, ["message.received"])
    message = add_message(store, box, "hello")
    assert NotificationStore(store.engine).fan_out().events == 1
    sender = WebhookSender(hooks, settings, rng=random.Random(1))

    async def until_done() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await sender.send_due()
            log, _ = hooks.deliveries(webhook.id)
            if log[0].status != "pending":
                return
            await asyncio.sleep(0.05)

    asyncio.run(until_done())
    (delivery,), _ = hooks.deliveries(webhook.id)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 3, 200)
    assert [r[1] for r in receiver.requests] == ["/hook"] * 3  # the redirect was not followed
    times = [r[0] for r in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Jittered backoff: 0.1-0.2 s after the first failure, 0.3-0.6 s after the second.
    assert 0.1 <= gaps[0] < 0.5 and 0.3 <= gaps[1] < 1.0, gaps
    for _, _, headers, body in receiver.requests:
        assert _verify(secret, headers, body)
        assert headers["webhook-id"] == delivery.event_id  # the same id on every retry
        assert headers["content-type"] == "application/json"
    event = json.loads(receiver.requests[-1][3])
    assert event["type"] == "message.received"
    assert event["data"]["id"] == message and event["data"]["account"] == "ann-box"


def test_a_delivery_is_given_up_after_the_retry_period(store: Store) -> None:
    settings = Settings(
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_allow_internal=True,
        webhook_retry_for_seconds=60,
    )
    hooks = WebhookStore(store.engine, store.secrets)
    ann = add_user(store, "ann@example.test")
    box = add_account(store, "ann-box", ann)
    refused = Receiver([503])
    try:
        webhook, _ = hooks.create(ann.id, refused.url, ["message.received"])
        add_message(store, box, "hello")
        NotificationStore(store.engine).fan_out()
        with Session(store.engine) as s, s.begin():  # queued a day ago
            s.execute(
                update(WebhookDeliveryRow).values(
                    created_at=datetime.now(UTC) - timedelta(hours=25)
                )
            )
        asyncio.run(WebhookSender(hooks, settings).send_due())
    finally:
        refused.close()
    (delivery,), _ = hooks.deliveries(webhook.id)
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("failed", 1, 503)
    assert delivery.next_attempt_at is None and delivery.last_error == "HTTP 503"


def test_account_state_changes_are_queued_once(store: Store) -> None:
    hooks = WebhookStore(store.engine, store.secrets)
    ann = add_user(store, "ann@example.test")
    add_account(store, "ann-box", ann)
    hooks.announce_state_changes()  # the account's first state: told as it is
    webhook, _ = hooks.create(ann.id, "https://hooks.example.com/x", ["account.state_changed"])
    assert hooks.announce_state_changes() == 0
    store.set_account_state("ann-box", "live", "Watching for new mail")
    assert hooks.announce_state_changes() == 1
    assert hooks.announce_state_changes() == 0
    (delivery,), _ = hooks.deliveries(webhook.id)
    assert delivery.event_type == "account.state_changed"
    with Session(store.engine) as s:
        payload = json.loads(s.get(WebhookDeliveryRow, delivery.id).payload)  # type: ignore[union-attr]
    assert payload["data"] == {
        "account": "ann-box",
        "state": "live",
        "previous_state": "connecting",
        "detail": "Watching for new mail",
    }


# --- the API ----------------------------------------------------------------------------------


@pytest.fixture
def app(store: Store, store_settings: Settings) -> FastAPI:
    settings = store_settings.clone(
        password_hash_time_cost=1,
        password_hash_memory_kib=1024,
        webhook_allowed_hosts=["hooks.example.com"],
    )
    return create_app(settings, store=store)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with authed_client(app) as client:
        yield client


def test_api_manages_webhooks_and_shows_their_log(
    app: FastAPI, admin: TestClient, store: Store
) -> None:
    refused = admin.post(
        "/webhooks", json={"url": "http://169.254.169.254/", "events": ["message.received"]}
    )
    assert refused.status_code == 422 and "internal" in refused.text
    assert (
        admin.post(
            "/webhooks", json={"url": "https://hooks.example.com/a", "events": ["nope"]}
        ).status_code
        == 422
    )
    created = admin.post(
        "/webhooks",
        json={"url": "https://hooks.example.com/a", "events": ["message.received"]},
    )
    assert created.status_code == 201
    hook = created.json()
    assert hook["secret"].startswith("whsec_") and len(base64.b64decode(hook["secret"][6:])) == 24
    listed = admin.get("/webhooks").json()
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    with user_client(app, "member@example.test") as member:
        assert member.get("/webhooks").json() == []
        assert member.get(f"/webhooks/{hook['id']}").status_code == 404
        assert member.get(f"/webhooks/{hook['id']}/deliveries").status_code == 404
        assert member.delete(f"/webhooks/{hook['id']}").status_code == 404
    me = app.state.auth.users.get_user("admin@example.test")
    box = add_account(store, "mine", me)
    add_message(store, box, "hello")
    NotificationStore(store.engine).fan_out()
    log = admin.get(f"/webhooks/{hook['id']}/deliveries").json()
    # The app's sender runs meanwhile: it may have tried once already (no such host here), and
    # then the delivery waits for its retry, still pending.
    assert [(d["event_type"], d["status"]) for d in log["deliveries"]] == [
        ("message.received", "pending")
    ]
    assert log["deliveries"][0]["attempts"] in (0, 1)
    assert admin.delete(f"/webhooks/{hook['id']}").status_code == 204
    assert admin.get(f"/webhooks/{hook['id']}").status_code == 404


def test_flag_changes_and_expunges_are_queued_with_them(store: Store) -> None:
    hooks = WebhookStore(store.engine, store.secrets)
    ann = add_user(store, "ann@example.test")
    account_id, folders = make_account_with_folders(store.engine, "ann-box")
    AuthService(store, Settings()).users.set_account_owner("ann-box", ann.id)
    kept, gone = (add_message(store, account_id, key) for key in ("kept", "gone"))
    with Session(store.engine) as s, s.begin():
        for uid, message_id in ((1, kept), (2, gone)):
            s.add(
                MessageLocationRow(
                    message_id=message_id,
                    folder_id=folders["inbox"],
                    uid=uid,
                    flags=[],
                    sort_at=datetime.now(UTC),
                )
            )
    mirror = MessageStore(store.engine)
    # Nobody listens: nothing is queued.
    mirror.apply_remote_changes(folders["inbox"], flag_updates={1: frozenset({"\\Flagged"})})
    webhook, _ = hooks.create(
        ann.id, "https://hooks.example.com/x", ["message.updated", "message.deleted"]
    )
    with Session(store.engine) as s:
        assert s.query(WebhookDeliveryRow).count() == 0
    mirror.apply_remote_changes(
        folders["inbox"], flag_updates={1: frozenset({"\\Seen"})}, removed_uids=[2]
    )
    log, _ = hooks.deliveries(webhook.id)
    with Session(store.engine) as s:
        rows = {d.event_type: s.get(WebhookDeliveryRow, d.id) for d in log}
        payloads = {k: json.loads(r.payload)["data"] for k, r in rows.items() if r is not None}
    common = {"account": "ann-box", "thread_id": None}
    assert payloads == {
        "message.updated": {**common, "id": kept, "flags": ["\\Seen"]},
        "message.deleted": {**common, "id": gone},
    }


# --- who hears what: the teams rule; where deliveries may go ---------------------------------


def test_webhooks_hear_of_what_their_owner_may_see(store: Store) -> None:
    world = _teams_world(store)
    users, boxes = world["users"], world["boxes"]
    hooks = WebhookStore(store.engine, store.secrets)
    made = {
        name: hooks.create(users[name].id, f"https://hooks.example.com/{name}", EVENTS)[0]
        for name in ("ann", "bob", "carol", "olga", "eve", "frank")
    }
    messages = {add_message(store, account_id, box): box for box, account_id in boxes.items()}
    NotificationStore(store.engine).fan_out()
    heard: dict[str, set[str]] = {}
    payloads: dict[tuple[str, str], dict[str, Any]] = {}
    for name, hook in made.items():
        heard[name] = set()
        with Session(store.engine) as s:
            for delivery in hooks.deliveries(hook.id)[0]:
                row = s.get(WebhookDeliveryRow, delivery.id)
                assert row is not None
                data = json.loads(row.payload)["data"]
                heard[name].add(messages[data["id"]])
                payloads[(name, messages[data["id"]])] = data
    assert heard == {
        "ann": {"ann-box", "bob-box"},  # her own; Bob's shared as metadata
        "bob": {"ann-box", "bob-box"},  # Ann's shared with the team in full
        "carol": {"support-box"},  # her team's inbox
        "olga": {"olga-box"},
        "eve": set(boxes),  # an admin's webhook hears of every account
        "frank": set(),  # disabled
    }
    # A metadata-only viewer's payload is the same metadata everyone gets: never a body.
    shown = payloads[("ann", "bob-box")]
    assert shown == payloads[("bob", "bob-box")]
    assert set(shown) == {"id", "account", "thread_id", "subject", "from", "date"}
    # Once the account stops being shared, its new mail is no longer announced to Ann.
    world["teams"].set_account_sharing("bob-box", sharing="private")
    later = add_message(store, boxes["bob-box"], "later")
    NotificationStore(store.engine).fan_out()
    with Session(store.engine) as s:
        told = {
            json.loads(p)["data"]["id"]
            for p in s.scalars(
                select(WebhookDeliveryRow.payload).where(
                    WebhookDeliveryRow.webhook_id == made["ann"].id
                )
            )
        }
    assert later not in told


def test_no_webhook_can_be_made_until_the_admin_allows_a_host(
    store: Store, store_settings: Settings
) -> None:
    settings = store_settings.clone(password_hash_time_cost=1, password_hash_memory_kib=1024)
    assert settings.webhook_allowed_hosts == []  # the default
    with authed_client(create_app(settings, store=store)) as admin:
        for url, why in (
            ("https://hooks.example.com/a", "not in the allowed webhook hosts"),
            ("http://127.0.0.1:9/a", "internal address"),
        ):
            refused = admin.post("/webhooks", json={"url": url, "events": ["message.received"]})
            assert refused.status_code == 422 and why in refused.text, refused.text
        assert admin.get("/webhooks").json() == []


def test_a_host_taken_off_the_list_is_refused_at_send_time(receiver: Receiver) -> None:
    """Made while allowed; the admin then narrows the list (or stops allowing internal
    addresses): the sender checks again and the receiver gets nothing."""
    for narrowed in (
        Settings(webhook_allowed_hosts=["hooks.example.com"], webhook_allow_internal=True),
        Settings(webhook_allowed_hosts=["127.0.0.1"], webhook_allow_internal=False),
    ):
        sender = WebhookSender(WebhookStore.__new__(WebhookStore), narrowed)
        outcome = asyncio.run(sender.deliver(_due(receiver.url)))
        assert not outcome.delivered and outcome.error.startswith("refused"), outcome
    assert receiver.requests == []
    allowed = Settings(webhook_allowed_hosts=["127.0.0.1"], webhook_allow_internal=True)
    sender = WebhookSender(WebhookStore.__new__(WebhookStore), allowed)
    asyncio.run(sender.deliver(_due(receiver.url)))
    assert len(receiver.requests) == 1  # the same delivery goes once allowed
