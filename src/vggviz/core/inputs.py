"""Finding input images, splitting them into shards, and grouping them into batches.

Everything here is deterministic across machines and Python runs (sorted walks, sha1 rather
than ``hash()``), so several machines given the same command line agree on who does what
and where it goes.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

from vggviz.core.errors import InputError, UsageError, VggvizError
from vggviz.core.images import IMAGE_EXTENSIONS
from vggviz.core.text import list_reason
from vggviz.core.values import parse_shard  # noqa: F401 (part of this module's interface)


@dataclass(frozen=True)
class InputItem:
    """One image to process.

    ``rel`` is the path relative to the folder argument it was found in (for a file
    argument, just its name); it decides the output folder and the shard.
    """

    path: Path
    source: str
    rel: PurePosixPath


@dataclass
class Discovery:
    """What :func:`discover` found, plus counts of what it passed over, for the summary."""

    items: list[InputItem]
    hidden: int
    not_images: int
    problems: list[InputError] = field(default_factory=list)
    """Folders that could not be listed while walking (the rest of the walk goes on)."""


def discover(
    args: Sequence[str], stdin: BinaryIO | None = None, exclude: Path | None = None
) -> Discovery:
    """Expand file and folder arguments into image items, in argument order.

    A file argument is always an item, whatever its name and even if missing, because the
    user asked for it; the loader reports problems later. ``"-"`` reads paths from ``stdin``
    (``sys.stdin``'s bytes when None): one per line, or NUL-separated when the list holds a
    NUL (``find -print0``); blank lines are skipped. Folders are walked recursively in name
    order, following symlinks but walking each folder only once, and skipping hidden entries,
    files without an image extension (counted, not silent) and the folder ``exclude`` (the
    run's own output folder, whose pictures must never become inputs).
    """
    found = Discovery(items=[], hidden=0, not_images=0)
    seen_items: set[tuple[str, PurePosixPath]] = set()
    seen_dirs: set[tuple[int, int]] = set()
    if exclude is not None:
        try:
            st = exclude.stat()
            seen_dirs.add((st.st_dev, st.st_ino))  # as if already walked
        except OSError:
            pass

    def add(path: Path, source: str, rel: PurePosixPath) -> None:
        key = (os.path.realpath(path), rel)
        if key not in seen_items:
            seen_items.add(key)
            found.items.append(InputItem(path=path, source=source, rel=rel))

    for arg in args:
        for name in _stdin_lines(stdin) if arg == "-" else [arg]:
            if name == "":
                raise UsageError("an empty string is not a file or folder name")
            path = Path(name)
            if _is_dir(path):
                if exclude is not None and _within(path, exclude):
                    raise UsageError(
                        f"{name}: is the output folder or inside it; vggviz never reads its own "
                        "outputs (write them elsewhere)"
                    )
                _walk(path, name, found, add, seen_dirs)
            else:
                add(path, name, PurePosixPath(path.name))
    return found


def find_images(
    args: Sequence[str], stdin: BinaryIO | None = None, exclude: Path | None = None
) -> Discovery:
    """:func:`discover`, refusing a run with nothing to do: no images and no folder that
    could not be listed is an error naming what was passed over."""
    found = discover(args, stdin=stdin, exclude=exclude)
    if not found.items and not found.problems:
        passed = f" (passed over {found.hidden} hidden and {found.not_images} non-image file(s))"
        raise VggvizError(f"no images found in {' '.join(args)}" + passed)
    return found


def passed_over(found: Discovery) -> str | None:
    """The summary line of what a walk skipped, or None when it skipped nothing."""
    if not (found.hidden or found.not_images):
        return None
    return f"passed over {found.hidden} hidden and {found.not_images} non-image file(s)"


def _stdin_lines(stream: BinaryIO | None) -> list[str]:
    """Paths from a list, one per line, or NUL-separated if the list holds a NUL (no path can
    contain one). Only line endings are stripped (spaces are legal); bytes that are not UTF-8
    are kept as the OS would (``os.fsdecode``). ``stream`` None: standard input, which is
    touched only here (a process may run without one)."""
    if stream is None:
        if sys.stdin is None:
            raise UsageError("- reads paths from standard input, but it is closed")
        stream = sys.stdin.buffer
    data = stream.read()
    if isinstance(data, str):
        data = os.fsencode(data)
    if b"\0" in data:
        names = data.split(b"\0")
    else:
        names = [line.rstrip(b"\r") for line in data.split(b"\n")]
    return [os.fsdecode(name) for name in names if name.strip()]


def _walk(
    top: Path,
    source: str,
    found: Discovery,
    add: Callable[[Path, str, PurePosixPath], None],
    seen_dirs: set[tuple[int, int]],
) -> None:
    """Depth-first walk in sorted name order, iterative so deep trees cannot overflow."""
    stack: list[Iterator[tuple[Path, PurePosixPath]]] = []

    def enter(folder: Path, rel: PurePosixPath) -> None:
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                return  # a symlink loop or a second link to a folder already walked
            seen_dirs.add(key)
            with os.scandir(folder) as it:
                names = sorted(entry.name for entry in it)
        except OSError as exc:
            found.problems.append(InputError(folder, list_reason(exc)))
            return
        stack.append(iter([(folder / n, rel / n) for n in names]))

    enter(top, PurePosixPath())
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            continue
        path, rel = nxt
        if path.name.startswith("."):
            found.hidden += 1
        elif _is_dir(path):  # the output folder is among the folders already seen
            enter(path, rel)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            add(path, source, rel)  # broken symlinks too, so the user hears about them
        else:
            found.not_images += 1


def _within(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _fs_bytes(text: str) -> bytes:
    """Encode a path string as the OS would, so undecodable names still hash."""
    return os.fsencode(text)


def shard(items: Sequence[InputItem], k: int, n: int) -> list[InputItem]:
    """The items that shard ``k`` of ``n`` (1-based) processes, in their original order.

    Membership is sha1 of the source argument and ``rel`` modulo ``n``: stable across
    machines and runs, and independent of which other items exist, so machines that
    see slightly different listings still split the common files consistently.
    """
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: need 1 <= k <= n")
    return [item for item in items if _shard_of(item, n) == k - 1]


def _shard_of(item: InputItem, n: int) -> int:
    digest = hashlib.sha1(_fs_bytes(item.source) + b"\0" + _fs_bytes(str(item.rel)))
    return int(digest.hexdigest(), 16) % n


T = TypeVar("T")


def batch_by_shape(
    stream: Iterable[T], size: int, shape: Callable[[T], Hashable | None]
) -> Iterator[tuple[list[T], list[T]]]:
    """``stream`` grouped into batches of up to ``size`` items of one shape, in order: what one
    forward pass of every job takes (a batch must be one tensor).

    ``shape(item)`` is the item's shape, or None for an item that is not batched (an input
    that failed, one skipped): it flushes the batch in progress and comes right after it.
    Yields (batch, passed): items of one shape (maybe none), then the unbatched items that
    followed them. Every item comes out exactly once, in input order.
    """
    batch: list[T] = []
    for item in stream:
        key = shape(item)
        if key is None:
            yield batch, [item]
            batch = []
            continue
        if batch and (len(batch) >= size or shape(batch[0]) != key):
            yield batch, []
            batch = []
        batch.append(item)
    if batch:
        yield batch, []
