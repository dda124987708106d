"""Hostile or broken checkpoints: every kind is refused with one line naming the file and the
first bad key, never a traceback from deep inside torch."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vggviz.core.errors import WeightsError
from vggviz.model.checkpoints import read_checkpoint
from vggviz.model.loading import load_model


def _features(path: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(path, weights_only=True))


def _quantized(t: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch deprecates quantized tensors; files still hold them
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)


def _sparse_csr(t: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore")
        return t.reshape(t.shape[0], -1).to_sparse_csr()


W0 = "features.0.weight"
BAD: dict[str, tuple[Callable[[dict], dict], str]] = {
    "non-string key": (
        lambda s: {0: s[W0], **s},
        "key 0 (int) is not a name",
    ),
    "tuple key": (
        lambda s: {**s, ("features", 0): s[W0]},
        "key ('features', 0) (tuple) is not a name",
    ),
    "meta tensor": (
        lambda s: {**s, W0: torch.empty(64, 3, 3, 3, device="meta")},
        f"{W0} is a meta tensor (a shape without data)",
    ),
    "sparse tensor": (
        lambda s: {**s, W0: s[W0].to_sparse()},
        f"{W0} is not a dense tensor (layout torch.sparse_coo)",
    ),
    "sparse csr tensor": (
        lambda s: {**s, "features.0.bias": _sparse_csr(s["features.0.bias"][:, None])},
        "features.0.bias is not a dense tensor (layout torch.sparse_csr)",
    ),
    "integer tensor": (
        lambda s: {**s, W0: s[W0].to(torch.int32)},
        f"{W0} holds torch.int32 values, not floating point",
    ),
    "bool tensor": (
        lambda s: {**s, "features.0.bias": s["features.0.bias"] > 0},
        "features.0.bias holds torch.bool values, not floating point",
    ),
    "complex tensor": (
        lambda s: {**s, W0: s[W0].to(torch.complex64)},
        f"{W0} holds torch.complex64 values, not floating point",
    ),
    "quantized tensor": (
        lambda s: {**s, W0: _quantized(s[W0])},
        f"{W0} is a quantized tensor (torch.qint8)",
    ),
    "not a tensor": (
        lambda s: {**s, W0: [1.0, 2.0]},
        f"{W0} is not a tensor but list",
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, vgg11_file, kind) -> None:
    corrupt, reason = BAD[kind]
    path = tmp_path / f"{kind.replace(' ', '_')}.pth"
    torch.save(corrupt(_features(vgg11_file)), path)
    with pytest.raises(WeightsError) as err:
        load_model("vgg11", str(path), device="cpu")
    message = str(err.value)
    assert message == (
        f"{path}: {reason} (a state dict maps names to dense floating-point tensors)"
    )
    assert "\n" not in message


def test_num_batches_tracked_may_be_an_integer(tmp_path, vgg11_bn_random) -> None:
    """BatchNorm's step counter is int64 in every real checkpoint: not a reason to refuse."""
    state = vgg11_bn_random.state_dict()
    assert state["features.1.num_batches_tracked"].dtype == torch.int64
    path = tmp_path / "bn.pth"
    torch.save(state, path)
    loaded = load_model("vgg11_bn", str(path), device="cpu")
    assert torch.equal(loaded.model.features[0].weight, state[W0])
    bad = {**state, "features.1.running_mean": state["features.1.running_mean"].long()}
    torch.save(bad, path)
    with pytest.raises(WeightsError, match="features.1.running_mean holds torch.int64 values"):
        read_checkpoint(path)


def test_other_float_dtypes_load(tmp_path, vgg11_file) -> None:
    """fp16 and fp64 checkpoints are floating point: converted, not refused."""
    state = _features(vgg11_file)
    path = tmp_path / "half.pth"
    torch.save(
        {k: v.half() if i % 2 else v.double() for i, (k, v) in enumerate(state.items())}, path
    )
    loaded = load_model("vgg11", str(path), device="cpu")
    assert loaded.model.features[0].weight.dtype == torch.float32
    torch.testing.assert_close(loaded.model.features[0].weight, state[W0].double().float())


@pytest.mark.parametrize(
    ("key", "value", "counts"),
    [
        ("features.0.weight", float("nan"), "1 NaN and 0 infinite"),
        ("features.3.bias", float("inf"), "0 NaN and 1 infinite"),
        ("features.18.weight", float("-inf"), "0 NaN and 1 infinite"),  # the last conv
    ],
)
def test_nan_or_inf_in_used_weights_is_refused(tmp_path, vgg11_file, key, value, counts) -> None:
    state = _features(vgg11_file)
    state[key] = state[key].clone()
    state[key].view(-1)[5] = value
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_model("vgg11", str(path), device="cpu")
    assert str(err.value) == (
        f"{path}: {key} holds {counts} value(s) of {state[key].numel()}; "
        "these weights cannot give meaningful maps"
    )


def test_nan_in_weights_the_maps_never_use_is_accepted(tmp_path, vgg11_random) -> None:
    """The classifier never runs: a NaN there changes no picture."""
    state = {k: v.clone() for k, v in vgg11_random.state_dict().items()}
    state["classifier.6.bias"][0] = float("nan")
    path = tmp_path / "classifier_nan.pth"
    torch.save(state, path)
    loaded = load_model("vgg11", str(path), device="cpu")
    assert torch.isfinite(loaded.model.features[0].weight).all()


def test_odd_key_names_keep_the_message_on_one_line(tmp_path, vgg11_file) -> None:
    state = _features(vgg11_file)
    path = tmp_path / "odd.pth"
    torch.save({**state, "features.0.weight\nrm -rf": state[W0].long()}, path)
    with pytest.raises(WeightsError) as err:
        load_model("vgg11", str(path), device="cpu")
    assert "\n" not in str(err.value)
    assert "'features.0.weight\\nrm -rf' holds torch.int64 values" in str(err.value)
    torch.save({**state, "features." + "x" * 10_000: state[W0]}, path)
    with pytest.raises(WeightsError, match=r"unexpected 'features\.xxx+\.\.\.$") as err:
        load_model("vgg11", str(path), device="cpu")
    assert len(str(err.value)) < 400
