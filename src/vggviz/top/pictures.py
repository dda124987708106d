"""Pictures for ``vggviz top``: each channel's strongest images, cropped to what its unit sees.

A layer page has one row per channel: its number at the left, then its top K crops, best
first, each labelled with the image's name and the channel's value on it. The crop is the
receptive field of the winning unit, so it shows what the channel responded to; crops of
the first layers are only a few pixels wide and are enlarged with nearest-neighbour (sharp
blocks, no invented detail). :func:`draw_outputs` draws and writes a run's pages, strips and
index.html from pass 2's crops. numpy and Pillow only: no torch, no click.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from vggviz.core import drawing, files, lifecycle
from vggviz.core.drawing import BACKGROUND, FOREGROUND, MUTED, PAD

if TYPE_CHECKING:
    from vggviz.core.lifecycle import Events
    from vggviz.model.layers import ConvLayer
    from vggviz.model.loading import LoadedModel
    from vggviz.top.crops import Crops
    from vggviz.top.request import TopOptions

CROP_MIN = 88  # smaller crops are enlarged by a whole factor to at least about this (3 px -> 90)
CROP_MAX = 256  # larger crops (VGG19's deepest layers) are reduced to this
PAGE_ROWS = (16, 8, 4)  # channels per page: 16, fewer for large crops
PAGE_BODY = 3200  # pixels of rows per page at most (16 rows of crops up to about 150 px)
LABEL_W = 92  # the channel-number column
CAPTION_H = 34  # two text lines under each crop: image name, value
GAP = 6  # between crops in a row
STRIP_GAP = 2
STRIP_HEIGHT = 96  # pixels of a channel strip (index.html shows it smaller)
HIGHLIGHT_CMAP = "inferno"
EMPTY = (40, 40, 46)  # a slot with no image (fewer images than K)
PAGES_DIR = "top-pages"
STRIPS_DIR = "top-strips"
DRAW_GROUP = 32  # channels whose crops and pages are in memory at once while drawing
_PAGE = re.compile(r"\d\d-conv\d+-\d\d+\.(jpg|png)")  # top-pages/01-conv1-01.jpg
_LAYER = re.compile(r"conv\d+")  # top-strips/conv1/
_STRIP = re.compile(r"\d{4,}\.(jpg|png)")  # top-strips/conv1/0000.jpg


@dataclass(frozen=True)
class Crop:
    """One top image of a channel, cut to the winning unit's receptive field."""

    pixels: np.ndarray  # (S, S, 3) uint8 from the resized photo the network saw, padded to S x S
    name: str  # the image's short name for the label
    value: float  # the channel's reduced value on that image
    heat: np.ndarray | None = None  # (S, S) float in [0, 1]: the map over the crop (--highlight)


@dataclass(frozen=True)
class ChannelRow:
    channel: int
    crops: list[Crop]  # best first, at most k


def crop_size(rows: Sequence[ChannelRow], rf_size: int) -> int:
    """The side S shared by every crop of the layer (``rf_size`` when there are none).

    Raises ValueError for a crop that is not (S, S, 3) uint8 or whose heat is not (S, S).
    """
    size = None
    for row in rows:
        for crop in row.crops:
            px = crop.pixels
            if px.ndim != 3 or px.shape[2] != 3 or px.shape[0] != px.shape[1]:
                raise ValueError(
                    f"channel {row.channel}, {crop.name}: crop must be (S, S, 3), got {px.shape}"
                )
            if px.dtype != np.uint8:
                raise ValueError(f"channel {row.channel}, {crop.name}: crop must be uint8")
            if size is None:
                size = px.shape[0]
            elif px.shape[0] != size:
                raise ValueError(
                    f"channel {row.channel}, {crop.name}: crop is {px.shape[0]} px, "
                    f"the layer's other crops {size} px (pad them to one size)"
                )
            if crop.heat is not None and crop.heat.shape != px.shape[:2]:
                raise ValueError(
                    f"channel {row.channel}, {crop.name}: heat {crop.heat.shape} "
                    f"does not match the crop {px.shape[:2]}"
                )
    if size is None:
        if rf_size < 1:
            raise ValueError(f"receptive field size must be positive, got {rf_size}")
        return rf_size
    return size


def display_size(size: int) -> int:
    """How large an S-pixel crop is drawn on a page: small ones enlarged by a whole factor
    (so every input pixel stays a crisp square), huge ones reduced."""
    if size < CROP_MIN:
        return size * math.ceil(CROP_MIN / size)
    return min(size, CROP_MAX)


def crop_picture(crop: Crop, side: int) -> np.ndarray:
    """The crop (heat blended over it when it has one) resized to ``side`` x ``side``."""
    pixels = crop.pixels
    if crop.heat is not None:
        heat = (np.clip(crop.heat, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        pixels = drawing.overlay(pixels, drawing.colormap(HIGHLIGHT_CMAP)[heat], heat)
    size = pixels.shape[0]
    if side == size:
        return pixels
    if side > size and side % size == 0:
        k = side // size
        return pixels.repeat(k, axis=0).repeat(k, axis=1)
    # nearest up (crisp input pixels); down, Pillow's antialiased bilinear: as smooth on
    # fine stripes as Lanczos and 3x faster (box filtering aliases at non-integer ratios)
    how = Image.Resampling.NEAREST if side > size else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(pixels).resize((side, side), how))


def rows_per_page(row_height: int) -> int:
    """Rows per page: the most of PAGE_ROWS whose page stays about PAGE_BODY pixels tall.

    Every page but a layer's last is full, and each choice divides 64, so a layer drawn a
    group of 64 (or 16) channels at a time gets the same pages as one drawn at once, and
    index.html can tell which page holds a channel from the number of pages alone.
    """
    for rows in PAGE_ROWS:
        if rows * row_height <= PAGE_BODY:
            return rows
    return PAGE_ROWS[-1]


def _fit(text: str, width: float, size: int) -> str:
    """``text`` shortened in the middle (keeping its end, the extension) to ``width`` px."""
    f = drawing.font(size)
    if f.getlength(text) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        head = (keep + 1) // 2
        short = text[:head] + "…" + text[len(text) - (keep - head) :]
        if f.getlength(short) <= width:
            return short
    return "…"


def _value(value: float) -> str:
    return f"{value:.4g}"


def _row_body(row: ChannelRow, k: int, side: int) -> Image.Image:
    width = LABEL_W + k * (side + GAP)
    height = side + CAPTION_H
    body = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(body)
    draw.text((8, 2), f"#{row.channel}", font=drawing.font(22), fill=FOREGROUND)
    crops = row.crops[:k]
    if not crops or all(c.value <= 0 for c in crops):
        draw.text((8, 32), "never", font=drawing.font(13), fill=drawing.WARNING)
        draw.text((8, 48), "active", font=drawing.font(13), fill=drawing.WARNING)
    small = drawing.font(12)
    for j in range(k):
        x = LABEL_W + j * (side + GAP)
        if j >= len(crops):
            draw.rectangle((x, 0, x + side - 1, side - 1), fill=EMPTY)
            continue
        crop = crops[j]
        body.paste(Image.fromarray(crop_picture(crop, side)), (x, 0))
        draw.text((x + 1, side + 2), _fit(crop.name, side - 2, 12), font=small, fill=FOREGROUND)
        draw.text((x + 1, side + 17), _value(crop.value), font=small, fill=MUTED)
    return body


def layer_pages(
    alias: str,
    module: str,
    rf_size: int,
    rows: list[ChannelRow],
    *,
    k: int,
    title: str,
    warning: str | None = None,
) -> list[Image.Image]:
    """One or more pages for a layer: one row per channel (its number at the left), k crops per
    row, each crop labelled with its image name and value; rows per page chosen to read well
    (:func:`rows_per_page`: ``rows`` may be any run of a layer's channels that starts on a
    multiple of 16, so that a big layer can be drawn a group at a time).

    ``title`` is the run's description (model, weights, stage, reduce), shown under the
    layer's own heading; ``warning`` (such as random weights) is drawn in orange.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    size = crop_size(rows, rf_size)
    side = display_size(size)
    row_h = side + CAPTION_H + PAD * 2
    per_page = rows_per_page(row_h)
    chunks = [rows[i : i + per_page] for i in range(0, len(rows), per_page)] or [[]]
    if size == side:
        shown = f"crops {size}x{size} px"
    elif side > size:
        shown = f"crops {size}x{size} px, enlarged {side // size}x (nearest)"
    else:
        shown = f"crops {size}x{size} px, shown at {side}x{side}"
    how = f"top {k} images per channel, best first  ·  receptive field {rf_size} px  ·  {shown}"
    pages = []
    for chunk in chunks:
        width = LABEL_W + k * (side + GAP) + PAD
        body = Image.new("RGB", (width, max(1, len(chunk)) * row_h), BACKGROUND)
        draw = ImageDraw.Draw(body)
        for i, row in enumerate(chunk):
            y = i * row_h
            if i:  # a faint rule between rows: the eye follows a channel across
                draw.line((PAD, y, width - PAD, y), fill=(60, 60, 68))
            body.paste(_row_body(row, k, side), (PAD, y + PAD))
        if not chunk:
            span = "no channels"
        elif len(chunk) == 1:
            span = f"channel #{chunk[0].channel}"
        else:
            span = f"channels #{chunk[0].channel}-#{chunk[-1].channel}"
        heading = f"{alias} ({module})  ·  {span}"
        pages.append(drawing.figure(body, [heading, title, how], None, warning))
    return pages


def strip_size(k: int, height: int = STRIP_HEIGHT) -> tuple[int, int]:
    """(width, height) of a channel strip of ``k`` slots: known before any is drawn, so that
    index.html can size every strip's box before it loads."""
    if k < 1 or height < 1:
        raise ValueError(f"k and height must be at least 1, got k={k}, height={height}")
    return k * height + (k - 1) * STRIP_GAP, height


def channel_strip(row: ChannelRow, *, k: int, height: int = STRIP_HEIGHT) -> Image.Image:
    """One channel's crops in a row, small, for index.html: k square slots of ``height`` px,
    best first; slots without an image are drawn dark."""
    size = strip_size(k, height)
    crop_size([row], height)
    strip = Image.new("RGB", size, BACKGROUND)
    for j in range(k):
        x = j * (height + STRIP_GAP)
        if j < len(row.crops):
            strip.paste(Image.fromarray(crop_picture(row.crops[j], height)), (x, 0))
        else:
            strip.paste(EMPTY, (x, 0, x + height, height))
    return strip


# --- a run's pictures, drawn and written ----------------------------------------------------


def draw_outputs(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    result: dict[str, Any],
    crops: Crops,
    options: TopOptions,
    out_dir: Path,
    events: Events,
) -> Path | None:
    """Pages per layer, one strip per channel, and index.html; returns the index's path, or
    None when ``events.should_stop()`` (polled between groups of channels) ended it early."""
    from vggviz.top import index_page

    events.phase("pictures", sum(len(result["layers"][la.alias]["channels"]) for la in layers))
    _clear_pictures(out_dir)
    k = result["k"]

    warning = drawing.random_warning(loaded.random, loaded.weights)
    pages: dict[str, list[str]] = {}
    strips: dict[str, dict[int, str]] = {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="vggviz-png") as encoder:
        for layer in layers:
            alias = layer.alias
            channels = result["layers"][alias]["channels"]
            target = crops.layers[alias]
            pages[alias], strips[alias] = [], {}
            lifecycle.real_folder(out_dir / STRIPS_DIR / alias, out_dir)
            for first in range(0, len(channels), DRAW_GROUP):
                stop = min(first + DRAW_GROUP, len(channels))
                pixels, glow = target.store.get(first, stop)
                rows = [
                    ChannelRow(
                        channel=ch["channel"],
                        crops=[
                            Crop(
                                pixels=pixels[i, r],
                                name=Path(entry["input"]).name,
                                value=entry["value"],
                                heat=None if glow is None else glow[i, r],
                            )
                            for r, entry in enumerate(ch["top"])
                        ],
                    )
                    for i, ch in enumerate(channels[first:stop])
                ]
                title = (
                    f"{loaded.arch}, weights {loaded.weights}  ·  {result['images']} images  ·  "
                    f"{options.reduce} of each map at {options.stage}"
                )
                done: list[Future[Path]] = []
                for image in layer_pages(
                    alias,
                    layer.name,
                    target.field.size,
                    rows,
                    k=k,
                    title=title,
                    warning=warning,
                ):
                    number = len(pages[alias]) + 1  # JPEG: pages are photos (crops), see save_jpeg
                    name = f"{PAGES_DIR}/{layer.index:02d}-{alias}-{number:02d}.jpg"
                    pages[alias].append(name)
                    done.append(encoder.submit(files.save_jpeg, image, out_dir / name))
                for row in rows:
                    name = f"{STRIPS_DIR}/{alias}/{row.channel:04d}.jpg"
                    strips[alias][row.channel] = name
                    done.append(encoder.submit(save_strip, row, k, out_dir / name))
                for future in done:
                    future.result()
                events.advance(len(rows))
                if events.should_stop():  # between groups of channels
                    return None
    return index_page.write_top_index(out_dir, result, pages=pages, strips=strips)


def _clear_pictures(out_dir: Path) -> None:
    """Remove an earlier run's pages and strips, of every layer (a run over fewer layers, or
    with fewer pages, must leave none of them behind): only files named as top names them,
    in folders that are real (checked by the job before anything changed)."""
    pages = lifecycle.real_folder(out_dir / PAGES_DIR, out_dir)
    for entry in os.scandir(pages):
        if _PAGE.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)
    strips = lifecycle.real_folder(out_dir / STRIPS_DIR, out_dir)
    for folder in os.scandir(strips):
        if not _LAYER.fullmatch(folder.name):
            continue
        if not folder.is_dir(follow_symlinks=False):
            os.unlink(folder.path)  # a link where a layer's strips go: never followed
            continue
        for entry in os.scandir(folder.path):
            if _STRIP.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        with contextlib.suppress(OSError):
            os.rmdir(folder.path)  # unless something else is in it


def save_strip(row: Any, k: int, path: Path) -> Path:
    """Drawn and encoded on a worker thread: Pillow's resizing and encoding release the GIL."""
    return files.save_jpeg(channel_strip(row, k=k), path, quality=85)
