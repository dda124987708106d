"""The eight VGG architectures, built without importing torchvision, with any head.

``import torchvision`` costs about 3 s here (its ops pull in torch._dynamo), more than the
whole rest of a one-photo run. Building a VGG is a table of channel counts (Simonyan &
Zisserman, table 1), so we build the same modules under the same names as
``torchvision.models.vgg*`` and load the same checkpoints; ``tests/test_architectures.py``
checks the match against torchvision for every variant. torchvision is still imported
where its own code is the point: seeded random init and downloading its weights.

A checkpoint tells the architecture and the head by its tensors' names and shapes alone:
:func:`conv_signature` and :func:`detect_arch` find the variant, :func:`read_head` rebuilds
the classifier a user put on it (the tutorial's ``nn.Linear(25088, 5)``, a new
``classifier[6]``, a stack of Linear, ReLU and Dropout).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vggviz.core.vocabulary import ARCHS, IMAGENET_FILES, blocks

__all__ = [
    "ARCHS",
    "IMAGENET_FILES",
    "VGG",
    "Head",
    "HeadLayer",
    "conv_signature",
    "detect_arch",
    "read_head",
    "vgg",
]

POOLED = 512 * 7 * 7  # what the classifier reads: the last conv's 512 maps, pooled to 7x7


class VGG(nn.Module):
    """``features`` (convs, BN, ReLU, pools), ``avgpool`` and ``classifier``, as torchvision;
    ``classifier`` may be any module that takes the 25,088 pooled values."""

    def __init__(
        self, features: nn.Sequential, num_classes: int = 1000, classifier: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = classifier or nn.Sequential(
            nn.Linear(POOLED, 4096),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg(arch: str, head: Head | None = None) -> VGG:
    """The module tree of ``torchvision.models.<arch>`` (default init, no pretrained weights),
    with ``head`` as its classifier when given (torchvision's 1000-class one otherwise).

    Build it under ``torch.device("meta")`` to get the structure for free.
    """
    batch_norm = arch.endswith("_bn")
    layers: list[nn.Module] = []
    channels = 3
    for block in blocks(arch):
        for width in block:
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return VGG(nn.Sequential(*layers), classifier=head.build() if head else None)


# --- The architecture from a checkpoint's tensors --------------------------------------------


@functools.cache
def conv_signature(arch: str) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor of ``arch``'s conv part (``features.*``) in a state dict,
    leaving out BatchNorm's step counter (torchvision's own 2017 checkpoints lack it).

    Counted from the width table in :func:`vgg`'s order (conv, BatchNorm, ReLU per layer, a
    pool per block) rather than built: building the eight candidates took 80 ms.
    """
    batch_norm = arch.endswith("_bn")
    signature: dict[str, tuple[int, ...]] = {}
    index, channels = 0, 3
    for block in blocks(arch):
        for width in block:
            signature[f"features.{index}.weight"] = (width, channels, 3, 3)
            signature[f"features.{index}.bias"] = (width,)
            if batch_norm:
                for key in ("weight", "bias", "running_mean", "running_var"):
                    signature[f"features.{index + 1}.{key}"] = (width,)
            index += 3 if batch_norm else 2
            channels = width
        index += 1  # the block's max-pool
    return signature


def conv_part(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """The ``features.*`` entries of ``shapes`` as :func:`conv_signature` lists them."""
    return {
        key: tuple(shape)
        for key, shape in shapes.items()
        if key.startswith("features.") and not key.endswith("num_batches_tracked")
    }


def detect_arch(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """The architecture whose conv part has exactly these names and shapes, or None."""
    found = conv_part(shapes)
    return next((arch for arch in ARCHS if conv_signature(arch) == found), None)


def mismatch(arch: str, shapes: Mapping[str, Sequence[int]]) -> tuple[list, list, list]:
    """(missing, unexpected, wrong-shape) conv tensors of ``shapes`` against ``arch``: each
    wrong shape as (name, found, expected)."""
    own = conv_signature(arch)
    found = conv_part(shapes)
    missing = [k for k in own if k not in found]
    unexpected = [k for k in found if k not in own]
    wrong = [(k, found[k], own[k]) for k in found if k in own and found[k] != own[k]]
    return missing, unexpected, wrong


def closest_arch(shapes: Mapping[str, Sequence[int]]) -> str:
    """The architecture with the fewest mismatching conv tensors (for messages)."""
    return min(ARCHS, key=lambda arch: sum(map(len, mismatch(arch, shapes))))


# --- The head a checkpoint holds ---------------------------------------------------------------

_LINEAR = {"weight", "bias"}
_BATCH_NORM = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_PARAMETERLESS = {"ReLU": nn.ReLU, "Dropout": nn.Dropout, "Identity": nn.Identity}


@dataclass(frozen=True)
class HeadLayer:
    """One module of a head, as its tensors show it (or, for layers without weights, as they
    are presumed: ``presumed`` is then True)."""

    name: str  # "classifier" or "classifier.3"
    kind: str  # Linear, BatchNorm1d, ReLU, Dropout, Identity
    inputs: int | None = None  # Linear: in_features; BatchNorm1d: num_features
    outputs: int | None = None
    bias: bool = True
    presumed: bool = False

    def describe(self) -> str:
        if self.kind == "Linear":
            bias = "" if self.bias else ", no bias"
            return f"{self.name} Linear({self.inputs} -> {self.outputs}{bias})"
        if self.kind == "BatchNorm1d":
            return f"{self.name} BatchNorm1d({self.inputs})"
        return f"{self.name} {self.kind}" + (" (presumed)" if self.presumed else "")

    def module(self) -> nn.Module:
        if self.kind == "Linear":
            assert self.inputs is not None and self.outputs is not None
            return nn.Linear(self.inputs, self.outputs, bias=self.bias)
        if self.kind == "BatchNorm1d":
            assert self.inputs is not None
            return nn.BatchNorm1d(self.inputs, affine=self.bias)
        if self.kind == "ReLU":
            return nn.ReLU(inplace=True)
        return _PARAMETERLESS[self.kind]()


@dataclass(frozen=True)
class Head:
    """A classifier rebuilt from a checkpoint: one Linear, or a Sequential of layers."""

    layers: tuple[HeadLayer, ...]
    sequential: bool  # False: ``classifier`` is one Linear (the tutorial's form)

    @property
    def outputs(self) -> int:
        """The number of classes: the size of the last layer with weights."""
        last = next(layer for layer in reversed(self.layers) if layer.outputs is not None)
        assert last.outputs is not None
        return last.outputs

    @property
    def presumed(self) -> bool:
        """Whether some layers without weights were presumed (the keys cannot show them)."""
        return any(layer.presumed for layer in self.layers)

    def build(self) -> nn.Module:
        if not self.sequential:
            return self.layers[0].module()
        return nn.Sequential(*(layer.module() for layer in self.layers))

    def is_torchvisions(self) -> bool:
        """torchvision's own classifier shape: 25088 -> 4096 -> 4096 -> N at 0, 3 and 6."""
        linears = [(la.name, la.inputs, la.outputs) for la in self.layers if la.kind == "Linear"]
        names = ["classifier.0", "classifier.3", "classifier.6"]
        return (
            self.sequential
            and len(self.layers) == 7
            and [n for n, _, _ in linears] == names
            and [(i, o) for _, i, o in linears][:2] == [(POOLED, 4096), (4096, 4096)]
        )


class HeadError(ValueError):
    """A classifier vggviz cannot rebuild from its tensors; the message says why."""


_INDEXED = re.compile(r"classifier\.(\d+)\.(\w+)$")


def read_head(
    shapes: Mapping[str, Sequence[int]], kinds: Sequence[str] | None = None
) -> Head | None:
    """The classifier of a checkpoint from its ``classifier.*`` names and shapes; None when
    it has none. Raises :class:`HeadError` for one vggviz cannot rebuild.

    Layers with weights show in the keys (a 2-D weight is a Linear, a running mean a
    BatchNorm1d); layers without cannot. Between two layers with weights the first missing
    index is presumed a ReLU and the others Dropout, torchvision's and the tutorial's order
    (Dropout is the identity in eval mode, so only whether a ReLU is there changes the
    logits); missing indices before the first are presumed Dropout. ``kinds`` (the
    classifier's module type names, when the checkpoint held the module itself) replaces
    those presumptions.
    """
    head = {k: tuple(v) for k, v in shapes.items() if k.startswith("classifier.")}
    if not head:
        return None
    if set(head) <= {"classifier.weight", "classifier.bias"}:
        layer = _linear("classifier", head, "classifier.weight", "classifier.bias")
        _check_chain([layer])
        return Head((layer,), sequential=False)
    groups: dict[int, dict[str, tuple[int, ...]]] = {}
    for key, shape in head.items():
        match = _INDEXED.match(key)
        if not match:
            raise HeadError(f"{key} is not a layer of a Sequential classifier")
        groups.setdefault(int(match[1]), {})[match[2]] = shape
    layers: dict[int, HeadLayer] = {}
    for index, group in sorted(groups.items()):
        name = f"classifier.{index}"
        if set(group) <= _LINEAR and len(group.get("weight", ())) == 2:
            layers[index] = _linear(name, head, f"{name}.weight", f"{name}.bias")
        elif "running_mean" in group and set(group) <= _BATCH_NORM:
            layers[index] = _batch_norm(name, group)
        else:
            what = ", ".join(f"{k} {list(v)}" for k, v in sorted(group.items()))
            raise HeadError(f"{name} ({what}) is neither a Linear nor a BatchNorm1d")
    chain = [layers[i] for i in sorted(layers)]
    _check_chain(chain)
    count = max(layers) + 1
    if kinds is not None and len(kinds) >= count:
        full = [layers.get(i) or _named(i, kinds[i]) for i in range(len(kinds))]
        return Head(tuple(full), sequential=True)
    return Head(tuple(layers.get(i) or _presumed(i, layers) for i in range(count)), True)


def _linear(name: str, head: Mapping[str, tuple[int, ...]], weight: str, bias: str) -> HeadLayer:
    shape = head.get(weight)
    if shape is None or len(shape) != 2:
        raise HeadError(f"{weight} has shape {list(shape or [])}, not that of a Linear")
    outputs, inputs = shape
    if bias in head and head[bias] != (outputs,):
        raise HeadError(f"{bias} has shape {list(head[bias])}, expected [{outputs}]")
    return HeadLayer(name, "Linear", inputs, outputs, bias=bias in head)


def _batch_norm(name: str, group: Mapping[str, tuple[int, ...]]) -> HeadLayer:
    size = group["running_mean"]
    for key in ("weight", "bias", "running_var"):
        if key in group and group[key] != size:
            raise HeadError(f"{name}.{key} has shape {list(group[key])}, expected {list(size)}")
    affine = "weight" in group
    if len(size) != 1 or "running_var" not in group or affine != ("bias" in group):
        raise HeadError(f"{name} is not a BatchNorm1d (running_mean {list(size)})")
    return HeadLayer(name, "BatchNorm1d", size[0], size[0], bias=affine)


def _check_chain(chain: list[HeadLayer]) -> None:
    """Each layer must take what the one before gives; the first, the pooled maps."""
    width, source = POOLED, "the pooled maps (512 x 7 x 7)"
    for layer in chain:
        if layer.inputs != width:
            hint = (
                "; was the pooling before it changed? the file cannot show that"
                if source.startswith("the pooled")
                else ""
            )
            raise HeadError(
                f"{layer.name} takes {layer.inputs} values but gets {width} from {source}{hint}"
            )
        assert layer.outputs is not None
        width, source = layer.outputs, layer.name


def _presumed(index: int, layers: Mapping[int, HeadLayer]) -> HeadLayer:
    before = [i for i in layers if i < index]
    if not before:
        return HeadLayer(f"classifier.{index}", "Dropout", presumed=True)
    kind = "ReLU" if index == max(before) + 1 else "Dropout"
    return HeadLayer(f"classifier.{index}", kind, presumed=True)


def _named(index: int, kind: str) -> HeadLayer:
    if kind not in _PARAMETERLESS:
        raise HeadError(f"classifier.{index} is a {kind}, which vggviz does not rebuild")
    return HeadLayer(f"classifier.{index}", kind)


def head_buffers(key: str) -> bool:
    """Whether ``key`` is a statistic, not a weight that training changes."""
    return key.endswith(_BUFFERS)
