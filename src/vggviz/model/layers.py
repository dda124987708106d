"""Conv-layer discovery: every Conv2d of a model, in execution order, with a friendly alias."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from vggviz.core.errors import UsageError

__all__ = ["ConvLayer", "chosen_layers", "find_conv_layers", "select_layers"]


@dataclass(frozen=True)
class ConvLayer:
    """One conv layer and the modules that follow it before the next conv.

    ``bn`` and ``relu`` are the module names (``named_modules()`` keys) of the BatchNorm and
    ReLU that post-process this conv's output, or None when the architecture has none.
    """

    index: int  # 1-based position among the model's convs
    name: str  # module name, e.g. "features.0"
    module: nn.Conv2d
    bn: str | None
    relu: str | None

    @property
    def alias(self) -> str:
        return f"conv{self.index}"

    def stage_module(self, stage: str) -> str:
        """Module name whose output is this layer's map at ``stage``."""
        if stage == "conv":
            return self.name
        target = self.bn if stage == "bn" else self.relu
        if target is None:
            raise UsageError(
                f"{self.alias} ({self.name}) has no {stage.upper()} after it; "
                f"choose conv" + ("" if stage == "bn" else " or bn"),
                param="stage",
            )
        return target


def find_conv_layers(model: nn.Module) -> list[ConvLayer]:
    """Walk the model's children recursively (``named_modules`` order, which is VGG's
    execution order) and pair each Conv2d with the BatchNorm2d and ReLU that follow it."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    layers: list[ConvLayer] = []
    for pos, (name, module) in enumerate(leaves):
        if not isinstance(module, nn.Conv2d):
            continue
        bn = relu = None
        for next_name, next_module in leaves[pos + 1 :]:
            if isinstance(next_module, nn.Conv2d):
                break
            if bn is None and relu is None and isinstance(next_module, nn.BatchNorm2d):
                bn = next_name
            elif relu is None and isinstance(next_module, nn.ReLU):
                relu = next_name
        layers.append(ConvLayer(len(layers) + 1, name, module, bn, relu))
    return layers


def select_layers(layers: Sequence[ConvLayer], spec: str) -> list[ConvLayer]:
    """Layers named by ``spec``: "all", or a comma list of aliases (conv3), module names
    (features.7), 1-based numbers (3) and ranges (conv1-conv4, 1-4)."""
    if spec.strip().lower() == "all":
        return list(layers)
    by_key: dict[str, ConvLayer] = {}
    for layer in layers:
        by_key[layer.alias] = layer
        by_key[layer.name] = layer
        by_key[str(layer.index)] = layer
    chosen: list[ConvLayer] = []
    for part in (p.strip().lower() for p in spec.split(",")):
        if not part:
            continue
        if "-" in part and part not in by_key:
            lo, _, hi = part.partition("-")
            first, last = _lookup(by_key, lo, layers), _lookup(by_key, hi, layers)
            picked = [la for la in layers if first.index <= la.index <= last.index]
        else:
            picked = [_lookup(by_key, part, layers)]
        chosen.extend(la for la in picked if la not in chosen)
    if not chosen:
        raise UsageError(f"no layer selected by {spec!r}")
    return sorted(chosen, key=lambda la: la.index)


def chosen_layers(
    layers: Sequence[ConvLayer], spec: str, stage: str | None = None
) -> list[ConvLayer]:
    """:func:`select_layers`, refusing now (UsageError) a ``stage`` one of them lacks (bn in a
    model without BatchNorm), before any work is done."""
    chosen = select_layers(layers, spec)
    if stage is not None:
        for layer in chosen:
            layer.stage_module(stage)
    return chosen


def _lookup(by_key: dict[str, ConvLayer], key: str, layers: Sequence[ConvLayer]) -> ConvLayer:
    key = key.strip()
    if key in by_key:
        return by_key[key]
    raise UsageError(
        f"unknown layer {key!r}: this model has conv1..conv{len(layers)} "
        f"({layers[0].name} .. {layers[-1].name})"
    )
