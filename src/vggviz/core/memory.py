"""Will a run fit in memory? An upper bound on a run's peak memory (``features``, and ``top``'s
scan and pass 2), worked out from the architecture's channel table before anything is loaded,
and the memory there is.

Torch-free: a ``--size`` whose maps cannot fit is refused in a fraction of a second, instead
of after loading torch and the model, filling the machine and dying in a RuntimeError.

The bound counts what the features engine holds at its worst moment (``features/engine.py``):

- network mode: every selected layer's map of the batch, cloned by the hooks and waiting for
  the drawing thread (which is slower than the forward at large sizes), plus about one more
  map of the widest layer for the forward's own tensors;
- chain mode: every map is at full resolution, but at most a few wait to be drawn; the peak
  is a handful of maps of the widest full-resolution layer;
- drawing: with ``tiles`` channels per picture, a copy of those channels in a few forms, and
  every layer's finished picture, which may all wait for the PNG encoder at once.

The constants come from peak RSS measured with ``/usr/bin/time -v`` over VGG16-BN and
VGG19-BN runs from 32 to 1344 px, batches of 1-4, chain mode to 672 px, ``--grid all``,
``--save-raw`` and a 4:1 panorama (NOTES-harden.md): the estimate came out 1.10-1.31 times
the measured peak. ``tests/test_memory.py`` checks the bound against a real run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vggviz.core import vocabulary
from vggviz.core.errors import InputError, UsageError

GB = 1e9

BASELINE = 700 * 10**6
"""Python, torch, numpy, Pillow and a memory-mapped VGG16-BN before any image: 664 MB
measured for a 32 px run."""

FORWARD_COPIES = 1.0
"""Maps of the widest layer the forward holds beyond the held maps (its input, BatchNorm's
output, oneDNN's reordered copies), per image."""

CHAIN_COPIES = 3.75
"""Full-resolution maps of the widest layer alive at once in chain mode (3.1-3.7 measured):
the two or three waiting to be drawn and the conv's input and output."""

RAW_COPIES = 2.0
"""``--save-raw``: the maps wait a little longer for the npz (1.8 widest maps measured)."""

DRAW_COPIES = 2.0
"""The drawn channels of one map, copied and converted while a picture is made."""


def _layer_maps(arch: str, height: int, width: int, mode: str) -> list[tuple[int, int, int]]:
    """(channels, height, width) of every conv layer's map for a ``height`` x ``width``
    input."""
    out = []
    for block, widths in enumerate(vocabulary.blocks(arch)):
        # network mode pools after each block (floor division, as MaxPool2d(2, 2) does)
        h, w = (height, width) if mode == "chain" else (height >> block, width >> block)
        out.extend((c, h, w) for c in widths)
    return out


def _picture_bytes(channels: int, h: int, w: int, tiles: int) -> int:
    """RGB bytes of one layer picture: small maps are enlarged to about 224 px, large ones
    reduced to at most 768, and a row never passes 3600 px. The encoder threads may still
    hold every layer's picture when the last is drawn."""
    side = min(max(h, w, vocabulary.TILE_TARGET), vocabulary.TILE_MAX)
    shown = min(tiles, channels)
    return 3 * min(vocabulary.GRID_WIDTH**2, shown * side * side)


def estimate_peak_bytes(
    arch: str,
    height: int,
    width: int,
    *,
    batch_size: int = 1,
    mode: str = "network",
    save_raw: bool = False,
    layers: int | None = None,
    tiles: int | None = 16,
    baseline: bool = True,
) -> int:
    """An upper bound on the peak memory (bytes) of a ``features`` run over ``height`` x
    ``width`` images (after resizing): ``batch_size`` images at a time, conv layers up to
    the ``layers``-th (all by default), ``tiles`` channels drawn per layer picture (rows x
    columns; None for ``all``).

    ``baseline=False`` leaves out torch and the model, for a check of one more image in a
    process that holds them already. Maps count as float32 whatever the precision: the
    drawing side converts them.
    """
    _check_arch(arch, mode)
    maps = _layer_maps(arch, height, width, mode)[:layers]
    tiles = tiles if tiles is not None else max((c for c, _, _ in maps), default=0)
    sizes = [4 * c * h * w for c, h, w in maps]  # float32 bytes of each map, one image
    widest = max(sizes, default=0)
    if mode == "chain":
        held = CHAIN_COPIES * widest * batch_size
    else:
        held = (sum(sizes) + FORWARD_COPIES * widest) * batch_size
    drawing = DRAW_COPIES * max((4 * min(tiles, c) * h * w for c, h, w in maps), default=0)
    pictures = sum(_picture_bytes(c, h, w, tiles) for c, h, w in maps)
    raw = RAW_COPIES * widest if save_raw else 0
    return int((BASELINE if baseline else 0) + held + drawing + pictures + raw)


def _check_arch(arch: str, mode: str) -> None:
    if arch not in vocabulary.ARCHS:
        raise UsageError(
            f"unknown {arch!r}: expected one of {', '.join(vocabulary.ARCHS)}", param="arch"
        )
    if mode not in vocabulary.MODES:
        raise UsageError(f"{mode!r}: expected one of {', '.join(vocabulary.MODES)}", param="mode")


def available_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, or less when a cgroup limit (a
    container, a SLURM job) leaves less. None when neither can be read."""
    found = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    return min(found) if found else None


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int | None:
    """The tightest limit minus usage among this process's cgroup and its parents (v2 and
    v1); None when no limit is set or none can be read."""
    rooms = []
    for folder in _cgroup_folders(Path(root), Path(proc)):
        for limit_name, usage_name in (
            ("memory.max", "memory.current"),  # v2
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),  # v1
        ):
            limit = _read_int(folder / limit_name)
            if limit is None or limit >= 1 << 60:  # "max", or v1's "no limit" (~2**63)
                continue
            usage = _read_int(folder / usage_name) or 0
            rooms.append(max(limit - usage, 0))
    return min(rooms) if rooms else None


def _cgroup_folders(root: Path, proc: Path) -> list[Path]:
    """This process's cgroup folders (v2 unified and v1 memory), innermost first, up to
    ``root``."""
    try:
        lines = proc.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError:
        return []
    folders = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # v2; under root/unified on hybrid (v1 + v2) systems
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
        elif "memory" in controllers.split(","):
            base = root / "memory"
        else:
            continue
        folder = base / rel.lstrip("/")
        while True:
            folders.append(folder)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return folders


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def check_image_fits(
    path: object, width: int, height: int, size: int, estimate: Callable[[int, int], int]
) -> None:
    """A run is checked for ``size`` x ``size`` images before it starts; one image resized to
    ``width`` x ``height`` (a panorama, up to 4x longer) that cannot fit is that image's error
    (InputError), not the death of the run. ``estimate(height, width)``: the job's peak for one
    such image, without the baseline."""
    if width * height <= size * size or check_disabled():
        return
    extra = estimate(height, width) - estimate(size, size)
    room = available_bytes()
    if room is not None and extra > room:
        raise InputError(
            str(path),
            f"a {width}x{height} image needs about {extra / GB:.1f} GB more memory "
            f"than the {room / GB:.1f} GB available",
        )


def check_fits(estimate: int, available: int | None, *, what: str = "this run") -> None:
    """Refuse (UsageError) an estimate above the memory available; nothing to check when
    the available memory is unknown."""
    if available is None or estimate <= available:
        return
    raise UsageError(
        f"{what} needs about {estimate / GB:.1f} GB of memory but {available / GB:.1f} GB "
        f"is available; use a smaller size or batch, or set {FORCE_ENV}=1 to try anyway",
        param="size",
    )


def estimate_scan_bytes(
    arch: str, height: int, width: int, *, batch_size: int = 1, baseline: bool = True
) -> int:
    """An upper bound on the peak memory (bytes) of a ``top`` run over ``height`` x ``width``
    images: its scan keeps no map (hooks reduce each at once) but the forward's own tensors
    for a batch; pass 2 keeps every conv layer's map of one image at once."""
    maps = _layer_maps(arch, height, width, "network")
    sizes = [4 * c * h * w for c, h, w in maps]
    widest = max(sizes, default=0)
    scan = (1 + FORWARD_COPIES) * widest * batch_size
    rerun = sum(sizes) + FORWARD_COPIES * widest
    return int((BASELINE if baseline else 0) + max(scan, rerun))


def check_scan_memory(arch: str, size: int, *, batch_size: int = 1) -> int:
    """:func:`check_memory` for a ``top`` run (see :func:`estimate_scan_bytes`)."""
    _check_arch(arch, "network")
    estimate = estimate_scan_bytes(arch, size, size, batch_size=batch_size)
    if not check_disabled():
        check_fits(estimate, available_bytes(), what=f"a run at {size}x{size} pixels")
    return estimate


def check_memory(
    arch: str,
    size: int,
    *,
    batch_size: int = 1,
    mode: str = "network",
    save_raw: bool = False,
    layers: int | None = None,
    tiles: int | None = 16,
    force: bool = False,
) -> int:
    """Refuse (UsageError naming both numbers) a run over ``size`` x ``size`` images whose
    estimated peak exceeds the memory available, unless ``force`` or :data:`FORCE_ENV`.
    Returns the estimate in bytes."""
    estimate = estimate_peak_bytes(
        arch,
        size,
        size,
        batch_size=batch_size,
        mode=mode,
        save_raw=save_raw,
        layers=layers,
        tiles=tiles,
    )
    if not (force or check_disabled()):
        check_fits(estimate, available_bytes(), what=f"a run at {size}x{size} pixels")
    return estimate


FORCE_ENV = "VGGVIZ_NO_MEMORY_CHECK"
"""Set (to anything but empty or 0) to skip :func:`check_fits`, e.g. where swap is plenty."""


def check_disabled(environ: dict[str, str] | None = None) -> bool:
    """Whether the user switched the memory check off through :data:`FORCE_ENV`."""
    value = (os.environ if environ is None else environ).get(FORCE_ENV, "")
    return value not in ("", "0")
