"""What ``vggviz explain`` is asked to do: the request the command line builds, and the names
of the files it writes. A run reports through :class:`vggviz.core.lifecycle.Events` and
returns a :class:`vggviz.core.lifecycle.Summary`, as every job does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vggviz.core.errors import UsageError
from vggviz.core.vocabulary import STAGES, ModelSpec

JOB = "explain"
PICTURE = "explain.png"
RAW = "cams.npz"
TOP_MAX = 20
"""Most classes explained per photo (``-k`` or ``--class``): each costs a backward, a forward
of the deletion check and a panel of the picture."""


@dataclass(frozen=True)
class Request:
    """Everything ``vggviz explain`` was asked to do (the command line's options, parsed)."""

    images: Sequence[str]
    out_dir: Path = Path("outputs")
    model: ModelSpec = field(default_factory=ModelSpec)
    top: int = 3  # the K most probable classes, predicted and (without classes) explained
    classes: Sequence[str] = ()  # names or indices to explain instead of the top K
    labels: str | None = None  # a file of class names, one a line
    layer: str | None = None  # None: the last conv
    stage: str = "relu"
    size: int = 224
    normalize: bool = True
    save_raw: bool = False
    deletion_check: bool = True  # False: no deletion check (K + 1 fewer forwards a photo)
    batch_size: int = 1
    skip_existing: bool = False
    shard: str | None = None

    def check(self) -> None:
        """Refuse values that cannot work, before anything is loaded; each error's ``param``
        names the option."""
        if not 1 <= self.top <= TOP_MAX:
            raise UsageError(f"{self.top}: expected 1 to {TOP_MAX} classes", param="k")
        if len(set(self.classes)) > TOP_MAX:
            raise UsageError(
                f"{len(set(self.classes))} classes: at most {TOP_MAX} per run", param="class"
            )
        if self.stage not in STAGES:
            raise UsageError(f"{self.stage!r}: expected one of {', '.join(STAGES)}", param="stage")
        if self.batch_size < 1:
            raise UsageError(f"{self.batch_size}: need at least 1", param="batch_size")


@dataclass(frozen=True)
class Names:
    """The head's class names, one per output, and where they come from: ``imagenet``,
    ``checkpoint``, ``labels`` (a file) or ``numbers`` (``class 0``, ``class 1``, ...)."""

    names: Sequence[str]
    source: str


def is_owned(name: str) -> bool:
    """Whether a file of an image folder is one ``explain`` writes (and so may replace)."""
    return name in (PICTURE, RAW)
