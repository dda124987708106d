"""What a ``vggviz top`` scan keeps on disk: checkpoints, matrix chunks, the list of inputs,
and the fingerprint that says which options and inputs they belong to.

A scan folder (``top-scan`` or ``top-scan-shard-K-of-N`` in ``-o``) holds
``checkpoint.npz`` (progress, failures and the top-K state of every layer), ``inputs.json``
(every input by path, size and mtime, for saying what changed) and ``chunk-000001.npz`` ...
(the images-by-channels values of the images scanned between two checkpoints, float16, with
their input numbers). A chunk is written before the checkpoint that counts it, both
atomically, so a kill at any moment leaves a consistent folder: a chunk not yet counted is
simply written again on resume. Files that are not what a scan writes (truncated,
overwritten, edited) are :class:`Unreadable`: the scan starts over, which is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vggviz.core import files
from vggviz.core.text import few
from vggviz.top.ranking import NO_INPUT, TopK

CHECKPOINT = "checkpoint.npz"
INPUTS = "inputs.json"
SCAN_DIR = "top-scan"
_SHARD_DIR = re.compile(r"top-scan-shard-(\d+)-of-(\d+)")

Entry = list[Any]  # an input: [path as given, real path, size, mtime_ns], or [path] unreadable


class Unreadable(Exception):
    """A scan folder's files are not what a scan writes; the message says what is wrong."""


def scan_dir(out_dir: Path, shard: tuple[int, int] | None) -> Path:
    return out_dir / (f"{SCAN_DIR}-shard-{shard[0]}-of-{shard[1]}" if shard else SCAN_DIR)


def shard_dirs(out_dir: Path) -> dict[tuple[int, int], Path]:
    """The shard scan folders in ``out_dir``, by (K, N)."""
    found: dict[tuple[int, int], Path] = {}
    try:
        entries = sorted(os.scandir(out_dir), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        match = _SHARD_DIR.fullmatch(entry.name)
        if match and entry.is_dir(follow_symlinks=False):
            found[(int(match.group(1)), int(match.group(2)))] = Path(entry.path)
    return found


@dataclass(frozen=True)
class Fingerprint:
    """The options and the inputs (each by path, size and mtime) a scan was made with, and
    their digest."""

    options: Mapping[str, Any]
    inputs: str  # sha256 of the whole input list (before sharding)

    @classmethod
    def of(cls, options: Mapping[str, Any], entries: Sequence[Entry]) -> Fingerprint:
        digest = hashlib.sha256()
        for entry in entries:
            digest.update(os.fsencode(json.dumps(entry)) + b"\0")
        return cls(dict(options), f"{digest.hexdigest()[:16]} ({len(entries)} inputs)")

    @property
    def digest(self) -> str:
        text = json.dumps({"options": self.options, "inputs": self.inputs}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def difference(self, other: Fingerprint) -> str:
        """What changed in the options from ``other`` to this one, in words ("" if nothing)."""
        changed = [
            f"{key} {other.options.get(key)} -> {self.options.get(key)}"
            for key in sorted(set(self.options) | set(other.options))
            if self.options.get(key) != other.options.get(key)
        ]
        return ", ".join(changed)


def changed_inputs(before: Sequence[Entry] | None, now: Sequence[Entry]) -> str:
    """Which inputs differ between two lists, in words: ``p3.png changed, p9.png added``."""
    if before is None:
        return "the input list"
    old = {entry[0]: entry for entry in before}
    new = {entry[0]: entry for entry in now}
    parts = []
    for word, names in (
        ("changed", [n for n in new if n in old and new[n] != old[n]]),
        ("removed", [n for n in old if n not in new]),
        ("added", [n for n in new if n not in old]),
    ):
        if names:
            parts.append(f"{few([Path(n).name for n in names])} {word}")
    return ", ".join(parts) or "their order"


def write_inputs(folder: Path, entries: Sequence[Entry]) -> None:
    files.save_json(list(entries), folder / INPUTS)


def read_inputs(folder: Path) -> list[Entry] | None:
    try:
        entries = json.loads((folder / INPUTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return entries if isinstance(entries, list) else None


@dataclass
class ScanState:
    """Where a scan stands: the next work item, the chunks written, failures, top-K."""

    fingerprint: Fingerprint
    shard: tuple[int, int] | None
    tops: dict[str, TopK]
    position: int = 0
    chunks: int = 0
    scanned: int = 0
    complete: bool = False
    failed: list[str] = field(default_factory=list)

    def save(self, folder: Path) -> None:
        meta = {
            "options": self.fingerprint.options,
            "inputs": self.fingerprint.inputs,
            "shard": self.shard,
            "position": self.position,
            "chunks": self.chunks,
            "scanned": self.scanned,
            "complete": self.complete,
            "failed": self.failed,
            "layers": list(self.tops),
        }
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        for alias, top in self.tops.items():
            arrays.update(top.arrays(alias))
        with files.atomic_file(folder / CHECKPOINT) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, folder: Path) -> ScanState | None:
        """The checkpoint in ``folder``, or None when there is none. Raises :class:`Unreadable`
        when there is one that is not what a scan writes."""
        path = folder / CHECKPOINT
        if not path.exists():
            return None
        try:
            with open_npz(path) as saved:
                meta = json.loads(str(saved["meta"]))
                tops = {alias: TopK.from_arrays(saved, alias) for alias in meta["layers"]}
            state = cls(
                fingerprint=Fingerprint(meta["options"], meta["inputs"]),
                shard=tuple(meta["shard"]) if meta["shard"] else None,
                tops=tops,
                position=meta["position"],
                chunks=meta["chunks"],
                scanned=meta["scanned"],
                complete=meta["complete"],
                failed=meta["failed"],
            )
        # whatever a damaged file raises (BadZipFile, ValueError, KeyError, TypeError, ...)
        except Exception as err:
            raise Unreadable(f"{CHECKPOINT}: {_why(err)}") from None
        return state

    def check(self, folder: Path, work: int, inputs: int, channels: Mapping[str, int]) -> None:
        """Refuse (:class:`Unreadable`) a state that no scan of ``work`` inputs (of ``inputs``
        in all) over layers of ``channels`` could have written, and chunks that are not the
        ones it counts: numbers out of range never reach the outputs."""
        counts = (self.position, self.chunks, self.scanned)
        if not all(type(n) is int and n >= 0 for n in counts) or not isinstance(self.failed, list):
            raise Unreadable(f"{CHECKPOINT}: progress is not counts")
        if self.position > work or self.scanned + len(self.failed) != self.position:
            raise Unreadable(f"{CHECKPOINT}: its progress does not add up over {work} inputs")
        if {alias: top.values.shape[0] for alias, top in self.tops.items()} != dict(channels):
            raise Unreadable(f"{CHECKPOINT}: its layers are not this scan's")
        for alias, top in self.tops.items():
            used = top.inputs[top.inputs != NO_INPUT]
            shapes = {top.values.shape, top.inputs.shape, top.locations.shape}
            if len(shapes) != 1 or (used.size and (used.min() < 0 or used.max() >= inputs)):
                raise Unreadable(f"{CHECKPOINT}: {alias}'s top-K is not one of these inputs")
        rows = 0
        for number in range(1, self.chunks + 1):
            rows += _chunk_rows(chunk_path(folder, number), channels)
        if rows != self.scanned:
            raise Unreadable(f"the chunks hold {rows} inputs, the checkpoint {self.scanned}")


def _chunk_rows(path: Path, channels: Mapping[str, int]) -> int:
    """Rows of a chunk, checked from its arrays' headers (a damaged chunk is Unreadable)."""
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for name in ("rows", *channels):
                with archive.open(f"{name}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    header = (
                        np.lib.format.read_array_header_1_0(f)
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0(f)
                    )
                    shapes[name] = header[0]
    except Exception as err:  # whatever a damaged file raises
        raise Unreadable(f"{path.name}: {_why(err)}") from None
    n = shapes["rows"][0] if len(shapes["rows"]) == 1 else -1
    if any(shapes[alias] != (n, c) for alias, c in channels.items()):
        raise Unreadable(f"{path.name}: its arrays are not this scan's")
    return n


@contextmanager
def open_npz(path: Path) -> Iterator[Any]:
    """``np.load`` of an ``.npz`` that closes the file whatever happens: numpy's own leaves it
    open when the file is not a whole zip."""
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as archive:
        yield archive


def _why(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError):
        return "missing"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def clear(folder: Path) -> None:
    """Remove a scan folder's checkpoint, input list and chunks (and what a kill left
    half-written)."""
    for name in os.listdir(folder) if folder.is_dir() else []:
        if name in (CHECKPOINT, INPUTS) or name.startswith(("chunk-", ".chunk-", ".checkpoint")):
            (folder / name).unlink(missing_ok=True)


def chunk_path(folder: Path, number: int) -> Path:
    return folder / f"chunk-{number:06d}.npz"


def write_chunk(folder: Path, number: int, rows: np.ndarray, values: dict[str, np.ndarray]):
    """Chunk ``number``: input numbers ``rows`` (n,) and each layer's (n, C) float16 values."""
    with files.atomic_file(chunk_path(folder, number)) as f:
        layers = {alias: to_float16(v) for alias, v in values.items()}
        np.savez(f, rows=rows.astype(np.int64), **layers)


def to_float16(values: np.ndarray) -> np.ndarray:
    """float16, clamped to its range (65,504): a larger activation would become inf, and no
    statistic or JSON file can hold that."""
    top = float(np.finfo(np.float16).max)
    return np.clip(values, -top, top).astype(np.float16)


def drop_chunks_after(folder: Path, count: int) -> None:
    """Remove chunks numbered above ``count``: the checkpoint that would count them was
    never written, and the resumed scan writes them again."""
    for path in folder.glob("chunk-*.npz"):
        match = re.fullmatch(r"chunk-(\d+)\.npz", path.name)
        if match and int(match.group(1)) > count:
            path.unlink(missing_ok=True)


def read_chunks(folder: Path, count: int) -> Iterator[dict[str, np.ndarray]]:
    for number in range(1, count + 1):
        with open_npz(chunk_path(folder, number)) as chunk:
            yield {name: chunk[name] for name in chunk.files}
