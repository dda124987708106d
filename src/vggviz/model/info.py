"""``vggviz info``: the tutorial's model print made useful, computed on the meta device
(shapes and parameter counts need no weights and no memory), and, for a weights file, what
was found in it: its form, architecture, head, classes and what was left out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vggviz.core.vocabulary import DEFAULT_ARCH
from vggviz.model.architectures import Head, read_head
from vggviz.model.checkpoints import read_checkpoint
from vggviz.model.contents import Contents, examine
from vggviz.model.hooks import network_maps
from vggviz.model.imagenet import IMAGENET_WEIGHTS
from vggviz.model.layers import ConvLayer, find_conv_layers
from vggviz.model.loading import build


@dataclass(frozen=True)
class ConvRow:
    alias: str
    module: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    output: tuple[int, int, int]  # C, H, W at the conv's output
    params: int


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    input_size: tuple[int, int]
    rows: list[ConvRow]
    total_params: int
    conv_params: int
    frozen_params: int  # everything under the feature extractor
    trainable: list[tuple[str, int]]  # what would still learn with the features frozen


def describe(
    arch: str,
    height: int = 224,
    width: int = 224,
    *,
    head: Head | None = None,
    trainable: list[tuple[str, int]] | None = None,
) -> ModelInfo:
    """The conv table of ``arch`` with torchvision's classifier, or with ``head``; or with
    ``trainable`` (name, count) as what lies past the features (a head that cannot be built,
    or none: ``[]``)."""
    model = build(arch, "meta", head).eval()
    layers = find_conv_layers(model)
    shapes = _output_shapes(model, layers, height, width)
    rows = [
        ConvRow(
            la.alias,
            la.name,
            la.module.in_channels,
            la.module.out_channels,
            _pair(la.module.kernel_size),
            _pair(la.module.stride),
            _pair(la.module.padding),
            shapes[la.alias],
            sum(p.numel() for p in la.module.parameters()),
        )
        for la in layers
    ]
    extractor = _feature_extractor(model, layers)
    frozen = {id(p) for p in extractor.parameters()}
    frozen_params = sum(p.numel() for p in extractor.parameters())
    if trainable is None:
        trainable = [(n, p.numel()) for n, p in model.named_parameters() if id(p) not in frozen]
    return ModelInfo(
        arch,
        (height, width),
        rows,
        total_params=frozen_params + sum(n for _, n in trainable),
        conv_params=sum(r.params for r in rows),
        frozen_params=frozen_params,
        trainable=trainable,
    )


def _pair(value: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _output_shapes(
    model: nn.Module, layers: list[ConvLayer], h: int, w: int
) -> dict[str, tuple[int, ...]]:
    # each conv's own output ("conv" stage, so architectures without BN work too)
    maps = network_maps(model, layers, torch.empty(1, 3, h, w, device="meta"), "conv")
    return {alias: tuple(t.shape[1:]) for alias, t in maps.items()}


def _feature_extractor(model: nn.Module, layers: list[ConvLayer]) -> nn.Module:
    """The smallest child of the model holding every conv (``features`` for VGG)."""
    convs = {id(la.module) for la in layers}
    for child in model.children():
        if convs <= {id(m) for m in child.modules()}:
            return child
    return model


def format_info(info: ModelInfo) -> str:
    h, w = info.input_size
    head = ("layer", "module", "in -> out", "kernel", "stride/pad", "output (C x H x W)", "params")
    body = [
        (
            r.alias,
            r.module,
            f"{r.in_channels} -> {r.out_channels}",
            f"{r.kernel[0]}x{r.kernel[1]}",
            f"{r.stride[0]}/{r.padding[0]}",
            f"{r.output[0]} x {r.output[1]} x {r.output[2]}",
            f"{r.params:,}",
        )
        for r in info.rows
    ]
    widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head))]
    right = {2, 6}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    out = [f"{info.arch}: {len(info.rows)} conv layers, input 3 x {h} x {w}", "", line(head)]
    out.append("  ".join("-" * wd for wd in widths))
    out += [line(r) for r in body]
    trainable = sum(n for _, n in info.trainable)
    what = "(the classifier):" if info.trainable else "(there is no classifier)"
    out += [
        "",
        f"parameters: {info.total_params:,} in all, {info.conv_params:,} in the conv layers",
        f"feature extractor frozen: {info.frozen_params:,} parameters frozen; "
        f"{trainable:,} would still learn {what}",
    ]
    out += [f"  {name:<24} {count:>12,}" for name, count in info.trainable]
    return "\n".join(out)


# --- What a weights file holds -------------------------------------------------------------------


@dataclass
class WeightsInfo:
    """What ``vggviz info --weights`` reports: the weights, then the model's table."""

    weights: str  # the file, or imagenet / random
    arch: str
    arch_from: str  # "file" (found from its tensors), "option" or "default"
    form: str  # how it was stored, for a person
    model: ModelInfo
    contents: Contents | None = None  # None for imagenet and random
    head: Head | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> int | None:
        return self.head.outputs if self.head else None


def describe_weights(
    weights: str, arch: str | None = None, *, size: int = 224, trust: bool = False
) -> WeightsInfo:
    """Read ``weights`` (shapes only: nothing is loaded) and say what it holds."""
    if weights in ("imagenet", "random"):
        arch_name = arch or DEFAULT_ARCH
        model = describe(arch_name, size, size)
        shapes = {n: tuple(p.shape) for n, p in build(arch_name).named_parameters()}
        form = (
            f"torchvision's ImageNet weights ({IMAGENET_WEIGHTS})"
            if weights == "imagenet"
            else "torchvision's random init"
        )
        return WeightsInfo(
            weights,
            arch_name,
            "option" if arch else "default",
            form,
            model,
            None,
            read_head(shapes),
        )
    contents = examine(read_checkpoint(weights, trust=trust), arch)
    if contents.head is not None:
        model = describe(contents.arch, size, size, head=contents.head)
    else:
        model = describe(contents.arch, size, size, trainable=contents.trainable())
    return WeightsInfo(
        weights,
        contents.arch,
        "file" if contents.detected else "option",
        contents.checkpoint.form.describe(),
        model,
        contents,
        contents.head,
        contents.notes,
    )


def format_weights(info: WeightsInfo) -> str:
    """The report as lines of ``label  value``, then the model's table."""
    contents = info.contents
    arch = {"file": "found from its tensors", "option": "as asked", "default": "the default"}
    rows = [
        ("weights", info.weights),
        ("form", info.form),
        ("arch", f"{info.arch} ({arch[info.arch_from]})"),
    ]
    if contents is not None:
        dtypes = contents.checkpoint.dtype_names
        cast = "" if dtypes == ["float32"] else " (cast to the run's precision)"
        rows.append(("dtype", " and ".join(dtypes) + cast))
    rows.append(("head", _head_text(info)))
    rows.append(("classes", _classes_text(info)))
    if contents is not None:
        rows += [("ignored", item) for item in contents.checkpoint.ignored] or [
            ("ignored", "nothing")
        ]
    rows += [("note", note) for note in info.notes]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    return "\n".join([*lines, "", format_info(info.model)])


def _head_text(info: WeightsInfo) -> str:
    if info.head is not None:
        layers = ", ".join(layer.describe() for layer in info.head.layers)
        presumed = (
            "; layers without weights presumed (their kind is not in the file)"
            if info.head.presumed
            else ""
        )
        return f"{layers}{presumed}"
    problem = info.contents.head_problem if info.contents else None
    if problem:
        return f"cannot be rebuilt ({problem}); only the commands that run it need it"
    return "none (the conv layers' weights only)"


def _classes_text(info: WeightsInfo) -> str:
    if info.classes is None:
        return "none (no head)"
    contents = info.contents
    if contents is None:
        return f"{info.classes} (ImageNet's)"
    names = contents.class_names
    if not names:
        return f"{info.classes} (no names stored in the file)"
    return f"{info.classes}: {', '.join(names)} (from {contents.checkpoint.names_from})"


def weights_json(info: WeightsInfo) -> dict[str, Any]:
    """The report as one JSON-ready object."""
    contents = info.contents
    checkpoint = contents.checkpoint if contents else None
    form = checkpoint.form if checkpoint else None
    head = info.head
    return {
        "weights": info.weights,
        "arch": info.arch,
        "arch_from": info.arch_from,
        "form": {
            "text": info.form,
            "format": form.format if form else None,
            "wrapper": form.wrapper if form else None,
            "prefixes_removed": list(form.removed) if form else [],
            "prefix_added": form.added if form else None,
        },
        "dtype": checkpoint.dtype_names if checkpoint else ["float32"],
        "head": None
        if head is None
        else {
            "layers": [
                {
                    "name": la.name,
                    "kind": la.kind,
                    "inputs": la.inputs,
                    "outputs": la.outputs,
                    "bias": la.bias if la.outputs is not None else None,
                    "presumed": la.presumed,
                }
                for la in head.layers
            ],
            "outputs": head.outputs,
        },
        "head_problem": contents.head_problem if contents else None,
        "classes": info.classes,
        "class_names": contents.class_names if contents else None,
        "class_names_from": checkpoint.names_from if checkpoint and contents.class_names else None,
        "ignored": checkpoint.ignored if checkpoint else [],
        "notes": info.notes,
        "parameters": {
            "total": info.model.total_params,
            "conv": info.model.conv_params,
            "frozen": info.model.frozen_params,
        },
        "trainable": [{"name": n, "params": c} for n, c in info.model.trainable],
        "layers": [
            {
                "alias": r.alias,
                "module": r.module,
                "in": r.in_channels,
                "out": r.out_channels,
                "output": list(r.output),
                "params": r.params,
            }
            for r in info.model.rows
        ],
    }
