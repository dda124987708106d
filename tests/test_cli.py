"""The commands as a user runs them (CliRunner, absolute tmp paths, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import load_npz, write_photo
from PIL import Image

from vggviz.cli import cli
from vggviz.core import images
from vggviz.model.hooks import chain_maps, network_maps
from vggviz.model.loading import load_model

VGG11_PICTURES = [f"{i:02d}-conv{i}.png" for i in range(1, 9)]


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def features(out: Path, weights: Path, *args: str, arch: str = "vgg11_bn"):
    return invoke(
        "features",
        *args,
        "--arch",
        arch,
        "--weights",
        weights,
        "--size",
        "32",
        "--device",
        "cpu",
        "-o",
        out,
    )


def test_every_command_has_help_with_an_example() -> None:
    names = [
        *("info", "filters", "features", "explain", "top"),
        *("weights", "weights download", "weights import"),
    ]
    for name in names:
        result = invoke(*name.split(), "--help")
        assert result.exit_code == 0, name
        assert "Example:" in result.output, name
    top = invoke("--help")
    commands = ("features", "explain", "filters", "info", "top", "weights")
    assert all(n in top.output for n in commands)


def test_features_writes_one_picture_per_layer(tmp_path, photo, vgg11_bn_file) -> None:
    out = tmp_path / "out"
    result = features(out, vgg11_bn_file, photo, "--json")
    assert result.exit_code == 0, result.output
    folder = out / "photo_png"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*VGG11_PICTURES, "overview.png", "record.json"]
    )
    # 48x64 -> 32x43: conv1's 32x43 maps are enlarged 5x to 160x215 tiles, 4x4 of them
    with Image.open(folder / "01-conv1.png") as im:
        assert im.mode == "P" and im.width == 4 * (215 + 4) + 4
        assert im.height > 4 * (160 + 4) + 4
    # conv8's 2x2 maps are enlarged 112x to 224x224 tiles
    with Image.open(folder / "08-conv8.png") as im:
        assert im.width == 4 * (224 + 4) + 4
    (line,) = result.stdout.splitlines()
    record = json.loads(line)
    assert record["status"] == "ok" and record["input"] == str(photo)
    assert [la["name"] for la in record["layers"]] == [f"conv{i}" for i in range(1, 9)]
    assert record["layers"][0]["shape"] == [64, 32, 43]
    assert record["layers"][7]["module"] == "features.25"
    assert len(record["layers"][0]["channels"]) == 16
    assert (folder / "record.json").stat().st_mode & 0o777 == 0o644 & ~_umask()
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert manifest == [record]
    index = (out / "index.html").read_text()
    assert 'src="filters-conv1.png"' in index and 'src="photo_png/overview.png"' in index
    with Image.open(out / "filters-conv1.png") as im:
        assert im.width == 8 * (96 + 6) + 6  # conv1's 64 kernels, 8x8


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask & 0o777


def test_save_raw_holds_exactly_the_network_maps(tmp_path, photo, vgg11_bn_file) -> None:
    out = tmp_path / "out"
    result = features(out, vgg11_bn_file, photo, "--save-raw", "--stage", "bn", "--json")
    assert result.exit_code == 0, result.output
    raw = load_npz(out / "photo_png" / "maps.npz")
    assert sorted(raw) == sorted(f"conv{i}" for i in range(1, 9))
    loaded = load_model("vgg11_bn", str(vgg11_bn_file), device="cpu")
    x = images.to_array(images.resize_for_model(images.load_rgb(photo), 32), True)
    expected = network_maps(loaded.model, loaded.layers, torch.from_numpy(x)[None], "bn")
    for name, tensor in expected.items():
        assert raw[name].dtype == np.float32 and raw[name].shape == tuple(tensor.shape[1:])
        np.testing.assert_array_equal(raw[name], tensor[0].numpy())
    record = json.loads(result.stdout)
    conv3 = record["layers"][2]
    assert conv3["mean"] == pytest.approx(float(raw["conv3"].mean()), abs=1e-5)
    assert conv3["max"] == pytest.approx(float(raw["conv3"].max()), abs=1e-5)
    means = raw["conv3"].mean(axis=(1, 2))
    assert conv3["channels"] == [int(i) for i in np.argsort(-means, kind="stable")[:16]]


def test_chain_mode_is_the_tutorials_computation(tmp_path, photo, vgg11_bn_file) -> None:
    out = tmp_path / "out"
    result = features(
        out,
        vgg11_bn_file,
        photo,
        "--mode",
        "chain",
        "--no-normalize",
        "--save-raw",
        "--layers",
        "conv1-conv3",
        "--json",
    )
    assert result.exit_code == 0, result.output
    raw = load_npz(out / "photo_png" / "maps.npz")
    loaded = load_model("vgg11_bn", str(vgg11_bn_file), device="cpu")
    x = images.to_array(images.resize_for_model(images.load_rgb(photo), 32), False)
    for layer, tensor in chain_maps(loaded.layers, torch.from_numpy(x)[None], loaded.layers[:3]):
        assert raw[layer.alias].shape == (tensor.shape[1], 32, 43)  # full input resolution
        np.testing.assert_array_equal(raw[layer.alias], tensor[0].numpy())
    record = json.loads(result.stdout)
    assert [la["channels"] for la in record["layers"]] == [
        list(range(16))
    ] * 3  # tutorial: first 16


def test_a_bad_input_is_named_and_the_others_are_done(tmp_path, vgg11_bn_file) -> None:
    good = write_photo(tmp_path / "in" / "good.png")
    bad = tmp_path / "in" / "bad.jpg"
    bad.write_text("<html>not a photo</html>")
    missing = tmp_path / "in" / "missing.png"
    out = tmp_path / "out"
    result = features(out, vgg11_bn_file, bad, good, missing)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {bad}: not an image (unrecognised format)",
        f"error: {missing}: no such file",
    ]
    assert "1 done, 2 failed, 0 skipped" in result.stderr
    assert "Traceback" not in result.output
    assert (out / "good_png" / "record.json").is_file()
    assert not (out / "bad_jpg").exists()


def test_random_weights_and_filters(tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("filters", "--arch", "vgg11", "--weights", "random", "--seed", "3", "-o", out)
    assert result.exit_code == 0, result.output
    path = out / "filters-conv1.png"
    assert result.stdout.strip() == str(path)
    with Image.open(path) as im:
        assert im.width == 8 * (96 + 6) + 6
    result = invoke(
        "filters",
        "--arch",
        "vgg11",
        "--weights",
        "random",
        "--layer",
        "conv2",
        "--view",
        "channel",
        "--channel",
        "5",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    with Image.open(out / "filters-conv2-channel.png") as im:
        # conv2 of vgg11: 128 kernels -> 12 columns of 3x3 kernels enlarged 32x
        assert im.width == 12 * (96 + 6) + 6


def test_info_table() -> None:
    result = invoke("info")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "vgg16_bn: 13 conv layers, input 3 x 224 x 224"
    conv13 = next(line for line in lines if line.startswith("conv13"))
    assert conv13.split() == [
        "conv13",
        "features.40",
        "512",
        "->",
        "512",
        "3x3",
        "1/1",
        "512",
        "x",
        "14",
        "x",
        "14",
        "2,359,808",
    ]
    assert (
        "feature extractor frozen: 14,723,136 parameters frozen; 123,642,856 would" in result.output
    )
    assert any(line.split() == ["classifier.6.bias", "1,000"] for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["features", "x.jpg", "--mode", "bogus"], "'bogus' is not one of 'network', 'chain'"),
        (["features", "x.jpg", "--grid", "0x3"], "expected RxC"),
        (["features", "x.jpg", "--cmap", "nope"], "unknown colour map 'nope'"),
        (["features", "x.jpg", "--shard", "4/3"], "shard"),
        (["features", "x.jpg", "--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
        (["features", "x.jpg", "--weights", "nothing"], "or a weights file (.pth"),
        (["features", "x.jpg", "--size", "8"], "8 is not in the range 32<=x<=4096"),
        (["features"], "Missing argument 'IMAGES...'"),
        (
            ["filters", "--weights", "random", "--layer", "conv99", "--arch", "vgg11"],
            "unknown layer 'conv99'",
        ),
    ],
)
def test_usage_errors_exit_2(args, message) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_absent_is_a_clear_error(tmp_path, photo, vgg11_bn_file) -> None:
    result = invoke(
        "features",
        photo,
        "--arch",
        "vgg11_bn",
        "--weights",
        vgg11_bn_file,
        "--device",
        "cuda",
        "-o",
        tmp_path,
    )
    assert result.exit_code == 1
    # the library names no flag (DeviceError.param is "device"); the command line adds it
    assert result.stderr == "Error: --device cuda: CUDA is not available here; use cpu\n"


def test_imagenet_weights_missing_is_one_line_exit_1(tmp_path, photo, monkeypatch) -> None:
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))

    def offline(*_a, **_k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    result = invoke("features", photo, "--arch", "vgg11", "-o", tmp_path / "out")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ImageNet weights for vgg11 are not cached at ")
    assert "vgg11-8a719046.pth" in line and "--weights random" in line
    status = invoke("weights", "--arch", "vgg11")
    assert status.exit_code == 1
    assert status.stdout.split()[:2] == ["vgg11", "missing"]


def test_the_readme_documents_every_explain_option() -> None:
    """Each of explain's options (as --help lists them) is in the README's explain section,
    and the picture it shows is committed."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    section = readme.split("### `vggviz explain IMAGE...`")[1].split("\n### ")[0]
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", invoke("explain", "--help").output))
    options -= {"--help", "--arch", "--weights", "--trust-checkpoint", "--seed", "--device"}
    options -= {"--precision", "--normalize", "--output-dir"}  # shared, in the table above
    missing = sorted(o for o in options if o not in section)
    assert not missing, missing
    for picture in re.findall(r"\]\((examples/readme/[^)]+)\)", section):
        assert (Path(__file__).parent.parent / picture).is_file(), picture
