"""vggviz's own exceptions: each message is one line meant for the user."""

from __future__ import annotations

from pathlib import Path


class VggvizError(Exception):
    """Base class; the CLI prints ``str(err)`` and exits 1.

    ``param`` names the option the error is about (``"device"``, ``"grid"``, ...) when there
    is one: messages never spell a command-line flag, the command line adds it (for a
    usage error, as click's ``param_hint``).
    """

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self.param = param


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
        super().__init__(f"{self.path}: {reason}")


class OutputError(VggvizError):
    """The run's own outputs (folder, manifest, index, filters picture) cannot be written."""
