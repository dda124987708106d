"""The output-folder contract: folder names, records, fingerprints, claims, JSON."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest

from vggviz.core import folders
from vggviz.core.files import Held
from vggviz.core.folders import claim, folder_name, output_dirs
from vggviz.core.inputs import InputItem, discover
from vggviz.core.text import dumps


def item(path: str, rel: str | None = None) -> InputItem:
    p = Path(path)
    return InputItem(path=p, source=path, rel=PurePosixPath(rel or p.name))


def sha8(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def assert_inside(dirs: list[Path], out: Path) -> None:
    root = out.resolve()
    for d in dirs:
        assert d.resolve().is_relative_to(root), d
        assert d.resolve() != root, d


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("cat.jpg", "cat_jpg"),
        ("cat.png", "cat_png"),
        ("IMG_0001.JPG", "IMG_0001_JPG"),
        ("index.html.png", "index.html_png"),
        ("manifest.jsonl.png", "manifest.jsonl_png"),
        ("filters-conv1.png.png", "filters-conv1.png_png"),
        ("README", "README_"),
        (".hidden.jpg", "_hidden_jpg"),
        ("...png", "_._png"),
    ],
)
def test_a_folder_is_named_after_its_file_alone(name: str, folder: str) -> None:
    assert folder_name(name) == folder
    assert not any(folder.endswith(ext) for ext in (".png", ".html", ".jsonl", ".json"))


def test_adding_a_file_never_renames_another_files_folder(tmp_path: Path) -> None:
    """cat.jpg beside an already processed cat.png: each keeps a folder of its own."""
    out = tmp_path / "out"
    before = output_dirs([item("p/cat.png")], out)
    after = output_dirs([item("p/cat.jpg"), item("p/cat.png")], out)
    assert before == [out / "cat_png"]
    assert after == [out / "cat_jpg", out / "cat_png"]


def test_the_tree_is_mirrored(tmp_path: Path) -> None:
    t = tmp_path / "t"
    for rel in ("a.jpg", "sub/deep/my photo.png", "sub/ünï.png", "x.jpg/inner.png"):
        touch(t / rel)
    out = tmp_path / "out"
    assert output_dirs(discover([str(t)]).items, out) == [
        out / "a_jpg",
        out / "sub" / "deep" / "my photo_png",
        out / "sub" / "ünï_png",
        out / "x.jpg" / "inner_png",
    ]


def test_top_level_folders_named_like_run_files_are_renamed(tmp_path: Path) -> None:
    t = tmp_path / "t"
    touch(t / "index.html" / "a.png")
    touch(t / "manifest.jsonl" / "b.png")
    out = tmp_path / "out"
    assert output_dirs(discover([str(t)]).items, out) == [
        out / "index.html_" / "a_png",
        out / "manifest.jsonl_" / "b_png",
    ]


def test_names_equal_but_for_case_get_a_hash(tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = [item("p/cat.png"), item("p/Cat.png"), item("q/CAT.PNG")]
    assert output_dirs(items, out) == [
        out / f"cat_png_{sha8('p/cat.png')}",
        out / "Cat_png",
        out / f"CAT_PNG_{sha8('q/CAT.PNG')}",
    ]


def test_same_name_from_two_folders_given_as_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a, b = item("a/dog.jpg"), item("b/dog.jpg")
    assert output_dirs([b, a], out) == [out / f"dog_jpg_{sha8('b/dog.jpg')}", out / "dog_jpg"]


def test_item_folder_never_contains_another_items_folder(tmp_path: Path) -> None:
    """t/a.jpg would own out/a_jpg, which is also where t/a_jpg/b.jpg's folder lives."""
    touch(tmp_path / "t" / "a.jpg")
    touch(tmp_path / "t" / "a_jpg" / "b.jpg")
    out = tmp_path / "out"
    found = discover([str(tmp_path / "t")])
    dirs = output_dirs(found.items, out)
    path_a = str(tmp_path / "t" / "a.jpg")
    assert dirs == [out / f"a_jpg_{sha8(path_a)}", out / "a_jpg" / "b_jpg"]


def test_long_names_that_clash_stay_within_name_max(tmp_path: Path) -> None:
    stem = "x" * 251
    items = [item(f"p/{stem}.png"), item(f"p/{stem.upper()}.png")]
    dirs = output_dirs(items, tmp_path / "out")
    assert len(set(dirs)) == 2
    for d in dirs:
        assert len(os.fsencode(d.name)) <= 255
        d.mkdir(parents=True)  # the file system takes them


def test_hostile_rels_stay_inside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = [
        item("/abs.png", "/etc/abs.png"),
        item("e.png", "../../evil.png"),
        item("d.png", "...png"),
        item("dot", "."),
        item("dd", ".."),
    ]
    dirs = output_dirs(items, out)
    assert len(set(dirs)) == len(dirs)
    assert dirs[:3] == [out / "etc" / "abs_png", out / "evil_png", out / "_._png"]
    assert_inside(dirs, out)


def test_undecodable_names_get_folders(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.png")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(b"")
    (d,) = output_dirs(discover([str(tmp_path / "in")]).items, tmp_path / "out")
    assert os.fsencode(d.name) == b"caf\xe9_png"
    d.mkdir(parents=True)


# --- records and fingerprints ----------------------------------------------------------------


def test_a_record_matches_only_the_same_input_and_options(tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    photo.write_bytes(b"one")
    folder = tmp_path / "out" / "p_png"
    folder.mkdir(parents=True)
    (folder / "01-conv1.png").write_bytes(b"x")
    ident = folders.identity(photo)
    print_ = folders.fingerprint({"cmap": "inferno"})
    record = {
        "status": "ok",
        "outputs": [str(folder / "01-conv1.png")],
        "identity": ident,
        "fingerprint": print_,
    }
    (folder / folders.RECORD).write_text(json.dumps(record))
    assert folders.finished(folder, print_, ident) == record
    assert folders.finished(folder, folders.fingerprint({"cmap": "gray"}), ident) is None
    time.sleep(0.01)
    photo.write_bytes(b"two!")  # the file changed
    assert folders.finished(folder, print_, folders.identity(photo)) is None
    (folder / "01-conv1.png").unlink()  # an output went missing
    assert folders.finished(folder, print_, ident) is None
    (folder / folders.RECORD).write_text("{not json")
    assert folders.finished(folder, print_, ident) is None


def test_json_is_valid_utf8_for_any_name_and_refuses_nan() -> None:
    name = os.fsdecode(b"/p/caf\xe9 n\xc3\xa4me.png")
    text = dumps({"input": name})
    text.encode("utf-8")  # no lone surrogate left
    assert "\\udce9" in text and "näme" in text
    assert os.fsencode(json.loads(text)["input"]) == b"/p/caf\xe9 n\xc3\xa4me.png"
    with pytest.raises(ValueError):
        dumps({"max": float("nan")})


def test_a_json_record_is_one_line_for_every_reader() -> None:
    """U+2028, U+2029 and U+0085 are line breaks to str.splitlines (and to JavaScript):
    dumps escapes them, so a name holding one never splits a JSON line."""
    record = {"input": "a\u2028b\u2029c\x85d\ne.png"}
    text = dumps(record)
    assert text.splitlines() == [text]
    assert json.loads(text) == record


def test_a_record_that_is_no_regular_file_is_never_read(tmp_path: Path) -> None:
    """A link to /dev/zero, a FIFO or an oversized file in record.json's place: not a
    finished folder, found at once (neither blocking nor reading forever)."""
    ident = {"path": "/x", "size": 1, "mtime_ns": 1}
    cases = {
        "zero": lambda p: p.symlink_to("/dev/zero"),
        "fifo": lambda p: os.mkfifo(p),
        "big": lambda p: p.write_bytes(b" " * (folders.RECORD_MAX + 1)),
    }
    for name, plant in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        plant(folder / folders.RECORD)
        started = time.monotonic()
        assert folders.finished(folder, "print", ident) is None, name
        assert time.monotonic() - started < 5, name


# --- claims ----------------------------------------------------------------------------------


def test_a_claim_excludes_other_processes_until_released(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    held = claim(folder)
    probe = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from vggviz.core.folders import claim, Held\n"
        "try:\n    claim(Path(sys.argv[1]))\nexcept Held as e:\n    print('held', e)\n"
        "else:\n    print('free')",
        str(folder),
    ]
    out = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
    assert out.startswith("held") and f"pid {os.getpid()}" in out
    held.release()
    assert not (folder / folders.LOCK).exists()
    assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout == "free\n"


def test_a_dead_holder_leaves_no_claim(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    code = "import os, sys; from pathlib import Path; from vggviz.core.folders import claim\n"
    code += "claim(Path(sys.argv[1])); os._exit(9)"  # killed, as it were, holding the folder
    subprocess.run([sys.executable, "-c", code, str(folder)], check=False)
    assert (folder / folders.LOCK).exists()  # left behind, but nobody holds it
    claim(folder).release(remove_folder=True)
    assert not folder.exists()


def test_two_claims_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    first = claim(tmp_path / "img")
    with pytest.raises(Held):
        claim(tmp_path / "img")
    first.release()


def test_runs_sharing_a_folder_get_their_own_manifest_names(tmp_path: Path) -> None:
    a = folders.claim_run(tmp_path, None)
    b = folders.claim_run(tmp_path, None)
    c = folders.claim_run(tmp_path, (1, 3))
    assert (a.suffix, b.suffix, c.suffix) == ("", "-2", "-shard-1-of-3")
    b.release()
    assert folders.claim_run(tmp_path, None).suffix == "-2"
    a.release()
