"""Output folders a script can trust, tried as a hostile user would: runs at once, kills and
resumes, colliding and undecodable names, read-only and full disks, closed pipes, signals."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import wait_for_records, write_photo
from PIL import Image

from vggviz.cli import cli
from vggviz.core import files, folders
from vggviz.core.files import TMP_SUFFIX
from vggviz.features import index_page

FAST = ["--arch", "vgg11_bn", "--size", "32", "--device", "cpu", "--layers", "conv1,conv2"]


def argv(out: Path, weights: Path, *args: object) -> list[str]:
    return ["features", *map(str, args), *FAST, "--weights", str(weights), "-o", str(out)]


def invoke(out: Path, weights: Path, *args: object, input: str | bytes | None = None):
    return CliRunner().invoke(cli, argv(out, weights, *args), input=input, catch_exceptions=False)


def vggviz(*args: str, **kwargs) -> list[str]:
    return [sys.executable, "-m", "vggviz", *args]


def start(out: Path, weights: Path, *args: object, **kwargs) -> subprocess.Popen:
    # a shell running the tests in the background ignores SIGINT, and children inherit that
    return subprocess.Popen(
        vggviz(*argv(out, weights, *args)),
        stdout=kwargs.pop("stdout", subprocess.DEVNULL),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


def lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines()]


def image_folders(out: Path) -> set[Path]:
    return {p.parent for p in out.rglob("*") if p.is_file() and p.parent != out}


def assert_every_folder_finished(out: Path) -> None:
    """Each image folder holds a record whose outputs are all there and readable, and nothing
    else of ours: no temporaries, no lock, no picture the record does not list."""
    for folder in image_folders(out):
        record = json.loads((folder / folders.RECORD).read_text("utf-8"))
        listed = {Path(p).name for p in record["outputs"]}
        assert {p.name for p in folder.iterdir()} == listed, folder
        for png in folder.glob("*.png"):
            with Image.open(png) as im:
                im.load()
    assert not [p for p in out.rglob("*") if p.name.endswith(TMP_SUFFIX)]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for i in range(8):
        write_photo(folder / f"p{i}.png", 48, 64, seed=i)
    return folder


# --- runs at once, kills, resumes --------------------------------------------------------------


def test_two_runs_into_one_folder_share_the_work(tmp_path, vgg11_bn_file, photos) -> None:
    out = tmp_path / "out"
    runs = [start(out, vgg11_bn_file, photos, "--json", stdout=subprocess.PIPE) for _ in "ab"]
    results = [(p.communicate(timeout=300), p.returncode) for p in runs]
    assert [code for _, code in results] == [0, 0], results
    done: dict[str, int] = {}
    for (stdout, _err), _ in results:
        for record in lines(stdout):
            if record["status"] == "ok":
                done[record["input"]] = done.get(record["input"], 0) + 1
            else:
                assert record["status"] == "skipped", record
                assert record["reason"].startswith("another vggviz run (pid "), record
    assert sorted(done) == sorted(str(p) for p in photos.iterdir())
    assert len(image_folders(out)) == 8
    assert_every_folder_finished(out)
    # when the two overlapped, the second wrote manifest-2.jsonl (folders.claim_run's test)
    manifests = sorted(p.name for p in out.glob("manifest*.jsonl"))
    assert manifests in (["manifest.jsonl"], ["manifest-2.jsonl", "manifest.jsonl"])
    assert not list(out.glob(".*.lock"))


def test_shards_at_once_do_every_image_once(tmp_path, vgg11_bn_file, photos) -> None:
    out = tmp_path / "out"
    runs = [start(out, vgg11_bn_file, photos, "--shard", f"{k}/3") for k in (1, 2, 3)]
    errors = [p.communicate(timeout=300)[1] for p in runs]
    assert [p.returncode for p in runs] == [0, 0, 0], errors
    assert len(image_folders(out)) == 8
    assert_every_folder_finished(out)
    manifests = [lines((out / f"manifest-shard-{k}-of-3.jsonl").read_text()) for k in (1, 2, 3)]
    inputs = [r["input"] for m in manifests for r in m]
    assert sorted(inputs) == sorted(str(p) for p in photos.iterdir())


def test_a_rerun_with_other_options_killed_then_resumed(tmp_path, vgg11_bn_file) -> None:
    photos = tmp_path / "photos"
    for i in range(10):
        write_photo(photos / f"p{i}.png", 64, 96, seed=i)
    out = tmp_path / "out"
    first = invoke(out, vgg11_bn_file, photos, "--cmap", "inferno")
    assert first.exit_code == 0
    old = {r["fingerprint"] for r in lines((out / "manifest.jsonl").read_text())}
    rerun = start(out, vgg11_bn_file, photos, "--cmap", "gray", "--size", "96")
    deadline = time.monotonic() + 120
    while True:  # until the rerun has finished two images of its own
        fresh = [
            f
            for f in image_folders(out)
            if (f / folders.RECORD).is_file()
            and json.loads((f / folders.RECORD).read_text())["fingerprint"] not in old
        ]
        if len(fresh) >= 2:
            break
        assert rerun.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    rerun.send_signal(signal.SIGKILL)
    rerun.communicate()
    resumed = invoke(
        out, vgg11_bn_file, photos, "--cmap", "gray", "--size", "96", "--skip-existing", "--json"
    )
    assert resumed.exit_code == 0, resumed.output
    got = lines(resumed.stdout)
    new = {r["fingerprint"] for r in got if r["status"] == "ok"}
    assert len(new) == 1 and not new & old
    skipped = [r for r in got if r["status"] == "skipped"]
    assert len(skipped) >= 2 and {r["fingerprint"] for r in skipped} == new
    for folder in image_folders(out):  # every folder now holds the grey pictures only
        record = json.loads((folder / folders.RECORD).read_text())
        assert record["fingerprint"] in new
    assert_every_folder_finished(out)


def test_a_file_added_beside_a_finished_one_is_not_taken_for_it(tmp_path, vgg11_bn_file) -> None:
    photos = tmp_path / "photos"
    write_photo(photos / "cat.png", seed=1)
    out = tmp_path / "out"
    assert invoke(out, vgg11_bn_file, photos).exit_code == 0
    write_photo(photos / "cat.jpg", seed=2)
    again = invoke(out, vgg11_bn_file, photos, "--skip-existing", "--json")
    by_name = {Path(r["input"]).name: r for r in lines(again.stdout)}
    assert by_name["cat.jpg"]["status"] == "ok"
    assert by_name["cat.png"]["status"] == "skipped"
    assert by_name["cat.jpg"]["folder"] != by_name["cat.png"]["folder"]


def test_a_changed_photo_is_redone(tmp_path, vgg11_bn_file) -> None:
    photo = write_photo(tmp_path / "in" / "p.png", seed=1)
    out = tmp_path / "out"
    assert invoke(out, vgg11_bn_file, photo).exit_code == 0
    time.sleep(0.01)
    write_photo(photo, seed=2)
    again = invoke(out, vgg11_bn_file, photo, "--skip-existing", "--json")
    assert [r["status"] for r in lines(again.stdout)] == ["ok"]


def test_the_output_folder_is_never_walked_as_input(tmp_path, vgg11_bn_file, monkeypatch) -> None:
    write_photo(tmp_path / "a.png")
    write_photo(tmp_path / "b.png", seed=1)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = invoke(Path("out"), vgg11_bn_file, ".", "--json")
        assert result.exit_code == 0
        assert sorted(r["input"] for r in lines(result.stdout)) == ["a.png", "b.png"]


def test_inputs_named_like_the_runs_own_files(tmp_path, vgg11_bn_file) -> None:
    photos = tmp_path / "photos"
    names = ["index.html.png", "manifest.jsonl.png", "filters-conv1.png.png", "record.json.png"]
    for i, name in enumerate(names):
        write_photo(photos / name, seed=i)
    out = tmp_path / "out"
    result = invoke(out, vgg11_bn_file, photos, "--json")
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in lines(result.stdout)] == ["ok"] * 4
    assert (out / "index.html").is_file() and (out / "manifest.jsonl").is_file()
    with Image.open(out / "filters-conv1.png") as im:
        im.load()
    assert_every_folder_finished(out)


# --- names the file system allows but UTF-8 does not --------------------------------------------


def test_names_that_are_not_utf8(tmp_path, vgg11_bn_file) -> None:
    raw = b"caf\xe9 \xff.png"
    folder = tmp_path / "photos"
    write_photo(Path(os.fsdecode(bytes(folder) + b"/" + raw)))
    single = write_photo(Path(os.fsdecode(bytes(tmp_path) + b"/one\xfe.png")), seed=3)
    listed = write_photo(Path(os.fsdecode(bytes(tmp_path) + b"/listed\xfd.png")), seed=4)
    out = tmp_path / "out"
    stdin = os.fsencode(listed) + b"\n"
    result = invoke(out, vgg11_bn_file, folder, single, "-", "--json", input=stdin)
    assert result.exit_code == 0, result.output
    got = lines(result.stdout)
    assert [os.fsencode(r["input"]) for r in got] == [
        bytes(folder) + b"/" + raw,
        os.fsencode(single),
        os.fsencode(listed),
    ]
    manifest = (out / "manifest.jsonl").read_bytes()
    manifest.decode("utf-8")  # strictly valid
    assert [r["input"] for r in lines(manifest.decode())] == [r["input"] for r in got]
    for record in got:
        on_disk = (Path(record["folder"]) / folders.RECORD).read_bytes().decode("utf-8")
        assert json.loads(on_disk)["input"] == record["input"]
    index = (out / "index.html").read_bytes().decode("utf-8")
    assert "caf%E9%20%FF_png/overview.png" in index
    again = invoke(out, vgg11_bn_file, folder, single, "-", "--skip-existing", input=stdin)
    assert "0 done, 0 failed, 3 skipped" in again.stderr


def test_names_with_line_separators(tmp_path, vgg11_bn_file) -> None:
    """U+2028 and U+0085 in a name: the manifest is read back for the index, one line per
    record (it used to split at them and end the run with a traceback)."""
    folder = tmp_path / "photos"
    write_photo(folder / "a\u2028b.png")
    write_photo(folder / "c\x85d.png", seed=1)
    out = tmp_path / "out"
    result = invoke(out, vgg11_bn_file, folder, "--json")
    assert result.exit_code == 0, result.output
    got = lines(result.stdout)
    assert [Path(r["input"]).name for r in got] == ["a\u2028b.png", "c\x85d.png"]
    assert lines((out / "manifest.jsonl").read_text("utf-8")) == got
    assert (out / "index.html").is_file()


@pytest.mark.parametrize("closed", ["<&-", ">&- 2>&-"])
def test_closed_standard_streams(tmp_path, vgg11_bn_file, photo, closed) -> None:
    """Started without stdin, or without stdout and stderr, a run still does its work (the
    closed descriptors get /dev/null, so no output file takes their number)."""
    out = tmp_path / "out"
    line = " ".join(map(repr, vggviz(*argv(out, vgg11_bn_file, photo))))
    done = subprocess.run(["bash", "-c", f"{line} {closed}"], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_every_folder_finished(out)
    assert len(image_folders(out)) == 1


def test_paths_from_find_print0(tmp_path, vgg11_bn_file) -> None:
    a = write_photo(tmp_path / "a b.png")
    b = write_photo(tmp_path / "new\nline.png", seed=1)
    result = invoke(tmp_path / "out", vgg11_bn_file, "-", "--json", input=f"{a}\0{b}\0")
    assert result.exit_code == 0, result.output
    assert [r["input"] for r in lines(result.stdout)] == [str(a), str(b)]


def test_a_path_longer_than_path_max_fails_alone(tmp_path, vgg11_bn_file) -> None:
    deep = tmp_path / "in"
    for i in range(20):  # 20 x 250 bytes: more than PATH_MAX below the output folder
        deep = deep / f"{i:02d}{'d' * 248}"
    good = write_photo(tmp_path / "in" / "good.png")
    with contextlib.suppress(OSError):
        os.makedirs(deep)
    cwd = os.open(tmp_path / "in", os.O_RDONLY)
    long_photo = Path(str(deep) + "/x.png")
    try:  # build the tree with relative steps: the whole path is too long for one call
        os.chdir(cwd)
        for part in deep.relative_to(tmp_path / "in").parts:
            os.makedirs(part, exist_ok=True)
            os.chdir(part)
        write_photo(Path("x.png"))
    finally:
        os.chdir(Path(__file__).parent)
        os.close(cwd)
    for extra in ([], ["--skip-existing"]):
        result = invoke(tmp_path / "out", vgg11_bn_file, good, long_photo, "--json", *extra)
        assert result.exit_code == 1, result.output
        by_input = {r["input"]: r for r in lines(result.stdout)}
        assert by_input[str(good)]["status"] in ("ok", "skipped")
        assert by_input[str(long_photo)]["status"] == "error"
        assert "name too long" in by_input[str(long_photo)]["error"].lower()
        assert "Traceback" not in result.output


# --- read-only and full file systems -----------------------------------------------------------


@contextlib.contextmanager
def mounted(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at ``path``, or a skip where this machine cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_output_folder_is_one_line(tmp_path, vgg11_bn_file, photo) -> None:
    with mounted(tmp_path / "ro", "ro,size=1m") as ro:
        result = invoke(ro / "out", vgg11_bn_file, photo)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {ro / 'out'}: cannot write (read-only file system)\n"


def test_an_output_folder_below_a_file_is_one_line(tmp_path, vgg11_bn_file, photo) -> None:
    (tmp_path / "file").write_text("x")
    result = invoke(tmp_path / "file" / "out", vgg11_bn_file, photo)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {tmp_path / 'file'}")
    assert result.stderr.endswith("cannot write (not a directory)\n")


def test_a_full_disk_stops_cleanly(tmp_path, vgg11_bn_file, photos) -> None:
    with mounted(tmp_path / "small", "size=2m") as small:
        out = small / "out"
        result = invoke(out, vgg11_bn_file, photos, "--save-raw", "--json")
        assert result.exit_code == 1
        (line,) = [x for x in result.stderr.splitlines() if "stopped after" in x]
        assert line.endswith("cannot write (no space left on device)")
        got = lines(result.stdout)
        statuses = "".join(r["status"][0] for r in got)  # oks, then the image (or two, the
        assert re.fullmatch(r"o+e{1,2}", statuses), statuses  # one computed beside it) that
        done = statuses.count("o")  # found the disk full
        assert line.startswith(f"error: stopped after {len(got)} of 8 image(s), {done} done: ")
        assert "Traceback" not in result.output
        assert_every_folder_finished(out)
        assert len(image_folders(out)) == done


def test_a_full_disk_simulated_stops_cleanly(tmp_path, vgg11_bn_file, photos, monkeypatch) -> None:
    """The same, where no small file system can be mounted: the 7th picture (the 3rd image's
    first) finds no space."""
    real, calls = files.save_png, []

    def save_png(image, path):
        calls.append(path)
        if len(calls) >= 7:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(image, path)

    monkeypatch.setattr(files, "save_png", save_png)
    out = tmp_path / "out"
    result = invoke(out, vgg11_bn_file, photos, "--json", "--no-filters")
    assert result.exit_code == 1
    got = lines(result.stdout)
    statuses = [r["status"] for r in got]  # 3 pictures per image: the 3rd fails, and the
    assert statuses[:3] == ["ok", "ok", "error"]  # one being computed beside it may too
    assert len(got) < 8 and set(statuses[2:]) == {"error"}
    assert all(r["error"].endswith("(no space left on device)") for r in got[2:])
    assert result.stderr.splitlines()[-1] == (
        f"error: stopped after {len(got)} of 8 image(s), 2 done: {calls[6]}: cannot write "
        "(no space left on device)"
    )
    assert_every_folder_finished(out)
    assert len(image_folders(out)) == 2


@pytest.mark.parametrize("target", ["manifest.jsonl", "index.html"])
def test_a_failing_run_file_is_a_run_error(
    tmp_path, vgg11_bn_file, photos, monkeypatch, target
) -> None:
    def full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / target))

    if target == "manifest.jsonl":
        monkeypatch.setattr(files.JsonLines, "write", full)
    else:
        monkeypatch.setattr(index_page, "write_index", full)
    out = tmp_path / "out"
    result = invoke(out, vgg11_bn_file, photos)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"Error: {out / target}: cannot write (no space left on device)"
    )
    assert not [p for p in out.rglob("*") if p.name.endswith(TMP_SUFFIX)]
    assert_every_folder_finished(out)


# --- standard output ---------------------------------------------------------------------------


def test_a_closed_pipe_ends_quietly(tmp_path, vgg11_bn_file, photos) -> None:
    command = " ".join(vggviz(*argv(tmp_path / "out", vgg11_bn_file, photos, "--json")))
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -c 100 >/dev/null"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stderr == ""
    assert done.returncode == 141  # as cat, killed by SIGPIPE, would report
    assert_every_folder_finished(tmp_path / "out")


def test_stdout_on_a_full_device_is_one_message(tmp_path, vgg11_bn_file, photo) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            vggviz(*argv(tmp_path / "out", vgg11_bn_file, photo, "--json")),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "Error: cannot write to standard output (no space left on device)"
    )


# --- weights that overflow ---------------------------------------------------------------------


def test_overflowing_activations_are_flagged_and_json_stays_valid(
    tmp_path, vgg11_file, photo
) -> None:
    state = torch.load(vgg11_file)
    for key in ("features.0.weight", "features.3.weight"):  # conv1, conv2: overflow by conv2
        state[key] = state[key] * 1e30
    huge = tmp_path / "huge.pth"
    torch.save(state, huge)
    argv_ = ["features", str(photo), "--arch", "vgg11", "--weights", str(huge), "--size", "32"]
    argv_ += ["--device", "cpu", "--json", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, argv_, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (record,) = lines(result.stdout)
    assert record["nonfinite"] is True
    flagged = [la for la in record["layers"] if la["nonfinite"]]
    assert flagged and all(la["max"] is None for la in flagged)
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout


# --- signals -----------------------------------------------------------------------------------


@pytest.fixture
def busy_cpu() -> Iterator[None]:
    """Two spinning processes beside the test, as on a loaded machine."""
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _check_interrupted(out: Path, err: str, total: int) -> None:
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("interrupted:")]
    finished = int(line.split()[1])
    assert line == f"interrupted: {finished} of {total} image(s) finished"
    manifest = lines((out / "manifest.jsonl").read_text())
    assert len(manifest) == finished and all(r["status"] == "ok" for r in manifest)
    assert len(image_folders(out)) == finished
    assert_every_folder_finished(out)


@pytest.mark.parametrize("attempt", range(3))
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_under_load_stop_cleanly(
    tmp_path, vgg11_bn_file, photos, busy_cpu, sig, code, attempt
) -> None:
    out = tmp_path / "out"
    proc = start(out, vgg11_bn_file, photos, "--size", "64", "--save-raw")
    wait_for_records(out, 1 + attempt, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    _check_interrupted(out, err, 8)


def test_three_ctrl_c_in_50_ms(tmp_path, vgg11_bn_file, photos, busy_cpu) -> None:
    out = tmp_path / "out"
    proc = start(out, vgg11_bn_file, photos, "--size", "64", "--save-raw")
    wait_for_records(out, 1, proc)
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    _check_interrupted(out, err, 8)


def test_no_matplotlib_temporary_is_left_behind(tmp_path, vgg11_bn_file, photo) -> None:
    """Where $HOME is not writable, matplotlib makes a temporary config folder and removes it
    at exit; vggviz's fast exit must still run that clean-up."""
    (tmp_path / "file").write_text("x")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "file" / "mpl"), "TMPDIR": str(tmp)}
    done = subprocess.run(
        vggviz(*argv(tmp_path / "out", vgg11_bn_file, photo, "--cmap", "viridis", "-q")),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Matplotlib created a temporary" in done.stderr  # the situation was reproduced
    assert list(tmp.iterdir()) == []


def test_the_output_folder_as_an_input_folder_is_a_usage_error(tmp_path, vgg11_bn_file) -> None:
    write_photo(tmp_path / "photos" / "a.png")
    result = invoke(tmp_path / "photos", vgg11_bn_file, tmp_path / "photos")
    assert result.exit_code == 2
    assert "is the output folder or inside it" in result.stderr
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["a.png"]


def test_a_panorama_too_large_for_memory_fails_alone(tmp_path, vgg11_bn_file, monkeypatch) -> None:
    from vggviz.core import memory

    square = write_photo(tmp_path / "in" / "square.png", 40, 40)
    wide = write_photo(tmp_path / "in" / "wide.png", 40, 160, seed=1)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)  # what is left mid-run
    monkeypatch.setattr(memory, "check_fits", lambda *a, **k: None)
    result = invoke(tmp_path / "out", vgg11_bn_file, square, wide, "--json")
    assert result.exit_code == 1
    by_name = {Path(r["input"]).name: r for r in lines(result.stdout)}
    assert by_name["square.png"]["status"] == "ok"
    assert by_name["wide.png"]["error"].startswith(f"{wide}: a 128x32 image needs about ")
    assert by_name["wide.png"]["error"].endswith("GB more memory than the 0.0 GB available")
