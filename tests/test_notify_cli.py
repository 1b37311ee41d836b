"""``correspond webhooks list|create|delete|deliveries`` and ``correspond notifications list``
on SQLite and PostgreSQL (``StoreCli``)."""

from __future__ import annotations

import json

from correspond.settings import Settings
from correspond.store import Store
from correspond.store.notifications import NotificationStore
from correspond.store.teams import TeamStore
from helpers import StoreCli
from test_notifications import add_account, add_message, add_user


def test_webhooks_from_the_command_line(
    store: Store, store_settings: Settings, store_url: str
) -> None:
    cli = StoreCli(store_settings, store_url)
    ann = add_user(store, "ann@example.test")
    refused = cli("webhooks", "create", "https://hooks.example.com/in", "--user", ann.email)
    assert refused.exit_code == 2 and "not in the allowed webhook hosts" in refused.output
    cli.env["CORRESPOND_WEBHOOK_ALLOWED_HOSTS"] = '["hooks.example.com"]'
    internal = cli("webhooks", "create", "http://10.0.0.1/in", "--user", ann.email)
    assert internal.exit_code == 2 and "internal address" in internal.output
    assert cli.json("webhooks", "list") == []
    assert "No webhooks" in cli("webhooks", "list").stdout
    made = cli(
        "webhooks", "create", "https://hooks.example.com/in", "--user", ann.email,
        "--event", "message.received", "--description", "crm",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith("whsec_") and "shown this once" in made.stderr
    listed = cli.json("webhooks", "list")
    assert [(w["user"], w["url"], w["events"]) for w in listed] == [
        ("ann@example.test", "https://hooks.example.com/in", ["message.received"])
    ]
    assert secret not in json.dumps(listed)
    hook_id = listed[0]["id"]
    every = cli.json("webhooks", "create", "https://hooks.example.com/all", "--user", ann.email)
    assert len(every["events"]) == 5 and every["secret"].startswith("whsec_")
    assert [w["id"] for w in cli.json("webhooks", "list", "--user", ann.email)] == [
        hook_id,
        every["id"],
    ]
    # A message in Ann's mailbox: one delivery in the log.
    assert (
        f"No deliveries for webhook {hook_id}" in cli("webhooks", "deliveries", str(hook_id)).stdout
    )
    box = add_account(store, "ann-box", ann)
    add_message(store, box, "hello")
    NotificationStore(store.engine).fan_out()
    log = cli.json("webhooks", "deliveries", str(hook_id))
    assert [(d["event_type"], d["status"], d["attempts"]) for d in log] == [
        ("message.received", "pending", 0)
    ]
    table = cli("webhooks", "deliveries", str(hook_id))
    assert table.exit_code == 0 and "message.received" in table.stdout and "pending" in table.stdout
    missing = cli("webhooks", "deliveries", "999")
    assert missing.exit_code == 3 and "no webhook with id 999" in missing.output
    deleted = cli("webhooks", "delete", str(hook_id))
    assert deleted.exit_code == 0 and f"Deleted webhook {hook_id}" in deleted.stdout
    assert cli("webhooks", "delete", str(hook_id)).exit_code == 3
    assert [w["id"] for w in cli.json("webhooks", "list")] == [every["id"]]


def test_notifications_list_for_a_user(
    store: Store, store_settings: Settings, store_url: str
) -> None:
    cli = StoreCli(store_settings, store_url)
    ann, bob = add_user(store, "ann@example.test"), add_user(store, "bob@example.test")
    teams = TeamStore(store.engine)
    team = teams.create("sales")
    teams.add_member(team.id, ann.id)
    teams.add_member(team.id, bob.id)
    box = add_account(store, "bob-box", bob)
    teams.set_account_sharing("bob-box", sharing="metadata")
    assert (
        "No notifications for ann@example.test"
        in cli("notifications", "list", "--user", "ann@example.test").stdout
    )
    add_message(store, box, "hello")
    NotificationStore(store.engine).fan_out()
    shown = cli.json("notifications", "list", "--user", "ann@example.test")
    assert shown["user"] == "ann@example.test" and shown["unread_count"] == 1
    [note] = shown["notifications"]
    # Ann sees Bob's mailbox as metadata only: no snippet; Bob, its owner, sees it.
    assert (note["account"], note["subject"], note["snippet"], note["access"]) == (
        "bob-box",
        "subject hello",
        "",
        "metadata",
    )
    bobs = cli.json("notifications", "list", "--user", "bob@example.test")
    assert bobs["notifications"][0]["snippet"] == "snippet hello"
    table = cli("notifications", "list", "--user", "ann@example.test", "--unread")
    assert table.exit_code == 0, table.output
    assert "subject hello" in table.stdout and "1 unread for ann@example.test" in table.stdout
    unknown = cli("notifications", "list", "--user", "nobody@example.test")
    assert unknown.exit_code == 3
