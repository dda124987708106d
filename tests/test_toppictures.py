"""Tests for vggviz.top.pictures: the layer pages and channel strips of ``vggviz top``.

Crops are solid, distinct colours, so where each one landed on a page (and how large) can be
read back exactly from the pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vggviz.core import drawing
from vggviz.top import pictures
from vggviz.top.pictures import ChannelRow, Crop, channel_strip, layer_pages

ORANGE = (255, 170, 60)  # warnings and "never active"


def _colour(channel: int, rank: int) -> tuple[int, int, int]:
    """A colour for each (channel, rank) that no text or background on a page uses."""
    return (17 + 5 * channel % 230, 29 + 37 * rank, 201 - 3 * channel % 190)


def _solid(colour: tuple[int, int, int], size: int) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()


def _rows(channels: list[int], k: int, size: int, value: float = 5.0) -> list[ChannelRow]:
    return [
        ChannelRow(
            c, [Crop(_solid(_colour(c, r), size), f"img{c}-{r}.jpg", value - r) for r in range(k)]
        )
        for c in channels
    ]


def _where(page: Image.Image, colour: tuple[int, int, int]) -> tuple[int, int, int, int, int]:
    """(count, left, top, right, bottom) of the pixels of exactly ``colour``."""
    a = np.asarray(page)
    ys, xs = np.nonzero((a == np.array(colour, np.uint8)).all(axis=2))
    if not len(ys):
        return (0, 0, 0, 0, 0)
    return (len(ys), int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _colours(page: Image.Image) -> set[tuple[int, int, int]]:
    a = np.asarray(page).reshape(-1, 3).astype(np.int64)
    codes = np.unique((a[:, 0] << 16) | (a[:, 1] << 8) | a[:, 2])
    return {(int(c >> 16), int(c >> 8 & 255), int(c & 255)) for c in codes}


def _pages(rows: list[ChannelRow], k: int, size: int, **kw) -> list[Image.Image]:
    kw.setdefault("title", "vgg16  ·  weights: test  ·  after relu  ·  reduce max")
    return layer_pages("conv5", "features.10", size, rows, k=k, **kw)


def test_page_has_one_row_per_channel_with_k_crops_best_first() -> None:
    channels, k, size = [3, 10, 42], 4, 100
    (page,) = _pages(_rows(channels, k, size), k, size)
    boxes = {(c, r): _where(page, _colour(c, r)) for c in channels for r in range(k)}
    for (c, r), (count, left, top, right, bottom) in boxes.items():
        # drawn whole, at its own size (100 px needs no enlarging), not cut by labels
        assert (count, right - left, bottom - top) == (size * size, size, size), (c, r)
    for c in channels:
        tops = {boxes[c, r][2] for r in range(k)}
        assert len(tops) == 1, f"channel {c}'s crops are not on one row"
        lefts = [boxes[c, r][1] for r in range(k)]
        assert lefts == sorted(lefts) and len(set(lefts)) == k, "not best first, left to right"
    row_tops = [boxes[c, 0][2] for c in channels]
    assert row_tops == sorted(row_tops) and len(set(row_tops)) == len(channels)
    # the channel column is left of every crop
    assert min(box[1] for box in boxes.values()) >= pictures.LABEL_W


def test_small_crops_are_enlarged_with_nearest_neighbour() -> None:
    # conv1 sees 3x3 pixels: each input pixel becomes a crisp block, the crop about 96 px
    pixels = np.array([[_colour(i, j) for j in range(3)] for i in range(3)], np.uint8)
    row = ChannelRow(0, [Crop(pixels, "a.jpg", 1.0)])
    (page,) = layer_pages("conv1", "features.0", 3, [row], k=1, title="t")
    side = pictures.display_size(3)
    assert side == 90 and side % 3 == 0
    block = side // 3
    for i in range(3):
        for j in range(3):
            count, left, top, right, bottom = _where(page, _colour(i, j))
            assert (count, right - left, bottom - top) == (block * block, block, block)


def test_display_size_keeps_mid_crops_and_bounds_the_others() -> None:
    assert [pictures.display_size(s) for s in (3, 5, 10, 40, 76, 92, 196, 212, 404)] == [
        90,
        90,
        90,
        120,
        152,
        92,
        196,
        212,
        256,
    ]


def test_large_crops_are_reduced_smoothly() -> None:
    size = 404  # VGG19's deepest receptive field at a large --size
    stripes = np.zeros((size, size, 3), np.uint8)
    stripes[:, ::2] = 255
    picture = pictures.crop_picture(Crop(stripes, "s.jpg", 1.0), 256)
    assert picture.shape == (256, 256, 3)
    # area-weighted, not sampled: a 1-px stripe pattern becomes even grey, not black or white
    assert 100 < picture.mean() < 155 and picture.std() < 40


def test_layers_are_split_into_even_pages() -> None:
    k, size = 2, 10
    rows = _rows(list(range(40)), k, size)
    pages = _pages(rows, k, size)
    seen = [_colours(p) for p in pages]
    on_page = [{c for c in range(40) if _colour(c, 0) in colours} for colours in seen]
    # 16 a page, every channel on exactly one page, in channel order
    assert on_page == [set(range(16)), set(range(16, 32)), set(range(32, 40))]


def test_big_crops_get_fewer_rows_per_page() -> None:
    k, size = 3, 196
    pages = _pages(_rows(list(range(24)), k, size), k, size)
    assert len(pages) == 3 and all(p.height < pictures.PAGE_BODY + 300 for p in pages)
    row = pictures.CAPTION_H + 2 * drawing.PAD
    assert pictures.rows_per_page(90 + row) == 16  # conv1-conv8 of VGG16
    assert pictures.rows_per_page(152 + row) == 16  # conv9, 76 px enlarged twice
    assert pictures.rows_per_page(196 + row) == 8  # conv13
    assert pictures.rows_per_page(256 + row) == 8  # the largest crop drawn


def test_a_layer_drawn_in_groups_gives_the_same_pages() -> None:
    # pass 2 draws a big layer 64 channels at a time to bound its memory
    k, size = 2, 24
    rows = _rows(list(range(128)), k, size)
    whole = _pages(rows, k, size)
    grouped = _pages(rows[:64], k, size) + _pages(rows[64:], k, size)
    assert len(whole) == len(grouped) == 8
    for a, b in zip(whole, grouped, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_labels_name_the_image_and_value() -> None:
    k, size = 1, 100

    def caption(name: str, value: float) -> np.ndarray:
        (page,) = _pages([ChannelRow(0, [Crop(_solid((90, 10, 200), size), name, value)])], k, size)
        _, left, _, right, bottom = _where(page, (90, 10, 200))
        return np.asarray(page)[bottom : bottom + pictures.CAPTION_H, left:right]

    short = caption("a.jpg", 1.0)
    assert short.max() > 150, "no caption drawn under the crop"
    assert not np.array_equal(short, caption("zebra.jpg", 1.0)), "the name is not drawn"
    assert not np.array_equal(short, caption("a.jpg", 41.5)), "the value is not drawn"


def test_long_names_are_shortened_in_the_middle_to_fit() -> None:
    name = "a_very_long_photo_name_from_some_camera_0001.jpg"
    short = pictures._fit(name, 96, 12)
    assert short != name and "…" in short and short.endswith(".jpg") and short.startswith("a_")
    assert drawing.font(12).getlength(short) <= 96
    assert pictures._fit("cat.jpg", 96, 12) == "cat.jpg"


def test_channels_no_image_activates_are_marked() -> None:
    k, size = 2, 100

    def label_column(value: float) -> np.ndarray:
        (page,) = _pages(_rows([7], k, size, value=value), k, size)
        _, left, top, _, _ = _where(page, _colour(7, 0))
        return np.asarray(page)[top : top + size, left - pictures.LABEL_W : left]

    def orange(a: np.ndarray) -> int:
        return int((np.abs(a.astype(int) - ORANGE).max(axis=2) < 30).sum())

    # values 0, -1 (a dead channel still lists images) against 5, 4
    assert orange(label_column(0.0)) > 30
    assert orange(label_column(5.0)) == 0


def test_missing_crops_leave_dark_slots() -> None:
    k, size = 4, 100
    row = ChannelRow(1, [Crop(_solid((90, 10, 200), size), "only.jpg", 3.0)])
    (page,) = _pages([row], k, size)
    assert _where(page, pictures.EMPTY)[0] == 3 * size * size


def test_highlight_blends_the_heat_over_the_crop() -> None:
    size = 40
    grey = _solid((128, 128, 128), size)
    heat = np.zeros((size, size), np.float32)
    heat[10:30, 10:30] = 1.0
    plain = pictures.crop_picture(Crop(grey, "g.jpg", 1.0), size)
    assert np.array_equal(plain, grey)
    lit = pictures.crop_picture(Crop(grey, "g.jpg", 1.0, heat), size)
    hot, cold = lit[20, 20].astype(int), lit[0, 0].astype(int)
    assert cold[0] == cold[1] == cold[2], "where the channel is silent the photo stays grey"
    assert hot[0] - hot[2] > 30, "where it fires the colour map shows (inferno: warm)"
    assert hot.mean() > cold.mean() + 30
    # on the page too
    row = ChannelRow(0, [Crop(grey, "g.jpg", 1.0, heat)])
    (page,) = layer_pages("conv1", "features.0", size, [row], k=1, title="t")
    assert _where(page, tuple(lit[20, 20]))[0] >= (20 * 3) ** 2  # enlarged 3x: 40 -> 120


def test_warning_is_drawn() -> None:
    rows = _rows([0], 1, 100)
    (plain,) = _pages(rows, 1, 100)
    (warned,) = _pages(rows, 1, 100, warning="RANDOM WEIGHTS: nothing here was learned")
    head = np.asarray(warned)[: warned.height - plain.height + 120]
    assert (np.abs(head.astype(int) - ORANGE).max(axis=2) < 30).sum() > 200


def test_crops_of_different_sizes_are_refused() -> None:
    rows = [
        ChannelRow(0, [Crop(_solid((1, 2, 3), 10), "a.jpg", 1.0)]),
        ChannelRow(1, [Crop(_solid((1, 2, 3), 12), "b.jpg", 1.0)]),
    ]
    with pytest.raises(ValueError, match=r"channel 1, b\.jpg: crop is 12 px"):
        _pages(rows, 1, 10)
    bad_heat = ChannelRow(0, [Crop(_solid((1, 2, 3), 10), "c.jpg", 1.0, np.zeros((9, 9)))])
    with pytest.raises(ValueError, match=r"c\.jpg: heat"):
        _pages([bad_heat], 1, 10)
    with pytest.raises(ValueError, match="k must be"):
        _pages(_rows([0], 1, 10), 0, 10)


def test_an_empty_layer_still_gives_a_page() -> None:
    (page,) = _pages([], 9, 196)
    assert page.width > 500 and page.height > 50


def test_channel_strip_slots_in_order() -> None:
    k, height = 5, 96
    row = _rows([4], 3, 3)[0]  # conv1-sized crops, 3 of 5
    strip = channel_strip(row, k=k, height=height)
    assert strip.size == (k * height + (k - 1) * pictures.STRIP_GAP, height)
    lefts = []
    for r in range(3):
        count, left, top, right, bottom = _where(strip, _colour(4, r))
        assert (count, right - left, bottom - top) == (height * height, height, height)
        lefts.append(left)
    assert lefts == [r * (height + pictures.STRIP_GAP) for r in range(3)]
    assert _where(strip, pictures.EMPTY)[0] == 2 * height * height


def test_channel_strip_shrinks_big_crops() -> None:
    row = _rows([0], 2, 196)[0]
    strip = channel_strip(row, k=2, height=48)
    assert strip.size == (2 * 48 + 2, 48)
    assert _where(strip, _colour(0, 1))[0] == 48 * 48
