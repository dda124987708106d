"""Getting feature maps out of the model: the real forward pass (network mode) or the
tutorial's conv-only chain (chain mode)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

import torch
from torch import nn

from vggviz.core.vocabulary import MODES
from vggviz.model.layers import ConvLayer

__all__ = ["MODES", "capture", "chain_maps", "network_maps"]


class _Done(Exception):
    """Raised by the last hook: nothing after the last conv is needed, so stop the forward."""


@contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[ConvLayer],
    stage: str,
    on_map: Callable[[ConvLayer, torch.Tensor], None] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that store each layer's map at ``stage`` in the yielded dict (by alias),
    or hand it to ``on_map`` as soon as it is computed (so drawing can start early).

    A captured tensor is cloned only when an in-place module comes next (VGG's ReLU would
    overwrite a conv or BN output captured before it); the ReLU's own output is never written
    again, so the default relu stage is handed over as is. The hooks are removed however the
    block ends.
    """
    modules = dict(model.named_modules())
    maps: dict[str, torch.Tensor] = {}
    handles = []
    last = layers[-1].alias if layers else None

    def hook_for(layer: ConvLayer, copy: bool):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            fmap = output.detach().clone() if copy else output.detach()
            if on_map is None:
                maps[layer.alias] = fmap
            else:
                on_map(layer, fmap)
            if layer.alias == last:
                raise _Done

        return hook

    try:
        for layer in layers:
            name = layer.stage_module(stage)
            copy = followed_in_place(model, name)
            handles.append(modules[name].register_forward_hook(hook_for(layer, copy)))
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def followed_in_place(model: nn.Module, name: str) -> bool:
    """Whether the module run right after ``name`` may overwrite its output: the next leaf
    (``named_modules`` order, VGG's execution order) has ``inplace=True``. Unknown is yes."""
    leaves = [n for n, m in model.named_modules() if not list(m.children())]
    if name not in leaves:
        return True
    position = leaves.index(name)
    if position + 1 == len(leaves):
        return False
    following = model.get_submodule(leaves[position + 1])
    return bool(getattr(following, "inplace", False))


def network_maps(
    model: nn.Module,
    layers: Sequence[ConvLayer],
    x: torch.Tensor,
    stage: str = "relu",
    on_map: Callable[[ConvLayer, torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The network's real activations for batch ``x``: eval mode, inference mode, and the
    forward stopped right after the last requested layer (the classifier never runs).

    With ``on_map``, each map goes to it in layer order instead of into the returned dict.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), capture(model, layers, stage, on_map) as maps, suppress(_Done):
            model(x)
    finally:
        model.train(was_training)
    return maps


def chain_maps(
    all_layers: Sequence[ConvLayer], x: torch.Tensor, wanted: Sequence[ConvLayer] | None = None
) -> Iterator[tuple[ConvLayer, torch.Tensor]]:
    """The tutorial's computation: ``x`` through the conv modules only, one after the other
    (no BatchNorm, ReLU or pooling), every map at full input resolution.

    ``all_layers`` is the model's full conv list (every conv feeds the next); only the
    ``wanted`` ones are yielded, one at a time, so that a caller can draw each and let it go:
    holding all 13 full-resolution maps is what makes the tutorial need gigabytes.
    """
    indices = {layer.index for layer in (all_layers if wanted is None else wanted)}
    last = max(indices, default=0)
    with torch.inference_mode():
        for layer in all_layers:
            if layer.index > last:
                break
            x = layer.module(x)
            if layer.index in indices:
                yield layer, x
