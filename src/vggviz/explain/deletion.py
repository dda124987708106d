"""The check of an explanation: does the model lose its class when the evidence is taken away?

A deletion test (cf. Samek et al. 2017; Rong et al. 2022, "ROAD"): for each explained class,
the class's probability after the fraction (20%) of the photo's pixels with the most evidence
is replaced by a blurred copy of the photo, against the same fraction chosen at random.

How to read a pair (``original`` is the probability before anything is blurred):

- good: ``top`` far below ``random``, ``random`` close to ``original`` (0.91 -> 0.12 against
  0.85): what the evidence points at is what the model needs, and taking away as much of the
  photo elsewhere barely matters.
- bad: ``top`` about ``random`` or above it (0.91 -> 0.80 against 0.78): the evidence is no
  better than a random guess at what the model uses (the class may rest on context spread
  over the photo, or the chosen layer may be too coarse or too early to tell).
- both low (0.91 -> 0.10 against 0.15): the class is fragile, any blur hurts; the pair says
  little about where the evidence is.

Choices:

- Blurred, not blanked. A block of zeros in the network's input space is the ImageNet mean
  colour (grey after normalisation, black without): a shape the network has never seen, which
  the class probability reacts to whatever lay under it (ROAD's complaint). A blurred copy keeps
  the colours and coarse layout and removes the detail (edges, texture, parts) a class rests on.
  The blur is Gaussian with sigma = 10 px per 224 px of the shorter side (Fong & Vedaldi 2017
  blurred with sigma 10 at 224).
- Blurred in the network's input space. The blur is linear with weights summing to 1 and
  reflects at the borders, and the ImageNet normalisation is an affine map per channel, so
  blurring the normalised tensor gives exactly the normalised blurred photo: the test needs
  no knowledge of whether (or how) the input was normalised, and no uint8 rounding.
- The random fraction has the evidence's grain: a uniform random map at the layer's
  resolution, upsampled the same way as the evidence, and its top 20% taken. Scattered single
  pixels would be no deletion at all after a blur (their neighbours still carry the detail),
  which would flatter every explanation. The random map is seeded per photo (default: a hash
  of its pixels), so a run is reproducible, and is the same for every class of a photo: one
  forward pass serves all of them. Evidence ties (zero evidence over most of a photo) are
  broken by the same random map, so a class without any evidence gets top == random.
- Cost: one forward per photo for the random deletion and one per explained class, batched.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vggviz.explain.gradcam import Explanation, evaluating, network_logits, placement

__all__ = [
    "FRACTION",
    "Deletion",
    "Stopped",
    "blur",
    "deletion_masks",
    "deletion_test",
    "photo_seed",
]

FRACTION = 0.2  # of the photo's pixels, deleted
BLUR_SIGMA_AT_224 = 10.0  # px of Gaussian blur per 224 px of the shorter side


class Stopped(Exception):
    """The check was left between two forward passes because a stop was asked for."""


@dataclass(frozen=True)
class Deletion:
    """One explained class's probability: as is, and after blurring ``fraction`` of the photo
    where its evidence is strongest (``top``) or at random (``random``); and its logit in the
    same three cases, which still tells them apart when the probability is saturated (a head
    trained on few photos often puts 1.0000 on its class, whatever is blurred)."""

    original: float
    top: float
    random: float
    original_logit: float
    top_logit: float
    random_logit: float


def deletion_test(
    model: nn.Module,
    x: torch.Tensor,
    explanations: Sequence[Explanation],
    *,
    fraction: float = FRACTION,
    seeds: Sequence[int] | None = None,
    batch_size: int = 8,
    stopping: Callable[[], bool] | None = None,
) -> list[list[Deletion]]:
    """For each image of ``x`` (B, 3, H, W, prepared as for the network) and each class of
    its explanation: the deletion test, in the order of ``explanations[b].explained``.

    ``seeds``: one per image for its random deletion (default :func:`photo_seed`).
    ``batch_size``: most images per forward pass (B * (K + 1) images are run in all).
    ``stopping``: polled before each forward pass; True raises :class:`Stopped`.
    """
    if len(explanations) != len(x):
        raise ValueError(f"{len(explanations)} explanations for {len(x)} images")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if seeds is None:
        seeds = [photo_seed(image) for image in x]
    elif len(seeds) != len(x):
        raise ValueError(f"{len(seeds)} seeds for {len(x)} images")
    device = placement(model.features)["device"]
    x = x.to(device=device, dtype=torch.float32)
    blurred = blur(x)
    jobs: list[tuple[int, torch.Tensor]] = []  # (image, mask (H, W)) per forward
    for b, explanation in enumerate(explanations):
        evidence = torch.stack([torch.from_numpy(c.evidence) for c in explanation.explained])
        top, rand = deletion_masks(evidence, x.shape[2:], fraction, seeds[b])
        jobs.append((b, rand.to(device)))
        jobs.extend((b, mask.to(device)) for mask in top)
    logits = []
    with evaluating(model), torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            if stopping is not None and stopping():
                raise Stopped
            chunk = jobs[start : start + batch_size]
            index = torch.tensor([b for b, _ in chunk], device=device)
            masks = torch.stack([m for _, m in chunk])[:, None]  # (n, 1, H, W)
            deleted = torch.where(masks, blurred[index], x[index])
            logits.append(network_logits(model, deleted).float().cpu())
    after = torch.cat(logits)
    probs = torch.softmax(after, dim=1)
    result, row = [], 0
    for explanation in explanations:
        k_count = len(explanation.explained)
        result.append(
            [
                Deletion(
                    c.probability,
                    float(probs[row + 1 + k, c.index]),
                    float(probs[row, c.index]),
                    c.logit,
                    float(after[row + 1 + k, c.index]),
                    float(after[row, c.index]),
                )
                for k, c in enumerate(explanation.explained)
            ]
        )
        row += 1 + k_count
    return result


def deletion_masks(
    evidence: torch.Tensor, size: Sequence[int], fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (K, H, W) of the ``fraction`` of pixels with the most evidence per map of
    ``evidence`` (K, h, w), and (H, W) of as many pixels chosen at random with the same grain.

    Both maps are upsampled bilinearly to ``size`` = (H, W) (as the picture shows them); the
    random map breaks ties in the evidence."""
    height, width = int(size[0]), int(size[1])
    count = max(1, round(fraction * height * width))
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(evidence.shape[1:], generator=gen)
    up = F.interpolate(
        torch.cat([evidence.float(), noise[None]])[:, None],
        size=(height, width),
        mode="bilinear",
        align_corners=False,
    ).reshape(len(evidence) + 1, -1)
    # rank by the random map, then (stable) by the evidence: ties keep the random order
    by_noise = torch.sort(up[-1], descending=True, stable=True).indices
    rand = torch.zeros(height * width, dtype=torch.bool)
    rand[by_noise[:count]] = True
    top = torch.zeros(len(evidence), height * width, dtype=torch.bool)
    for k in range(len(evidence)):
        order = torch.sort(up[k, by_noise], descending=True, stable=True).indices
        top[k, by_noise[order[:count]]] = True
    return top.reshape(-1, height, width), rand.reshape(height, width)


def blur(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """A Gaussian blur of batch ``x`` (B, C, H, W), separable, reflecting at the borders;
    ``sigma`` defaults to 10 px per 224 px of the shorter side."""
    height, width = x.shape[2:]
    if sigma is None:
        sigma = BLUR_SIGMA_AT_224 * min(height, width) / 224
    # reflect padding must stay inside the image
    radius = min(math.ceil(3 * sigma), height - 1, width - 1)
    if radius < 1:
        return x.clone()
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def photo_seed(image: torch.Tensor) -> int:
    """A seed from an image's pixels and shape: the same photo always gets the same random
    deletion, whatever else is in its batch."""
    data = image.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=8)
    digest.update(repr(tuple(data.shape)).encode())
    return int.from_bytes(digest.digest(), "little") >> 1
