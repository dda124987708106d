"""The output folder of a per-image job as a contract: what a run writes where, how a finished
image is recognised, and how runs that share a folder keep out of each other's way.

- **Names.** Each input gets the folder ``-o / <its path below the argument> / <name>``, where
  ``<name>`` is the file name with the dot before its extension turned into ``_``
  (``cat.jpg`` -> ``cat_jpg``, ``cat.png`` -> ``cat_png``, ``README`` -> ``README_``). The
  name depends on the input alone, so adding files never renames a folder. Such a name never
  ends in ``.<extension>``, so it can never be one of the run's own files (``index.html``,
  ``manifest.jsonl``, ``filters-conv1.png``). Names that differ only in case, and the rare
  clash with a folder of the input tree, are told apart by a hash of the input path; of
  names equal but for case, the one already finished in the plain folder keeps it.
- **Completion.** ``record.json`` is written last and holds the input's identity (real path,
  size, mtime) and a fingerprint of every option that shapes the pictures. ``--skip-existing``
  skips a folder only when both match and every listed output is there; anything else is
  redone, and before anything is redrawn the old record goes first.
- **Claims.** A run holds an image folder with ``flock`` on a hidden lock file inside it while
  writing there; the kernel drops the lock if the run dies. A folder another live run holds is
  skipped with that reason. Temporaries are swept only by whoever holds the claim.
- **JSON.** Paths that are not valid UTF-8 are carried losslessly: each undecodable byte is
  the lone surrogate ``\\udcXX`` (Python's ``surrogateescape``; ``os.fsencode`` gives the
  bytes back), written as a ``\\u`` escape, so every file stays valid UTF-8 and valid JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypedDict

from vggviz.core.files import Held, hold, holder
from vggviz.core.text import dumps

FORMAT = 2  # bump when the pictures of the same options change, so old folders are redone

RECORD = "record.json"
LOCK = ".vggviz.lock"
NAME_MAX = 255  # bytes in one path component on every file system we expect


def run_suffix(shard: tuple[int, int] | None, copy: int = 1) -> str:
    """What tells one run's manifest and index from another's in a shared folder: the shard,
    and a number when another live run already writes the same names."""
    suffix = f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return suffix + (f"-{copy}" if copy > 1 else "")


def manifest_name(suffix: str) -> str:
    return f"manifest{suffix}.jsonl"


def index_name(suffix: str) -> str:
    return f"index{suffix}.html"


def owned_files(folder: Path, owns: Callable[[str], bool]) -> Iterator[Path]:
    """Files in an image folder that the job writes (and so may replace or remove): its
    record, and those ``owns`` claims by name."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except OSError:
        return
    for name in names:
        if name == RECORD or owns(name):
            yield folder / name


# --- records -------------------------------------------------------------------------------


class Identity(TypedDict):
    path: str  # the real path, links resolved
    size: int
    mtime_ns: int


class Record(TypedDict, total=False):
    """One input's outcome: ``record.json`` for a finished image, a manifest/--json line
    for every input. ``status`` is ok, error or skipped."""

    input: str
    status: str
    error: str
    reason: str  # why an input was skipped
    folder: str
    size: list[int]
    outputs: list[str]
    identity: Identity
    fingerprint: str
    # and the job's own fields; features: overview, layers, nonfinite


def identity(path: Path) -> Identity:
    st = os.stat(path)
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(options: Mapping[str, Any]) -> str:
    """sha256 of everything that shapes an image's outputs, as canonical JSON."""
    text = dumps({"format": FORMAT, **options}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def finished(folder: Path, print_: str, ident: Identity) -> Record | None:
    """The folder's record when it is a finished image of the same input and options, with
    every output it lists still there; otherwise None (the image must be redone)."""
    try:
        record = json.loads(_read_record(folder / RECORD))
        complete = all(os.path.isfile(p) for p in record.get("outputs", []))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if not isinstance(record, dict) or not complete:
        return None
    if record.get("status") != "ok" or record.get("fingerprint") != print_:
        return None
    return record if record.get("identity") == ident else None  # type: ignore[return-value]


RECORD_MAX = 16 << 20  # bytes: a record of 20 classes is 10 kB, of 13 layers 5 kB


def _read_record(path: Path) -> str:
    """A record's text, read only from a regular file of at most RECORD_MAX bytes: a link,
    a FIFO or ``/dev/zero`` planted in its place would block, or fill the memory. Raises
    OSError or ValueError for anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > RECORD_MAX:
            raise ValueError(f"{path}: not a record")
        return f.read(RECORD_MAX + 1).decode("utf-8")


# --- claims --------------------------------------------------------------------------------


class Claim:
    """Exclusive hold on an image folder for as long as this run writes into it."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self._fd: int | None = fd

    def release(self, remove_folder: bool = False) -> None:
        """Drop the hold; the lock file goes (we hold it, so nobody else can be using it), and
        with ``remove_folder`` the folder too if nothing else is left in it."""
        if self._fd is None:
            return
        try:
            _unlink(self.folder / LOCK)
            if remove_folder:
                # not empty: someone else's files, or a file we did not write
                with contextlib.suppress(OSError):
                    self.folder.rmdir()
        finally:
            os.close(self._fd)
            self._fd = None


def claim(folder: Path) -> Claim:
    """Create ``folder`` if needed and hold it. Raises :class:`Held` when another live run
    does, OSError when the folder cannot be made or locked. On a file system without locks
    the claim is granted unguarded (see ``locks_supported``)."""
    made = not folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return Claim(folder, hold(folder / LOCK))
    except BaseException:
        if made:  # leave no empty folder behind for an image that was never started
            with contextlib.suppress(OSError):
                _unlink(folder / LOCK)
                folder.rmdir()
        raise


class RunClaim:
    """The names of one run's manifest and index in a shared folder, held for the run."""

    def __init__(self, out_dir: Path, suffix: str, fd: int) -> None:
        self.out_dir, self.suffix, self._fd = out_dir, suffix, fd

    def release(self) -> None:
        if self._fd is not None:
            _unlink(self.out_dir / _run_lock(self.suffix))
            os.close(self._fd)
            self._fd = None


class OtherOptions(Exception):
    """A live run writes into the folder with other options (another fingerprint)."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


def claim_run(out_dir: Path, shard: tuple[int, int] | None, fingerprint: str = "") -> RunClaim:
    """Hold the first free run suffix: ``""`` (or the shard's), else ``-2``, ``-3``, ... when
    other live runs already write ``manifest.jsonl`` and ``index.html`` into ``out_dir``.

    Runs at once share a folder only with the same options: a live run whose ``fingerprint``
    differs raises :class:`OtherOptions` (its pid), since each would redo the other's images
    and its manifest would list pictures the other replaced. The check and the claim are one
    step (under ``.vggviz-runs.lock``), so two runs starting together cannot both pass."""
    with _runs_mutex(out_dir):
        for lock in sorted(out_dir.glob(_run_lock("*"))):
            held = holder(lock)
            if held is not None and held[1] != fingerprint:
                raise OtherOptions(held[0])
        for copy in itertools.count(1):
            suffix = run_suffix(shard, copy)
            try:
                fd = hold(out_dir / _run_lock(suffix))
            except Held:
                continue
            with contextlib.suppress(OSError):  # after the pid: what the run is made of
                os.write(fd, f"{fingerprint}\n".encode())
            return RunClaim(out_dir, suffix, fd)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _runs_mutex(out_dir: Path) -> Iterator[None]:
    """Runs starting in ``out_dir`` one at a time, for the few milliseconds of a run claim;
    a holder that does not let go within 10 s (stopped with SIGSTOP) is waited for no more."""
    lock = out_dir / ".vggviz-starting.lock"  # not a run lock: _run_lock("*") must miss it
    fd = None
    deadline = time.monotonic() + 10
    while fd is None and time.monotonic() < deadline:
        try:
            fd = hold(lock)
        except Held:
            time.sleep(0.005)
    try:
        yield
    finally:
        if fd is not None:
            _unlink(lock)  # ours while we hold it; hold() retries if it goes under another
            os.close(fd)


def _run_lock(suffix: str) -> str:
    return f".vggviz-run{suffix}.lock"


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# --- folder names --------------------------------------------------------------------------


class Input(Protocol):
    path: Path  # as given, for the hash that separates names equal but for case
    rel: PurePosixPath  # below the folder argument it was found in


def output_dirs(items: Sequence[Input], out_dir: Path) -> list[Path]:
    """One distinct folder per input, always inside ``out_dir`` (see the module's rules).

    Computed from the whole list and what ``out_dir`` already holds, so call it before
    sharding: every shard then agrees. Of inputs whose names differ only in case, the one
    whose finished record is in the plain folder keeps it (two, on a file system that tells
    them apart), and the others are told apart by a hash; with no such record, the first by
    path keeps it.
    """
    paths = [str(item.path) for item in items]
    wanted = [_folder_parts(item.rel) for item in items]
    ancestors = {_key(w[:i]) for w in wanted for i in range(1, len(w))}
    by_key: dict[str, list[int]] = {}
    for i, w in enumerate(wanted):
        by_key.setdefault(_key(w), []).append(i)
    chosen: dict[int, tuple[str, ...]] = {}
    used = set(ancestors)
    renamed: list[int] = []
    for key, members in by_key.items():
        members.sort(key=lambda i: (os.fsencode(paths[i]), i))
        if key in ancestors:
            renamed.extend(members)  # a folder of the input tree has this name
            continue
        # the plain name stays with the input(s) whose finished record is already there, so
        # that adding CAT.jpg never moves a finished cat.jpg; else the first by path
        keepers = members[:1]
        if len(members) > 1:  # rare: records are read for these alone
            found = [i for i in members if _finished_for(out_dir.joinpath(*wanted[i]), paths[i])]
            keepers = found or keepers
        for i in keepers:
            chosen[i] = wanted[i]
        used.add(key)
        renamed.extend(i for i in members if i not in keepers)
    renamed.sort(key=lambda i: (os.fsencode(paths[i]), i))
    for i in renamed:
        *parent, name = wanted[i]
        digest = hashlib.sha1(os.fsencode(paths[i])).hexdigest()[:8]
        for n in itertools.count(1):
            candidate = _fit(name, f"_{digest}" + (f"_{n}" if n > 1 else ""))
            if _key((*parent, candidate)) not in used:
                break
        chosen[i] = (*parent, candidate)
        used.add(_key(chosen[i]))
    return [out_dir.joinpath(*chosen[i]) for i in range(len(items))]


def _finished_for(folder: Path, path: str) -> bool:
    """Whether ``folder`` holds a record of the input at ``path`` (by its real path): that
    input's folder from an earlier run, which must stay its folder."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        return record["identity"]["path"] == os.path.realpath(path)
    except (OSError, ValueError, TypeError, KeyError):
        return False


def folder_name(file_name: str) -> str:
    """``cat.jpg`` -> ``cat_jpg``; ``README`` -> ``README_``; a leading dot becomes ``_``."""
    stem, dot, ext = file_name.rpartition(".")
    name = f"{stem}_{ext}" if dot and stem else f"{file_name}_"
    return "_" + name[1:] if name.startswith(".") else name


def _folder_parts(rel: PurePosixPath) -> tuple[str, ...]:
    """Parts of ``rel`` that stay inside the output folder, the last one made a folder name.
    A top-level folder of the input tree named like a run file gets a trailing ``_``."""
    parts = [p for p in rel.parts if p not in ("", ".", "..") and "/" not in p] or ["_"]
    *parents, leaf = parts
    if parents and re.search(r"\.(html|jsonl|json|png)$", parents[0], re.IGNORECASE):
        parents[0] += "_"
    parents = ["_" + p[1:] if p.startswith(".") else p for p in parents]
    return (*parents, _fit(folder_name(leaf), ""))


def _fit(name: str, suffix: str) -> str:
    """``name + suffix`` cut so that it stays within NAME_MAX bytes."""
    while len(os.fsencode(name + suffix)) > NAME_MAX and name:
        name = name[:-1]
    return name + suffix


def _key(parts: Sequence[str]) -> str:
    return "/".join(parts).casefold()
