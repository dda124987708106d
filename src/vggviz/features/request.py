"""What ``vggviz features`` is asked to do: the request the command line builds, and the
picture options it stands for. A run reports through :class:`vggviz.core.lifecycle.Events`
and returns a :class:`vggviz.core.lifecycle.Summary`, as every job does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vggviz.core.vocabulary import STYLE_DEFAULTS, ModelSpec

JOB = "features"


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
