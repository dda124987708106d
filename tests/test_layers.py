from __future__ import annotations

import pytest
from torch import nn

from vggviz.core.errors import UsageError
from vggviz.model.layers import find_conv_layers, select_layers
from vggviz.model.loading import ARCHS, build

CONV_COUNTS = {"vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_vgg_has_its_convs_in_order(arch: str) -> None:
    model = build(arch)  # meta device: no memory, no init
    layers = find_conv_layers(model)
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [la.name for la in layers] == expected
    assert len(layers) == CONV_COUNTS[arch.removesuffix("_bn")]
    assert [la.alias for la in layers] == [f"conv{i}" for i in range(1, len(layers) + 1)]
    for la in layers:
        idx = int(la.name.split(".")[1])
        assert la.relu == f"features.{idx + (2 if arch.endswith('_bn') else 1)}"
        assert la.bn == (f"features.{idx + 1}" if arch.endswith("_bn") else None)


def test_vgg16_bn_module_names_match_the_tutorials_print() -> None:
    layers = find_conv_layers(build("vgg16_bn"))
    names = [la.name for la in layers]
    assert names[0] == "features.0" and names[-1] == "features.40"
    assert names == [f"features.{i}" for i in (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)]


def test_nested_sequentials_are_walked() -> None:
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.Conv2d(4, 5, 3), nn.ReLU())),
        nn.Conv2d(5, 6, 1),
    )
    layers = find_conv_layers(model)
    assert [(la.name, la.bn, la.relu) for la in layers] == [
        ("0.0", "0.1", "0.2"),
        ("1.0.0", None, "1.0.1"),
        ("2", None, None),
    ]
    with pytest.raises(UsageError, match="conv3 \\(2\\) has no RELU"):
        layers[2].stage_module("relu")
    with pytest.raises(UsageError, match="conv2 \\(1.0.0\\) has no BN"):
        layers[1].stage_module("bn")


def test_select_layers_by_alias_module_number_and_range() -> None:
    layers = find_conv_layers(build("vgg16_bn"))
    pick = select_layers
    assert [la.alias for la in pick(layers, "all")] == [f"conv{i}" for i in range(1, 14)]
    assert [la.alias for la in pick(layers, "conv3")] == ["conv3"]
    assert [la.alias for la in pick(layers, "features.7")] == ["conv3"]
    assert [la.alias for la in pick(layers, "13,1")] == ["conv1", "conv13"]
    assert [la.alias for la in pick(layers, "conv2-conv4, conv2")] == ["conv2", "conv3", "conv4"]
    with pytest.raises(UsageError, match="unknown layer 'conv14': this model has conv1..conv13"):
        pick(layers, "conv14")
    with pytest.raises(UsageError, match="no layer selected"):
        pick(layers, " , ")
