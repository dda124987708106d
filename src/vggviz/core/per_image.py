"""The engine every per-image job runs on (``features``, ``explain``): (input, folder) pairs in,
finished image folders and one record per input out, in input order, with flat memory however
many inputs there are. Torch-free: a job brings the model through its :class:`ImageWork`.

What the engine does, for every input in order: check that its folder stays inside the output
folder; identify the file (real path, size, mtime); with ``skip_existing``, skip a folder
already finished from the same file with the same fingerprint; decode and resize it
(``core/images``), letting the job refuse an image too large for memory; claim its folder
(another live run's folder is skipped); then batch equal shapes (``core/inputs``). Each
batch goes to the job's :meth:`ImageWork.process` on the main thread; what the job hands to
:meth:`Batch.draw` runs on that image's drawing lane (a thread; several images are drawn at
once where there are cores to spare, :func:`drawing_workers`), in order, while the next batch
computes; PNGs are encoded on more threads. Every image then ends in exactly one of two ways:
finished (its pictures, then ``record.json`` last) or discarded (what this run wrote removed,
the folder given up). Records are delivered in input order. A full disk or
``events.should_stop()`` ends the run early: a flag polled between steps, never an exception
thrown into one. An exception keeps the rule too: one from a drawing step fails its image (an
error record), one that ends the run (the caller's ``on_record`` raising, a bug) discards
every image not yet finished before it leaves the engine.

How a new per-image job plugs in (``explain`` as the example; names are free)::

    class ExplainOutput(per_image.ImageOutput):      # one photo's outputs
        def draw(self, scores, heat) -> None:        # runs on its drawing lane, in order
            if self.live:                            # False after an error or a stop
                self.save(picture(self.photo, scores, heat), self.folder / "explain.png")
                self.scores = scores                 # (save encodes on an encoder thread;
                                                     #  its OSError fails the image)
        def fields(self) -> dict:                    # the job's part of record.json
            return {"classes": self.scores}

    class ExplainWork(per_image.ImageWork):          # the job's side of the engine
        output_type = ExplainOutput
        empty = {"classes": []}                      # its fields in error and skipped records
        def owns(self, name) -> bool:                 # files it writes in an image folder
            return name in ("explain.png", "cams.npz")
        def process(self, batch) -> None:            # main thread: the model's work
            x = torch.from_numpy(batch.arrays()).to(device)   # (N, 3, H, W) float32
            ...                                       # forwards, gradients; between steps:
            if batch.stopping():                      #   a stop was asked for
                return batch.abandon()                #   every image discarded, no record
            for out, s, h in zip(batch.outputs, scores, heats):
                batch.draw(out.draw, s, h)

    def run(request, events=None, stdin=None) -> Summary:
        events = events or Events()
        ...                                           # checks that need no torch (memory)
        started = lifecycle.begin(request, "explain", events, lambda: load(request.model), stdin)
        work = ExplainWork(fingerprint=folders.fingerprint({...every shaping option,
                           **lifecycle.model_identity(request.model)}), size=request.size,
                           normalize=..., batch_size=..., skip_existing=...)
        return per_image.run_images(work, per_image.pairs(started.plan, request.out_dir),
                                    request.out_dir, started.plan.shard, events,
                                    started.summary, index=write_index)

``index(out_dir, records, name, figures)`` writes the run's page (``name`` is
``index.html``, or ``index-2.html`` beside another live run) and returns its path;
``before(suffix)`` may draw run-wide pictures first and return them as figures. A job's
``request`` needs ``images``, ``out_dir`` and ``shard`` (:class:`lifecycle.Request`), and its
``output_type.__init__`` gets ``(prepared, work, encoder, on_disk_full)``. ``run_images``
claims the run's manifest name, writes ``manifest.jsonl`` as records come and the index
last, reports each record through ``events.record`` and fills the
:class:`~vggviz.core.lifecycle.Summary`. A job adds its name and the names of its run files
to ``vocabulary.JOB_FILES`` so that no other job writes into its folders.
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from vggviz.core import files, folders, images, inputs, lifecycle, memory
from vggviz.core.errors import InputError, OutputError
from vggviz.core.folders import Record
from vggviz.core.inputs import InputItem
from vggviz.core.lifecycle import Events, Plan, Summary
from vggviz.core.text import display, first_line, write_error

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOTHING: Mapping[str, Any] = MappingProxyType({})

Figure = tuple[str, Path]  # a run-wide picture for the index: (caption, path)
Writer = Callable[[Any, Path], Path]  # files.save_png, files.save_jpeg, files.save_bytes


@dataclass
class Prepared:
    """One input decoded and its folder claimed: what a batch holds."""

    item: InputItem
    claim: folders.Claim
    ident: folders.Identity
    photo: np.ndarray  # (H, W, 3) uint8: the photo resized for the model
    array: np.ndarray  # (3, H, W) float32: the network's input made from it

    @property
    def folder(self) -> Path:
        return self.claim.folder


class ImageOutput:
    """One image's outputs while this run holds its folder. A job subclasses it with the
    methods its :meth:`ImageWork.process` hands to :meth:`Batch.draw` (they run on its drawing
    lane, in order), and overrides :meth:`complete`, :meth:`abort` and :meth:`fields`.

    Pictures go through :meth:`save` (encoded on the encoder threads, listed as outputs); an
    OSError while drawing goes to :meth:`failed`. Once :attr:`live` is False (an error, or the
    run stopped mid-batch) drawing anything more is wasted: the image will be discarded.
    """

    def __init__(
        self,
        prepared: Prepared,
        work: ImageWork,
        encoder: Executor,
        on_disk_full: Callable[[str], None],
    ) -> None:
        self.item, self.claim, self.folder = prepared.item, prepared.claim, prepared.folder
        self.photo, self.ident = prepared.photo, prepared.ident
        self.work, self.encoder, self.on_disk_full = work, encoder, on_disk_full
        self.encoding: list[Future[Path]] = []
        self.outputs: list[Path] = []
        self.error: str | None = None
        self.disk_full = False
        self.abandoned = False

    @property
    def live(self) -> bool:
        return not (self.error or self.abandoned)

    # --- for the job's drawing methods ----------------------------------------------------

    def save(self, image: Image.Image | bytes, path: Path, writer: Writer | None = None) -> Path:
        """Write ``image`` at ``path`` on an encoder thread (``files.save_png`` by default), or
        the bytes of a file encoded elsewhere (a drawing process's PNG) as they are."""
        if isinstance(image, bytes):
            writer = files.save_bytes
        future = self.encoder.submit(writer or files.save_png, image, path)
        self.outputs.append(path)  # listed once it is on its way, never before
        self.encoding.append(future)
        return path

    def failed(self, err: OSError) -> None:
        """A write for this image failed: it ends as an error record (a full disk also stops
        the run)."""
        if not self.error:
            self.error = write_error(err.filename or self.folder, err)
            self.disk_full = err.errno in DISK_FULL
            if self.disk_full:
                self.on_disk_full(self.error)

    # --- what a job overrides ---------------------------------------------------------------

    def begin(self) -> None:
        """After the folder is emptied, before any drawing (e.g. open a staged file)."""

    def complete(self) -> None:
        """On the image's drawing lane, after every drawing step and before the record: the last
        pictures (e.g. an overview) and staged files (add them to :attr:`outputs`)."""

    def abort(self) -> None:
        """Throw away what :meth:`begin` opened and :meth:`complete` did not finish."""

    def fields(self) -> dict[str, Any]:
        """The job's own fields of the image's record."""
        return {}

    # --- for the engine ---------------------------------------------------------------------

    def start(self) -> None:
        """Empty the folder of an earlier run's outputs, its record first: a kill from here on
        leaves a folder without a record, which every later run redoes."""
        owned = sorted(
            folders.owned_files(self.folder, self.work.owns),
            key=lambda p: p.name != folders.RECORD,
        )
        for path in owned:
            path.unlink(missing_ok=True)
        files.clean_temporaries(self.folder)
        self.begin()

    def _wait_for_encoding(self) -> None:
        for future in self.encoding:
            try:
                future.result()
            except OSError as err:
                self.failed(err)
            except Exception as err:  # a picture that could not be encoded is not there
                self.broken(err)
        self.encoding = []

    def broken(self, err: Exception) -> None:
        """Something other than an OS error went wrong for this image (a drawing step that
        raised): it ends as an error record naming the exception, and the run goes on."""
        if not self.error:
            why = first_line(str(err))
            self.error = f"{display(str(self.item.path))}: cannot be drawn ({type(err).__name__}"
            self.error += f": {why})" if why else ")"

    def finish(self) -> Record | None:
        """Complete the image and write its record (last); on any failure remove what this
        run wrote. Returns the image's record, or None when it was abandoned."""
        try:
            if self.live:
                self.complete()
            self._wait_for_encoding()
            if self.live:
                record = self.record()
                files.save_json(record, self.folder / folders.RECORD)
                self.claim.release()
                return record
        except OSError as err:
            self.failed(err)
        except Exception as err:
            self.broken(err)
        self.discard()
        if self.abandoned:
            return None
        return error_record(self.item, self.error or "failed", self.work.empty, self.disk_full)

    def discard(self) -> None:
        """Remove what this run wrote for the image (half an image's pictures mislead) and
        give the folder up, removing it if that leaves it empty."""
        self._wait_for_encoding()
        with contextlib.suppress(OSError, ValueError):
            self.abort()
        for path in self.outputs:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        self.outputs = []
        self.claim.release(remove_folder=True)

    def record(self) -> Record:
        return {  # type: ignore[typeddict-item]
            "input": str(self.item.path),
            "status": "ok",
            "folder": str(self.folder),
            "size": list(self.photo.shape[:2]),
            "outputs": [str(p) for p in [*self.outputs, self.folder / folders.RECORD]],
            **self.fields(),
            "identity": self.ident,
            "fingerprint": self.work.fingerprint,
        }


class ImageWork:
    """What a per-image job brings to the engine; subclass it and implement :meth:`process`.

    ``fingerprint`` digests every option that shapes the outputs (``folders.fingerprint``):
    a finished folder with another fingerprint is redone, never skipped. ``draw_workers``:
    images drawn at once, each on its own lane (:func:`drawing_workers` sizes it).
    """

    output_type: ClassVar[type[ImageOutput]] = ImageOutput
    backlog: int = 8  # drawing steps waiting per lane; bounds the memory of maps in flight
    empty: ClassVar[Mapping[str, Any]] = MappingProxyType({})  # job fields of an empty record

    def __init__(
        self,
        *,
        fingerprint: str,
        size: int = 224,
        normalize: bool = True,
        batch_size: int = 1,
        skip_existing: bool = False,
        draw_workers: int = 1,
    ) -> None:
        self.fingerprint, self.size, self.normalize = fingerprint, size, normalize
        self.batch_size, self.skip_existing = batch_size, skip_existing
        self.draw_workers = draw_workers

    def owns(self, name: str) -> bool:
        """Whether a file of this name in an image folder is one this job writes (and so may
        replace or remove); ``record.json`` always is."""
        return False

    def close(self) -> None:
        """After the run's last image: let go of what drawing held (processes)."""

    def check_image(self, item: InputItem, width: int, height: int) -> None:
        """Refuse (InputError) an image whose resized size the run cannot afford, before its
        input is made; the run was checked for square images, a panorama may be more."""

    def process(self, batch: Batch) -> None:
        """The model's work for one batch, on the main thread: compute, then hand each image's
        drawing to ``batch.draw``. Poll ``batch.stopping()`` between long steps and call
        ``batch.abandon()`` to give the batch up. A RuntimeError (out of memory) fails every
        image of the batch with its first line."""
        raise NotImplementedError


MAX_DRAW_WORKERS = 8
PROCESS_BYTES = 100 * 10**6  # a drawing process: Python, numpy, Pillow, matplotlib's maps
DRAW_SHARE = 4
"""On a CPU, one drawing worker per this many cores: drawing a photo costs a third to half
of the core-seconds of its forward pass (AVX2 to AVX-512), which takes the other cores."""


def drawing_workers(accelerator: bool, image_bytes: int) -> int:
    """How many images to draw at once: from the cores this process may use (its affinity:
    ``taskset``, a SLURM allocation), never more than the memory there is holds
    (``image_bytes``: what one more image in flight costs), at most MAX_DRAW_WORKERS.
    With an accelerator the forward pass leaves the CPU to drawing, but for one core that
    feeds it. ``VGGVIZ_DRAW_WORKERS`` sets the number (benchmarks)."""
    forced = os.environ.get("VGGVIZ_DRAW_WORKERS", "")
    if forced.isdigit() and int(forced) > 0:
        return min(int(forced), MAX_DRAW_WORKERS)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    wanted = cores - 1 if accelerator else cores // DRAW_SHARE
    room = memory.available_bytes()
    if room is not None:  # each lane holds an image's maps and a drawing process
        wanted = min(wanted, room // (2 * (image_bytes + PROCESS_BYTES)))  # half of the room
    return int(max(1, min(wanted, MAX_DRAW_WORKERS)))


def drawing_processes(count: int) -> ProcessPoolExecutor:
    """``count`` processes for drawing steps that keep the GIL. Spawned, not forked: the
    parent runs torch's threads. They ignore Ctrl-C and SIGTERM (the run polls its stop flag
    and shuts them down) and end within a second of the run's process if it is killed."""
    return ProcessPoolExecutor(
        max_workers=count,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_drawing_process,
    )


def _drawing_process() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()

    def orphaned() -> None:  # the run was killed (kill -9, OOM): end with it
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()


class Batch:
    """Images of one shape, processed together: what :meth:`ImageWork.process` gets."""

    def __init__(
        self,
        prepared: list[Prepared],
        outputs: list[ImageOutput],
        draw: Callable[..., None],
        stopping: Callable[[], bool],
    ) -> None:
        self.prepared, self.outputs = prepared, outputs
        self._draw, self._stopping = draw, stopping

    def arrays(self) -> np.ndarray:
        """The network's input: (N, 3, H, W) float32."""
        return np.stack([p.array for p in self.prepared])

    def draw(self, step: Callable[..., Any], *args: Any) -> None:
        """Run ``step(*args)``, a method of one of the batch's images, on that image's drawing
        lane, after every step handed over for it before."""
        self._draw(step, *args)

    def stopping(self) -> bool:
        """A stop was asked for (a signal, a full disk): leave the batch soon."""
        return self._stopping()

    def abandon(self) -> None:
        """Give up every image of the batch: each is discarded and gets no record."""
        for out in self.outputs:
            out.abandoned = True


def error_record(
    item: InputItem, message: str, empty: Mapping[str, Any] = NOTHING, disk_full: bool = False
) -> Record:
    record: Record = {"input": str(item.path), "status": "error", "error": message}
    if disk_full:
        record["reason"] = "disk full"
    return {**record, "outputs": [], **empty}  # type: ignore[typeddict-item]


def skipped_record(
    item: InputItem,
    folder: Path,
    reason: str,
    earlier: Record | None,
    empty: Mapping[str, Any] = NOTHING,
) -> Record:
    """An input not redone: ``earlier`` is the finished record it matched, if any."""
    base = earlier or {"folder": str(folder), "outputs": [], **empty}
    return {**base, "input": str(item.path), "status": "skipped", "reason": reason}  # type: ignore[typeddict-item]


class _Backlog:
    """Futures of the drawing lanes, waited for in order once too many are pending, so that
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
        work: ImageWork,
        out_dir: Path,
        on_record: Callable[[Record], None],
        should_stop: Callable[[], bool],
    ) -> None:
        self.work, self.out_dir = work, out_dir
        self.should_stop = should_stop
        self.disk_full: str | None = None
        self.on_record = on_record
        self._in_flight: set[ImageOutput] = set()  # handed to the drawing lanes, not finished
        self._images = 0  # images handed over so far: the next one's lane
        self._lock = threading.Lock()

    def full(self, message: str) -> None:
        """A write found the disk full (from any thread): no new image is started."""
        self.disk_full = self.disk_full or message

    def stopping(self) -> bool:
        return self.disk_full is not None or self.should_stop()

    def run(self, pairs: Sequence[tuple[InputItem, Path]]) -> bool:
        """Process the pairs in order; True when all were tried, False when stopped early."""
        delivered = 0

        def deliver(record: Record) -> None:
            nonlocal delivered
            delivered += 1
            try:
                self.on_record(record)
            except BaseException as err:  # the caller's, not the forward pass's (see below)
                raise _CallerFailed(err) from err

        pending: dict[int, Prepared] = {}  # decoded and claimed, not yet handed over

        def prepared() -> Iterator[Prepared | Record]:
            for item, folder in pairs:
                if self.stopping():
                    return
                result = self._prepare(item, folder)
                if isinstance(result, Prepared):
                    pending[id(result)] = result
                yield result

        # no more lanes than images: a lone photo never waits for processes to start
        self.work.draw_workers = workers = max(1, min(self.work.draw_workers, len(pairs)))
        with contextlib.ExitStack() as stack:  # lanes are drained before the encoders they feed
            stack.callback(self.work.close)  # and the job's drawing processes after both
            encoder = stack.enter_context(
                ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix="vggviz-png")
            )
            lanes = [
                stack.enter_context(
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vggviz-draw{n}")
                )
                for n in range(workers)
            ]
            backlog = _Backlog(self.work.backlog * workers, deliver)
            try:
                batches = inputs.batch_by_shape(prepared(), self.work.batch_size, _shape)
                for batch, passed in batches:
                    for p in batch:
                        del pending[id(p)]
                    if batch and self.stopping():
                        for p in batch:
                            p.claim.release(remove_folder=True)
                    elif batch:
                        self._process(batch, lanes, encoder, backlog)
                    for record in passed:
                        backlog.add(_resolved(record))
                backlog.drain()
            except BaseException as err:
                # whatever it is (a reader gone, a bug), no image is left half-made: those
                # not finished yet are discarded as their drawing lanes reach them
                with self._lock:
                    for out in self._in_flight:
                        out.abandoned = True
                if isinstance(err, _CallerFailed):
                    raise err.error  # noqa: B904 (the caller's own exception, as it was raised)
                raise
            finally:  # stopped early: give up the folders claimed but never processed
                for p in pending.values():
                    p.claim.release(remove_folder=True)
        return delivered == len(pairs) and not self.disk_full

    def _prepare(self, item: InputItem, folder: Path) -> Prepared | Record:
        work, empty = self.work, self.work.empty
        try:
            if not _inside(folder, self.out_dir):
                message = f"{folder}: output folder leads outside {self.out_dir}"
                return error_record(item, message, empty)
            ident = lifecycle.identity(item.path)  # None: decoding says what is wrong
            if work.skip_existing and ident is not None:
                earlier = folders.finished(folder, work.fingerprint, ident)
                if earlier is not None:
                    _sweep(folder)
                    return skipped_record(item, folder, "finished earlier", earlier, empty)

            def check(width: int, height: int) -> None:
                work.check_image(item, width, height)

            photo, array = images.for_model(item.path, work.size, work.normalize, check)
            if ident is None:
                raise InputError(item.path, "cannot read file")
            try:
                claim = folders.claim(folder)
            except folders.Held as held:
                return skipped_record(item, folder, str(held), None, empty)
            if work.skip_existing:  # another run may have finished it meanwhile
                earlier = folders.finished(folder, work.fingerprint, ident)
                if earlier is not None:
                    claim.release()
                    return skipped_record(item, folder, "finished earlier", earlier, empty)
        except InputError as err:
            return error_record(item, str(err), empty)
        except OSError as err:
            message = write_error(err.filename or folder, err)
            if err.errno in DISK_FULL:
                self.full(message)
            return error_record(item, message, empty, err.errno in DISK_FULL)
        return Prepared(item, claim, ident, photo, array)

    def _process(
        self, prepared: list[Prepared], lanes: Sequence[Executor], encoder, backlog: _Backlog
    ) -> None:
        outs = [self.work.output_type(p, self.work, encoder, self.full) for p in prepared]
        lane: dict[int, Executor] = {}  # each image's steps run in order on one lane
        for out in outs:
            lane[id(out)] = lanes[self._images % len(lanes)]
            self._images += 1
            try:
                out.start()
            except OSError as err:
                out.failed(err)
            except Exception as err:
                out.broken(err)

        def draw(step: Callable[..., Any], *args: Any) -> None:
            owner = getattr(step, "__self__", None)
            if id(owner) not in lane:
                raise TypeError("a drawing step is a method of one of the batch's images")
            backlog.add(lane[id(owner)].submit(_step, owner, step, *args))

        with self._lock:
            self._in_flight.update(outs)
        batch = Batch(prepared, outs, draw, self.stopping)
        failure = None
        try:
            self.work.process(batch)
        except RuntimeError as err:  # e.g. out of memory on a huge image
            failure = first_line(str(err)) or "RuntimeError"
        except BaseException:
            batch.abandon()  # finished below: what they drew is removed
            raise
        finally:  # every image of the batch is finished or discarded, exactly once
            finishing = []
            for out in outs:
                if failure:
                    out.error = (
                        f"{display(str(out.item.path))}: the forward pass failed ({failure})"
                    )
                finishing.append(lane[id(out)].submit(self._finish, out))
        for future in finishing:
            backlog.add(future)

    def _finish(self, out: ImageOutput) -> Record | None:
        try:
            return out.finish()
        finally:
            with self._lock:
                self._in_flight.discard(out)


class _CallerFailed(BaseException):
    """The caller's ``on_record`` raised while records were delivered from inside a batch's
    work: carried past the job's own handlers (a RuntimeError there means the forward pass
    failed) to :meth:`Engine.run`, which discards what is in flight and raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _step(owner: ImageOutput, step: Callable[..., Any], *args: Any) -> None:
    """A drawing step on its image's lane: an exception fails the image, which then ends as
    an error record, never as a record that lists what was not drawn."""
    try:
        step(*args)
    except Exception as err:
        owner.broken(err)


def _shape(result: Prepared | Record) -> tuple[int, ...] | None:
    return result.array.shape if isinstance(result, Prepared) else None


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


# --- the run around the engine ---------------------------------------------------------------


def pairs(plan: Plan, out_dir: Path) -> list[tuple[InputItem, Path]]:
    """(input, its folder) for every input this run does. Folders are named from the whole
    input list (``folders.output_dirs``), so every shard agrees on them."""
    dirs = folders.output_dirs(plan.items, out_dir)
    return [(plan.items[n], dirs[n]) for n in plan.mine]


Index = Callable[[Path, list[dict[str, Any]], str, list[Figure]], Path]


def run_images(
    work: ImageWork,
    pairs: Sequence[tuple[InputItem, Path]],
    out_dir: Path,
    shard: tuple[int, int] | None,
    events: Events,
    summary: Summary,
    *,
    index: Index,
    before: Callable[[str], list[Figure]] = lambda _suffix: [],
) -> Summary:
    """The per-image run: claim a manifest name in ``out_dir`` (another live run's leads to
    ``-2``, ``-3``... and a note), ``before(suffix)`` for run-wide pictures, the engine with
    ``manifest<suffix>.jsonl`` written as records come (each also goes to ``events.record``),
    and ``index(out_dir, records, name, figures)`` last. Fills and returns ``summary``.
    Raises OutputError when the run's own files cannot be written."""
    try:
        held = folders.claim_run(out_dir, shard, work.fingerprint)
    except folders.OtherOptions as other:
        who = files.another_run(other.pid)
        raise OutputError(
            f"{display(str(out_dir))}: {who} is writing here with other options; wait for it "
            "to end, give the same options, or choose another output folder"
        ) from None
    except OSError as err:
        raise OutputError(write_error(err.filename or out_dir, err)) from None
    try:
        if held.suffix != folders.run_suffix(shard):
            events.note(
                f"another run is writing {folders.index_name(folders.run_suffix(shard))} here; "
                f"this run's is {folders.index_name(held.suffix)}"
            )
        _run_files(work, pairs, out_dir, held.suffix, events, summary, index, before)
    finally:
        held.release()
    if not files.locks_supported():
        events.note(
            f"{display(str(out_dir))}: this file system has no locks; runs sharing it at the "
            "same time are not kept apart"
        )
    return summary


def _run_files(work, pairs, out_dir, suffix, events, summary, index, before) -> None:
    """The engine between the run's own files: run-wide pictures first, the manifest as it
    goes, the index last."""
    for name in (folders.manifest_name(suffix), folders.index_name(suffix)):
        files.clean_temporaries(out_dir, name)
    run_error: list[OutputError] = []
    try:
        figures = before(suffix)
        manifest = files.JsonLines(out_dir / folders.manifest_name(suffix))
    except OSError as err:
        raise OutputError(write_error(err.filename or out_dir, err)) from None

    def record_done(record: Record) -> None:
        status = record["status"]
        setattr(summary, status, getattr(summary, status) + 1)
        if not run_error:
            try:
                manifest.write(record)  # type: ignore[arg-type]
            except OSError as err:
                run_error.append(OutputError(write_error(manifest.path, err)))
        events.record(record)

    events.start(len(pairs))
    events.phase("images", len(pairs))
    engine = Engine(work, out_dir, record_done, lambda: bool(run_error) or events.should_stop())
    try:
        summary.complete = engine.run(pairs)
    except BaseException:
        manifest.abort()
        raise
    summary.disk_full = engine.disk_full
    if run_error:
        manifest.abort()
        raise run_error[0]
    try:
        summary.outputs["manifest"] = manifest.close()
        # "\n" alone ends a JSON line: names may hold U+2028 or U+0085, which splitlines() splits
        lines = summary.outputs["manifest"].read_text("utf-8").split("\n")
        records = [json.loads(line) for line in lines if line]
        summary.outputs["index"] = index(out_dir, records, folders.index_name(suffix), figures)
    except OSError as err:
        manifest.abort()
        raise OutputError(write_error(err.filename or out_dir, err)) from None
