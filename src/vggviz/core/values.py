"""Checks of option values that need no model: grid, seed, device, shard and output folder.

Torch-free, so that a value that cannot work is refused before anything heavy is imported.
Messages name the value and the rule, not a command-line flag: each error carries ``param``
(the option's name, e.g. ``"grid"``) and the command line adds its own spelling of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from vggviz.core.errors import UsageError
from vggviz.core.text import shown

GRID_MAX = 4096
"""Most rows or columns of a picture grid (a layer has at most 512 channels anyway)."""

SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1
"""``torch.manual_seed``'s accepted range; negative seeds stand for ``2**64 - 1 + seed``."""

SHARD_MAX = 1_000_000
"""Most parts a run can be split into: far more than machines, well below int() trouble."""

_GRID = re.compile(r"([0-9]+)x([0-9]+)")
_DEVICE = re.compile(r"auto|cpu|cuda(?::([0-9]{1,6}))?")
_SHARD = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*")


def _bounded(digits: str, most: int) -> int | None:
    """``int(digits)`` when it is at most ``most``; None when larger. The digits are
    counted before converting, so that huge values never reach ``int()``."""
    significant = digits.lstrip("0")
    if len(significant) > len(str(most)):
        return None
    value = int(significant or "0")
    return value if value <= most else None


def parse_grid(spec: str) -> tuple[int, int] | Literal["all"]:
    """``RxC`` (rows by columns, each 1..GRID_MAX) as ``(rows, cols)``, or ``"all"``.

    Both sides are later clamped to the channels a layer has (``render.grid_shape``).
    """
    text = spec.strip().lower()
    if text == "all":
        return "all"
    match = _GRID.fullmatch(text)
    if match is None:
        raise UsageError(f"{shown(spec)}: expected RxC (like 4x4 or 8x8) or all", param="grid")
    rows, cols = (_bounded(g, GRID_MAX) for g in match.groups())
    if rows is None or cols is None:
        raise UsageError(
            f"{shown(spec)}: expected RxC with at most {GRID_MAX} rows and {GRID_MAX} columns",
            param="grid",
        )
    if rows < 1 or cols < 1:
        raise UsageError(
            f"{shown(spec)}: expected RxC with at least 1 row and 1 column", param="grid"
        )
    return rows, cols


def check_seed(seed: int) -> int:
    """``seed`` if ``torch.manual_seed`` accepts it (a RuntimeError there otherwise)."""
    if not SEED_MIN <= seed <= SEED_MAX:
        raise UsageError(
            f"{shown(str(seed), quote=False)}: a seed must be between {SEED_MIN} and {SEED_MAX}",
            param="seed",
        )
    return seed


def parse_device(spec: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, normalised (``CUDA:01`` -> ``cuda:1``).

    Syntax only: whether the device exists is ``models.resolve_device``'s question.
    """
    text = spec.strip().lower()
    match = _DEVICE.fullmatch(text)
    if match is None:
        raise UsageError(f"{shown(spec)}: expected auto, cpu, cuda or cuda:N", param="device")
    index = match.group(1)
    return f"cuda:{int(index)}" if index is not None else text


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (1-based: ``1/4`` .. ``4/4``, N at most SHARD_MAX) as ``(K, N)``."""
    match = _SHARD.fullmatch(text)
    if match is None:
        raise UsageError(f"shard must look like K/N, e.g. 1/4; got {shown(text)}", param="shard")
    k, n = _bounded(match.group(1), SHARD_MAX), _bounded(match.group(2), SHARD_MAX)
    if n is None:
        raise UsageError(
            f"shard count N must be at most {SHARD_MAX}; got {shown(text)}", param="shard"
        )
    if n < 1:
        raise UsageError(f"shard count N must be at least 1; got {shown(text)}", param="shard")
    if k is None or not 1 <= k <= n:
        raise UsageError(
            f"shard number K must be between 1 and N ({n}); got {shown(text)}", param="shard"
        )
    return k, n


def check_output_dir(text: str | os.PathLike[str]) -> Path:
    """The output folder as a Path, refusing the two that a script means by mistake: an empty
    name (an unset variable, ``-o "$OUT"``), which would write into the current folder, and
    the root folder (``-o "$OUT/"``), where a folder per image and an index would land."""
    name = os.fspath(text)
    if name == "":
        raise UsageError(
            "an empty folder name (an unset shell variable?); name the folder", param="output_dir"
        )
    if os.path.realpath(name) == os.path.realpath(os.sep):
        raise UsageError(
            f"{shown(name)} is the root folder; give vggviz a folder of its own",
            param="output_dir",
        )
    return Path(name)
