"""`vggviz explain` tried as a hostile user would: runs at once into one folder, kill -9 and
resume, read-only and full output folders, names no file system forbids, absurd values,
pipes and closed standard streams, corrupt records, links planted in the output folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import wait_for_records, write_photo
from PIL import Image

from vggviz.cli import cli
from vggviz.core import folders, memory
from vggviz.core.files import TMP_SUFFIX

FAST = ["--size", "32", "--device", "cpu"]


def argv(out: Path, weights: Path, *args: object) -> list[str]:
    return ["explain", *map(str, args), *FAST, "--weights", str(weights), "-o", str(out)]


def invoke(out: Path, weights: Path, *args: object, input: str | bytes | None = None):
    return CliRunner().invoke(cli, argv(out, weights, *args), input=input, catch_exceptions=False)


def command(out: Path, weights: Path, *args: object) -> list[str]:
    return [sys.executable, "-m", "vggviz", *argv(out, weights, *args)]


def start(out: Path, weights: Path, *args: object, **kwargs) -> subprocess.Popen:
    # a shell running the tests in the background ignores SIGINT, and children inherit that
    return subprocess.Popen(
        command(out, weights, *args),
        stdout=kwargs.pop("stdout", subprocess.DEVNULL),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


def lines(text: str) -> list[dict]:
    """JSON Lines split the way the strictest reader does (str.splitlines also breaks at
    U+2028, U+0085, ...): each record must still be one line."""
    return [json.loads(x) for x in text.splitlines()]


def image_folders(out: Path) -> set[Path]:
    return {p.parent for p in out.rglob("*") if p.is_file() and p.parent != out}


def assert_every_folder_finished(out: Path) -> None:
    """Each image folder holds a record whose outputs are all there and whole, and nothing
    else: no temporary, no lock, no picture its record does not list."""
    for folder in image_folders(out):
        record = json.loads((folder / folders.RECORD).read_text("utf-8"))
        assert record["status"] == "ok"
        assert {p.name for p in folder.iterdir()} == {Path(p).name for p in record["outputs"]}
        with Image.open(folder / "explain.png") as im:
            im.load()
    assert not [p for p in out.rglob("*") if p.name.endswith(TMP_SUFFIX)]
    assert not list(out.rglob(".vggviz.lock"))


def numbers(record: dict) -> tuple:
    """What a record says about its photo (not how the run went, nor where it was written)."""
    explanations = [{k: v for k, v in e.items() if k != "picture"} for e in record["explanations"]]
    return record["input"], record["predictions"], explanations, record["fingerprint"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for i in range(8):
        write_photo(folder / f"p{i}.png", 48, 64, seed=i)
    return folder


# --- runs at once, kills, resumes ------------------------------------------------------------


def test_two_runs_at_once_share_the_work(tmp_path, tutorial_file, photos) -> None:
    """With --skip-existing, two runs at once do every photo exactly once between them (a
    photo is skipped while the other holds it, and once it has finished it)."""
    out = tmp_path / "out"
    runs = [
        start(out, tutorial_file, photos, "--json", "--skip-existing", stdout=subprocess.PIPE)
        for _ in "ab"
    ]
    results = [p.communicate(timeout=300) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], results
    done: dict[str, int] = {}
    for stdout, _ in results:
        for record in lines(stdout):
            if record["status"] == "ok":
                done[record["input"]] = done.get(record["input"], 0) + 1
            else:
                assert record["status"] == "skipped", record
                reason = record["reason"]
                assert reason.startswith("another vggviz run (pid ") or reason == (
                    "finished earlier"
                ), record
    assert sorted(done) == sorted(str(p) for p in photos.iterdir())
    assert set(done.values()) == {1}
    assert len(image_folders(out)) == 8
    assert_every_folder_finished(out)


def test_two_runs_at_once_with_other_options(tmp_path, tutorial_file, photos) -> None:
    """A second live run with other options is refused in one line naming the first's pid
    (as for features: a run's manifest must never claim pictures another run replaced); the
    first finishes every photo, and a rerun with other options then redoes them all."""
    out = tmp_path / "out"
    first = start(out, tutorial_file, photos, "-k", "1", "--json", stdout=subprocess.PIPE)
    try:
        wait_for_records(out, 1, first)
        first.send_signal(signal.SIGSTOP)  # alive, holding its claims, however fast it is
        other = invoke(out, tutorial_file, photos, "--class", "2", "--json")
    finally:
        first.send_signal(signal.SIGCONT)
        stdout, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert other.exit_code == 1 and other.stdout == ""
    assert f"another vggviz run (pid {first.pid}) is writing here with other options" in (
        other.stderr
    )
    assert len(image_folders(out)) == 8
    assert_every_folder_finished(out)
    mine = {r["fingerprint"] for r in lines(stdout) if r["status"] == "ok"}
    assert len(mine) == 1
    rerun = invoke(out, tutorial_file, photos, "--class", "2", "--skip-existing", "--json")
    assert rerun.exit_code == 0, rerun.output
    assert [r["status"] for r in lines(rerun.stdout)] == ["ok"] * 8


def test_killed_then_resumed_gives_a_clean_runs_records(tmp_path, tutorial_file, photos) -> None:
    clean = invoke(tmp_path / "clean", tutorial_file, photos, "--save-raw", "--json")
    assert clean.exit_code == 0, clean.output
    out = tmp_path / "out"
    proc = start(out, tutorial_file, photos, "--save-raw")
    wait_for_records(out, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    for png in out.rglob("*.png"):  # whatever exists under a final name is whole
        with Image.open(png) as im:
            im.load()
    before = len(list(out.rglob("record.json")))
    assert 2 <= before < 8
    resumed = invoke(out, tutorial_file, photos, "--save-raw", "--skip-existing", "--json")
    assert resumed.exit_code == 0, resumed.output
    got = lines(resumed.stdout)
    assert sum(r["status"] == "skipped" for r in got) == before
    assert [numbers(r) for r in got] == [numbers(r) for r in lines(clean.stdout)]
    assert_every_folder_finished(out)


def test_a_stop_finishes_or_removes_every_photo(tmp_path, tutorial_file, photos) -> None:
    out = tmp_path / "out"
    proc = start(out, tutorial_file, photos, "--size", "96")
    wait_for_records(out, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    (line,) = [x for x in err.splitlines() if x.startswith("interrupted:")]
    finished = int(line.split()[1])
    assert line == f"interrupted: {finished} of 8 image(s) finished"
    assert len(image_folders(out)) == finished
    assert_every_folder_finished(out)
    assert "Traceback" not in err


# --- read-only and full output folders ---------------------------------------------------------


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


def test_a_read_only_output_folder_is_one_line(tmp_path, tutorial_file, photos) -> None:
    with mounted(tmp_path / "ro", "ro,size=1m") as ro:
        result = invoke(ro / "out", tutorial_file, photos)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {ro / 'out'}: cannot write (read-only file system)\n"


def test_a_full_output_folder_stops_cleanly(tmp_path, tutorial_file, photos) -> None:
    with mounted(tmp_path / "small", "size=1200k") as small:
        out = small / "out"
        result = invoke(out, tutorial_file, photos, "--save-raw", "--json", "--size", "64")
        assert result.exit_code == 1
        (line,) = [x for x in result.stderr.splitlines() if "stopped after" in x]
        assert line.endswith("cannot write (no space left on device)")
        got = lines(result.stdout)
        statuses = "".join(r["status"][0] for r in got)
        assert re.fullmatch(r"o+e{1,2}", statuses), statuses
        done = statuses.count("o")
        assert line.startswith(f"error: stopped after {len(got)} of 8 image(s), {done} done: ")
        assert "Traceback" not in result.output
        assert_every_folder_finished(out)
        assert len(image_folders(out)) == done


# --- names -------------------------------------------------------------------------------------


def test_names_no_file_system_forbids(tmp_path, tutorial_file) -> None:
    """Bytes that are not UTF-8, U+2028, U+0085, a newline, and two names equal but for
    case: each photo is done into its own folder, each record is one JSON line whatever
    splits it, and the names come back byte for byte."""
    folder = tmp_path / "photos"
    raw = [b"caf\xe9.png", "line\u2028sep.png".encode(), "nel\u0085.png".encode()]
    raw += [b"new\nline.png", b"Case.png", b"case.png"]
    for i, name in enumerate(raw):
        write_photo(Path(os.fsdecode(bytes(folder) + b"/" + name)), seed=i)
    out = tmp_path / "out"
    result = invoke(out, tutorial_file, folder, "--json")
    assert result.exit_code == 0, result.output
    got = lines(result.stdout)
    assert sorted(os.fsencode(r["input"]) for r in got) == sorted(
        bytes(folder) + b"/" + n for n in raw
    )
    assert [r["status"] for r in got] == ["ok"] * 6
    assert len({r["folder"] for r in got}) == 6 and len(image_folders(out)) == 6
    manifest = (out / "manifest.jsonl").read_bytes().decode("utf-8")  # strictly valid
    assert lines(manifest) == got
    (out / "index.html").read_bytes().decode("utf-8")
    assert_every_folder_finished(out)
    again = invoke(out, tutorial_file, folder, "--skip-existing")
    assert "0 done, 0 failed, 6 skipped" in again.stderr


# --- absurd values ---------------------------------------------------------------------------


def test_absurd_values(tmp_path, tutorial_file, photos, monkeypatch) -> None:
    out = tmp_path / "out"
    many = invoke(out, tutorial_file, photos / "p0.png", "-k", "20", "--json")
    assert many.exit_code == 0, many.output
    (record,) = lines(many.stdout)  # a 5-class head: all 5, best first
    assert [len(record["predictions"]), len(record["explanations"])] == [5, 5]
    logits = [p["logit"] for p in record["predictions"]]
    assert logits == sorted(logits, reverse=True)
    outside = invoke(out, tutorial_file, photos, "--class", "5")
    assert outside.exit_code == 2
    assert "class 5 is out of range: the model's classes are 0..4" in outside.stderr
    monkeypatch.setattr(memory, "available_bytes", lambda: 9_000_000_000)
    monkeypatch.delenv(memory.FORCE_ENV, raising=False)
    for args in (["--size", "4096"], ["--size", "224", "--batch-size", "256"]):
        refused = CliRunner().invoke(
            cli, ["explain", str(photos), "--weights", str(tutorial_file), *args, "-o", str(out)]
        )
        assert refused.exit_code == 2, args
        last = refused.stderr.splitlines()[-1]
        assert re.search(r"needs about \d+\.\d GB of memory but 9\.0 GB is available", last)


# --- pipes and standard streams -----------------------------------------------------------------


def test_json_into_head_ends_quietly(tmp_path, tutorial_file, photos) -> None:
    out = tmp_path / "out"
    line = " ".join(map(repr, command(out, tutorial_file, photos, "--json")))
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {line} | head -1 >/dev/null"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stderr == ""
    assert done.returncode == 141
    assert_every_folder_finished(out)


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-", "<&- >&- 2>&-"])
def test_closed_standard_streams(tmp_path, tutorial_file, photos, closed) -> None:
    """A process started without stdin, stdout or stderr works (messages are lost, not the
    outputs), and no file it writes takes the closed descriptor's number."""
    out = tmp_path / "out"
    (photos / "broken.jpg").write_bytes(b"")
    line = " ".join(map(repr, command(out, tutorial_file, photos)))
    code, stderr = _run_closed(line, closed)
    assert code == 1, stderr  # the broken photo
    if "2>&-" not in closed:
        assert stderr.splitlines()[0].startswith(f"error: {photos / 'broken.jpg'}: ")
    assert len(image_folders(out)) == 8
    assert_every_folder_finished(out)


def _run_closed(line: str, closed: str) -> tuple[int, str]:
    """Run ``line`` with standard streams closed by ``closed``; its exit code and what it
    said on stderr (when stderr is open)."""
    done = subprocess.run(
        ["bash", "-c", f"{line} {closed}"], capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stderr


def test_json_to_a_closed_stdout_is_refused_before_any_work(tmp_path, tutorial_file, photos):
    out = tmp_path / "out"
    line = " ".join(map(repr, command(out, tutorial_file, photos, "--json")))
    code, stderr = _run_closed(line, ">&-")
    assert code == 1
    assert stderr == (
        "Error: cannot write to standard output (it is closed); --json prints the records there\n"
    )
    assert not out.exists()


# --- corrupt state, planted links ------------------------------------------------------------


def test_corrupt_records_are_redone(tmp_path, tutorial_file, photos) -> None:
    """Records that are garbage, cut short, not an object, of the wrong types, a folder, a
    FIFO, or a link to /dev/zero: --skip-existing redoes those photos (without blocking or
    reading forever) and skips the others."""
    out = tmp_path / "out"
    assert invoke(out, tutorial_file, photos).exit_code == 0
    records = sorted(out.glob("*/record.json"))
    damage = [
        lambda p: p.write_bytes(b"\x00\xff garbage"),
        lambda p: p.write_text(p.read_text()[:50]),
        lambda p: p.write_text("[1, 2, 3]"),
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "outputs": 5})),
        lambda p: (p.unlink(), p.mkdir()),
        lambda p: (p.unlink(), os.mkfifo(p)),
        lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
    ]
    for path, spoil in zip(records, damage, strict=False):
        spoil(path)
    done = subprocess.run(
        [*command(out, tutorial_file, photos, "--skip-existing", "--json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    got = {Path(r["input"]).name: r for r in lines(done.stdout)}
    spoiled = {p.parent.name.replace("_png", ".png") for p in records[: len(damage)]}
    status = {name: r["status"] for name, r in got.items()}
    dir_record = records[4].parent.name.replace("_png", ".png")
    assert {n for n, s in status.items() if s == "ok"} == spoiled - {dir_record}, done.stderr
    assert {n for n, s in status.items() if s == "skipped"} == set(status) - spoiled
    # a folder where record.json is itself a folder cannot take a record: one error line
    assert status[dir_record] == "error"
    assert got[dir_record]["error"] == f"{records[4]}: cannot write (is a directory)"
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (records[4]).rmdir()
    again = invoke(out, tutorial_file, photos, "--skip-existing")
    assert again.exit_code == 0, again.output
    assert_every_folder_finished(out)


def test_links_planted_in_the_output_folder(tmp_path, tutorial_file, photos) -> None:
    """Links in -o never take a write (or a removal) outside it: a photo's folder that is a
    link out fails alone; links in the place of a picture, the manifest or the index are
    replaced, and what they point at is untouched."""
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    assert invoke(out, tutorial_file, photos / "p2.png").exit_code == 0  # -o is explain's
    (out / "p0_png").symlink_to(elsewhere, target_is_directory=True)
    (out / "p1_png").mkdir()
    (out / "p1_png" / "explain.png").symlink_to(victim)
    for name in ("index.html", "manifest.jsonl"):
        (out / name).unlink()
        (out / name).symlink_to(victim)
    result = invoke(out, tutorial_file, photos, "--json")
    assert result.exit_code == 1
    got = {Path(r["input"]).name: r for r in lines(result.stdout)}
    assert got["p0.png"]["status"] == "error"
    assert got["p0.png"]["error"] == f"{out / 'p0_png'}: output folder leads outside {out}"
    assert [got[f"p{i}.png"]["status"] for i in range(1, 8)] == ["ok"] * 7
    assert victim.read_text() == "precious"
    assert list(elsewhere.iterdir()) == []
    for name in ("index.html", "manifest.jsonl", "p1_png/explain.png"):
        assert not (out / name).is_symlink(), name
    (out / "p0_png").unlink()
    assert_every_folder_finished(out)


def test_a_full_disk_simulated_stops_cleanly(tmp_path, tutorial_file, photos, monkeypatch) -> None:
    """The same where no small file system can be mounted: the 3rd picture finds no space."""
    import errno

    from vggviz.core import files

    real, calls = files.save_png, []

    def save_png(image, path):
        calls.append(path)
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(image, path)

    monkeypatch.setattr(files, "save_png", save_png)
    out = tmp_path / "out"
    result = invoke(out, tutorial_file, photos, "--json")
    assert result.exit_code == 1
    got = lines(result.stdout)
    assert [r["status"] for r in got][:3] == ["ok", "ok", "error"]
    assert set(r["status"] for r in got[2:]) == {"error"} and len(got) < 8
    assert result.stderr.splitlines()[-1] == (
        f"error: stopped after {len(got)} of 8 image(s), 2 done: {calls[2]}: cannot write "
        "(no space left on device)"
    )
    assert_every_folder_finished(out)
    assert len(image_folders(out)) == 2
