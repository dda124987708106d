"""What ``vggviz top`` is asked to do: the request the command line builds and the options
that shape a scan. A run reports through :class:`vggviz.core.lifecycle.Events` and returns a
:class:`vggviz.core.lifecycle.Summary`, as every job does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vggviz.core.errors import UsageError
from vggviz.core.vocabulary import REDUCES, ModelSpec

JOB = "top"
TOP_JSON = "top.json"
MATRIX_DIR = "top-matrix"


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
        if self.reduce not in REDUCES:
            raise UsageError(f"--reduce {self.reduce!r}: expected one of {', '.join(REDUCES)}")
        if self.k < 1:
            raise UsageError(f"--top {self.k}: need at least 1")
        if self.batch_size < 1 or self.checkpoint_every < 1:
            raise UsageError("batch size and checkpoint interval must be at least 1")


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
