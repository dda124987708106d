"""What ``vggviz features`` is asked to do and what it reports: the request the command line
builds, the hooks through which a run talks back, its summary, and the identity of the
weights and the picture options that a finished image's fingerprint holds."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vggviz.core.folders import Record
from vggviz.core.vocabulary import IMAGENET_FILES, STYLE_DEFAULTS, ModelSpec


@dataclass(frozen=True)
class Request:
    """Everything ``vggviz features`` was asked to do (the CLI's options, parsed)."""

    images: Sequence[str]
    out_dir: Path = Path("outputs")
    model: ModelSpec = field(default_factory=ModelSpec)
    mode: str = "network"
    stage: str = "relu"
    size: int = 224
    normalize: bool = True
    layers: str = "all"
    select: str | None = None  # None: the mode's default (STYLE_DEFAULTS)
    grid: str = "4x4"
    cmap: str | None = None
    scale: str | None = None
    overlay: bool = False
    overview: bool = True
    filters: bool = True
    save_raw: bool = False
    batch_size: int = 1
    skip_existing: bool = False
    shard: str | None = None


@dataclass
class Summary:
    """How a run went, for the closing line and the exit code."""

    total: int  # inputs this run (or shard) had to do
    ok: int = 0
    error: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # folders that could not be listed
    complete: bool = True  # False: stopped early (a signal, a full disk, stdout gone)
    disk_full: str | None = None
    index: Path | None = None
    manifest: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.ok + self.error + self.skipped

    def line(self) -> str:
        return f"{self.ok} done, {self.error} failed, {self.skipped} skipped"


@dataclass(frozen=True)
class Hooks:
    """How the job talks back to its caller while it runs."""

    on_record: Callable[[Record], None] = lambda _record: None
    on_start: Callable[[int], None] = lambda _total: None  # model loaded, N inputs to go
    on_note: Callable[[str], None] = lambda _text: None
    should_stop: Callable[[], bool] = lambda: False


def style_for(request: Request) -> dict[str, Any]:
    """The picture options, with the mode's defaults where none were given."""
    defaults = STYLE_DEFAULTS[request.mode]
    return {
        "select": request.select or defaults["select"],
        "grid": request.grid.strip().lower(),
        "cmap": request.cmap or defaults["cmap"],
        "scale": request.scale or defaults["scale"],
        "overlay": request.overlay,
    }


def weights_identity(arch: str, weights: str, seed: int) -> str:
    """What the weights are, for the fingerprint: a file is known by path, size and mtime."""
    if weights == "random":
        return f"random:{seed}"
    if weights == "imagenet":
        return f"imagenet:{IMAGENET_FILES[arch]}"
    try:
        st = os.stat(weights)
    except OSError:
        return f"file:{weights}"
    return f"file:{os.path.realpath(weights)}:{st.st_size}:{st.st_mtime_ns}"
