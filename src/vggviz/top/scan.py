"""Pass 1 of ``vggviz top``, the scan: every input runs once; hooks reduce each map to one
value per channel and drop the map; a running top-K per channel is merged batch by batch, and
the images-by-channels values go to disk in float16 chunks, so memory does not grow with the
number of inputs. Checkpoints every N inputs let a killed scan resume. Also the merge of the
shards' partial results and the matrix written from every part's chunks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from vggviz.core import files, images, inputs
from vggviz.core.errors import InputError, VggvizError
from vggviz.core.inputs import InputItem
from vggviz.core.lifecycle import Events
from vggviz.model.hooks import capture, forward
from vggviz.model.layers import ConvLayer
from vggviz.model.loading import LoadedModel
from vggviz.top import checkpoint
from vggviz.top.checkpoint import Fingerprint, ScanState
from vggviz.top.ranking import TopK
from vggviz.top.request import MATRIX_DIR, TopOptions

_LOOKAHEAD = 4  # inputs decoded ahead of the network on a second thread


def _decode(path: Path, size: int, normalize: bool) -> torch.Tensor | InputError:
    try:
        _photo, array = images.for_model(path, size, normalize)
    except InputError as err:
        return err
    return torch.from_numpy(array)


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


def _shape(decoded: tuple[int, InputItem, torch.Tensor | InputError]) -> tuple[int, ...] | None:
    tensor = decoded[2]
    return None if isinstance(tensor, InputError) else tuple(tensor.shape)


def scan(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    work: Sequence[tuple[int, InputItem]],
    options: TopOptions,
    folder: Path,
    fingerprint: Fingerprint,
    shard: tuple[int, int] | None,
    events: Events,
) -> ScanState:
    """Pass 1 over ``work`` (input number, item), resumed from ``folder``'s checkpoint when
    it was made with the same fingerprint. Returns the final state, complete unless
    ``events.should_stop()`` ended the scan early (polled between batches; the state is then
    checkpointed as it stands, for the next run to resume)."""
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
        capture(loaded.model, layers, options.stage, reduce=options.reduce) as out,
    ):
        decoded = _decoded(work[state.position :], options, pool)
        for batch, failed in inputs.batch_by_shape(decoded, options.batch_size, _shape):
            failures = [str(error) for _, _, error in failed]
            if batch:
                out.clear()
                x = torch.stack([t for _, _, t in batch]).to(loaded.device, loaded.dtype)
                forward(loaded.model, x)
                numbers = np.asarray([n for n, _, _ in batch], np.int64)
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
            if events.should_stop():  # between batches: what is done is kept
                break
            if since_checkpoint >= options.checkpoint_every:
                save_checkpoint()
                since_checkpoint = 0
    save_checkpoint(complete=state.position >= len(work))
    return state


# --- merging partial results -------------------------------------------------------------


def partials(out_dir: Path, fingerprint: Fingerprint) -> list[tuple[Path, ScanState]]:
    """Every shard's complete scan in ``out_dir``, checked against this run's options. What
    is wrong with the shards in ``out_dir`` is a VggvizError (exit 1), whatever it is."""
    found = checkpoint.shard_dirs(out_dir)
    if not found:
        raise VggvizError(
            f"nothing to merge: no shard results (top-scan-shard-K-of-N) in {out_dir}"
        )
    counts = {n for _, n in found}
    if len(counts) != 1:
        raise VggvizError(
            f"cannot merge: {out_dir} holds shards of different counts {sorted(counts)}"
        )
    n = counts.pop()
    missing = [f"{k}/{n}" for k in range(1, n + 1) if (k, n) not in found]
    if missing:
        raise VggvizError(f"cannot merge: shard(s) {', '.join(missing)} missing in {out_dir}")
    parts = []
    for k in range(1, n + 1):
        folder = found[(k, n)]
        state = ScanState.load(folder)
        if state is None or not state.complete:
            raise VggvizError(f"cannot merge: {folder}: shard {k}/{n} has not finished its scan")
        if state.fingerprint.digest != fingerprint.digest:
            raise VggvizError(
                f"cannot merge: {folder}: shard {k}/{n} was made with other options or inputs "
                f"({fingerprint.difference(state.fingerprint)})"
            )
        parts.append((folder, state))
    return parts


def merged_tops(parts: Sequence[tuple[Path, ScanState]]) -> dict[str, TopK]:
    tops = {
        alias: TopK(t.values.copy(), t.inputs.copy(), t.locations.copy())
        for alias, t in parts[0][1].tops.items()
    }
    for _, state in parts[1:]:
        for alias, top in state.tops.items():
            tops[alias].merge(top)
    return tops


def write_matrix(
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
