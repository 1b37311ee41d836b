"""``correspond teams``: teams and their members."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from correspond.cli.base import (
    CliContext,
    _console,
    _Group,
    _print_json,
    pass_cli,
)
from correspond.cli.output import cell, safe
from correspond.store.teams import Team


@click.group(cls=_Group)
def teams() -> None:
    """Teams of users (admins manage them here): create, list, add-member, remove-member,
    delete. A team's members see its team inboxes, and what its people share with it."""


def _team_json(team: Team) -> dict[str, Any]:
    return {
        "id": team.id,
        "name": team.name,
        "created_at": team.created_at.isoformat(),
        "members": [
            {"id": m.user_id, "email": m.email, "display_name": m.display_name}
            for m in team.members
        ],
        "accounts": list(team.accounts),
    }


def _say_team(team: Team, as_json_output: bool, line: str) -> None:
    if as_json_output:
        _print_json(_team_json(team))
    else:
        click.echo(line)


@teams.command("create")
@click.argument("name")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_create(cli: CliContext, name: str, as_json_output: bool) -> None:
    """Create the team NAME (unique whatever its letter case)."""
    team = cli.auth.teams.create(name)
    _say_team(team, as_json_output, f"Created team {safe(team.name)} (id {team.id}).")


@teams.command("list")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_list(cli: CliContext, as_json_output: bool) -> None:
    """Every team with its members and team inboxes."""
    found = cli.auth.teams.list()
    if as_json_output:
        _print_json([_team_json(t) for t in found])
        return
    if not found:
        click.echo("No teams yet. Create one: correspond teams create NAME")
        return
    table = Table(box=None)
    for column in ("ID", "Name", "Members", "Team inboxes"):
        table.add_column(column)
    for t in found:
        table.add_row(
            str(t.id), cell(t.name), cell(", ".join(m.email for m in t.members) or "-"),
            cell(", ".join(t.accounts) or "-"),
        )  # fmt: skip
    _console().print(table)


@teams.command("add-member")
@click.argument("team")
@click.argument("email")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_add_member(cli: CliContext, team: str, email: str, as_json_output: bool) -> None:
    """Put the user EMAIL in TEAM (a name or an id)."""
    user = cli.auth.users.get_user(email)
    found = cli.auth.teams.add_member(team, user.id)
    _say_team(found, as_json_output, f"{user.email} is in team {safe(found.name)}.")


@teams.command("remove-member")
@click.argument("team")
@click.argument("email")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_remove_member(cli: CliContext, team: str, email: str, as_json_output: bool) -> None:
    """Take the user EMAIL out of TEAM: they stop seeing its inboxes and what it shares."""
    user = cli.auth.users.get_user(email)
    found = cli.auth.teams.remove_member(team, user.id)
    _say_team(found, as_json_output, f"{user.email} left team {safe(found.name)}.")


@teams.command("delete")
@click.argument("team")
@click.option("--json", "as_json_output", is_flag=True)
@pass_cli
def teams_delete(cli: CliContext, team: str, as_json_output: bool) -> None:
    """Delete TEAM; its team inboxes become their owners' personal accounts again."""
    gone = cli.auth.teams.delete(team)
    _say_team(gone, as_json_output, f"Deleted team {safe(gone.name)}.")
