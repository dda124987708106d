"""The ``top`` job: for every channel of the chosen layers, the K inputs that excite it most
across a folder, each cut to the receptive field of its strongest unit (Zeiler & Fergus 2014).

Pass 1 (the scan) runs every input once. Hooks reduce each map to one value per channel
(its spatial max and where it is, or its mean) and drop the map; a running top-K per channel
is merged batch by batch, and the images-by-channels values go to disk in float16 chunks,
so memory does not grow with the number of inputs. Checkpoints every N inputs let a killed
scan resume; ``shard`` scans a deterministic part and stops, and ``merge`` combines the
parts into exactly the state of one run. Pass 2 (:mod:`vggviz.top.crops`) runs each chosen
input once more, checks its values and cuts the crops; then top.json, the pages, the
channel strips and index.html are written.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vggviz.core import files, images, inputs
from vggviz.core.errors import InputError, UsageError, VggvizError
from vggviz.core.inputs import InputItem
from vggviz.core.vocabulary import REDUCES, ModelSpec
from vggviz.model.layers import ConvLayer
from vggviz.model.loading import LoadedModel
from vggviz.top import checkpoint
from vggviz.top.checkpoint import Fingerprint, ScanState
from vggviz.top.ranking import ChannelStats, TopK, channel_stats

if TYPE_CHECKING:
    from vggviz.top.crops import LayerCrops

TOP_JSON = "top.json"
MATRIX_DIR = "top-matrix"
_LOOKAHEAD = 4  # inputs decoded ahead of the network on a second thread


@dataclass(frozen=True)
class TopOptions:
    """Everything about a top run except the model and the inputs."""

    stage: str = "relu"
    reduce: str = "max"
    k: int = 9
    size: int = 224
    normalize: bool = True
    highlight: bool = False
    batch_size: int = 1
    checkpoint_every: int = 100

    def check(self) -> None:
        if self.reduce not in REDUCES:
            raise UsageError(f"--reduce {self.reduce!r}: expected one of {', '.join(REDUCES)}")
        if self.k < 1:
            raise UsageError(f"--top {self.k}: need at least 1")
        if self.batch_size < 1 or self.checkpoint_every < 1:
            raise UsageError("batch size and checkpoint interval must be at least 1")


class TopEvents:
    """What a top run tells its caller as it goes; the default ignores everything."""

    def phase(self, name: str, total: int, done: int = 0) -> None:
        """A phase begins: ``scan`` (inputs), ``crops`` (inputs run again) or ``pictures``
        (channels drawn)."""

    def advance(self, count: int = 1) -> None:
        """``count`` more items of the current phase are finished."""

    def failed(self, message: str) -> None:
        """One input could not be used (the run goes on)."""

    def note(self, message: str) -> None:
        """Something worth a line: resuming, starting over, a scan already complete."""


@dataclass
class TopResult:
    scanned: int  # inputs whose values are in the result
    failed: list[str] = field(default_factory=list)  # one message per input that failed
    scan_dir: Path | None = None  # a shard's partial result
    top_json: Path | None = None
    index: Path | None = None  # None for a shard's partial result


@dataclass(frozen=True)
class TopRequest:
    """Everything ``vggviz top`` was asked to do (the command line's options, parsed)."""

    images: Sequence[str]
    out_dir: Path = Path("outputs")
    model: ModelSpec = field(default_factory=ModelSpec)
    layers: str = "all"
    options: TopOptions = field(default_factory=TopOptions)
    shard: str | None = None
    merge: bool = False


def run(request: TopRequest, events: TopEvents | None = None, stdin: Any = None) -> TopResult:
    """The job in one call: find the inputs (never inside ``out_dir``), load the model, then
    :func:`run_top`. Folders that could not be listed are in the result's ``failed``."""
    from vggviz.model.layers import select_layers
    from vggviz.model.loading import load

    events = events or TopEvents()
    request.options.check()
    shard = inputs.parse_shard(request.shard) if request.shard else None
    found = inputs.find_images(request.images, stdin=stdin, exclude=request.out_dir)
    if passed := inputs.passed_over(found):
        events.note(passed)
    for problem in found.problems:
        events.failed(str(problem))
    loaded, note = load(request.model)
    if note:
        events.note(note)
    result = run_top(
        loaded,
        select_layers(loaded.layers, request.layers),
        found.items,
        request.options,
        request.out_dir,
        shard=shard,
        merge=request.merge,
        events=events,
    )
    result.failed[:0] = [str(p) for p in found.problems]
    return result


def run_top(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    items: Sequence[InputItem],
    options: TopOptions,
    out_dir: Path,
    *,
    shard: tuple[int, int] | None = None,
    merge: bool = False,
    events: TopEvents | None = None,
) -> TopResult:
    """The whole job. ``items`` is the full input list, in order (an input's number is its
    position, which breaks ties). With ``shard`` only that part is scanned and the partial
    result is left in ``out_dir``; with ``merge`` the partial results of every shard in
    ``out_dir`` are combined instead of scanning. Otherwise the scan (resumed from its
    checkpoint when there is one) is followed by pass 2 and all outputs."""
    options.check()
    if shard and merge:
        raise UsageError("--merge combines the shards' results; it takes no --shard")
    if not items:
        raise UsageError("no inputs")
    events = events or TopEvents()
    for layer in layers:
        layer.stage_module(options.stage)  # refuse --stage bn without BatchNorm now
    fingerprint = Fingerprint.of(_fingerprint_options(loaded, layers, options), _paths(items))
    if merge:
        parts = _partials(out_dir, fingerprint)
    else:
        numbered = list(enumerate(items))
        if shard:
            mine = {id(item) for item in inputs.shard(items, *shard)}
            numbered = [(n, item) for n, item in numbered if id(item) in mine]
        folder = checkpoint.scan_dir(out_dir, shard)
        state = _scan(loaded, layers, numbered, options, folder, fingerprint, shard, events)
        if shard:
            return TopResult(state.scanned, state.failed, scan_dir=folder)
        parts = [(folder, state)]
    return _finish(loaded, layers, items, options, out_dir, parts, events)


def _paths(items: Sequence[InputItem]) -> list[str]:
    return [f"{item.source}\0{item.rel}\0{item.path}" for item in items]


def _fingerprint_options(
    loaded: LoadedModel, layers: Sequence[ConvLayer], options: TopOptions
) -> dict[str, Any]:
    """The options that change the scan's numbers (not --highlight, not the interval)."""
    chosen = asdict(options)
    del chosen["highlight"], chosen["checkpoint_every"]
    return {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "precision": str(loaded.dtype).removeprefix("torch."),
        "layers": [layer.alias for layer in layers],
        **chosen,
    }


# --- pass 1: the scan ------------------------------------------------------------------------


class _Stop(Exception):
    """Raised after the last hooked layer: nothing after it is needed."""


@contextmanager
def reducing_hooks(
    model: nn.Module, layers: Sequence[ConvLayer], stage: str, reduce: str
) -> Iterator[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Forward hooks that reduce each layer's (B, C, H, W) map at ``stage`` as soon as it is
    computed to (values (B, C) float32, flat argmax (B, C) int64) in the yielded dict, keeping
    no map. Reading the map inside the hook needs no clone: VGG's in-place ReLU runs later."""
    modules = dict(model.named_modules())
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    last = layers[-1].alias

    def hook_for(alias: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            flat = output.detach().flatten(2)
            if reduce == "max":
                values, where = flat.max(dim=2)
            else:
                values, where = flat.mean(dim=2, dtype=torch.float32), flat.argmax(dim=2)
            out[alias] = (values.float().cpu().numpy(), where.cpu().numpy())
            if alias == last:
                raise _Stop

        return hook

    handles = [
        modules[layer.stage_module(stage)].register_forward_hook(hook_for(layer.alias))
        for layer in layers
    ]
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


def reduce_batch(
    loaded: LoadedModel, x: torch.Tensor, out: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """One forward of batch ``x`` under :func:`reducing_hooks` (which fill ``out``)."""
    out.clear()
    with torch.inference_mode(), suppress(_Stop):
        loaded.model(x.to(loaded.device, loaded.dtype))


def _decode(path: Path, size: int, normalize: bool) -> torch.Tensor | InputError:
    try:
        photo = images.resize_for_model(images.load_rgb(path), size)
    except InputError as err:
        return err
    return torch.from_numpy(images.to_array(photo, normalize))


def _decoded(
    work: Sequence[tuple[int, InputItem]], options: TopOptions, pool: ThreadPoolExecutor
) -> Iterator[tuple[int, InputItem, torch.Tensor | InputError]]:
    """Inputs decoded in order, a few ahead on ``pool`` (Pillow releases the GIL)."""
    pending: deque[tuple[int, InputItem, Future[torch.Tensor | InputError]]] = deque()
    upcoming = iter(work)

    def submit() -> None:
        for number, item in upcoming:
            future = pool.submit(_decode, item.path, options.size, options.normalize)
            pending.append((number, item, future))
            return

    for _ in range(_LOOKAHEAD):
        submit()
    while pending:
        number, item, future = pending.popleft()
        submit()
        yield number, item, future.result()


def _batches(
    work: Sequence[tuple[int, InputItem]], options: TopOptions, pool: ThreadPoolExecutor
) -> Iterator[tuple[list[tuple[int, torch.Tensor]], list[str]]]:
    """(batch of (input number, tensor), failure messages) groups, in input order: images of
    equal size up to ``batch_size``; each group is what one step consumes."""
    batch: list[tuple[int, torch.Tensor]] = []
    for number, _item, decoded in _decoded(work, options, pool):
        if isinstance(decoded, InputError):
            yield batch, [str(decoded)]
            batch = []
            continue
        if batch and (len(batch) >= options.batch_size or batch[0][1].shape != decoded.shape):
            yield batch, []
            batch = []
        batch.append((number, decoded))
    if batch:
        yield batch, []


def _scan(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    work: Sequence[tuple[int, InputItem]],
    options: TopOptions,
    folder: Path,
    fingerprint: Fingerprint,
    shard: tuple[int, int] | None,
    events: TopEvents,
) -> ScanState:
    """Pass 1 over ``work`` (input number, item), resumed from ``folder``'s checkpoint when
    it was made with the same fingerprint; returns the final (complete) state."""
    folder.mkdir(parents=True, exist_ok=True)
    files.clean_temporaries(folder)
    state = ScanState.load(folder)
    if state is not None and state.fingerprint.digest != fingerprint.digest:
        events.note(
            f"{folder}: options changed since its checkpoint "
            f"({fingerprint.difference(state.fingerprint)}): starting over"
        )
        state = None
    elif state is not None and state.complete:
        events.note(f"{folder}: scan already complete ({state.scanned} inputs); not run again")
        return state
    elif state is not None:
        events.note(f"{folder}: resuming the scan after {state.position} of {len(work)} inputs")
    if state is None:
        checkpoint.clear(folder)
        tops = {la.alias: TopK.empty(la.module.out_channels, options.k) for la in layers}
        state = ScanState(fingerprint, shard, tops)
    checkpoint.drop_chunks_after(folder, state.chunks)  # written, but a kill came first

    events.phase("scan", len(work), state.position)
    rows: list[int] = []
    values: dict[str, list[np.ndarray]] = {la.alias: [] for la in layers}
    since_checkpoint = 0

    def save_checkpoint(complete: bool = False) -> None:
        if rows:
            state.chunks += 1
            stacked = {alias: np.concatenate(v) for alias, v in values.items()}
            checkpoint.write_chunk(folder, state.chunks, np.asarray(rows), stacked)
            rows.clear()
            for v in values.values():
                v.clear()
        state.complete = complete
        state.save(folder)

    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="vggviz-decode") as pool,
        reducing_hooks(loaded.model, layers, options.stage, options.reduce) as out,
    ):
        for batch, failures in _batches(work[state.position :], options, pool):
            if batch:
                reduce_batch(loaded, torch.stack([t for _, t in batch]), out)
                numbers = np.asarray([n for n, _ in batch], np.int64)
                for alias, (vals, where) in out.items():
                    state.tops[alias].add(vals, numbers, where)
                    values[alias].append(vals.astype(np.float16))
                rows.extend(numbers.tolist())
                state.scanned += len(batch)
            for message in failures:
                state.failed.append(message)
                events.failed(message)
            consumed = len(batch) + len(failures)
            state.position += consumed
            since_checkpoint += consumed
            events.advance(consumed)
            if since_checkpoint >= options.checkpoint_every:
                save_checkpoint()
                since_checkpoint = 0
    save_checkpoint(complete=True)
    return state


# --- merging partial results -------------------------------------------------------------


def _partials(out_dir: Path, fingerprint: Fingerprint) -> list[tuple[Path, ScanState]]:
    """Every shard's complete scan in ``out_dir``, checked against this run's options."""
    found = checkpoint.shard_dirs(out_dir)
    if not found:
        raise UsageError(f"--merge: no shard results (top-scan-shard-K-of-N) in {out_dir}")
    counts = {n for _, n in found}
    if len(counts) != 1:
        raise UsageError(f"--merge: {out_dir} holds shards of different counts {sorted(counts)}")
    n = counts.pop()
    missing = [f"{k}/{n}" for k in range(1, n + 1) if (k, n) not in found]
    if missing:
        raise VggvizError(f"--merge: shard(s) {', '.join(missing)} missing in {out_dir}")
    parts = []
    for k in range(1, n + 1):
        folder = found[(k, n)]
        state = ScanState.load(folder)
        if state is None or not state.complete:
            raise VggvizError(f"{folder}: shard {k}/{n} has not finished its scan")
        if state.fingerprint.digest != fingerprint.digest:
            raise UsageError(
                f"{folder}: shard {k}/{n} was made with other options or inputs "
                f"({fingerprint.difference(state.fingerprint)})"
            )
        parts.append((folder, state))
    return parts


def _merged_tops(parts: Sequence[tuple[Path, ScanState]]) -> dict[str, TopK]:
    tops = {
        alias: TopK(t.values.copy(), t.inputs.copy(), t.locations.copy())
        for alias, t in parts[0][1].tops.items()
    }
    for _, state in parts[1:]:
        for alias, top in state.tops.items():
            tops[alias].merge(top)
    return tops


def _write_matrix(
    parts: Sequence[tuple[Path, ScanState]],
    layers: Sequence[ConvLayer],
    items: Sequence[InputItem],
    out_dir: Path,
) -> dict[str, Path]:
    """``top-matrix/<alias>.npy`` (images x channels, float16, rows in input order) and
    ``top-matrix/inputs.json`` (the input of each row), from every part's chunks."""
    numbers = np.sort(
        np.concatenate(
            [c["rows"] for folder, s in parts for c in _chunk_rows(folder, s.chunks)]
            or [np.zeros(0, np.int64)]
        )
    )
    folder = out_dir / MATRIX_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for layer in layers:
        path = folder / f"{layer.alias}.npy"
        tmp = path.with_name(f".{path.name}{files.TMP_SUFFIX}")
        shape = (len(numbers), layer.module.out_channels)
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        for part_folder, state in parts:
            for chunk in checkpoint.read_chunks(part_folder, state.chunks):
                matrix[np.searchsorted(numbers, chunk["rows"])] = chunk[layer.alias]
        matrix.flush()
        del matrix
        tmp.replace(path)
        paths[layer.alias] = path
    files.save_json([str(items[n].path) for n in numbers], folder / "inputs.json")
    return paths


def _chunk_rows(folder: Path, count: int) -> Iterator[dict[str, np.ndarray]]:
    for number in range(1, count + 1):
        with np.load(checkpoint.chunk_path(folder, number), allow_pickle=False) as chunk:
            yield {"rows": chunk["rows"]}


# --- finishing: statistics, pass 2, outputs ----------------------------------------------


def _finish(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    items: Sequence[InputItem],
    options: TopOptions,
    out_dir: Path,
    parts: Sequence[tuple[Path, ScanState]],
    events: TopEvents,
) -> TopResult:
    from vggviz.top.crops import draw_outputs, run_pass2

    scanned = sum(state.scanned for _, state in parts)
    failed = [message for _, state in parts for message in state.failed]
    if scanned == 0:
        raise VggvizError("no input could be read; nothing to rank")
    tops = _merged_tops(parts)
    matrices = _write_matrix(parts, layers, items, out_dir)
    started = time.perf_counter()
    crops = run_pass2(loaded, layers, tops, items, options, out_dir, events)
    result: dict[str, Any] = {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "stage": options.stage,
        "reduce": options.reduce,
        "size": options.size,
        "normalize": options.normalize,
        "images": scanned,
        "failed": len(failed),
        "k": options.k,
        "layers": {},
    }
    try:
        for layer in layers:
            matrix = np.load(matrices[layer.alias], mmap_mode="r")
            stats = channel_stats(matrix)
            del matrix
            result["layers"][layer.alias] = _layer_json(
                layer, tops[layer.alias], stats, crops.layers[layer.alias], items
            )
        index = draw_outputs(loaded, layers, result, crops, options, out_dir, events)
    finally:
        crops.discard()
    top_json = files.save_json(result, out_dir / TOP_JSON)  # last: its presence means done
    seconds = time.perf_counter() - started
    events.note(f"pass 2: {crops.reruns} input(s) run again, crops and pictures in {seconds:.1f} s")
    return TopResult(scanned, failed, top_json=top_json, index=index)


def _number(value: float) -> float:
    """Six significant digits: what float32 values mean, without their noise."""
    return float(f"{value:.6g}")


def _layer_json(
    layer: ConvLayer,
    top: TopK,
    stats: ChannelStats,
    crops: LayerCrops,
    items: Sequence[InputItem],
) -> dict[str, Any]:
    channels = []
    for c in range(top.values.shape[0]):
        entries = []
        for r in range(top.k):
            number = int(top.inputs[c, r])
            if number == np.iinfo(np.int64).max:
                break
            entries.append(
                {
                    "input": str(items[number].path),
                    "value": _number(float(top.values[c, r])),
                    "location": [int(v) for v in crops.locations[c][r]],
                    "box": [int(v) for v in crops.boxes[c][r]],
                }
            )
        best = float(top.values[c, 0]) if entries else 0.0
        channels.append(
            {
                "channel": c,
                "dead_fraction": _number(float(stats.dead_fraction[c])),
                "mean": _number(float(stats.mean[c])),
                "max": _number(best),
                "histogram": {
                    "edges": [_number(float(e)) for e in stats.edges[c]],
                    "counts": [int(n) for n in stats.counts[c]],
                },
                "top": entries,
            }
        )
    return {
        "module": layer.name,
        "receptive_field": {"size": crops.field.size, "jump": crops.field.jump},
        "channels": channels,
    }
