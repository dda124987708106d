"""The eight VGG architectures, built without importing torchvision.

``import torchvision`` costs about 3 s here (its ops pull in torch._dynamo), more than the
whole rest of a one-photo run. Building a VGG is a table of channel counts (Simonyan &
Zisserman, table 1), so we build the same modules under the same names as
``torchvision.models.vgg*`` and load the same checkpoints; ``tests/test_architectures.py``
checks the match against torchvision for every variant. torchvision is still imported
where its own code is the point: seeded random init and downloading its weights.
"""

from __future__ import annotations

import torch
from torch import nn

from vggviz.core.vocabulary import ARCHS, IMAGENET_FILES, blocks

__all__ = ["ARCHS", "IMAGENET_FILES", "VGG", "vgg"]


class VGG(nn.Module):
    """``features`` (convs, BN, ReLU, pools), ``avgpool`` and ``classifier``, as torchvision."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
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


def vgg(arch: str) -> VGG:
    """The module tree of ``torchvision.models.<arch>`` (default init, no pretrained weights).

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
    return VGG(nn.Sequential(*layers))
