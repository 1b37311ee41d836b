"""``correspond serve``: the API and the sync engine in one process."""

from __future__ import annotations

import ipaddress
import logging
import socket

import click

from correspond.cli.base import (
    CliContext,
    _Command,
    _fail,
    _plain,
    pass_cli,
)
from correspond.cli.sync import _PARSE_OPTION, _configure_logging
from correspond.memory import tune_heap
from correspond.sync.runner import (
    SyncRunner,
)

_STATE_LOG = logging.getLogger("correspond.sync.state")


def _log_state(name: str, state: str, detail: str) -> None:
    """A runner's state listener for ``serve``: one log line per state it records (any
    thread: logging is thread-safe). Server-supplied text is printed with controls removed."""
    level = logging.WARNING if state in ("auth_failed", "error", "disconnected") else logging.INFO
    _STATE_LOG.log(level, "%s: %s: %s", _plain(name), state, _plain(detail))


def _check_port_free(host: str, port: int) -> None:
    """Fail with a hint, before anything starts, when the address is taken or unknown (uvicorn
    would log it among its start-up lines and exit with its own code)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        _fail(f"cannot listen on {host}: {exc.strerror or exc}", 2)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            _fail(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(another server running? choose another with --port)",
                1,
            )


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is only reachable from this machine."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@click.command("serve", cls=_Command)
@click.option("--host", help="Address to listen on (default from settings).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default from settings).")
@click.option("--no-sync", is_flag=True, help="Serve the API only (run `correspond worker`s).")
@_PARSE_OPTION
@pass_cli
def serve(
    cli: CliContext, host: str | None, port: int | None, no_sync: bool, parse_processes: int
) -> None:
    """Run the API and the sync engine (every active account) in one process and event loop."""
    import uvicorn

    from correspond.api import create_app

    settings = cli.settings.clone(**{k: v for k, v in (("host", host), ("port", port)) if v})
    if settings.host not in settings.allowed_hosts:
        # The API answers to the name it listens on, besides the configured ones.
        settings = settings.clone(allowed_hosts=[*settings.allowed_hosts, settings.host])
    if not _is_loopback(settings.host):
        click.echo(
            f"Warning: listening on {settings.host}, not loopback: the API (every account's "
            "mail and settings, to whoever holds a token or a session) is reachable from the "
            "network, over plain HTTP unless a TLS proxy is in front. Host names answered: "
            f"{', '.join(settings.allowed_hosts)} (set CORRESPOND_ALLOWED_HOSTS to the names "
            "clients use).",
            err=True,
        )
    _check_port_free(settings.host, settings.port)
    tune_heap(settings.malloc_arenas)  # before any thread starts
    store = cli.store  # migrations run here, before the first request
    _configure_logging()
    runner = (
        None
        if no_sync
        else SyncRunner(store, settings, parse_processes=parse_processes, on_state=_log_state)
    )
    app = create_app(settings, store=store, runner=runner)
    what = "API only" if runner is None else f"API and sync (owner {runner.owner})"
    click.echo(f"Serving on http://{settings.host}:{settings.port}: {what}; API docs at /docs")
    if cli.auth.users.count_users() == 0:
        click.echo(
            "No users yet: every API call but /health answers 401. Create the first admin "
            "and a token:\n  correspond users create you@example.com --admin\n"
            "  correspond tokens create --user you@example.com --name cli\n"
            "then call the API with: Authorization: Bearer <token>"
        )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
