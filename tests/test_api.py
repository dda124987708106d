"""The Python API (``vggviz.load_model``, ``feature_maps``, ``layer_picture``,
``filters_picture``): the same numbers and pictures as the command line, for our models and
for a VGG the user built in Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import load_npz, write_photo
from PIL import Image

import vggviz
from vggviz.cli import cli
from vggviz.core.errors import UsageError


def _cli(*args: object) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_the_api_is_small_documented_and_lazy() -> None:
    assert set(vggviz.__all__) == {
        "FeatureMaps",
        "__version__",
        "feature_maps",
        "filters_picture",
        "layer_picture",
        "load_model",
    }
    for name in vggviz.__all__:
        assert name == "__version__" or getattr(vggviz, name).__doc__, name
    code = "import sys, vggviz; print('torch' in sys.modules, vggviz.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", vggviz.__version__]  # --help stays instant
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = vggviz.nothing  # type: ignore[attr-defined]


@pytest.mark.parametrize("extra", [[], ["--stage", "bn", "--mode", "network"], ["--mode", "chain"]])
def test_maps_and_pictures_equal_the_command_lines(tmp_path, vgg11_bn_file, extra) -> None:
    """``feature_maps`` gives maps.npz bit for bit; ``layer_picture`` and ``filters_picture``
    give the command line's PNGs pixel for pixel (same titles, same defaults)."""
    photo = write_photo(tmp_path / "photo.png", 40, 56)
    out = tmp_path / "out"
    _cli(
        "features", photo, "--weights", vgg11_bn_file, "--size", "40", "--device", "cpu",
        "--save-raw", "-o", out, *extra,
    )  # fmt: skip
    raw = load_npz(out / "photo_png" / "maps.npz")
    model = vggviz.load_model(weights=str(vgg11_bn_file))  # the architecture from the file
    mode = extra[-1] if extra else "network"
    stage = "bn" if "bn" in extra else "relu"
    maps = vggviz.feature_maps(model, photo, size=40, mode=mode, stage=stage)
    assert list(maps) == [f"conv{i}" for i in range(1, 9)]
    for alias, tensor in maps.items():
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        assert np.array_equal(tensor.numpy(), raw[alias]), alias
    for index in (1, 5, 8):
        drawn = Image.open(out / "photo_png" / f"{index:02d}-conv{index}.png")
        assert np.array_equal(_pixels(vggviz.layer_picture(maps, f"conv{index}")), _pixels(drawn))
    filters = Image.open(out / "filters-conv1.png")
    assert np.array_equal(_pixels(vggviz.filters_picture(model)), _pixels(filters))


def test_a_pil_image_or_a_tensor_gives_the_files_maps(tmp_path, vgg11_bn_file) -> None:
    photo = write_photo(tmp_path / "photo.png", 48, 64)
    model = vggviz.load_model(weights=str(vgg11_bn_file))
    from_path = vggviz.feature_maps(model, photo, layers="conv2,conv6", size=32)
    with Image.open(photo) as im:
        from_pil = vggviz.feature_maps(model, im, layers=["conv2", "conv6"], size=32)
    x = vggviz.api.images.for_model(photo, 32, True)[1]
    from_tensor = vggviz.feature_maps(model, torch.from_numpy(x), layers="conv2,conv6")
    for maps in (from_pil, from_tensor):
        assert list(maps) == ["conv2", "conv6"]
        for alias in maps:
            assert torch.equal(maps[alias], from_path[alias])
    assert from_pil.photo.shape == (32, 43, 3) and from_tensor.photo is None


def test_a_vgg_the_user_built_in_python(vgg11_random) -> None:
    """A fine-tuned torchvision VGG, classifier replaced as the tutorial does: its maps equal
    its own ``features`` run up to the layer's ReLU, and it is left as it was found."""
    model = vgg11_random
    model.train()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    maps = vggviz.feature_maps(model, x, layers="conv3,conv5", stage="relu")
    assert model.training  # run in eval mode, given back in train mode
    with torch.no_grad():
        model.eval()
        conv3 = model.features[:8](x)[0]  # conv relu pool conv relu pool conv relu
        conv5 = model.features[:13](x)[0]  # ... conv relu pool conv relu
    assert torch.allclose(maps["conv3"], conv3) and torch.allclose(maps["conv5"], conv5)
    assert maps.weights == "your model" and not maps.random
    picture = vggviz.layer_picture(maps, "conv5", grid="2x2", cmap="gray", scale="map")
    assert picture.width >= 520 and picture.height > 200


def test_mistakes_are_one_line_errors(tmp_path, vgg11_bn_file) -> None:
    model = vggviz.load_model(weights=str(vgg11_bn_file))
    photo = write_photo(tmp_path / "photo.png")
    with pytest.raises(UsageError, match="unknown layer 'conv14'"):
        vggviz.feature_maps(model, photo, layers="conv14")
    with pytest.raises(UsageError, match="'sideways': expected one of network, chain"):
        vggviz.feature_maps(model, photo, mode="sideways")
    with pytest.raises(UsageError, match=r"\(3, H, W\) or \(1, 3, H, W\), not \(2, 3, 8, 8\)"):
        vggviz.feature_maps(model, torch.zeros(2, 3, 8, 8))
    maps = vggviz.feature_maps(model, photo, layers="conv1", size=32)
    with pytest.raises(UsageError, match="'conv2' is not among these maps \\(conv1\\)"):
        vggviz.layer_picture(maps, "conv2")
    with pytest.raises(UsageError, match="conv2 has 64 input channels; rgb needs 3"):
        vggviz.filters_picture(model, "conv2", view="rgb")
    with pytest.raises(vggviz.api.images.InputError, match="no such file"):
        vggviz.feature_maps(model, Path(tmp_path / "missing.jpg"))


def test_random_weights_come_with_torchvisions_head(vgg11_random) -> None:
    """``load_model`` loads the classifier whenever the weights have one, so ``model(x)``
    gives the logits of ``torch.manual_seed(0); torchvision.models.vgg11()``."""
    model = vggviz.load_model("vgg11", "random", seed=0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), vgg11_random.eval()(x), atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
