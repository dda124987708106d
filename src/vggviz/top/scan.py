"""Pass 1 of ``vggviz top``, the scan: every input runs once; hooks reduce each map to one
value per channel and drop the map; a running top-K per channel is merged batch by batch, and
the images-by-channels values go to disk in float16 chunks, so memory does not grow with the
number of inputs. Checkpoints every N inputs let a killed scan resume. Also the merge of the
shards' partial results and the matrix written from every part's chunks.
"""

from __future__ import annotations

import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from vggviz.core import files, images, inputs, lifecycle
from vggviz.core.errors import InputError, VggvizError
from vggviz.core.inputs import InputItem
from vggviz.core.lifecycle import Events, Plan
from vggviz.core.text import few
from vggviz.model.hooks import capture, forward
from vggviz.model.layers import ConvLayer
from vggviz.model.loading import LoadedModel
from vggviz.top import checkpoint
from vggviz.top.checkpoint import Entry, Fingerprint, ScanState, Unreadable, changed_inputs
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


def _resumable(
    folder: Path,
    layers: Sequence[ConvLayer],
    work: Sequence[tuple[int, InputItem]],
    fingerprint: Fingerprint,
    entries: Sequence[Entry],
    events: Events,
) -> ScanState | None:
    """The checkpoint in ``folder`` when this scan can go on from it; otherwise None, and a
    note says why the scan starts over (other options, other inputs, damaged files)."""
    channels = {la.alias: la.module.out_channels for la in layers}
    why = None
    try:
        state = ScanState.load(folder)
        if state is None:
            return None
        if state.fingerprint.digest == fingerprint.digest:
            state.check(folder, len(work), len(entries), channels)
            return state
        if changed := fingerprint.difference(state.fingerprint):
            why = f"options changed since its checkpoint ({changed})"
        else:
            before = checkpoint.read_inputs(folder)
            why = f"inputs changed since its checkpoint ({changed_inputs(before, entries)})"
    except Unreadable as err:
        why = f"scan files unreadable ({err})"
    events.note(f"{folder}: {why}: starting over")
    return None


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
    entries: Sequence[Entry],
    shard: tuple[int, int] | None,
    events: Events,
) -> ScanState:
    """Pass 1 over ``work`` (input number, item), resumed from ``folder``'s checkpoint when
    it was made with the same fingerprint (the options, and every input in ``entries`` by
    path, size and mtime: a file changed or mended is scanned again). Returns the final
    state, complete unless ``events.should_stop()`` ended the scan early (polled between
    batches; the state is then checkpointed as it stands, for the next run to resume)."""
    files.clean_temporaries(folder)
    state = _resumable(folder, layers, work, fingerprint, entries, events)
    if state is not None and state.complete:
        events.note(f"{folder}: scan already complete ({state.scanned} inputs); not run again")
        return state
    if state is not None:
        events.note(f"{folder}: resuming the scan after {state.position} of {len(work)} inputs")
    else:
        checkpoint.clear(folder)
        checkpoint.write_inputs(folder, entries)
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
                    values[alias].append(checkpoint.to_float16(vals))
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


def partials(
    out_dir: Path,
    fingerprint: Fingerprint,
    entries: Sequence[Entry],
    plan: Plan,
    layers: Sequence[ConvLayer],
    held: ExitStack,
) -> list[tuple[Path, ScanState]]:
    """Every shard's complete scan in ``out_dir``, checked against this run's options and
    inputs, each shard held (in ``held``) while the merge reads it. What is wrong with the
    shards in ``out_dir`` is a VggvizError (exit 1), whatever it is."""
    found = checkpoint.shard_dirs(out_dir)
    if not found:
        raise VggvizError(
            f"nothing to merge: no shard results (top-scan-shard-K-of-N) in {out_dir}"
        )
    counts = sorted({n for _, n in found})
    if len(counts) != 1:
        kinds = few([str(count) for count in counts])
        raise VggvizError(f"cannot merge: {out_dir} holds shards of different counts {kinds}")
    n = counts[0]
    missing = sum(1 for k in range(1, n + 1) if (k, n) not in found)
    if missing:
        first = list(islice((f"{k}/{n}" for k in range(1, n + 1) if (k, n) not in found), 3))
        more = f" and {missing - len(first)} more" if missing > len(first) else ""
        raise VggvizError(f"cannot merge: shard(s) {', '.join(first)}{more} missing in {out_dir}")
    channels = {la.alias: la.module.out_channels for la in layers}
    parts = []
    for k in range(1, n + 1):
        folder = found[(k, n)]
        held.enter_context(claim_shard(out_dir, (k, n)))
        try:
            state = ScanState.load(folder)
            if state is not None and state.fingerprint.digest == fingerprint.digest:
                work = len(inputs.shard(plan.items, k, n))
                state.check(folder, work, len(entries), channels)
        except Unreadable as err:
            raise VggvizError(
                f"cannot merge: {folder}: scan files unreadable ({err}); run shard {k}/{n} again"
            ) from None
        if state is None or not state.complete:
            raise VggvizError(f"cannot merge: {folder}: shard {k}/{n} has not finished its scan")
        if state.fingerprint.digest != fingerprint.digest:
            changed = fingerprint.difference(state.fingerprint) or (
                f"inputs: {changed_inputs(checkpoint.read_inputs(folder), entries)}"
            )
            raise VggvizError(
                f"cannot merge: {folder}: shard {k}/{n} was made with other options or inputs "
                f"({changed})"
            )
        parts.append((folder, state))
    return parts


def claim_shard(out_dir: Path, shard: tuple[int, int]) -> lifecycle.OutputClaim:
    """Hold shard K/N's scan: a second live run of the same shard (or a merge reading it) is
    refused; other shards go on at the same time."""
    k, n = shard
    return lifecycle.claim_outputs(out_dir, f"top-shard-{k}-of-{n}", f"shard {k}/{n}")


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
    ``top-matrix/inputs.json`` (the input of each row), from every part's chunks; the
    matrices of layers this run does not have are removed."""
    try:
        numbers = np.sort(
            np.concatenate(
                [c["rows"] for folder, s in parts for c in _chunk_rows(folder, s.chunks)]
                or [np.zeros(0, np.int64)]
            )
        )
        folder = lifecycle.real_folder(out_dir / MATRIX_DIR, out_dir)
        for stale in folder.glob("conv*.npy"):
            if stale.stem not in {layer.alias for layer in layers}:
                stale.unlink()
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
    except (ValueError, KeyError, zipfile.BadZipFile) as err:  # a chunk damaged inside
        raise VggvizError(
            f"{', '.join(str(f) for f, _ in parts)}: scan files unreadable ({err}); "
            "remove the folder to scan again"
        ) from None
    files.save_json([str(items[n].path) for n in numbers], folder / "inputs.json")
    return paths


def _chunk_rows(folder: Path, count: int) -> Iterator[dict[str, np.ndarray]]:
    for number in range(1, count + 1):
        with checkpoint.open_npz(checkpoint.chunk_path(folder, number)) as chunk:
            yield {"rows": chunk["rows"]}
