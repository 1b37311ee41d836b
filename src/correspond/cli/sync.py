"""``correspond sync`` and ``correspond worker``: run the sync engine from the command line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from correspond.accounts import STATE_MESSAGES
from correspond.cli.accounts import _STATE_STYLE, _print_account_json
from correspond.cli.base import (
    CliContext,
    _Command,
    _console,
    _fail,
    _plain,
    _print_json,
    _run,
    pass_cli,
)
from correspond.cli.output import safe
from correspond.memory import tune_heap
from correspond.store.leases import RUNNABLE_STATES
from correspond.store.progress import AccountProgress, ProgressReader
from correspond.sync.runner import (
    OnceResult,
    SyncRunner,
    default_parse_processes,
    make_parse_executor,
    sync_account_once,
)
from correspond.waiting import wait_set

# -- running the sync --------------------------------------------------------------------------

_PROGRESS_SECONDS = 0.5
_FOLDERS_SKIPPED = 6  # the pass finished, but some folder was skipped for an error
# How often ``worker`` reads every account's state for its log lines: the states this worker
# records reach the log at once through the runner's listener; this read only catches what
# others change (a pause...). It reads every account's progress (0.38 s of CPU at 1,000
# accounts), so every second it was most of an idle worker's CPU (7 of 9.5 % of a core at 200).
_WORKER_POLL_SECONDS = 60.0
_STOP_CODES = {"paused": 0, "auth_failed": 4, "error": 1}


def _default_parse_processes() -> int:
    return default_parse_processes()


_PARSE_OPTION = click.option(
    "--parse-processes",
    type=click.IntRange(0, 64),
    default=_default_parse_processes,
    show_default="one per CPU, at most 4; none on one CPU",
    help="Processes that parse MIME, shared by every account (0: a thread of this process).",
)


class _RateColumn(ProgressColumn):
    """Messages per second, from rich's own samples of the done count."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("    - msg/s", style="progress.data.speed")
        return Text(f"{speed:5.1f} msg/s", style="progress.data.speed")


class _SyncDisplay:
    """What a running sync shows, read from the store every half second (no engine hook): one
    line per state change (connecting, backfilling, live, sign-in failed with the server's
    words, ...) and the backfill's progress. On a terminal the progress is a bar per selected
    folder and one for the total (done/total, rate, ETA); without one (a log, a pipe) it is a
    plain line per folder that moved, every ``every`` seconds: folder, done/total, rate."""

    def __init__(
        self,
        reader: ProgressReader,
        console: Console,
        *,
        names: list[str] | None,
        bars: bool,
        lines: bool = False,
        every: float = 5.0,
    ) -> None:
        self.reader = reader
        self.console = console
        self.names = names
        bars = bars and console.is_terminal
        self.lines = lines and not bars
        self.every = every
        self._lines_at: float | None = None
        self._printed: dict[tuple[str, int], tuple[int, int | None]] = {}
        self._seen_accounts: set[str] = set()
        self._started_at = datetime.now(UTC)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not bars,
            auto_refresh=console.is_terminal,
        )
        self._tasks: dict[tuple[str, int | None], TaskID] = {}
        self._states: dict[str, tuple[str, str]] = {}
        self.last: dict[str, AccountProgress] = {}

    def __enter__(self) -> _SyncDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def say(self, message: str) -> None:
        self.progress.console.print(message, highlight=False)

    async def poll(self, *, final: bool = False) -> dict[str, AccountProgress]:
        """Read the store once and update the bars, progress lines and state lines (``final``:
        the progress lines are due now, whatever the interval)."""
        if self.names is None:
            items = await asyncio.to_thread(self.reader.all)
        else:
            items = [await asyncio.to_thread(self.reader.account, n) for n in self.names]
        now = time.monotonic()
        lines_due = self.lines and (
            final or self._lines_at is None or now - self._lines_at >= self.every
        )
        if lines_due:
            self._lines_at = now
        for p in items:
            self._state_line(p)
            self._bars(p)
            if lines_due:
                self._progress_lines(p)
            if self.names is not None:
                # ``sync`` reads its accounts' last progress; a ``worker`` (every account,
                # names None) never does: 1,000 accounts' records are not kept for nothing.
                self.last[p.name] = p
        return self.last

    def _progress_lines(self, p: AccountProgress) -> None:
        """A line for each folder whose backfill moved since its last line. A folder already
        complete before this display started watching, not started yet, or empty says
        nothing."""
        stamp = time.strftime("%H:%M:%S")
        first_look = p.name not in self._seen_accounts
        self._seen_accounts.add(p.name)
        # A pass that began after the display started is news, even if the first look at it
        # comes after it finished.
        watched = p.connected_at is not None and p.connected_at >= self._started_at
        for f in p.folders:
            key = (p.name, f.folder_id)
            now = (f.done, f.total)
            before = self._printed.get(key)
            self._printed[key] = now
            if before == now or f.total is None or (f.complete and f.done == 0):
                continue
            if before is None and f.complete and first_look and not watched:
                continue
            total = "?" if f.total is None else str(f.total)
            rate = "" if not f.rate else f", {f.rate:.1f} msg/s"
            end = ", done" if f.complete else ""
            self.say(
                f"{stamp} {escape(p.name)}: {escape(safe(f.name))} {f.done}/{total}{rate}{end}"
            )

    def listener(self) -> Callable[[str, str, str], None]:
        """A state listener for the runner: every state it records is shown at once, even
        one that lasts less than a polling interval. Safe to call from any thread."""
        loop = asyncio.get_running_loop()

        def on_state(name: str, state: str, detail: str) -> None:
            loop.call_soon_threadsafe(self.state_line, name, state, detail)

        return on_state

    def _state_line(self, p: AccountProgress) -> None:
        self.state_line(p.name, p.state, p.state_detail)

    def state_line(self, name: str, state: str, detail: str) -> None:
        """One line for a state change (repeats of the current state are not shown)."""
        key = (state, detail)
        if self._states.get(name) == key:
            return
        self._states[name] = key
        style = _STATE_STYLE.get(state, "white")
        words = {"auth_failed": "sign-in failed"}.get(state, state)
        shown = detail or STATE_MESSAGES.get(state, "")
        stamp = time.strftime("%H:%M:%S")
        self.say(f"{stamp} {escape(name)}: [{style}]{words}[/] {escape(_plain(shown))}")

    def _bars(self, p: AccountProgress) -> None:
        if self.progress.disable or not p.folders:
            return
        total_key = (p.name, None)
        if total_key not in self._tasks:
            label = f"{p.name}: all folders" if self.names is None or len(self.names) > 1 else "All"
            self._tasks[total_key] = self.progress.add_task(escape(label), total=None)
        self.progress.update(
            self._tasks[total_key],
            completed=p.done,
            total=p.total if p.total_known else None,
        )
        for f in p.folders:
            key = (p.name, f.folder_id)
            if key not in self._tasks:
                self._tasks[key] = self.progress.add_task(
                    "  " + escape(_plain(f.name)), total=f.total
                )
            total = f.total if f.total is not None else (f.done if f.complete else None)
            self.progress.update(self._tasks[key], completed=f.done, total=total)


@contextmanager
def _signals(handler: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call ``handler`` (a clean stop) instead of raising KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _prepare_account(cli: CliContext, name: str) -> None:
    """Refuse a paused account; retry one stopped on an error (the user asks for a sync)."""
    account = cli.store.get_account(name)
    if account.state == "paused":
        _fail(f"account {name} is paused; resume it first: correspond account resume {name}", 2)
    if account.state in ("auth_failed", "error"):
        cli.leases.resume(name, "Retrying on request.")


def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()


def _once_json(cli: CliContext, name: str, result: OnceResult | None, code: int) -> dict[str, Any]:
    """What ``sync --once --json`` prints: per folder the new messages, new locations (copies
    and labels of messages already stored) and the error that made it skip; totals."""
    folders: list[dict[str, Any]] = []
    if result is not None and result.report is not None:
        names = {f.id: f.name for f in cli.store.list_folders(name, include_removed=True)}
        for f in result.report.folders:
            folders.append(
                {
                    "id": f.folder_id,
                    "name": names.get(f.folder_id),
                    "new_messages": f.created,
                    "new_locations": f.linked,
                    "error": f.error,
                }
            )
    account = cli.store.get_account(name) if result is None else result.account
    errors = [f for f in folders if f["error"]]
    return {
        "account": name,
        "ok": code == 0,
        "exit_code": code,
        "state": account.state,
        "state_detail": account.state_detail,
        "seconds": None if result is None or result.report is None else result.report.seconds,
        "folders": folders,
        "totals": {
            "folders": len(folders),
            "new_messages": sum(f["new_messages"] for f in folders),
            "new_locations": sum(f["new_locations"] for f in folders),
            "errors": len(errors),
        },
    }


async def _sync_once(
    cli: CliContext, name: str, processes: int, display: _SyncDisplay
) -> tuple[int, OnceResult | None]:
    """Run one pass with its display; the exit code and how it ended (None: interrupted)."""
    executor = make_parse_executor(processes)
    try:
        with display:
            job = asyncio.create_task(
                sync_account_once(
                    cli.store,
                    cli.settings,
                    name,
                    parse_executor=executor,
                    on_state=display.listener(),
                )
            )
            with _signals(lambda: _cancel(job)):
                while not job.done():
                    await display.poll()
                    await asyncio.wait({job}, timeout=_PROGRESS_SECONDS)
            await display.poll(final=True)
            try:
                result = job.result()
            except asyncio.CancelledError:
                display.say(f"Interrupted; {escape(name)}'s lease is released.")
                return 130, None
    finally:
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
    a = result.account
    if result.ok and result.report is not None:
        r = result.report
        errors = [f for f in r.folders if f.error]
        folder_names = {f.id: f.name for f in cli.store.list_folders(name, include_removed=True)}
        for f in errors:
            shown = folder_names.get(f.folder_id, f"folder {f.folder_id}")
            display.say(f"[yellow]{escape(safe(shown))} skipped[/]: {escape(safe(f.error))}")
        display.say(
            f"Synced {escape(name)}: {r.created} new messages, {r.linked} more locations "
            f"in {r.seconds:.1f} s."
        )
        if errors:
            display.say(
                f"[yellow]{len(errors)} of {len(r.folders)} folders were skipped for an "
                "error[/] (listed above); they are tried again at the next sync."
            )
            return _FOLDERS_SKIPPED, result
        return 0, result
    display.say(f"[red]{escape(_plain(STATE_MESSAGES.get(a.state, a.state)))}[/]")
    click.echo(f"{name}: {a.state}: {safe(a.state_detail)}", err=True)
    return _STOP_CODES.get(a.state, 4 if a.state == "disconnected" else 1), result


async def _sync_live(cli: CliContext, name: str, processes: int, display: _SyncDisplay) -> int:
    runner = SyncRunner(
        cli.store,
        cli.settings,
        names=[name],
        parse_processes=processes,
        on_state=display.listener(),
    )
    stop = asyncio.Event()
    code = 0
    waiting_said = False
    with _signals(stop.set):
        main_task = asyncio.create_task(runner.run(stop))
        try:
            with display:
                display.say(f"Syncing {escape(name)} (owner {runner.owner}); Ctrl-C to stop.")
                while not stop.is_set() and not main_task.done():
                    p = (await display.poll())[name]
                    if p.state not in RUNNABLE_STATES and name not in runner.running:
                        code = _STOP_CODES.get(p.state, 1)
                        break
                    if name not in runner.running and not waiting_said:
                        holder = await asyncio.to_thread(cli.leases.holder, name)
                        if holder is not None and holder[0] != runner.owner:
                            display.say(
                                f"Waiting: {escape(name)} is being synced by "
                                f"{escape(safe(holder[0]))}."
                            )
                            waiting_said = True
                    await wait_set(stop, _PROGRESS_SECONDS)
                stop.set()
                await main_task
                await display.poll()
        finally:
            stop.set()
            if not main_task.done():
                await main_task
    click.echo(f"Stopped syncing {name}; its lease is released.", err=display.console.stderr)
    return code


_PROGRESS_EVERY_OPTION = click.option(
    "--progress-every",
    type=click.FloatRange(0.1, 3600.0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Without a terminal: a progress line per folder that moved, this often.",
)


@click.command("sync", cls=_Command)
@click.argument("account_name", metavar="ACCOUNT")
@click.option("--once", is_flag=True, help="Backfill and catch up, then exit.")
@_PARSE_OPTION
@click.option("--no-progress", is_flag=True, help="State lines only, no progress bars or lines.")
@_PROGRESS_EVERY_OPTION
@click.option(
    "--json",
    "as_json_output",
    is_flag=True,
    help="Print the result as JSON (state and progress lines go to stderr).",
)
@pass_cli
def sync(
    cli: CliContext,
    account_name: str,
    once: bool,
    parse_processes: int,
    no_progress: bool,
    progress_every: float,
    as_json_output: bool,
) -> None:
    """Sync ACCOUNT: backfill the window, then stay live (IDLE) until Ctrl-C; with --once, exit
    when caught up.

    Progress: bars on a terminal; otherwise a line per folder every few seconds. With --once
    the result says, per folder, the new messages and new locations (copies of messages
    already stored) and any error that made it skip the folder. Exit 0 when every folder
    synced; 6 when the pass finished but some folder was skipped for an error; otherwise the
    account's state and the reason, and 4 when the server refused or could not be reached,
    1 for other errors, 130 when interrupted.
    """
    _prepare_account(cli, account_name)
    display = _SyncDisplay(
        cli.progress,
        _console(stderr=as_json_output),
        names=[account_name],
        bars=not no_progress,
        lines=not no_progress,
        every=progress_every,
    )
    if once:
        code, result = _run(_sync_once(cli, account_name, parse_processes, display))
        if as_json_output:
            _print_json(_once_json(cli, account_name, result, code))
    else:
        code = _run(_sync_live(cli, account_name, parse_processes, display))
        if as_json_output:
            _print_account_json(cli, account_name)
    if code:
        sys.exit(code)


@click.command("worker", cls=_Command)
@_PARSE_OPTION
@click.option("--max-accounts", type=click.IntRange(1), help="Hold at most this many accounts.")
@click.option("--poll-seconds", type=click.FloatRange(0.1), default=5.0, show_default=True)
@click.option("--lease-seconds", type=click.FloatRange(1.0), default=60.0, show_default=True)
@_PROGRESS_EVERY_OPTION
@pass_cli
def worker(
    cli: CliContext,
    parse_processes: int,
    max_accounts: int | None,
    poll_seconds: float,
    lease_seconds: float,
    progress_every: float,
) -> None:
    """Sync every active account (no API), sharing them with other workers through leases;
    Ctrl-C stops cleanly and releases the leases. Backfill progress is a line per folder that
    moved, every few seconds."""
    tune_heap(cli.settings.malloc_arenas)  # before any thread starts
    display = _SyncDisplay(
        cli.progress, _console(), names=None, bars=False, lines=True, every=progress_every
    )
    _configure_logging()

    async def work() -> str:
        runner = SyncRunner(
            cli.store,
            cli.settings,
            parse_processes=parse_processes,
            max_accounts=max_accounts,
            poll_seconds=poll_seconds,
            lease_seconds=lease_seconds,
            on_state=display.listener(),
        )
        stop = asyncio.Event()
        with _signals(stop.set):
            main_task = asyncio.create_task(runner.run(stop))
            display.say(f"Worker {runner.owner} running; Ctrl-C to stop.")
            try:
                while not stop.is_set() and not main_task.done():
                    await display.poll()
                    await wait_set(stop, _WORKER_POLL_SECONDS)
            finally:
                stop.set()
                await main_task
                await display.poll()
        return runner.owner

    owner = _run(work())
    click.echo(f"Worker {owner} stopped; its leases are released.")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _configure_logging() -> None:
    """``worker`` and ``serve``: Correspond's log lines (account state changes, sync errors,
    lease rounds) on standard error, INFO and up, with a timestamp. Once per process."""
    logger = logging.getLogger("correspond")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
