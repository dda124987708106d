"""Receptive fields: computed from the modules, checked against where input gradients live."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vggviz.core.errors import UsageError
from vggviz.core.vocabulary import ARCHS
from vggviz.model.layers import find_conv_layers
from vggviz.model.loading import build
from vggviz.model.receptive import ReceptiveField, field_of, layer_field


def _twin(model: nn.Module, upto: str) -> nn.Sequential:
    """The model's geometry with one channel: every conv becomes an all-positive averaging
    conv of the same kernel, stride, padding and dilation, every max-pool an average pool of
    the same shape (a max-pool's gradient reaches only its argmax, an average's every input),
    pointwise modules are dropped. With positive input, a unit's input gradient is then
    non-zero exactly on the pixels that can change it."""
    parts: list[nn.Module] = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue
        if isinstance(module, nn.Conv2d):
            conv = nn.Conv2d(
                1,
                1,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                bias=False,
                dtype=torch.float64,
            )
            nn.init.constant_(conv.weight, 1.0 / conv.weight.numel())
            parts.append(conv)
        elif isinstance(module, nn.MaxPool2d):
            parts.append(nn.AvgPool2d(module.kernel_size, module.stride, module.padding))
        if name == upto:
            return nn.Sequential(*parts)
    raise AssertionError(f"{upto} not found")


def _support(net: nn.Module, size: int, row: int, col: int) -> tuple[int, int, int, int]:
    """[left, top, right, bottom) of the pixels whose gradient for unit (row, col) is not 0."""
    x = torch.rand(1, 1, size, size, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    net(x)[0, 0, row, col].backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    return (
        int(cols.min()),
        int(rows.min()),
        int(cols.max()) + 1,
        int(rows.max()) + 1,
    )


def test_vgg16_conv13_is_196_pixels_with_a_jump_of_16() -> None:
    model = build("vgg16")
    conv13 = find_conv_layers(model)[12]
    field = layer_field(model, conv13)
    assert (field.size, field.jump) == (196, 16)
    # conv1 sees 3 px; the pool after conv2 doubles the jump
    assert (layer_field(model, find_conv_layers(model)[0]).size, field.start) == (3, -90)
    assert layer_field(model, find_conv_layers(model)[2]) == ReceptiveField(10, 2, -4)


@pytest.mark.parametrize("arch", ARCHS)
def test_boxes_are_the_input_gradient_support(arch: str) -> None:
    """Every conv layer of every VGG, at a corner, an edge and the centre of its map."""
    model = build(arch)  # meta device: geometry only
    size = 288  # larger than the deepest field (vgg19 conv16: 252), so a centre box is whole
    for layer in find_conv_layers(model):
        field = layer_field(model, layer)
        net = _twin(model, layer.relu or layer.name)
        side = net(torch.zeros(1, 1, size, size, dtype=torch.float64)).shape[-1]
        for row, col in [(0, 0), (0, side // 2), (side // 2, side // 2), (side - 1, side - 1)]:
            got = _support(net, size, row, col)
            assert field.box(row, col, size, size) == got, (arch, layer.alias, row, col)
            left, top, right, bottom = field.window(row, col)
            assert right - left == bottom - top == field.size


def test_boxes_clip_but_windows_do_not() -> None:
    field = ReceptiveField(size=10, jump=2, start=-4)
    assert field.window(0, 0) == (-4, -4, 6, 6)
    assert field.box(0, 0, 32, 32) == (0, 0, 6, 6)
    assert field.box(15, 15, 32, 32) == (26, 26, 32, 32)
    assert field.centre(0) == 1.0


def test_unknown_geometry_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3))
    with pytest.raises(UsageError, match="1 .Upsample.: unknown geometry"):
        field_of(model, "2")
    with pytest.raises(UsageError, match="square"):
        field_of(nn.Sequential(nn.Conv2d(3, 4, (3, 5))), "0")
