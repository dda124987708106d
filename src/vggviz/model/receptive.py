"""Receptive fields from a network's own geometry: no table of sizes.

Walking the modules in execution order up to a layer, every conv and pool widens the field
of one unit by ``(dilation * (kernel - 1)) * jump`` input pixels, multiplies the jump (the
input pixels between neighbouring units) by its stride, and moves the field of unit 0 up and
left by ``padding * jump``. Pointwise modules (BatchNorm, ReLU, dropout) change nothing.

Boxes are half-open ``[left, top, right, bottom)`` in pixels of the resized image the network
saw. :meth:`ReceptiveField.box` clips to the image when given its size, and is then exactly
the set of pixels whose value can change the unit (its input gradient's support, which the
tests check for every VGG); :meth:`ReceptiveField.window` is the unclipped field, which may
reach into the zero padding and always measures ``size`` x ``size``: crops cut with it are
padded at the border so that all of a layer's crops have one size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from vggviz.core.errors import UsageError
from vggviz.model.layers import ConvLayer

_POINTWISE = (nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.Identity, nn.LeakyReLU)
_GEOMETRIC = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class ReceptiveField:
    """The field of one unit of a layer's map, in input pixels.

    ``size`` is its side, ``jump`` the input pixels between neighbouring units, ``start``
    the left (and top) pixel of unit (0, 0)'s field: negative when it reaches into padding.
    """

    size: int
    jump: int
    start: int

    def window(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``[left, top, right, bottom)`` of unit (row, col), unclipped (size x size)."""
        left, top = self.start + col * self.jump, self.start + row * self.jump
        return left, top, left + self.size, top + self.size

    def box(self, row: int, col: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``[left, top, right, bottom)`` of unit (row, col), clipped to a ``height`` x
        ``width`` image: the pixels that can change the unit."""
        left, top, right, bottom = self.window(row, col)
        return max(left, 0), max(top, 0), min(right, width), min(bottom, height)

    def centre(self, index: int) -> float:
        """Centre of unit ``index``'s field along one axis, in pixel coordinates (pixel i
        covers [i, i + 1), so its centre is i + 0.5)."""
        return self.start + index * self.jump + self.size / 2


def _pair(value: int | Sequence[int]) -> int:
    """The one number of a square kernel, stride, padding or dilation."""
    if isinstance(value, int):
        return value
    first, *rest = value
    if any(v != first for v in rest):
        raise UsageError(f"receptive fields need square geometry; got {tuple(value)}")
    return int(first)


def _geometry(module: nn.Module) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) of a conv or pool."""
    if isinstance(module, nn.Conv2d) and isinstance(module.padding, str):
        raise UsageError(f"padding={module.padding!r} is not supported for receptive fields")
    dilation = getattr(module, "dilation", 1)  # AvgPool2d has none
    stride = module.stride if module.stride is not None else module.kernel_size
    return (
        _pair(module.kernel_size),
        _pair(stride),
        _pair(module.padding),
        _pair(dilation),
    )


def field_of(model: nn.Module, module_name: str) -> ReceptiveField:
    """The receptive field of a unit in the output of module ``module_name``, from every
    conv and pool that runs before it (``named_modules`` order, VGG's execution order)."""
    size, jump, start = 1, 1, 0
    for name, module in model.named_modules():
        if list(module.children()):
            continue
        if isinstance(module, _GEOMETRIC):
            kernel, stride, padding, dilation = _geometry(module)
            size += dilation * (kernel - 1) * jump
            start -= padding * jump
            jump *= stride
        elif not isinstance(module, _POINTWISE):
            raise UsageError(f"{name} ({type(module).__name__}): unknown geometry")
        if name == module_name:
            return ReceptiveField(size=size, jump=jump, start=start)
    raise UsageError(f"no module named {module_name!r} in the model")


def layer_field(model: nn.Module, layer: ConvLayer) -> ReceptiveField:
    """The receptive field of a conv layer's units (the same at its conv, BN and ReLU)."""
    return field_of(model, layer.name)
