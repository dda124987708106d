from __future__ import annotations

import numpy as np
import pytest

from vggviz.core import drawing
from vggviz.core.errors import UsageError
from vggviz.features import pictures


def test_to_uint8_map_scale_stretches_each_map_and_blackens_constant_ones() -> None:
    maps = np.array([[[0.0, 1.0], [2.0, 4.0]], [[5.0, 5.0], [5.0, 5.0]]], dtype=np.float32)
    out = drawing.to_uint8(maps, "map")
    assert out.dtype == np.uint8
    assert out[0].tolist() == [[0, 64], [128, 255]]
    assert out[1].tolist() == [[0, 0], [0, 0]]
    assert maps[0, 1, 1] == 4.0  # input untouched


def test_to_uint8_layer_scale_is_shared_and_clipped() -> None:
    maps = np.array([[[0.0, 1.0]], [[2.0, 9.0]]], dtype=np.float32)
    out = drawing.to_uint8(maps, "layer", (0.0, 2.0))
    assert out.tolist() == [[[0, 128]], [[255, 255]]]


def test_layer_range_ignores_a_single_hot_pixel() -> None:
    maps = np.zeros((4, 50, 50), dtype=np.float32)
    maps[:, :, :25] = 1.0
    maps[0, 0, 0] = 1000.0
    lo, hi = drawing.layer_range(maps)
    assert (lo, hi) == (0.0, 1.0)


def test_select_channels_first_and_top() -> None:
    maps = np.stack([np.full((2, 2), v, dtype=np.float32) for v in (3, 9, 1, 9, 5)])
    assert drawing.select_channels(maps, 3, "first") == [0, 1, 2]
    assert drawing.select_channels(maps, 3, "top") == [1, 3, 4]  # ties keep channel order
    assert drawing.select_channels(maps, 99, "top") == [1, 3, 4, 0, 2]


def test_grid_layout_and_shape_parsing() -> None:
    tiles = np.stack([np.full((2, 3, 3), i * 40, dtype=np.uint8) for i in range(5)])
    out = drawing.grid(tiles, 2, 3, pad=1)
    assert out.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
    assert out[1, 1].tolist() == [0, 0, 0] and out[1, 5].tolist() == [40, 40, 40]
    assert out[4, 5].tolist() == [160, 160, 160]  # fifth tile: row 2, column 2
    assert out[4, 9].tolist() == list(drawing.BACKGROUND)  # sixth cell stays empty
    assert drawing.grid_shape("4x4", 64) == (4, 4)
    assert drawing.grid_shape("2X8", 64) == (2, 8)
    assert drawing.grid_shape("all", 64) == (8, 8)
    assert drawing.grid_shape("all", 10) == (3, 4)
    for bad in ("0x4", "4", "axb", "4x", "1x4097"):
        with pytest.raises(UsageError, match="expected RxC"):
            drawing.grid_shape(bad, 64)


@pytest.mark.parametrize(
    ("spec", "available", "expected"),
    [
        ("1x4096", 64, (1, 64)),  # columns clamp like rows: 64 tiles, not 4096 cells
        ("4096x4096", 512, (1, 512)),
        ("3x200", 10, (1, 10)),
        ("200x3", 10, (4, 3)),
        ("4x4", 10, (3, 4)),
        ("4x4", 16, (4, 4)),
        ("8x8", 1, (1, 1)),
        ("all", 1, (1, 1)),
    ],
)
def test_grid_shape_never_exceeds_the_channels(spec, available, expected) -> None:
    rows, cols = drawing.grid_shape(spec, available)
    assert (rows, cols) == expected
    assert (rows - 1) * cols < available  # no empty row
    assert cols <= available


def test_a_wide_grid_draws_only_the_channels_there_are() -> None:
    """``--grid 1x200000`` used to allocate 11.5 GB of empty cells for 64 tiles; now it is
    a usage error, and the widest grid allowed is clamped to the channels."""
    with pytest.raises(UsageError, match="at most 4096 rows and 4096 columns"):
        drawing.grid_shape("1x200000", 64)
    rows, cols = drawing.grid_shape("1x4096", 64)
    tiles = np.zeros((64, 8, 8, 3), dtype=np.uint8)
    out = drawing.grid(tiles, rows, cols, pad=1)
    assert out.shape == (1 * 9 + 1, 64 * 9 + 1, 3)


def test_colormaps() -> None:
    assert drawing.colormap("gray")[200].tolist() == [200, 200, 200]
    viridis = drawing.colormap("viridis")
    assert viridis.shape == (256, 3) and viridis[0].tolist() == [68, 1, 84]
    with pytest.raises(ValueError, match="unknown colour map 'nope'"):
        drawing.check_colormap("nope")


def _layer_picture(fmap: np.ndarray, style: pictures.Style, random: bool = False):
    caption = pictures.Caption("cat.jpg", "test weights", random, "network", "relu")
    return pictures.layer_picture(
        fmap, alias="conv3", module="features.7", caption=caption, style=style
    )


def test_layer_picture_grid_tiles_and_channels() -> None:
    """16 constant 14x14 channels, channel i worth i: top-first order, one grey level each."""
    fmap = np.stack([np.full((14, 14), float(i), dtype=np.float32) for i in range(16)])
    image, channels = _layer_picture(fmap, pictures.Style(cmap="gray", scale="layer"))
    assert channels == list(range(15, -1, -1))
    tile, pad = 14 * 16, drawing.PAD  # 14 px maps are enlarged 16x to 224
    body = 4 * (tile + pad) + pad
    assert image.width == body
    top = image.height - body
    assert image.mode == "P"
    px = np.asarray(image.convert("RGB")).astype(int)
    for k, channel in enumerate(channels):
        r, c = divmod(k, 4)
        y, x = top + pad + r * (tile + pad) + tile // 2, pad + c * (tile + pad) + tile // 2
        level = round(channel / 15 * 255)  # within one palette step of the grey level
        assert px[y, x, 0] == px[y, x, 1] == px[y, x, 2] and abs(px[y, x, 0] - level) <= 1


def test_layer_picture_map_scale_and_first_selection() -> None:
    fmap = np.stack([np.full((14, 14), float(i), dtype=np.float32) for i in range(20)])
    fmap[2, :7] = 0.0  # half dark: stretched on its own, the other half is white
    image, channels = _layer_picture(
        fmap, pictures.Style(select="first", cmap="gray", scale="map", grid="2x3")
    )
    assert channels == [0, 1, 2, 3, 4, 5]
    px = np.asarray(image.convert("RGB"))
    tile, pad = 224, drawing.PAD
    top = image.height - (2 * (tile + pad) + pad)
    x = pad + 2 * (tile + pad) + tile // 2
    assert px[top + pad + 40, x].tolist() == [0, 0, 0]
    assert px[top + pad + 200, x].tolist() == [255, 255, 255]


def test_grid_all_keeps_the_picture_a_sensible_size() -> None:
    fmap = np.random.default_rng(0).random((512, 14, 14), dtype=np.float32)
    image, channels = _layer_picture(fmap, pictures.Style(grid="all"))
    assert len(channels) == 512
    tile = 14 * 11  # 23 columns: tiles shrink from 224 to 3600 // 23 = 156 -> 14 x 11
    assert image.width == 23 * (tile + drawing.PAD) + drawing.PAD
    assert drawing.tile_factor(14, 14, 4) == 16.0  # a 4x4 grid keeps 224-pixel tiles


def test_titles_are_never_cut_off() -> None:
    fmap = np.random.default_rng(0).random((4, 14, 14), dtype=np.float32)
    image, _ = _layer_picture(fmap, pictures.Style(grid="1x2", overlay=True), random=True)
    px = np.asarray(image.convert("RGB")).astype(int)
    title_rows = px[: image.height - (224 + 2 * drawing.PAD)]
    text = np.abs(title_rows - np.array(drawing.BACKGROUND)).sum(axis=-1) > 60
    columns = np.nonzero(text.any(axis=0))[0]
    assert columns.max() < image.width - drawing.PAD  # the last text column has a margin after it


def test_random_weights_are_announced_in_the_title() -> None:
    fmap = np.random.default_rng(0).random((8, 10, 10), dtype=np.float32)
    warn = np.array([255, 170, 60])
    for random, expected in ((True, True), (False, False)):
        image, _ = _layer_picture(fmap, pictures.Style(cmap="gray"), random=random)
        px = np.asarray(image.convert("RGB"))[:150]
        assert (np.abs(px.astype(int) - warn).sum(axis=-1) < 30).any() == expected


def test_filters_picture_rgb_kernels() -> None:
    weight = np.zeros((64, 3, 3, 3), dtype=np.float32)
    weight[0, 0] = 1.0  # kernel 0: red input channel only -> (255, 128, 128)
    weight[1, 2] = -1.0  # kernel 1: negative blue -> (128, 128, 0)
    image = pictures.filters_picture(
        weight, alias="conv1", module="features.0", weights="w", random=False, view="rgb"
    )
    tile, pad = 96, 6
    assert image.width == 8 * (tile + pad) + pad
    top = image.height - image.width
    px = np.asarray(image)
    centre = top + pad + tile // 2
    assert px[centre, pad + tile // 2].tolist() == [255, 128, 128]
    assert px[centre, pad + tile + pad + tile // 2].tolist() == [128, 128, 0]
    assert px[centre, pad + 2 * (tile + pad) + tile // 2].tolist() == [128, 128, 128]
    with pytest.raises(UsageError, match="conv2 has 64 input channels; rgb needs 3") as err:
        pictures.filters_picture(
            np.zeros((8, 64, 3, 3), np.float32),
            alias="conv2",
            module="features.2",
            weights="w",
            random=False,
            view="rgb",
        )
    assert err.value.param == "view"
