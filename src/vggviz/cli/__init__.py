"""The command line: parse options, call the library, map its errors to exit codes.

``commands`` holds the click group and its commands, ``params`` the shared option
declarations, ``terminal`` exit codes, progress and JSON output, ``process`` what the process
holds from its first line (signals as a stop flag, standard streams); this module is the
console entry point. It imports only the standard library until the stop flag is in place:
from then on no signal raises inside an import. torch is imported only inside commands that
run a model, so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from typing import Any

from vggviz.cli.process import StopFlag, guard_stderr, open_standard_streams, silence_stdout

__all__ = ["cli", "main"]


def __getattr__(name: str) -> Any:
    if name == "cli":  # the click group, imported on first use (after main's stop flag)
        from vggviz.cli.commands import cli

        return cli
    raise AttributeError(f"module 'vggviz.cli' has no attribute {name!r}")


def main() -> None:
    """Console entry point: exit codes 0 ok, 1 failed inputs or errors, 2 usage, 130 Ctrl-C,
    141 stdout closed early, 143 SIGTERM."""
    # First, before anything is imported: a signal is a request to stop from now on, never a
    # KeyboardInterrupt thrown into torch's or OpenMP's initialisation (which aborted, 134).
    stop = StopFlag().install()
    open_standard_streams()  # cron's <&- >&- 2>&-: before any file is opened
    guard_stderr()  # a reader of stderr that goes away never stops the work
    # Before torch loads OpenMP: its idle threads sleep instead of spinning, which on a busy
    # 2-core machine halved the CPU time of a folder run (the drawing threads need the cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import click

    from vggviz.cli.commands import cli
    from vggviz.cli.terminal import ExitCode, reason

    try:
        if stop.received:  # during the imports above: nothing begun, nothing to undo
            raise KeyboardInterrupt
        code = cli.main(prog_name="vggviz", standalone_mode=False)
    except SystemExit as done:  # commands that set their own exit code
        code = done.code
    except click.ClickException as err:
        err.show()
        code = err.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sigterm = stop.received == signal.SIGTERM
        code = ExitCode.TERMINATED if sigterm else ExitCode.INTERRUPTED
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


def _flush(code: int) -> int:
    """Flush stdout now, where its errors can still be told apart and reported."""
    import click

    from vggviz.cli.terminal import ExitCode, reason

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
