"""The deletion check: blurring where the evidence is must hurt a class that rests on it, and
blurring as much at random must not; masks, blur and seeds behave as documented."""

from __future__ import annotations

import pytest
import torch
from explain_models import LAPLACIAN, channel_head, detector_vgg, small_vgg

from vggviz.core.images import IMAGENET_MEAN, IMAGENET_STD
from vggviz.explain import deletion
from vggviz.explain.deletion import blur, deletion_masks, deletion_test, photo_seed
from vggviz.explain.gradcam import GradCam, network_logits


def _red_texture_photo() -> tuple[torch.Tensor, slice, slice]:
    """A flat grey 64x64 photo with a fine red checkerboard in one 16x16 block (row 1,
    col 2 of the last conv's 4x4 map): the only place with red detail."""
    x = torch.full((1, 3, 64, 64), 0.5)
    rows, cols = slice(16, 32), slice(32, 48)
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    x[0, 0, rows, cols] = ((yy + xx) % 2).float()
    return x, rows, cols


def _red_detail_model() -> torch.nn.Module:
    """Channel 0 is red detail (a Laplacian of the red channel), carried to the last conv;
    class 0's logit rises linearly with its pooled mean, from -3 on a flat grey photo (the
    zero-padded borders still give some) to 3 on the textured photo: p 0.05 .. 0.95.
    Class 1's logit is 0."""
    first = torch.zeros(3, 3, 3)
    first[0] = LAPLACIAN
    x, _, _ = _red_texture_photo()
    probe = detector_vgg(first, channel_head(2, [1.0, 0.0]))
    with torch.inference_mode():
        textured = float(network_logits(probe, x)[0, 0])
        flat = float(network_logits(probe, torch.full_like(x, 0.5))[0, 0])
    scale = 6.0 / (textured - flat)
    return detector_vgg(first, channel_head(2, [scale, 0.0], [-3.0 - scale * flat, 0.0]))


def test_blurring_the_evidence_removes_the_class_and_random_does_not() -> None:
    """The known case: the class rests on one block's red detail, the evidence says so,
    blurring the top 20% removes the detail (p 0.95 -> ~0.05); blurring 20% at random leaves
    the block's detail somewhere (the last conv's map is a max over the block), so p stays."""
    model = _red_detail_model()
    x, rows, cols = _red_texture_photo()
    (e,) = GradCam(model)(x, classes=[0])
    assert e.explained[0].peak == (1, 2)
    assert e.probabilities[0] == pytest.approx(0.9526, abs=1e-3)
    for seed in (0, 1, 2):
        top, rand = deletion_masks(
            torch.from_numpy(e.explained[0].evidence[None]), (64, 64), 0.2, seed
        )
        assert top[0, rows, cols].all()  # the whole block is blurred
        assert not rand[rows, cols].all()  # random leaves some of it: the case is as described
        (d,) = deletion_test(model, x, [e], seeds=[seed])[0]
        assert d.original == pytest.approx(float(e.probabilities[0]))
        assert d.original_logit == pytest.approx(float(e.logits[0]))
        assert d.top < 0.1
        assert d.random == pytest.approx(d.original, abs=0.01)
        assert d.top_logit < -2 < 2 < d.random_logit


def test_masks_cover_the_fraction_and_follow_the_evidence() -> None:
    evidence = torch.zeros(2, 4, 4)
    evidence[0, 0, 0] = 1.0  # one hot corner block
    evidence[1] = torch.arange(16.0).reshape(4, 4)  # rising towards the bottom right
    top, rand = deletion_masks(evidence, (40, 60), 0.25, seed=3)
    assert top.shape == (2, 40, 60) and rand.shape == (40, 60)
    assert top.dtype == torch.bool and rand.dtype == torch.bool
    assert [int(m.sum()) for m in top] == [600, 600]
    assert int(rand.sum()) == 600
    assert top[0, :5, :7].all() and not top[0, -10:, :].any()
    assert top[1, -5:, -7:].all() and not top[1, :10, :].any()
    again = deletion_masks(evidence, (40, 60), 0.25, seed=3)
    assert torch.equal(again[0], top) and torch.equal(again[1], rand)
    other = deletion_masks(evidence, (40, 60), 0.25, seed=4)[1]
    assert not torch.equal(other, rand)


def test_no_evidence_means_the_random_mask() -> None:
    """Ties are broken by the random map: zero evidence deletes exactly the random pixels,
    so such a class reads top == random."""
    top, rand = deletion_masks(torch.zeros(1, 3, 3), (30, 30), 0.2, seed=9)
    assert torch.equal(top[0], rand)


def test_random_mask_has_the_evidence_grain() -> None:
    """The random fraction comes in blobs about one map cell big, not scattered pixels."""
    _, rand = deletion_masks(torch.zeros(1, 4, 4), (64, 64), 0.2, seed=0)
    r = rand.float()
    same = (r[:, 1:] == r[:, :-1]).float().mean()  # neighbours agreeing
    assert same > 0.95


def test_blur_commutes_with_imagenet_normalisation() -> None:
    """Blurring the network's input equals normalising the blurred photo: the check does
    not depend on how the input was normalised."""
    gen = torch.Generator().manual_seed(0)
    photo = torch.rand(1, 3, 40, 56, generator=gen)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(blur((photo - mean) / std), (blur(photo) - mean) / std)


def test_blur_removes_detail_and_keeps_the_mean() -> None:
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = ((yy + xx) % 2).float().expand(1, 3, 64, 64)
    out = blur(checker)
    assert out.shape == checker.shape
    assert float(out.std()) < 0.01
    assert float(out.mean()) == pytest.approx(0.5, abs=1e-3)
    flat = torch.full((1, 3, 32, 33), 0.3)  # the smallest input VGG takes: still valid
    torch.testing.assert_close(blur(flat), flat)


def test_photo_seed_depends_on_the_photo_only() -> None:
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    assert photo_seed(a) == photo_seed(a.clone())
    assert photo_seed(a) != photo_seed(b)
    assert 0 <= photo_seed(a) < 2**63


def test_batched_as_few_passes_as_the_batch_size_allows(monkeypatch) -> None:
    """B photos with K classes each take B * (K + 1) forwards, ``batch_size`` at a time,
    with the same answers whatever the batching."""
    model = small_vgg("vgg11", classes=6, seed=4)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    explained = GradCam(model)(x, top=2)
    sizes: list[int] = []
    original = deletion.network_logits

    def counting(m, batch):
        sizes.append(len(batch))
        return original(m, batch)

    monkeypatch.setattr(deletion, "network_logits", counting)
    one = deletion_test(model, x, explained, batch_size=9)
    assert sizes == [9]
    sizes.clear()
    four = deletion_test(model, x, explained, batch_size=4)
    assert sizes == [4, 4, 1]
    for a, b in zip(one, four, strict=True):
        for da, db in zip(a, b, strict=True):
            assert da.top == pytest.approx(db.top, rel=1e-4)
            assert da.random == pytest.approx(db.random, rel=1e-4)
    # each photo's random deletion is the same as when it is checked alone
    (alone,) = deletion_test(model, x[1:2], explained[1:2])
    assert [d.random for d in alone] == pytest.approx([d.random for d in one[1]], rel=1e-4)


def test_errors() -> None:
    model = small_vgg("vgg11", classes=3)
    x = torch.zeros(1, 3, 32, 32)
    explained = GradCam(model)(x, top=1)
    with pytest.raises(ValueError, match="2 explanations for 1 images"):
        deletion_test(model, x, explained * 2)
    with pytest.raises(ValueError, match="fraction must be between 0 and 1"):
        deletion_test(model, x, explained, fraction=1.0)
    with pytest.raises(ValueError, match="2 seeds for 1 images"):
        deletion_test(model, x, explained, seeds=[1, 2])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        deletion_test(model, x, explained, batch_size=0)


def test_a_stop_is_polled_before_each_forward(monkeypatch) -> None:
    """``stopping`` is asked before every forward pass; True leaves at once with Stopped."""
    model = small_vgg("vgg11", classes=4, seed=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    explained = GradCam(model)(x, top=2)
    asked: list[int] = []
    forwards: list[int] = []
    original = deletion.network_logits

    def counting(m, batch):
        forwards.append(len(batch))
        return original(m, batch)

    def stopping() -> bool:
        asked.append(len(forwards))
        return len(forwards) == 2

    monkeypatch.setattr(deletion, "network_logits", counting)
    with pytest.raises(deletion.Stopped):
        deletion_test(model, x, explained, batch_size=2, stopping=stopping)
    assert asked == [0, 1, 2] and forwards == [2, 2]
    forwards.clear()
    assert len(deletion_test(model, x, explained, batch_size=2, stopping=lambda: False)) == 2
    assert forwards == [2, 2, 2]
