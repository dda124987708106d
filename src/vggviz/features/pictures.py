"""The three pictures vggviz draws: a layer's feature-map grid, a layer's filters, and the
whole-network overview. Inputs are numpy arrays; outputs PIL images. :func:`draw_filters`
writes a loaded model's filters picture, for ``vggviz filters`` and for the run summary that
``vggviz features`` writes beside its index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vggviz.core import drawing, files
from vggviz.core.drawing import BACKGROUND, FOREGROUND, MUTED, PAD, ColourBar
from vggviz.core.errors import UsageError
from vggviz.features import folders

if TYPE_CHECKING:
    from vggviz.model.layers import ConvLayer
    from vggviz.model.loading import LoadedModel


@dataclass(frozen=True)
class Style:
    """How maps are drawn; see the CLI's --select, --grid, --cmap, --scale, --overlay."""

    select: str = "top"
    grid: str = "4x4"
    cmap: str = "inferno"
    scale: str = "layer"
    overlay: bool = False


@dataclass(frozen=True)
class Caption:
    """What a picture's title says about where its maps come from."""

    image: str
    weights: str
    random: bool
    mode: str
    stage: str


def layer_picture(
    fmap: np.ndarray,
    *,
    alias: str,
    module: str,
    caption: Caption,
    style: Style,
    photo: np.ndarray | None = None,
    means: np.ndarray | None = None,
) -> tuple[Image.Image, list[int]]:
    """A grid of the channels of one layer's (C, H, W) map, each labelled with its index.

    Returns the picture and the channel indices drawn, in drawing order. ``means``: the
    channels' mean activations, if the caller has them already.
    """
    c, h, w = fmap.shape
    rows, cols = drawing.grid_shape(style.grid, c)
    channels = drawing.select_channels(fmap, rows * cols, style.select, means)
    rows = min(rows, -(-len(channels) // cols))
    chosen = fmap[channels]
    bar = None
    gray, value_range = drawing.scaled(chosen, style.scale)
    if value_range is not None:
        bar = ColourBar(
            drawing.colormap(style.cmap), *value_range, "one scale for every map of the layer"
        )
    if style.overlay and photo is not None:
        # the photo's colours are many: overlays stay RGB
        lut = drawing.colormap(style.cmap)
        heat = drawing.upsample(gray, photo.shape[:2])
        tiles = np.stack([drawing.overlay(photo, lut[m], m) for m in heat])
        tiles = drawing.resize_tiles(tiles, drawing.tile_factor(*tiles.shape[1:3], cols))
        body = Image.fromarray(drawing.grid(tiles, rows, cols))
        drawing.label_tiles(
            body, [f"#{i}" for i in channels], (tiles.shape[2], tiles.shape[1]), cols
        )
        pal = None
    else:
        # one palette index per pixel; a reduced map is averaged before its colours
        pal = drawing.palette(style.cmap)
        small = drawing.resize_tiles(gray, drawing.tile_factor(*gray.shape[1:3], cols))
        tiles = pal.levels[small]
        body = drawing.grid(tiles, rows, cols, fill=pal.solid[BACKGROUND])
        drawing.label_indexed(
            body, pal, [f"#{i}" for i in channels], (tiles.shape[2], tiles.shape[1]), cols
        )
    chosen_how = (
        f"{len(channels)} strongest of {c} channels (largest mean)"
        if style.select == "top"
        else f"first {len(channels)} of {c} channels"
    )
    scale = (
        "each map on its own scale"
        if style.scale == "map"
        else "layer scale (0.5-99.9th pct of the maps shown)"
    )
    title = [
        f"{caption.image}  ·  {alias} ({module})  ·  {c}x{h}x{w}",
        f"{_mode_text(caption)}  ·  weights: {caption.weights}",
        f"{chosen_how}  ·  {scale}  ·  cmap {style.cmap}"
        + ("  ·  overlay" if style.overlay else ""),
    ]
    warning = drawing.random_warning(caption.random, caption.weights)
    if pal is not None:
        return drawing.figure_indexed(body, pal, title, bar, warning), channels
    return drawing.figure(body, title, bar, warning), channels


def _mode_text(caption: Caption) -> str:
    if caption.mode == "chain":
        return "chain mode: convs only, no BN/ReLU/pool (the tutorial's maps)"
    return f"network forward pass, after {caption.stage}"


def filters_picture(
    weight: np.ndarray,
    *,
    alias: str,
    module: str,
    weights: str,
    random: bool,
    view: str,
    channel: int = 0,
    cmap: str = "gray",
    scale: str = "map",
) -> Image.Image:
    """A layer's kernels (out, in, kH, kW) in a near-square grid (8x8 for 64).

    ``view``: ``rgb`` draws each 3-channel kernel as colour (positive weights bright, zero
    mid-grey); ``channel`` draws input channel ``channel``; ``mean`` the mean over inputs.
    """
    out_ch, in_ch, kh, kw = weight.shape
    cols = int(np.ceil(np.sqrt(out_ch)))
    rows = -(-out_ch // cols)
    if view == "rgb":
        if in_ch != 3:
            raise UsageError(
                f"{alias} has {in_ch} input channels; rgb needs 3 (try the mean view)",
                param="view",
            )
        k = weight.transpose(0, 2, 3, 1)  # (out, kH, kW, 3)
        # per kernel, or one bound for all: zero stays mid-grey either way
        axes = (1, 2, 3) if scale == "map" else None
        bound = np.abs(k).max(axis=axes, keepdims=True)
        bound = np.where(bound > 0, bound, 1.0)
        tiles = (np.clip(k / (2 * bound) + 0.5, 0, 1) * 255 + 0.5).astype(np.uint8)
        bar = None
        what = "RGB: each kernel's 3 input channels as colour, 0 = mid grey"
    else:
        if view == "channel":
            if not 0 <= channel < in_ch:
                raise UsageError(
                    f"{channel}: {alias} has input channels 0..{in_ch - 1}", param="channel"
                )
            planes = weight[:, channel]
            what = f"input channel {channel}"
        else:
            planes = weight.mean(axis=1)
            what = f"mean over {in_ch} input channels"
        lut = drawing.colormap(cmap)
        if scale == "map":
            gray, bar = drawing.to_uint8(planes, "map"), None
        else:
            bound = float(np.abs(planes).max()) or 1.0
            gray = drawing.to_uint8(planes, "layer", (-bound, bound))
            bar = ColourBar(lut, -bound, bound, "one scale for all kernels")
        tiles = drawing.colourize(gray, lut)
    tiles = drawing.resize_tiles(tiles, float(max(1, 96 // max(kh, kw))))
    body = drawing.grid(tiles, rows, cols, pad=6)
    title = [
        f"{alias} ({module}) filters  ·  {out_ch} kernels of {in_ch}x{kh}x{kw}",
        f"{what}  ·  weights: {weights}",
        "each kernel on its own scale" if scale == "map" else "one scale for the whole layer",
    ]
    return drawing.figure(body, title, bar, drawing.random_warning(random, weights))


@dataclass(frozen=True)
class OverviewRow:
    alias: str
    module: str
    shape: tuple[int, int, int]
    tiles: np.ndarray  # (k, t, t, 3) uint8, strongest channels first
    channels: list[int]


OVERVIEW_TILE = 112
OVERVIEW_ROW_MIN = 72  # room for the three-line row label
OVERVIEW_MAPS = 8


def overview_tiles(
    fmap: np.ndarray, style: Style, count: int = OVERVIEW_MAPS, means: np.ndarray | None = None
) -> tuple[np.ndarray, list[int]]:
    """The strongest ``count`` maps of a layer as small square-ish colour tiles."""
    channels = drawing.select_channels(fmap, count, "top", means)
    chosen = fmap[channels]
    gray, _ = drawing.scaled(chosen, style.scale)
    h, w = gray.shape[1:]
    f = OVERVIEW_TILE / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    resample = Image.Resampling.NEAREST if f >= 1 else Image.Resampling.BOX
    small = np.stack([np.asarray(Image.fromarray(g).resize(size, resample)) for g in gray])
    return drawing.colourize(small, drawing.colormap(style.cmap)), channels


def overview_picture(
    rows: Sequence[OverviewRow], photo: np.ndarray, caption: Caption, style: Style
) -> Image.Image:
    """One row per conv layer with its strongest maps, the input photo beside the title."""
    label_w = 190
    tile_h = max(OVERVIEW_ROW_MIN, *(r.tiles.shape[1] for r in rows))
    tile_w = max(r.tiles.shape[2] for r in rows)
    n = max(r.tiles.shape[0] for r in rows)
    width = label_w + n * (tile_w + PAD) + PAD
    height = len(rows) * (tile_h + PAD) + PAD
    body = Image.new("RGB", (width, height), BACKGROUND)
    for i, row in enumerate(rows):
        y = PAD + i * (tile_h + PAD)
        drawing.draw_text(body, (8, y + 6), row.alias, 20, FOREGROUND)
        c, h, w = row.shape
        drawing.draw_text(body, (8, y + 32), row.module, 13, MUTED)
        drawing.draw_text(body, (8, y + 50), f"{c}x{h}x{w}", 13, MUTED)
        for j, tile in enumerate(row.tiles):
            body.paste(Image.fromarray(tile), (label_w + j * (tile_w + PAD), y))
        drawing.label_tiles(
            body,
            [f"#{ch}" for ch in row.channels],
            (tile_w, tile_h),
            n,
            origin=(label_w - PAD, y - PAD),
        )
    thumb = Image.fromarray(photo)
    thumb.thumbnail((width, 240))
    top = Image.new("RGB", (width, thumb.height + 2 * PAD), BACKGROUND)
    top.paste(thumb, (PAD, PAD))
    stacked = Image.new("RGB", (width, top.height + body.height), BACKGROUND)
    stacked.paste(top, (0, 0))
    stacked.paste(body, (0, top.height))
    title = [
        f"{caption.image}  ·  {caption.weights}",
        f"{_mode_text(caption)}  ·  strongest {n} channels of every conv layer",
        "each map on its own scale"
        if style.scale == "map"
        else "one scale per layer (0.5-99.9th pct of the maps shown)",
    ]
    return drawing.figure(
        stacked, title, None, drawing.random_warning(caption.random, caption.weights)
    )


# --- what a layer's pictures need of its map, and drawing them anywhere ------------------------


@dataclass(frozen=True)
class Kept:
    """What drawing and the record need of one image's (C, H, W) map: its statistics and
    the channels any picture may draw. Indexing it by channel numbers gives those channels'
    maps, as indexing the whole map would, so the pictures cannot differ. Small enough to
    send to a drawing process (16 of conv1's 64 channels)."""

    shape: tuple[int, int, int]
    means: np.ndarray  # (C,) every channel's mean
    finite: bool
    max: float
    zero_fraction: float
    channels: dict[int, int]  # channel -> its row in maps
    maps: np.ndarray  # (k, H, W) float32

    def __getitem__(self, channels: Sequence[int]) -> np.ndarray:
        return self.maps[[self.channels[c] for c in channels]]


def keep(fmap: np.ndarray, style: Style, overview: bool) -> Kept:
    """Summarize a map for drawing: statistics, and the channels chosen for the layer's
    picture and the overview (non-finite values made finite first, as drawing needs)."""
    finite = bool(np.isfinite(fmap).all())
    if not finite:  # overflowing weights: draw what is finite, and say so
        fmap = finite_map(fmap)
    c = fmap.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):
        means = drawing.channel_means(fmap)  # once, for the picture, overview, record
        rows, cols = drawing.grid_shape(style.grid, c)
        chosen = set(drawing.select_channels(fmap, rows * cols, style.select, means))
        if overview:
            chosen.update(drawing.select_channels(fmap, OVERVIEW_MAPS, "top", means))
        top = float(fmap.max())
    order = sorted(chosen)
    maps = fmap if len(order) == c else fmap[order]
    return Kept(
        (c, fmap.shape[1], fmap.shape[2]),
        means,
        finite,
        top,
        float(np.count_nonzero(fmap == 0) / fmap.size),
        {channel: row for row, channel in enumerate(order)},
        maps,
    )


def finite_map(fmap: np.ndarray) -> np.ndarray:
    """Infinities as the largest and smallest finite values, NaN as 0."""
    finite = fmap[np.isfinite(fmap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return np.nan_to_num(fmap, nan=0.0, posinf=hi, neginf=lo)


@dataclass(frozen=True)
class DrawnLayer:
    picture: Image.Image | bytes  # the PNG's bytes when drawn in another process
    channels: list[int]
    overview: tuple[np.ndarray, list[int]] | None  # its overview tiles and their channels


def draw_layer(
    kept: Kept,
    alias: str,
    module: str,
    caption: Caption,
    style: Style,
    photo: np.ndarray | None,
    overview: bool,
    encode: bool = False,
) -> DrawnLayer:
    """A layer's picture and overview tiles from what :func:`keep` kept; ``encode``: as PNG
    bytes (in a drawing process, so that only bytes travel back)."""
    # near float32's limit, means and spans overflow again: the picture is still right
    with np.errstate(over="ignore", invalid="ignore"):
        image, channels = layer_picture(
            kept,  # type: ignore[arg-type]  (what layer_picture reads of a map)
            alias=alias, module=module, caption=caption, style=style, photo=photo,
            means=kept.means,
        )  # fmt: skip
        tiles = overview_tiles(kept, style, means=kept.means) if overview else None  # type: ignore[arg-type]
    return DrawnLayer(files.png_bytes(image) if encode else image, channels, tiles)


def draw_overview(
    rows: Sequence[OverviewRow],
    photo: np.ndarray,
    caption: Caption,
    style: Style,
    encode: bool = False,
) -> Image.Image | bytes:
    """:func:`overview_picture`; ``encode``: as PNG bytes (in a drawing process)."""
    image = overview_picture(rows, photo, caption, style)
    return files.png_bytes(image) if encode else image


def draw_filters(
    loaded: LoadedModel,
    layer: ConvLayer,
    out_dir: Path,
    *,
    view: str | None = None,
    channel: int = 0,
    cmap: str = "gray",
    scale: str = "map",
    suffix: str = "",
) -> Path:
    """Write ``filters-<alias>[-<view>][<suffix>].png`` in ``out_dir`` and return its path.

    ``view`` defaults to ``rgb`` for a layer that reads 3 channels (conv1 reads the photo,
    so its kernels are colours) and to ``mean`` elsewhere.
    """
    weight = layer.module.weight.detach().float().cpu().numpy()
    view = view or ("rgb" if weight.shape[1] == 3 else "mean")
    image = filters_picture(
        weight,
        alias=layer.alias,
        module=layer.name,
        weights=loaded.weights,
        random=loaded.random,
        view=view,
        channel=channel,
        cmap=cmap,
        scale=scale,
    )
    name = folders.filters_name(layer.alias, view).removesuffix(".png") + f"{suffix}.png"
    return files.save_png(image, out_dir / name)
