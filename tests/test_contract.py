"""The output folder's contract where a hostile world meets it: exceptions that meet images in
flight, names that break lines, standard streams closed or gone, folders the walk cannot
enter, empty and dangerous output folders, runs at once with other options, names equal but
for case, and signals during start-up."""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_photo

from vggviz.cli import cli
from vggviz.core import folders
from vggviz.core.files import TMP_SUFFIX
from vggviz.core.lifecycle import Events
from vggviz.core.vocabulary import ModelSpec
from vggviz.features import job

FAST = ["--arch", "vgg11_bn", "--size", "32", "--device", "cpu", "--layers", "conv1,conv2"]


def argv(out: Path, weights: Path, *args: object) -> list[str]:
    return ["features", *map(str, args), *FAST, "--weights", str(weights), "-o", str(out)]


def invoke(out: Path, weights: Path, *args: object, input: str | bytes | None = None):
    return CliRunner().invoke(cli, argv(out, weights, *args), input=input, catch_exceptions=False)


def vggviz(*args: object) -> list[str]:
    return [sys.executable, "-m", "vggviz", *map(str, args)]


def records(text: str) -> list[dict]:
    """JSON Lines, split on "\\n" alone: names may hold U+2028 or U+0085."""
    return [json.loads(line) for line in text.split("\n") if line]


def assert_no_false_record(out: Path) -> None:
    """Every image folder is finished (a record listing exactly the files there, all of them
    present) or gone: no record claims what is not on disk, no lock or temporary is left."""
    for folder in {p.parent for p in out.rglob("*") if p.is_file() and p.parent != out}:
        names = {p.name for p in folder.iterdir()}
        assert folders.RECORD in names, (folder, names)
        record = json.loads((folder / folders.RECORD).read_text("utf-8"))
        assert record["status"] == "ok"
        listed = {Path(p).name for p in record["outputs"]}
        assert names == listed, (folder, names ^ listed)
        assert all(os.path.isfile(p) for p in record["outputs"])
    assert not [p for p in out.rglob("*") if p.name.endswith(TMP_SUFFIX)]
    assert not [p for p in out.rglob(folders.LOCK)]


# --- names that str.splitlines() would split ---------------------------------------------------


def test_names_holding_line_separators_are_read_back_whole(tmp_path, vgg11_bn_file) -> None:
    names = ["x\u2028y.png", "u\x85v.png", "p\u2029q.png", "f\x0cg.png", "r\x1es.png"]
    for i, name in enumerate(names):
        write_photo(tmp_path / "in" / name, seed=i)
    out = tmp_path / "out"
    result = invoke(out, vgg11_bn_file, tmp_path / "in", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(Path(r["input"]).name for r in records(result.stdout)) == sorted(names)
    text = (out / "manifest.jsonl").read_text("utf-8")
    manifest = records(text)
    assert sorted(Path(r["input"]).name for r in manifest) == sorted(names)
    # a script's reader with str.splitlines() gets one line per record too
    assert [json.loads(line) for line in text.splitlines()] == manifest
    assert [json.loads(line) for line in result.stdout.splitlines()] == manifest
    assert (out / "index.html").read_text("utf-8").count("overview.png") >= len(names)
    assert_no_false_record(out)


# --- one line per bad input, whatever its name ---------------------------------------------------


def test_a_name_with_a_newline_is_one_error_line(tmp_path, vgg11_bn_file) -> None:
    good = write_photo(tmp_path / "good.png")
    missing = tmp_path / "new\nmissing.png"
    (tmp_path / "bad\x1b[31m\u2028.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = invoke(out, vgg11_bn_file, missing, tmp_path / "bad\x1b[31m\u2028.png", good, "--json")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.split("\n") if line.startswith("error: ")]
    assert errors[0] == f"error: {tmp_path}/new\\nmissing.png: no such file"
    assert errors[1].startswith(f"error: {tmp_path}/bad\\x1b[31m\\u2028.png: ")
    assert len(result.stderr.rstrip("\n").split("\n")) == 3  # two errors and the summary
    got = records(result.stdout)
    assert [r["input"] for r in got][:2] == [str(missing), str(tmp_path / "bad\x1b[31m\u2028.png")]
    assert "\n" not in got[0]["error"] and "\x1b" not in got[1]["error"]  # jq -r: one line too
    page = (out / "index.html").read_text("utf-8")
    assert "new\\nmissing.png" in page and "new\nmissing.png" not in page


def test_pictures_show_a_line_break_escaped(tmp_path, vgg11_bn_file) -> None:
    from vggviz.core import drawing

    assert drawing.text_mask("new\nline", 12).array.tobytes() == (
        drawing.text_mask("new\\nline", 12).array.tobytes()
    )
    assert drawing.text_length("a\u2028b", 12) == drawing.text_length("a\\u2028b", 12)
    photo = write_photo(tmp_path / "in" / "two\nlines.png")
    out = tmp_path / "out"
    assert invoke(out, vgg11_bn_file, photo).exit_code == 0
    assert_no_false_record(out)


def test_every_message_about_a_path_is_one_line(tmp_path, vgg11_bn_file, photo) -> None:
    (tmp_path / "a\nfile").write_text("x")
    below_a_file = CliRunner().invoke(cli, argv(tmp_path / "a\nfile" / "out", vgg11_bn_file, photo))
    assert below_a_file.exit_code == 1
    assert below_a_file.stderr == (
        f"Error: {tmp_path}/a\\nfile/out: cannot write (not a directory)\n"
    )
    weights = CliRunner().invoke(
        cli, ["features", str(photo), "--weights", f"{tmp_path}/w\n.pth", "-o", str(tmp_path)]
    )
    assert weights.exit_code == 1
    assert weights.stderr.count("\n") == 1 and "w\\n.pth" in weights.stderr, weights.stderr
    filters = CliRunner().invoke(
        cli, ["filters", "--arch", "vgg11", "--weights", "random", "-o", f"{tmp_path}/a\nfile/o"]
    )
    assert filters.exit_code == 1
    assert filters.stderr.count("\n") == 1 and "a\\nfile" in filters.stderr, filters.stderr


# --- exceptions that meet images in flight -------------------------------------------------------


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for i in range(8):
        write_photo(folder / f"p{i}.png", 48, 64, seed=i)
    return folder


def request(photos: Path, out: Path, weights: Path, **kwargs) -> job.Request:
    model = ModelSpec("vgg11_bn", str(weights), device="cpu")
    options = {"size": 32, "layers": "conv1,conv2", **kwargs}
    return job.Request(images=[str(photos)], out_dir=out, model=model, **options)


class FailingCaller(Events):
    """A caller whose ``record`` raises at the ``at``-th record, as a reader that went away."""

    def __init__(self, at: int, error: BaseException) -> None:
        self.at, self.error, self.seen = at, error, 0

    def record(self, record) -> None:
        self.seen += 1
        if self.seen == self.at:
            raise self.error


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("bug"), KeyboardInterrupt()],
)
def test_an_exception_meeting_images_in_flight_leaves_no_false_record(
    tmp_path, vgg11_bn_file, photos, batch_size, error
) -> None:
    out = tmp_path / "out"
    caller = FailingCaller(2, error)
    with pytest.raises(type(error)):
        job.run(request(photos, out, vgg11_bn_file, batch_size=batch_size), caller)
    assert_no_false_record(out)
    assert not list(out.glob(".vggviz-run*.lock"))


def test_a_drawing_step_that_raises_fails_its_image_alone(
    tmp_path, vgg11_bn_file, photos, monkeypatch
) -> None:
    from vggviz.features import pictures

    real = pictures.layer_picture

    def layer_picture(fmap, **kwargs):
        if "p3" in kwargs["caption"].image and kwargs["alias"] == "conv2":
            raise ValueError("a drawing bug")
        return real(fmap, **kwargs)

    monkeypatch.setattr(pictures, "layer_picture", layer_picture)
    out = tmp_path / "out"
    result = invoke(out, vgg11_bn_file, photos, "--json")
    assert result.exit_code == 1, result.output
    by_name = {Path(r["input"]).name: r for r in records(result.stdout)}
    assert by_name["p3.png"]["status"] == "error"
    assert by_name["p3.png"]["error"] == (
        f"{photos / 'p3.png'}: cannot be drawn (ValueError: a drawing bug)"
    )
    assert [r["status"] for n, r in by_name.items() if n != "p3.png"] == ["ok"] * 7
    assert_no_false_record(out)


def test_json_to_a_full_device_stops_cleanly(tmp_path, vgg11_bn_file, photos) -> None:
    """The issue's false completion marker: --no-overview leaves no picture to fail last."""
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            vggviz(*argv(out, vgg11_bn_file, photos, "--json", "--no-overview", "--batch-size", 3)),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.split("\n")[-2:] == [
        "Error: cannot write to standard output (no space left on device)",
        "",
    ]
    assert_no_false_record(out)
    manifest = records((out / "manifest.jsonl").read_text("utf-8"))
    finished = {p.parent for p in out.rglob(folders.RECORD)}
    assert {Path(r["folder"]) for r in manifest} == finished
    assert (out / "index.html").is_file()


def test_a_reader_of_stderr_that_goes_away_stops_nothing(tmp_path, vgg11_bn_file, photos) -> None:
    (photos / "broken.png").write_bytes(b"not a picture")  # an error line, early
    out = tmp_path / "out"
    proc = subprocess.Popen(
        vggviz(*argv(out, vgg11_bn_file, photos)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    proc.stderr.close()  # the reader is gone before the first message
    assert proc.wait(timeout=300) == 1  # one input failed; the rest is done
    manifest = records((out / "manifest.jsonl").read_text("utf-8"))
    assert [r["status"] for r in manifest].count("ok") == 8
    assert_no_false_record(out)


# --- standard streams closed at start (cron: <&- >&- 2>&-) -------------------------------------


def shell(command: list[str], redirections: str, **kwargs) -> subprocess.CompletedProcess:
    """``command`` run by bash with ``redirections`` applied (closing fds as cron does)."""
    line = f"exec {shlex.join(command)} {redirections}"
    return subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-", "<&- >&- 2>&-"])
def test_a_run_with_standard_streams_closed_does_its_work(
    tmp_path, vgg11_bn_file, photo, closed
) -> None:
    out = tmp_path / "out"
    done = shell(vggviz(*argv(out, vgg11_bn_file, photo)), closed)
    assert done.returncode == 0, done.stderr
    if "2>&-" in closed:
        assert done.stderr == ""
    else:  # the closing line, and nothing else
        assert done.stderr.startswith("1 done, 0 failed, 0 skipped · pictures in "), done.stderr
    assert (out / "photo_png" / folders.RECORD).is_file() and (out / "index.html").is_file()
    assert_no_false_record(out)


def test_json_to_a_stdout_closed_at_start_is_refused_before_any_work(
    tmp_path, vgg11_bn_file, photos
) -> None:
    """No reader will ever see the records: one line, exit 1, nothing done (a reader that
    goes away during the run is the closed pipe of exit 141 instead)."""
    out = tmp_path / "out"
    done = shell(vggviz(*argv(out, vgg11_bn_file, photos, "--json")), ">&-")
    assert (done.returncode, done.stderr) == (
        1,
        "Error: cannot write to standard output (it is closed); --json prints the records there\n",
    )
    assert not list(out.rglob("record.json"))


def test_reading_paths_from_a_closed_stdin_is_an_error_line(tmp_path, vgg11_bn_file, photo) -> None:
    out = tmp_path / "out"
    done = shell(vggviz(*argv(out, vgg11_bn_file, "-", photo)), "<&-")
    assert done.returncode == 1
    lines = done.stderr.split("\n")
    assert lines[0] == "error: -: cannot read standard input (it is closed)"
    assert lines[1].startswith("1 done, 0 failed, 0 skipped")  # the photo was done
    assert (out / "photo_png" / folders.RECORD).is_file()


def test_every_command_with_standard_streams_closed(tmp_path, vgg11_bn_file, photo) -> None:
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    model = ["--arch", "vgg11_bn", "--weights", str(vgg11_bn_file), "--device", "cpu"]
    filters = shell(vggviz("filters", *model, "-o", tmp_path / "f"), "<&- >&- 2>&-", env=env)
    assert filters.returncode == 141  # the picture is drawn; printing its path met no reader
    assert (tmp_path / "f" / "filters-conv1.png").is_file()
    for command in (["info", "--weights", str(vgg11_bn_file)], ["weights"]):
        closed = shell(vggviz(*command), ">&-", env=env)
        assert (closed.returncode, closed.stderr) == (141, ""), command
    quiet = shell(vggviz("info"), "<&- 2>&-", env=env)
    assert quiet.returncode == 0 and "conv13" in quiet.stdout
    top = shell(
        vggviz("top", photo, *model, "--size", 32, "--layers", "conv1", "-o", tmp_path / "t"),
        "<&- >&- 2>&-",
        env=env,
    )
    assert top.returncode == 0 and (tmp_path / "t" / "top.json").is_file()


# --- signals during start-up ---------------------------------------------------------------------

# The console entry point, with a signal sent to itself at the start of one step of start-up
# (``import torch``, loading the model): the step must end whole (a KeyboardInterrupt thrown
# into torch's initialisation is how a Ctrl-C ended in SIGABRT), and the run stop right after.
DURING = """
import builtins, os, signal, sys
step, sig = sys.argv[1], getattr(signal, sys.argv[2])
sys.argv = ["vggviz", *sys.argv[3:]]
real_import = builtins.__import__

def spied_import(name, *args, **kwargs):
    if step == "import" and name == "torch" and "torch" not in sys.modules:
        os.kill(os.getpid(), sig)
        module = real_import(name, *args, **kwargs)
        print("STEP ENDED WHOLE", flush=True)
        return module
    return real_import(name, *args, **kwargs)

builtins.__import__ = spied_import
if step == "load":
    from vggviz.model import loading
    real_load = loading.load

    def load(*args, **kwargs):
        os.kill(os.getpid(), sig)
        loaded = real_load(*args, **kwargs)
        print("STEP ENDED WHOLE", flush=True)
        return loaded

    loading.load = load
from vggviz.cli import main
main()
"""


@pytest.mark.parametrize("step", ["import", "load"])
@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_start_up_never_raises_inside_it(
    tmp_path, vgg11_bn_file, photo, step, sig, code
) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", DURING, step, sig, *argv(out, vgg11_bn_file, photo)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout == "STEP ENDED WHOLE\n", done.stderr
    assert done.returncode == code, done.stderr
    assert done.stderr.split("\n")[-2:] == ["interrupted", ""], done.stderr
    assert not (out / "photo_png").exists()


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


def _main_started(pid: int) -> bool:
    """Whether vggviz's main() has installed its stop flag: the process catches SIGTERM (the
    interpreter alone catches only SIGINT). Before that, only the interpreter's own start-up
    runs, which no program can guard."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # gone already, or no /proc: send at once
    caught = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def test_ctrl_c_at_random_moments_of_start_up(tmp_path, vgg11_bn_file, photo, busy_cpu) -> None:
    """The issue's SIGABRT (twice in about 340 Ctrl-Cs under load): a signal at any moment of
    start-up (imports, OpenMP and oneDNN initialisation, loading, the first image) ends the
    run with 130, or 0 when the work was done, with no traceback and never 134. A bounded
    sample, 3 runs at once; the seed of the moments is in every failure message."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    runs = []
    for i in range(3):
        proc = subprocess.Popen(
            vggviz(*argv(tmp_path / f"out{i}", vgg11_bn_file, photo)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        runs.append([proc, tmp_path / f"out{i}", rng.uniform(0.0, 2.5), None])
    deadline = time.monotonic() + 60
    while any(run[3] is None or run[3] >= 0 for run in runs) and time.monotonic() < deadline:
        for run in runs:  # run[3]: when main() started; -1 once the signal is sent
            proc, _, delay, began = run
            if began is None and _main_started(proc.pid):
                run[3] = began = time.monotonic()
            if began is not None and began >= 0 and time.monotonic() >= began + delay:
                proc.send_signal(signal.SIGINT)
                run[3] = -1
        time.sleep(0.002)
    for proc, out, delay, _ in runs:
        _, err = proc.communicate(timeout=120)
        where = f"seed {seed}, SIGINT {delay:.3f} s into main: exit {proc.returncode}\n{err}"
        assert proc.returncode in (0, 130), where
        assert "Traceback" not in err and "Fatal Python error" not in err, where
        if proc.returncode == 130:
            assert err.split("\n")[-2].startswith("interrupted"), where
        if out.exists():
            assert_no_false_record(out)


# --- folders the walk cannot enter ----------------------------------------------------------------


def test_folders_the_walk_cannot_enter_are_problems_not_non_images(tmp_path, vgg11_bn_file) -> None:
    top = tmp_path / "in"
    write_photo(top / "a.png")
    (top / "loop").symlink_to("loop")  # ELOOP: its kind cannot be found
    here = os.open(".", os.O_RDONLY)
    try:  # a tree deeper than PATH_MAX, made with relative steps
        os.chdir(top)
        for i in range(18):
            os.mkdir(f"{i:02d}{'d' * 248}")
            os.chdir(f"{i:02d}{'d' * 248}")
        write_photo(Path("x.png"))
    finally:
        os.fchdir(here)
        os.close(here)
    result = invoke(tmp_path / "out", vgg11_bn_file, top, "--json")
    assert result.exit_code == 1, result.output
    assert [Path(r["input"]).name for r in records(result.stdout)] == ["a.png"]
    lines = result.stderr.split("\n")
    assert f"error: {top}/loop: cannot open (too many levels of symbolic links)" in lines
    (deep,) = [x for x in lines if x.endswith(": cannot list folder (file name too long)")]
    assert deep.startswith(f"error: {top}/00ddd")
    assert "non-image" not in result.stderr


# --- output folders a script names by mistake ---------------------------------------------------


def test_an_empty_or_root_output_folder_is_a_usage_error(
    tmp_path, vgg11_bn_file, photo, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the current folder, which must stay untouched
    (tmp_path / "index.html").write_text("<p>my page</p>")
    before = sorted(p.name for p in tmp_path.iterdir())
    for out in ("", "/", "/.", "//"):
        result = CliRunner().invoke(cli, [*argv(Path("x"), vgg11_bn_file, photo)[:-1], out])
        assert result.exit_code == 2, (out, result.output)
        assert "Invalid value for '-o/--output-dir'" in result.stderr
    empty = CliRunner().invoke(cli, [*argv(Path("x"), vgg11_bn_file, photo)[:-1], ""])
    assert "an empty folder name (an unset shell variable?)" in empty.stderr
    for command in (["filters", "--weights", "random"], ["top", str(photo)]):
        result = CliRunner().invoke(cli, [*command, "-o", ""])
        assert result.exit_code == 2, (command, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "index.html").read_text() == "<p>my page</p>"


def test_a_folder_with_someone_elses_index_is_refused(tmp_path, vgg11_bn_file, photo) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>my page</p>")
    result = invoke(site, vgg11_bn_file, photo)
    assert result.exit_code == 2
    assert "holds an index.html that vggviz did not write" in result.stderr
    assert sorted(p.name for p in site.iterdir()) == ["index.html"]
    # a folder vggviz wrote before it left a marker is still its own
    old = tmp_path / "old"
    old.mkdir()
    (old / "index.html").write_text("<p>vggviz</p>")
    (old / "manifest.jsonl").write_text("")
    assert invoke(old, vgg11_bn_file, photo).exit_code == 0
    assert invoke(old, vgg11_bn_file, photo).exit_code == 0  # and again, by its marker


# --- runs at once with other options ---------------------------------------------------------


def test_a_second_live_run_with_other_options_is_refused(tmp_path, vgg11_bn_file, photos) -> None:
    from conftest import wait_for_records

    out = tmp_path / "out"
    first = subprocess.Popen(
        vggviz(*argv(out, vgg11_bn_file, photos, "--size", 128, "--layers", "all", "--save-raw")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_records(out, 1, first)
        first.send_signal(signal.SIGSTOP)  # alive, holding its claims, however fast it is
        other = invoke(out, vgg11_bn_file, photos, "--cmap", "gray", "--json")
        same = invoke(out, vgg11_bn_file, photos, "--size", 128, "--layers", "all", "--save-raw")
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert other.exit_code == 1
    assert other.stderr == (
        f"Error: {out}: another vggviz run (pid {first.pid}) is writing here with other "
        "options; wait for it to end, give the same options, or choose another output folder\n"
    )
    assert other.stdout == ""
    assert same.exit_code == 0, same.output  # the same options share the work, as before
    # the first run's manifest claims only pictures that are its own
    for record in records((out / "manifest.jsonl").read_text("utf-8")):
        on_disk = json.loads((Path(record["folder"]) / folders.RECORD).read_text("utf-8"))
        assert on_disk["fingerprint"] == record["fingerprint"]
    assert_no_false_record(out)


def test_run_claims_share_a_folder_only_with_the_same_options(tmp_path) -> None:
    first = folders.claim_run(tmp_path, None, "a" * 64)
    same = folders.claim_run(tmp_path, (1, 2), "a" * 64)  # a shard of the same run
    with pytest.raises(folders.OtherOptions) as other:
        folders.claim_run(tmp_path, None, "b" * 64)
    assert other.value.pid == os.getpid()
    first.release()
    same.release()
    again = folders.claim_run(tmp_path, None, "b" * 64)  # nobody live: the folder is free
    assert again.suffix == ""
    again.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- names equal but for case -------------------------------------------------------------------


def test_adding_a_name_equal_but_for_case_moves_no_finished_folder(tmp_path, vgg11_bn_file) -> None:
    photos = tmp_path / "photos"
    write_photo(photos / "cat.jpg", seed=1)
    write_photo(photos / "dog.jpg", seed=2)
    out = tmp_path / "out"
    assert invoke(out, vgg11_bn_file, photos).exit_code == 0
    write_photo(photos / "CAT.jpg", seed=3)  # sorts before cat.jpg
    write_photo(photos / "DOG.jpg", seed=4)
    shards = [
        subprocess.Popen(
            vggviz(*argv(out, vgg11_bn_file, photos, "--skip-existing", "--json", "--shard", k)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in ("1/2", "2/2")
    ]
    got = []
    for shard in shards:
        stdout, stderr = shard.communicate(timeout=300)
        assert shard.returncode == 0, stderr
        got += records(stdout)
    by_name = {Path(r["input"]).name: r for r in got}
    assert by_name["cat.jpg"]["status"] == by_name["dog.jpg"]["status"] == "skipped"
    assert by_name["cat.jpg"]["folder"] == str(out / "cat_jpg")  # where it was
    assert by_name["dog.jpg"]["folder"] == str(out / "dog_jpg")
    for name in ("CAT.jpg", "DOG.jpg"):
        assert by_name[name]["status"] == "ok"
        assert Path(by_name[name]["folder"]).name.startswith(name.replace(".", "_") + "_")
    assert len({r["folder"] for r in got}) == 4
    assert_no_false_record(out)


def test_names_equal_but_for_case_agree_across_shards_from_scratch(tmp_path) -> None:
    from vggviz.core.inputs import discover

    for name in ("cat.jpg", "CAT.jpg", "Cat.jpg"):
        write_photo(tmp_path / "in" / name)
    items = discover([str(tmp_path / "in")]).items
    out = tmp_path / "out"
    dirs = folders.output_dirs(items, out)
    assert folders.output_dirs(list(reversed(items)), out) == list(reversed(dirs))
    assert dirs[0] == out / "CAT_jpg" and len(set(dirs)) == 3  # the first by path, as before


# --- found as a hostile user ---------------------------------------------------------------------


def test_a_weights_path_that_cannot_be_read_is_one_line(tmp_path, photo) -> None:
    weights = tmp_path / ("w" * 300 + ".pth")  # ENAMETOOLONG: neither missing nor readable
    result = CliRunner().invoke(
        cli, ["features", str(photo), "--weights", str(weights), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr == f"Error: {weights}: cannot be read (file name too long)\n"


def test_messages_name_the_file_not_its_hidden_temporary(tmp_path, vgg11_bn_file, photo) -> None:
    out = tmp_path / "out"
    assert invoke(out, vgg11_bn_file, photo).exit_code == 0
    (out / "manifest.jsonl").unlink()
    (out / "manifest.jsonl").mkdir()  # a folder where the manifest goes
    (out / "photo_png" / folders.RECORD).unlink()
    (out / "photo_png" / folders.RECORD).mkdir()
    result = invoke(out, vgg11_bn_file, photo)
    assert result.exit_code == 1
    assert result.stderr.split("\n")[0] == (
        f"error: {out}/photo_png/record.json: cannot write (is a directory)"
    )
    assert result.stderr.split("\n")[-2] == (
        f"Error: {out}/manifest.jsonl: cannot write (is a directory)"
    )
    assert TMP_SUFFIX not in result.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(TMP_SUFFIX)]
