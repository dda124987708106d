"""What a ``vggviz top`` scan keeps on disk: checkpoints, matrix chunks and the fingerprint
that says which options and inputs they belong to.

A scan folder (``top-scan`` or ``top-scan-shard-K-of-N`` in ``-o``) holds
``checkpoint.npz`` (progress, failures and the top-K state of every layer) and
``chunk-000001.npz`` ... (the images-by-channels values of the images scanned between two
checkpoints, float16, with their input numbers). A chunk is written before the checkpoint
that counts it, both atomically, so a kill at any moment leaves a consistent folder: a chunk
not yet counted is simply written again on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vggviz.core import files
from vggviz.top.ranking import TopK

CHECKPOINT = "checkpoint.npz"
SCAN_DIR = "top-scan"
_SHARD_DIR = re.compile(r"top-scan-shard-(\d+)-of-(\d+)")


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
        if match and entry.is_dir():
            found[(int(match.group(1)), int(match.group(2)))] = Path(entry.path)
    return found


@dataclass(frozen=True)
class Fingerprint:
    """The options and the input list a scan was made with, and their digest."""

    options: Mapping[str, Any]
    inputs: str  # sha256 of the whole input list (before sharding)

    @classmethod
    def of(cls, options: Mapping[str, Any], paths: Sequence[str]) -> Fingerprint:
        digest = hashlib.sha256()
        for path in paths:
            digest.update(os.fsencode(path) + b"\0")
        return cls(dict(options), f"{digest.hexdigest()[:16]} ({len(paths)} inputs)")

    @property
    def digest(self) -> str:
        text = json.dumps({"options": self.options, "inputs": self.inputs}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def difference(self, other: Fingerprint) -> str:
        """What changed from ``other`` to this one, in words."""
        changed = [
            f"{key} {other.options.get(key)} -> {self.options.get(key)}"
            for key in sorted(set(self.options) | set(other.options))
            if self.options.get(key) != other.options.get(key)
        ]
        if self.inputs != other.inputs:
            changed.append(f"input list {other.inputs} -> {self.inputs}")
        return ", ".join(changed) or "nothing"


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
        """The checkpoint in ``folder``, or None when there is none (or it is unreadable:
        then the scan starts over, which is always safe)."""
        try:
            with np.load(folder / CHECKPOINT, allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                tops = {alias: TopK.from_arrays(saved, alias) for alias in meta["layers"]}
        except (OSError, ValueError, KeyError):
            return None
        return cls(
            fingerprint=Fingerprint(meta["options"], meta["inputs"]),
            shard=tuple(meta["shard"]) if meta["shard"] else None,
            tops=tops,
            position=meta["position"],
            chunks=meta["chunks"],
            scanned=meta["scanned"],
            complete=meta["complete"],
            failed=meta["failed"],
        )


def clear(folder: Path) -> None:
    """Remove a scan folder's checkpoint and chunks (and what a kill left half-written)."""
    for name in os.listdir(folder) if folder.is_dir() else []:
        if name == CHECKPOINT or name.startswith(("chunk-", ".chunk-", ".checkpoint")):
            (folder / name).unlink(missing_ok=True)


def chunk_path(folder: Path, number: int) -> Path:
    return folder / f"chunk-{number:06d}.npz"


def write_chunk(folder: Path, number: int, rows: np.ndarray, values: dict[str, np.ndarray]):
    """Chunk ``number``: input numbers ``rows`` (n,) and each layer's (n, C) float16 values."""
    with files.atomic_file(chunk_path(folder, number)) as f:
        layers = {alias: v.astype(np.float16) for alias, v in values.items()}
        np.savez(f, rows=rows.astype(np.int64), **layers)


def drop_chunks_after(folder: Path, count: int) -> None:
    """Remove chunks numbered above ``count``: the checkpoint that would count them was
    never written, and the resumed scan writes them again."""
    for path in folder.glob("chunk-*.npz"):
        match = re.fullmatch(r"chunk-(\d+)\.npz", path.name)
        if match and int(match.group(1)) > count:
            path.unlink(missing_ok=True)


def read_chunks(folder: Path, count: int) -> Iterator[dict[str, np.ndarray]]:
    for number in range(1, count + 1):
        with np.load(chunk_path(folder, number), allow_pickle=False) as chunk:
            yield {name: chunk[name] for name in chunk.files}
