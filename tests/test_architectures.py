"""Our torchvision-free VGG builder must be torchvision's VGG, module for module."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torch import nn

from vggviz.model.architectures import ARCHS, IMAGENET_FILES, vgg


def _describe(model: nn.Module) -> list[tuple[str, str, str]]:
    return [(name, type(m).__name__, m.extra_repr()) for name, m in model.named_modules()]


@pytest.mark.parametrize("arch", ARCHS)
def test_same_modules_names_and_shapes_as_torchvision(arch: str) -> None:
    with torch.device("meta"):
        ours, theirs = vgg(arch), torchvision.models.get_model(arch, weights=None)
    assert _describe(ours) == _describe(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_same_forward_as_torchvision(vgg11_bn_random) -> None:
    ours = vgg("vgg11_bn").eval()
    ours.load_state_dict(vgg11_bn_random.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), vgg11_bn_random(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_names_are_torchvisions(arch: str) -> None:
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    assert IMAGENET_FILES[arch] == os.path.basename(url)
