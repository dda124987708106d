from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from vggviz.core.errors import DeviceError, UsageError, WeightsError
from vggviz.model import imagenet, loading
from vggviz.model.loading import imagenet_cache_path, load_model


def _assert_same_features(loaded: loading.LoadedModel, reference: torch.nn.Module) -> None:
    mine = {k: v for k, v in loaded.model.state_dict().items() if k.startswith("features.")}
    theirs = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key


def test_random_weights_are_the_torchvision_recipe(vgg11_random) -> None:
    loaded = load_model("vgg11", "random", seed=0, device="cpu")
    _assert_same_features(loaded, vgg11_random)
    assert loaded.random and loaded.weights == "random (seed 0)"
    other = load_model("vgg11", "random", seed=1, device="cpu")
    assert not torch.equal(other.model.features[0].weight, vgg11_random.features[0].weight)


def test_classifier_is_never_materialised(vgg11_file) -> None:
    loaded = load_model("vgg11", str(vgg11_file), device="cpu")
    assert all(p.is_meta for p in loaded.model.classifier.parameters())
    assert not any(p.is_meta for p in loaded.model.features.parameters())
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_features_only_and_full_state_dicts_load(tmp_path, vgg11_bn_random, vgg11_bn_file) -> None:
    full = tmp_path / "full.pt"
    torch.save(vgg11_bn_random.state_dict(), full)
    _assert_same_features(load_model("vgg11_bn", str(full), device="cpu"), vgg11_bn_random)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": vgg11_bn_random.state_dict(), "epoch": 3}, wrapped)
    _assert_same_features(load_model("vgg11_bn", str(wrapped), device="cpu"), vgg11_bn_random)
    features_only = load_model("vgg11_bn", str(vgg11_bn_file), device="cpu")
    saved = torch.load(vgg11_bn_file, weights_only=True)
    for key, value in saved.items():
        assert torch.equal(features_only.model.state_dict()[key], value)


def test_legacy_format_checkpoints_load(tmp_path, vgg11_random) -> None:
    """torchvision's own 2017 checkpoints predate the zip format that mmap needs."""
    legacy = tmp_path / "legacy.pth"
    torch.save(vgg11_random.state_dict(), legacy, _use_new_zipfile_serialization=False)
    _assert_same_features(load_model("vgg11", str(legacy), device="cpu"), vgg11_random)


def test_checkpoint_for_another_architecture_is_refused(vgg11_file, vgg11_bn_file) -> None:
    with pytest.raises(WeightsError) as err:
        load_model("vgg11_bn", str(vgg11_file), device="cpu")
    message = str(err.value)
    assert message.startswith(f"{vgg11_file} does not fit vgg11_bn: missing features.1.weight")
    assert message.endswith("it looks like a vgg11 checkpoint (try arch='vgg11')")
    with pytest.raises(WeightsError, match="does not fit vgg16: missing .*; unexpected .*vgg11"):
        load_model("vgg16", str(vgg11_file), device="cpu")
    state = torch.load(vgg11_file, weights_only=True)
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    grey = vgg11_file.parent / "grey_input.pth"
    torch.save(state, grey)
    with pytest.raises(
        WeightsError, match=r"wrong shape features.0.weight \(64, 1, 3, 3\) vs \(64, 3, 3, 3\)$"
    ):
        load_model("vgg11", str(grey), device="cpu")
    with pytest.raises(WeightsError, match="unexpected features.1.weight.*try arch='vgg11_bn'\\)$"):
        load_model("vgg11", str(vgg11_bn_file), device="cpu")


def test_files_that_are_not_state_dicts_are_refused(tmp_path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(WeightsError, match="notes.pth: not a PyTorch or safetensors file"):
        load_model("vgg11", str(text), device="cpu")
    listy = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(WeightsError, match="list.pth: holds a list, not a state dict"):
        load_model("vgg11", str(listy), device="cpu")
    with pytest.raises(WeightsError, match="missing.pth: no such weights file"):
        load_model("vgg11", str(tmp_path / "missing.pth"), device="cpu")


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_can_never_run_code(tmp_path, legacy) -> None:
    """Without trust nothing in the file runs (refused, naming what it would call); trusted,
    the same file's code does run: the payload is live, so the first check can fail."""
    evil = Payload()
    evil.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": evil}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(WeightsError) as err:
        load_model("vgg11", str(path), device="cpu")
    assert str(err.value).startswith(
        f"{path}: a checkpoint that needs builtins.getattr, pathlib.Path to load, "
        "which runs code when loaded; if you made it yourself, use trust_checkpoint=True"
    )
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(WeightsError, match=r"holds no state dict \(entries: features.0.weight"):
        load_model("vgg11", str(path), device="cpu", trust=True)
    assert (tmp_path / "pwned").exists()


def test_imagenet_weights_come_from_torchvisions_cache(tmp_path, monkeypatch, vgg11_random) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "vgg11-8a719046.pth"
    assert imagenet_cache_path("vgg11") == expected
    assert expected.name == Path(torchvision.models.VGG11_Weights.IMAGENET1K_V1.url).name
    expected.parent.mkdir(parents=True)
    torch.save(
        {k: v for k, v in vgg11_random.state_dict().items() if k.startswith("features")}, expected
    )
    loaded = load_model("vgg11", "imagenet", device="cpu")
    assert loaded.weights == "ImageNet (IMAGENET1K_V1)" and not loaded.random
    _assert_same_features(loaded, vgg11_random)


def test_legacy_imagenet_checkpoints_get_a_mappable_features_copy(
    tmp_path, monkeypatch, vgg11_random
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    original = imagenet_cache_path("vgg11")
    original.parent.mkdir(parents=True)
    torch.save(vgg11_random.state_dict(), original, _use_new_zipfile_serialization=False)
    first = load_model("vgg11", "imagenet", device="cpu")
    copy = original.parent / "vggviz" / "vgg11-8a719046-features.pt"
    saved = torch.load(copy, weights_only=True, mmap=True)  # mmap: the current format
    assert sorted(saved) == sorted(
        k for k in vgg11_random.state_dict() if k.startswith("features.")
    )
    _assert_same_features(first, vgg11_random)
    original.touch()  # a newer original (re-downloaded) replaces the copy
    stamp = copy.stat().st_mtime_ns
    _assert_same_features(load_model("vgg11", "imagenet", device="cpu"), vgg11_random)
    assert copy.stat().st_mtime_ns > stamp
    stamp = copy.stat().st_mtime_ns
    load_model("vgg11", "imagenet", device="cpu")
    assert copy.stat().st_mtime_ns == stamp  # made once, then reused


def test_imagenet_weights_missing_and_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    asked = []

    def offline(url, **kwargs):
        asked.append((url, kwargs))
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as err:
        load_model("vgg16_bn", "imagenet", device="cpu")
    expected = tmp_path / "hub" / "checkpoints" / "vgg16_bn-6c64b313.pth"
    assert str(err.value) == (
        f"ImageNet weights for vgg16_bn are not cached at {expected} and could not be downloaded "
        "(Name or service not known); copy the file there (vggviz weights import FILE), "
        "or use weights='PATH' or weights='random'"
    )
    assert asked[0][0] == torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1.url
    assert asked[0][1]["check_hash"] is True and asked[0][1]["progress"] is True


def test_weights_import_checks_the_hash(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))
    copied = tmp_path / "copied.pth"
    copied.write_bytes(b"not the real checkpoint")
    with pytest.raises(WeightsError, match="copied.pth: sha256 [0-9a-f]{8}... matches none"):
        loading.import_weights(copied)
    monkeypatch.setattr(imagenet, "_sha256", lambda _path: "6c64b313" + "0" * 56)
    arch, path = loading.import_weights(copied)
    assert arch == "vgg16_bn" and path == imagenet_cache_path("vgg16_bn")
    assert path.read_bytes() == b"not the real checkpoint"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_but_absent() -> None:
    with pytest.raises(DeviceError, match="^cuda: CUDA is not available here; use cpu$") as err:
        loading.resolve_device("cuda")
    assert err.value.param == "device"  # the command line names its own flag
    with pytest.raises(DeviceError, match="^cuda:1: CUDA is not available"):
        loading.resolve_device(" CUDA:01")  # one parser for the syntax: options.parse_device
    with pytest.raises(UsageError, match="^'tpu': expected auto, cpu, cuda or cuda:N$"):
        loading.resolve_device("tpu")
    assert loading.resolve_device("auto") == torch.device("cpu")


def test_bf16_precision_converts_the_conv_modules(vgg11_file) -> None:
    loaded = load_model("vgg11", str(vgg11_file), device="cpu", precision="bf16")
    assert loaded.model.features[0].weight.dtype == torch.bfloat16


def test_bf16_support_is_reported_per_device(monkeypatch) -> None:
    from vggviz.model.loading import bf16_is_native

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not bf16_is_native(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert bf16_is_native(torch.device("cpu"))
