"""What issue 16 changed for speed and memory, checked to change no picture: the PNG writer
around ISA-L's deflate, what a batch keeps of its maps for drawing, drawing lanes and their
number, and BatchNorm that writes over its input."""

from __future__ import annotations

import copy
import io
import json
import os
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_photo
from PIL import Image, ImageDraw

from vggviz.cli import cli
from vggviz.core import drawing, files, memory, per_image, png
from vggviz.core.text import display
from vggviz.features import pictures
from vggviz.model.hooks import network_maps
from vggviz.model.loading import InPlaceBatchNorm2d, load_model

CAPTION = pictures.Caption("photo.jpg", "weights.pth", False, "network", "relu")


def _pixels(data: bytes | Path) -> tuple[str, np.ndarray, list[int] | None]:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        image.load()
        return image.mode, np.asarray(image), image.getpalette()


def _maps(seed: int = 0, channels: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = rng.gamma(1.5, 1.0, (channels, 12, 20)).astype(np.float32)
    maps[rng.random(maps.shape) < 0.4] = 0  # ReLU's zeros
    return maps


def _drawn() -> list[Image.Image]:
    """Pictures as vggviz draws them: a palette layer grid, an RGB overlay grid and an
    overview holding a photo."""
    fmap, photo = _maps(), np.random.default_rng(1).integers(0, 255, (24, 40, 3), np.uint8)
    layer, _ = pictures.layer_picture(
        fmap, alias="conv3", module="features.7", caption=CAPTION, style=pictures.Style()
    )
    overlay, _ = pictures.layer_picture(
        fmap, alias="conv3", module="features.7", caption=CAPTION,
        style=pictures.Style(overlay=True, grid="2x2"), photo=photo,
    )  # fmt: skip
    tiles, top = pictures.overview_tiles(fmap, pictures.Style())
    row = pictures.OverviewRow("conv3", "features.7", fmap.shape, tiles, top)
    overview = pictures.overview_picture([row], photo, CAPTION, pictures.Style())
    return [layer, overlay, overview]


@pytest.mark.parametrize("deflate", ["isal", "zlib"])
def test_png_files_hold_exactly_the_pictures(monkeypatch, deflate) -> None:
    if deflate == "zlib":  # a platform without isal
        monkeypatch.setattr(png, "deflate", zlib)
    assert [image.mode for image in _drawn()] == ["P", "RGB", "RGB"]
    for image in _drawn():
        mode, pixels, palette = _pixels(png.encode(image))
        assert mode == image.mode
        assert np.array_equal(pixels, np.asarray(image))
        if mode == "P":
            assert palette == image.getpalette()
    grey = Image.fromarray(np.arange(60, dtype=np.uint8).reshape(6, 10))
    assert np.array_equal(_pixels(png.encode(grey))[1], np.asarray(grey))


def test_a_palette_shorter_than_the_indices_drawn_still_gives_each_a_colour() -> None:
    image = Image.fromarray(np.array([[0, 1, 7]], dtype=np.uint8), "L")
    image.putpalette([255, 0, 0, 0, 255, 0])  # two colours, index 7 drawn
    mode, pixels, palette = _pixels(png.encode(image))
    assert mode == "P" and pixels.tolist() == [[0, 1, 7]]
    assert palette is not None and palette[:6] == [255, 0, 0, 0, 255, 0]
    assert len(palette) >= 8 * 3


def test_save_png_writes_the_picture_and_falls_back_to_pillow_for_other_modes(tmp_path) -> None:
    layer = _drawn()[0]
    files.save_png(layer, tmp_path / "layer.png")
    assert np.array_equal(_pixels(tmp_path / "layer.png")[1], np.asarray(layer))
    rgba = Image.new("RGBA", (5, 4), (10, 20, 30, 128))
    assert not png.encodable(rgba)
    files.save_png(rgba, tmp_path / "rgba.png")
    mode, pixels, _ = _pixels(tmp_path / "rgba.png")
    assert mode == "RGBA" and np.array_equal(pixels, np.asarray(rgba))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(files.TMP_SUFFIX)]


@pytest.mark.parametrize(
    ("style", "overview"),
    [
        (pictures.Style(), True),
        (pictures.Style(select="first", grid="2x3"), True),  # overview: top 8, not the first
        (pictures.Style(grid="all"), False),
        (pictures.Style(scale="map", cmap="gray", grid="3x1"), True),
    ],
)
def test_what_a_batch_keeps_draws_the_same_pictures_as_the_whole_map(style, overview) -> None:
    fmap = _maps(seed=3)
    fmap[5, 0, 0] = np.inf  # overflowing weights: drawn as finite values, and said
    kept = pictures.keep(fmap, style, overview)
    assert len(kept.channels) < fmap.shape[0] or style.grid == "all"
    whole = pictures.finite_map(fmap)
    means = drawing.channel_means(whole)
    assert kept.finite is False and np.array_equal(kept.means, means)
    for kind, drawn in [
        ("whole", pictures.layer_picture(whole, alias="c", module="m", caption=CAPTION,
                                         style=style, means=means)),
        ("kept", pictures.layer_picture(kept, alias="c", module="m", caption=CAPTION,  # type: ignore[arg-type]
                                        style=style, means=kept.means)),
    ]:  # fmt: skip
        if kind == "whole":
            reference_image, reference_channels = drawn
        else:
            assert drawn[1] == reference_channels
            assert np.array_equal(np.asarray(drawn[0]), np.asarray(reference_image))
    if overview:
        a = pictures.overview_tiles(whole, style, means=means)
        b = pictures.overview_tiles(kept, style, means=kept.means)  # type: ignore[arg-type]
        assert a[1] == b[1] and np.array_equal(a[0], b[0])
    assert kept.max == float(whole.max())
    assert kept.zero_fraction == np.count_nonzero(whole == 0) / whole.size


def _features(out: Path, weights: Path, folder: Path, *extra: str, env=None):
    argv = ["features", str(folder), "--arch", "vgg11_bn", "--weights", str(weights)]
    argv += ["--size", "40", "--device", "cpu", "--no-filters", "--quiet", "-o", str(out)]
    result = CliRunner(env=env).invoke(cli, [*argv, *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def _same_folders(a: Path, b: Path, records: list[dict]) -> None:
    for record in records:
        folder = Path(record["folder"])
        for picture in sorted(folder.glob("*.png")):
            other = b / picture.relative_to(a)
            assert np.array_equal(_pixels(picture)[1], _pixels(other)[1]), picture


def test_lanes_and_processes_change_nothing_but_the_speed(tmp_path, vgg11_bn_file, monkeypatch):
    folder = tmp_path / "photos"
    for i in range(7):
        write_photo(folder / f"p{i}.png", 40 + 8 * (i % 2), 56, seed=i)
    lanes: dict[str, set[str]] = {}  # image folder -> the threads that drew it
    step = per_image._step

    def spy(owner, *args):
        lanes.setdefault(str(owner.folder), set()).add(threading.current_thread().name)
        return step(owner, *args)

    monkeypatch.setattr(per_image, "_step", spy)
    started = []  # drawing holds the GIL: several lanes draw in processes
    real = per_image.drawing_processes
    monkeypatch.setattr(per_image, "drawing_processes", lambda n: started.append(n) or real(n))
    one = _features(tmp_path / "one", vgg11_bn_file, folder, env={"VGGVIZ_DRAW_WORKERS": "1"})
    three = _features(tmp_path / "three", vgg11_bn_file, folder, env={"VGGVIZ_DRAW_WORKERS": "3"})
    assert started == [3]
    drawn_by = [lanes[r["folder"]] for r in three]
    assert all(len(threads) == 1 for threads in drawn_by)  # an image's steps: one lane
    assert len(set().union(*drawn_by)) == 3
    assert [r["input"] for r in three] == [r["input"] for r in one]  # input order
    assert [r["status"] for r in three] == ["ok"] * 7
    for a, b in zip(one, three, strict=True):
        assert a["layers"] == json.loads(
            json.dumps(b["layers"]).replace(str(tmp_path / "three"), str(tmp_path / "one"))
        )
    _same_folders(tmp_path / "one", tmp_path / "three", one)


def test_a_batch_without_raw_maps_draws_what_single_images_draw(tmp_path, vgg11_bn_file) -> None:
    """Batches keep only what drawing needs of their maps (not with --save-raw): the
    channels drawn, the statistics and the pictures are those of one image at a time."""
    folder = tmp_path / "photos"
    for i in range(3):
        write_photo(folder / f"p{i}.png", 40, 56, seed=i)
    one = _features(tmp_path / "one", vgg11_bn_file, folder)
    three = _features(tmp_path / "three", vgg11_bn_file, folder, "--batch-size", "3")
    for a, b in zip(one, three, strict=True):
        for la, lb in zip(a["layers"], b["layers"], strict=True):
            assert la["channels"] == lb["channels"]
            for key in ("mean", "max", "zero_fraction"):
                assert la[key] == pytest.approx(lb[key], rel=1e-4, abs=1e-5)
        for name in ("01-conv1.png", "08-conv8.png", "overview.png"):
            pa, pb = (_pixels(Path(r["folder"]) / name)[1].astype(int) for r in (a, b))
            assert np.count_nonzero(pa != pb) <= pa.size * 0.001  # batch arithmetic's last bit


def test_drawing_workers_follow_the_cores_and_the_memory(monkeypatch) -> None:
    monkeypatch.delenv("VGGVIZ_DRAW_WORKERS", raising=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 10**9)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    assert per_image.drawing_workers(False, 10**8) == 16 // per_image.DRAW_SHARE
    assert per_image.drawing_workers(True, 10**8) == per_image.MAX_DRAW_WORKERS
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {3}, raising=False)  # taskset
    assert per_image.drawing_workers(False, 10**8) == 1
    assert per_image.drawing_workers(True, 10**8) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    room = 6 * (10**8 + per_image.PROCESS_BYTES)
    monkeypatch.setattr(memory, "available_bytes", lambda: room)
    assert per_image.drawing_workers(True, 10**8) == 3  # half the free memory: 3 lanes
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**7)
    assert per_image.drawing_workers(True, 10**8) == 1  # never none
    monkeypatch.setenv("VGGVIZ_DRAW_WORKERS", "5")
    assert per_image.drawing_workers(False, 10**8) == 5
    for bad in ("0", "-2", "many", ""):
        monkeypatch.setenv("VGGVIZ_DRAW_WORKERS", bad)
        assert per_image.drawing_workers(False, 10**8) == 1


@pytest.fixture(scope="module")
def loaded_bn(vgg11_bn_file):
    return load_model("vgg11_bn", str(vgg11_bn_file), device="cpu")


def test_batch_norm_over_its_input_gives_the_same_maps_to_the_bit(loaded_bn) -> None:
    model, layers = loaded_bn.model, loaded_bn.layers
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(type(m) is InPlaceBatchNorm2d for m in norms)
    x = torch.randn(2, 3, 40, 56)
    got = {
        stage: {k: v.clone() for k, v in network_maps(model, layers, x, stage).items()}
        for stage in ("conv", "bn", "relu")
    }
    try:
        for m in norms:
            m.__class__ = torch.nn.BatchNorm2d
        for stage, maps in got.items():
            reference = network_maps(model, layers, x, stage)
            assert maps.keys() == reference.keys()
            for key, value in reference.items():
                assert torch.equal(maps[key], value), (stage, key)
    finally:
        for m in norms:
            m.__class__ = InPlaceBatchNorm2d


def test_batch_norm_keeps_its_input_where_autograd_or_training_needs_it(loaded_bn) -> None:
    norm = next(m for m in loaded_bn.model.modules() if isinstance(m, InPlaceBatchNorm2d))
    x = torch.randn(1, norm.num_features, 5, 6)
    with torch.no_grad():
        before = x.clone()
        out = norm(x)
    assert out.data_ptr() == x.data_ptr() and not torch.equal(x, before)  # over its input
    leaf = before.clone().requires_grad_(True)
    y = norm(leaf)  # autograd needs the input: a new tensor, and a gradient
    assert y.data_ptr() != leaf.data_ptr() and torch.equal(leaf, before)
    y.sum().backward()
    assert leaf.grad is not None
    training = copy.deepcopy(norm).train()  # (training updates the running statistics)
    kept = before.clone()
    with torch.no_grad():
        training(kept)
    assert torch.equal(kept, before)


def _rendered_whole(text: str, size: int) -> tuple[np.ndarray, tuple[int, ...], float]:
    """``text`` as Pillow renders it in one go: the reference for text put together."""
    f = drawing.font(size)
    x0, y0, x1, y1 = (int(v) for v in f.getbbox(text))
    mask = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    ImageDraw.Draw(mask).text((-x0, -y0), text, font=f, fill=255)
    return np.asarray(mask), (x0, y0, x1, y1), f.getlength(text)


def test_text_put_together_from_parts_is_the_text_rendered_whole() -> None:
    rng = np.random.default_rng(0)
    chars = sorted(drawing.COMPOSABLE)
    numbers = ["".join(rng.choice(chars, rng.integers(2, 10))) for _ in range(150)]
    numbers += ["xxxxxx", "0.0234", "-1.5e+03", "#511", "512x14x21"]
    titles = [
        f"{name}  ·  {alias}  ·  {shape}"
        for name in ("photo000.jpg", "Ünïcode — x.png", "AVAW.jpg", "日本語.png", "a", "")
        for alias, shape in (("conv1 (features.0)", "64x224x336"), ("conv13", "512x14x21"))
    ]
    titles += ["  ·  ", "  ·    ·  x", "x  ·  ", "new\nline  ·  conv2"]
    for size in (13, 15, 20, 22):
        for text in numbers + titles:
            shown = display(text)
            pixels, bbox, advance = _rendered_whole(shown, size)
            mask = drawing.text_mask(text, size)
            assert mask.bbox == bbox, (text, size)
            assert np.array_equal(mask.array, pixels), (text, size)
            assert drawing.text_length(text, size) == advance, (text, size)
    assert len(drawing._parts("photo000.jpg  ·  conv1  ·  64x224x336")) == 5
    assert len(drawing._parts("0.0234")) == 6  # really put together


def test_the_bundled_font_has_what_putting_text_together_needs() -> None:
    """Whole-pixel advances and no kerning among the characters labels are made of; should
    a Pillow release change its default font, this says why text could come out otherwise
    (the check at run time then renders such text whole)."""
    for size in (13, 15, 20, 22):
        f = drawing.font(size)
        for a in drawing.COMPOSABLE:
            assert float(f.getlength(a)).is_integer()
            for b in drawing.COMPOSABLE:
                assert f.getlength(a + b) == f.getlength(a) + f.getlength(b), (a, b, size)
        for c in "abcxyz019().·—":
            assert f.getlength(c + " ") == f.getlength(c) + f.getlength(" ")
            assert f.getlength(" " + c) == f.getlength(c) + f.getlength(" ")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux's /proc")
def test_the_weights_file_is_let_go_once_the_model_holds_its_weights(tmp_path, vgg11_bn_file):
    """Memory-mapped reading keeps the pages it touched resident for as long as any tensor
    points into the file (65 MB of a 528 MB checkpoint): the model's tensors are its own."""
    copy = tmp_path / "mine.pth"
    copy.write_bytes(vgg11_bn_file.read_bytes())
    loaded = load_model(None, str(copy), device="cpu")
    assert str(copy) not in Path("/proc/self/maps").read_text()
    assert loaded.contents is not None and loaded.contents.checkpoint.shapes  # info still there
    x = torch.randn(1, 3, 32, 32)
    assert network_maps(loaded.model, loaded.layers, x, "relu")  # and it runs


def test_a_drawing_process_that_dies_leaves_the_drawing_to_the_run(
    tmp_path, vgg11_bn_file, monkeypatch
) -> None:
    """A drawing process killed (by hand, by the kernel for memory) breaks the pool: the
    images go on being drawn in the run's own process, the same pictures, no error."""
    from concurrent.futures.process import BrokenProcessPool

    class Broken:
        def submit(self, *_args, **_kwargs):
            raise BrokenProcessPool("a process in the pool was terminated abruptly")

        def shutdown(self, **_kwargs) -> None:
            pass

    folder = tmp_path / "photos"
    for i in range(4):
        write_photo(folder / f"p{i}.png", 40, 56, seed=i)
    one = _features(tmp_path / "one", vgg11_bn_file, folder, env={"VGGVIZ_DRAW_WORKERS": "1"})
    monkeypatch.setattr(per_image, "drawing_processes", lambda _n: Broken())
    two = _features(tmp_path / "two", vgg11_bn_file, folder, env={"VGGVIZ_DRAW_WORKERS": "2"})
    assert [r["status"] for r in two] == ["ok"] * 4
    _same_folders(tmp_path / "one", tmp_path / "two", one)
