"""Shared fixtures: small models built once per session, tiny generated photos, no network."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: tests never download."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def vgg11_random() -> torch.nn.Module:
    """``torch.manual_seed(0); vgg11(weights=None)``: the smallest VGG, built once."""
    torch.manual_seed(0)
    return torchvision.models.vgg11(weights=None).eval()


@pytest.fixture(scope="session")
def vgg11_bn_random() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg11_bn(weights=None).eval()


def _features_only(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


@pytest.fixture(scope="session")
def vgg11_bn_file(tmp_path_factory: pytest.TempPathFactory, vgg11_bn_random) -> Path:
    """A features-only vgg11_bn state dict whose BatchNorm statistics are not the identity,
    so that tests can tell conv, bn and relu stages apart. Loads in milliseconds."""
    state = _features_only(vgg11_bn_random)
    gen = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=gen) * 0.1
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith("bias") and value.dim() == 1:
            state[key] = torch.randn(value.shape, generator=gen) * 0.1
    path = tmp_path_factory.mktemp("weights") / "vgg11_bn_features.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def vgg11_file(tmp_path_factory: pytest.TempPathFactory, vgg11_random) -> Path:
    path = tmp_path_factory.mktemp("weights") / "vgg11_features.pth"
    torch.save(_features_only(vgg11_random), path)
    return path


def photo_array(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: smooth gradients, a disc and some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (x / max(width - 1, 1)) * 255
    g = (y / max(height - 1, 1)) * 255
    disc = ((x - width / 2) ** 2 + (y - height / 2) ** 2) < (min(height, width) / 3) ** 2
    b = np.where(disc, 220, 40)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 8, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(photo_array()).save(path)
    return path


def write_photo(path: Path, height: int = 48, width: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo_array(height, width, seed)).save(path)
    return path


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, with the file closed again."""
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def wait_for_records(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until a running vggviz has finished ``n`` images in ``out``."""
    deadline = time.monotonic() + timeout
    while len(list(out.rglob("record.json"))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)


@pytest.fixture(scope="session")
def tutorial_file(tmp_path_factory: pytest.TempPathFactory, vgg11_random) -> Path:
    """A user's 5-class vgg11, saved the tutorial's way: ``model.classifier =
    nn.Linear(25088, 5)``, then ``torch.save(model.state_dict(), ...)``. The head's weights
    are scaled up so that its probabilities differ (the default init gives about 0.2 each)."""
    from vggviz.model.architectures import vgg

    with torch.device("meta"):
        model = vgg("vgg11")
    model.features.to_empty(device="cpu")
    model.features.load_state_dict(vgg11_random.features.state_dict())
    torch.manual_seed(5)
    model.classifier = torch.nn.Linear(25088, 5)
    with torch.no_grad():
        model.classifier.weight.mul_(40)
    path = tmp_path_factory.mktemp("weights") / "my_vgg11_5class.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def labels_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("cat\ncoins\nhorse\ncoffee\nastronaut\n", encoding="utf-8")
    return path
