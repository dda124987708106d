"""What ``vggviz top`` is asked to do: the request the command line builds and the options
that shape a scan. A run reports through :class:`vggviz.core.lifecycle.Events` and returns a
:class:`vggviz.core.lifecycle.Summary`, as every job does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vggviz.core.errors import UsageError
from vggviz.core.text import shown
from vggviz.core.vocabulary import REDUCES, ModelSpec

JOB = "top"
TOP_JSON = "top.json"
MATRIX_DIR = "top-matrix"
SCRATCH_PREFIX = ".top-crops-"  # pass 2's scratch folders, beside the outputs


@dataclass(frozen=True)
class TopOptions:
    """Everything about a top run except the model and the inputs."""

    stage: str = "relu"
    reduce: str = "max"
    k: int = 9
    size: int = 224
    normalize: bool = True
    highlight: bool = False
    batch_size: int = 1
    checkpoint_every: int = 100

    def check(self) -> None:
        """Refuse values that cannot work; each error's ``param`` names the option."""
        if self.reduce not in REDUCES:
            raise UsageError(
                f"{shown(self.reduce)}: expected one of {', '.join(REDUCES)}", param="reduce"
            )
        for name in ("k", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if value < 1:
                raise UsageError(f"{value}: need at least 1", param=name)


@dataclass(frozen=True)
class TopRequest:
    """Everything ``vggviz top`` was asked to do (the command line's options, parsed)."""

    images: Sequence[str]
    out_dir: Path = Path("outputs")
    model: ModelSpec = field(default_factory=ModelSpec)
    layers: str = "all"
    options: TopOptions = field(default_factory=TopOptions)
    shard: str | None = None
    merge: bool = False
