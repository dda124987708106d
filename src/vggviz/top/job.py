"""The ``top`` job: for every channel of the chosen layers, the K inputs that excite it most
across a folder, each cut to the receptive field of its strongest unit (Zeiler & Fergus 2014).

Pass 1 (the scan) runs every input once. Hooks reduce each map to one value per channel
(its spatial max and where it is, or its mean) and drop the map; a running top-K per channel
is merged batch by batch, and the images-by-channels values go to disk in float16 chunks,
so memory does not grow with the number of inputs. Checkpoints every N inputs let a killed
scan resume; ``shard`` scans a deterministic part and stops, and ``merge`` combines the
parts into exactly the state of one run (:mod:`vggviz.top.scan`). Pass 2
(:mod:`vggviz.top.crops`) runs each chosen input once more, checks its values and cuts the
crops; then the pages, the channel strips and index.html (:mod:`vggviz.top.pictures`) and,
last, top.json are written.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vggviz.core import files, lifecycle, memory
from vggviz.core.errors import UsageError, VggvizError
from vggviz.core.inputs import InputItem
from vggviz.core.lifecycle import Events, Plan, Summary
from vggviz.top import checkpoint
from vggviz.top.checkpoint import Entry, Fingerprint, ScanState
from vggviz.top.index_page import INDEX_NAME
from vggviz.top.ranking import ChannelStats, TopK, channel_stats
from vggviz.top.request import JOB, MATRIX_DIR, SCRATCH_PREFIX, TOP_JSON, TopOptions, TopRequest

if TYPE_CHECKING:  # torch: imported when a run needs it, so that refusals stay instant
    from vggviz.model.layers import ConvLayer
    from vggviz.model.loading import LoadedModel
    from vggviz.top.crops import LayerCrops

__all__ = ["TopOptions", "TopRequest", "run", "run_top"]


def run(request: TopRequest, events: Events | None = None, stdin: Any = None) -> Summary:
    """The job in one call, on the shared lifecycle (:mod:`vggviz.core.lifecycle`): check the
    options, plan the inputs (never inside ``out_dir``), prepare the output folder, load the
    model, then :func:`run_top`."""
    events = events or Events()
    options = request.options
    options.check()
    # before anything heavy is loaded: a size of 4096 must not end in an allocation error
    memory.check_scan_memory(
        request.model.arch_bound(), options.size, batch_size=options.batch_size
    )
    if request.shard and request.merge:
        raise UsageError("a merge combines every shard's result and takes no shard", param="shard")

    from vggviz.model.layers import chosen_layers
    from vggviz.model.loading import load

    started = lifecycle.begin(request, JOB, events, lambda: load(request.model), stdin)
    plan, summary, loaded = started.plan, started.summary, started.model
    layers = chosen_layers(loaded.layers, request.layers, request.options.stage)
    return run_top(
        loaded,
        layers,
        plan,
        request.options,
        request.out_dir,
        model=lifecycle.model_identity(request.model, loaded.arch),
        merge=request.merge,
        events=events,
        summary=summary,
    )


def run_top(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    plan: Plan,
    options: TopOptions,
    out_dir: Path,
    *,
    model: dict[str, str],
    merge: bool = False,
    events: Events | None = None,
    summary: Summary | None = None,
) -> Summary:
    """Everything after the model is loaded. ``plan.items`` is the full input list, in order
    (an input's number is its position, which breaks ties); ``model`` is the model's identity
    (:func:`vggviz.core.lifecycle.model_identity`), part of the scan's fingerprint. With
    ``plan.shard`` only that part is scanned and the partial result is left in ``out_dir``;
    with ``merge`` the partial results of every shard in ``out_dir`` are combined instead of
    scanning. Otherwise the scan (resumed from its checkpoint when there is one) is followed
    by pass 2 and all outputs.

    The output folder's contract: a shard holds its own scan folder, a full run or a merge
    the whole folder (a second live run is refused, naming its pid); no folder of top's is
    followed through a link; before anything changes top.json and index.html go (they mark
    a finished run) and the scratch of dead runs is swept; top.json is written last. Any OS
    error is one line naming the path and the reason."""
    from vggviz.top.scan import claim_shard, partials, scan

    options.check()
    items = plan.items
    if not items:
        raise UsageError("no inputs")
    events = events or Events()
    summary = summary or Summary(total=len(plan.mine))
    summary.unit, summary.done_word, summary.skips = "input(s)", "scanned", False
    summary.resume = "run the same command again to resume the scan"
    events.start(len(plan.mine))
    entries = [_entry(item) for item in items]
    fingerprint = Fingerprint.of(_fingerprint_options(model, layers, options), entries)
    with ExitStack() as held, lifecycle.os_errors(out_dir):
        if plan.shard:
            held.enter_context(claim_shard(out_dir, plan.shard))
        else:
            held.enter_context(lifecycle.claim_outputs(out_dir, JOB, "top's outputs"))
            _unfinish(out_dir, merge)
        if merge:
            parts = partials(out_dir, fingerprint, entries, plan, layers, held)
        else:
            folder = lifecycle.real_folder(checkpoint.scan_dir(out_dir, plan.shard), out_dir)
            work = plan.work()
            state = scan(
                loaded, layers, work, options, folder, fingerprint, entries, plan.shard, events
            )
            summary.ok, summary.error = state.scanned, len(state.failed)
            if not state.complete:
                summary.complete = False
                return summary
            if plan.shard:
                summary.outputs["partial"] = folder
                return summary
            parts = [(folder, state)]
        return _finish(loaded, layers, items, options, out_dir, parts, events, summary)


def _unfinish(out_dir: Path, merge: bool) -> None:
    """Before a full run or a merge changes anything: its folders real (never a planted
    link), the marks of a finished run gone, the scratch and temporaries of dead runs swept
    (the claim on the folder says no live run owns them)."""
    from vggviz.top.pictures import PAGES_DIR, STRIPS_DIR

    names = [MATRIX_DIR, PAGES_DIR, STRIPS_DIR] + ([] if merge else [checkpoint.SCAN_DIR])
    for name in names:
        lifecycle.real_folder(out_dir / name, out_dir)
    for name in (TOP_JSON, INDEX_NAME):
        (out_dir / name).unlink(missing_ok=True)
    files.clean_temporaries(out_dir)
    for entry in os.scandir(out_dir):
        if entry.name.startswith(SCRATCH_PREFIX):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)  # removes links inside, never what they point to
            else:
                os.unlink(entry.path)


def _entry(item: InputItem) -> Entry:
    """An input as the scan's fingerprint knows it: where it was found and, when it can be
    read, its real path, size and mtime (a file changed or mended is another input)."""
    ident = lifecycle.identity(item.path)
    where = [str(item.path), item.source, str(item.rel)]
    return where if ident is None else [*where, ident["path"], ident["size"], ident["mtime_ns"]]


def _fingerprint_options(
    model: dict[str, str], layers: Sequence[ConvLayer], options: TopOptions
) -> dict[str, Any]:
    """What changes the scan's numbers: the model (its weights by file identity, so that
    another file of the same name is another scan) and the options (not the highlight, not
    the checkpoint interval)."""
    chosen = asdict(options)
    del chosen["highlight"], chosen["checkpoint_every"]
    return {**model, "layers": [layer.alias for layer in layers], **chosen}


def _finish(
    loaded: LoadedModel,
    layers: Sequence[ConvLayer],
    items: Sequence[InputItem],
    options: TopOptions,
    out_dir: Path,
    parts: Sequence[tuple[Path, ScanState]],
    events: Events,
    summary: Summary,
) -> Summary:
    from vggviz.top.crops import run_pass2
    from vggviz.top.pictures import draw_outputs
    from vggviz.top.scan import merged_tops, write_matrix

    scanned = sum(state.scanned for _, state in parts)
    failed = [message for _, state in parts for message in state.failed]
    if scanned == 0:
        raise VggvizError("no input could be read; nothing to rank")
    summary.ok, summary.error = scanned, len(failed)
    if scanned < options.k:
        events.note(
            f"{scanned} input(s) scanned, fewer than the {options.k} per channel asked for: "
            f"each channel shows {scanned}"
        )
    tops = merged_tops(parts)
    matrices = write_matrix(parts, layers, items, out_dir)
    started = time.perf_counter()
    crops = run_pass2(loaded, layers, tops, items, options, out_dir, events)
    if crops is None:  # stopped
        summary.complete = False
        return summary
    result: dict[str, Any] = {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "stage": options.stage,
        "reduce": options.reduce,
        "size": options.size,
        "normalize": options.normalize,
        "images": scanned,
        "failed": len(failed),
        "k": min(options.k, scanned),  # the slots every picture has
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
    if index is None:  # stopped
        summary.complete = False
        return summary
    top_json = files.save_json(result, out_dir / TOP_JSON)  # last: its presence means done
    seconds = time.perf_counter() - started
    events.note(f"pass 2: {crops.reruns} input(s) run again, crops and pictures in {seconds:.1f} s")
    summary.outputs.update(result=top_json, index=index)
    return summary


def _number(value: float) -> float:
    """Six significant digits: what float32 values mean, without their noise; within
    float32's range, so that JSON can hold it (the scan clamps values already)."""
    if not math.isfinite(value):
        value = 0.0 if math.isnan(value) else math.copysign(float(np.finfo(np.float32).max), value)
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
