"""``--weights random`` builds only the conv part, yet draws torchvision's exact numbers."""

from __future__ import annotations

import torch
import torchvision

from vggviz.model import loading


def _features(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


def _assert_torchvisions_numbers(arch: str, seed: int, reference: torch.nn.Module) -> None:
    mine = _features(loading.build_random(arch, seed))
    theirs = _features(reference)
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key


def test_chunked_draws_consume_the_generator_like_one_tensor() -> None:
    count = 3 * loading.RNG_CHUNK + 12345
    torch.manual_seed(7)
    torch.empty(count).uniform_(-0.3, 0.3)
    expected = torch.rand(5)
    torch.manual_seed(7)
    loading._skip_uniform(count)
    assert torch.equal(torch.rand(5), expected)
    torch.manual_seed(7)
    loading._skip_uniform(count - 1)  # one draw short is seen: the check can fail
    assert not torch.equal(torch.rand(5), expected)


def test_vgg11_random_is_torchvisions(vgg11_random) -> None:
    _assert_torchvisions_numbers("vgg11", 0, vgg11_random)


def test_vgg11_bn_random_is_torchvisions(vgg11_bn_random) -> None:
    _assert_torchvisions_numbers("vgg11_bn", 0, vgg11_bn_random)
    model = loading.build_random("vgg11_bn", 0)
    assert all(p.is_meta for p in model.classifier.parameters())  # never materialised


def test_vgg16_bn_random_is_torchvisions() -> None:
    """The default architecture, another seed (about 1.5 s: torchvision builds 553 MB)."""
    torch.manual_seed(3)
    reference = torchvision.models.vgg16_bn(weights=None)
    _assert_torchvisions_numbers("vgg16_bn", 3, reference)
