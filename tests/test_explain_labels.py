"""Class names: ImageNet's without importing torchvision, labels files with one-line errors,
and --class resolution by name or index."""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys
from pathlib import Path

import pytest
import torchvision

from vggviz.core.errors import UsageError, WeightsError
from vggviz.explain import labels
from vggviz.explain.labels import class_names, imagenet_names, read_labels, resolve_classes


def test_imagenet_names_are_torchvisions() -> None:
    theirs = torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"]
    assert list(imagenet_names()) == theirs
    assert imagenet_names()[281] == "tabby"


def test_imagenet_names_without_importing_torch_or_torchvision() -> None:
    code = (
        "import sys; from vggviz.explain.labels import imagenet_names; "
        "n = imagenet_names(); "
        "print(len(n), 'torchvision' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["1000", "False", "False"]


def test_imagenet_names_fall_back_to_the_weights_api(monkeypatch) -> None:
    """Should torchvision's private list move, the public weights metadata still answers."""
    monkeypatch.setattr(labels, "_names_from_source", lambda: None)
    labels.imagenet_names.cache_clear()
    try:
        assert labels.imagenet_names()[0] == "tench"
        assert len(labels.imagenet_names()) == 1000
    finally:
        labels.imagenet_names.cache_clear()


def test_names_from_source_refuses_a_changed_file(tmp_path: Path, monkeypatch) -> None:
    """A list of the wrong length, or no literal, is not taken for ImageNet's names."""
    fake = tmp_path / "torchvision"
    (fake / "models").mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    spec.submodule_search_locations = [str(fake)]
    monkeypatch.setattr(labels.importlib.util, "find_spec", lambda name: spec)
    meta = fake / "models" / "_meta.py"
    meta.write_text(f"_IMAGENET_CATEGORIES = {[str(i) for i in range(1000)]!r}\n")
    assert labels._names_from_source() == tuple(str(i) for i in range(1000))  # the fake is read
    meta.write_text("_IMAGENET_CATEGORIES = ['only', 'two']\n")
    assert labels._names_from_source() is None
    meta.write_text("_IMAGENET_CATEGORIES = [str(i) for i in range(1000)]\n")
    assert labels._names_from_source() is None
    meta.unlink()
    assert labels._names_from_source() is None


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "labels.txt"
    path.write_bytes(data)
    return path


def test_a_labels_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "\ufeffcat\r\n  coins \r\nhorse\ncafé au lait\n\n\n".encode())
    assert read_labels(path) == ["cat", "coins", "horse", "café au lait"]
    assert class_names(4, labels=path) == ["cat", "coins", "horse", "café au lait"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"cat\n\ncoins\n", r"labels\.txt: line 2 is empty; expected one class name a line$"),
        (b"cat\ncaf\xe9\n", r"labels\.txt: not UTF-8 text \(line 2\)"),
        (b"\n\n", r"labels\.txt: no class names in it$"),
        (b"", r"labels\.txt: no class names in it$"),
    ],
)
def test_bad_labels_files(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        read_labels(_write(tmp_path, data))
    assert err.value.param == "labels"
    assert "\n" not in str(err.value)


def test_missing_unreadable_and_huge_labels_files(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(UsageError, match=r"nope\.txt: cannot read \(no such file or directory\)"):
        read_labels(tmp_path / "nope.txt")
    with pytest.raises(UsageError, match=r"cannot read \(is a directory\)"):
        read_labels(tmp_path)
    monkeypatch.setattr(labels, "LABELS_MAX_BYTES", 1 << 20)
    path = _write(tmp_path, b"x\n" * (1 << 20))
    with pytest.raises(UsageError, match=r"larger than 1 MiB, not a labels file"):
        read_labels(path)


def test_a_non_utf8_file_name_is_shown_with_replacement_characters(tmp_path: Path) -> None:
    import os

    name = os.fsdecode(b"lab\xffels.txt")
    with pytest.raises(UsageError, match="lab\ufffdels.txt: cannot read"):
        read_labels(tmp_path / name)


def test_the_count_must_match_the_head(tmp_path: Path) -> None:
    path = _write(tmp_path, b"cat\ncoins\nhorse\ncoffee\n")
    with pytest.raises(
        UsageError, match=r"labels\.txt: 4 names, but the model's head has 5 outputs$"
    ) as err:
        class_names(5, labels=path)
    assert err.value.param == "labels"
    with pytest.raises(WeightsError, match="names 1 class, but its head has 2 outputs"):
        class_names(2, stored=["cat"])


def test_where_names_come_from(tmp_path: Path) -> None:
    path = _write(tmp_path, b"a\nb\n")
    assert class_names(2, labels=path, stored=["x", "y"], imagenet=True) == ["a", "b"]
    assert class_names(2, stored=["x", "y"], imagenet=True) == ["x", "y"]
    assert class_names(1000, imagenet=True)[:2] == ["tench", "goldfish"]
    assert class_names(1000)[:2] == ["class 0", "class 1"]
    assert class_names(5, imagenet=True) == [f"class {i}" for i in range(5)]


def test_resolve_by_name_index_case_and_underscore() -> None:
    names = imagenet_names()
    assert resolve_classes(["tabby"], names) == [281]
    assert resolve_classes(["TABBY", " Tiger cat "], names) == [281, 282]
    assert resolve_classes(["tiger_cat", "282", "281", "tabby"], names) == [282, 281]
    assert resolve_classes(["0", "999"], names) == [0, 999]


def test_names_win_over_indices() -> None:
    assert resolve_classes(["1"], ["0", "2", "1"]) == [2]
    assert resolve_classes(["Cat"], ["cat", "Cat"]) == [1]  # exact before case-insensitive


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cat", r"unknown class 'cat'; nearest: 'tiger cat', 'Persian cat', 'Siamese cat'"),
        ("tabyy", r"unknown class 'tabyy'; nearest: 'tabby'"),
        ("1000", r"class 1000 is out of range: the model's classes are 0\.\.999$"),
        ("-1", r"unknown class '-1'$"),
        ("zzzzqqq", r"unknown class 'zzzzqqq'$"),
        ("  ", r"an empty class name$"),
    ],
)
def test_resolve_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        resolve_classes([spec], imagenet_names())
    assert err.value.param == "class"


def test_a_name_two_classes_share_needs_the_index() -> None:
    names = ["bird", "crane", "truck", "Crane", "bird"]
    with pytest.raises(UsageError, match=r"'bird' names classes 0, 4; give the index"):
        resolve_classes(["bird"], names)
    with pytest.raises(UsageError, match=r"'CRANE' names classes 1, 3; give the index"):
        resolve_classes(["CRANE"], names)
    assert resolve_classes(["crane", "Crane", "4"], names) == [1, 3, 4]
