"""Finding input images, naming their output folders, and splitting work into shards.

Everything here is deterministic across machines and Python runs (sorted walks, sha1 rather
than ``hash()``), so several machines given the same command line agree on who does what
and where it goes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TextIO

from vggviz.errors import InputError, UsageError
from vggviz.images import IMAGE_EXTENSIONS
from vggviz.options import parse_shard  # noqa: F401 (part of this module's interface)


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


def discover(args: Sequence[str], stdin: TextIO | None = None) -> Discovery:
    """Expand file and folder arguments into image items, in argument order.

    A file argument is always an item, whatever its name and even if missing, because the
    user asked for it; the loader reports problems later. ``"-"`` reads one path per line
    from ``stdin`` (``sys.stdin`` when None); blank lines are skipped. Folders are walked
    recursively in name order, following symlinks but walking each folder only once, and
    skipping hidden entries and files without an image extension (counted, not silent).
    """
    found = Discovery(items=[], hidden=0, not_images=0)
    seen_items: set[tuple[str, PurePosixPath]] = set()
    seen_dirs: set[tuple[int, int]] = set()

    def add(path: Path, source: str, rel: PurePosixPath) -> None:
        key = (os.path.realpath(path), rel)
        if key not in seen_items:
            seen_items.add(key)
            found.items.append(InputItem(path=path, source=source, rel=rel))

    stream = sys.stdin if stdin is None else stdin
    for arg in args:
        for name in _stdin_lines(stream) if arg == "-" else [arg]:
            if name == "":
                raise UsageError("an empty string is not a file or folder name")
            path = Path(name)
            if _is_dir(path):
                _walk(path, name, found, add, seen_dirs)
            else:
                add(path, name, PurePosixPath(path.name))
    return found


def _stdin_lines(stream: TextIO) -> list[str]:
    """Paths from a list, one per line; only the line ending is stripped (spaces are legal)."""
    lines = (line.rstrip("\r\n") for line in stream)
    return [line for line in lines if line.strip()]


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
            found.problems.append(InputError(folder, _folder_reason(exc)))
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
        elif _is_dir(path):
            enter(path, rel)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            add(path, source, rel)  # broken symlinks too, so the user hears about them
        else:
            found.not_images += 1


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _folder_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "cannot list folder (permission denied)"
    return f"cannot list folder ({(exc.strerror or 'unknown error').lower()})"


def _fs_bytes(text: str) -> bytes:
    """Encode a path string as the OS would, so undecodable names still hash."""
    return os.fsencode(text)


def _sha1_hex(text: str) -> str:
    return hashlib.sha1(_fs_bytes(text)).hexdigest()


def output_dirs(items: Sequence[InputItem], out_dir: Path) -> list[Path]:
    """One distinct output folder per item, always inside ``out_dir``.

    The folder is ``out_dir / rel.parent / rel.stem`` with ``..``, ``.`` and absolute parts
    dropped. Items that would share a folder are sorted by path: the first keeps ``stem``,
    the others get ``stem_ext``, then ``stem_ext_<sha1 of path, 8 hex>``. A folder that
    would also be the parent of another item's folder is renamed the same way. Names are
    compared case-insensitively, for case-insensitive file systems. Computed from the whole
    list, so call it before sharding and every shard agrees.
    """
    parts = [_safe_parts(item.rel) for item in items]
    wanted = [(*p[:-1], _stem(p[-1])) for p in parts]
    ancestors = {_key(w[:i]) for w in wanted for i in range(1, len(w))}

    by_key: dict[str, list[int]] = {}
    for i, w in enumerate(wanted):
        by_key.setdefault(_key(w), []).append(i)

    chosen: dict[int, tuple[str, ...]] = {}
    used = set(ancestors)
    renamed: list[int] = []
    for key, members in by_key.items():
        members.sort(key=lambda i: (str(items[i].path), i))
        if key in ancestors:
            renamed.extend(members)
        else:
            chosen[members[0]] = wanted[members[0]]
            used.add(key)
            renamed.extend(members[1:])

    renamed.sort(key=lambda i: (str(items[i].path), i))
    for i in renamed:
        *parent, stem = wanted[i]
        ext = PurePosixPath(parts[i][-1]).suffix[1:]
        digest = _sha1_hex(str(items[i].path))[:8]
        name = next(c for c in _alternatives(stem, ext, digest) if _key((*parent, c)) not in used)
        chosen[i] = (*parent, name)
        used.add(_key(chosen[i]))

    return [out_dir.joinpath(*chosen[i]) for i in range(len(items))]


def _alternatives(stem: str, ext: str, digest: str) -> Iterator[str]:
    """Folder names to try, in order, for an item that lost its first choice."""
    base = f"{stem}_{ext}" if ext else stem
    if ext:
        yield base
    yield f"{base}_{digest}"
    for n in itertools.count(2):  # only if sha1 prefixes collide too
        yield f"{base}_{digest}_{n}"


def _safe_parts(rel: PurePosixPath) -> tuple[str, ...]:
    """Drop parts that could climb out of the output folder; never return nothing."""
    kept = tuple(p for p in rel.parts if p not in ("", ".", "..") and "/" not in p)
    return kept or ("_",)


def _stem(name: str) -> str:
    """File name without its extension, made safe to use as a folder name."""
    stem = PurePosixPath(name).stem
    if stem.strip("."):
        return stem
    return stem.replace(".", "_") or "_"  # "", "." and ".." would not be a folder of its own


def _key(parts: Sequence[str]) -> str:
    return "/".join(parts).casefold()


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
