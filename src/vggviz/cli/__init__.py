"""The command line: parse options, call the library, map its errors to exit codes.

``commands`` holds the click group and its commands, ``params`` the shared option
declarations, ``terminal`` exit codes, the stop flag, progress and JSON output; this module
is the console entry point. torch is imported only inside commands that run a model, so
``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys

import click

from vggviz.cli import terminal
from vggviz.cli.commands import cli
from vggviz.cli.terminal import ExitCode, Terminated, on_sigterm, reason, silence_stdout

__all__ = ["cli", "main"]


def main() -> None:
    """Console entry point: exit codes 0 ok, 1 failed inputs or errors, 2 usage, 130 Ctrl-C,
    141 stdout closed early, 143 SIGTERM."""
    terminal.stdout_closed = _reopen_closed_streams()
    signal.signal(signal.SIGTERM, on_sigterm)
    # Before torch loads OpenMP: its idle threads sleep instead of spinning, which on a busy
    # 2-core machine halved the CPU time of a folder run (the drawing threads need the cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        code = cli.main(prog_name="vggviz", standalone_mode=False)
    except SystemExit as done:  # commands that set their own exit code
        code = done.code
    except click.ClickException as err:
        err.show()
        code = err.exit_code
    except (click.Abort, KeyboardInterrupt) as stop:
        click.echo("interrupted", err=True)
        terminated = isinstance(stop.__cause__ or stop, Terminated)
        code = ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        code = ExitCode.PIPE_CLOSED  # vggviz ... | head: end quietly, as cat does
    except OSError as err:  # stdout on a full device, say
        click.echo(f"Error: cannot write to standard output ({reason(err)})", err=True)
        code = ExitCode.FAILED
    code = int(code) if isinstance(code, int) else ExitCode.OK
    code = _flush(code)
    if "torch" in sys.modules:
        _exit_now(code)
    sys.exit(code)


def _reopen_closed_streams() -> bool:
    """Put /dev/null on standard descriptors the process was started without (``2>&-``),
    and Python's streams on them. Otherwise the first file the run opens (a lock, a PNG)
    would take descriptor 1 or 2 and receive whatever is printed, and every message would
    fail with a traceback. Returns whether stdout was closed."""
    closed_stdout = False
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:  # the lowest free descriptor is fd when those below are open
                os.dup2(null, fd)
                os.close(null)
            closed_stdout = closed_stdout or fd == 1
        if getattr(sys, name) is None:  # Python found it closed at start-up
            mode = "r" if fd == 0 else "w"  # open for the process's life: no context manager
            stream = open(fd, mode, closefd=False, errors="backslashreplace")  # noqa: SIM115
            setattr(sys, name, stream)
    return closed_stdout


def _flush(code: int) -> int:
    """Flush stdout now, where its errors can still be told apart and reported."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        return code or ExitCode.PIPE_CLOSED
    except OSError as err:
        silence_stdout()
        click.echo(f"Error: cannot write to standard output ({reason(err)})", err=True)
        return code or ExitCode.FAILED
    return code


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown, which takes 1.5-2 s once torch is loaded.

    Safe here: every output file is closed and renamed, and every worker thread joined,
    before a command returns. What is left: the exit handlers (a few ms; matplotlib's
    removes the temporary config folder it makes where $HOME is not writable) and the
    standard streams.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):  # exiting already: nothing left to stop
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(int(code))
