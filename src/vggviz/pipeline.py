"""The ``features`` job: images in, one picture per conv layer (plus overview, raw maps and a
record) out, for any number of images with flat memory.

The main thread decodes images and runs the network; a single worker thread draws and writes
the pictures of one image while the next is computed. Each image's files are written
atomically and its ``record.json`` last, so a folder with a record is complete.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vggviz import images, pictures, writing
from vggviz.capture import chain_maps, network_maps
from vggviz.errors import InputError
from vggviz.inputs import InputItem
from vggviz.layers import ConvLayer
from vggviz.models import LoadedModel

RECORD = "record.json"
OVERVIEW = "overview.png"
RAW = "maps.npz"


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
    filters: bool = True  # the run also draws conv1's filters beside its index


def picture_name(layer: ConvLayer) -> str:
    """``01-conv1.png``: file names sort in layer order."""
    return f"{layer.index:02d}-{layer.alias}.png"


def expected_files(folder: Path, layers: Sequence[ConvLayer], job: Job) -> list[Path]:
    files = [folder / picture_name(layer) for layer in layers]
    if job.overview:
        files.append(folder / OVERVIEW)
    if job.save_raw:
        files.append(folder / RAW)
    return [*files, folder / RECORD]


class ImageOutput:
    """One image's outputs, filled layer by layer on the drawing thread; PNG encoding, the
    slowest step, runs on the ``encoder`` threads (zlib releases the GIL)."""

    def __init__(
        self,
        item: InputItem,
        folder: Path,
        photo: np.ndarray,
        loaded: LoadedModel,
        job: Job,
        encoder: Executor,
    ) -> None:
        self.item, self.folder, self.photo, self.job = item, folder, photo, job
        self.encoder = encoder
        self.encoding: list[Future[Path]] = []
        self.caption = pictures.Caption(
            str(item.rel), loaded.weights, loaded.random, job.mode, job.stage
        )
        self.outputs: list[Path] = []
        self.layers: list[dict[str, Any]] = []
        self.rows: list[pictures.OverviewRow] = []
        self.error: str | None = None
        self.raw = None
        writing.clean_temporaries(folder)
        if job.save_raw:
            self.raw = writing.NpzWriter(folder / RAW)

    def add_layer(self, layer: ConvLayer, fmap: np.ndarray) -> None:
        if self.error:
            return
        try:
            image, channels = pictures.layer_picture(
                fmap,
                alias=layer.alias,
                module=layer.name,
                caption=self.caption,
                style=self.job.style,
                photo=self.photo,
            )
            path = self._save(image, self.folder / picture_name(layer))
            if self.raw:
                self.raw.add(layer.alias, fmap)
            if self.job.overview:
                tiles, top = pictures.overview_tiles(fmap, self.job.style)
                self.rows.append(
                    pictures.OverviewRow(layer.alias, layer.name, fmap.shape, tiles, top)
                )
            self.layers.append(_layer_stats(layer, fmap, channels, path))
        except OSError as err:
            self.error = f"{self.folder}: cannot write ({err.strerror or err})"

    def _save(self, image: Image.Image, path: Path) -> Path:
        self.outputs.append(path)
        self.encoding.append(self.encoder.submit(writing.save_png, image, path))
        return path

    def _wait_for_encoding(self) -> None:
        """Wait for every PNG of this image; the first write error becomes the image's."""
        for future in self.encoding:
            try:
                future.result()
            except OSError as err:
                self.error = self.error or f"{self.folder}: cannot write ({err.strerror or err})"
        self.encoding = []

    def finish(self) -> dict[str, Any]:
        try:
            if not self.error and self.job.overview and self.rows:
                image = pictures.overview_picture(
                    self.rows, self.photo, self.caption, self.job.style
                )
                self._save(image, self.folder / OVERVIEW)
            self._wait_for_encoding()
            if not self.error:
                if self.raw:
                    self.outputs.append(self.raw.close())
                    self.raw = None
                record = self.record("ok")
                writing.save_json(record, self.folder / RECORD)
                return record
        except OSError as err:
            self.error = f"{self.folder}: cannot write ({err.strerror or err})"
        self.discard()
        return error_record(self.item, self.error or "failed")

    def discard(self) -> None:
        """Remove what this run wrote for the image: half an image's pictures mislead."""
        for future in self.encoding:
            future.cancel()
        wait(self.encoding)
        self.encoding = []
        if self.raw:
            self.raw.abort()
            self.raw = None
        for path in self.outputs:
            path.unlink(missing_ok=True)
        self.outputs = []
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only if nothing else is in it

    def record(self, status: str) -> dict[str, Any]:
        return {
            "input": str(self.item.path),
            "status": status,
            "folder": str(self.folder),
            "size": list(self.photo.shape[:2]),
            "outputs": [str(p) for p in [*self.outputs, self.folder / RECORD]],
            "overview": str(self.folder / OVERVIEW) if self.job.overview else None,
            "layers": self.layers,
        }


def _layer_stats(
    layer: ConvLayer, fmap: np.ndarray, channels: list[int], path: Path
) -> dict[str, Any]:
    return {
        "name": layer.alias,
        "module": layer.name,
        "shape": list(fmap.shape),
        "mean": round(float(fmap.mean(dtype=np.float64)), 6),
        "max": round(float(fmap.max()), 6),
        "zero_fraction": round(float(np.count_nonzero(fmap == 0) / fmap.size), 6),
        "channels": channels,
        "picture": str(path),
    }


def error_record(item: InputItem, message: str) -> dict[str, Any]:
    return {
        "input": str(item.path),
        "status": "error",
        "error": message,
        "outputs": [],
        "layers": [],
    }


def skipped_record(item: InputItem, folder: Path) -> dict[str, Any]:
    """The record of an earlier run, marked skipped (it still describes the files)."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {"input": str(item.path), "folder": str(folder), "outputs": []}
    return {**record, "input": str(item.path), "status": "skipped"}


@dataclass
class _Prepared:
    item: InputItem
    folder: Path
    photo: np.ndarray
    tensor: torch.Tensor


class _Backlog:
    """Futures of the worker thread, waited for in order once too many are pending, so that
    memory stays flat however many images there are."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: deque[tuple[Future[Any], Callable[[Any], None] | None]] = deque()

    def add(self, future: Future[Any], done: Callable[[Any], None] | None = None) -> None:
        self.pending.append((future, done))
        while len(self.pending) > self.limit:
            self.pop()

    def pop(self) -> None:
        future, done = self.pending[0]
        result = future.result()  # a Ctrl-C while waiting leaves the entry for deliver_finished
        self.pending.popleft()
        if done:
            done(result)

    def drain(self) -> None:
        while self.pending:
            self.pop()

    def deliver_finished(self) -> None:
        """After an interruption: report what completed, in order, up to the first gap."""
        while self.pending:
            future = self.pending[0][0]
            if not future.done() or future.cancelled() or future.exception() is not None:
                return
            self.pop()


def run(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    work: Sequence[tuple[InputItem, Path]],
    job: Job,
    on_record: Callable[[dict[str, Any]], None],
    out_dir: Path,
) -> None:
    """Process every (input, output folder) pair, calling ``on_record`` once per input, in
    input order. Bad inputs become error records; the run goes on."""
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="vggviz-draw") as pool,
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="vggviz-png") as encoder,
    ):
        # chain-mode maps are full resolution (up to 100 MB a layer): keep few of them waiting
        backlog = _Backlog(limit=2 if job.mode == "chain" else len(layers) + 2)
        unfinished: set[ImageOutput] = set()
        try:
            for batch in _batches(work, out_dir, layers, job, backlog, on_record):
                _process(
                    batch, loaded, layers, job, (pool, encoder), backlog, on_record, unfinished
                )
            backlog.drain()
        except BaseException:
            # Ctrl-C or a crash: finish the picture being written, drop the queued ones,
            # and remove the partial images, so every image folder left is complete.
            pool.shutdown(wait=True, cancel_futures=True)
            encoder.shutdown(wait=True, cancel_futures=True)
            backlog.deliver_finished()
            for out in unfinished:
                out.discard()
            raise


def _batches(work, out_dir, layers, job, backlog, on_record) -> Iterator[list[_Prepared]]:
    """Decoded images grouped by equal size, up to ``job.batch_size`` at a time. Skipped and
    failed inputs are reported through the backlog, so records stay in input order."""
    batch: list[_Prepared] = []
    for item, folder in work:
        if not _inside(folder, out_dir):
            record = error_record(item, f"{folder}: output folder leads outside {out_dir}")
        elif job.skip_existing and all(p.is_file() for p in expected_files(folder, layers, job)):
            record = skipped_record(item, folder)
        else:
            try:
                image = images.resize_for_model(images.load_rgb(item.path), job.size)
            except InputError as err:
                record = error_record(item, str(err))
            else:
                array = images.to_array(image, job.normalize)
                tensor = torch.from_numpy(array)
                if batch and (
                    len(batch) >= job.batch_size or batch[0].tensor.shape != tensor.shape
                ):
                    yield batch
                    batch = []
                batch.append(_Prepared(item, folder, np.asarray(image), tensor))
                continue
        if batch:
            yield batch
            batch = []
        backlog.add(_resolved(record), on_record)
    if batch:
        yield batch


def _inside(folder: Path, out_dir: Path) -> bool:
    """False when a link already in the output tree would take writes elsewhere."""
    return folder.resolve().is_relative_to(out_dir.resolve())


def _resolved(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def _process(batch, loaded, layers, job, pools, backlog, on_record, unfinished) -> None:
    pool, encoder = pools
    x = torch.stack([p.tensor for p in batch]).to(loaded.device, loaded.dtype)
    outs = [ImageOutput(p.item, p.folder, p.photo, loaded, job, encoder) for p in batch]
    unfinished.update(outs)

    def hand_over(layer: ConvLayer, tensor: torch.Tensor) -> None:
        # drawing starts while the network computes the next layers
        arrays = tensor.float().cpu().numpy()
        for out, fmap in zip(outs, arrays, strict=True):
            backlog.add(pool.submit(out.add_layer, layer, fmap))

    if job.mode == "network":
        network_maps(loaded.model, layers, x, job.stage, on_map=hand_over)
    else:
        for layer, tensor in chain_maps(loaded.layers, x, layers):
            hand_over(layer, tensor)
    for out in outs:
        backlog.add(pool.submit(_finish, out, unfinished), on_record)


def _finish(out: ImageOutput, unfinished: set[ImageOutput]) -> dict[str, Any]:
    record = out.finish()
    unfinished.discard(out)
    return record


@dataclass
class Counts:
    ok: int = 0
    error: int = 0
    skipped: int = 0

    def summary(self) -> str:
        return f"{self.ok} done, {self.error} failed, {self.skipped} skipped"


def run_to_folder(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    work: Sequence[tuple[InputItem, Path]],
    job: Job,
    out_dir: Path,
    *,
    run_info: dict[str, str],
    on_record: Callable[[dict[str, Any]], None],
    suffix: str = "",
) -> tuple[Counts, Path]:
    """:func:`run`, plus the run's ``manifest{suffix}.jsonl`` and ``index{suffix}.html`` in
    ``out_dir``. Shards name theirs apart so that they can share one output folder.

    Interrupted, the manifest and index still describe the images finished so far.
    """
    from vggviz import report
    from vggviz.filters import draw_filters

    for name in (f"manifest{suffix}.jsonl", f"index{suffix}.html"):
        writing.clean_temporaries(out_dir, name)
    manifest = writing.JsonLines(out_dir / f"manifest{suffix}.jsonl")
    counts = Counts()

    def record_done(record: dict[str, Any]) -> None:
        setattr(counts, record["status"], getattr(counts, record["status"]) + 1)
        manifest.write(record)
        on_record(record)

    figures = []
    if job.filters:
        first = loaded.layers[0]
        figures.append(
            (f"{first.alias} filters of this model", draw_filters(loaded, first, out_dir))
        )
    try:
        run(loaded, layers, work, job, record_done, out_dir)
    finally:
        manifest.close()
        records = [json.loads(line) for line in manifest.path.read_text("utf-8").splitlines()]
        info = {
            **run_info,
            "done": str(counts.ok),
            "failed": str(counts.error),
            "skipped": str(counts.skipped),
        }
        index = report.write_index(
            out_dir,
            records,
            title=f"vggviz: {loaded.arch}",
            run_info=info,
            name=f"index{suffix}.html",
            figures=figures,
        )
    return counts, index
