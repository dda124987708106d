"""vggviz's own exceptions: each message is one line meant for the user."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vggviz.core.text import display

Spell = Callable[..., str]
"""How a caller writes an option: ``spell(name)`` for a flag, ``spell(name, value)``."""


def python_spelling(name: str, value: object = None) -> str:
    """Options as the library's callers write them: ``trust_checkpoint=True``, ``arch='vgg11'``."""
    return f"{name}=True" if value is None else f"{name}={value!r}"


class VggvizError(Exception):
    """Base class; the CLI prints ``str(err)`` and exits 1.

    ``param`` names the option the error is about (``"device"``, ``"grid"``, ...) when there
    is one: messages never spell a command-line flag, the command line adds it (for a
    usage error, as click's ``param_hint``). A message that names other options as the way
    out is built by ``ways_out(spell)``: ``str(err)`` spells them as Python arguments, and the
    command line calls :meth:`spelled` with its flags.
    """

    def __init__(
        self,
        *args: object,
        param: str | None = None,
        ways_out: Callable[[Spell], str] | None = None,
    ) -> None:
        if ways_out is not None and not args:
            args = (ways_out(python_spelling),)
        super().__init__(*args)
        self.param = param
        self.ways_out = ways_out

    def spelled(self, spell: Spell) -> str:
        """The message with the options it names written by ``spell``."""
        return self.ways_out(spell) if self.ways_out is not None else str(self)


class UsageError(VggvizError):
    """An option value that cannot work (the CLI exits 2)."""


class WeightsError(VggvizError):
    """Weights that cannot be found, downloaded or loaded into the chosen architecture."""


class DeviceError(VggvizError):
    """A device that was asked for but is not available."""


class InputError(VggvizError):
    """One input image that cannot be used; the batch goes on without it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{display(self.path)}: {reason}")  # one line, whatever the name


class OutputError(VggvizError):
    """The run's own outputs (folder, manifest, index, filters picture) cannot be written."""
