"""Process policy for the commands: exit codes, the stop flag that SIGINT and SIGTERM set,
progress bars and notes on stderr, JSON lines on stdout, and a reader that went away.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import click

from vggviz.cli.params import flag
from vggviz.core.errors import UsageError, VggvizError


class ExitCode(IntEnum):
    """What the process tells its caller (httpie's idea: names, not numbers)."""

    OK = 0
    FAILED = 1  # some inputs failed, or the run could not be done
    USAGE = 2
    INTERRUPTED = 130  # Ctrl-C
    PIPE_CLOSED = 141  # stdout's reader went away (vggviz ... | head)
    TERMINATED = 143  # SIGTERM (a scheduler's time limit)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit): stop as cleanly as for Ctrl-C."""


def on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Library errors become one-line messages: usage problems exit 2, the rest 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            if err.param:
                raise click.BadParameter(str(err), param_hint=f"'{flag(err.param)}'") from None
            raise click.UsageError(str(err)) from None
        except VggvizError as err:
            prefix = f"{flag(err.param)} " if err.param else ""
            raise click.ClickException(prefix + str(err)) from None

    return wrapper


def shown(text: str) -> str:
    from vggviz.core.text import display

    return display(text)


def note(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(f"vggviz: {message}", err=True)


def reason(err: OSError) -> str:
    from vggviz.core.text import reason as os_reason

    return os_reason(err)


class StopFlag:
    """SIGINT and SIGTERM become a request to stop, polled by the job between steps, once the
    job is running; before that (imports, model loading) they interrupt as usual."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.running = False
        self.pipe_closed = False

    def __enter__(self) -> StopFlag:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, old in self._old.items():
            # after a stop was asked for, more Ctrl-C while the run winds down change nothing
            signal.signal(sig, signal.SIG_IGN if self.received else old)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = self.received or signum
        if not self.running:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def stop(self) -> bool:
        return self.received is not None or self.pipe_closed


def run_features(request: Any, as_json: bool, quiet: bool) -> int:
    from vggviz.features import job as job

    show_bar = not quiet and sys.stderr.isatty()
    started = time.perf_counter()
    state: dict[str, Any] = {"bar": None, "done": 0}

    def on_start(total: int) -> None:
        signals.running = True
        if show_bar and total > 1:
            state["bar"] = click.progressbar(
                length=total,
                label="images",
                file=sys.stderr,
                show_eta=True,
                show_percent=False,
                show_pos=True,
                item_show_func=lambda _: _rate(state["done"], started),
            )

    def on_record(record) -> None:
        state["done"] += 1
        bar = state["bar"]
        if record["status"] == "error":
            if bar:
                click.echo("", err=True)  # keep the message off the bar's line
            click.echo(f"error: {shown(record['error'])}", err=True)
        if as_json and not signals.pipe_closed:
            emit(records_dumps(record), signals)
        if bar:
            bar.update(1)

    hooks = job.Hooks(
        on_record=on_record,
        on_start=on_start,
        on_note=lambda text: note(quiet, text),
        should_stop=lambda: signals.stop(),
    )
    with StopFlag() as signals:
        try:
            summary = job.run(request, hooks)
        finally:
            if state["bar"] is not None:
                state["bar"].render_finish()
    for problem in summary.problems:  # folders that could not be listed
        click.echo(f"error: {shown(problem)}", err=True)
    failed = summary.error + len(summary.problems)
    if signals.pipe_closed:
        return ExitCode.PIPE_CLOSED  # stdout's reader is gone: stop quietly, as cat does
    if summary.disk_full:
        click.echo(
            f"error: stopped after {summary.finished} of {summary.total} image(s), "
            f"{summary.ok} done: {shown(summary.disk_full)}",
            err=True,
        )
        return ExitCode.FAILED
    if not summary.complete:
        click.echo(
            f"interrupted: {summary.finished} of {summary.total} image(s) finished", err=True
        )
        return ExitCode.TERMINATED if signals.received == signal.SIGTERM else ExitCode.INTERRUPTED
    if not quiet:
        where = summary.index or request.out_dir
        click.echo(
            f"{summary.line()} · pictures in {shown(str(request.out_dir))}{os.sep} · "
            f"open {shown(str(where))}",
            err=True,
        )
    elif failed:
        click.echo(summary.line(), err=True)
    return ExitCode.FAILED if failed else ExitCode.OK


def records_dumps(record: Any) -> str:
    from vggviz.core.text import dumps

    return dumps(record)


def emit(line: str, signals: StopFlag) -> None:
    """One line on stdout; a reader that went away ends the run quietly."""
    try:
        click.echo(line)
    except BrokenPipeError:
        signals.pipe_closed = True
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at /dev/null so that nothing more (not even the final flush) fails."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _rate(done: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    return f"{done / elapsed:.1f} img/s" if elapsed > 0 and done else ""


class TopProgress:
    """The library's events on stderr: a progress bar per phase, errors and notes as lines."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.show_bar = not quiet and sys.stderr.isatty()
        self.bar: Any = None

    def __enter__(self) -> TopProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None

    def phase(self, name: str, total: int, done: int = 0) -> None:
        self._close()
        if self.show_bar and total > done:
            label = {"crops": "crops (inputs run again)", "pictures": "pictures (channels)"}
            label = label.get(name, name)
            self.bar = click.progressbar(
                length=total, label=label, file=sys.stderr, show_eta=True, show_pos=True
            )
            self.bar.update(done)

    def advance(self, count: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def failed(self, message: str) -> None:
        if self.bar is not None:
            click.echo("", err=True)  # keep the message off the bar's line
        click.echo(f"error: {message}", err=True)

    def note(self, message: str) -> None:
        if not self.quiet:
            if self.bar is not None:
                click.echo("", err=True)
            click.echo(f"vggviz: {message}", err=True)
