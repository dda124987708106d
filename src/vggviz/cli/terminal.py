"""Process policy for the commands, the same for every job: exit codes, the stop flag that
SIGINT and SIGTERM set, progress bars, errors and notes on stderr, JSON lines on stdout, a
reader that went away, and the closing line.
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
from vggviz.core.lifecycle import Events, Summary


class ExitCode(IntEnum):
    """What the process tells its caller (httpie's idea: names, not numbers)."""

    OK = 0
    FAILED = 1  # some inputs failed, or the run could not be done
    USAGE = 2
    INTERRUPTED = 130  # Ctrl-C
    PIPE_CLOSED = 141  # stdout's reader went away (vggviz ... | head)
    TERMINATED = 143  # SIGTERM (a scheduler's time limit)


stdout_closed = False  # the process started without standard output (set by main)


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
            if err.ways_out is not None:  # the message names other options as the way out
                raise click.ClickException(err.spelled(spell)) from None
            prefix = f"{flag(err.param)} " if err.param else ""
            raise click.ClickException(prefix + str(err)) from None

    return wrapper


def spell(name: str, value: object = None) -> str:
    """An option as the command line writes it: ``--trust-checkpoint``, ``--arch vgg11``."""
    return flag(name) if value is None else f"{flag(name)} {value}"


def shown(text: str) -> str:
    from vggviz.core.text import display

    return display(text)


def reason(err: OSError) -> str:
    from vggviz.core.text import reason as os_reason

    return os_reason(err)


class StopFlag:
    """SIGINT and SIGTERM become a request to stop, polled by the job between steps, once the
    job is running (:meth:`Progress.start`); before that (imports, model loading) they
    interrupt as usual. One flag for every job: a stop is never an exception thrown into the
    middle of a step, so nothing is left half-written and no traceback is printed."""

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


_LABELS = {"crops": "crops (inputs run again)", "pictures": "pictures (channels)"}


class Progress(Events):
    """A run's events on stderr: a progress bar per phase (on a terminal), errors always,
    notes unless quiet; with ``as_json`` each record as one line on stdout. Asks the
    :class:`StopFlag` whether to stop."""

    def __init__(self, stop: StopFlag, quiet: bool = False, as_json: bool = False) -> None:
        if as_json and stdout_closed:  # the records would be lost: refuse before any work
            raise click.ClickException(
                "cannot write to standard output (it is closed); --json prints the records there"
            )
        self.stop, self.quiet, self.as_json = stop, quiet, as_json
        self.show_bar = not quiet and sys.stderr.isatty()
        self.bar: Any = None
        self.done = 0
        self.started = time.perf_counter()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None

    def start(self, total: int) -> None:
        self.stop.running = True
        self.started = time.perf_counter()

    def phase(self, name: str, total: int, done: int = 0) -> None:
        self.close()
        if not self.show_bar or total <= done or (name == "images" and total <= 1):
            return
        if name == "images":  # per-image jobs: the rate, not a percentage
            self.bar = click.progressbar(
                length=total,
                label=name,
                file=sys.stderr,
                show_eta=True,
                show_percent=False,
                show_pos=True,
                item_show_func=lambda _: self._rate(),
            )
        else:
            label = _LABELS.get(name, name)
            self.bar = click.progressbar(
                length=total, label=label, file=sys.stderr, show_eta=True, show_pos=True
            )
        self.bar.update(done)

    def advance(self, count: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def record(self, record: Any) -> None:
        self.done += 1
        if record.get("status") == "error":
            self.failed(str(record.get("error")))
        if self.as_json and not self.stop.pipe_closed:
            self._emit(_dumps(record))
        self.advance()

    def failed(self, message: str) -> None:
        if self.bar is not None:
            click.echo("", err=True)  # keep the message off the bar's line
        click.echo(f"error: {shown(message)}", err=True)

    def note(self, message: str) -> None:
        if not self.quiet:
            if self.bar is not None:
                click.echo("", err=True)
            click.echo(f"vggviz: {shown(message)}", err=True)

    def should_stop(self) -> bool:
        return self.stop.stop()

    def _emit(self, line: str) -> None:
        """One line on stdout; a reader that went away ends the run quietly."""
        try:
            click.echo(line)
        except BrokenPipeError:
            self.stop.pipe_closed = True
            silence_stdout()

    def _rate(self) -> str:
        elapsed = time.perf_counter() - self.started
        return f"{self.done / elapsed:.1f} img/s" if elapsed > 0 and self.done else ""


def _dumps(record: Any) -> str:
    from vggviz.core.text import dumps

    return dumps(record)


def finish(summary: Summary, stop: StopFlag, quiet: bool, closing: Callable[[], str]) -> ExitCode:
    """The run's last words on stderr and its exit code: a closed pipe ends quietly, a full
    disk or a stop says how far the run got, and ``closing()`` (the summary and where the
    outputs are) is said for a complete run unless quiet."""
    if stop.pipe_closed:
        return ExitCode.PIPE_CLOSED  # stdout's reader is gone: stop quietly, as cat does
    if summary.disk_full:
        click.echo(
            f"error: stopped after {summary.finished} of {summary.total} {summary.unit}, "
            f"{summary.ok} {summary.done_word}: {shown(summary.disk_full)}",
            err=True,
        )
        return ExitCode.FAILED
    if not summary.complete:
        how = summary.resume or f"{summary.finished} of {summary.total} {summary.unit} finished"
        click.echo(f"interrupted: {how}", err=True)
        return ExitCode.TERMINATED if stop.received == signal.SIGTERM else ExitCode.INTERRUPTED
    if not quiet:
        click.echo(closing(), err=True)
    elif summary.failed:
        click.echo(summary.line(), err=True)
    return ExitCode.FAILED if summary.failed else ExitCode.OK


def silence_stdout() -> None:
    """Point stdout at /dev/null so that nothing more (not even the final flush) fails."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
