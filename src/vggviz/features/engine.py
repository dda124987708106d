"""The engine of the ``features`` job: (input, folder) pairs in, finished image folders and one
record per input out, with flat memory however many inputs there are.

The main thread decodes images and runs the network; one drawing thread draws an image's
pictures while the next is computed, and two encoder threads deflate the PNGs (zlib releases
the GIL). A stop (Ctrl-C, SIGTERM, a full disk) is a flag polled between layers and between
images, never an exception thrown into the middle of a step: whatever is under way is either
finished or removed, and every record already made is delivered.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vggviz.core import drawing, files, folders, images, inputs, memory, values
from vggviz.core.errors import InputError
from vggviz.core.folders import Record
from vggviz.core.inputs import InputItem
from vggviz.core.text import display, write_error
from vggviz.features import pictures
from vggviz.model.hooks import chain_maps, network_maps
from vggviz.model.layers import ConvLayer
from vggviz.model.loading import LoadedModel

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Job:
    """Everything about a run except the model and the inputs."""

    mode: str = "network"
    stage: str = "relu"
    size: int = 224
    normalize: bool = True
    style: pictures.Style = field(default_factory=pictures.Style)
    save_raw: bool = False
    overview: bool = True
    batch_size: int = 1
    skip_existing: bool = False
    fingerprint: str = ""  # of everything above that shapes the outputs (folders.fingerprint)


class Stopped(Exception):
    """Raised from a hook to leave the forward pass early when a stop was asked for."""


class ImageOutput:
    """One image's outputs, filled layer by layer on the drawing thread while this run holds
    the image's folder; PNG encoding runs on the ``encoder`` threads."""

    def __init__(
        self,
        item: InputItem,
        claim: folders.Claim,
        photo: np.ndarray,
        ident: folders.Identity,
        loaded: LoadedModel,
        job: Job,
        encoder: Executor,
        on_disk_full: Callable[[str], None],
    ) -> None:
        self.item, self.claim, self.folder, self.photo = item, claim, claim.folder, photo
        self.ident, self.job, self.encoder = ident, job, encoder
        self.encoding: list[Future[Path]] = []
        self.caption = pictures.Caption(
            display(str(item.rel)), loaded.weights, loaded.random, job.mode, job.stage
        )
        self.outputs: list[Path] = []
        self.layers: list[folders.LayerStats] = []
        self.rows: list[pictures.OverviewRow] = []
        self.error: str | None = None
        self.disk_full = False
        self.abandoned = False
        self.on_disk_full = on_disk_full
        self.raw: files.NpzWriter | None = None

    def start(self) -> None:
        """Empty the folder of an earlier run's outputs, its record first: a kill from here on
        leaves a folder without a record, which every later run redoes."""
        owned = sorted(folders.owned_files(self.folder), key=lambda p: p.name != folders.RECORD)
        for path in owned:
            path.unlink(missing_ok=True)
        files.clean_temporaries(self.folder)
        if self.job.save_raw:
            self.raw = files.NpzWriter(self.folder / folders.RAW)

    def add_layer(self, layer: ConvLayer, fmap: np.ndarray) -> None:
        if self.error or self.abandoned:
            return
        try:
            finite = bool(np.isfinite(fmap).all())
            if not finite:  # overflowing weights: draw what is finite, and say so
                fmap = _finite(fmap)
            # near float32's limit, means and spans overflow again: the picture is still right
            with np.errstate(over="ignore", invalid="ignore"):
                means = drawing.channel_means(fmap)  # once, for the picture, overview, record
                image, channels = pictures.layer_picture(
                    fmap,
                    alias=layer.alias,
                    module=layer.name,
                    caption=self.caption,
                    style=self.job.style,
                    photo=self.photo,
                    means=means,
                )
            path = self._save(image, self.folder / folders.picture_name(layer.index, layer.alias))
            if self.raw:
                self.raw.add(layer.alias, fmap)
            if self.job.overview:
                with np.errstate(over="ignore", invalid="ignore"):
                    tiles, top = pictures.overview_tiles(fmap, self.job.style, means=means)
                self.rows.append(
                    pictures.OverviewRow(layer.alias, layer.name, fmap.shape, tiles, top)
                )
            self.layers.append(_layer_stats(layer, fmap, means, finite, channels, path))
        except OSError as err:
            self._failed(err)

    def _failed(self, err: OSError) -> None:
        if not self.error:
            self.error = write_error(err.filename or self.folder, err)
            self.disk_full = err.errno in DISK_FULL
            if self.disk_full:
                self.on_disk_full(self.error)

    def _save(self, image: Image.Image, path: Path) -> Path:
        self.outputs.append(path)
        self.encoding.append(self.encoder.submit(files.save_png, image, path))
        return path

    def _wait_for_encoding(self) -> None:
        for future in self.encoding:
            try:
                future.result()
            except OSError as err:
                self._failed(err)
        self.encoding = []

    def finish(self) -> Record | None:
        """Write the overview and the record (last); on any failure remove what this run
        wrote. Returns the image's record, or None when it was abandoned."""
        try:
            if not (self.error or self.abandoned) and self.job.overview and self.rows:
                image = pictures.overview_picture(
                    self.rows, self.photo, self.caption, self.job.style
                )
                self._save(image, self.folder / folders.OVERVIEW)
            self._wait_for_encoding()
            if not (self.error or self.abandoned):
                if self.raw:
                    self.outputs.append(self.raw.close())
                    self.raw = None
                record = self.record()
                files.save_json(record, self.folder / folders.RECORD)
                self.claim.release()
                return record
        except OSError as err:
            self._failed(err)
        self.discard()
        if self.abandoned:
            return None
        return error_record(self.item, self.error or "failed", disk_full=self.disk_full)

    def discard(self) -> None:
        """Remove what this run wrote for the image (half an image's pictures mislead) and
        give the folder up, removing it if that leaves it empty."""
        self._wait_for_encoding()
        if self.raw:
            self.raw.abort()
            self.raw = None
        for path in self.outputs:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        self.outputs = []
        self.claim.release(remove_folder=True)

    def record(self) -> Record:
        nonfinite = any(layer["nonfinite"] for layer in self.layers)
        return {
            "input": str(self.item.path),
            "status": "ok",
            "folder": str(self.folder),
            "size": list(self.photo.shape[:2]),
            "outputs": [str(p) for p in [*self.outputs, self.folder / folders.RECORD]],
            "overview": str(self.folder / folders.OVERVIEW) if self.job.overview else None,
            "layers": self.layers,
            "identity": self.ident,
            "fingerprint": self.job.fingerprint,
            "nonfinite": nonfinite,
        }


def _chw(tensor: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) maps as numpy without a copy. The weights are channels-last, and so are
    the maps: they become a strided view, which drawing reads as fast (it reduces over H, W
    and gathers a few channels), where a copy to (C, H, W) order cost 5 ms a layer."""
    if tensor.is_contiguous() or not tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.contiguous().numpy()
    return np.moveaxis(tensor.permute(0, 2, 3, 1).numpy(), -1, 1)


def _finite(fmap: np.ndarray) -> np.ndarray:
    finite = fmap[np.isfinite(fmap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return np.nan_to_num(fmap, nan=0.0, posinf=hi, neginf=lo)


def _layer_stats(
    layer: ConvLayer,
    fmap: np.ndarray,
    means: np.ndarray,
    finite: bool,
    channels: list[int],
    path: Path,
) -> folders.LayerStats:
    return {
        "name": layer.alias,
        "module": layer.name,
        "shape": list(fmap.shape),  # every channel has H x W values: the mean of the means
        "mean": round(float(means.mean(dtype=np.float64)), 6) if finite else None,
        "max": round(float(fmap.max()), 6) if finite else None,
        "zero_fraction": round(float(np.count_nonzero(fmap == 0) / fmap.size), 6),
        "nonfinite": not finite,
        "channels": channels,
        "picture": str(path),
    }


def error_record(item: InputItem, message: str, disk_full: bool = False) -> Record:
    record: Record = {"input": str(item.path), "status": "error", "error": message}
    if disk_full:
        record["reason"] = "disk full"
    return {**record, "outputs": [], "layers": []}


def skipped_record(item: InputItem, folder: Path, reason: str, earlier: Record | None) -> Record:
    """An input not redone: ``earlier`` is the finished record it matched, if any."""
    base: Record = earlier or {"folder": str(folder), "outputs": [], "layers": []}
    return {**base, "input": str(item.path), "status": "skipped", "reason": reason}


@dataclass
class _Prepared:
    item: InputItem
    claim: folders.Claim
    ident: folders.Identity
    photo: np.ndarray
    tensor: torch.Tensor


class _Backlog:
    """Futures of the drawing thread, waited for in order once too many are pending, so that
    memory stays flat; each one's record is delivered in input order."""

    def __init__(self, limit: int, deliver: Callable[[Record], None]) -> None:
        self.limit = limit
        self.deliver = deliver
        self.pending: deque[Future[Record | None]] = deque()

    def add(self, future: Future[Any]) -> None:
        self.pending.append(future)
        while len(self.pending) > self.limit:
            self.pop()

    def pop(self) -> None:
        record = self.pending[0].result()
        self.pending.popleft()
        if record is not None:
            self.deliver(record)

    def drain(self) -> None:
        while self.pending:
            self.pop()


def _resolved(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


class Engine:
    """One run over (input, folder) pairs; see :func:`run`."""

    def __init__(
        self,
        loaded: LoadedModel,
        layers: Sequence[ConvLayer],
        job: Job,
        out_dir: Path,
        on_record: Callable[[Record], None],
        should_stop: Callable[[], bool],
    ) -> None:
        self.loaded, self.layers, self.job, self.out_dir = loaded, layers, job, out_dir
        self.should_stop = should_stop
        self.disk_full: str | None = None
        self.on_record = on_record

    def full(self, message: str) -> None:
        """A write found the disk full (from any thread): no new image is started."""
        self.disk_full = self.disk_full or message

    def stopping(self) -> bool:
        return self.disk_full is not None or self.should_stop()

    def run(self, work: Sequence[tuple[InputItem, Path]]) -> bool:
        """Process the pairs in order; True when all were tried, False when stopped early."""
        delivered = 0

        def deliver(record: Record) -> None:
            nonlocal delivered
            delivered += 1
            self.on_record(record)

        pending: dict[int, _Prepared] = {}  # decoded and claimed, not yet handed over

        def prepared() -> Iterator[_Prepared | Record]:
            for item, folder in work:
                if self.stopping():
                    return
                result = self._prepare(item, folder)
                if isinstance(result, _Prepared):
                    pending[id(result)] = result
                yield result

        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="vggviz-draw") as pool,
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="vggviz-png") as encoder,
        ):
            # chain-mode maps are full resolution (up to 100 MB a layer): keep few waiting
            limit = 2 if self.job.mode == "chain" else len(self.layers) + 2
            backlog = _Backlog(limit, deliver)
            try:
                batches = inputs.batch_by_shape(prepared(), self.job.batch_size, _shape)
                for batch, passed in batches:
                    for p in batch:
                        del pending[id(p)]
                    if batch and self.stopping():
                        for p in batch:
                            p.claim.release(remove_folder=True)
                    elif batch:
                        self._process(batch, pool, encoder, backlog)
                    for record in passed:
                        backlog.add(_resolved(record))
            finally:  # stopped early: give up the folders claimed but never processed
                for p in pending.values():
                    p.claim.release(remove_folder=True)
            backlog.drain()
        return delivered == len(work) and not self.disk_full

    def _prepare(self, item: InputItem, folder: Path) -> _Prepared | Record:
        try:
            if not _inside(folder, self.out_dir):
                return error_record(item, f"{folder}: output folder leads outside {self.out_dir}")
            try:
                ident = folders.identity(item.path)
            except (OSError, ValueError):
                ident = None  # load_rgb below says what is wrong with the file
            if self.job.skip_existing and ident is not None:
                earlier = folders.finished(folder, self.job.fingerprint, ident)
                if earlier is not None:
                    _sweep(folder)
                    return skipped_record(item, folder, "finished earlier", earlier)
            photo, array = images.for_model(
                item.path,
                self.job.size,
                self.job.normalize,
                lambda width, height: self._check_memory(item, width, height),
            )
            if ident is None:
                raise InputError(item.path, "cannot read file")
            try:
                claim = folders.claim(folder)
            except folders.Held as held:
                return skipped_record(item, folder, str(held), None)
            if self.job.skip_existing:  # another run may have finished it meanwhile
                earlier = folders.finished(folder, self.job.fingerprint, ident)
                if earlier is not None:
                    claim.release()
                    return skipped_record(item, folder, "finished earlier", earlier)
        except InputError as err:
            return error_record(item, str(err))
        except OSError as err:
            message = write_error(err.filename or folder, err)
            if err.errno in DISK_FULL:
                self.full(message)
            return error_record(item, message, err.errno in DISK_FULL)
        return _Prepared(item, claim, ident, photo, torch.from_numpy(array))

    def _check_memory(self, item: InputItem, width: int, height: int) -> None:
        """The run was checked for square images; a panorama (up to 4x longer) that cannot
        fit is this image's error, not the death of the run."""
        size = self.job.size
        if width * height <= size * size or memory.check_disabled():
            return
        grid = values.parse_grid(self.job.style.grid)
        kw: dict[str, Any] = {
            "batch_size": self.job.batch_size,
            "mode": self.job.mode,
            "save_raw": self.job.save_raw,
            "tiles": None if grid == "all" else grid[0] * grid[1],
            "baseline": False,
        }
        arch = self.loaded.arch
        extra = memory.estimate_peak_bytes(arch, height, width, **kw)
        extra -= memory.estimate_peak_bytes(arch, size, size, **kw)
        room = memory.available_bytes()
        if room is not None and extra > room:
            raise InputError(
                item.path,
                f"a {width}x{height} image needs about {extra / 1e9:.1f} GB more memory "
                f"than the {room / 1e9:.1f} GB available",
            )

    def _process(self, batch: list[_Prepared], pool, encoder, backlog: _Backlog) -> None:
        outs = [
            ImageOutput(
                p.item, p.claim, p.photo, p.ident, self.loaded, self.job, encoder, self.full
            )
            for p in batch
        ]
        for out in outs:
            try:
                out.start()
            except OSError as err:
                out._failed(err)

        def hand_over(layer: ConvLayer, tensor: torch.Tensor) -> None:
            # drawing starts while the network computes the next layers
            arrays = _chw(tensor.float().cpu())
            for out, fmap in zip(outs, arrays, strict=True):
                backlog.add(pool.submit(out.add_layer, layer, fmap))
            if self.stopping():
                raise Stopped

        x = torch.stack([p.tensor for p in batch]).to(self.loaded.device, self.loaded.dtype)
        failure = None
        try:
            if self.job.mode == "network":
                network_maps(self.loaded.model, self.layers, x, self.job.stage, on_map=hand_over)
            else:
                for layer, tensor in chain_maps(self.loaded.layers, x, self.layers):
                    hand_over(layer, tensor)
        except Stopped:
            for out in outs:
                out.abandoned = True
        except RuntimeError as err:  # e.g. out of memory on a huge image
            failure = str(err).strip().splitlines()[0] if str(err).strip() else "RuntimeError"
        for out in outs:
            if failure:
                out.error = f"{out.item.path}: the forward pass failed ({failure})"
            backlog.add(pool.submit(out.finish))


def _shape(result: _Prepared | Record) -> tuple[int, ...] | None:
    return tuple(result.tensor.shape) if isinstance(result, _Prepared) else None


def _sweep(folder: Path) -> None:
    """Remove a killed run's temporaries from a finished folder, unless a live run holds it."""
    try:
        claim = folders.claim(folder)
    except (folders.Held, OSError):
        return
    try:
        files.clean_temporaries(folder)
    finally:
        claim.release()


def _inside(folder: Path, out_dir: Path) -> bool:
    """False when a link already in the output tree would take writes elsewhere."""
    return Path(os.path.realpath(folder)).is_relative_to(os.path.realpath(out_dir))


def run(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    work: Sequence[tuple[InputItem, Path]],
    job: Job,
    out_dir: Path,
    on_record: Callable[[Record], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[bool, str | None]:
    """Process every (input, output folder) pair, calling ``on_record`` once per input tried,
    in input order. Bad inputs become error records and the run goes on; a full disk or
    ``should_stop()`` ends it early. Returns (all tried, the disk-full message or None)."""
    engine = Engine(loaded, layers, job, out_dir, on_record, should_stop)
    complete = engine.run(work)
    return complete, engine.disk_full
