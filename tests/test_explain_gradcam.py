"""Grad-CAM: the predictions are torchvision's, the evidence is an independent full-autograd
Grad-CAM's, a hand-set network gives the known answer, and the cheap way is really cheap
(no parameter gradient, nothing below the layer in the backward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from explain_models import channel_head, detector_vgg, small_vgg
from torch import nn

from vggviz.core.errors import UsageError, WeightsError
from vggviz.explain.gradcam import GradCam, head_outputs
from vggviz.model.architectures import vgg
from vggviz.model.layers import find_conv_layers


def _batch(size: int = 64, n: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen)


def _reference_gradcam(
    model: nn.Module, x: torch.Tensor, module_name: str, cls: int
) -> torch.Tensor:
    """Grad-CAM as the paper and pytorch-grad-cam compute it: a plain forward with every
    parameter requiring grad, the map kept (and copied, so that an in-place ReLU after it
    cannot change it) with retain_grad, a backward through the whole network."""
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        fmap = output.clone()
        fmap.retain_grad()
        store["map"] = fmap
        return fmap.clone()  # an in-place ReLU after the map writes into this copy

    was = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)
    handle = model.get_submodule(module_name).register_forward_hook(keep)
    try:
        logits = model(x)
        logits[0, cls].backward()
        fmap, grad = store["map"][0], store["map"].grad[0]
        cam = torch.relu((grad.mean(dim=(1, 2))[:, None, None] * fmap).sum(0))
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        for p, flag in zip(model.parameters(), was, strict=True):
            p.requires_grad_(flag)
    return cam.detach()


def test_predictions_are_torchvisions(vgg11_random) -> None:
    """Our VGG, holding torchvision's vgg11 state dict, gives the same logits as
    torchvision's own model; probabilities are their softmax, top the best first."""
    ours = vgg("vgg11").eval()
    ours.load_state_dict(vgg11_random.state_dict())
    x = _batch(n=3)
    explained = GradCam(ours)(x, top=5)
    with torch.no_grad():
        theirs = vgg11_random(x)
    for b, e in enumerate(explained):
        torch.testing.assert_close(torch.from_numpy(e.logits), theirs[b], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            torch.from_numpy(e.probabilities), torch.softmax(theirs[b], 0), rtol=1e-5, atol=1e-7
        )
        assert list(e.top) == torch.topk(theirs[b], 5).indices.tolist()
        assert [c.index for c in e.explained] == list(e.top)
        assert [c.logit for c in e.explained] == [float(e.logits[i]) for i in e.top]


CASES = [
    ("vgg11", 8, "relu"),  # the default: last conv after its ReLU
    ("vgg11", 4, "conv"),  # a conv map an in-place ReLU overwrites right after it
    ("vgg11_bn", 8, "relu"),
    ("vgg11_bn", 5, "bn"),  # BN output, also overwritten in place by the next ReLU
    ("vgg11_bn", 3, "conv"),
]


@pytest.fixture(scope="module")
def small_models() -> dict[str, nn.Module]:
    return {arch: small_vgg(arch) for arch in ("vgg11", "vgg11_bn")}


@pytest.mark.parametrize(("arch", "index", "stage"), CASES)
def test_evidence_equals_full_autograd_gradcam(small_models, arch, index, stage) -> None:
    model = small_models[arch]
    layer = find_conv_layers(model)[index - 1]
    cam = GradCam(model, layer, stage)
    x = _batch(size=48, n=2, seed=index)
    for classes in (None, [7, 2]):
        explained = cam(x, top=2, classes=classes)
        for b, e in enumerate(explained):
            assert [c.index for c in e.explained] == (list(e.top) if classes is None else classes)
            for c in e.explained:
                want = _reference_gradcam(model, x[b : b + 1], layer.stage_module(stage), c.index)
                assert c.evidence.dtype == np.float32
                assert c.evidence.shape == tuple(want.shape)
                assert want.max() > 0  # the comparison is not 0 == 0
                torch.testing.assert_close(
                    torch.from_numpy(c.evidence), want, rtol=1e-4, atol=1e-5 * float(want.max())
                )
                row, col = divmod(int(torch.argmax(want)), want.shape[1])
                assert c.peak == (row, col)


def test_the_default_1000_class_head(vgg11_random) -> None:
    """torchvision's own head (Linear/ReLU/Dropout, in-place ReLUs) at the default layer;
    the model's flags (requires_grad True, train mode) are as they were afterwards."""
    model = vgg11_random
    x = _batch(n=1, seed=3)
    model.train()
    try:
        (e,) = GradCam(model)(x, top=2)
        assert model.training
    finally:
        model.eval()
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    layer = find_conv_layers(model)[-1]
    for c in e.explained:
        want = _reference_gradcam(model, x, layer.relu, c.index)
        torch.testing.assert_close(
            torch.from_numpy(c.evidence), want, rtol=1e-4, atol=1e-5 * float(want.max())
        )


def test_channels_last_weights_give_the_same_evidence(small_models) -> None:
    """The loader keeps conv weights channels-last; the answer must not change."""
    model = small_models["vgg11_bn"]
    x = _batch(n=2, seed=5)
    before = GradCam(model)(x, top=2)
    model.to(memory_format=torch.channels_last)
    try:
        after = GradCam(model)(x, top=2)
    finally:
        model.to(memory_format=torch.contiguous_format)
    for a, b in zip(before, after, strict=True):
        for ca, cb in zip(a.explained, b.explained, strict=True):
            torch.testing.assert_close(
                torch.from_numpy(cb.evidence), torch.from_numpy(ca.evidence), rtol=1e-4, atol=1e-7
            )


def test_known_answer_bright_patch() -> None:
    """Channel 0 of the last conv is the brightest RGB sum in each 16x16 block (conv1 sums
    R, G and B at the centre tap; later convs pass it on), and the class-0 logit is the mean
    of channel 0 after pooling. Its gradient is 1/4 at each 2x2 max-pool winner, so every
    channel weight is 0 but channel 0's, 4 * (1/4) / 16 = 1/16: the evidence is exactly the
    block-max brightness / 16, and its peak is the block holding the bright patch. Class 1
    (minus the same mean) has no evidence at all."""
    first = torch.zeros(3, 3, 3)
    first[:, 1, 1] = 1.0
    model = detector_vgg(first, channel_head(2, [1.0, -1.0]))
    x = torch.full((1, 3, 64, 64), 0.1)
    x[0, :, 20:27, 40:45] = 0.9  # inside block (1, 2) of the 4x4 map
    (e,) = GradCam(model)(x, top=2, classes=[0, 1])
    want = F.max_pool2d(x.sum(1), 16)[0] / 16
    torch.testing.assert_close(torch.from_numpy(e.explained[0].evidence), want)
    assert e.explained[0].peak == (1, 2)
    assert e.explained[1].evidence.max() == 0
    assert e.explained[1].peak is None
    assert e.top == (0, 1)


def test_no_parameter_gradient_and_nothing_below_the_layer_in_the_backward(
    small_models,
) -> None:
    """Every module runs once; those up to the map without autograd, those above with it;
    while the head runs no parameter requires grad (so no weight gradient can exist); and
    afterwards no parameter holds a gradient and their flags are restored."""
    model = small_models["vgg11"]
    layer = find_conv_layers(model)[4]
    split = int(layer.relu.split(".")[1])
    was = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)  # as a user's model may be: the call must not compute them
    calls: list[tuple[str, bool, bool]] = []

    def spy(name: str):
        def hook(_module: nn.Module, _inputs: object, _output: object) -> None:
            grads = any(p.requires_grad for p in model.parameters())
            calls.append((name, torch.is_grad_enabled(), grads))

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(spy(n)) for n, m in leaves]
    try:
        GradCam(model, layer, "relu")(_batch(n=2), top=3)
    finally:
        for h in handles:
            h.remove()
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        for p, flag in zip(params, was, strict=True):
            p.requires_grad_(flag)
    assert [name for name, _, _ in calls] == [n for n, _ in leaves]
    for name, grad_enabled, params_require in calls:
        below = name.startswith("features.") and int(name.split(".")[1]) <= split
        assert grad_enabled == (not below), name
        assert not params_require, name
    assert all(p.grad is None for p in params)
    assert all(flags)


def test_errors() -> None:
    model = small_vgg("vgg11", classes=4)
    assert head_outputs(model) == 4
    cam = GradCam(model)
    x = _batch(size=32, n=1)
    with pytest.raises(UsageError, match="top must be at least 1") as err:
        cam(x, top=0)
    assert err.value.param == "top"
    with pytest.raises(UsageError, match=r"class 4 is out of range: .* 0\.\.3") as err:
        cam(x, classes=[1, 4])
    assert err.value.param == "class"
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        cam(x[0])
    with pytest.raises(ValueError, match="classes is empty"):
        cam(x, classes=[])
    (e,) = cam(x, top=99)  # more than the head has: all of them
    assert sorted(e.top) == [0, 1, 2, 3]
    with torch.device("meta"):
        headless = vgg("vgg11")
    headless.features = model.features
    with pytest.raises(WeightsError, match="classifier holds no weights"):
        GradCam(headless)
    with pytest.raises(WeightsError, match="classifier holds no weights"):
        head_outputs(headless)
    with pytest.raises(
        ValueError, match="not a torchvision-layout VGG: the model has no 'features'"
    ):
        GradCam(nn.Sequential(model.features))


def test_bf16_model_agrees_with_fp32() -> None:
    """A bf16 model (head too) gives float32 results close to the fp32 ones."""
    model = small_vgg("vgg11", classes=5, seed=2)
    x = _batch(size=32, n=1, seed=2)
    (want,) = GradCam(model)(x, top=1)
    model.to(torch.bfloat16)
    (got,) = GradCam(model)(x, classes=[want.top[0]])
    assert got.logits.dtype.name == "float32"
    assert got.explained[0].evidence.dtype.name == "float32"
    a = torch.from_numpy(got.explained[0].evidence).flatten()
    b = torch.from_numpy(want.explained[0].evidence).flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    torch.testing.assert_close(
        torch.from_numpy(got.logits), torch.from_numpy(want.logits), rtol=0.05, atol=0.05
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpu_answer() -> None:
    model = small_vgg("vgg11_bn")
    x = _batch(n=2)
    want = GradCam(model)(x, top=2)
    got = GradCam(model.to("cuda"))(x, top=2)
    for a, b in zip(want, got, strict=True):
        assert a.top == b.top
        for ca, cb in zip(a.explained, b.explained, strict=True):
            torch.testing.assert_close(
                torch.from_numpy(cb.evidence), torch.from_numpy(ca.evidence), rtol=1e-3, atol=1e-6
            )


def test_a_saturated_head_is_ranked_by_its_logits() -> None:
    """Classes 1 and 2 both have probability 0.0 in float32 (logits 250 and 300 below class
    0's): the second best is still the one with the larger logit, not the lower index."""
    first = torch.zeros(3, 3, 3)
    model = detector_vgg(first, channel_head(3, [0.0, 0.0, 0.0], [300.0, 0.0, 50.0]))
    (e,) = GradCam(model)(torch.zeros(1, 3, 32, 32), top=3)
    assert e.probabilities[1] == e.probabilities[2] == 0.0
    assert e.top == (0, 2, 1)
