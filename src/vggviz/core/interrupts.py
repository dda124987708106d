"""Where a signal may interrupt at once, and what a stop asked for before a run's work is.

The command line turns SIGINT and SIGTERM into a request to stop, from the very start of the
process, and never into an exception thrown wherever the interpreter happens to be: thrown
into ``import torch`` or a native call (OpenMP, oneDNN initialisation), a KeyboardInterrupt
could end in SIGABRT (exit 134). The request is polled at safe points instead: before and
after loading the model (``core/lifecycle``), between the steps of a run (the engines).

A few steps may take minutes and are safe to leave by an exception (a download, hashing a
copied file: Python code that cleans up after itself); they run inside :func:`interruptible`,
where a signal raises KeyboardInterrupt at once, so that Ctrl-C stays prompt there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Stopped(KeyboardInterrupt):
    """A stop was asked for (Ctrl-C, SIGTERM) before the run began its work: it ends at a safe
    point, having written nothing."""


class _State:
    sections = 0  # interruptible blocks entered and not left
    asked = False  # a signal arrived since the handler was installed


def reset() -> None:
    """A new stop flag is installed: no signal seen yet."""
    _State.asked = False


def signalled() -> bool:
    """For the signal handler: note the signal; True when it should raise KeyboardInterrupt
    now (inside an :func:`interruptible` block)."""
    _State.asked = True
    return _State.sections > 0


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A block a signal may interrupt at once (see the module's docstring); a signal that
    arrived before it ends it before it starts."""
    if _State.asked:
        raise Stopped
    _State.sections += 1
    try:
        yield
    finally:
        _State.sections -= 1
