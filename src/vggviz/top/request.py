"""What ``vggviz top`` is asked to do and what it reports: the request the command line
builds, the options that shape a scan, the events a run sends as it goes and its result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vggviz.core.errors import UsageError
from vggviz.core.vocabulary import REDUCES, ModelSpec

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


class TopEvents:
    """What a top run tells its caller as it goes; the default ignores everything."""

    def phase(self, name: str, total: int, done: int = 0) -> None:
        """A phase begins: ``scan`` (inputs), ``crops`` (inputs run again) or ``pictures``
        (channels drawn)."""

    def advance(self, count: int = 1) -> None:
        """``count`` more items of the current phase are finished."""

    def failed(self, message: str) -> None:
        """One input could not be used (the run goes on)."""

    def note(self, message: str) -> None:
        """Something worth a line: resuming, starting over, a scan already complete."""


@dataclass
class TopResult:
    scanned: int  # inputs whose values are in the result
    failed: list[str] = field(default_factory=list)  # one message per input that failed
    scan_dir: Path | None = None  # a shard's partial result
    top_json: Path | None = None
    index: Path | None = None  # None for a shard's partial result


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
