"""What a checkpoint holds as a VGG: its architecture (asked for, or found from the tensors),
its head, its class names, and what did not fit. Shapes only: no weight is read here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from vggviz.core.errors import Spell, WeightsError
from vggviz.model.architectures import (
    Head,
    HeadError,
    closest_arch,
    detect_arch,
    mismatch,
    read_head,
)
from vggviz.model.checkpoints import Checkpoint, shown
from vggviz.model.wrappers import few, key_name

_CONV_KEY = re.compile(
    r"features\.\d+\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
_OTHER_NETWORKS = (  # a telling name -> what network it is
    ("layer1.", "a ResNet"),
    ("denseblock", "a DenseNet"),
    ("features.0.0.", "a MobileNet or EfficientNet"),
    ("encoder.layer", "a transformer"),
    ("blocks.", "a vision transformer"),
)


@dataclass
class Contents:
    """A checkpoint read as a VGG."""

    checkpoint: Checkpoint
    arch: str
    detected: bool  # the architecture was found from the tensors, not asked for
    head: Head | None  # the classifier, rebuilt; None when there is none or it cannot be
    head_problem: str | None = None  # why a classifier in the file cannot be rebuilt
    class_names: list[str] | None = None  # checked against the head's outputs
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> int | None:
        return self.head.outputs if self.head else None

    def trainable(self) -> list[tuple[str, int]]:
        """What would still learn with the features frozen: every weight outside them (the
        head's, rebuilt or not), with its number of values."""
        shapes = self.checkpoint.shapes
        return [
            (name, _numel(shape))
            for name, shape in shapes.items()
            if name.startswith("classifier.") and not name.endswith(_STATISTICS)
        ]


_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def examine(checkpoint: Checkpoint, arch: str | None = None) -> Contents:
    """The checkpoint as a VGG of ``arch`` (None: whichever fits its conv part exactly).
    Raises :class:`WeightsError` for weights of another network, or of another VGG than
    ``arch`` (naming the one they fit)."""
    shapes = checkpoint.shapes
    source = shown(checkpoint.path)
    if not any(_CONV_KEY.match(name) for name in shapes):
        raise WeightsError(_not_a_vgg(checkpoint))
    fits = detect_arch(shapes)
    if arch is not None and fits != arch:
        raise WeightsError(param="arch", ways_out=_does_not_fit(source, arch, shapes, fits))
    if fits is None:
        nearest = closest_arch(shapes)
        problems = _problems(nearest, shapes)
        raise WeightsError(
            f"{source}: its conv layers fit no VGG (nearest {nearest}: {problems}); "
            "is it a VGG's checkpoint?"
        )
    head, problem = None, None
    try:
        head = read_head(shapes, checkpoint.head_kinds)
    except HeadError as err:
        problem = str(err)
    names, notes = checkpoint.class_names, []
    if names and head and len(names) != head.outputs:
        notes.append(
            f"{checkpoint.names_from} holds {len(names)} names but the head has "
            f"{head.outputs} outputs: names not used"
        )
        names = None
    return Contents(checkpoint, fits, arch is None, head, problem, names, notes)


def _problems(arch: str, shapes: dict[str, tuple[int, ...]]) -> str:
    missing, unexpected, wrong = mismatch(arch, shapes)
    problems = []
    if missing:
        problems.append(f"missing {few(missing)}")
    if unexpected:
        problems.append(f"unexpected {few([key_name(k) for k in unexpected])}")
    if wrong:
        problems.append("wrong shape " + few([f"{k} {found} vs {own}" for k, found, own in wrong]))
    return "; ".join(problems)


def _does_not_fit(source: str, arch: str, shapes: dict, fits: str | None) -> Callable[[Spell], str]:
    """The refusal, with the architecture that does fit as the way out."""
    problems = f"{source} does not fit {arch}: {_problems(arch, shapes)}"
    if not fits:
        return lambda _spell: problems
    return lambda spell: (
        f"{problems}; it looks like a {fits} checkpoint (try {spell('arch', fits)})"
    )


def _not_a_vgg(checkpoint: Checkpoint) -> str:
    names = list(checkpoint.shapes) + checkpoint.others
    what = next(
        (network for mark, network in _OTHER_NETWORKS if any(mark in n for n in names)),
        "another network",
    )
    if not names:
        return f"{shown(checkpoint.path)}: holds no tensors; save model.state_dict() after training"
    return (
        f"{shown(checkpoint.path)}: the weights of {what}, not of a VGG "
        f"(keys {few(names)}; a VGG's are features.0.weight, features.0.bias, ...); "
        "give a VGG's checkpoint"
    )
