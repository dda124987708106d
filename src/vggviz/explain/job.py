"""The ``explain`` job in one call, on the shared lifecycle (:mod:`vggviz.core.lifecycle`):
check the options and the memory before torch (class names too, where they do not depend on
the model), plan the inputs, prepare the output folder, load the model with its head, name
its classes and resolve the ones asked for, then the per-image engine
(:mod:`vggviz.core.per_image`) with the manifest and index last. Raises vggviz errors only;
the command line parses, calls :func:`run` once, shows progress and maps errors to exit codes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from vggviz.core import folders, lifecycle, per_image
from vggviz.core.errors import UsageError
from vggviz.core.lifecycle import Events, Summary
from vggviz.explain import labels
from vggviz.explain import memory as explain_memory
from vggviz.explain.request import JOB, Names, Request

if TYPE_CHECKING:
    from vggviz.model.layers import ConvLayer
    from vggviz.model.loading import LoadedModel

__all__ = ["Request", "run"]

FORMAT = 1  # of explain's pictures and records: bump to redo folders made by older versions


def run(request: Request, events: Events | None = None, stdin: BinaryIO | None = None) -> Summary:
    """Do the whole job; see the module's docstring."""
    events = events or Events()
    request.check()
    early = _early_names(request)
    if early is not None and request.classes:
        labels.resolve_classes(request.classes, early)  # an unknown name: before torch
    arch = request.model.arch_bound()
    explain_memory.check_memory(  # before anything heavy is loaded
        arch,
        request.size,
        layer=explain_memory.layer_number(request.layer, arch),
        classes=len(request.classes) or request.top,
        batch_size=request.batch_size,
        weights=request.model.weights,
    )
    from vggviz.explain import engine, index_page
    from vggviz.explain.gradcam import head_outputs
    from vggviz.model.loading import load

    started = lifecycle.begin(request, JOB, events, lambda: load(request.model, head=True), stdin)
    plan, summary, loaded = started.plan, started.summary, started.model
    layer = _layer(loaded.layers, request.layer, request.stage)
    count = loaded.classes or head_outputs(loaded.model)
    names = _names(request, loaded, count, early)
    classes = labels.resolve_classes(request.classes, names.names) if request.classes else None
    shaping = {
        **lifecycle.model_identity(request.model, loaded.arch),
        "job": JOB,
        "explain_format": FORMAT,
        "size": request.size,
        "normalize": request.normalize,
        "layer": layer.alias,
        "stage": request.stage,
        "top": request.top,
        "classes": classes,
        "names": _digest(names.names),
        "raw": request.save_raw,
        "check": request.deletion_check,
    }
    work = engine.ExplainWork(
        loaded,
        layer,
        names,
        stage=request.stage,
        top=request.top,
        classes=classes,
        save_raw=request.save_raw,
        check=request.deletion_check,
        fingerprint=folders.fingerprint(shaping),
        size=request.size,
        normalize=request.normalize,
        batch_size=request.batch_size,
        skip_existing=request.skip_existing,
    )
    run_info = {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "layer": f"{layer.alias} ({work.cam.module_name}), {request.stage}",
        "classes": f"{count} ({names.source} names)",
        "explained": (
            ", ".join(names.names[c] for c in classes) if classes else f"top {request.top}"
        ),
        "device": str(loaded.device),
        "precision": request.model.precision,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }

    def index(out_dir: Path, records: list[Any], name: str, _figures: list[Any]) -> Path:
        counts = {"done": summary.ok, "failed": summary.error, "skipped": summary.skipped}
        return index_page.write_index(
            out_dir,
            records,
            title=f"vggviz explain: {loaded.arch}",
            run_info={**run_info, **{k: str(v) for k, v in counts.items()}},
            name=name,
        )

    pairs = per_image.pairs(plan, request.out_dir)
    return per_image.run_images(
        work, pairs, request.out_dir, plan.shard, events, summary, index=index
    )


def _early_names(request: Request) -> list[str] | None:
    """The class names, when they can be known without the model: a labels file's, or
    ImageNet's for ImageNet and random weights (both torch-free)."""
    imagenet = request.model.weights in ("imagenet", "random")
    if request.labels is not None:
        if imagenet:  # the head is ImageNet's: its size is known too
            return labels.class_names(labels.IMAGENET_CLASSES, labels=request.labels)
        return labels.read_labels(request.labels)
    return list(labels.imagenet_names()) if imagenet else None


def _names(request: Request, loaded: LoadedModel, count: int, early: list[str] | None) -> Names:
    if request.labels is not None:
        return Names(labels.class_names(count, labels=request.labels), "labels")
    if loaded.class_names is not None:
        return Names(labels.class_names(count, stored=loaded.class_names), "checkpoint")
    if loaded.imagenet_head and count == labels.IMAGENET_CLASSES:
        return Names(early or list(labels.imagenet_names()), "imagenet")
    return Names(labels.class_names(count), "numbers")


def _layer(layers: Sequence[ConvLayer], spec: str | None, stage: str) -> ConvLayer:
    """The one conv layer ``spec`` names (None: the last), checked to have ``stage``."""
    from vggviz.model.layers import select_layers

    if spec is None:
        layer = layers[-1]
    else:
        try:
            picked = select_layers(layers, spec)
        except UsageError as err:
            raise UsageError(str(err), param="layer") from None
        if len(picked) != 1:
            raise UsageError(
                f"{spec!r} names {len(picked)} layers; explain one at a time", param="layer"
            )
        layer = picked[0]
    layer.stage_module(stage)
    return layer


def _digest(names: Sequence[str]) -> str:
    """The class names, for the fingerprint: a renamed class is another picture."""
    return hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()
