"""vggviz in shell scripts: folders, bad files, stdin, shards, resume, kills, containment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import load_npz, photo_array, wait_for_records, write_photo
from PIL import Image

from vggviz.cli import cli
from vggviz.core.files import TMP_SUFFIX


def run(out: Path, weights: Path, *args: str, input: str | None = None):
    argv = [
        "features",
        *map(str, args),
        "--arch",
        "vgg11_bn",
        "--weights",
        str(weights),
        "--size",
        "32",
        "--device",
        "cpu",
        "--no-overview",
        "-o",
        str(out),
    ]
    return CliRunner().invoke(cli, argv, input=input, catch_exceptions=False)


def records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_folder_of_bad_and_odd_files(tmp_path, vgg11_bn_file) -> None:
    d = tmp_path / "mixed"
    write_photo(d / "good.png")
    (d / "empty.jpg").parent.mkdir(exist_ok=True)
    (d / "empty.jpg").write_bytes(b"")
    Image.fromarray(photo_array()).save(d / "whole.jpg")
    (d / "truncated.jpg").write_bytes((d / "whole.jpg").read_bytes()[:300])
    (d / "whole.jpg").unlink()
    (d / "page.png").write_text("<!doctype html><title>404</title>")
    Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)).save(
        d / "deep16.png"
    )
    Image.fromarray(photo_array()).convert("CMYK").save(d / "cmyk.jpg")
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1), "white").save(d / "tiny.png")
    Image.fromarray(photo_array(50, 4000)).save(d / "wide.png")
    Image.new("1", (30, 20), 1).save(d / "onebit.bmp")
    (d / ".hidden.png").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    (d / "UPPER.PNG").write_bytes((d / "good.png").read_bytes())

    result = run(tmp_path / "out", vgg11_bn_file, d, "--json")
    assert result.exit_code == 1
    by_name = {Path(r["input"]).name: r for r in records(result)}
    assert sorted(by_name) == sorted(
        [
            "UPPER.PNG",
            "anim.gif",
            "cmyk.jpg",
            "deep16.png",
            "empty.jpg",
            "good.png",
            "onebit.bmp",
            "page.png",
            "tiny.png",
            "truncated.jpg",
            "wide.png",
        ]
    )
    failed = {n for n, r in by_name.items() if r["status"] == "error"}
    assert failed == {"empty.jpg", "truncated.jpg", "page.png"}
    for name in failed:
        assert by_name[name]["error"].startswith(str(d / name) + ": ")
        assert f"error: {by_name[name]['error']}" in result.stderr
    assert by_name["wide.png"]["size"] == [32, 128]  # 4000x50: long side capped at 4 x 32
    assert by_name["tiny.png"]["size"] == [32, 32]
    assert "passed over 1 hidden and 1 non-image file(s)" in result.stderr
    assert "8 done, 3 failed, 0 skipped" in result.stderr
    assert "Traceback" not in result.output


def test_no_images_at_all_is_an_error(tmp_path, vgg11_bn_file) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("hi")
    result = run(tmp_path / "out", vgg11_bn_file, tmp_path / "docs")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: no images found in {tmp_path / 'docs'} "
        "(passed over 0 hidden and 1 non-image file(s))"
    )
    empty_stdin = run(tmp_path / "out", vgg11_bn_file, "-", input="")
    assert empty_stdin.exit_code == 1 and "no images found in -" in empty_stdin.stderr


def test_stdin_paths_and_clashing_names(tmp_path, vgg11_bn_file) -> None:
    a = write_photo(tmp_path / "a" / "dog.png")
    b = write_photo(tmp_path / "b" / "dog.png", seed=1)
    c = write_photo(tmp_path / "a" / "dog.jpg", seed=2)
    spaced = write_photo(tmp_path / "a" / "-odd näme.png")
    out = tmp_path / "out"
    result = run(out, vgg11_bn_file, "-", "--json", input=f"{a}\n{b}\n\n{c}\n{spaced}\n")
    assert result.exit_code == 0, result.output
    got = records(result)
    assert [r["input"] for r in got] == [str(a), str(b), str(c), str(spaced)]
    folders = [r["folder"] for r in got]
    assert len(set(folders)) == 4
    assert all(Path(f).parent == out for f in folders)
    assert Path(folders[3]).name == "-odd näme_png"


def test_json_goes_to_stdout_and_nothing_else_does(tmp_path, photo, vgg11_bn_file) -> None:
    result = run(tmp_path / "out", vgg11_bn_file, photo, "--json")
    (record,) = records(result)
    assert set(record) >= {"input", "status", "outputs", "layers"}
    assert {"name", "module", "shape", "mean", "max", "zero_fraction", "channels"} <= set(
        record["layers"][0]
    )
    assert "done" in result.stderr and "done" not in result.stdout


def test_shards_split_the_inputs_exactly(tmp_path, vgg11_bn_file) -> None:
    folder = tmp_path / "many"
    for i in range(10):
        write_photo(folder / f"sub{i % 3}" / f"img{i}.png", 40, 40, seed=i)
    out = tmp_path / "out"
    seen: list[str] = []
    for k in (1, 2, 3):
        result = run(out, vgg11_bn_file, folder, "--shard", f"{k}/3", "--json", "--layers", "conv1")
        assert result.exit_code == 0, result.output
        shard_inputs = [r["input"] for r in records(result)]
        seen += shard_inputs
        manifest = (out / f"manifest-shard-{k}-of-3.jsonl").read_text().splitlines()
        assert [json.loads(x)["input"] for x in manifest] == shard_inputs
        assert (out / f"index-shard-{k}-of-3.html").is_file()
    assert sorted(seen) == sorted(str(p) for p in folder.rglob("*.png"))
    assert len(seen) == len(set(seen)) == 10


def test_skip_existing_resumes(tmp_path, vgg11_bn_file) -> None:
    folder = tmp_path / "photos"
    for i in range(3):
        write_photo(folder / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    first = run(out, vgg11_bn_file, folder, "--json", "--layers", "conv1,conv2")
    assert first.exit_code == 0
    (out / "p1_png" / "02-conv2.png").unlink()
    (out / "p2_png" / f".01-conv1.png.abc123{TMP_SUFFIX}").write_bytes(b"partial")  # a killed run's
    again = run(out, vgg11_bn_file, folder, "--json", "--layers", "conv1,conv2", "--skip-existing")
    assert again.exit_code == 0
    got = records(again)
    assert [r["status"] for r in got] == ["skipped", "ok", "skipped"]
    assert got[0]["layers"] == records(first)[0]["layers"]  # from the earlier record.json
    assert (out / "p1_png" / "02-conv2.png").is_file()
    assert "1 done, 0 failed, 2 skipped" in again.stderr
    # a changed layer selection is not "all outputs present"
    third = run(out, vgg11_bn_file, folder, "--json", "--layers", "conv3", "--skip-existing")
    assert [r["status"] for r in records(third)] == ["ok", "ok", "ok"]
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))


def test_nothing_is_written_outside_the_output_folder(tmp_path, vgg11_bn_file) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_photo(elsewhere / "far.png")
    inputs = tmp_path / "in"
    write_photo(inputs / "x.png")
    (inputs / "link").symlink_to(elsewhere, target_is_directory=True)
    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    (out / "trap_png").symlink_to(elsewhere, target_is_directory=True)  # an old link in the output
    write_photo(tmp_path / "trap.png")
    before = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    result = run(
        out, vgg11_bn_file, inputs / ".." / "in" / "x.png", inputs, tmp_path / "trap.png", "--json"
    )
    after = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert after == before
    by_input = {r["input"]: r for r in records(result)}
    assert by_input[str(inputs / "link" / "far.png")]["folder"] == str(out / "link" / "far_png")
    trap = by_input[str(tmp_path / "trap.png")]
    assert trap["status"] == "error" and "leads outside" in trap["error"]
    assert result.exit_code == 1


def test_batches_give_the_same_maps(tmp_path, vgg11_bn_file) -> None:
    folder = tmp_path / "same"
    for i in range(3):
        write_photo(folder / f"s{i}.png", seed=i)
    write_photo(folder / "s9_other_size.png", 40, 90)
    one = run(tmp_path / "one", vgg11_bn_file, folder, "--save-raw", "--layers", "conv2,conv8")
    four = run(
        tmp_path / "four",
        vgg11_bn_file,
        folder,
        "--save-raw",
        "--layers",
        "conv2,conv8",
        "--batch-size",
        "4",
    )
    assert one.exit_code == four.exit_code == 0
    for name in ("s0", "s1", "s2", "s9_other_size"):
        a, b = (
            load_npz(tmp_path / "one" / f"{name}_png" / "maps.npz"),
            load_npz(tmp_path / "four" / f"{name}_png" / "maps.npz"),
        )
        for key in ("conv2", "conv8"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-4)


def _start(tmp_path: Path, weights: Path, folder: Path, *extra: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "vggviz",
        "features",
        str(folder),
        "--arch",
        "vgg11_bn",
        "--weights",
        str(weights),
        "--size",
        "64",
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "out"),
        "--quiet",
        "--save-raw",
        *extra,
    ]
    # a shell running the tests in the background ignores SIGINT, and children inherit that
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture
def twelve_photos(tmp_path: Path) -> Path:
    folder = tmp_path / "twelve"
    for i in range(12):
        write_photo(folder / f"p{i:02d}.png", 64, 96, seed=i)
    return folder


def test_killed_then_resumed(tmp_path, vgg11_bn_file, twelve_photos) -> None:
    out = tmp_path / "out"
    proc = _start(tmp_path, vgg11_bn_file, twelve_photos)
    wait_for_records(out, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    for png in out.rglob("*.png"):  # whatever exists under a final name is whole
        with Image.open(png) as im:
            im.load()
    for npz in out.rglob("maps.npz"):
        assert len(load_npz(npz)) == 8
    done_before = len(list(out.rglob("record.json")))
    assert 2 <= done_before < 12
    resumed = _start(tmp_path, vgg11_bn_file, twelve_photos, "--skip-existing")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert len(list(out.rglob("record.json"))) == 12
    assert not [p for p in out.rglob("*") if p.name.endswith(TMP_SUFFIX)]
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sum(r["status"] == "skipped" for r in manifest) == done_before


def test_the_example_batch_script_runs(tmp_path, vgg11_bn_file) -> None:
    script = Path(__file__).parent.parent / "examples" / "batch.sh"
    photos = tmp_path / "photos"
    write_photo(photos / "one.png")
    (photos / "broken.jpg").write_bytes(b"")
    vggviz = Path(sys.executable).parent / "vggviz"
    env = {**os.environ, "VGGVIZ": str(vggviz) if vggviz.exists() else "vggviz"}
    out = tmp_path / "out"
    done = subprocess.run(
        [
            "bash",
            str(script),
            str(photos),
            str(out),
            "--arch",
            "vgg11_bn",
            "--weights",
            str(vgg11_bn_file),
            "--size",
            "32",
            "--layers",
            "conv1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr  # one broken input
    lines = done.stdout.splitlines()
    assert lines[0] == f"error    {photos / 'broken.jpg'}  {photos / 'broken.jpg'}: empty file"
    assert lines[1].startswith(f"ok       {photos / 'one.png'}  conv1: strongest channel #")
    assert lines[2] == f"pictures: {out}/  index: {out}/index.html"


def test_the_example_batch_script_says_when_the_run_itself_failed(tmp_path, vgg11_bn_file) -> None:
    """A run that wrote no manifest (here: -o below a file; before that, a finished earlier
    run's manifest is there) ends the script with the run's exit status and one line, never a
    Python traceback nor the earlier run's records."""
    script = Path(__file__).parent.parent / "examples" / "batch.sh"
    photos = tmp_path / "photos"
    write_photo(photos / "one.png")
    vggviz = Path(sys.executable).parent / "vggviz"
    env = {**os.environ, "VGGVIZ": str(vggviz) if vggviz.exists() else "vggviz"}
    options = ["--arch", "vgg11_bn", "--weights", str(vgg11_bn_file), "--size", "32"]

    def run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = ["bash", str(script), str(photos), str(out), *options, *extra]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    done = run(blocked / "out")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1] == (
        f"batch.sh: this run wrote no {blocked / 'out'}/manifest.jsonl (exit 1; see above)"
    )
    out = tmp_path / "out"
    assert run(out, "--layers", "conv1").returncode == 0
    done = run(out, "--layers", "conv99")  # a usage error: the earlier manifest stays
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""
