"""Tests for vggviz.features.index_page: the HTML itself, the atomic write, and the page as
Chromium draws it."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vggviz.features import index_page
from vggviz.features.index_page import write_index

TIMES = "\N{MULTIPLICATION SIGN}"
RUN_INFO = {"arch": "vgg16", "mode": "maps", "done": "1", "failed": "0", "skipped": "0"}


class _Page(HTMLParser):
    """Collects tags with their attributes, and the text, the way a browser would see them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.chunks: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    def attrs(self, tag: str, name: str) -> list[str | None]:
        return [a.get(name) for t, a in self.tags if t == tag]

    @property
    def text(self) -> str:
        return " ".join("".join(self.chunks).split())


def _layer(name: str, picture: str, **extra: Any) -> dict[str, Any]:
    layer = {
        "name": name,
        "module": "features.0",
        "shape": [64, 224, 336],
        "mean": 0.41,
        "max": 7.9,
        "zero_fraction": 0.52,
        "channels": [12, 3, 40],
        "picture": picture,
    }
    layer.update(extra)
    return layer


def _ok_record(folder: str, input_path: str = "photos/cat.jpg") -> dict[str, Any]:
    pictures = [f"{folder}/01-conv1.png", f"{folder}/02-conv2.png"]
    return {
        "input": input_path,
        "status": "ok",
        "folder": folder,
        "overview": f"{folder}/overview.png",
        "outputs": [*pictures, f"{folder}/overview.png"],
        "size": [224, 336],
        "layers": [_layer("conv1", pictures[0]), _layer("conv2", pictures[1], module="features.2")],
    }


def _write(tmp_path: Path, records: list[dict[str, Any]], **kw: Any) -> tuple[Path, str]:
    kw.setdefault("title", "vggviz run")
    kw.setdefault("run_info", RUN_INFO)
    path = write_index(tmp_path / "out", records, **kw)
    return path, path.read_text(encoding="utf-8")


def _summary(html_text: str) -> str:
    match = re.search(r'<p class="summary">(.*?)</p>', html_text)
    assert match, "no summary line"
    return re.sub(r"<[^>]+>", "", match.group(1))


# --- content -------------------------------------------------------------------------------


def test_ok_record_shows_layers_stats_and_links(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path, text = _write(tmp_path, [_ok_record("out/cat")])
    assert path == tmp_path / "out" / "index.html"
    page = _Page(text)

    assert "<title>vggviz run</title>" in text
    assert "<dt>arch</dt><dd>vgg16</dd>" in text
    assert _summary(text) == "1 image, 0 failed, 0 skipped"
    # The table of contents points at the section's anchor.
    assert "#img-1" in page.attrs("a", "href")
    assert 'id="img-1"' in text
    # One row per layer, with shape, stats, zero fraction in % and the channels drawn.
    assert (
        f"<tr><td>conv1</td><td>features.0</td><td>64{TIMES}224{TIMES}336</td><td>0.41</td>"
        "<td>7.9</td>"
        "<td>52.0%</td><td>12, 3, 40</td>" in text
    )
    assert "<td>conv2</td><td>features.2</td>" in text
    assert f"model input 224{TIMES}336" in page.text
    # Overview and thumbnails: relative to out/, lazy, each thumbnail linking to its PNG.
    imgs = [(a["src"], a.get("loading")) for t, a in page.tags if t == "img"]
    assert imgs == [
        ("cat/overview.png", "lazy"),
        ("cat/01-conv1.png", "lazy"),
        ("cat/02-conv2.png", "lazy"),
    ]
    hrefs = page.attrs("a", "href")
    for target in ("cat/overview.png", "cat/01-conv1.png", "cat/02-conv2.png", "cat/"):
        assert target in hrefs
    assert "../photos/cat.jpg" in hrefs
    # Nothing external, no script, no embedded data.
    assert "<script" not in text
    assert "data:" not in text
    assert "http" not in text


def test_many_channels_are_shortened(tmp_path: Path) -> None:
    record = {"input": "a.jpg", "status": "ok", "layers": [{"channels": list(range(100, 120))}]}
    _, text = _write(tmp_path, [record])
    assert "<td>100, 101, 102, 103, 104, 105, 106, 107, … (20 total)</td>" in text
    assert "108" not in text


def test_text_is_escaped(tmp_path: Path) -> None:
    evil = '<b>&"x".jpg'
    record = {
        "input": evil,
        "status": "error",
        "error": f"{evil}: <script>alert(1)</script>",
        "layers": [{"name": "<i>", "module": '"m"', "mean": "<nan>"}],
    }
    _, text = _write(tmp_path, [record], title="<T&>", run_info={"<k>": '"v"&'})
    assert "<b>" not in text
    assert "<i>" not in text
    assert "<script" not in text
    assert "<T&>" not in text
    assert "&lt;b&gt;&amp;&quot;x&quot;.jpg" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<title>&lt;T&amp;&gt;</title>" in text
    assert "<dt>&lt;k&gt;</dt><dd>&quot;v&quot;&amp;</dd>" in text
    assert "<td>&lt;i&gt;</td><td>&quot;m&quot;</td><td></td><td>&lt;nan&gt;</td>" in text
    page = _Page(text)  # and a parser reads the original strings back
    assert evil in page.text
    assert "image 1" not in page.text


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_links_are_relative_to_out_dir_and_quoted(
    tmp_path: Path, monkeypatch, absolute: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "my run"
    folder = out_dir / "cat #1 ü"
    picture = folder / "01-conv1 a?b%.png"

    def p(path: Path) -> str:
        return str(path) if absolute else str(path.relative_to(tmp_path))

    record = {
        "input": p(tmp_path / "in put" / "cat #1.jpg"),
        "status": "ok",
        "folder": p(folder),
        "overview": p(folder / "overview.png"),
        "outputs": [p(picture), p(folder / "maps.npz")],
        "layers": [_layer("conv1", p(picture))],
    }
    page = _Page(write_index(out_dir, [record], title="t", run_info={}).read_text("utf-8"))
    quoted_folder = "cat%20%231%20%C3%BC"
    assert page.attrs("img", "src") == [
        f"{quoted_folder}/overview.png",
        f"{quoted_folder}/01-conv1%20a%3Fb%25.png",
    ]
    hrefs = page.attrs("a", "href")
    assert "../in%20put/cat%20%231.jpg" in hrefs
    assert f"{quoted_folder}/" in hrefs
    assert f"{quoted_folder}/maps.npz" in hrefs  # an output not shown elsewhere is listed
    assert not any(h and (h.startswith("/") or "://" in h) for h in hrefs)


def test_link_through_symlinked_out_dir(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "real" / "cat").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    record = {"input": "x.jpg", "status": "ok", "overview": "real/cat/overview.png"}
    text = write_index(tmp_path / "alias", [record], title="t", run_info={}).read_text("utf-8")
    assert _Page(text).attrs("img", "src") == ["cat/overview.png"]


def test_error_record(tmp_path: Path) -> None:
    records = [
        {"input": "photos/x.jpg", "status": "error", "error": "photos/x.jpg: truncated image data"},
        _ok_record("out/cat"),
    ]
    _, text = _write(tmp_path, records)
    assert '<div class="errbox">photos/x.jpg: truncated image data</div>' in text
    assert text.count('class="errbox"') == 1
    assert '<span class="badge error">error</span>' in text
    assert '<li class="error"><a href="#img-1"' in text
    assert _summary(text) == "2 images, 1 failed, 0 skipped"
    section = text[text.index('id="img-1"') : text.index('id="img-2"')]
    assert "<table" not in section
    assert "<img" not in section


def test_skipped_record_links_earlier_pictures(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    record = {
        "input": "photos/old.jpg",
        "status": "skipped",
        "folder": "out/old",
        "outputs": ["out/old/01-conv1.png", "out/old/overview.png", "out/old/maps.npz"],
    }
    _, text = _write(tmp_path, [record, _ok_record("out/cat")])
    assert _summary(text) == "2 images, 0 failed, 1 skipped"
    section = text[text.index('id="img-1"') : text.index('id="img-2"')]
    page = _Page(section)
    assert "Skipped. Its pictures below are from an earlier run." in page.text
    # The overview is found among the outputs and shown large; the others are listed.
    assert '<div class="overview"><a href="old/overview.png">' in section
    assert page.attrs("img", "src") == ["old/overview.png", "old/01-conv1.png"]
    assert page.attrs("a", "href") == [
        "../photos/old.jpg",
        "#top",
        "old/",
        "old/overview.png",
        "old/01-conv1.png",
        "old/maps.npz",
    ]
    assert "<table" not in section


def test_skipped_record_with_nothing(tmp_path: Path) -> None:
    _, text = _write(tmp_path, [{"input": "a.jpg", "status": "skipped", "reason": "exists"}])
    assert '<div class="note">Skipped: exists.</div>' in text


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"status": "weird", "layers": None, "outputs": None, "size": "big"},
        {"input": 7, "layers": [{}, "junk", None, {"shape": "64x2", "channels": 5}]},
        {"status": "ok", "outputs": [None, 3, "", ["nested"]], "overview": None, "folder": ""},
        {"layers": [{"mean": None, "max": float("nan"), "zero_fraction": True, "picture": 1}]},
    ],
    ids=["empty", "wrong-types", "junk-layers", "junk-outputs", "junk-stats"],
)
def test_missing_or_odd_keys_do_not_crash(tmp_path: Path, record: dict[str, Any]) -> None:
    path, text = _write(tmp_path, [record])
    assert text.rstrip().endswith("</html>")
    assert 'id="img-1"' in text
    assert _summary(text) == "1 image, 0 failed, 0 skipped"
    assert sorted(os.listdir(path.parent)) == ["index.html"]


def test_run_info_values_need_not_be_strings(tmp_path: Path) -> None:
    _, text = _write(tmp_path, [], title="t", run_info={"done": 0, "failed": None})
    assert (
        '<dl class="info"><div><dt>done</dt><dd>0</dd></div><div><dt>failed</dt><dd></dd></div>'
        in text
    )


def test_odd_values_render_plainly(tmp_path: Path) -> None:
    _, text = _write(tmp_path, [{"layers": [{"max": float("nan"), "zero_fraction": True}]}])
    assert "<td></td><td></td><td></td><td></td><td>nan</td><td></td>" in text
    assert '<span class="badge unknown">unknown</span>image 1</h2>' in text


def test_empty_run(tmp_path: Path) -> None:
    _, text = _write(tmp_path, [])
    assert _summary(text) == "0 images, 0 failed, 0 skipped"
    assert "<nav" not in text
    assert "<section" not in text


def test_out_dir_is_created(tmp_path: Path) -> None:
    path = write_index(tmp_path / "a" / "b", [], title="t", run_info={})
    assert path.is_file()


# --- atomic write --------------------------------------------------------------------------


def test_write_leaves_no_temp_file_and_replaces_old_index(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("old", encoding="utf-8")
    _write(tmp_path, [_ok_record("out/cat")])
    assert sorted(os.listdir(out)) == ["index.html"]
    assert (out / "index.html").read_text(encoding="utf-8") != "old"


def test_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path, _ = _write(tmp_path, [])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _fail_on_second_section(monkeypatch) -> None:
    real = index_page._image_section
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> str:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(index_page, "_image_section", flaky)


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    _fail_on_second_section(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        write_index(out, [_ok_record("out/a"), _ok_record("out/b")], title="t", run_info={})
    assert os.listdir(out) == []


def test_failure_midway_keeps_old_index(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("old", encoding="utf-8")
    _fail_on_second_section(monkeypatch)
    with pytest.raises(RuntimeError, match="boom"):
        write_index(out, [_ok_record("out/a"), _ok_record("out/b")], title="t", run_info={})
    assert os.listdir(out) == ["index.html"]
    assert (out / "index.html").read_text(encoding="utf-8") == "old"


def test_imports_neither_torch_nor_click() -> None:
    code = (
        "import sys, vggviz.features.index_page; "
        "print(sorted({'torch', 'click'} & set(sys.modules)))"
    )
    src = str(Path(index_page.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": src}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"


# --- the page as a person sees it ---------------------------------------------------------

RED = (255, 0, 0)
THUMB_COLOURS = {"conv1": (0, 160, 0), "conv2": (0, 0, 255), "conv3": (255, 0, 255)}
HEADER = (0x1F, 0x2A, 0x44)
ERROR_BOX = (0xFD, 0xEC, 0xEA)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _screenshot(browser: str, page: Path, shot: Path, profile: Path) -> None:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        "--window-size=1280,1600",
        f"--screenshot={shot}",
        page.as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]


def test_page_renders_in_chromium(tmp_path: Path, monkeypatch) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary (apt-get install chromium) to render the page")
    monkeypatch.chdir(tmp_path)
    # Names that break unquoted links: a space, '#', and non-ASCII.
    folder = Path("run out") / "cat #1 ü"
    folder.mkdir(parents=True)
    Image.new("RGB", (300, 200), RED).save(folder / "overview.png")
    layers = []
    for i, (name, colour) in enumerate(THUMB_COLOURS.items(), 1):
        picture = folder / f"{i:02d}-{name} #.png"
        Image.new("RGB", (320, 200), colour).save(picture)
        layers.append(_layer(name, str(picture)))
    records = [
        {"input": "photos/bad.jpg", "status": "error", "error": "photos/bad.jpg: truncated"},
        {
            "input": "photos/cat #1 ü.jpg",
            "status": "ok",
            "folder": str(folder),
            "overview": str(folder / "overview.png"),
            "outputs": [layer["picture"] for layer in layers],
            "size": [224, 336],
            "layers": layers,
        },
    ]
    index = write_index(Path("run out"), records, title="vggviz test run", run_info=RUN_INFO)

    shot = tmp_path / "shot.png"
    _screenshot(browser, index.resolve(), shot, tmp_path / "profile")
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
    assert rgb.size == (1280, 1600)
    counts = {colour: n for n, colour in rgb.getcolors(maxcolors=1 << 24)}

    # The page itself: its dark header band and the error box's background.
    assert counts.get(HEADER, 0) > 1280 * 40
    assert counts.get(ERROR_BOX, 0) > 20_000
    # The overview, at its natural 300x200 size (the only pure red on the page).
    assert 0.97 * 300 * 200 <= counts.get(RED, 0) <= 300 * 200
    # Each layer's thumbnail: a 160x100 box, so well over 10,000 pixels of its colour.
    for name, colour in THUMB_COLOURS.items():
        assert counts.get(colour, 0) > 10_000, f"{name} thumbnail did not load"
