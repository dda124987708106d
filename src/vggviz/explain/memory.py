"""Will an explain run fit in memory? An upper bound on its peak, from the architecture's
channel table, before torch or the model is loaded (torch-free, like ``core/memory``).

What an explain run holds at its worst moment, per image of a batch:

- the forward below the explained map runs without autograd: a few maps of the widest layer
  (a conv's input and output, oneDNN's reordered copies); the deletion check's forwards, one
  batch of masked photos at a time, hold the same;
- above the map, autograd keeps what the backward needs: about GRAPH_COPIES maps per conv
  layer from the explained one up (the conv's input, the BatchNorm's, the ReLU's output), and
  one map-sized gradient at a time;
- the head's weights, which ``features`` never loads: 0.5 GB for torchvision's 1000-class
  head (held by the mapped file or, for random weights, built);
- the picture: one panel per class at 360 px, small beside the rest.

The constants come from the peak RSS (VmHWM) of real runs: vgg11 with a 5-class head at 224
to 896 px, the default layer, conv3 and conv1, batches of 1 and 4, 3 and 5 classes, and
VGG16-BN with random weights (torchvision's head) at 224 and 448: the estimate came out 1.02
to 1.34 times the measured peak (``tests/test_explain_memory.py`` checks it against a run).
"""

from __future__ import annotations

import os
import re

from vggviz.core import memory, vocabulary

FORWARD_COPIES = 3.0
"""Maps of the widest layer alive in a forward without autograd, per image."""

GRAPH_COPIES = 3.0
"""Maps autograd keeps per conv layer above the explained one, per image."""

PANEL_BYTES = 4 * 3 * 360 * 360 * 4
"""One panel of the picture, in its few forms (photo, evidence, overlay, float copies)."""

IMAGENET_HEAD = 4 * (512 * 7 * 7 * 4096 + 4096 * 4096 + 4096 * 1000 + 2 * 4096 + 1000)
"""torchvision's 1000-class classifier, float32."""


def _maps(arch: str, height: int, width: int) -> list[int]:
    """float32 bytes of every conv layer's map, one image, in order."""
    out = []
    for block, widths in enumerate(vocabulary.blocks(arch)):
        h, w = height >> block, width >> block  # a 2x2 max-pool after each block
        out.extend(4 * c * h * w for c in widths)
    return out


def layer_number(spec: str | None, arch: str) -> int:
    """The 1-based conv layer a ``--layer`` value names, as far as can be told without the
    model: None is the last; ``conv3`` or ``3`` is the 3rd; anything else (``features.7``)
    counts as the first, the costliest."""
    count = sum(len(b) for b in vocabulary.blocks(arch))
    if spec is None:
        return count
    found = re.fullmatch(r"(?:conv)?([0-9]+)", spec.strip().lower())
    return min(max(int(found.group(1)), 1), count) if found else 1


def head_bytes(weights: str) -> int:
    """The head's bytes at most: torchvision's for imagenet and random weights; for a file,
    no more than the file (a tutorial's Linear(25088, 5) is 0.5 MB)."""
    if weights in ("imagenet", "random"):
        return IMAGENET_HEAD
    try:
        return min(os.stat(weights).st_size, IMAGENET_HEAD)
    except OSError:
        return IMAGENET_HEAD


def estimate_peak_bytes(
    arch: str,
    height: int,
    width: int,
    *,
    layer: int,
    classes: int = 3,
    batch_size: int = 1,
    head: int = IMAGENET_HEAD,
    baseline: bool = True,
) -> int:
    """An upper bound on the peak memory (bytes) of an explain run over ``height`` x
    ``width`` images (after resizing), ``batch_size`` at a time, at the ``layer``-th conv,
    ``classes`` explained per image, with a head of ``head`` bytes.
    ``baseline=False`` leaves out torch and the model (a check of one more image)."""
    maps = _maps(arch, height, width)
    widest = max(maps)
    per_image = (
        FORWARD_COPIES * widest
        + GRAPH_COPIES * sum(maps[layer - 1 :])
        + 2 * maps[layer - 1]  # the gradient, and its float copy
        + 4 * 3 * height * width * (4 + classes)  # photo, blurred copy, masks
    )
    pictures = (classes + 1) * PANEL_BYTES
    fixed = memory.BASELINE + head if baseline else 0
    return int(fixed + batch_size * per_image + pictures)


def check_memory(
    arch: str,
    size: int,
    *,
    layer: int,
    classes: int,
    batch_size: int,
    weights: str,
) -> int:
    """Refuse (UsageError naming both numbers) a run over ``size`` x ``size`` images whose
    estimated peak exceeds the memory available, unless the check is switched off
    (``core.memory.FORCE_ENV``). Returns the estimate in bytes."""
    estimate = estimate_peak_bytes(
        arch,
        size,
        size,
        layer=layer,
        classes=classes,
        batch_size=batch_size,
        head=head_bytes(weights),
    )
    if not memory.check_disabled():
        memory.check_fits(estimate, memory.available_bytes(), what=f"a run at {size}x{size} pixels")
    return estimate
