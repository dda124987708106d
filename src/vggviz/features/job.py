"""The ``features`` job in one call: plan the inputs and their folders, pick the style for
the mode, load the model, run the engine, and write the run's manifest, index and filters
picture. Raises vggviz errors only; the command line parses, calls :func:`run` once, shows
progress and maps errors to exit codes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from vggviz.core import folders, inputs, memory, values
from vggviz.core.errors import OutputError, UsageError, write_error
from vggviz.core.folders import Record
from vggviz.core.vocabulary import IMAGENET_FILES, STYLE_DEFAULTS, ModelSpec


@dataclass(frozen=True)
class Request:
    """Everything ``vggviz features`` was asked to do (the CLI's options, parsed)."""

    images: Sequence[str]
    out_dir: Path = Path("outputs")
    model: ModelSpec = field(default_factory=ModelSpec)
    mode: str = "network"
    stage: str = "relu"
    size: int = 224
    normalize: bool = True
    layers: str = "all"
    select: str | None = None  # None: the mode's default (STYLE_DEFAULTS)
    grid: str = "4x4"
    cmap: str | None = None
    scale: str | None = None
    overlay: bool = False
    overview: bool = True
    filters: bool = True
    save_raw: bool = False
    batch_size: int = 1
    skip_existing: bool = False
    shard: str | None = None


@dataclass
class Summary:
    """How a run went, for the closing line and the exit code."""

    total: int  # inputs this run (or shard) had to do
    ok: int = 0
    error: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # folders that could not be listed
    complete: bool = True  # False: stopped early (a signal, a full disk, stdout gone)
    disk_full: str | None = None
    index: Path | None = None
    manifest: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.ok + self.error + self.skipped

    def line(self) -> str:
        return f"{self.ok} done, {self.error} failed, {self.skipped} skipped"


@dataclass(frozen=True)
class Hooks:
    """How the job talks back to its caller while it runs."""

    on_record: Callable[[Record], None] = lambda _record: None
    on_start: Callable[[int], None] = lambda _total: None  # model loaded, N inputs to go
    on_note: Callable[[str], None] = lambda _text: None
    should_stop: Callable[[], bool] = lambda: False


def style_for(request: Request) -> dict[str, Any]:
    """The picture options, with the mode's defaults where none were given."""
    defaults = STYLE_DEFAULTS[request.mode]
    return {
        "select": request.select or defaults["select"],
        "grid": request.grid.strip().lower(),
        "cmap": request.cmap or defaults["cmap"],
        "scale": request.scale or defaults["scale"],
        "overlay": request.overlay,
    }


def weights_identity(arch: str, weights: str, seed: int) -> str:
    """What the weights are, for the fingerprint: a file is known by path, size and mtime."""
    if weights == "random":
        return f"random:{seed}"
    if weights == "imagenet":
        return f"imagenet:{IMAGENET_FILES[arch]}"
    try:
        st = os.stat(weights)
    except OSError:
        return f"file:{weights}"
    return f"file:{os.path.realpath(weights)}:{st.st_size}:{st.st_mtime_ns}"


def prepare_output(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it writable now, before any model is loaded."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir, prefix=".vggviz-probe"):
            pass
    except OSError as err:
        raise OutputError(write_error(err.filename or out_dir, err)) from None


def plan(
    request: Request, stdin: BinaryIO | None = None
) -> tuple[list[tuple[inputs.InputItem, Path]], inputs.Discovery, tuple[int, int] | None]:
    """The (input, folder) pairs this run does, what discovery found, and the shard."""
    shard = inputs.parse_shard(request.shard) if request.shard else None
    found = inputs.find_images(request.images, stdin=stdin, exclude=request.out_dir)
    dirs = folders.output_dirs(found.items, request.out_dir)
    work = list(zip(found.items, dirs, strict=True))
    if shard:
        mine = {id(item) for item in inputs.shard(found.items, *shard)}
        work = [(item, folder) for item, folder in work if id(item) in mine]
    return work, found, shard


def run(request: Request, hooks: Hooks = Hooks(), stdin: BinaryIO | None = None) -> Summary:
    """Do the whole job; see the module's docstring."""
    from vggviz.core.drawing import check_colormap

    style = style_for(request)
    try:
        check_colormap(style["cmap"])
    except ValueError as err:
        raise UsageError(f"{err}; see matplotlib's colormap list", param="cmap") from None
    grid = values.parse_grid(request.grid)
    memory.check_memory(  # before anything heavy is loaded: --size 4000 must not take 9 GB
        request.model.arch_bound(),
        request.size,
        batch_size=request.batch_size,
        mode=request.mode,
        save_raw=request.save_raw,
        tiles=None if grid == "all" else grid[0] * grid[1],
    )
    work, found, shard = plan(request, stdin)
    prepare_output(request.out_dir)
    if passed := inputs.passed_over(found):
        hooks.on_note(passed)
    summary = Summary(total=len(work), problems=[str(p) for p in found.problems])

    from vggviz.features import engine, pictures
    from vggviz.model.layers import select_layers
    from vggviz.model.loading import load

    spec = request.model
    loaded, note = load(spec)
    if note:
        hooks.on_note(note)
    layers = select_layers(loaded.layers, request.layers)
    if request.mode == "network":
        for layer in layers:
            layer.stage_module(request.stage)  # refuse bn on a model without BatchNorm now
    shaping = {
        "arch": loaded.arch,
        "weights": weights_identity(loaded.arch, spec.weights, spec.seed),
        "mode": request.mode,
        "stage": request.stage if request.mode == "network" else None,
        "size": request.size,
        "normalize": request.normalize,
        "layers": [layer.alias for layer in layers],
        **style,
        "precision": spec.precision,
        "raw": request.save_raw,
        "overview": request.overview,
    }
    job = engine.Job(
        mode=request.mode,
        stage=request.stage,
        size=request.size,
        normalize=request.normalize,
        style=pictures.Style(**style),
        save_raw=request.save_raw,
        overview=request.overview,
        batch_size=request.batch_size,
        skip_existing=request.skip_existing,
        fingerprint=folders.fingerprint(shaping),
    )
    run_info = {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "mode": request.mode,
        "stage": request.stage if request.mode == "network" else "-",
        "device": str(loaded.device),
        "precision": spec.precision,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    try:
        held = folders.claim_run(request.out_dir, shard)
    except OSError as err:
        raise OutputError(write_error(request.out_dir, err)) from None
    try:
        if held.suffix != folders.run_suffix(shard):
            hooks.on_note(
                f"another run is writing {folders.index_name(folders.run_suffix(shard))} here; "
                f"this run's is {folders.index_name(held.suffix)}"
            )
        _write_run(loaded, layers, work, job, request, held.suffix, run_info, summary, hooks)
    finally:
        held.release()
    if not folders.locks_supported():
        hooks.on_note(
            f"{request.out_dir}: this file system has no locks; runs sharing it at the same "
            "time are not kept apart"
        )
    return summary


def _write_run(loaded, layers, work, job, request, suffix, run_info, summary, hooks) -> None:
    """The engine between the run's own files: filters first, manifest as it goes, index last."""
    from vggviz.core import files
    from vggviz.features import engine, index_page
    from vggviz.features.filters import draw_filters

    out_dir = request.out_dir
    for name in (folders.manifest_name(suffix), folders.index_name(suffix)):
        files.clean_temporaries(out_dir, name)
    figures = []
    run_error: list[OutputError] = []
    try:
        if request.filters:
            first = loaded.layers[0]
            path = draw_filters(loaded, first, out_dir, suffix=suffix)
            figures.append((f"{first.alias} filters of this model", path))
        manifest = files.JsonLines(out_dir / folders.manifest_name(suffix))
    except OSError as err:
        raise OutputError(write_error(err.filename or out_dir, err)) from None

    def record_done(record: Record) -> None:
        status = record["status"]
        setattr(summary, status, getattr(summary, status) + 1)
        if not run_error:
            try:
                manifest.write(record)
            except OSError as err:
                run_error.append(OutputError(write_error(manifest.path, err)))
        hooks.on_record(record)

    hooks.on_start(len(work))
    try:
        complete, disk_full = engine.run(
            loaded,
            layers,
            work,
            job,
            out_dir,
            record_done,
            should_stop=lambda: bool(run_error) or hooks.should_stop(),
        )
    except BaseException:
        manifest.abort()
        raise
    summary.complete, summary.disk_full = complete, disk_full
    if run_error:
        manifest.abort()
        raise run_error[0]
    try:
        summary.manifest = manifest.close()
        lines = summary.manifest.read_text("utf-8").splitlines()
        info = {
            **run_info,
            "done": str(summary.ok),
            "failed": str(summary.error),
            "skipped": str(summary.skipped),
        }
        summary.index = index_page.write_index(
            out_dir,
            [json.loads(line) for line in lines],
            title=f"vggviz: {loaded.arch}",
            run_info=info,
            name=folders.index_name(suffix),
            figures=figures,
        )
    except OSError as err:
        manifest.abort()
        raise OutputError(write_error(err.filename or out_dir, err)) from None
