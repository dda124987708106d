"""vggviz top: known answers, shards and merge, kill and resume, the recompute check, bad
inputs, and the pieces (top-K merging, statistics, crops)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_photo
from PIL import Image

from vggviz.cli import cli
from vggviz.core.vocabulary import REDUCES
from vggviz.model.loading import build
from vggviz.model.receptive import ReceptiveField
from vggviz.top.crops import cut, heat, pad_colour
from vggviz.top.ranking import NO_INPUT, TopK, channel_stats

# --- the pieces ----------------------------------------------------------------------------


def test_top_k_keeps_the_best_and_gives_ties_to_the_earlier_input() -> None:
    top = TopK.empty(channels=2, k=3)
    top.add(np.array([[1.0, 5.0], [2.0, 5.0]]), np.array([4, 7]), np.array([[0, 1], [2, 3]]))
    top.add(np.array([[2.0, 5.0], [0.5, 6.0]]), np.array([1, 9]), np.array([[4, 5], [6, 7]]))
    assert top.values.tolist() == [[2.0, 2.0, 1.0], [6.0, 5.0, 5.0]]
    # ties: 2.0 from inputs 7 and 1, 5.0 from 4, 7 and 1: the earlier input first
    assert top.inputs.tolist() == [[1, 7, 4], [9, 1, 4]]
    assert top.locations.tolist() == [[4, 2, 0], [7, 5, 1]]


def test_merging_in_any_grouping_gives_one_answer() -> None:
    rng = np.random.default_rng(0)
    values = np.round(rng.random((40, 6)), 1).astype(np.float32)  # many ties
    where = rng.integers(0, 50, (40, 6))
    whole = TopK.empty(6, 5)
    whole.add(values, np.arange(40), where)
    parts = [TopK.empty(6, 5) for _ in range(3)]
    for n in range(40):
        parts[n % 3].add(values[n : n + 1], np.array([n]), where[n : n + 1])
    merged = parts[2]
    merged.merge(parts[0])
    merged.merge(parts[1])
    for name in ("values", "inputs", "locations"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name))


def test_fewer_inputs_than_k_leave_empty_slots() -> None:
    top = TopK.empty(1, 3)
    top.add(np.array([[0.0]]), np.array([0]), np.array([[0]]))
    assert top.inputs.tolist() == [[0, NO_INPUT, NO_INPUT]]


def test_channel_statistics_streamed_in_blocks() -> None:
    matrix = np.array([[0, 1], [2, 1], [0, 3], [4, 1]], np.float16)
    stats = channel_stats(matrix, block_rows=3)
    assert stats.dead_fraction.tolist() == [0.5, 0.0]
    assert stats.mean.tolist() == [1.5, 1.5]
    assert stats.edges[0, 0] == 0 and stats.edges[0, -1] == 4
    assert stats.counts[0].sum() == 4 and stats.counts[0, 0] == 2 and stats.counts[0, -1] == 1
    assert stats.counts[1, 0] == 3 and stats.counts[1, -1] == 1


def test_crops_are_padded_with_what_the_padding_means() -> None:
    photo = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    out = cut(photo, (-1, -2, 3, 2), (9, 8, 7))
    assert out.shape == (4, 4, 3)
    assert (out[:2] == (9, 8, 7)).all() and (out[:, 0] == (9, 8, 7)).all()
    np.testing.assert_array_equal(out[2:, 1:], photo[:2, :3])
    assert pad_colour(True) == (124, 116, 104) and pad_colour(False) == (0, 0, 0)


def test_heat_peaks_at_the_winning_unit() -> None:
    field = ReceptiveField(size=8, jump=2, start=-3)
    fmap = np.zeros((4, 4), np.float32)
    fmap[1, 2] = 3.0
    glow = heat(fmap, field, field.window(1, 2))
    assert glow.shape == (8, 8) and 0.5 < glow.max() <= 1.0
    # the unit's centre falls between the crop's four central pixels: they share the peak
    assert (glow[3:5, 3:5] == glow.max()).all() and glow[0].max() == 0
    # at the photo's corner the window runs past it: nothing glows on the padding
    corner = field.window(0, 0)  # starts at -3
    assert heat(fmap * 0 + 1, field, corner)[:3, :3].min() > 0
    padded = heat(fmap * 0 + 1, field, corner, (8, 8))
    assert padded[:3].max() == 0 and padded[:, :3].max() == 0 and padded[3:, 3:].min() > 0


def test_the_cli_offers_the_library_s_reductions() -> None:
    option = next(p for p in cli.commands["top"].params if p.name == "reduce")
    assert tuple(option.type.choices) == REDUCES


# --- the command -------------------------------------------------------------------------


def top(out: Path, weights: Path, *args: str, arch: str = "vgg11"):
    argv = ["top", *map(str, args), "--arch", arch, "--weights", str(weights)]
    argv += ["--size", "32", "--device", "cpu", "-o", str(out)]
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


@pytest.fixture(scope="module")
def red_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vgg11 whose conv1 channel 0 is the red input (the centre tap of R) and whose conv2
    channel 0 copies it (after the pool); every other weight and bias is 0."""
    model = build("vgg11", "cpu")
    state = {
        k: torch.zeros_like(v) for k, v in model.state_dict().items() if k.startswith("features")
    }
    state["features.0.weight"][0, 0, 1, 1] = 1.0
    state["features.3.weight"][0, 0, 1, 1] = 1.0
    path = tmp_path_factory.mktemp("weights") / "red.pth"
    torch.save(state, path)
    return path


def red_dots(folder: Path) -> dict[str, tuple[int, int, int]]:
    """32x32 black photos with one red pixel: name -> (red, row, col); none.png is black."""
    dots = {"a.png": (200, 5, 7), "b.png": (255, 0, 0), "c.png": (100, 31, 20)}
    dots |= {"d.png": (255, 10, 10), "none.png": (0, 3, 3)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, (red, row, col) in dots.items():
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[row, col, 0] = red
        Image.fromarray(pixels).save(folder / name)
    return dots


def test_known_answer_a_red_detector(tmp_path: Path, red_detector: Path) -> None:
    photos = tmp_path / "photos"
    red_dots(photos)
    out = tmp_path / "out"
    result = top(out, red_detector, photos, "--no-normalize", "--layers", "conv1-conv2", "-k", "3")
    assert result.exit_code == 0, result.output
    found = json.loads((out / "top.json").read_text())
    assert (found["arch"], found["images"], found["k"], found["reduce"]) == ("vgg11", 5, 3, "max")
    conv1, conv2 = found["layers"]["conv1"], found["layers"]["conv2"]
    assert conv1["module"] == "features.0" and conv2["module"] == "features.3"
    assert conv1["receptive_field"] == {"size": 3, "jump": 1}
    assert conv2["receptive_field"] == {"size": 8, "jump": 2}

    def ranking(layer: dict, channel: int) -> list[tuple]:
        entries = layer["channels"][channel]["top"]
        return [(Path(e["input"]).name, e["value"], e["location"], e["box"]) for e in entries]

    # b and d tie at 255: b is the earlier input. Boxes are clipped to the 32x32 photo.
    assert ranking(conv1, 0) == [
        ("b.png", 1.0, [0, 0], [0, 0, 2, 2]),
        ("d.png", 1.0, [10, 10], [9, 9, 12, 12]),
        ("a.png", round(200 / 255, 6), [5, 7], [6, 4, 9, 7]),
    ]
    # conv2 sees the pooled map: 16x16 units, each 8 px wide, 2 px apart, from -3
    assert ranking(conv2, 0) == [
        ("b.png", 1.0, [0, 0], [0, 0, 5, 5]),
        ("d.png", 1.0, [5, 5], [7, 7, 15, 15]),
        ("a.png", round(200 / 255, 6), [2, 3], [3, 1, 11, 9]),
    ]
    zero = conv1["channels"][0]
    assert zero["dead_fraction"] == 0.2
    assert zero["mean"] == pytest.approx((200 + 255 + 100 + 255) / 255 / 5, rel=1e-3)
    assert zero["max"] == 1.0 and sum(zero["histogram"]["counts"]) == 5
    # a silent channel: max 0, dead everywhere, its top the first inputs at value 0
    silent = conv2["channels"][7]
    assert (silent["max"], silent["dead_fraction"]) == (0.0, 1.0)
    assert [(n, v) for n, v, *_ in ranking(conv2, 7)] == [
        ("a.png", 0.0),
        ("b.png", 0.0),
        ("c.png", 0.0),
    ]
    # the matrix: images x channels, float16, in input order
    matrix = np.load(out / "top-matrix" / "conv1.npy")
    assert matrix.shape == (5, 64) and matrix.dtype == np.float16
    np.testing.assert_allclose(matrix[:, 0], np.array([200, 255, 100, 255, 0]) / 255, rtol=1e-3)
    assert json.loads((out / "top-matrix" / "inputs.json").read_text())[1].endswith("b.png")
    pages = sorted(p.name for p in (out / "top-pages").iterdir())
    assert pages[0] == "01-conv1-01.jpg" and any(p.startswith("02-conv2") for p in pages)
    strip = Image.open(out / "top-strips" / "conv1" / "0000.jpg")
    assert strip.height == 96
    # the first crop of the strip is b.png's red dot at its top-left: red, not the padding
    first = np.asarray(strip.convert("RGB"))[:, :96]
    assert first[40:56, 40:56, 0].min() > 200 and first[40:56, 40:56, 1:].max() < 30
    assert not list(out.glob(".top-crops-*"))  # scratch files are gone
    index = (out / "index.html").read_text()
    assert "top-strips/conv1/0000.jpg" in index and "top-pages/02-conv2-01.jpg" in index


def test_reduce_mean_ranks_by_the_mean(tmp_path: Path, red_detector: Path) -> None:
    photos = tmp_path / "photos"
    red_dots(photos)
    out = tmp_path / "out"
    args = ("--no-normalize", "--layers", "conv1", "-k", "2", "--reduce", "mean")
    assert top(out, red_detector, photos, *args).exit_code == 0
    entries = json.loads((out / "top.json").read_text())["layers"]["conv1"]["channels"][0]["top"]
    assert [Path(e["input"]).name for e in entries] == ["b.png", "d.png"]
    assert entries[0]["value"] == pytest.approx(1 / 1024, rel=1e-5)
    assert entries[1]["location"] == [10, 10]  # cropped at the map's strongest unit


@pytest.fixture
def eight_photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for n in range(8):
        write_photo(folder / f"p{n}.png", 32 + 4 * (n % 3), 40, seed=n)
    return folder


def test_three_shards_merged_equal_one_run(tmp_path, eight_photos, vgg11_file) -> None:
    args = ("--layers", "conv1,conv2", "-k", "3")
    single = tmp_path / "single"
    assert top(single, vgg11_file, eight_photos, *args).exit_code == 0
    sharded = tmp_path / "sharded"
    for k in (1, 2, 3):
        result = top(sharded, vgg11_file, eight_photos, *args, "--shard", f"{k}/3")
        assert result.exit_code == 0, result.output
        assert "then --merge" in result.stderr
    assert not (sharded / "top.json").exists()
    result = top(sharded, vgg11_file, eight_photos, *args, "--merge")
    assert result.exit_code == 0, result.output
    assert (sharded / "top.json").read_bytes() == (single / "top.json").read_bytes()
    for name in ("conv1.npy", "conv2.npy", "inputs.json"):
        a, b = (d / "top-matrix" / name for d in (single, sharded))
        assert a.read_bytes() == b.read_bytes()
    found = json.loads((single / "top.json").read_text())
    assert found["images"] == 8 and len(found["layers"]["conv2"]["channels"]) == 128


def test_a_merge_refuses_missing_or_different_shards(tmp_path, eight_photos, vgg11_file) -> None:
    out = tmp_path / "out"
    assert top(out, vgg11_file, eight_photos, "--layers", "conv1", "--shard", "1/2").exit_code == 0
    result = top(out, vgg11_file, eight_photos, "--layers", "conv1", "--merge")
    assert result.exit_code == 1 and "shard(s) 2/2 missing" in result.stderr
    args = ("--layers", "conv1", "--reduce", "mean")
    assert top(out, vgg11_file, eight_photos, *args, "--shard", "2/2").exit_code == 0
    result = top(out, vgg11_file, eight_photos, "--layers", "conv1", "--merge")
    assert result.exit_code == 1  # what is in -o, like a missing shard: not a usage error
    assert "shard 2/2 was made with other options or inputs (reduce mean -> max)" in result.stderr
    empty = top(tmp_path / "empty", vgg11_file, eight_photos, "--layers", "conv1", "--merge")
    assert empty.exit_code == 1 and "nothing to merge: no shard results" in empty.stderr
    both = top(out, vgg11_file, eight_photos, "--merge", "--shard", "1/2")
    assert both.exit_code == 2 and "Invalid value for '--shard'" in both.stderr


def test_other_options_start_the_scan_over(tmp_path, eight_photos, vgg11_file) -> None:
    out = tmp_path / "out"
    assert top(out, vgg11_file, eight_photos, "--layers", "conv1", "--shard", "1/1").exit_code == 0
    again = top(out, vgg11_file, eight_photos, "--layers", "conv1", "--shard", "1/1")
    assert "scan already complete (8 inputs)" in again.stderr
    other = top(out, vgg11_file, eight_photos, "--layers", "conv1", "-k", "4", "--shard", "1/1")
    assert other.exit_code == 0
    assert "options changed since its checkpoint (k 9 -> 4): starting over" in other.stderr


def test_a_file_changed_since_the_scan_is_caught(tmp_path, eight_photos, vgg11_file) -> None:
    """Caught by the scan's fingerprint (each input by path, size and mtime): the scan is
    done again and says why. (A file changed between the passes of one run is caught by pass
    2's recompute check: test_top_folder.py.)"""
    out = tmp_path / "out"
    args = ("--layers", "conv1", "-k", "8")  # every photo is in every channel's top
    assert top(out, vgg11_file, eight_photos, *args).exit_code == 0
    write_photo(eight_photos / "p3.png", 32, 40, seed=99)
    result = top(out, vgg11_file, eight_photos, *args)
    assert result.exit_code == 0, result.output
    assert "scan already complete" not in result.stderr
    assert "inputs changed since its checkpoint (p3.png changed): starting over" in result.stderr
    fresh = tmp_path / "fresh"
    assert top(fresh, vgg11_file, eight_photos, *args).exit_code == 0
    assert (out / "top.json").read_bytes() == (fresh / "top.json").read_bytes()


def test_bad_inputs_are_named_and_the_run_goes_on(tmp_path, vgg11_file) -> None:
    folder = tmp_path / "mixed"
    write_photo(folder / "good.png")
    write_photo(folder / "sub" / "good2.png", seed=1)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "page.png").write_text("<!doctype html>")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = top(out, vgg11_file, folder, tmp_path / "missing.png", "--layers", "conv1")
    assert result.exit_code == 1
    assert "passed over 1 hidden and 1 non-image file(s)" in result.stderr
    assert f"error: {folder / 'empty.jpg'}: empty file" in result.stderr
    assert f"error: {folder / 'page.png'}: not an image" in result.stderr
    assert f"error: {tmp_path / 'missing.png'}: no such file" in result.stderr
    assert "2 scanned, 3 failed" in result.stderr
    found = json.loads((out / "top.json").read_text())
    assert (found["images"], found["failed"]) == (2, 3)
    names = {Path(e["input"]).name for c in found["layers"]["conv1"]["channels"] for e in c["top"]}
    assert names == {"good.png", "good2.png"}


def test_nothing_readable_is_an_error(tmp_path, vgg11_file) -> None:
    (tmp_path / "bad.png").write_text("no")
    result = top(tmp_path / "out", vgg11_file, tmp_path / "bad.png", "--layers", "conv1")
    assert result.exit_code == 1 and "no input could be read" in result.stderr


_SLOW_VGGVIZ = """
import sys, time
import vggviz.core.images as images
load = images.load_rgb
def slow(path):
    time.sleep(0.4)
    return load(path)
images.load_rgb = slow
from vggviz.cli import main
main()
"""


def test_killed_then_resumed_equals_an_uninterrupted_run(
    tmp_path, eight_photos, vgg11_file
) -> None:
    args = ["--layers", "conv1,conv2", "-k", "3", "--checkpoint-every", "1"]
    whole = tmp_path / "whole"
    assert top(whole, vgg11_file, eight_photos, *args).exit_code == 0

    out = tmp_path / "killed"
    argv = [sys.executable, "-c", _SLOW_VGGVIZ, "top", str(eight_photos), *args]
    argv += ["--arch", "vgg11", "--weights", str(vgg11_file), "--size", "32", "-o", str(out)]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "top-scan" / "chunk-000003.npz").exists():
            assert child.poll() is None, "the scan ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (out / "top.json").exists()

    result = top(out, vgg11_file, eight_photos, *args)
    assert result.exit_code == 0, result.output
    assert "resuming the scan after" in result.stderr
    done = int(result.stderr.split("resuming the scan after ")[1].split()[0])
    assert 2 <= done < 8
    assert (out / "top.json").read_bytes() == (whole / "top.json").read_bytes()
    for name in ("conv1.npy", "conv2.npy"):
        assert (out / "top-matrix" / name).read_bytes() == (
            whole / "top-matrix" / name
        ).read_bytes()


def test_highlight_reuses_the_scan_and_colours_the_crops(tmp_path, red_detector) -> None:
    photos = tmp_path / "photos"
    red_dots(photos)
    out = tmp_path / "out"
    args = ("--no-normalize", "--layers", "conv2", "-k", "2")
    assert top(out, red_detector, photos, *args).exit_code == 0
    plain_json = (out / "top.json").read_bytes()
    plain = np.asarray(Image.open(out / "top-strips" / "conv2" / "0000.jpg").convert("RGB"))
    stale = out / "top-pages" / "02-conv2-99.jpg"
    stale.write_bytes(b"a page of an earlier run")
    result = top(out, red_detector, photos, *args, "--highlight")
    assert result.exit_code == 0 and "scan already complete" in result.stderr
    assert not stale.exists()
    assert (out / "top.json").read_bytes() == plain_json
    lit = np.asarray(Image.open(out / "top-strips" / "conv2" / "0000.jpg").convert("RGB"))
    # b.png's crop: black but for its red dot; the heat colours the pixels around the dot
    assert plain[:, :96].sum() < lit[:, :96].sum()


def test_sigterm_stops_the_scan_with_143_and_it_resumes(tmp_path, eight_photos, vgg11_file) -> None:
    out = tmp_path / "out"
    args = ["--layers", "conv1", "-k", "3", "--checkpoint-every", "1"]
    argv = [sys.executable, "-c", _SLOW_VGGVIZ, "top", str(eight_photos), *args]
    argv += ["--arch", "vgg11", "--weights", str(vgg11_file), "--size", "32", "-o", str(out)]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "top-scan" / "chunk-000001.npz").exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        child.terminate()
        stderr = child.communicate(timeout=60)[1].decode()
    finally:
        child.kill()
    assert child.returncode == 143
    assert "interrupted: run the same command again to resume the scan" in stderr
    result = top(out, vgg11_file, eight_photos, *args)
    assert result.exit_code == 0 and "resuming the scan after" in result.stderr


def test_other_weights_of_the_same_file_name_start_the_scan_over(
    tmp_path, eight_photos, vgg11_file
) -> None:
    """Weights are known by file identity (real path, size, mtime), never by name alone."""
    first, second = tmp_path / "a" / "weights.pth", tmp_path / "b" / "weights.pth"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_bytes(vgg11_file.read_bytes())
    state = torch.load(vgg11_file)
    state["features.0.bias"] += 1.0
    torch.save(state, second)
    out = tmp_path / "out"
    args = ("--layers", "conv1", "--shard", "1/1")
    assert top(out, first, eight_photos, *args).exit_code == 0
    again = top(out, second, eight_photos, *args)
    assert again.exit_code == 0, again.output
    assert "scan already complete" not in again.stderr
    assert "options changed since its checkpoint (weights file:" in again.stderr
    assert "starting over" in again.stderr


def test_ctrl_c_pressed_again_and_again_in_pass_2_stops_cleanly(
    tmp_path, eight_photos, vgg11_file
) -> None:
    """A stop is a flag polled between steps: however many Ctrl-C arrive, pass 2 ends with
    the resume message, no traceback, no scratch left and no top.json (the run is not done)."""
    out = tmp_path / "out"
    args = ["--layers", "conv1", "-k", "3"]
    argv = [sys.executable, "-c", _SLOW_VGGVIZ, "top", str(eight_photos), *args]
    argv += ["--arch", "vgg11", "--weights", str(vgg11_file), "--size", "32", "-o", str(out)]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".top-crops-*")):  # pass 2 has begun
            assert child.poll() is None, child.communicate()[1].decode()
            assert time.monotonic() < deadline, "pass 2 never began"
            time.sleep(0.02)
        while child.poll() is None and time.monotonic() < deadline:
            child.send_signal(signal.SIGINT)
            time.sleep(0.01)
        stderr = child.communicate(timeout=60)[1].decode()
    finally:
        child.kill()
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "interrupted: run the same command again to resume the scan" in stderr
    assert not list(out.glob(".top-crops-*")) and not (out / "top.json").exists()
    again = top(out, vgg11_file, eight_photos, *args)
    assert again.exit_code == 0 and "scan already complete" in again.stderr


def test_a_stop_keeps_the_scan_s_progress(tmp_path, eight_photos, vgg11_file) -> None:
    """Ctrl-C is polled between batches: the scan checkpoints what it did (here long before
    its first regular checkpoint) and the next run resumes from there."""
    out = tmp_path / "out"
    args = ["--layers", "conv1", "-k", "3"]  # --checkpoint-every 100: none for 8 inputs
    argv = [sys.executable, "-c", _SLOW_VGGVIZ, "top", str(eight_photos), *args]
    argv += ["--arch", "vgg11", "--weights", str(vgg11_file), "--size", "32", "-o", str(out)]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "top-scan").is_dir():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(1.5)  # a few inputs, at 0.4 s each
        child.send_signal(signal.SIGINT)
        stderr = child.communicate(timeout=60)[1].decode()
    finally:
        child.kill()
    assert child.returncode == 130, stderr
    assert "interrupted: run the same command again to resume the scan" in stderr
    result = top(out, vgg11_file, eight_photos, *args)
    assert result.exit_code == 0, result.output
    done = int(result.stderr.split("resuming the scan after ")[1].split()[0])
    assert 1 <= done < 8
