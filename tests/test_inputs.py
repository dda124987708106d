"""Tests for vggviz.core.inputs: discovery, output folder names and sharding."""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

import pytest

from vggviz.core.errors import InputError, UsageError
from vggviz.core.inputs import (
    Discovery,
    InputItem,
    discover,
    parse_shard,
    shard,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def rels(found: Discovery) -> list[str]:
    return [str(item.rel) for item in found.items]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A photo folder with everything awkward in it; discovery never opens the files."""
    t = tmp_path / "tree"
    touch(t / "a.jpg")
    touch(t / "B.JPG")  # upper-case extension
    touch(t / "c.txt")  # not an image
    touch(t / ".hidden.jpg")  # hidden file
    touch(t / ".git" / "x.jpg")  # inside a hidden folder: never seen
    touch(t / "x.jpg" / "inner.png")  # a folder named like an image
    touch(t / "sub" / "deep" / "-dash.png")
    touch(t / "sub" / "deep" / "my photo.png")
    touch(t / "sub" / "ünï.webp")
    touch(t / "sub" / "notes.md")
    touch(t / "sub" / ".DS_Store")
    (t / "sub" / "self").symlink_to(".")  # loop onto itself
    (t / "sub" / "up").symlink_to("..")  # loop onto the tree
    (t / "zz-link").symlink_to("sub/deep")  # second way into a folder already walked
    (t / "broken.png").symlink_to("missing.png")  # broken, but looks like an image
    (t / "broken.txt").symlink_to("missing.txt")  # broken and not an image
    return t


TREE_RELS = [
    "B.JPG",
    "a.jpg",
    "broken.png",
    "sub/deep/-dash.png",
    "sub/deep/my photo.png",
    "sub/ünï.webp",
    "x.jpg/inner.png",
]


def test_walk_finds_exact_items_in_sorted_order(tree: Path) -> None:
    found = discover([str(tree)])
    assert rels(found) == TREE_RELS
    assert [item.path for item in found.items] == [tree / r for r in TREE_RELS]
    assert {item.source for item in found.items} == {str(tree)}
    assert found.hidden == 3  # .git, .hidden.jpg, sub/.DS_Store
    assert found.not_images == 3  # c.txt, broken.txt, sub/notes.md
    assert found.problems == []


def test_walk_is_deterministic(tree: Path) -> None:
    assert discover([str(tree)]) == discover([str(tree)])


def test_file_arguments_are_items_whatever_they_are(tmp_path: Path, tree: Path) -> None:
    args = [
        str(tree / "c.txt"),  # explicit non-image
        str(tmp_path / "ghost.png"),  # missing
        str(tmp_path / "ghost"),  # missing, no extension
        str(tree / "broken.png"),  # broken symlink
        str(tree / ".hidden.jpg"),  # hidden, but asked for
    ]
    found = discover(args)
    assert [item.source for item in found.items] == args
    assert [item.path for item in found.items] == [Path(a) for a in args]
    assert rels(found) == ["c.txt", "ghost.png", "ghost", "broken.png", ".hidden.jpg"]
    assert (found.hidden, found.not_images) == (0, 0)


def test_argument_order_kept_and_duplicates_dropped(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree)
    found = discover(["x.jpg", "sub/deep/-dash.png", "./x.jpg/../a.jpg", "a.jpg", "sub/deep"])
    assert [(i.source, str(i.rel)) for i in found.items] == [
        ("x.jpg", "inner.png"),
        ("sub/deep/-dash.png", "-dash.png"),
        ("./x.jpg/../a.jpg", "a.jpg"),
        # "a.jpg" is the same file with the same rel: dropped
        # sub/deep/-dash.png again, same file and same rel: dropped too
        ("sub/deep", "my photo.png"),
    ]


def test_names_with_spaces_unicode_and_leading_dash(tmp_path: Path) -> None:
    names = ["-rf.png", "with space.jpg", "日本語.png", " leading.png"]
    for name in names:
        touch(tmp_path / name)
    found = discover([str(tmp_path / n) for n in names])
    assert rels(found) == names
    assert all(item.path.exists() for item in found.items)


def test_hidden_folder_given_explicitly_is_walked(tree: Path) -> None:
    found = discover([str(tree / ".git")])
    assert rels(found) == ["x.jpg"]


def test_symlink_loop_walks_each_folder_once(tree: Path) -> None:
    """sub/up points back at the tree, sub/self at sub: each real folder is walked once."""
    found = discover([str(tree / "sub")])
    assert rels(found) == [
        "deep/-dash.png",
        "deep/my photo.png",
        "up/B.JPG",
        "up/a.jpg",
        "up/broken.png",
        "up/x.jpg/inner.png",
        "ünï.webp",
    ]
    assert found.hidden == 3  # .DS_Store, up/.git, up/.hidden.jpg
    assert found.not_images == 3  # notes.md, up/broken.txt, up/c.txt


def test_folder_reached_twice_is_walked_once(tree: Path) -> None:
    """zz-link points at sub/deep; walked first through the link, sub/deep is skipped."""
    found = discover([str(tree / "zz-link"), str(tree)])
    assert rels(found) == [
        "-dash.png",
        "my photo.png",
        "B.JPG",
        "a.jpg",
        "broken.png",
        "sub/ünï.webp",
        "x.jpg/inner.png",
    ]
    assert found.items[0].path == tree / "zz-link" / "-dash.png"


def test_symlinked_folder_outside_the_tree_is_followed(tmp_path: Path) -> None:
    touch(tmp_path / "elsewhere" / "pic.png")
    top = tmp_path / "top"
    top.mkdir()
    (top / "link").symlink_to(tmp_path / "elsewhere")
    found = discover([str(top)])
    assert rels(found) == ["link/pic.png"]
    assert found.items[0].path == top / "link" / "pic.png"


def test_stdin_lists_paths(tree: Path) -> None:
    deep = tree / "sub" / "deep"
    lines = f"{tree / 'a.jpg'}\n\n   \n{deep}\r\n{tree / 'ghost.png'}"
    found = discover([str(tree / "B.JPG"), "-"], stdin=io.StringIO(lines))
    assert [(i.source, str(i.rel)) for i in found.items] == [
        (str(tree / "B.JPG"), "B.JPG"),
        (str(tree / "a.jpg"), "a.jpg"),
        (str(deep), "-dash.png"),
        (str(deep), "my photo.png"),
        (str(tree / "ghost.png"), "ghost.png"),
    ]


def test_empty_argument_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="empty string"):
        discover([""])


def test_unlistable_folder_is_reported_and_walk_goes_on(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests run as root, so fake the permission error instead of chmod."""
    real_scandir = os.scandir
    blocked = tree / "sub" / "deep"

    def scandir(path: os.PathLike[str]) -> object:
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = discover([str(tree)])
    assert rels(found) == ["B.JPG", "a.jpg", "broken.png", "sub/ünï.webp", "x.jpg/inner.png"]
    assert [str(p) for p in found.problems] == [
        f"{blocked}: cannot list folder (permission denied)"
    ]
    assert all(type(p) is InputError for p in found.problems)


# --- sharding helpers -------------------------------------------------------------------


def item(path: str, rel: str | None = None, source: str | None = None) -> InputItem:
    p = Path(path)
    return InputItem(path=p, source=source or path, rel=PurePosixPath(rel or p.name))


# --- sharding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("1/3", (1, 3)), (" 2 / 4 ", (2, 4)), ("3/3", (3, 3)), ("1/1", (1, 1))]
)
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/3", "shard number K must be between 1 and N (3); got '0/3'"),
        ("4/3", "shard number K must be between 1 and N (3); got '4/3'"),
        ("1/0", "shard count N must be at least 1; got '1/0'"),
        ("3", "shard must look like K/N, e.g. 1/4; got '3'"),
        ("a/b", "shard must look like K/N, e.g. 1/4; got 'a/b'"),
        ("-1/3", "shard must look like K/N, e.g. 1/4; got '-1/3'"),
        ("1/3/5", "shard must look like K/N, e.g. 1/4; got '1/3/5'"),
        ("", "shard must look like K/N, e.g. 1/4; got ''"),
    ],
)
def test_parse_shard_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_shard(text)
    assert str(info.value) == message


def many_items() -> list[InputItem]:
    return [
        item(f"photos/{d}/img{i}.jpg", f"{d}/img{i}.jpg", "photos")
        for d in ("a", "b", "c")
        for i in range(20)
    ]


def test_shards_partition_the_items() -> None:
    items = many_items()
    parts = [shard(items, k, 3) for k in (1, 2, 3)]
    assert all(parts)  # 60 items over 3 shards: none is empty
    flat = [x for part in parts for x in part]
    assert len(flat) == len(set(flat)) == len(items)
    assert set(flat) == set(items)
    for part in parts:  # each keeps the original order
        assert part == [x for x in items if x in part]
    assert parts == [shard(items, k, 3) for k in (1, 2, 3)]


def test_shard_is_stable_across_runs_and_machines() -> None:
    """Golden values: sha1(source + NUL + rel) mod N, 1-based. Never Python's hash()."""
    a = item("photos/a/b.jpg", "a/b.jpg", "photos")
    b = item("photos/c.png", "c.png", "photos")
    c = item("x.jpg")
    d = item("q.png", "q.png", "-")
    items = [a, b, c, d]
    assert [shard(items, k, 3) for k in (1, 2, 3)] == [[a], [b], [c, d]]
    assert shard(items, 2, 7) == [a]
    assert shard(items, 5, 7) == [b]
    assert shard(items, 7, 7) == [c]
    assert shard(items, 1, 7) == [d]


def test_shard_depends_only_on_the_item() -> None:
    items = many_items()
    few = items[::7]
    for k in (1, 2, 3):
        assert shard(few, k, 3) == [x for x in shard(items, k, 3) if x in few]


def test_single_shard_is_everything_and_bad_k_is_refused() -> None:
    items = many_items()
    assert shard(items, 1, 1) == items
    with pytest.raises(ValueError, match="4/3"):
        shard(items, 4, 3)
