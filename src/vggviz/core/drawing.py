"""Turning arrays into pictures: scaling, colour maps, tile grids, titles, colour bars.

Everything here takes numpy arrays and returns PIL images or arrays; nothing is mutated and
nothing touches pyplot. Grids are composed in numpy, which is about a thousand times faster
than one matplotlib subplot per tile.

Layer pictures are palette ("P") images: a map is one 8-bit value per pixel through a colour
map, so the picture is an index array and a 256-entry palette shared between MAP_LEVELS levels
of the colour map and short ramps of text shades. Such a PNG deflates about 6x faster and is
about 4x smaller than the same picture in RGB. Text is rendered once per distinct label into
a cached coverage mask and pasted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vggviz.core.text import display
from vggviz.core.values import parse_grid
from vggviz.core.vocabulary import GRID_WIDTH, TILE_MAX, TILE_TARGET

BACKGROUND = (24, 24, 27)
FOREGROUND = (236, 236, 240)
MUTED = (160, 160, 170)
WARNING = (255, 170, 60)  # the one warning colour: random weights, channels never active
LABEL_BOX = (0, 0, 0)
PAD = 4
LAYER_PERCENTILES = (0.5, 99.9)  # robust ends of a layer-wide scale
LAYER_SAMPLE = 1 << 18  # values a layer-wide scale is estimated from


MAP_LEVELS = 224  # palette entries for the colour map; the rest hold text shades
TEXT_SHADES = 6  # anti-aliasing shades between a text colour and its background
TEXT_PAIRS = ((FOREGROUND, BACKGROUND), (MUTED, BACKGROUND), (WARNING, BACKGROUND))
LABEL_PAIR = (FOREGROUND, LABEL_BOX)


@functools.cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


# --- text, rendered once per distinct (text, size) ------------------------------------------


@dataclass(frozen=True)
class TextMask:
    """A text's anti-aliased coverage (0..255), placed ``offset`` from the drawing origin."""

    mask: Image.Image  # mode "L", for pasting onto RGB pictures
    array: np.ndarray  # the same coverage, for index canvases
    offset: tuple[int, int]
    bbox: tuple[int, int, int, int]  # what ImageDraw.textbbox gives at the origin


SEPARATOR = "  ·  "  # between the parts of a title line
COMPOSABLE = frozenset("0123456789.-+e#x")
"""Characters a label is put together from, glyph by glyph (numbers, ``#12``, ``64x56x84``):
in the bundled font their advances are whole pixels and no pair of them is kerned, so the
result is the same to the pixel as the whole string rendered (``tests/test_drawing_speed``)."""


def text_mask(text: str, size: int) -> TextMask:
    """The coverage of ``text`` in ``font(size)``. Text is drawn as
    :func:`~vggviz.core.text.display` shows it: a file name's line break stays on one line."""
    return _mask(display(text), size)


@functools.lru_cache(maxsize=8192)
def _mask(text: str, size: int) -> TextMask:
    """Rendered once per distinct (text, size): channel labels and layer names repeat on
    every picture of every photo, and FreeType was 0.14 core-s per photo. A title line
    (``photo.jpg  ·  conv3 (features.7)  ·  128x112x168``) or a number is put together from
    cached parts, since as a whole it is new on every picture: FreeType holds the GIL, and
    rendering them was a third of a photo's drawing time on the drawing lanes."""
    parts = _parts(text)
    if len(parts) > 1:
        pieces = _joined(parts, size)
        if pieces is not None:
            return pieces
    f = font(size)
    x0, y0, x1, y1 = (int(v) for v in f.getbbox(text))
    mask = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    ImageDraw.Draw(mask).text((-x0, -y0), text, font=f, fill=255)
    return TextMask(mask, np.asarray(mask), (x0, y0), (x0, y0, x1, y1))


def _parts(text: str) -> list[str]:
    if len(text) > 1 and COMPOSABLE.issuperset(text):
        return list(text)
    if SEPARATOR in text and text != SEPARATOR:
        split = text.split(SEPARATOR)
        return [p for part in split for p in (part, SEPARATOR)][:-1]
    return [text]


def _joined(parts: list[str], size: int) -> TextMask | None:
    """``parts`` rendered one by one and laid side by side at their advances, as FreeType
    lays out the whole: exact where each part's advance is a whole number of pixels and no
    glyph is kerned across a boundary (separators are spaced; the composable characters
    have no kerning pairs). None where an advance is fractional: render the whole."""
    masks, pens, pen = [], [], 0
    for part in parts:
        if not part:
            continue
        advance = _advance(part, size)
        if not float(advance).is_integer():
            return None
        masks.append(_mask(part, size))
        pens.append(pen)
        pen += int(advance)
    x0 = min(p + m.bbox[0] for p, m in zip(pens, masks, strict=True))
    y0 = min(m.bbox[1] for m in masks)
    x1 = max(p + m.bbox[2] for p, m in zip(pens, masks, strict=True))
    y1 = max(m.bbox[3] for m in masks)
    mask = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    for p, m in zip(pens, masks, strict=True):  # as FreeType's glyphs are laid over each other
        mask.paste(255, (p + m.offset[0] - x0, m.offset[1] - y0), m.mask)
    return TextMask(mask, np.asarray(mask), (x0, y0), (x0, y0, x1, y1))


@functools.lru_cache(maxsize=8192)
def _advance(text: str, size: int) -> float:
    return font(size).getlength(text)


def text_length(text: str, size: int) -> float:
    """Advance width of ``text`` (as drawn: :func:`text_mask`), as ``ImageDraw.textlength``."""
    shown = display(text)
    parts = _parts(shown)
    if len(parts) > 1:
        advances = [_advance(part, size) for part in parts if part]
        if all(float(a).is_integer() for a in advances):
            return float(sum(advances))
    return _advance(shown, size)


def draw_text(
    image: Image.Image, xy: tuple[int, int], text: str, size: int, fill: tuple[int, int, int]
) -> None:
    """``ImageDraw.text`` on an RGB image, from the cached mask (same place, same coverage)."""
    if not text:
        return
    m = text_mask(text, size)
    image.paste(fill, (xy[0] + m.offset[0], xy[1] + m.offset[1]), m.mask)


# --- palette pictures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Palette:
    """256 colours: MAP_LEVELS levels of a colour map, then solid interface colours and text
    ramps. ``levels`` takes a 0..255 map value to its palette index (at most one 8-bit step
    away from the exact colour map entry); ``ramps[(fg, bg)]`` holds the indices of bg, the
    TEXT_SHADES blends and fg."""

    colours: np.ndarray  # (256, 3) uint8
    levels: np.ndarray  # (256,) uint8
    ramps: dict[tuple[tuple[int, int, int], tuple[int, int, int]], np.ndarray]
    solid: dict[tuple[int, int, int], int]

    def flat(self) -> list[int]:
        return self.colours.reshape(-1).tolist()


@functools.cache
def palette(cmap: str) -> Palette:
    """The palette of layer pictures drawn with colour map ``cmap``."""
    lut = colormap(cmap)
    top = MAP_LEVELS - 1
    levels = np.rint(np.arange(256) * (top / 255)).astype(np.uint8)
    represented = np.rint(np.arange(MAP_LEVELS) * (255 / top)).astype(np.int64)
    colours = [tuple(int(v) for v in lut[i]) for i in represented]
    solid: dict[tuple[int, int, int], int] = {}
    for colour in (BACKGROUND, FOREGROUND, MUTED, WARNING, LABEL_BOX):
        solid[colour] = len(colours)
        colours.append(colour)
    ramps = {}
    for fg, bg in (*TEXT_PAIRS, LABEL_PAIR):
        ramp = [solid[bg]]
        for k in range(1, TEXT_SHADES + 1):
            a = k / (TEXT_SHADES + 1)
            ramp.append(len(colours))
            colours.append(tuple(int(b + (f - b) * a + 0.5) for f, b in zip(fg, bg, strict=True)))
        ramps[(fg, bg)] = np.array([*ramp, solid[fg]], dtype=np.uint8)
    assert len(colours) <= 256, "palette overflow"  # fixed by the constants above
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colours)] = colours
    return Palette(table, levels, ramps, solid)


def paste_text(
    canvas: np.ndarray,
    xy: tuple[int, int],
    text: str,
    size: int,
    ramp: np.ndarray,
) -> None:
    """Text into an index canvas (in place): coverage quantised to ``ramp``'s shades, drawn
    over its background colour (ramp[0]), which the canvas must already hold there."""
    if not text:
        return
    m = text_mask(text, size)
    x, y = xy[0] + m.offset[0], xy[1] + m.offset[1]
    cover = m.array
    h, w = cover.shape
    # clip to the canvas, as Pillow does
    x0, y0 = max(0, -x), max(0, -y)
    x1, y1 = min(w, canvas.shape[1] - x), min(h, canvas.shape[0] - y)
    if x1 <= x0 or y1 <= y0:
        return
    cover = cover[y0:y1, x0:x1]
    steps = len(ramp) - 1
    shade = (cover.astype(np.uint16) * steps + 127) // 255
    region = canvas[y + y0 : y + y1, x + x0 : x + x1]
    np.copyto(region, ramp[shade], where=shade > 0)


def indexed_image(canvas: np.ndarray, pal: Palette) -> Image.Image:
    """An index canvas as a "P" image with ``pal``'s colours."""
    image = Image.fromarray(canvas)  # mode "L", no copy of the pixels
    image.putpalette(pal.flat())  # now "P"
    return image


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
    at most 0.1% of the pixels clip. Computed on an evenly strided sample of <= 2**18 values
    (the 99.9th percentile still rests on 262 of them; sorting more cost a quarter of the
    drawing time of a 336x224 photo)."""
    flat = maps.reshape(-1)
    step = max(1, -(-flat.size // LAYER_SAMPLE))
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


def channel_means(maps: np.ndarray) -> np.ndarray:
    """Mean activation of each channel of (C, H, W), the ranking of ``top``."""
    return maps.mean(axis=(1, 2))  # no reshape: that would copy a channels-last view


def select_channels(
    maps: np.ndarray, count: int, how: str, means: np.ndarray | None = None
) -> list[int]:
    """Indices of ``count`` channels of (C, H, W): the first ones, or the ``top`` ones by
    mean activation (strongest first; ties keep channel order). ``means`` saves computing
    :func:`channel_means` again when the caller has them."""
    count = min(count, maps.shape[0])
    if how == "first":
        return list(range(count))
    means = channel_means(maps) if means is None else means
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


def grid(
    tiles: np.ndarray,
    rows: int,
    cols: int,
    pad: int = PAD,
    fill: int | tuple[int, int, int] = BACKGROUND,
) -> np.ndarray:
    """(N, h, w, 3) colour tiles, or (N, h, w) palette indices, laid out row by row on
    ``fill`` (the background colour, or its index); empty cells stay blank."""
    n, h, w = tiles.shape[:3]
    out = np.empty(
        (rows * (h + pad) + pad, cols * (w + pad) + pad, *tiles.shape[3:]), dtype=np.uint8
    )
    out[:] = fill
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
    for (x, y), box, text in _label_boxes(labels, cell, cols, origin, pad):
        draw.rectangle(box, fill=LABEL_BOX)
        draw_text(image, (x, y), text, 13, FOREGROUND)


def label_indexed(
    canvas: np.ndarray,
    pal: Palette,
    labels: Sequence[str],
    cell: tuple[int, int],
    cols: int,
    origin: tuple[int, int] = (0, 0),
    pad: int = PAD,
) -> None:
    """:func:`label_tiles` on an index canvas (in place)."""
    box_index = pal.solid[LABEL_BOX]
    ramp = pal.ramps[LABEL_PAIR]
    height, width = canvas.shape
    for xy, box, text in _label_boxes(labels, cell, cols, origin, pad):
        x0, y0 = max(0, box[0]), max(0, box[1])
        canvas[y0 : min(height, box[3] + 1), x0 : min(width, box[2] + 1)] = box_index
        paste_text(canvas, xy, text, 13, ramp)


def _label_boxes(
    labels: Sequence[str], cell: tuple[int, int], cols: int, origin: tuple[int, int], pad: int
) -> Iterator[tuple[tuple[int, int], tuple[int, int, int, int], str]]:
    """Where each label's text goes and its box (inclusive corners), cell by cell."""
    for i, text in enumerate(labels):
        r, c = divmod(i, cols)
        x = origin[0] + pad + c * (cell[0] + pad) + 3
        y = origin[1] + pad + r * (cell[1] + pad) + 2
        b = text_mask(text, 13).bbox
        yield (x, y), (x + b[0] - 3, y + b[1] - 2, x + b[2] + 3, y + b[3] + 2), text


# --- figure furniture ------------------------------------------------------------------------


@dataclass(frozen=True)
class ColourBar:
    lut: np.ndarray
    low: float
    high: float
    label: str


def _fmt(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class _Layout:
    width: int
    top: int  # the body's first row
    heights: list[int]


def _layout(body_width: int, title: Sequence[str], bar: ColourBar | None, warning: str | None):
    # wide enough for every line of text: a narrow grid must not cut its title off
    lines = [(22, title[0]), *((15, t) for t in [*title[1:], warning or ""])]
    text_width = max(text_length(t, size) for size, t in lines) + 2 * (PAD + 6)
    width = max(body_width, 520, math.ceil(text_width))
    heights = [30] + [21] * (len(title) - 1) + ([22] if warning else []) + ([40] if bar else [])
    return _Layout(width, 10 + sum(heights) + 6, heights)


def figure(
    body: np.ndarray | Image.Image,
    title: Sequence[str],
    bar: ColourBar | None = None,
    warning: str | None = None,
) -> Image.Image:
    """Body under a title block (first line large), an optional warning line and colour bar."""
    body_img = body if isinstance(body, Image.Image) else Image.fromarray(body)
    layout = _layout(body_img.width, title, bar, warning)
    width, top = layout.width, layout.top
    canvas = Image.new("RGB", (width, top + body_img.height), BACKGROUND)
    y = 10
    for i, line in enumerate(title):
        size, fill = (22, FOREGROUND) if i == 0 else (15, MUTED)
        draw_text(canvas, (PAD + 6, y), line, size, fill)
        y += layout.heights[i]
    if warning:
        draw_text(canvas, (PAD + 6, y), warning, 15, WARNING)
        y += 22
    if bar:
        at, length = (PAD + 6, y + 2), min(360, width - 2 * PAD - 12)
        ramp = bar.lut[np.linspace(0, 255, length).astype(np.int64)]
        canvas.paste(Image.fromarray(np.repeat(ramp[None], 12, axis=0)), at)
        for xy, text in _bar_labels(bar, at, length):
            draw_text(canvas, xy, text, 13, MUTED)
    canvas.paste(body_img, ((width - body_img.width) // 2, top))
    return canvas


def figure_indexed(
    body: np.ndarray,
    pal: Palette,
    title: Sequence[str],
    bar: ColourBar | None = None,
    warning: str | None = None,
) -> Image.Image:
    """:func:`figure` for a body of palette indices: a "P" image with ``pal``'s colours.
    The colour bar uses the palette's map levels (``bar.lut`` is not needed)."""
    layout = _layout(body.shape[1], title, bar, warning)
    width, top = layout.width, layout.top
    canvas = np.full((top + body.shape[0], width), pal.solid[BACKGROUND], dtype=np.uint8)
    y = 10
    for i, line in enumerate(title):
        size, fg = (22, FOREGROUND) if i == 0 else (15, MUTED)
        paste_text(canvas, (PAD + 6, y), line, size, pal.ramps[(fg, BACKGROUND)])
        y += layout.heights[i]
    if warning:
        paste_text(canvas, (PAD + 6, y), warning, 15, pal.ramps[(WARNING, BACKGROUND)])
        y += 22
    if bar:
        (x, y0), length = (PAD + 6, y + 2), min(360, width - 2 * PAD - 12)
        ramp = pal.levels[np.linspace(0, 255, length).astype(np.int64)]
        canvas[y0 : y0 + 12, x : x + length] = ramp
        for xy, text in _bar_labels(bar, (x, y0), length):
            paste_text(canvas, xy, text, 13, pal.ramps[(MUTED, BACKGROUND)])
    left = (width - body.shape[1]) // 2
    canvas[top:, left : left + body.shape[1]] = body
    return indexed_image(canvas, pal)


def _bar_labels(
    bar: ColourBar, at: tuple[int, int], length: int
) -> list[tuple[tuple[int, int], str]]:
    """The colour bar's low and high values under its ends, and its label after it."""
    y = at[1] + 15
    high = _fmt(bar.high)
    return [
        ((at[0], y), _fmt(bar.low)),
        ((int(at[0] + length - text_length(high, 13)), y), high),
        ((at[0] + length + 12, at[1] - 1), bar.label),
    ]


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


def random_warning(random: bool, weights: str) -> str | None:
    """The line every picture of random weights carries (drawn in WARNING by :func:`figure`)."""
    if random:
        return f"RANDOM WEIGHTS, {weights}: nothing in this picture was learned"
    return None
