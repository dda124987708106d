"""Turning arrays into pictures: scaling, colour maps, tile grids, titles, colour bars.

Everything here takes numpy arrays and returns PIL images or arrays; nothing is mutated and
nothing touches pyplot. Grids are composed in numpy, which is about a thousand times faster
than one matplotlib subplot per tile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vggviz.catalog import SCALES, SELECTS  # noqa: F401 (re-exported)
from vggviz.options import parse_grid

BACKGROUND = (24, 24, 27)
FOREGROUND = (236, 236, 240)
MUTED = (160, 160, 170)
PAD = 4
TILE_TARGET = 224  # small maps are enlarged (nearest) to about this many pixels
TILE_MAX = 768  # huge maps are reduced to at most this many pixels
GRID_WIDTH = 3600  # widest grid row, in pixels, before tiles shrink
LAYER_PERCENTILES = (0.5, 99.9)  # robust ends of a layer-wide scale


@functools.cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@functools.cache
def colormap(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colour map; grey needs no matplotlib."""
    if name in ("gray", "grey"):
        ramp = np.arange(256, dtype=np.uint8)
        return np.stack([ramp] * 3, axis=1)
    from matplotlib import colormaps

    try:
        cmap = colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}") from None
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def check_colormap(name: str) -> str:
    """``name`` if matplotlib knows it (raises ValueError otherwise)."""
    colormap(name)
    return name


# --- scaling ---------------------------------------------------------------------------------


def layer_range(maps: np.ndarray) -> tuple[float, float]:
    """Robust (0.5th, 99.9th percentile) range of a layer's maps, shared by all of them so
    strong and weak channels can be compared; one hot pixel does not wash out the rest, and
    at most 0.1% of the pixels clip. Computed on an evenly strided sample of <= 2**20 values."""
    flat = maps.reshape(-1)
    step = max(1, flat.size // (1 << 20))
    lo, hi = np.percentile(flat[::step], LAYER_PERCENTILES)
    if hi <= lo:
        hi = lo + 1e-6 if flat.max() <= lo else float(flat.max())
    return float(lo), float(hi)


def to_uint8(
    maps: np.ndarray, scale: str, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Maps (N, H, W) to 0..255: each stretched on its own (``map``: min..max, like
    ``imshow``; a constant map is black), or all on ``value_range`` (``layer``), clipped."""
    maps = maps.astype(np.float32, copy=False)
    if scale == "map":
        lo = maps.min(axis=(-2, -1), keepdims=True)
        span = maps.max(axis=(-2, -1), keepdims=True) - lo
        span = np.where(span > 0, span, np.inf)
    else:
        assert value_range is not None
        lo = np.float32(value_range[0])
        span = np.float32(max(value_range[1] - value_range[0], 1e-12))
    out = (maps - lo) / span
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def scaled(maps: np.ndarray, scale: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Maps to 0..255 by ``scale``, with the shared range when there is one (``layer``)."""
    if scale == "map":
        return to_uint8(maps, "map"), None
    value_range = layer_range(maps)
    return to_uint8(maps, "layer", value_range), value_range


def select_channels(maps: np.ndarray, count: int, how: str) -> list[int]:
    """Indices of ``count`` channels of (C, H, W): the first ones, or the ``top`` ones by
    mean activation (strongest first; ties keep channel order)."""
    count = min(count, maps.shape[0])
    if how == "first":
        return list(range(count))
    means = maps.reshape(maps.shape[0], -1).mean(axis=1)
    order = np.argsort(-means, kind="stable")
    return [int(i) for i in order[:count]]


# --- tiles and grids -------------------------------------------------------------------------


def tile_factor(height: int, width: int, columns: int = 4) -> float:
    """Zoom that brings a map near TILE_TARGET: whole-number enlargement (crisp pixels) for
    small maps, reduction only for maps over TILE_MAX; wide grids (``--grid all``) get
    smaller tiles so that a row stays within GRID_WIDTH pixels."""
    target = min(TILE_TARGET, max(48, GRID_WIDTH // columns))
    most = max(target, min(TILE_MAX, GRID_WIDTH // columns))
    longest = max(height, width)
    if longest <= target:
        return float(max(1, target // longest))
    return min(1.0, most / longest)


def resize_tiles(tiles: np.ndarray, factor: float) -> np.ndarray:
    """(N, H, W[, 3]) uint8 tiles zoomed by ``factor`` (nearest up, area-averaged down)."""
    if factor == 1.0:
        return tiles
    if factor > 1 and float(factor).is_integer():
        k = int(factor)
        return tiles.repeat(k, axis=1).repeat(k, axis=2)
    h, w = tiles.shape[1:3]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.stack(
        [np.asarray(Image.fromarray(t).resize(size, Image.Resampling.BOX)) for t in tiles]
    )


def grid(tiles: np.ndarray, rows: int, cols: int, pad: int = PAD) -> np.ndarray:
    """(N, h, w, 3) tiles laid out row by row on the background colour; empty cells stay blank."""
    n, h, w = tiles.shape[:3]
    out = np.empty((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.uint8)
    out[:] = BACKGROUND
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + h, x : x + w] = tiles[i]
    return out


def grid_shape(spec: str, available: int) -> tuple[int, int]:
    """``RxC`` or ``all`` (a near-square grid holding every channel) as (rows, cols), both
    clamped to the ``available`` channels (``1x200000`` of 64 channels is one row of 64)."""
    parsed, available = parse_grid(spec), max(available, 1)
    if parsed == "all":
        cols = math.ceil(math.sqrt(available))
        return math.ceil(available / cols), cols
    rows, cols = parsed
    cols = min(cols, available)
    return min(rows, math.ceil(available / cols)), cols


def label_tiles(
    image: Image.Image,
    labels: Sequence[str],
    cell: tuple[int, int],
    cols: int,
    origin: tuple[int, int] = (0, 0),
    pad: int = PAD,
) -> None:
    """Write a small label (the channel index) in the top-left corner of each cell."""
    draw = ImageDraw.Draw(image)
    f = font(13)
    for i, text in enumerate(labels):
        r, c = divmod(i, cols)
        x = origin[0] + pad + c * (cell[0] + pad)
        y = origin[1] + pad + r * (cell[1] + pad)
        box = draw.textbbox((x + 3, y + 2), text, font=f)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        draw.text((x + 3, y + 2), text, font=f, fill=FOREGROUND)


# --- figure furniture ------------------------------------------------------------------------


@dataclass(frozen=True)
class ColourBar:
    lut: np.ndarray
    low: float
    high: float
    label: str


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def figure(
    body: np.ndarray | Image.Image,
    title: Sequence[str],
    bar: ColourBar | None = None,
    warning: str | None = None,
) -> Image.Image:
    """Body under a title block (first line large), an optional warning line and colour bar."""
    body_img = body if isinstance(body, Image.Image) else Image.fromarray(body)
    big, small = font(22), font(15)
    # wide enough for every line of text: a narrow grid must not cut its title off
    lines = [(big, title[0]), *((small, t) for t in [*title[1:], warning or ""])]
    text_width = max(f.getlength(t) for f, t in lines) + 2 * (PAD + 6)
    width = max(body_img.width, 520, math.ceil(text_width))
    heights = [30] + [21] * (len(title) - 1) + ([22] if warning else []) + ([40] if bar else [])
    top = 10 + sum(heights) + 6
    canvas = Image.new("RGB", (width, top + body_img.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = 10
    for i, line in enumerate(title):
        draw.text(
            (PAD + 6, y), line, font=big if i == 0 else small, fill=FOREGROUND if i == 0 else MUTED
        )
        y += heights[i]
    if warning:
        draw.text((PAD + 6, y), warning, font=small, fill=(255, 170, 60))
        y += 22
    if bar:
        _draw_bar(canvas, draw, bar, (PAD + 6, y + 2), min(360, width - 2 * PAD - 12))
    canvas.paste(body_img, ((width - body_img.width) // 2, top))
    return canvas


def _draw_bar(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, bar: ColourBar, at: tuple[int, int], length: int
) -> None:
    ramp = bar.lut[np.linspace(0, 255, length).astype(np.int64)]
    strip = np.repeat(ramp[None], 12, axis=0)
    canvas.paste(Image.fromarray(strip), at)
    f = font(13)
    y = at[1] + 15
    draw.text((at[0], y), _fmt(bar.low), font=f, fill=MUTED)
    high = _fmt(bar.high)
    draw.text((at[0] + length - draw.textlength(high, font=f), y), high, font=f, fill=MUTED)
    mid = bar.label
    draw.text((at[0] + length + 12, at[1] - 1), mid, font=f, fill=MUTED)


def colourize(gray: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W) -> (..., H, W, 3) through a lookup table."""
    return lut[gray]


def overlay(
    photo: np.ndarray, heat_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.6
) -> np.ndarray:
    """Heat map (already upsampled to the photo) over a dimmed greyscale photo; the colour's
    weight follows the activation so quiet regions show the photo and hot ones the map."""
    grey = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    base = (grey * 0.55)[..., None]
    w = alpha * (heat.astype(np.float32) / 255.0)[..., None] ** 0.5
    out = base * (1 - w) + heat_rgb.astype(np.float32) * w
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, h, w) maps resized bilinearly to (H, W) = ``size``."""
    wh = (size[1], size[0])
    return np.stack(
        [np.asarray(Image.fromarray(m).resize(wh, Image.Resampling.BILINEAR)) for m in maps]
    )
