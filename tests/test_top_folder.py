"""vggviz top's output folder keeps the contract features' does: one live run at a time, no
link followed, a scan redone when what it was made of changed, scratch swept, top.json last,
corrupt state started over in one line, every OS error named, values that JSON can hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_photo
from test_folders import mounted
from test_top import _SLOW_VGGVIZ, top

from vggviz.cli import cli
from vggviz.core import memory

ARGS = ("--layers", "conv1", "-k", "3")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for n in range(6):
        write_photo(folder / f"p{n}.png", 32 + 4 * (n % 2), 40, seed=n)
    return folder


def slow_top(out: Path, weights: Path, photos: Path, *args: str) -> subprocess.Popen:
    """``vggviz top`` in a child whose every image load takes 0.4 s."""
    argv = [sys.executable, "-c", _SLOW_VGGVIZ, "top", str(photos), *args]
    argv += ["--arch", "vgg11", "--weights", str(weights), "--size", "32", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(condition, child: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, child.communicate()[1].decode()
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def one_line_error(result) -> str:
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# --- one run at a time ---------------------------------------------------------------------


def test_a_second_live_run_into_one_folder_is_refused_naming_its_pid(
    tmp_path, photos, vgg11_file
) -> None:
    out = tmp_path / "out"
    child = slow_top(out, vgg11_file, photos, *ARGS)
    try:
        wait_for(lambda: (out / "top-scan").is_dir(), child, "the scan never began")
        second = top(out, vgg11_file, photos, *ARGS, "-k", "2")
        other_shard = top(out, vgg11_file, photos, *ARGS, "--shard", "1/2")
    finally:
        child.kill()
        child.communicate()
    assert second.exit_code == 1
    line = one_line_error(second)
    assert f"another vggviz run (pid {child.pid}) is writing" in line and str(out) in line
    assert other_shard.exit_code == 0, other_shard.output  # a shard writes only its own part


# --- links ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["top-pages", "top-scan", "top-matrix", "top-strips"])
def test_a_planted_link_is_never_followed(tmp_path, photos, vgg11_file, name) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    keep = elsewhere / "01-conv1-01.jpg"  # named like one of top's own files
    keep.write_bytes(b"not vggviz's")
    (elsewhere / "checkpoint.npz").write_bytes(b"not vggviz's either")
    out.mkdir()
    (out / name).symlink_to(elsewhere, target_is_directory=True)
    result = top(out, vgg11_file, photos, *ARGS)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert f"{out / name}: is a symbolic link" in line
    assert sorted(p.name for p in elsewhere.iterdir()) == ["01-conv1-01.jpg", "checkpoint.npz"]
    assert keep.read_bytes() == b"not vggviz's"


# --- a scan is made of its inputs --------------------------------------------------------


def test_a_mended_or_changed_photo_is_rescanned_and_the_message_says_so(
    tmp_path, photos, vgg11_file
) -> None:
    out = tmp_path / "out"
    (photos / "p1.png").write_bytes(b"broken")
    first = top(out, vgg11_file, photos, *ARGS)
    assert first.exit_code == 1 and "p1.png: not an image" in first.stderr
    write_photo(photos / "p1.png", 36, 40, seed=1)  # mended
    mended = top(out, vgg11_file, photos, *ARGS)
    assert mended.exit_code == 0, mended.output
    assert "scan already complete" not in mended.stderr
    assert "inputs changed since its checkpoint (p1.png changed): starting over" in mended.stderr
    fresh = tmp_path / "fresh"
    assert top(fresh, vgg11_file, photos, *ARGS).exit_code == 0
    assert (out / "top.json").read_bytes() == (fresh / "top.json").read_bytes()
    write_photo(photos / "p9.png", seed=9)
    (photos / "p0.png").unlink()
    changed = top(out, vgg11_file, photos, *ARGS)
    assert changed.exit_code == 0
    assert "(p0.png removed, p9.png added): starting over" in changed.stderr


def test_a_file_changed_between_the_passes_is_caught(
    tmp_path, photos, vgg11_file, monkeypatch
) -> None:
    """The recompute check of pass 2 still guards the moment between the scan and the crops."""
    from vggviz.top import crops

    run_pass2 = crops.run_pass2

    def changed_first(*args, **kwargs):
        for n in range(6):
            write_photo(photos / f"p{n}.png", 32 + 4 * (n % 2), 40, seed=99 + n)
        return run_pass2(*args, **kwargs)

    monkeypatch.setattr(crops, "run_pass2", changed_first)
    result = top(tmp_path / "out", vgg11_file, photos, "--layers", "conv1", "-k", "6")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "conv1 channel" in line and "the file changed since the scan" in line


# --- scratch and the finished marker --------------------------------------------------------


def test_scratch_of_a_killed_pass_2_is_swept(tmp_path, photos, vgg11_file) -> None:
    out = tmp_path / "out"
    child = slow_top(out, vgg11_file, photos, *ARGS)
    try:
        wait_for(lambda: list(out.glob(".top-crops-*")), child, "pass 2 never began")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.communicate()
    assert list(out.glob(".top-crops-*"))
    planted = out / ".top-crops-deadbeef"  # an older one, with a link in it
    planted.mkdir()
    (planted / "conv1").write_bytes(b"\0" * 1000)
    (planted / "link").symlink_to(tmp_path / "photos")
    result = top(out, vgg11_file, photos, *ARGS)
    assert result.exit_code == 0, result.output
    assert not list(out.glob(".top-crops-*"))
    assert len(list((tmp_path / "photos").iterdir())) == 6  # nothing followed, nothing lost


def test_top_json_goes_before_a_rerun_changes_anything(tmp_path, photos, vgg11_file) -> None:
    out = tmp_path / "out"
    assert top(out, vgg11_file, photos, *ARGS).exit_code == 0
    assert (out / "top.json").exists()
    child = slow_top(out, vgg11_file, photos, *ARGS, "--highlight")
    try:
        wait_for(lambda: list(out.glob(".top-crops-*")), child, "pass 2 never began")
        child.send_signal(signal.SIGINT)
        stderr = child.communicate(timeout=60)[1].decode()
    finally:
        child.kill()
    assert child.returncode == 130, stderr
    assert not (out / "top.json").exists()  # the pages are half old, half new: not finished
    assert not (out / "index.html").exists()


@pytest.mark.parametrize(
    "damage",
    [
        "checkpoint truncated",
        "checkpoint overwritten",
        "chunk truncated",
        "meta edited",
        "chunk missing",
    ],
)
def test_corrupt_scan_files_start_over_in_one_line(tmp_path, photos, vgg11_file, damage) -> None:
    out = tmp_path / "out"
    args = (*ARGS, "--checkpoint-every", "2", "--shard", "1/1")
    assert top(out, vgg11_file, photos, *args).exit_code == 0
    scan = out / "top-scan-shard-1-of-1"
    checkpoint, chunk = scan / "checkpoint.npz", scan / "chunk-000002.npz"
    if damage == "checkpoint truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    elif damage == "checkpoint overwritten":
        checkpoint.write_bytes(b"\0" * 4096)
    elif damage == "chunk truncated":
        chunk.write_bytes(chunk.read_bytes()[:-100])
    elif damage == "chunk missing":
        chunk.unlink()
    else:  # the progress says more than there are inputs
        with np.load(checkpoint) as saved:
            arrays = {name: saved[name] for name in saved.files}
        meta = json.loads(str(arrays["meta"]))
        meta["scanned"], meta["position"] = 20, 20
        arrays["meta"] = np.array(json.dumps(meta))
        with zipfile.ZipFile(checkpoint, "w") as archive:  # as np.savez writes it
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, array)
    again = top(out, vgg11_file, photos, *args)
    assert again.exit_code == 0, again.output
    assert "Traceback" not in again.stderr and "20 scanned" not in again.stderr
    (note,) = [line for line in again.stderr.splitlines() if "starting over" in line]
    assert note.startswith(f"vggviz: {scan}: scan files unreadable (")
    assert "6 scanned, 0 failed" in again.stderr


# --- errors and numbers --------------------------------------------------------------------


def test_a_missing_chunk_at_merge_names_the_file(tmp_path, photos, vgg11_file) -> None:
    out = tmp_path / "out"
    for k in (1, 2):
        assert top(out, vgg11_file, photos, *ARGS, "--shard", f"{k}/2").exit_code == 0
    # which photos a shard gets depends on their paths (here under pytest's tmp folder): take
    # a chunk of a shard that has one
    chunks = {k: sorted((out / f"top-scan-shard-{k}-of-2").glob("chunk-*.npz")) for k in (1, 2)}
    k = next(k for k in (2, 1) if chunks[k])
    chunks[k][0].unlink()
    result = top(out, vgg11_file, photos, *ARGS, "--merge")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert f"top-scan-shard-{k}-of-2" in line and "standard output" not in line
    assert f"run shard {k}/2 again" in line


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, photos, vgg11_file) -> None:
    with mounted(tmp_path / "small", "size=200k") as small:
        result = top(small / "out", vgg11_file, photos, "--layers", "conv1-conv2")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert line.startswith(f"Error: {small / 'out'}")
    assert line.endswith("(no space left on device)")


@pytest.mark.parametrize("scale", [1e4, 1e37])
def test_huge_values_stay_finite_and_json_stays_valid(tmp_path, photos, scale) -> None:
    """Activations past float16 (65,504) in the matrix, past float32 from the weights."""
    from vggviz.model.loading import build

    state = {k: v for k, v in build("vgg11", "cpu").state_dict().items() if "features" in k}
    for key, value in state.items():
        state[key] = torch.full_like(value, 0.01)
    state["features.0.weight"] = torch.full_like(state["features.0.weight"], scale)
    weights = tmp_path / "huge.pth"
    torch.save(state, weights)
    out = tmp_path / "out"
    result = top(out, weights, photos, "--layers", "conv1,conv2", "-k", "2")
    assert result.exit_code == 0, result.output
    found = json.loads((out / "top.json").read_text(), parse_constant=pytest.fail)
    conv1 = found["layers"]["conv1"]["channels"][0]
    assert conv1["max"] > 65_504 and conv1["top"][0]["value"] > 65_504
    matrix = np.load(out / "top-matrix" / "conv1.npy")
    assert np.isfinite(matrix).all() and matrix.max() == np.finfo(np.float16).max


def test_a_size_that_cannot_fit_is_refused_before_torch_works(
    tmp_path, photos, vgg11_file, monkeypatch
) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 2_000_000_000)
    argv = ["top", str(photos), "--arch", "vgg11", "--weights", str(vgg11_file)]
    argv += ["--size", "4096", "--device", "cpu", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2
    assert "needs about" in result.stderr and "GB of memory" in result.stderr
    assert not (tmp_path / "out").exists()


# --- what a rerun leaves -------------------------------------------------------------------


def test_fewer_layers_than_last_time_leave_nothing_of_the_old_ones(
    tmp_path, photos, vgg11_file
) -> None:
    out = tmp_path / "out"
    assert top(out, vgg11_file, photos, "--layers", "conv1,conv2", "-k", "2").exit_code == 0
    assert list((out / "top-pages").glob("02-conv2-*"))
    assert top(out, vgg11_file, photos, "--layers", "conv1", "-k", "2").exit_code == 0
    assert not list((out / "top-pages").glob("02-conv2-*"))
    assert not (out / "top-strips" / "conv2").exists()
    assert not (out / "top-matrix" / "conv2.npy").exists()
    assert "conv2" not in (out / "index.html").read_text()


def test_k_larger_than_the_photos_is_said_once(tmp_path, photos, vgg11_file) -> None:
    out = tmp_path / "out"
    result = top(out, vgg11_file, photos, "--layers", "conv1", "-k", "10")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "10 per channel" in line]
    assert len(notes) == 1 and "6 input(s)" in notes[0], result.stderr
    found = json.loads((out / "top.json").read_text())
    assert found["k"] == 6
    assert all(len(c["top"]) == 6 for c in found["layers"]["conv1"]["channels"])
    from PIL import Image

    from vggviz.top.pictures import strip_size

    with Image.open(out / "top-strips" / "conv1" / "0000.jpg") as strip:
        assert strip.size == strip_size(6)  # no empty slots


def test_a_merge_with_a_million_missing_shards_is_one_short_line(
    tmp_path, photos, vgg11_file
) -> None:
    out = tmp_path / "out"
    assert top(out, vgg11_file, photos, *ARGS, "--shard", "1/1000000").exit_code == 0
    result = top(out, vgg11_file, photos, *ARGS, "--merge")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert len(line) < 300 and "2/1000000" in line and "999996 more" in line


def test_features_and_top_never_share_a_folder(tmp_path, photos, vgg11_file) -> None:
    out = tmp_path / "out"
    assert top(out, vgg11_file, photos, *ARGS).exit_code == 0
    index = (out / "index.html").read_bytes()
    argv = ["features", str(photos / "p0.png"), "--arch", "vgg11", "--weights", str(vgg11_file)]
    argv += ["--size", "32", "--device", "cpu", "--layers", "conv1", "-o", str(out)]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2
    assert "holds the outputs of vggviz top; give vggviz features a folder of its own" in (
        result.stderr
    )
    assert (out / "index.html").read_bytes() == index
    other = tmp_path / "features"
    assert CliRunner().invoke(cli, [*argv[:-1], str(other)]).exit_code == 0
    again = top(other, vgg11_file, photos, *ARGS)
    assert again.exit_code == 2 and "holds the outputs of vggviz features" in again.stderr
