"""``vggviz info --weights`` says what a file holds; every command opens every form; every
file that cannot be used gets one line (file, what it is, what to do), exit 1, no traceback."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from test_checkpoint_forms import _general, _lightning, _whole, tutorial_vgg
from test_models import Payload
from torch import nn

from vggviz.cli import cli


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def model(vgg11_bn_file) -> nn.Module:
    state = torch.load(vgg11_bn_file, weights_only=True)
    torch.manual_seed(5)
    features = {k.removeprefix("features."): v for k, v in state.items()}
    return tutorial_vgg(features, nn.Linear(25088, 5))


def test_info_says_what_the_file_holds(tmp_path, model) -> None:
    path = _lightning(model, tmp_path)
    result = invoke("info", "--weights", path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:12] == [
        f"weights  {path}",
        "form     PyTorch (zip); weights under 'state_dict'; prefix 'model.' removed",
        "arch     vgg11_bn (found from its tensors)",
        "dtype    float32",
        "head     classifier Linear(25088 -> 5)",
        "classes  5: a, b, c, d, e (from hyper_parameters.classes)",
        "ignored  epoch (int)",
        "ignored  global_step (int)",
        "ignored  pytorch-lightning_version (str)",
        "ignored  loops (dict)",
        "ignored  callbacks (dict)",
        "ignored  optimizer_states (list)",
    ]
    assert lines[14:16] == ["ignored  hyper_parameters (dict)", ""]
    assert lines[16] == "vgg11_bn: 8 conv layers, input 3 x 224 x 224"
    # the tutorial's first step: with the features frozen, the head alone learns
    assert "9,225,984 parameters frozen; 125,445 would still learn (the classifier):" in (
        result.stdout
    )
    assert lines[-2:] == [
        "  classifier.weight             125,440",
        "  classifier.bias                     5",
    ]


def test_info_json_is_one_object(tmp_path, model) -> None:
    path = _general(model, tmp_path)
    result = invoke("info", "--weights", path, "--json")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    report = json.loads(line)
    assert report["arch"] == "vgg11_bn" and report["arch_from"] == "file"
    assert report["classes"] == 5 and report["class_names"] is None
    assert report["head"] == {
        "layers": [
            {
                "name": "classifier",
                "kind": "Linear",
                "inputs": 25088,
                "outputs": 5,
                "bias": True,
                "presumed": False,
            }
        ],
        "outputs": 5,
    }
    assert report["form"]["wrapper"] == "model_state_dict"
    assert report["form"]["prefixes_removed"] == []
    assert report["ignored"] == ["epoch (int)", "optimizer_state_dict (dict)", "loss (Tensor)"]
    assert report["trainable"] == [
        {"name": "classifier.weight", "params": 125440},
        {"name": "classifier.bias", "params": 5},
    ]
    features_only = tmp_path / "features.pth"
    torch.save(model.features.state_dict(), features_only)
    report = json.loads(invoke("info", "--weights", features_only, "--json").stdout)
    assert report["classes"] is None and report["head"] is None and report["trainable"] == []
    assert report["form"]["prefix_added"] == "features."
    plain = json.loads(invoke("info", "--json").stdout)  # no file: torchvision's model
    assert plain["arch"] == "vgg16_bn" and plain["classes"] == 1000


def test_info_without_weights_keeps_its_table() -> None:
    result = invoke("info", "--arch", "vgg11")
    assert result.stdout.splitlines()[0] == "vgg11: 8 conv layers, input 3 x 224 x 224"


def test_features_finds_the_architecture_and_refuses_a_wrong_one(tmp_path, model, photo) -> None:
    path = _general(model, tmp_path)
    out = tmp_path / "out"
    common = ("--size", "32", "--device", "cpu", "--json", "-q", "-o", out)
    result = invoke("features", photo, "--weights", path, *common)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "ok"
    assert len(record["layers"]) == 8  # vgg11_bn's, found from the file
    result = invoke("features", photo, "--weights", path, "--arch", "vgg13_bn", *common)
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(
        "it looks like a vgg11_bn checkpoint (try --arch vgg11_bn)"
    )


def test_trust_checkpoint_on_the_command_line(tmp_path, model, photo) -> None:
    path = _whole(model, tmp_path)
    out = tmp_path / "out"
    common = ("--size", "32", "--device", "cpu", "-q", "-o", out)
    refused = invoke("features", photo, "--weights", path, *common)
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"Error: {path}: a whole pickled model (torchvision.models.vgg.VGG, saved by "
        "torch.save(model)), which runs code when loaded; if you made it yourself, use "
        "--trust-checkpoint, or re-save it as a state dict in Python: torch.save(torch.load("
        f"{str(path)!r}, weights_only=False).state_dict(), "
        f"{str(tmp_path / 'whole_state_dict.pth')!r})\n"
    )
    assert not out.exists() or not list(out.rglob("record.json"))
    trusted = invoke("features", photo, "--weights", path, "--trust-checkpoint", *common)
    assert trusted.exit_code == 0, trusted.output
    assert (out / "photo_png" / "record.json").is_file()
    info = invoke("info", "--weights", path, "--trust-checkpoint")
    assert "form     PyTorch (zip), pickled model torchvision.models.vgg.VGG" in info.stdout


def test_top_and_filters_open_the_users_file(tmp_path, model, photo) -> None:
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({f"module.{k}": v.half() for k, v in model.state_dict().items()}, path)
    result = invoke("filters", "--weights", path, "--device", "cpu", "-o", tmp_path / "f")
    assert result.exit_code == 0, result.output
    result = invoke(
        "top", photo, "--weights", path, "--layers", "conv8", "-k", "1", "--size", "32",
        "--device", "cpu", "-q", "-o", tmp_path / "top",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    top = json.loads((tmp_path / "top" / "top.json").read_text())
    assert top["arch"] == "vgg11_bn"


# --- Files that cannot be used -------------------------------------------------------------


def _folder(tmp: Path) -> tuple[Path, str]:
    folder = tmp / "run"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    return folder, "a folder, not a weights file; it holds model.safetensors: give one of those"


def _empty(tmp: Path) -> tuple[Path, str]:
    (tmp / "empty.pth").touch()
    return tmp / "empty.pth", "an empty file (0 bytes); was its saving cut short? save it again"


def _truncated_zip(tmp: Path) -> tuple[Path, str]:
    whole, cut = tmp / "whole.pth", tmp / "cut.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, whole)
    cut.write_bytes(whole.read_bytes()[:1000])
    assert not zipfile.is_zipfile(cut)
    return cut, "a truncated zip archive (its end is missing); was its saving or copying cut"


def _bad_safetensors(tmp: Path) -> tuple[Path, str]:
    path = tmp / "model.safetensors"
    path.write_bytes((40).to_bytes(8, "little") + b'{"features.0.weight": {"dtype": "F32"')
    return path, "not a valid safetensors file (Error while deserializing header: "


def _resnet(tmp: Path) -> tuple[Path, str]:
    with torch.device("meta"):
        resnet = torchvision.models.resnet18(weights=None)
    path = tmp / "resnet18.pth"
    torch.save(resnet.to_empty(device="cpu").state_dict(), path)
    return path, (
        "the weights of a ResNet, not of a VGG (keys conv1.weight, bn1.weight, bn1.bias and "
        "119 more; a VGG's are features.0.weight, features.0.bias, ...); give a VGG's checkpoint"
    )


def _legacy_whole(tmp: Path) -> tuple[Path, str]:
    with torch.device("meta"):
        model = torchvision.models.vgg11(weights=None)
    model.features.to_empty(device="cpu")
    model.classifier = nn.Linear(25088, 2)
    path = tmp / "legacy.pth"
    torch.save(model, path, _use_new_zipfile_serialization=False)
    return path, "a whole pickled model (torchvision.models.vgg.VGG, saved by torch.save(model))"


def _torchscript(tmp: Path) -> tuple[Path, str]:
    path = tmp / "traced.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())
        torch.jit.save(torch.jit.trace(features, torch.zeros(1, 3, 8, 8)), str(path))
    return path, "a TorchScript archive (torch.jit.save), which runs code when loaded"


def _malicious(tmp: Path) -> tuple[Path, str]:
    evil = Payload()
    evil.target = str(tmp / "pwned")
    path = tmp / "evil.pth"
    torch.save({"features.0.weight": evil}, path)
    return path, "a checkpoint that needs builtins.getattr, pathlib.Path to load"


def _not_torch(tmp: Path) -> tuple[Path, str]:
    path = tmp / "weights.pth"
    path.write_text("epoch 3, loss 0.2\n")
    return path, "not a PyTorch or safetensors file (neither format's first bytes)"


def _lfs_pointer(tmp: Path) -> tuple[Path, str]:
    path = tmp / "weights.pth"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    return path, "a Git LFS pointer, not the weights themselves; fetch them with git lfs pull"


BAD_FILES = {
    "folder": _folder,
    "empty": _empty,
    "truncated zip": _truncated_zip,
    "bad safetensors header": _bad_safetensors,
    "ResNet": _resnet,
    "legacy-format whole model": _legacy_whole,
    "TorchScript": _torchscript,
    "malicious pickle": _malicious,
    "not a PyTorch file": _not_torch,
    "Git LFS pointer": _lfs_pointer,
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("command", ["info", "features"])
def test_a_file_that_cannot_be_used_gets_one_line(tmp_path, photo, kind, command) -> None:
    path, reason = BAD_FILES[kind](tmp_path)
    args = ["--weights", path]
    if command == "features":
        args = [photo, *args, "--size", "32", "--device", "cpu", "-o", tmp_path / "out"]
    result = invoke(command, *args)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: {path}: {reason}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "pwned").exists()  # a refused file never ran code
