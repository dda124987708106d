"""Grad-CAM (Selvaraju et al. 2017) the cheap way: one forward pass, then the gradients of
the explained logits with respect to one feature map, and nothing else.

The forward below the chosen map runs without autograd (no graph, nothing saved for a
backward); the map becomes a leaf that requires grad, and only the part above it (the rest of
``features``, ``avgpool``, the head) records a graph. Parameters never require grad while it
runs, so the backward computes no weight gradients either: for the default layer (conv13
after its ReLU) the backward is a max-pool, an average pool and the head, a few milliseconds
beside the forward. pytorch-grad-cam's usual recipe backpropagates through the whole network
into every weight.

Precision: the network runs in its own dtype (each part in the dtype of its parameters, so a
bf16 model runs its head in bf16 too); logits, softmax, the channel weights and the evidence
are computed in float32 from the map and its gradient cast up, since a spatial mean and a sum
over 512 channels are where bf16's 8-bit mantissa would lose the answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vggviz.core.errors import UsageError, WeightsError
from vggviz.model.hooks import followed_in_place
from vggviz.model.layers import ConvLayer, find_conv_layers

__all__ = [
    "ClassEvidence",
    "Explanation",
    "GradCam",
    "check_head",
    "evaluating",
    "head_logits",
    "head_outputs",
    "network_logits",
    "placement",
]


@dataclass(frozen=True)
class ClassEvidence:
    """One explained class of one image."""

    index: int  # the class's output index in the head
    logit: float
    probability: float  # softmax over all of the head's outputs
    evidence: np.ndarray  # float32 (h, w) >= 0 at the layer's resolution, unscaled
    peak: tuple[int, int] | None  # (row, col) of the largest evidence; None if it is all zero


@dataclass(frozen=True)
class Explanation:
    """What the model says about one image, and where its evidence lies."""

    logits: np.ndarray  # float32 (N,), every output of the head
    probabilities: np.ndarray  # float32 (N,), their softmax
    top: tuple[int, ...]  # the K most probable classes, best first (by logit: ties in the
    # probabilities, which underflow to 0 for a saturated head's other classes, are broken by
    # the logits, then by the lower index)
    explained: tuple[ClassEvidence, ...]  # the top K, or the requested classes in their order


class GradCam:
    """Grad-CAM of a torchvision-layout VGG (``features``, ``avgpool``, ``classifier``) at one
    map: ``layer`` (default: the last conv) at ``stage`` (conv, bn or relu, as the feature
    maps of ``features``). Build once per model and layer, call per batch.

    The head may be anything that maps the flattened ``avgpool`` output to logits
    (torchvision's 1000-class stack, a tutorial's ``Linear(25088, N)``, ...).
    """

    def __init__(self, model: nn.Module, layer: ConvLayer | None = None, stage: str = "relu"):
        for part in ("features", "avgpool", "classifier"):
            if not isinstance(getattr(model, part, None), nn.Module):
                raise ValueError(f"not a torchvision-layout VGG: the model has no {part!r}")
        check_head(model)
        layers = find_conv_layers(model)
        if not layers:
            raise ValueError("the model has no conv layer")
        self.model = model
        self.layer = layers[-1] if layer is None else layer
        self.stage = stage
        self.module_name = self.layer.stage_module(stage)
        self._split = _position(model, self.module_name)
        # VGG's ReLU(inplace=True) right after a conv or BN map would overwrite it (and is not
        # allowed on a leaf that requires grad): the part above then starts from a copy
        self._copy = followed_in_place(model, self.module_name)

    def __call__(
        self, x: torch.Tensor, *, top: int = 3, classes: Sequence[int] | None = None
    ) -> list[Explanation]:
        """Explain a batch ``x`` (B, 3, H, W) of equal-sized, prepared images: the ``top``
        most probable classes of each, or ``classes`` (the same for every image)."""
        if top < 1:
            raise UsageError(f"top must be at least 1, got {top}", param="top")
        if classes is not None and not classes:
            raise ValueError("classes is empty: pass None to explain the top classes")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        features = self.model.features
        with evaluating(self.model):
            with torch.no_grad():
                h = x.to(**placement(features))
                for module in features[: self._split + 1]:
                    h = module(h)
            fmap = h.detach().requires_grad_(True)
            with torch.enable_grad():
                h = fmap.clone() if self._copy else fmap
                for module in features[self._split + 1 :]:
                    h = module(h)
                logits = head_logits(self.model, h)
            scores = logits.detach().float()
            n = scores.shape[1]
            for c in classes or ():
                if not 0 <= c < n:
                    raise UsageError(
                        f"class {c} is out of range: the head has classes 0..{n - 1}",
                        param="class",
                    )
            probs = torch.softmax(scores, dim=1)
            best = _ranked(scores, min(top, n))
            chosen = best if classes is None else torch.tensor(classes).expand(len(x), -1)
            weights = _channel_weights(logits, fmap, chosen)  # (K, B, C) float32
        # evidence: ReLU of the channels weighted by their mean gradient (Selvaraju et al.,
        # eqs. 1-2)
        cams = torch.relu(torch.einsum("kbc,bchw->bkhw", weights, fmap.detach().float()))
        return _explanations(scores, probs, best, chosen, cams)


def check_head(model: nn.Module) -> None:
    """A model whose classifier holds no weights (a features-only checkpoint leaves it on
    the meta device) cannot predict anything: say so before any work."""
    head = getattr(model, "classifier", None)
    if head is None or any(p.is_meta for p in head.parameters()):
        raise WeightsError(
            "the model's classifier holds no weights: it was loaded without its head"
        )


def head_outputs(model: nn.Module) -> int:
    """How many classes the head has (its output width), before any photo is run: a 32x32
    black image (the smallest VGG takes) goes through the network, so any head answers."""
    check_head(model)
    with evaluating(model), torch.inference_mode():
        return int(network_logits(model, torch.zeros(1, 3, 32, 32)).shape[1])


def network_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's outputs for batch ``x``: features, avgpool, flatten, classifier, each
    part in the dtype of its parameters (call in eval mode, under inference mode)."""
    return head_logits(model, model.features(x.to(**placement(model.features))))


def head_logits(model: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    """``classifier(flatten(avgpool(fmap)))``, the pooled features cast to the head's dtype."""
    pooled = torch.flatten(model.avgpool(fmap), 1)
    return model.classifier(pooled.to(**placement(model.classifier, pooled)))


def _channel_weights(
    logits: torch.Tensor, fmap: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor:
    """The spatial mean of d logit[b, chosen[b, k]] / d fmap[b] per channel, for every k, as
    float32 (K, B, C); each gradient is reduced as soon as it exists, so an early layer of a
    large photo holds one map-sized gradient at a time, not K.

    Images of a batch do not interact in eval mode, so one backward per k serves the whole
    batch. The graph is only the part above the map, kept between the K backwards."""
    rows = torch.arange(len(logits), device=logits.device)
    out = []
    k_count = chosen.shape[1]
    for k in range(k_count):
        seed = torch.zeros_like(logits)
        seed[rows, chosen[:, k].to(logits.device)] = 1
        (grad,) = torch.autograd.grad(logits, fmap, seed, retain_graph=k + 1 < k_count)
        out.append(grad.float().mean(dim=(2, 3)))
    return torch.stack(out)


def _ranked(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) indices of the k largest logits, best first, ties by lower index. Softmax
    keeps the logits' order, but float32 probabilities tie at 0 where the logits differ."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :k].cpu()


def _explanations(
    scores: torch.Tensor,
    probs: torch.Tensor,
    best: torch.Tensor,
    chosen: torch.Tensor,
    cams: torch.Tensor,
) -> list[Explanation]:
    scores_np, probs_np = scores.cpu().numpy(), probs.cpu().numpy()
    cams_np = cams.cpu().numpy()
    result = []
    for b in range(len(scores_np)):
        explained = []
        for k, c in enumerate(chosen[b].tolist()):
            cam = np.ascontiguousarray(cams_np[b, k], dtype=np.float32)
            peak = None
            if cam.max() > 0:
                row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
                peak = (int(row), int(col))
            explained.append(
                ClassEvidence(c, float(scores_np[b, c]), float(probs_np[b, c]), cam, peak)
            )
        result.append(
            Explanation(
                scores_np[b].copy(),
                probs_np[b].copy(),
                tuple(best[b].tolist()),
                tuple(explained),
            )
        )
    return result


def _position(model: nn.Module, name: str) -> int:
    """Index in ``model.features`` of the module whose output is the explained map."""
    prefix, _, index = name.partition(".")
    if prefix != "features" or not index.isdigit() or int(index) >= len(model.features):
        raise ValueError(f"{name!r} is not a direct child of the model's features")
    return int(index)


def placement(module: nn.Module, like: torch.Tensor | None = None) -> dict[str, object]:
    """Device and floating dtype of ``module``'s parameters (``like``'s when it has none)."""
    for p in module.parameters():
        return {"device": p.device, "dtype": p.dtype}
    if like is not None:
        return {"device": like.device, "dtype": like.dtype}
    return {}


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off, BatchNorm on its running statistics) and no parameter that
    requires grad, however the block ends; both restored afterwards."""
    was_training = model.training
    thawed = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in thawed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)
        model.train(was_training)
