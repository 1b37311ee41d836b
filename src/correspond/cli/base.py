"""What every command shares: errors and exit codes, the command classes, the context (settings and
the store), output helpers and the root group ``main`` the command modules are attached to."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError
from rich.console import Console

from correspond import __version__
from correspond.accounts import AccountService
from correspond.auth import AuthService
from correspond.cli.output import QuietConsole, dumps_json, safe, stdout_closed
from correspond.errors import (
    ConfigError,
    CorrespondError,
    ImapError,
    NotFound,
    StoreError,
)
from correspond.mailbox import MailboxReader
from correspond.settings import Settings, ensure_data_dir
from correspond.store import Store, open_store
from correspond.store.leases import AccountLeases
from correspond.store.location import store_location
from correspond.store.progress import ProgressReader


class CliError(click.ClickException):
    """A message for the user and an exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


def _exit_code_for(exc: CorrespondError) -> int:
    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, NotFound):
        return 3
    if isinstance(exc, ImapError):
        return 4
    if isinstance(exc, StoreError):
        return 5
    return 1


def _one_line(message: str) -> str:
    """A message on one line: drivers (psycopg, SQLAlchemy) write several, with a link to their
    own error pages that says nothing to a user of this command."""
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith("(Background on this error")]
    return " ".join(kept)


class _Command(click.Command):
    """A command that also takes ``--data-dir`` after its name (``correspond account list
    --data-dir X``), and ``--json`` given before it (``correspond --json account list``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not any("--data-dir" in p.opts for p in self.params):
            self.params.append(_data_dir_option())

    def invoke(self, ctx: click.Context) -> Any:
        cli = ctx.find_object(CliContext)
        if cli is not None and cli.json_output:
            json_param = next((p for p in self.params if "--json" in p.opts), None)
            if json_param is None or json_param.name is None:
                raise click.UsageError(f"{ctx.command_path} has no --json output", ctx)
            ctx.params[json_param.name] = True
        return super().invoke(ctx)


class _Group(click.Group):
    """Turns our errors into clean one-line messages with meaningful exit codes."""

    command_class = _Command
    group_class = type  # subgroups are _Groups too, whoever declares them

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CorrespondError as exc:
            raise CliError(safe(_one_line(str(exc))), _exit_code_for(exc)) from exc
        except BrokenPipeError:
            raise  # the entry point's business (_MainGroup)
        except OSError as exc:
            # A file or directory the user named (or ./var) could not be used: say which.
            where = f": {exc.filename}" if exc.filename else ""
            raise CliError(safe(f"{exc.strerror or exc}{where}"), 1) from exc


class _MainGroup(_Group):
    """The entry point: output to a closed pipe (``correspond ... | head -1``) ends the command
    quietly with status 0, whether it happens while parsing (``--help``) or running."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            stdout_closed()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            stdout_closed()


def _settings_error(exc: ValidationError) -> str:
    """Settings errors as one line naming the environment variable to fix."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(x) for x in error["loc"]) or "settings"
        shown = (
            "--data-dir (CORRESPOND_DATA_DIR)"
            if field == "data_dir"
            else f"CORRESPOND_{field.upper()}"
        )
        parts.append(f"{shown}: {error['msg']} (got {error.get('input')!r})")
    return "invalid settings: " + "; ".join(parts)


class CliContext:
    """What every command shares: the settings, and the store opened on first use."""

    def __init__(self, settings: Settings, *, json_output: bool = False) -> None:
        self.settings = settings
        self.json_output = json_output  # --json before the command
        self._store: Store | None = None
        self._auth: AuthService | None = None

    def use_data_dir(self, data_dir: Path) -> None:
        """``--data-dir`` given after the command: it replaces the one given before it (or the
        environment's); the store is not open yet."""
        assert self._store is None, "the data directory changed after the store was opened"
        try:
            self.settings = self.settings.clone(data_dir=data_dir)
        except ValidationError as exc:
            raise CliError(_settings_error(exc), 2) from exc

    @property
    def store(self) -> Store:
        if self._store is None:
            where = store_location(self.settings)
            had_dir = self.settings.data_dir.is_dir()
            existed = where.exists()
            ensure_data_dir(self.settings)  # 0700, or a clear error naming the directory
            self._store = open_store(self.settings)  # runs migrations
            if existed is False:
                click.echo(
                    f"Created a new store: {where.url} (data directory {self.settings.data_dir})",
                    err=True,
                )
            elif not had_dir:
                click.echo(
                    f"Created the data directory {self.settings.data_dir} (store: {where.url})",
                    err=True,
                )
        return self._store

    @property
    def service(self) -> AccountService:
        return AccountService(self.store, self.settings)

    @property
    def reader(self) -> MailboxReader:
        return MailboxReader(self.store, self.settings)

    @property
    def progress(self) -> ProgressReader:
        return ProgressReader(self.store.engine)

    @property
    def leases(self) -> AccountLeases:
        return AccountLeases(self.store.engine)

    @property
    def auth(self) -> AuthService:
        if self._auth is None:
            self._auth = AuthService(self.store, self.settings)
        return self._auth

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _console(stderr: bool = False) -> Console:
    # Rich reads the terminal width; when output is captured or piped, use a width that keeps
    # tables readable instead of folding every column.
    console: Console = QuietConsole(stderr=stderr)
    if not console.is_terminal:
        console = QuietConsole(stderr=stderr, width=160)
    return console


def _stdin_is_tty() -> bool:
    """Whether a person can answer prompts (separate so tests can say so; the commands look it up
    here, on ``base``, at each call, so patching it here reaches every module)."""
    return sys.stdin.isatty()


def _print_json(data: Any) -> None:
    click.echo(dumps_json(data))


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextmanager
def _status(message: str, enabled: bool) -> Iterator[None]:
    """A spinner on stderr while something slow runs (silent for --json or when piped)."""
    console = _console(stderr=True)
    if enabled and console.is_terminal:
        with console.status(message):
            yield
    else:
        yield


def _fail(message: str, code: int) -> NoReturn:
    raise CliError(message, code)


# ------------------------------------------------------------------------------------------


_DATA_DIR_HELP = (
    "Folder of the store, blobs and key (default ./var of the current directory, made absolute "
    "once at start; env CORRESPOND_DATA_DIR). Accepted before or after the command."
)


def _use_data_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    cli = ctx.find_object(CliContext)
    if value is not None and cli is not None:
        cli.use_data_dir(value)


def _data_dir_option() -> click.Option:
    """``--data-dir`` after a command's name (the group's, before it, also reads the env)."""
    return click.Option(
        ["--data-dir"],
        type=click.Path(file_okay=False, path_type=Path),
        expose_value=False,
        callback=_use_data_dir,
        help=_DATA_DIR_HELP,
    )


@click.group(
    cls=_MainGroup,
    invoke_without_command=True,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CORRESPOND_DATA_DIR",
    help=_DATA_DIR_HELP,
)
@click.option(
    "--json",
    "as_json_output",
    is_flag=True,
    help="Print JSON (the same as --json after a command that has it).",
)
@click.option(
    "--version", "show_version", is_flag=True, help="Show the version and data directory."
)
@click.pass_context
def main(
    ctx: click.Context, data_dir: Path | None, as_json_output: bool, show_version: bool
) -> None:
    """Correspond: two-way email sync for CRMs."""
    if show_version:
        click.echo(f"correspond, version {__version__}")
    try:
        settings = Settings() if data_dir is None else Settings(data_dir=data_dir)
    except ValidationError as exc:
        raise CliError(_settings_error(exc), 2) from exc
    if show_version:
        click.echo(f"data directory: {settings.data_dir}")
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        raise click.UsageError("Missing command.", ctx)
    cli = CliContext(settings, json_output=as_json_output)
    ctx.obj = cli
    ctx.call_on_close(cli.close)


pass_cli = click.make_pass_decorator(CliContext)


def _size(n: int) -> str:
    """Bytes for a person: 0 B, 12.3 KB, 373.0 MB (powers of 1000, as file managers show)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "never"


# Terminal control sequences in server or mail text could rewrite the screen or the title
# bar: every such character is printed as a visible escape (correspond.cli.output).
_plain = safe  # one line: subjects, names, flags, folder names, details
