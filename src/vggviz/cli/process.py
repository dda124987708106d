"""What the process holds from the first line of ``main()``: signals as a request to stop,
and standard streams that are closed, or whose readers go away. Standard library only, so
that it is in place before click, numpy or torch are imported."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys
from typing import ClassVar, TextIO

from vggviz.core import interrupts


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit) inside an interruptible block: stop as for Ctrl-C."""


class StopFlag:
    """SIGINT and SIGTERM become a request to stop, never an exception thrown into whatever
    runs (an import, a native call, a step of the run): the run polls :meth:`stop` at safe
    points, so that nothing is left half-written and no traceback is printed. Inside
    :func:`vggviz.core.interrupts.interruptible` (a download) a signal raises at once.

    ``main()`` installs one for the whole process before anything is imported; a command's
    ``with StopFlag() as stop`` then gets that one (and installs its own when called without
    ``main()``, as tests do)."""

    current: ClassVar[StopFlag | None] = None

    def __init__(self) -> None:
        self.received: int | None = None
        self.pipe_closed = False
        self.stdout_error: str | None = None  # stdout failed otherwise (a full disk)
        self._old: dict[int, object] = {}

    def install(self) -> StopFlag:
        interrupts.reset()
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        StopFlag.current = self
        return self

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            # after a stop was asked for, more Ctrl-C while the run winds down change nothing
            signal.signal(sig, signal.SIG_IGN if self.received else old)  # type: ignore[arg-type]
        self._old = {}
        if StopFlag.current is self:
            StopFlag.current = None

    def __enter__(self) -> StopFlag:
        return StopFlag.current or self.install()

    def __exit__(self, *_exc: object) -> None:
        if self._old:
            self.uninstall()

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = self.received or signum
        if interrupts.signalled():  # a download: safe to leave at once
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def stop(self) -> bool:
        return self.received is not None or self.pipe_closed or self.stdout_error is not None


def stop_point() -> None:
    """A safe point of a command: a stop asked for so far ends it here."""
    if StopFlag.current is not None and StopFlag.current.received:
        raise interrupts.Stopped


# --- standard streams -------------------------------------------------------------------------


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
