"""The names ``vggviz features`` gives its files; the rest of the output folder's contract
(records, claims, folder names) is every per-image job's, in :mod:`vggviz.core.folders`."""

from __future__ import annotations

import re
from typing import TypedDict

OVERVIEW = "overview.png"
RAW = "maps.npz"
_PICTURE = re.compile(r"^\d\d-conv\d+\.png$")


def picture_name(index: int, alias: str) -> str:
    """``01-conv1.png``: file names sort in layer order."""
    return f"{index:02d}-{alias}.png"


def filters_name(alias: str, view: str) -> str:
    return f"filters-{alias}{'' if view == 'rgb' else f'-{view}'}.png"


def owns(name: str) -> bool:
    """Whether a file of an image folder is one ``features`` writes (and so may replace)."""
    return name in (OVERVIEW, RAW) or bool(_PICTURE.match(name))


class LayerStats(TypedDict):
    """One layer of an image's record."""

    name: str
    module: str
    shape: list[int]
    mean: float | None  # None when the map holds NaN or Inf (see ``nonfinite``)
    max: float | None
    zero_fraction: float
    nonfinite: bool
    channels: list[int]
    picture: str
