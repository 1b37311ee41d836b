"""``correspond webhooks`` and ``correspond notifications``."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import click
from rich.table import Table

from correspond.cli.base import (
    CliContext,
    _console,
    _fail,
    _Group,
    _print_json,
    _when,
    pass_cli,
)
from correspond.cli.output import cell, safe
from correspond.rules.webhooks import EVENT_TYPES, UnsafeWebhookUrl, check_webhook_url
from correspond.store.notifications import NotificationStore
from correspond.store.webhooks import Webhook, WebhookStore


@click.group(cls=_Group)
def webhooks() -> None:
    """Webhooks (signed event deliveries to URLs the admin allowed): list, create, delete,
    deliveries."""


def _webhook_store(cli: CliContext) -> WebhookStore:
    return WebhookStore(cli.store.engine, cli.store.secrets)


def _webhook_json(w: Webhook, owners: dict[int, str]) -> dict[str, Any]:
    return {
        "id": w.id,
        "user": owners.get(w.user_id),
        "url": w.url,
        "description": w.description,
        "events": list(w.events),
        "created_at": w.created_at.isoformat(),
    }


def _user_emails(cli: CliContext) -> dict[int, str]:
    return {u.id: u.email for u in cli.auth.users.list_users()}


@webhooks.command("list")
@click.option("--user", "email", help="Only this user's webhooks.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def webhooks_list(cli: CliContext, email: str | None, as_json_output: bool) -> None:
    """Every webhook (or one user's): id, owner, URL, events. Never the secrets."""
    user_id = cli.auth.users.get_user(email).id if email else None
    found = _webhook_store(cli).webhooks(user_id)
    owners = _user_emails(cli)
    if as_json_output:
        _print_json([_webhook_json(w, owners) for w in found])
        return
    if not found:
        click.echo("No webhooks. Create one: correspond webhooks create --user EMAIL URL")
        return
    table = Table(box=None)
    for column in ("ID", "User", "URL", "Events", "Created"):
        table.add_column(column)
    for w in found:
        table.add_row(
            str(w.id), cell(owners.get(w.user_id, "?")), cell(w.url),
            ", ".join(w.events), _when(w.created_at),
        )  # fmt: skip
    _console().print(table)


@webhooks.command("create")
@click.argument("url")
@click.option("--user", "email", required=True, help="Whose webhook (their e-mail address).")
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(list(EVENT_TYPES)),
    help="An event to deliver (repeat it; default: every event).",
)
@click.option("--description", default="", help="What the webhook is for.")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def webhooks_create(
    cli: CliContext,
    url: str,
    email: str,
    events: tuple[str, ...],
    description: str,
    as_json_output: bool,
) -> None:
    """Subscribe URL to events for a user: it hears of the accounts that user may see. The
    URL's host must be in CORRESPOND_WEBHOOK_ALLOWED_HOSTS. Prints the signing secret once."""
    user = cli.auth.users.get_user(email)
    if user.disabled:
        _fail(f"user {user.email} is disabled; enable them first", 2)
    settings = cli.settings
    try:
        check_webhook_url(
            url, settings.webhook_allowed_hosts, allow_internal=settings.webhook_allow_internal
        )
    except UnsafeWebhookUrl as exc:
        _fail(f"refused: {exc}", 2)
    webhook, secret = _webhook_store(cli).create(
        user.id, url, list(events or EVENT_TYPES), description
    )
    if as_json_output:
        _print_json({**_webhook_json(webhook, {user.id: user.email}), "secret": secret})
        return
    click.echo(secret)
    click.echo(
        f"Webhook {webhook.id} for {user.email}: {safe(webhook.url)} "
        f"({', '.join(webhook.events)}). The signing secret above is shown this once.",
        err=True,
    )


@webhooks.command("delete")
@click.argument("webhook_id", type=click.IntRange(1, 2**63 - 1))
@pass_cli
def webhooks_delete(cli: CliContext, webhook_id: int) -> None:
    """Delete webhook WEBHOOK_ID and its delivery log: nothing more is sent to it."""
    hooks = _webhook_store(cli)
    webhook = hooks.get(webhook_id, user_id=None)
    hooks.delete(webhook_id, user_id=None)
    click.echo(f"Deleted webhook {webhook.id} ({safe(webhook.url)}).")


@webhooks.command("deliveries")
@click.argument("webhook_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def webhooks_deliveries(cli: CliContext, webhook_id: int, limit: int, as_json_output: bool) -> None:
    """The delivery log of WEBHOOK_ID, newest first: event, status, attempts, last answer."""
    hooks = _webhook_store(cli)
    hooks.get(webhook_id, user_id=None)
    items, _ = hooks.deliveries(webhook_id, limit=limit)
    if as_json_output:
        _print_json([dataclasses.asdict(d) | _iso_times(dataclasses.asdict(d)) for d in items])
        return
    if not items:
        click.echo(f"No deliveries for webhook {webhook_id} yet.")
        return
    table = Table(box=None)
    for column in ("ID", "Event", "Type", "Status", "Attempts", "Last answer", "Created", "Next"):
        table.add_column(column)
    for d in items:
        answer = d.last_error or (str(d.response_status) if d.response_status else "-")
        table.add_row(
            str(d.id), d.event_id, d.event_type, d.status, str(d.attempts), cell(answer),
            _when(d.created_at), _when(d.next_attempt_at) if d.status == "pending" else "-",
        )  # fmt: skip
    _console().print(table)


def _iso_times(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() for k, v in values.items() if isinstance(v, datetime)}


@click.group(cls=_Group)
def notifications() -> None:
    """A user's notifications (new mail in the mailboxes they follow)."""


@notifications.command("list")
@click.option("--user", "email", required=True, help="Whose notifications (e-mail address).")
@click.option("--unread", is_flag=True, help="Only unread ones.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def notifications_list(
    cli: CliContext, email: str, unread: bool, limit: int, as_json_output: bool
) -> None:
    """The user's notifications, newest first, as the API shows them to that user (the
    visibility rule applies: no snippet from an account shared as metadata only)."""
    from correspond.api.notify_schemas import notification_public

    user = cli.auth.users.get_user(email)
    page = NotificationStore(cli.store.engine).page(
        user.id, is_admin=user.is_admin, unread_only=unread, limit=limit
    )
    if as_json_output:
        _print_json(
            {
                "user": user.email,
                "unread_count": page.unread,
                "notifications": [
                    notification_public(n).model_dump(mode="json") for n in page.items
                ],
            }
        )
        return
    if not page.items:
        click.echo(f"No {'unread ' if unread else ''}notifications for {user.email}.")
        return
    table = Table(box=None)
    for column in ("ID", "Account", "From", "Subject", "Date", "Read"):
        table.add_column(column)
    for n in page.items:
        table.add_row(
            str(n.id), cell(n.account), cell(n.from_email or "-"), cell(n.subject),
            _when(n.message_date), "no" if n.read_at is None else _when(n.read_at),
        )  # fmt: skip
    _console().print(table)
    click.echo(f"{page.unread} unread for {user.email}.")
