"""Getting feature maps out of the model: every forward hook vggviz uses lives here.

One hook context, :func:`capture`, serves every job: it keeps each chosen layer's map (or
hands it over as soon as it is computed), or reduces it on the spot to one value per channel
and drops it (the scan of ``vggviz top``); either way the forward stops right after the last
chosen layer. :func:`network_maps` and :func:`reduced_maps` are one forward under it;
:func:`chain_maps` is the tutorial's conv-only chain (chain mode), which needs no hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np
import torch
from torch import nn

from vggviz.model.layers import ConvLayer

__all__ = ["capture", "chain_maps", "forward", "network_maps", "reduced_maps"]


class _Done(Exception):
    """Raised by the last hook: nothing after the last conv is needed, so stop the forward."""


Reduced = tuple[np.ndarray, np.ndarray]  # values (B, C) float32, flat argmax (B, C) int64


@contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[ConvLayer],
    stage: str,
    on_map: Callable[[ConvLayer, torch.Tensor], None] | None = None,
    reduce: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Forward hooks on each layer's module at ``stage``, removed however the block ends.

    - keep (the default): each map goes into the yielded dict by alias, or to ``on_map`` as
      soon as it is computed (so drawing can start early). A map is cloned only when an
      in-place module comes next (VGG's ReLU would overwrite a conv or BN output captured
      before it); the ReLU's own output is never written again, so the relu stage is handed
      over as is.
    - ``reduce`` ("max" or "mean"): each (B, C, H, W) map becomes, in the dict, (values (B, C)
      float32, flat argmax (B, C) int64) at once, and no map is kept. Reading the map inside
      the hook needs no clone: VGG's in-place ReLU runs later. Values stay within float32's
      range (:func:`finite`), so a ranking or a JSON file never holds inf or NaN.

    The last hook raises to end the forward; run it with :func:`forward`.
    """
    modules = dict(model.named_modules())
    maps: dict[str, Any] = {}
    handles = []
    last = layers[-1].alias if layers else None

    def hook_for(layer: ConvLayer, copy: bool):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if reduce is not None:
                maps[layer.alias] = _reduced(output.detach(), reduce)
            else:
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
            copy = reduce is None and followed_in_place(model, name)
            handles.append(modules[name].register_forward_hook(hook_for(layer, copy)))
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def _reduced(output: torch.Tensor, reduce: str) -> Reduced:
    flat = output.flatten(2)
    if reduce == "max":
        values, where = flat.max(dim=2)
    else:
        values, where = flat.mean(dim=2, dtype=torch.float32), flat.argmax(dim=2)
    return finite(values.float().cpu().numpy()), where.cpu().numpy()


def finite(values: np.ndarray) -> np.ndarray:
    """float32 values within float32's range: inf (weights that overflow) becomes the largest
    float32 and NaN the lowest, so that a ranking stays total and JSON can hold every value."""
    top = np.finfo(np.float32).max
    return np.nan_to_num(values.astype(np.float32, copy=False), nan=-top, posinf=top, neginf=-top)


def forward(model: nn.Module, x: torch.Tensor) -> None:
    """One forward of ``x`` for the hooks of :func:`capture`: eval mode, inference mode, and
    stopped right after the last hooked layer (the classifier never runs)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), suppress(_Done):
            model(x)
    finally:
        model.train(was_training)


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
    """The network's real activations for batch ``x`` (see :func:`capture` and
    :func:`forward`). With ``on_map``, each map goes to it in layer order instead of into the
    returned dict."""
    with capture(model, layers, stage, on_map) as maps:
        forward(model, x)
    return maps


def reduced_maps(
    model: nn.Module, layers: Sequence[ConvLayer], x: torch.Tensor, stage: str, reduce: str
) -> dict[str, Reduced]:
    """Each layer's map of batch ``x`` reduced to (values, flat argmax) per channel (see
    :func:`capture`); no map is kept."""
    with capture(model, layers, stage, reduce=reduce) as out:
        forward(model, x)
    return out


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
