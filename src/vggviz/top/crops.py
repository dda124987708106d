"""Pass 2 of ``vggviz top``: run each chosen input once more, check it still gives the value
the scan recorded, and cut the receptive field of its winning unit out of the resized photo;
the pages, strips and index are drawn from them by :mod:`vggviz.top.pictures`.

A layer's crops can be large (VGG16 conv13: 512 channels x 9 crops of 196 x 196 px, 530 MB),
so they wait in scratch files beside the outputs, not in memory, and are read back a group
of channels at a time for drawing.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vggviz.core import images
from vggviz.core.errors import InputError
from vggviz.core.inputs import InputItem
from vggviz.model.hooks import finite, network_maps
from vggviz.model.layers import ConvLayer
from vggviz.model.loading import LoadedModel
from vggviz.model.receptive import ReceptiveField, layer_field
from vggviz.top.ranking import NO_INPUT, TopK
from vggviz.top.request import SCRATCH_PREFIX

if TYPE_CHECKING:
    from vggviz.core.lifecycle import Events
    from vggviz.top.request import TopOptions

RELATIVE_TOLERANCE = 1e-3


class CropStore:
    """One layer's crops, (C, K, S, S, 3) uint8, and with heat (C, K, S, S) as uint8, in
    scratch files written at their offsets and read back by channel range."""

    def __init__(self, path: Path, channels: int, k: int, size: int, heat: bool) -> None:
        self.k, self.size = k, size
        self._crop_bytes = size * size * 3
        self._file = open(path, "w+b")  # noqa: SIM115 - closed by close()
        self._file.truncate(channels * k * self._crop_bytes)
        self._heat = open(path.with_suffix(".heat"), "w+b") if heat else None  # noqa: SIM115
        if self._heat:
            self._heat.truncate(channels * k * size * size)

    def put(self, channel: int, rank: int, pixels: np.ndarray, heat: np.ndarray | None) -> None:
        slot = channel * self.k + rank
        self._file.seek(slot * self._crop_bytes)
        self._file.write(np.ascontiguousarray(pixels, np.uint8).tobytes())
        if self._heat is not None and heat is not None:
            self._heat.seek(slot * self.size * self.size)
            self._heat.write(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8).tobytes())

    def get(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Crops (n, K, S, S, 3) and heat (n, K, S, S) float32 in [0, 1] of channels
        ``first`` .. ``stop - 1``."""
        n, s = stop - first, self.size
        self._file.seek(first * self.k * self._crop_bytes)
        pixels = np.frombuffer(self._file.read(n * self.k * self._crop_bytes), np.uint8)
        heat = None
        if self._heat is not None:
            self._heat.seek(first * self.k * s * s)
            raw = np.frombuffer(self._heat.read(n * self.k * s * s), np.uint8)
            heat = raw.reshape(n, self.k, s, s).astype(np.float32) / 255.0
        return pixels.reshape(n, self.k, s, s, 3), heat

    def close(self) -> None:
        self._file.close()
        if self._heat:
            self._heat.close()


@dataclass
class LayerCrops:
    field: ReceptiveField
    locations: np.ndarray  # (C, K, 2) row, col in the layer's map
    boxes: np.ndarray  # (C, K, 4) [left, top, right, bottom) clipped to the resized photo
    store: CropStore


@dataclass
class Crops:
    layers: dict[str, LayerCrops]
    reruns: int  # inputs run again
    scratch: Path

    def discard(self) -> None:
        for layer in self.layers.values():
            layer.store.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def pad_colour(normalize: bool) -> tuple[int, int, int]:
    """The colour that the network's zero padding stands for: ImageNet's mean colour when
    inputs are normalised (a padded 0 is the mean), else black."""
    if not normalize:
        return (0, 0, 0)
    mean = images.IMAGENET_MEAN
    return (round(mean[0] * 255), round(mean[1] * 255), round(mean[2] * 255))


def cut(
    photo: np.ndarray, window: tuple[int, int, int, int], fill: tuple[int, int, int]
) -> np.ndarray:
    """``photo`` (H, W, 3) inside ``window`` [left, top, right, bottom), padded with
    ``fill`` where the window leaves the photo, so every crop of a layer is one size."""
    left, top, right, bottom = window
    height, width = photo.shape[:2]
    out = np.empty((bottom - top, right - left, 3), np.uint8)
    out[:] = fill
    y0, y1, x0, x1 = max(top, 0), min(bottom, height), max(left, 0), min(right, width)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = photo[y0:y1, x0:x1]
    return out


def _interpolation(coords: np.ndarray, n: int) -> np.ndarray:
    """(len(coords), n) matrix of linear interpolation weights, clamped at both ends."""
    m = np.clip(coords, 0, n - 1)
    low = np.floor(m).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    w = (m - low).astype(np.float32)
    out = np.zeros((len(coords), n), np.float32)
    rows = np.arange(len(coords))
    np.add.at(out, (rows, low), 1 - w)
    np.add.at(out, (rows, high), w)
    return out


def heat(
    fmap: np.ndarray,
    field: ReceptiveField,
    window: tuple[int, int, int, int],
    photo_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The map (h, w), bilinearly upsampled over the crop ``window``: each crop pixel gets
    the map interpolated between the units whose fields are centred around it; divided by
    the map's maximum, so [0, 1]. With ``photo_size`` (H, W), zero where the window runs
    past the photo: the padding there is no part of the picture, so nothing glows on it."""
    left, top, right, _ = window
    offsets = np.arange(right - left) + 0.5  # pixel centres
    ys = (top + offsets - field.centre(0)) / field.jump
    xs = (left + offsets - field.centre(0)) / field.jump
    up = _interpolation(ys, fmap.shape[0]) @ fmap @ _interpolation(xs, fmap.shape[1]).T
    peak = float(fmap.max())
    glow = np.clip(up / peak, 0, 1) if peak > 0 else np.zeros_like(up)
    if photo_size is not None:
        rows, cols = top + np.arange(len(glow)), left + np.arange(glow.shape[1])
        glow[(rows < 0) | (rows >= photo_size[0])] = 0
        glow[:, (cols < 0) | (cols >= photo_size[1])] = 0
    return glow


def _close(now: float, recorded: float) -> bool:
    return abs(now - recorded) <= RELATIVE_TOLERANCE * max(abs(recorded), abs(now), 1e-6)


def run_pass2(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    tops: dict[str, TopK],
    items: Sequence[InputItem],
    options: TopOptions,
    out_dir: Path,
    events: Events,
) -> Crops | None:
    """Every input in any channel's top-K runs once more (in input order, all of its layers
    in one forward); its values must match the scan's to 1e-3 relative, else an
    :class:`InputError` names it. Returns the crops, boxes and locations of every layer, or
    None when ``events.should_stop()`` (polled between inputs) ended it early."""
    wanted: dict[int, list[tuple[ConvLayer, int, int]]] = defaultdict(list)
    for layer in layers:
        top = tops[layer.alias]
        for c, r in zip(*np.nonzero(top.inputs != NO_INPUT), strict=True):
            wanted[int(top.inputs[c, r])].append((layer, int(c), int(r)))
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out_dir))
    crops = Crops({}, len(wanted), scratch)
    try:
        for layer in layers:
            field = layer_field(loaded.model, layer)
            channels, k = tops[layer.alias].values.shape
            store = CropStore(scratch / layer.alias, channels, k, field.size, options.highlight)
            crops.layers[layer.alias] = LayerCrops(
                field,
                np.zeros((channels, k, 2), np.int64),
                np.zeros((channels, k, 4), np.int64),
                store,
            )
        fill = pad_colour(options.normalize)
        events.phase("crops", len(wanted))
        for number in sorted(wanted):
            if events.should_stop():  # between inputs
                crops.discard()
                return None
            _rerun(loaded, items[number], wanted[number], tops, crops, options, fill)
            events.advance()
    except BaseException:
        crops.discard()
        raise
    return crops


def _rerun(
    loaded: LoadedModel,
    item: InputItem,
    jobs: list[tuple[ConvLayer, int, int]],
    tops: dict[str, TopK],
    crops: Crops,
    options: TopOptions,
    fill: tuple[int, int, int],
) -> None:
    pixels, array = images.for_model(item.path, options.size, options.normalize)
    height, width = pixels.shape[:2]
    x = torch.from_numpy(array)[None]
    needed = sorted({layer for layer, _, _ in jobs}, key=lambda la: la.index)
    maps = network_maps(loaded.model, needed, x.to(loaded.device, loaded.dtype), options.stage)
    arrays = {alias: finite(m[0].float().cpu().numpy()) for alias, m in maps.items()}
    for layer, c, r in jobs:
        fmap = arrays[layer.alias][c]
        recorded = float(tops[layer.alias].values[c, r])
        now = float(fmap.max() if options.reduce == "max" else fmap.mean(dtype=np.float64))
        if not _close(now, recorded):
            raise InputError(
                item.path,
                f"{layer.alias} channel {c} now gives {now:.6g} where the scan recorded "
                f"{recorded:.6g}: the file changed since the scan, or the preprocessing is "
                "not deterministic",
            )
        target = crops.layers[layer.alias]
        row, col = divmod(int(tops[layer.alias].locations[c, r]), fmap.shape[1])
        window = target.field.window(row, col)
        target.locations[c, r] = (row, col)
        target.boxes[c, r] = target.field.box(row, col, height, width)
        glow = heat(fmap, target.field, window, (height, width)) if options.highlight else None
        target.store.put(c, r, cut(pixels, window, fill), glow)
