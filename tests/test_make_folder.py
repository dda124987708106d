"""examples/make_folder.py: a seeded, reproducible folder of crops, flips and rescales."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import write_photo
from PIL import Image

SCRIPT = Path(__file__).parent.parent / "examples" / "make_folder.py"


def _run(photos: Path, out: Path, *extra: str) -> list[Path]:
    cmd = [sys.executable, str(SCRIPT), str(out), "--photos", str(photos), "--per-photo", "4"]
    subprocess.run([*cmd, *extra], check=True, capture_output=True)
    return sorted(out.iterdir())


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_photo(photos / "a.png", 300, 400, seed=1)
    write_photo(photos / "b.png", 360, 240, seed=2)
    (photos / "notes.txt").write_text("not a photo")
    first = _run(photos, tmp_path / "one")
    assert [p.name for p in first] == [f"{s}-{i:03d}.jpg" for s in "ab" for i in range(4)]
    again = _run(photos, tmp_path / "two")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    other = _run(photos, tmp_path / "three", "--seed", "1")
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]
    sizes = set()
    for path in first:
        with Image.open(path) as im:
            assert im.mode == "RGB" and 224 <= min(im.size) <= 448
            sizes.add(im.size)
    assert len(sizes) > 4  # crops and rescales differ


def test_the_default_source_is_the_clones_own_photos(tmp_path: Path) -> None:
    """From a fresh clone, with no --photos: the 15 sample photos in examples/photos."""
    cmd = [sys.executable, str(SCRIPT), str(tmp_path / "out"), "--per-photo", "1"]
    subprocess.run(cmd, check=True, capture_output=True)
    photos = sorted(p.stem for p in (SCRIPT.parent / "photos").glob("*.jpg"))
    assert len(photos) == 15
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{s}-000.jpg" for s in photos]
