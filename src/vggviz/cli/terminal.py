"""Process policy for the commands, the same for every job: exit codes, the stop flag that
SIGINT and SIGTERM set, progress bars, errors and notes on stderr, JSON lines on stdout, a
reader that went away, and the closing line.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import signal
import sys
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any, TextIO

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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit): stop as cleanly as for Ctrl-C."""


def on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated


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


class StopFlag:
    """SIGINT and SIGTERM become a request to stop, polled by the job between steps, once the
    job is running (:meth:`Progress.start`); before that (imports, model loading) they
    interrupt as usual. One flag for every job: a stop is never an exception thrown into the
    middle of a step, so nothing is left half-written and no traceback is printed."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.running = False
        self.pipe_closed = False
        self.stdout_error: str | None = None  # stdout failed otherwise (a full disk)

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
        return self.received is not None or self.pipe_closed or self.stdout_error is not None


_LABELS = {"crops": "crops (inputs run again)", "pictures": "pictures (channels)"}


class Progress(Events):
    """A run's events on stderr: a progress bar per phase (on a terminal), errors always,
    notes unless quiet; with ``as_json`` each record as one line on stdout. Asks the
    :class:`StopFlag` whether to stop."""

    def __init__(self, stop: StopFlag, quiet: bool = False, as_json: bool = False) -> None:
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


class GuardedStderr(io.TextIOBase):
    """``sys.stderr`` that never raises: once its reader is gone (a closed pipe, a full
    disk), messages are dropped and the run goes on; its exit code still tells how it went.
    Without it, a progress bar or an error line written to a reader that left would end the
    run with an exception in the middle of its work."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self._stream.errors

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return not self.gone and self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self._stream.write(text)  # bytes raise TypeError, as click's probe expects
            except OSError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except OSError:
                self._drop()

    def _drop(self) -> None:
        self.gone = True
        _to_devnull(self._stream)  # what is still buffered (and any C library) goes nowhere


def guard_stderr() -> None:
    """Make ``sys.stderr`` a :class:`GuardedStderr` (once, for the console entry point)."""
    if sys.stderr is not None and not isinstance(sys.stderr, GuardedStderr):
        sys.stderr = GuardedStderr(sys.stderr)


class ClosedStdout(io.TextIOBase):
    """``sys.stdout`` when file descriptor 1 was closed at start (cron's ``>&-``): whatever is
    written meets a reader that is gone, as with a closed pipe (the run stops, exit 141)."""

    encoding = "utf-8"
    errors = "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1  # /dev/null by now (open_standard_streams)

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "standard output is closed")


def open_standard_streams() -> None:
    """Standard streams closed at start (``<&- >&- 2>&-``) become /dev/null on their file
    descriptors, so that no file the run opens can take descriptor 0, 1 or 2 (where a C
    library's message, or a print, would land in a picture). Then: a closed stdin is
    ``sys.stdin = None`` (reading ``-`` is an error line), a closed stdout a reader that is
    gone (:class:`ClosedStdout`), a closed stderr a place where messages are dropped."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if 1 in closed or sys.stdout is None:
        sys.stdout = ClosedStdout()
    if 2 in closed or sys.stderr is None:
        with contextlib.suppress(OSError):  # /dev/null, open for the life of the process
            sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115


def _to_devnull(stream: TextIO) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def silence_stdout() -> None:
    """Point stdout at /dev/null so that nothing more (not even the final flush) fails."""
    _to_devnull(sys.stdout)
