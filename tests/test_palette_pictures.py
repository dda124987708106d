"""Palette layer pictures read like the RGB ones: map tiles keep their colour map (at most one
quantisation step away), text changes only in its anti-aliasing shades. The references here
are computed from the maps with numpy and drawn with Pillow's own ImageDraw, not with
vggviz's rendering code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from vggviz.cli import cli
from vggviz.core import drawing
from vggviz.features import pictures

PAD = drawing.PAD


def _exact_gray(maps: np.ndarray) -> np.ndarray:
    """The layer scale by hand: 0.5th..99.9th percentile of the maps shown, clipped."""
    lo, hi = np.percentile(maps.reshape(-1), (0.5, 99.9))
    out = np.clip((maps.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5
    return out.astype(np.uint8)


def _tile_errors(
    picture: np.ndarray, gray: np.ndarray, lut: np.ndarray, cols: int, zoom: int
) -> tuple[int, int]:
    """Largest 8-bit difference from lut[gray] and largest distance in colour map levels,
    over every tile pixel outside the label boxes (the body is at the bottom, centred)."""
    n, h, w = gray.shape
    th, tw = h * zoom, w * zoom
    rows = -(-n // cols)
    body_h, body_w = rows * (th + PAD) + PAD, cols * (tw + PAD) + PAD
    top, left = picture.shape[0] - body_h, (picture.shape[1] - body_w) // 2
    lut = lut.astype(int)
    worst_rgb = worst_level = 0
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = top + PAD + r * (th + PAD), left + PAD + c * (tw + PAD)
        tile = picture[y : y + th, x : x + tw].astype(int)
        exact = gray[i].repeat(zoom, 0).repeat(zoom, 1).astype(int)
        keep = np.ones((th, tw), bool)
        keep[:24, :48] = False  # the channel label's box
        diff = np.abs(tile - lut[exact]).max(-1)
        worst_rgb = max(worst_rgb, int(diff[keep].max()))
        # which colour map level each pixel shows: the nearest entry around the exact one
        candidates = np.clip(exact[..., None] + np.arange(-3, 4), 0, 255)
        dist = np.abs(lut[candidates] - tile[..., None, :]).sum(-1)
        shown = candidates[np.arange(th)[:, None], np.arange(tw)[None], dist.argmin(-1)]
        assert (dist.min(-1)[keep] == 0).all(), "a tile pixel is not a colour map entry"
        worst_level = max(worst_level, int(np.abs(shown - exact)[keep].max()))
    return worst_rgb, worst_level


@pytest.mark.parametrize("cmap", ["inferno", "viridis", "gray"])
def test_map_tiles_are_within_one_level_of_the_colour_map(cmap: str) -> None:
    rng = np.random.default_rng(1)
    fmap = (rng.gamma(1.5, 1.0, (12, 9, 14)) * (rng.random((12, 1, 1)) + 0.2)).astype(np.float32)
    caption = pictures.Caption("x.jpg", "w", False, "network", "relu")
    style = pictures.Style(select="first", grid="3x4", cmap=cmap)
    image, channels = pictures.layer_picture(
        fmap, alias="conv2", module="features.3", caption=caption, style=style
    )
    assert image.mode == "P" and channels == list(range(12))
    px = np.asarray(image.convert("RGB"))
    lut = drawing.colormap(cmap)
    worst_rgb, worst_level = _tile_errors(px, _exact_gray(fmap), lut, 4, 224 // 14)
    assert worst_level <= 1
    steps = int(np.abs(np.diff(lut.astype(int), axis=0)).max())
    assert worst_rgb <= steps  # inferno's steepest step is 5 levels, viridis 3, grey 1
    assert worst_level == 1  # 224 levels cannot show all 256: the check sees quantisation


def test_a_few_layers_of_a_real_run_keep_their_colours(tmp_path: Path, vgg11_bn_file) -> None:
    """End to end on vgg11_bn: the raw maps saved beside the pictures are the reference."""
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    args = ["features", str(photo), "--arch", "vgg11_bn", "--weights", str(vgg11_bn_file)]
    args += ["--size", "32", "--device", "cpu", "--save-raw", "--layers", "1,4,8", "-o", str(out)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "photo_png" / "record.json").read_text())
    with np.load(out / "photo_png" / "maps.npz") as raw:
        maps = {name: raw[name] for name in raw.files}
    lut = drawing.colormap("inferno")
    for layer in record["layers"]:
        with Image.open(layer["picture"]) as im:
            assert im.mode == "P"
            px = np.asarray(im.convert("RGB"))
        fmap = maps[layer["name"]]
        gray = _exact_gray(fmap[layer["channels"]])
        zoom = int(drawing.tile_factor(*fmap.shape[1:], 4))
        worst_rgb, worst_level = _tile_errors(px, gray, lut, 4, zoom)
        assert worst_level <= 1 and worst_rgb <= 5, layer["name"]
    with Image.open(out / "photo_png" / "overview.png") as im:
        assert im.mode == "RGB"  # it holds the photo


def _pillow_text(size: tuple[int, int], xy, text: str, font_size: int, fill, background):
    ref = Image.new("RGB", size, background)
    ImageDraw.Draw(ref).text(xy, text, font=drawing.font(font_size), fill=fill)
    return np.asarray(ref).astype(int)


def test_palette_text_differs_only_in_anti_aliasing_shades() -> None:
    """Title and label text against Pillow's own ImageDraw.text on the same background."""
    pal = drawing.palette("inferno")
    cases = [
        (
            "cat.jpg  ·  conv5 (features.10)  ·  256x56x84",
            22,
            drawing.FOREGROUND,
            drawing.BACKGROUND,
        ),
        ("layer scale (0.5-99.9th pct)  ·  cmap inferno", 15, drawing.MUTED, drawing.BACKGROUND),
        ("RANDOM WEIGHTS, random (seed 0)", 15, drawing.WARNING, drawing.BACKGROUND),
        ("#137", 13, drawing.FOREGROUND, drawing.LABEL_BOX),
    ]
    for text, size, fg, bg in cases:
        canvas = np.full((40, 520), pal.solid[bg], dtype=np.uint8)
        drawing.paste_text(canvas, (10, 6), text, size, pal.ramps[(fg, bg)])
        mine = pal.colours[canvas].astype(int)
        ref = _pillow_text((520, 40), (10, 6), text, size, fg, bg)
        diff = np.abs(mine - ref).max(-1)
        solid = (ref == bg).all(-1) | (ref == fg).all(-1)
        assert (diff[solid] <= 1).all(), text  # no stray or missing text pixels
        # half a shade step: 236 levels (white on black) over 7 steps, rounded up
        assert diff.max() <= 18, text
        assert (diff > 0).any(), text  # the shades are quantised: the check can see it


def test_rgb_text_from_the_cache_is_pillows() -> None:
    """Overview and overlay pictures paste cached text: the same pixels as ImageDraw.text."""
    for text, size, xy in (
        ("conv13", 20, (8, 6)),
        ("features.40", 13, (3, 30)),
        ("#7", 13, (0, 0)),
    ):
        image = Image.new("RGB", (200, 60), drawing.BACKGROUND)
        drawing.draw_text(image, xy, text, size, drawing.MUTED)
        ref = _pillow_text((200, 60), xy, text, size, drawing.MUTED, drawing.BACKGROUND)
        assert np.abs(np.asarray(image).astype(int) - ref).max() <= 1, text
        assert (np.asarray(image) != drawing.BACKGROUND).any()


def test_the_overview_keeps_exact_colour_map_tiles() -> None:
    rng = np.random.default_rng(2)
    maps = [rng.gamma(1.2, 1.0, (c, s, s)).astype(np.float32) for c, s in ((16, 14), (32, 7))]
    style = pictures.Style()
    rows = []
    for k, fmap in enumerate(maps):
        tiles, channels = pictures.overview_tiles(fmap, style)
        rows.append(
            pictures.OverviewRow(f"conv{k + 1}", f"features.{k}", fmap.shape, tiles, channels)
        )
        means = fmap.mean(axis=(1, 2))
        assert channels == list(np.argsort(-means, kind="stable")[:8])
        exact = _exact_gray(fmap[channels])
        zoom = pictures.OVERVIEW_TILE // fmap.shape[1]
        want = drawing.colormap("inferno")[exact.repeat(zoom, 1).repeat(zoom, 2)]
        assert np.array_equal(tiles, want)  # RGB: no quantisation at all
    caption = pictures.Caption("x.jpg", "w", False, "network", "relu")
    photo = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    image = pictures.overview_picture(rows, photo, caption, style)
    assert image.mode == "RGB"
    px = np.asarray(image)
    # the second row's last tile, below the photo strip, right-aligned cells
    tile = pictures.OVERVIEW_TILE
    y = image.height - PAD - tile
    x = 190 + 7 * (tile + PAD)
    assert np.array_equal(px[y + 30 : y + tile, x : x + tile], rows[1].tiles[7][30:])
