"""Tests for vggviz.top.index_page: the index.html of a ``vggviz top`` run, and the page as
Chromium draws it."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_report import _chromium, _Page, _screenshot

from vggviz.core.files import save_png
from vggviz.top import index_page
from vggviz.top.index_page import write_top_index
from vggviz.top.pictures import ChannelRow, Crop, channel_strip, save_strip

K = 3


def _channel(number: int, *, dead: float = 0.25, peak: float = 8.0, **extra: Any) -> dict:
    channel = {
        "channel": number,
        "dead_fraction": dead,
        "mean": peak / 4,
        "max": peak,
        "histogram": {
            "edges": [peak * i / 4 for i in range(5)],
            "counts": [9, 4, 0, 1] if peak > 0 else [14, 0, 0, 0],
        },
        "top": [
            {"input": f"photos/p{number}-{r}.jpg", "value": peak - r, "location": [1, 2]}
            for r in range(K)
        ],
    }
    channel.update(extra)
    return channel


def _result(**layers: list[dict]) -> dict:
    return {
        "arch": "vgg11",
        "weights": "random",
        "stage": "relu",
        "reduce": "max",
        "size": 32,
        "images": 14,
        "k": K,
        "layers": {
            alias: {
                "module": f"features.{i}",
                "receptive_field": {"size": 3 + 2 * i, "jump": 1 + i},
                "channels": channels,
            }
            for i, (alias, channels) in enumerate(layers.items())
        },
    }


def _strips(result: dict) -> dict[str, dict[int, str]]:
    return {
        alias: {c["channel"]: f"strips/{alias}/c{c['channel']:04d}.png" for c in layer["channels"]}
        for alias, layer in result["layers"].items()
    }


def _write(tmp_path: Path, result: dict, pages=None, strips=None) -> tuple[Path, str, _Page]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    pages = {} if pages is None else pages
    strips = _strips(result) if strips is None else strips
    path = write_top_index(out, result, pages=pages, strips=strips)
    text = path.read_text(encoding="utf-8")
    return path, text, _Page(text)


def _ids(page: _Page) -> set[str]:
    return {a["id"] for _, a in page.tags if a.get("id")}


def test_layers_are_linked_from_the_top(tmp_path: Path) -> None:
    result = _result(conv1=[_channel(0), _channel(1)], conv2=[_channel(0)])
    path, text, page = _write(tmp_path, result)
    assert path == tmp_path / "out" / "index.html"
    hrefs = page.attrs("a", "href")
    ids = _ids(page)
    for alias in ("conv1", "conv2"):
        assert f"#layer-{alias}" in hrefs and f"layer-{alias}" in ids
    assert "<dt>arch</dt><dd>vgg11</dd>" in text and "<dt>k</dt><dd>3</dd>" in text
    assert "14 images, 2 layers, 3 channels, 0 never active" in page.text
    # every internal link lands somewhere
    for href in hrefs:
        if href and href.startswith("#"):
            assert href[1:] in ids, href
    assert "<script" not in text and "http" not in text and "data:" not in text


def test_each_channel_has_its_strip_dead_fraction_and_stats(tmp_path: Path) -> None:
    result = _result(conv1=[_channel(0, dead=0.125, peak=41.0), _channel(7, dead=0.5)])
    _, text, page = _write(tmp_path, result)
    imgs = [a for t, a in page.tags if t == "img"]
    assert [a["src"] for a in imgs] == ["strips/conv1/c0000.png", "strips/conv1/c0007.png"]
    assert all(a.get("loading") == "lazy" for a in imgs)
    # names and values of the top images as a tooltip, best first
    assert imgs[0]["title"].splitlines() == [
        "1. photos/p0-0.jpg  41",
        "2. photos/p0-1.jpg  40",
        "3. photos/p0-2.jpg  39",
    ]
    row = re.search(r'<tr id="layer-conv1-c0">(.*?)</tr>', text).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[0] == "#0" and cells[2:5] == ["12.5%", "10.25", "41"]


def test_histogram_bars_follow_the_counts(tmp_path: Path) -> None:
    _, text, _ = _write(tmp_path, _result(conv1=[_channel(0, peak=8.0)]))
    d = re.search(r'<svg class="hist"[^>]*><path d="([^"]*)"/></svg>', text).group(1)
    bars = re.findall(r"M(\d+) (\d+)v-([\d.]+)h\.9V\d+z", d)
    h = index_page.HIST_H
    # counts 9, 4, 0, 1: square-root heights, the empty bin drawn not at all
    got = {int(x): float(height) for x, base, height in bars}
    assert got == {0: h, 1: round(h * math.sqrt(4 / 9), 1), 3: round(h * math.sqrt(1 / 9), 1)}
    assert all(int(base) == h for _, base, _ in bars)
    assert '<div class="range"><span>0</span><span>8</span></div>' in text


@pytest.mark.parametrize(
    "hist",
    [None, "x", {"counts": []}, {"counts": [1, -2]}, {"counts": ["a"]}, {"edges": [0, 1]}],
)
def test_odd_histograms_are_left_out(tmp_path: Path, hist: Any) -> None:
    channel = _channel(0)
    channel["histogram"] = hist
    _, text, _ = _write(tmp_path, _result(conv1=[channel]))
    assert "<svg" not in text
    assert '<tr id="layer-conv1-c0">' in text


def test_never_active_channels_are_listed_per_layer(tmp_path: Path) -> None:
    result = _result(
        conv1=[_channel(0), _channel(1, dead=1.0, peak=0.0), _channel(2)],
        conv2=[_channel(0, dead=1.0, peak=0.0), _channel(1, dead=1.0, peak=0.0), _channel(2)],
        conv3=[_channel(0), _channel(1)],
    )
    _, text, page = _write(tmp_path, result)
    boxes = re.findall(r'<section class="layer" id="layer-(\w+)">.*?</section>', text, re.S)
    assert boxes == ["conv1", "conv2", "conv3"]
    sections = dict(re.findall(r'id="layer-(\w+)">(.*?)</section>', text, re.S))
    dead_links = {
        alias: re.findall(r'<div class="dead">.*?</div>', body, re.S)
        for alias, body in sections.items()
    }
    assert re.findall(r'href="#(layer-conv1-c\d+)"', dead_links["conv1"][0]) == ["layer-conv1-c1"]
    assert re.findall(r'href="#(layer-conv2-c\d+)"', dead_links["conv2"][0]) == [
        "layer-conv2-c0",
        "layer-conv2-c1",
    ]
    assert "(2 of 3)" in dead_links["conv2"][0]
    assert dead_links["conv3"] == [] and "Every channel is active" in sections["conv3"]
    assert "3 never active" in page.text  # the summary counts them all
    assert 'id="layer-conv2-c1" class="never"' in text


def test_never_active_without_dead_fraction_falls_back_to_max() -> None:
    assert index_page.never_active({"max": 0.0})
    assert not index_page.never_active({"max": 0.5})
    assert index_page.never_active({"dead_fraction": 1.0, "max": 3.0})
    assert not index_page.never_active({"dead_fraction": 0.99, "max": 0.0})
    assert not index_page.never_active({})


def test_strips_link_to_the_page_that_holds_their_channel(tmp_path: Path) -> None:
    channels = [_channel(c) for c in range(40)]
    pages = {"conv5": ["pages/conv5-1.png", "pages/conv5-2.png", "pages/conv5-3.png"]}
    _, text, _ = _write(tmp_path, _result(conv5=channels), pages=pages)
    # 40 channels on 3 pages: 16, 16, 8 (toppictures.layer_pages' split)
    for c, expected in [(0, 1), (15, 1), (16, 2), (31, 2), (32, 3), (39, 3)]:
        row = re.search(rf'<tr id="layer-conv5-c{c}">.*?</tr>', text).group(0)
        assert f'<a href="pages/conv5-{expected}.png"><img' in row, c
    labels = re.findall(r'<a href="pages/conv5-\d\.png">(page [^<]*)</a>', text)
    assert labels == ["page 1 (#0-#15)", "page 2 (#16-#31)", "page 3 (#32-#39)"]


@pytest.mark.parametrize(
    ("channels", "pages", "per"),
    [(512, 32, 16), (512, 64, 8), (64, 4, 16), (20, 2, 16), (9, 3, 4), (3, 1, 16), (40, 7, 0)],
)
def test_channels_per_page_follow_the_pictures(channels: int, pages: int, per: int) -> None:
    assert index_page.per_page(channels, pages) == per


def test_strips_are_not_linked_when_pages_do_not_fit_the_layout(tmp_path: Path) -> None:
    pages = {"conv5": [f"p{i}.png" for i in range(7)]}
    _, text, page = _write(tmp_path, _result(conv5=[_channel(c) for c in range(40)]), pages=pages)
    assert '<a href="p0.png"><img' not in text
    assert sorted(h for h in page.attrs("a", "href") if h.endswith(".png")) == pages["conv5"]


def test_links_are_quoted_and_text_escaped(tmp_path: Path) -> None:
    evil = '<b>&"x".jpg'
    channel = _channel(0)
    channel["top"][0]["input"] = evil
    result = _result(**{"conv 1": [channel]})
    strips = {"conv 1": {0: "strips/conv 1/c #0 ü.png"}}
    _, text, page = _write(tmp_path, result, pages={"conv 1": ["a:b.png"]}, strips=strips)
    assert page.attrs("img", "src") == ["strips/conv%201/c%20%230%20%C3%BC.png"]
    assert "a%3Ab.png" in page.attrs("a", "href")
    assert "<b>" not in text and evil in page.attrs("img", "title")[0]
    assert "#layer-conv%201" in page.attrs("a", "href") and "layer-conv%201" in _ids(page)


@pytest.mark.parametrize(
    "result",
    [
        {},
        {"layers": []},
        {"layers": {"conv1": "x"}},
        {"layers": {"conv1": {"channels": "x"}}},
        {"layers": {"conv1": {"channels": [1, None, {"channel": "x", "top": "y"}]}}},
        {"layers": {"conv1": {"channels": [{"channel": 0, "mean": None, "max": "?"}]}}},
        {"images": "many", "k": None, "layers": {"conv1": {"receptive_field": 3, "channels": []}}},
    ],
)
def test_missing_or_odd_fields_do_not_crash(tmp_path: Path, result: dict) -> None:
    _, text, _ = _write(tmp_path, result, strips={})
    assert text.rstrip().endswith("</html>")


def test_missing_strips_and_pages_leave_cells_empty(tmp_path: Path) -> None:
    result = _result(conv1=[_channel(0), _channel(1)])
    _, text, page = _write(tmp_path, result, strips={"conv1": {1: "s.png"}})
    assert page.attrs("img", "src") == ["s.png"]
    assert '<tr id="layer-conv1-c0"><td>#0</td><td></td>' in text


def test_strip_boxes_are_sized_before_they_load(tmp_path: Path) -> None:
    # lazy images with no size would make a link to channel 400 land somewhere else
    result = _result(conv1=[_channel(0), _channel(1)])
    out = tmp_path / "out"
    row = ChannelRow(0, [Crop(np.zeros((3, 3, 3), np.uint8), "a.jpg", 1.0)])
    path = save_strip(row, K, out / "strips" / "conv1" / "c0000.jpg")  # as a run writes it
    with Image.open(path) as strip:
        assert strip.format == "JPEG"
        ratio = f"img.strip {{ aspect-ratio: {strip.width} / {strip.height}; }}"
    strips = {"conv1": {0: "strips/conv1/c0000.jpg", 1: "strips/conv1/c0001.jpg"}}
    _, text, _ = _write(tmp_path, result, strips=strips)
    assert ratio in text
    # known from k and the strip height, not read from a file: no strip on disk, same box
    (out / "strips" / "conv1" / "c0000.jpg").unlink()
    _, text, _ = _write(tmp_path, result, strips=strips)
    assert ratio in text


def test_written_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("old", encoding="utf-8")
    write_top_index(out, _result(conv1=[_channel(0)]), pages={}, strips={})
    assert sorted(os.listdir(out)) == ["index.html"]
    assert "vggviz top" in (out / "index.html").read_text(encoding="utf-8")


def test_all_channels_of_vgg16_stay_quick_and_small(tmp_path: Path) -> None:
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    layers = {
        f"conv{i}": [
            _channel(c, dead=1.0 if c % 50 == 7 else 0.3, peak=0.0 if c % 50 == 7 else 5.0)
            for c in range(width)
        ]
        for i, width in enumerate(widths, 1)
    }
    result = _result(**layers)
    result["images"] = 10_000
    start = time.perf_counter()
    path, text, page = _write(tmp_path, result)
    elapsed = time.perf_counter() - start
    assert elapsed < 5, f"{elapsed:.1f} s for 4,224 channels"
    assert path.stat().st_size < 8_000_000
    rows = re.findall(r'<tr id="layer-conv\d+-c\d+"', text)
    assert len(rows) == 4224 == len(set(rows))
    assert all(a.get("loading") == "lazy" for t, a in page.tags if t == "img")
    assert "10,000 images, 13 layers, 4,224 channels, 91 never active" in page.text


def test_imports_neither_torch_nor_click() -> None:
    code = "import sys, vggviz.top.index_page; print(sorted({'torch', 'click'} & set(sys.modules)))"
    src = str(Path(index_page.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": src}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"


# --- the page as a person sees it ---------------------------------------------------------

HEADER = (0x1F, 0x2A, 0x44)
BARS = (0x2F, 0x5F, 0xB3)
DEAD_BOX = (0xFD, 0xF6, 0xE3)
STRIP_COLOURS = [(0, 160, 0), (230, 0, 200), (250, 120, 0)]


def test_page_renders_in_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary (apt-get install chromium) to render the page")
    out = tmp_path / "run #1 ü"
    result = _result(
        conv1=[_channel(0), _channel(1, dead=1.0, peak=0.0), _channel(2)], conv2=[_channel(0)]
    )
    strips: dict[str, dict[int, str]] = {"conv1": {}}
    for c, colour in enumerate(STRIP_COLOURS):
        pixels = np.broadcast_to(np.array(colour, np.uint8), (5, 5, 3)).copy()
        row = ChannelRow(c, [Crop(pixels, "p.jpg", 1.0)] * K)
        strips["conv1"][c] = f"strips/c {c}.png"
        save_png(channel_strip(row, k=K), out / strips["conv1"][c])
    pages = {"conv1": ["conv1 #1.png"]}
    Image.new("RGB", (50, 50)).save(out / "conv1 #1.png")
    index = write_top_index(out, result, pages=pages, strips=strips)

    shot = tmp_path / "shot.png"
    _screenshot(browser, index, shot, tmp_path / "profile")
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
    counts = {colour: n for n, colour in rgb.getcolors(maxcolors=1 << 24)}
    assert counts.get(HEADER, 0) > 1280 * 40
    assert counts.get(DEAD_BOX, 0) > 5_000, "the never-active box is missing"
    assert counts.get(BARS, 0) > 3 * 300, "histogram bars are missing"
    # each strip: 3 crops shown 80 px high, about 80 x 80 px each of its colour
    for colour in STRIP_COLOURS:
        assert counts.get(colour, 0) > 3 * 75 * 75, f"strip {colour} did not load"


def test_a_top_run_links_every_strip_to_the_page_that_holds_it(
    tmp_path: Path, vgg11_file: Path
) -> None:
    # pass 2 draws a layer a group of channels at a time; the pages must still be the ones
    # index.html expects, 16 channels each, in order
    from click.testing import CliRunner
    from conftest import write_photo

    from vggviz.cli import cli

    for i in range(3):
        write_photo(tmp_path / "photos" / f"p{i}.png", 40, 48, seed=i)
    out = tmp_path / "out"
    args = ["top", str(tmp_path / "photos"), "-o", str(out), "--arch", "vgg11"]
    args += ["--weights", str(vgg11_file), "--size", "32", "--layers", "conv1,conv2", "-k", "2"]
    result = CliRunner().invoke(cli, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    text = (out / "index.html").read_text(encoding="utf-8")
    for alias, channels in (("conv1", 64), ("conv2", 128)):
        links = re.findall(rf'<tr id="layer-{alias}-c(\d+)".*?<a href="([^"]+)"><img', text)
        assert len(links) == channels, alias
        pages = sorted({href for _, href in links})
        assert len(pages) == channels // 16 and all((out / p).is_file() for p in pages)
        for channel, href in links:
            assert href == pages[int(channel) // 16], (alias, channel)
