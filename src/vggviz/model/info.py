"""``vggviz info``: the tutorial's model print made useful, computed on the meta device
(shapes and parameter counts need no weights and no memory)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vggviz.model.hooks import network_maps
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


def describe(arch: str, height: int = 224, width: int = 224) -> ModelInfo:
    model = build(arch, "meta").eval()
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
    trainable = [(n, p.numel()) for n, p in model.named_parameters() if id(p) not in frozen]
    return ModelInfo(
        arch,
        (height, width),
        rows,
        total_params=sum(p.numel() for p in model.parameters()),
        conv_params=sum(r.params for r in rows),
        frozen_params=sum(p.numel() for p in extractor.parameters()),
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
    out += [
        "",
        f"parameters: {info.total_params:,} in all, {info.conv_params:,} in the conv layers",
        f"feature extractor frozen: {info.frozen_params:,} parameters frozen; "
        f"{trainable:,} would still learn (the classifier):",
    ]
    out += [f"  {name:<24} {count:>12,}" for name, count in info.trainable]
    return "\n".join(out)
