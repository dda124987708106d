"""Small VGGs for the explain tests: real VGG features with a small head, and hand-set
"detector" networks whose maps are known in closed form."""

from __future__ import annotations

import torch
from torch import nn

from vggviz.model.architectures import vgg

LAPLACIAN = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


def small_vgg(arch: str, classes: int = 10, seed: int = 0) -> nn.Module:
    """``arch``'s features with default (seeded) init, BatchNorm statistics that are not the
    identity, and a small Linear/ReLU/Dropout head: fast to build, every stage distinct."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = vgg(arch)
    model.features.to_empty(device="cpu")
    with torch.no_grad():
        for module in model.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.normal_(module.bias, 0, 0.05)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1, 0.2)
                nn.init.normal_(module.bias, 0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.zero_()
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 32),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(32, classes),
    )
    return model.eval()


def detector_vgg(first: torch.Tensor, head: nn.Module, arch: str = "vgg11") -> nn.Module:
    """A VGG whose channel 0 carries one signal from the first conv to the last: the first
    conv computes ``first`` (3, 3, 3) on the RGB input into channel 0, every later conv
    passes channel 0 on unchanged (centre tap 1), every other weight and bias is 0. So the
    last conv's channel 0, after its ReLU, is the max over each pooled block of
    ReLU(first * input) (ReLU and max-pooling commute with a positive pass-through)."""
    with torch.device("meta"):
        model = vgg(arch)
    model.features.to_empty(device="cpu")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for module in model.features:
            if isinstance(module, nn.Conv2d):
                module.weight.zero_()
                module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
                module.reset_running_stats()
        convs[0].weight[0] = first
        for conv in convs[1:]:
            conv.weight[0, 0, 1, 1] = 1.0
    model.classifier = head
    return model.eval().requires_grad_(False)


def channel_head(classes: int, weights: list[float], bias: list[float] | None = None) -> nn.Linear:
    """A head whose class k logit is ``weights[k]`` times the mean of channel 0 over the
    7x7 pooled grid (+ ``bias[k]``); it looks at nothing else."""
    head = nn.Linear(512 * 7 * 7, classes)
    with torch.no_grad():
        head.weight.zero_()
        for k, w in enumerate(weights):
            head.weight[k, :49] = w / 49
        head.bias.copy_(torch.tensor(bias or [0.0] * classes))
    return head
