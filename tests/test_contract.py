"""The output folder's contract where a hostile world meets it: exceptions that meet images in
flight, names that break lines, standard streams closed or gone, folders the walk cannot
enter, empty and dangerous output folders, runs at once with other options, names equal but
for case, and signals during start-up."""

from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
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
    manifest = records((out / "manifest.jsonl").read_text("utf-8"))
    assert sorted(Path(r["input"]).name for r in manifest) == sorted(names)
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


def test_json_to_a_stdout_closed_at_start_is_a_closed_pipe(tmp_path, vgg11_bn_file, photos) -> None:
    out = tmp_path / "out"
    done = shell(vggviz(*argv(out, vgg11_bn_file, photos, "--json")), ">&-")
    assert (done.returncode, done.stderr) == (141, "")
    assert 1 <= len(records((out / "manifest.jsonl").read_text("utf-8"))) < 8
    assert_no_false_record(out)


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
    for command in (["info"], ["info", "--weights", str(vgg11_bn_file)], ["weights"]):
        closed = shell(vggviz(*command), ">&-", env=env)
        assert (closed.returncode, closed.stderr) == (141, ""), command
        quiet = shell(vggviz(*command), "<&- 2>&-", env=env)
        assert quiet.returncode in (0, 1) and quiet.stdout, command  # 1: weights missing
        assert "Traceback" not in quiet.stdout
    top = shell(
        vggviz("top", photo, *model, "--size", 32, "--layers", "conv1", "-o", tmp_path / "t"),
        "<&- >&- 2>&-",
        env=env,
    )
    assert top.returncode == 0 and (tmp_path / "t" / "top.json").is_file()
