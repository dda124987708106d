"""The ``features`` job in one call, on the shared lifecycle (:mod:`vggviz.core.lifecycle`):
check the style and the memory before torch, plan the inputs, prepare the output folder, load
the model, then the per-image engine (:mod:`vggviz.core.per_image`) with the filters picture
first and the manifest and index last. Raises vggviz errors only; the command line parses,
calls :func:`run` once, shows progress and maps errors to exit codes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, BinaryIO

from vggviz.core import folders, lifecycle, memory, per_image, values
from vggviz.core.errors import UsageError
from vggviz.core.lifecycle import Events, Summary
from vggviz.features.request import JOB, Request, style_for

__all__ = ["Request", "run"]


def run(request: Request, events: Events | None = None, stdin: BinaryIO | None = None) -> Summary:
    """Do the whole job; see the module's docstring."""
    from vggviz.core.drawing import check_colormap

    events = events or Events()
    style = style_for(request)
    try:
        check_colormap(style["cmap"])
    except ValueError as err:
        raise UsageError(f"{err}; see matplotlib's colormap list", param="cmap") from None
    grid = values.parse_grid(request.grid)
    memory.check_memory(  # before anything heavy is loaded: a size of 4000 must not take 9 GB
        request.model.arch_bound(),
        request.size,
        batch_size=request.batch_size,
        mode=request.mode,
        save_raw=request.save_raw,
        tiles=None if grid == "all" else grid[0] * grid[1],
    )
    from vggviz.features import engine, index_page, pictures
    from vggviz.model.layers import chosen_layers
    from vggviz.model.loading import load

    started = lifecycle.begin(request, JOB, events, lambda: load(request.model), stdin)
    plan, summary, loaded = started.plan, started.summary, started.model
    stage = request.stage if request.mode == "network" else None
    layers = chosen_layers(loaded.layers, request.layers, stage)
    shaping = {
        **lifecycle.model_identity(request.model, loaded.arch),
        "mode": request.mode,
        "stage": stage,
        "size": request.size,
        "normalize": request.normalize,
        "layers": [layer.alias for layer in layers],
        **style,
        "raw": request.save_raw,
        "overview": request.overview,
    }
    work = engine.FeaturesWork(
        loaded,
        layers,
        mode=request.mode,
        stage=request.stage,
        style=pictures.Style(**style),
        save_raw=request.save_raw,
        overview=request.overview,
        fingerprint=folders.fingerprint(shaping),
        size=request.size,
        normalize=request.normalize,
        batch_size=request.batch_size,
        skip_existing=request.skip_existing,
    )
    run_info = {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "mode": request.mode,
        "stage": stage or "-",
        "device": str(loaded.device),
        "precision": request.model.precision,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }

    def filters(suffix: str) -> list[per_image.Figure]:
        if not request.filters:
            return []
        first = loaded.layers[0]
        path = pictures.draw_filters(loaded, first, request.out_dir, suffix=suffix)
        return [(f"{first.alias} filters of this model", path)]

    def index(out_dir: Path, records: list[Any], name: str, figures: list[Any]) -> Path:
        counts = {"done": summary.ok, "failed": summary.error, "skipped": summary.skipped}
        return index_page.write_index(
            out_dir,
            records,
            title=f"vggviz: {loaded.arch}",
            run_info={**run_info, **{k: str(v) for k, v in counts.items()}},
            name=name,
            figures=figures,
        )

    pairs = per_image.pairs(plan, request.out_dir)
    return per_image.run_images(
        work, pairs, request.out_dir, plan.shard, events, summary, index=index, before=filters
    )
