from __future__ import annotations

import pytest
import torch
from torch import nn

from vggviz.model.hooks import capture, chain_maps, followed_in_place, network_maps
from vggviz.model.layers import find_conv_layers


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _manual(features: nn.Sequential, x: torch.Tensor, stage_type: type) -> list[torch.Tensor]:
    """Layer-by-layer forward with no hooks, keeping the output of every ``stage_type``
    module that belongs to a conv (the first one after each conv)."""
    outs, armed = [], False
    with torch.no_grad():
        for module in features:
            x = module(x)
            if isinstance(module, nn.Conv2d):
                armed = True
            if armed and isinstance(module, stage_type):
                outs.append(x.clone())
                armed = False
    return outs


@pytest.mark.parametrize(
    ("stage", "stage_type"), [("conv", nn.Conv2d), ("bn", nn.BatchNorm2d), ("relu", nn.ReLU)]
)
def test_network_mode_equals_a_manual_forward(vgg11_bn_random, stage, stage_type) -> None:
    model = vgg11_bn_random
    layers = find_conv_layers(model)
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    maps = network_maps(model, layers, x, stage)
    expected = _manual(model.features, x, stage_type)
    assert list(maps) == [la.alias for la in layers]
    for la, want in zip(layers, expected, strict=True):
        torch.testing.assert_close(maps[la.alias], want, rtol=1e-5, atol=1e-5)
    assert _hooks(model) == 0
    assert not model.training


def test_conv_stage_is_cloned_before_the_inplace_relu(vgg11_random) -> None:
    """vgg11 has no BN: the conv output is the very tensor ReLU(inplace) overwrites."""
    layers = find_conv_layers(vgg11_random)[:2]
    maps = network_maps(vgg11_random, layers, torch.randn(1, 3, 32, 32), "conv")
    assert (maps["conv1"] < 0).any() and (maps["conv2"] < 0).any()


def test_stage_relu_maps_are_nonnegative_and_differ_from_conv(vgg11_bn_random) -> None:
    layers = find_conv_layers(vgg11_bn_random)
    x = torch.randn(1, 3, 32, 32)
    relu = network_maps(vgg11_bn_random, layers, x, "relu")
    bn = network_maps(vgg11_bn_random, layers, x, "bn")
    assert all((t >= 0).all() for t in relu.values())
    torch.testing.assert_close(relu["conv5"], bn["conv5"].clamp(min=0))


def test_forward_stops_after_the_last_layer(vgg11_bn_random) -> None:
    """Only up to conv2 is needed; the classifier (which would fail on this size) never runs."""
    layers = find_conv_layers(vgg11_bn_random)[:2]
    calls = []
    handle = vgg11_bn_random.features[8].register_forward_hook(lambda *_: calls.append(1))
    try:
        maps = network_maps(vgg11_bn_random, layers, torch.randn(1, 3, 20, 20), "relu")
    finally:
        handle.remove()
    assert list(maps) == ["conv1", "conv2"] and calls == []


def test_hooks_are_removed_after_an_exception(vgg11_bn_random) -> None:
    layers = find_conv_layers(vgg11_bn_random)
    with pytest.raises(RuntimeError):
        network_maps(vgg11_bn_random, layers, torch.randn(1, 5, 32, 32), "relu")  # 5 channels
    assert _hooks(vgg11_bn_random) == 0
    with pytest.raises(KeyError), capture(vgg11_bn_random, layers, "bn"):
        assert _hooks(vgg11_bn_random) == len(layers)
        raise KeyError("boom")
    assert _hooks(vgg11_bn_random) == 0


def test_training_flag_is_restored(vgg11_bn_random) -> None:
    vgg11_bn_random.train()
    try:
        network_maps(vgg11_bn_random, find_conv_layers(vgg11_bn_random), torch.randn(1, 3, 32, 32))
        assert vgg11_bn_random.training
    finally:
        vgg11_bn_random.eval()


def test_chain_mode_is_the_tutorials_loop(vgg11_bn_random) -> None:
    """The tutorial: collect the convs by walking children() one level into Sequentials,
    then feed each conv the previous conv's output."""
    convs = []
    for child in vgg11_bn_random.children():
        if isinstance(child, nn.Conv2d):
            convs.append(child)
        elif isinstance(child, nn.Sequential):
            convs.extend(c for c in child if isinstance(c, nn.Conv2d))
    x = torch.rand(1, 3, 24, 30)
    with torch.no_grad():
        results = [convs[0](x)]
        for conv in convs[1:]:
            results.append(conv(results[-1]))
    layers = find_conv_layers(vgg11_bn_random)
    got = list(chain_maps(layers, x))
    assert [la.alias for la, _ in got] == [la.alias for la in layers]
    for (_, mine), theirs in zip(got, results, strict=True):
        assert mine.shape[-2:] == (24, 30)  # full resolution: nothing is pooled
        torch.testing.assert_close(mine, theirs)
    # a selection still runs every conv before it
    (only,) = chain_maps(layers, x, [layers[3]])
    torch.testing.assert_close(only[1], results[3])


def test_only_maps_an_in_place_module_would_overwrite_are_copied(vgg11_bn_random) -> None:
    """conv and bn outputs are overwritten by ReLU(inplace) and must be copies; the relu
    output is the network's own tensor (no copy), and still correct after the forward."""
    layers = find_conv_layers(vgg11_bn_random)[:3]
    seen: dict[str, list[torch.Tensor]] = {}

    def remember(layer, tensor: torch.Tensor) -> None:
        seen.setdefault(layer.alias, []).append(tensor)

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for stage in ("conv", "bn", "relu"):
        seen.clear()
        network_maps(vgg11_bn_random, layers, x, stage, on_map=remember)
        expected = _manual(
            vgg11_bn_random.features,
            x,
            {"conv": nn.Conv2d, "bn": nn.BatchNorm2d}.get(stage, nn.ReLU),
        )
        for la, want in zip(layers, expected, strict=False):
            torch.testing.assert_close(seen[la.alias][0], want)
    # the relu map handed over is the very tensor the next module reads: no copy was made
    pointers = []
    handle = vgg11_bn_random.features[3].register_forward_pre_hook(
        lambda _m, inputs: pointers.append(inputs[0].data_ptr())
    )
    try:
        seen.clear()
        network_maps(vgg11_bn_random, layers, x, "relu", on_map=remember)
        assert pointers == [seen["conv1"][0].data_ptr()]
        seen.clear()
        pointers.clear()
        network_maps(vgg11_bn_random, layers, x, "bn", on_map=remember)
        assert pointers != [seen["conv1"][0].data_ptr()]  # bn maps are copies
    finally:
        handle.remove()
    assert not followed_in_place(vgg11_bn_random, layers[0].name)  # BN makes a new tensor
    assert followed_in_place(vgg11_bn_random, layers[0].bn)  # ReLU(inplace) overwrites it
    assert not followed_in_place(vgg11_bn_random, layers[0].relu)


def test_without_batch_norm_the_conv_output_is_copied(vgg11_random) -> None:
    (first, *_) = find_conv_layers(vgg11_random)
    assert followed_in_place(vgg11_random, first.name)
    assert not followed_in_place(vgg11_random, first.relu)
