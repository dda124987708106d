"""vggviz from Python: a model, a photo's feature maps, and the pictures the command line draws.

For notebooks. The maps are the same numbers ``vggviz features --save-raw`` writes to
``maps.npz``, and the pictures are drawn by the same code as the command line's PNGs::

    import vggviz

    model = vggviz.load_model("vgg16_bn", weights="imagenet")   # or your own nn.Module
    maps = vggviz.feature_maps(model, "cat.jpg")                  # {"conv1": (C, H, W), ...}
    vggviz.layer_picture(maps, "conv5").save("conv5.png")
    vggviz.filters_picture(model).save("filters.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vggviz.core import images
from vggviz.core.errors import UsageError
from vggviz.core.vocabulary import MODES, STYLE_DEFAULTS
from vggviz.features import pictures
from vggviz.model import loading
from vggviz.model.hooks import chain_maps, network_maps
from vggviz.model.layers import ConvLayer, chosen_layers, find_conv_layers, select_layers

__all__ = ["FeatureMaps", "feature_maps", "filters_picture", "layer_picture", "load_model"]

# what the pictures' titles say about a model vggviz did not load
_USER_MODEL = "your model"


def load_model(
    arch: str | None = None,
    weights: str = "imagenet",
    seed: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    *,
    trust_checkpoint: bool = False,
) -> nn.Module:
    """A VGG in eval mode with frozen weights, as torchvision builds it (``features``,
    ``avgpool``, ``classifier``), its conv weights in channels-last layout.

    ``weights``: ``"imagenet"`` (torchvision's cache, downloaded if missing), ``"random"``
    (exactly ``torch.manual_seed(seed); torchvision.models.<arch>(weights=None)``) or a
    weights file in any form the command line opens (a state dict, a training checkpoint,
    ``.safetensors``, any head). ``arch``: None takes it from the file (``vgg16_bn`` for
    imagenet and random); one the file does not fit is refused. The classifier is loaded
    whenever the weights have one, so ``model(x)`` gives logits; a file holding only the conv
    part gives a model whose classifier is on the meta device (maps work, logits do not).
    ``trust_checkpoint``: also open files that run code when loaded (only files you made).
    """
    loaded = loading.load_model(
        arch,
        weights,
        seed=seed,
        device=device,
        precision=precision,
        head=None,
        trust=trust_checkpoint,
    )
    model = loaded.model
    # for the pictures' titles, as the command line writes them
    model.vggviz_weights = loaded.weights  # type: ignore[assignment]
    model.vggviz_random = loaded.random  # type: ignore[assignment]
    return model


class FeatureMaps(dict[str, torch.Tensor]):
    """``{"conv1": (C, H, W) float32 CPU tensor, ...}`` in layer order, with what the
    pictures need to be drawn as the command line draws them."""

    def __init__(
        self,
        maps: dict[str, torch.Tensor],
        *,
        modules: dict[str, str],
        photo: np.ndarray | None,
        image: str,
        weights: str,
        random: bool,
        mode: str,
        stage: str,
    ) -> None:
        super().__init__(maps)
        self.modules = modules  # alias -> module name ("conv5" -> "features.14")
        self.photo = photo  # the photo as the network saw it, (H, W, 3) uint8; None for tensors
        self.image, self.weights, self.random = image, weights, random
        self.mode, self.stage = mode, stage


def feature_maps(
    model: nn.Module,
    image: str | Path | Image.Image | torch.Tensor,
    layers: str | Sequence[str] = "all",
    stage: str = "relu",
    size: int = 224,
    mode: str = "network",
    *,
    normalize: bool = True,
) -> FeatureMaps:
    """Each chosen conv layer's map of one photo, as CPU float32 tensors ``(C, H, W)`` by
    alias (``conv1`` ...), exactly the numbers of ``vggviz features --save-raw``.

    ``model``: from :func:`load_model`, or any VGG you built or fine-tuned in Python (with
    torchvision's layout; it runs where its weights are, in their dtype, in eval mode for
    the call). ``image``: a path or a PIL image (read as the command line reads files:
    upright, RGB, resized so the shorter side is ``size``, ImageNet-normalised unless
    ``normalize`` is false), or a tensor ``(3, H, W)`` or ``(1, 3, H, W)`` taken as the
    network's input as it is. ``layers``: ``"all"``, ``"conv1,conv5-conv7"`` or a list of
    names. ``stage``: the map after the ``conv``, its ``bn`` or its ``relu``. ``mode``:
    ``network`` (the real forward pass) or ``chain`` (the tutorial's conv-only chain).
    """
    if mode not in MODES:
        raise UsageError(f"{mode!r}: expected one of {', '.join(MODES)}", param="mode")
    every = find_conv_layers(model)
    if not every:
        raise UsageError(f"{type(model).__name__} has no Conv2d layers", param="model")
    spec = layers if isinstance(layers, str) else ",".join(layers)
    chosen = chosen_layers(every, spec, stage if mode == "network" else None)
    weight = every[0].module.weight
    photo, x, name = _input(image, size, normalize)
    x = x.to(weight.device, weight.dtype)
    if mode == "network":
        out = network_maps(model, chosen, x, stage)
        pairs = [(layer, out[layer.alias]) for layer in chosen]
    else:
        pairs = list(chain_maps(every, x, chosen))
    return FeatureMaps(
        {layer.alias: _chw(tensor) for layer, tensor in pairs},
        modules={layer.alias: layer.name for layer in chosen},
        photo=photo,
        image=name,
        weights=getattr(model, "vggviz_weights", _USER_MODEL),
        random=bool(getattr(model, "vggviz_random", False)),
        mode=mode,
        stage=stage,
    )


def _input(image: Any, size: int, normalize: bool) -> tuple[np.ndarray | None, torch.Tensor, str]:
    """(photo as the network sees it, the network's input batch of one, a name for titles)."""
    if isinstance(image, torch.Tensor):
        x = image if image.dim() == 4 else image[None]
        if x.dim() != 4 or x.shape[:2] != (1, 3):
            raise UsageError(
                f"a tensor image must be (3, H, W) or (1, 3, H, W), not {tuple(image.shape)}",
                param="image",
            )
        return None, x, "tensor"
    if isinstance(image, Image.Image):
        photo, array = images.image_for_model(image, size, normalize)
        name = Path(getattr(image, "filename", "") or "image").name
    else:
        photo, array = images.for_model(image, size, normalize)
        name = Path(image).name
    return photo, torch.from_numpy(array)[None], name


def _chw(tensor: torch.Tensor) -> torch.Tensor:
    """One image's map as a contiguous CPU float32 (C, H, W) tensor."""
    return tensor[0].float().cpu().contiguous()


def layer_picture(
    maps: FeatureMaps,
    layer: str,
    *,
    select: str | None = None,
    grid: str = "4x4",
    cmap: str | None = None,
    scale: str | None = None,
    overlay: bool = False,
) -> Image.Image:
    """The picture of one layer's maps, drawn as ``vggviz features`` draws its
    ``NN-convX.png`` (same options, same defaults: in network mode the 16 strongest
    channels on one layer-wide scale in inferno, in chain mode the tutorial's look).
    ``overlay`` blends each map over the photo (not for tensor inputs, which have none)."""
    if layer not in maps:
        raise UsageError(
            f"{layer!r} is not among these maps ({', '.join(maps) or 'none'})", param="layer"
        )
    defaults = STYLE_DEFAULTS[maps.mode]
    style = pictures.Style(
        select=select or defaults["select"],
        grid=grid.strip().lower(),
        cmap=cmap or defaults["cmap"],
        scale=scale or defaults["scale"],
        overlay=overlay,
    )
    caption = pictures.Caption(maps.image, maps.weights, maps.random, maps.mode, maps.stage)
    image, _channels = pictures.layer_picture(
        maps[layer].numpy(),
        alias=layer,
        module=maps.modules[layer],
        caption=caption,
        style=style,
        photo=maps.photo,
    )
    return image


def filters_picture(
    model: nn.Module,
    layer: str = "conv1",
    *,
    view: str | None = None,
    channel: int = 0,
    cmap: str = "gray",
    scale: str = "map",
) -> Image.Image:
    """A conv layer's kernels in a near-square grid, drawn as ``vggviz filters`` draws them
    (conv1 in colour by default, deeper layers as the mean over their input channels)."""
    found = select_layers(find_conv_layers(model), layer)
    if len(found) != 1:
        raise UsageError(f"{layer!r} names {len(found)} layers; name one", param="layer")
    picked: ConvLayer = found[0]
    weight = picked.module.weight.detach().float().cpu().numpy()
    return pictures.filters_picture(
        weight,
        alias=picked.alias,
        module=picked.name,
        weights=getattr(model, "vggviz_weights", _USER_MODEL),
        random=bool(getattr(model, "vggviz_random", False)),
        view=view or ("rgb" if weight.shape[1] == 3 else "mean"),
        channel=channel,
        cmap=cmap,
        scale=scale,
    )
