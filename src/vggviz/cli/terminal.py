"""Process policy for the commands, the same for every job: exit codes, the stop flag that
SIGINT and SIGTERM set (:mod:`vggviz.cli.process`), progress bars, errors and notes on
stderr, JSON lines on stdout, a reader that went away, and the closing line.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import click

from vggviz.cli.params import flag
from vggviz.cli.process import ClosedStdout, silence_stdout
from vggviz.cli.process import StopFlag as StopFlag  # the commands' one import of both
from vggviz.cli.process import Terminated as Terminated
from vggviz.cli.process import stop_point as stop_point
from vggviz.core.errors import UsageError, VggvizError

if TYPE_CHECKING:
    from vggviz.core.lifecycle import Events, Summary


class ExitCode(IntEnum):
    """What the process tells its caller (httpie's idea: names, not numbers)."""

    OK = 0
    FAILED = 1  # some inputs failed, or the run could not be done
    USAGE = 2
    INTERRUPTED = 130  # Ctrl-C
    PIPE_CLOSED = 141  # stdout's reader went away (vggviz ... | head)
    TERMINATED = 143  # SIGTERM (a scheduler's time limit)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Library errors become one-line messages: usage problems exit 2, the rest 1. A reader
    of stdout that went away (or a stdout closed at start) ends the command quietly with 141,
    before click would turn it into exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:
            silence_stdout()
            sys.exit(ExitCode.PIPE_CLOSED)
        except UsageError as err:
            if err.param:
                hint = f"'{flag(err.param)}'"
                raise click.BadParameter(shown(str(err)), param_hint=hint) from None
            raise click.UsageError(shown(str(err))) from None
        except VggvizError as err:
            if err.ways_out is not None:  # the message names other options as the way out
                raise click.ClickException(shown(err.spelled(spell))) from None
            prefix = f"{flag(err.param)} " if err.param else ""
            raise click.ClickException(prefix + shown(str(err))) from None

    return wrapper


def spell(name: str, value: object = None) -> str:
    """An option as the command line writes it: ``--trust-checkpoint``, ``--arch vgg11``."""
    return flag(name) if value is None else f"{flag(name)} {value}"


def shown(text: str) -> str:
    """A message as one line: the names in it with their line breaks and control characters
    escaped (core/text.display), whoever worded it."""
    from vggviz.core.text import display

    return display(text)


def reason(err: OSError) -> str:
    from vggviz.core.text import reason as os_reason

    return os_reason(err)


_LABELS = {"crops": "crops (inputs run again)", "pictures": "pictures (channels)"}


class Progress:
    """A run's events (:class:`vggviz.core.lifecycle.Events`, every method of it) on stderr: a
    progress bar per phase (on a terminal), errors always, notes unless quiet; with
    ``as_json`` each record as one line on stdout. Asks the :class:`StopFlag` whether to
    stop. Not a subclass, so that ``--help`` never imports the library's numpy side."""

    def __init__(self, stop: StopFlag, quiet: bool = False, as_json: bool = False) -> None:
        if as_json and isinstance(sys.stdout, ClosedStdout):  # the records would be lost
            raise click.ClickException(
                "cannot write to standard output (it is closed); --json prints the records there"
            )
        self.stop, self.quiet, self.as_json = stop, quiet, as_json
        self.show_bar = not quiet and sys.stderr is not None and sys.stderr.isatty()
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
        if self.as_json:
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
        """One line on stdout; a reader that went away ends the run quietly, any other failure
        (a full disk) ends it with one message. Either way the run stops as for Ctrl-C: what
        is in flight is finished or removed, never an exception thrown through it."""
        if self.stop.stop():
            return
        try:
            click.echo(line)
        except BrokenPipeError:
            self.stop.pipe_closed = True
            silence_stdout()
        except OSError as err:
            self.stop.stdout_error = reason(err)
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
    if stop.stdout_error:
        click.echo(f"Error: cannot write to standard output ({stop.stdout_error})", err=True)
        return ExitCode.FAILED
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


def run_job(
    run: Callable[[Any, Events], Summary],
    request: Any,
    closing: Callable[[Summary], str],
    *,
    quiet: bool = False,
    as_json: bool = False,
) -> ExitCode:
    """One job's run as every command runs it: signals become the stop flag, events become
    progress on stderr (and records JSON lines on stdout), and the summary an exit code, with
    ``closing(summary)`` as the last line."""
    with StopFlag() as stop, Progress(stop, quiet, as_json) as progress:
        summary = run(request, progress)
    return finish(summary, stop, quiet, lambda: closing(summary))
