"""The bookkeeping of ``vggviz top`` in numpy only: a running top-K per channel, and
per-channel statistics streamed from the images-by-channels matrix.

The top-K order is total: value descending, then input number ascending (ties go to the
earlier input). Merging is therefore associative and commutative, so shards merged in any
grouping give exactly the state of one run over all inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NO_INPUT = np.iinfo(np.int64).max  # an empty slot: sorts after every real input
HISTOGRAM_BINS = 16


@dataclass
class TopK:
    """The K best inputs of every channel of one layer, best first.

    ``values`` (C, K) float32, ``inputs`` (C, K) int64 input numbers (``NO_INPUT`` in empty
    slots, whose value is -inf), ``locations`` (C, K) int64 flat index of the winning unit.
    """

    values: np.ndarray
    inputs: np.ndarray
    locations: np.ndarray

    @classmethod
    def empty(cls, channels: int, k: int) -> TopK:
        return cls(
            np.full((channels, k), -np.inf, np.float32),
            np.full((channels, k), NO_INPUT, np.int64),
            np.zeros((channels, k), np.int64),
        )

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def add(self, values: np.ndarray, inputs: np.ndarray, locations: np.ndarray) -> None:
        """Fold in a batch: ``values`` and ``locations`` (B, C), ``inputs`` (B,)."""
        batch = values.shape[0]
        self._keep(
            values.T.astype(np.float32),
            np.broadcast_to(inputs.astype(np.int64)[None, :], (values.shape[1], batch)),
            locations.T.astype(np.int64),
        )

    def merge(self, other: TopK) -> None:
        if other.values.shape != self.values.shape:
            raise ValueError(f"top-K shapes differ: {other.values.shape} vs {self.values.shape}")
        self._keep(other.values, other.inputs, other.locations)

    def _keep(self, values: np.ndarray, inputs: np.ndarray, locations: np.ndarray) -> None:
        v = np.concatenate([self.values, values], axis=1)
        i = np.concatenate([self.inputs, inputs], axis=1)
        loc = np.concatenate([self.locations, locations], axis=1)
        # NaN (broken weights) sorts as the smallest value: after every real number
        key = np.where(np.isnan(v), np.inf, -v.astype(np.float64))
        order = np.lexsort((i, key), axis=1)[:, : self.k]
        self.values = np.take_along_axis(v, order, axis=1)
        self.inputs = np.take_along_axis(i, order, axis=1)
        self.locations = np.take_along_axis(loc, order, axis=1)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.values": self.values,
            f"{prefix}.inputs": self.inputs,
            f"{prefix}.locations": self.locations,
        }

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> TopK:
        return cls(
            np.asarray(arrays[f"{prefix}.values"], np.float32),
            np.asarray(arrays[f"{prefix}.inputs"], np.int64),
            np.asarray(arrays[f"{prefix}.locations"], np.int64),
        )


@dataclass
class ChannelStats:
    """Per channel over all images: share with value <= 0, mean, and a 16-bin histogram."""

    dead_fraction: np.ndarray  # (C,)
    mean: np.ndarray  # (C,)
    edges: np.ndarray  # (C, 17)
    counts: np.ndarray  # (C, 16)


def channel_stats(matrix: np.ndarray, block_rows: int = 4096) -> ChannelStats:
    """Statistics of an (images, channels) matrix, read ``block_rows`` rows at a time (a
    memory-mapped ``.npy`` works: memory stays flat however many images).

    Two passes: the first finds each channel's range, count of values <= 0 and sum (float64,
    block by block in row order, so the same matrix always gives the same bits); the second
    counts the histogram over [min, max] of each channel.
    """
    rows, channels = matrix.shape
    if rows == 0:
        raise ValueError("no images in the matrix")
    dead = np.zeros(channels, np.int64)
    total = np.zeros(channels, np.float64)
    lo = np.full(channels, np.inf)
    hi = np.full(channels, -np.inf)
    for start in range(0, rows, block_rows):
        block = np.asarray(matrix[start : start + block_rows], dtype=np.float64)
        dead += np.count_nonzero(block <= 0, axis=0)
        total += block.sum(axis=0)
        lo = np.minimum(lo, block.min(axis=0))
        hi = np.maximum(hi, block.max(axis=0))
    span = np.where(hi > lo, hi - lo, 1.0)
    edges = lo[:, None] + span[:, None] * np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)[None, :]
    counts = np.zeros(channels * HISTOGRAM_BINS, np.int64)
    offsets = np.arange(channels) * HISTOGRAM_BINS
    for start in range(0, rows, block_rows):
        block = np.asarray(matrix[start : start + block_rows], dtype=np.float64)
        bins = np.floor((block - lo) / span * HISTOGRAM_BINS).astype(np.int64)
        bins = np.clip(bins, 0, HISTOGRAM_BINS - 1)  # the maximum falls in the last bin
        counts += np.bincount((bins + offsets).ravel(), minlength=channels * HISTOGRAM_BINS)
    return ChannelStats(
        dead_fraction=dead / rows,
        mean=total / rows,
        edges=edges,
        counts=counts.reshape(channels, HISTOGRAM_BINS),
    )
