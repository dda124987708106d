"""Every form a tutorial reader's checkpoint takes opens, saved here by the torch, safetensors
and Lightning-layout calls users make, and gives the very maps (and, with the head, the very
logits) of the same weights saved as a plain state dict."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from vggviz.core.errors import WeightsError
from vggviz.model.checkpoints import UntrustedCheckpointError, read_checkpoint
from vggviz.model.hooks import network_maps
from vggviz.model.loading import LoadedModel, load_model

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def tutorial_vgg(features: dict[str, torch.Tensor], classifier: nn.Module) -> nn.Module:
    """torchvision's vgg11_bn with these conv weights and the user's own classifier, as the
    tutorial makes it (``model.classifier = ...``); the 1000-class head is never built."""
    with torch.device("meta"):
        model = torchvision.models.vgg11_bn(weights=None)
    model.features.to_empty(device="cpu")
    model.features.load_state_dict(features)
    model.classifier = classifier
    return model.eval()


@pytest.fixture(scope="module")
def features_state(vgg11_bn_file) -> dict[str, torch.Tensor]:
    """Conv weights with BatchNorm statistics that are not the identity."""
    state = torch.load(vgg11_bn_file, weights_only=True)
    return {k.removeprefix("features."): v for k, v in state.items()}


@pytest.fixture(scope="module")
def model(features_state) -> nn.Module:
    """The tutorial's model: ``model.classifier = nn.Linear(25088, 5)``, trained (here:
    seeded)."""
    torch.manual_seed(5)
    return tutorial_vgg(features_state, nn.Linear(25088, 5))


def maps(loaded: LoadedModel, x: torch.Tensor = X) -> dict[str, torch.Tensor]:
    return network_maps(loaded.model, loaded.layers, x, "relu")


def logits(module: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


@pytest.fixture(scope="module")
def reference(vgg11_bn_file) -> dict[str, torch.Tensor]:
    """The maps of the same conv weights from a plain state dict."""
    return maps(load_model("vgg11_bn", str(vgg11_bn_file), device="cpu"))


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # the tutorial's: only what is not frozen learns
    return torch.optim.SGD(model.classifier.parameters(), lr=0.001, momentum=0.9)


def _plain(model: nn.Module, folder: Path) -> Path:
    torch.save(model.state_dict(), folder / "model.pth")
    return folder / "model.pth"


def _general(model: nn.Module, folder: Path) -> Path:
    """PyTorch's documented general checkpoint ("Saving & loading a general checkpoint")."""
    path = folder / "checkpoint.pt"
    torch.save(
        {
            "epoch": 12,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": _optimizer(model).state_dict(),
            "loss": torch.tensor(0.31),
        },
        path,
    )
    return path


def _data_parallel(model: nn.Module, folder: Path) -> Path:
    torch.save(nn.DataParallel(model).state_dict(), folder / "dp.pth")
    return folder / "dp.pth"


def _compiled(model: nn.Module, folder: Path) -> Path:
    torch.save(torch.compile(model).state_dict(), folder / "compiled.pth")
    return folder / "compiled.pth"


def _lightning(model: nn.Module, folder: Path) -> Path:
    """Lightning's .ckpt layout (``self.model = vgg`` in a LightningModule), written with
    torch.save as Lightning writes it."""
    path = folder / "epoch=3-step=120.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": 3}}},
            "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.9)}},
            "optimizer_states": [_optimizer(model).state_dict()],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {"lr": 0.001, "classes": ["a", "b", "c", "d", "e"]},
        },
        path,
    )
    return path


def _examples_imagenet(model: nn.Module, folder: Path) -> Path:
    """pytorch/examples' imagenet/main.py: VGG's features alone in DataParallel, then a
    ``.pth.tar`` with the run's state."""
    copy = tutorial_vgg(model.features.state_dict(), model.classifier)
    copy.features = nn.DataParallel(copy.features)
    optimizer = _optimizer(copy)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    path = folder / "checkpoint.pth.tar"
    torch.save(
        {
            "epoch": 90,
            "arch": "vgg11_bn",
            "state_dict": copy.state_dict(),
            "best_acc1": torch.tensor(70.4),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        path,
    )
    return path


def _torchvision_references(model: nn.Module, folder: Path) -> Path:
    """torchvision's references/classification/train.py: the options as a Namespace."""
    path = folder / "model_89.pth"
    args = argparse.Namespace(model="vgg11_bn", lr=0.01, data_path=Path("/data"))
    torch.save({"model": model.state_dict(), "epoch": 89, "args": args}, path)
    return path


def _net(model: nn.Module, folder: Path) -> Path:
    torch.save({"net": model.state_dict(), "acc": 91.2, "epoch": 40}, folder / "ckpt.pth")
    return folder / "ckpt.pth"


def _ema(model: nn.Module, folder: Path) -> Path:
    torch.save({"state_dict_ema": model.state_dict(), "epoch": 7}, folder / "ema.pth.tar")
    return folder / "ema.pth.tar"


def _one_entry(model: nn.Module, folder: Path) -> Path:
    torch.save({"weights": model.state_dict(), "step": 500}, folder / "run.pt")
    return folder / "run.pt"


def _tensor_extras(model: nn.Module, folder: Path) -> Path:
    """More tensors than other entries beside the weights: still a wrapper."""
    path = folder / "best.pth"
    torch.save(
        {"model": model.state_dict(), "acc": torch.tensor(0.9), "loss": torch.tensor(1.0)}, path
    )
    return path


def _features_alone(model: nn.Module, folder: Path) -> Path:
    torch.save(model.features.state_dict(), folder / "features.pth")
    return folder / "features.pth"


def _features_alone_data_parallel(model: nn.Module, folder: Path) -> Path:
    torch.save(nn.DataParallel(model.features).state_dict(), folder / "features_dp.pth")
    return folder / "features_dp.pth"


def _safetensors(model: nn.Module, folder: Path) -> Path:
    save_file(model.state_dict(), folder / "model.safetensors")
    return folder / "model.safetensors"


def _bin(model: nn.Module, folder: Path) -> Path:
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder / "pytorch_model.bin"


def _legacy(model: nn.Module, folder: Path) -> Path:
    torch.save(model.state_dict(), folder / "old.pth", _use_new_zipfile_serialization=False)
    return folder / "old.pth"


FORMS: dict[str, tuple[Callable[[nn.Module, Path], Path], str]] = {
    # name: (how a user saves it, what the form reads as)
    "state dict": (_plain, "PyTorch (zip)"),
    "general checkpoint": (_general, "PyTorch (zip); weights under 'model_state_dict'"),
    "DataParallel": (_data_parallel, "PyTorch (zip); prefix 'module.' removed"),
    "torch.compile": (_compiled, "PyTorch (zip); prefix '_orig_mod.' removed"),
    "Lightning": (_lightning, "PyTorch (zip); weights under 'state_dict'; prefix 'model.' removed"),
    "pytorch/examples": (
        _examples_imagenet,
        "PyTorch (zip); weights under 'state_dict'; prefix 'module.' removed",
    ),
    "torchvision references": (_torchvision_references, "PyTorch (zip); weights under 'model'"),
    "net": (_net, "PyTorch (zip); weights under 'net'"),
    "EMA": (_ema, "PyTorch (zip); weights under 'state_dict_ema'"),
    "one entry": (_one_entry, "PyTorch (zip); weights under 'weights'"),
    "tensors beside": (_tensor_extras, "PyTorch (zip); weights under 'model'"),
    "features alone": (_features_alone, "PyTorch (zip); 'features.' added (the conv part alone)"),
    "features alone, DataParallel": (
        _features_alone_data_parallel,
        "PyTorch (zip); prefix 'module.' removed; 'features.' added (the conv part alone)",
    ),
    "safetensors": (_safetensors, "safetensors"),
    ".bin": (_bin, "PyTorch (zip)"),
    "legacy format": (_legacy, "PyTorch (legacy format)"),
}
HEADLESS = {"features alone", "features alone, DataParallel"}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_gives_the_maps_of_the_plain_state_dict(
    tmp_path, form, model, reference
) -> None:
    save, described = FORMS[form]
    path = save(model, tmp_path)
    loaded = load_model(None, str(path), device="cpu")  # the architecture from the file
    assert loaded.arch == "vgg11_bn"
    assert loaded.contents is not None
    assert loaded.contents.checkpoint.form.describe() == described
    mine = maps(loaded)
    assert mine.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(mine[name], tensor), name
    assert all(p.is_meta for p in loaded.model.classifier.parameters())  # no head: no memory
    if form in HEADLESS:
        assert loaded.classes is None
        with pytest.raises(WeightsError, match="holds no classifier, only the conv layers'"):
            load_model(None, str(path), device="cpu", head=True)
        return
    assert loaded.classes == 5
    with_head = load_model(None, str(path), device="cpu", head=True)
    assert with_head.head and with_head.classes == 5 and not with_head.imagenet_head
    torch.testing.assert_close(logits(with_head.model), logits(model))


def test_other_entries_are_listed_as_ignored(tmp_path, model) -> None:
    checkpoint = read_checkpoint(_general(model, tmp_path))
    assert checkpoint.ignored == ["epoch (int)", "optimizer_state_dict (dict)", "loss (Tensor)"]
    lightning = read_checkpoint(_lightning(model, tmp_path))
    assert lightning.class_names == ["a", "b", "c", "d", "e"]
    assert lightning.names_from == "hyper_parameters.classes"
    assert "optimizer_states (list)" in lightning.ignored
    assert "hyper_parameters (dict)" in lightning.ignored  # more than the names are in it


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("save", [_plain, _safetensors])
def test_half_precision_copies_are_cast(tmp_path, model, features_state, dtype, save) -> None:
    """An fp16 or bf16 copy gives the maps of its own (rounded) weights, in fp32."""
    half = tutorial_vgg(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in features_state.items()},
        nn.Linear(25088, 5),
    ).to(dtype)
    path = save(half, tmp_path)
    rounded = tmp_path / "rounded.pth"
    torch.save({k: v.float() for k, v in half.state_dict().items()}, rounded)
    loaded = load_model(None, str(path), device="cpu")
    assert loaded.model.features[0].weight.dtype == torch.float32
    assert loaded.contents.checkpoint.dtype_names == [str(dtype).removeprefix("torch.")]
    expected = maps(load_model(None, str(rounded), device="cpu"))
    for name, tensor in maps(loaded).items():
        assert torch.equal(tensor, expected[name]), name
    in_bf16 = load_model(None, str(path), device="cpu", precision="bf16", head=True)
    assert in_bf16.model.classifier.weight.dtype == torch.bfloat16


def test_safetensors_reads_only_the_tensors_asked_for(tmp_path, model, monkeypatch) -> None:
    """A features run never reads a safetensors file's head (the 400 MB of torchvision's)."""
    checkpoint = read_checkpoint(_safetensors(model, tmp_path))
    assert checkpoint.shapes["classifier.weight"] == (5, 25088)
    assert sorted(checkpoint.tensors(["features.0.bias", "classifier.bias"])) == [
        "classifier.bias",
        "features.0.bias",
    ]
    import safetensors

    read: list[str] = []
    original = safetensors.safe_open

    class Spy:
        def __init__(self, *args, **kwargs) -> None:
            self.inner = original(*args, **kwargs)

        def __enter__(self):
            handle = self.inner.__enter__()

            class Handle:
                def get_tensor(_self, name: str) -> torch.Tensor:
                    read.append(name)
                    return handle.get_tensor(name)

                def __getattr__(_self, name: str):
                    return getattr(handle, name)

            return Handle()

        def __exit__(self, *exc) -> None:
            self.inner.__exit__(*exc)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    load_model(None, str(tmp_path / "model.safetensors"), device="cpu")
    assert read and not [name for name in read if name.startswith("classifier")]


# --- Files that run code when loaded ----------------------------------------------------------


def _whole(model: nn.Module, folder: Path, legacy: bool = False) -> Path:
    path = folder / "whole.pth"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    return path


def _scripted(model: nn.Module, folder: Path) -> Path:
    path = folder / "scripted.pt"
    with warnings.catch_warnings():  # torch deprecates TorchScript; users' files remain
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def _run_the_advice(message: str) -> None:
    """Run the one line of Python the refusal gives, as the user would paste it."""
    line = message.split("re-save it as a state dict in Python: ", 1)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(line, {"torch": torch})  # the user's own file: trusted by the user


@pytest.mark.parametrize(
    ("save", "what"),
    [
        (_whole, "a whole pickled model (torchvision.models.vgg.VGG, saved by torch.save(model))"),
        (
            lambda m, f: _whole(m, f, legacy=True),
            "a whole pickled model (torchvision.models.vgg.VGG, saved by torch.save(model))",
        ),
        (_scripted, "a TorchScript archive (torch.jit.save)"),
    ],
    ids=["torch.save(model)", "torch.save(model), legacy format", "torch.jit.save"],
)
def test_files_that_run_code_need_trust(tmp_path, model, reference, save, what) -> None:
    path = save(model, tmp_path)
    with pytest.raises(UntrustedCheckpointError) as err:
        load_model(None, str(path), device="cpu")
    message = str(err.value)
    assert message.startswith(
        f"{path}: {what}, which runs code when loaded; if you made it yourself, use "
        "trust_checkpoint=True, or re-save it as a state dict in Python: torch.save("
    )
    assert "\n" not in message
    trusted = load_model(None, str(path), device="cpu", trust=True, head=True)
    assert trusted.arch == "vgg11_bn" and trusted.classes == 5
    for name, tensor in maps(trusted).items():
        assert torch.equal(tensor, reference[name]), name
    torch.testing.assert_close(logits(trusted.model), logits(model))
    # the advice works: its output opens without trust and holds the same weights
    _run_the_advice(message)
    resaved = load_model(None, str(path.with_name(path.name.split(".")[0] + "_state_dict.pth")))
    for name, tensor in maps(resaved).items():
        assert torch.equal(tensor, reference[name]), name


def test_a_trusted_model_tells_its_head_exactly(tmp_path, features_state) -> None:
    """A model saved whole shows its classifier's layers without weights; the state dict
    cannot (they are presumed)."""
    torch.manual_seed(2)
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(25088, 32), nn.Linear(32, 3))
    model = tutorial_vgg(features_state, head)
    trusted = load_model(None, str(_whole(model, tmp_path)), device="cpu", trust=True, head=True)
    assert [la.kind for la in trusted.contents.head.layers] == ["Dropout", "Linear", "Linear"]
    assert not trusted.contents.head.presumed
    torch.testing.assert_close(logits(trusted.model), logits(model))
    gelu = tutorial_vgg(features_state, nn.Sequential(nn.Linear(25088, 8), nn.GELU()))
    refused = load_model(None, str(_whole(gelu, tmp_path)), device="cpu", trust=True)
    assert refused.contents.head is None
    assert refused.contents.head_problem == (
        "classifier.1 is a GELU, which vggviz does not rebuild"
    )


class RunNotes:
    """A user's own class stored beside the weights."""

    def __init__(self, text: str) -> None:
        self.text = text


def test_a_pickle_needing_other_code_names_it(tmp_path, model, reference) -> None:
    """A wrapper holding an object of the user's own class is refused naming that class
    (nothing imported or run); trusted, the weights beside it load."""
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": model.state_dict(), "notes": RunNotes("lr 0.01")}, path)
    with pytest.raises(UntrustedCheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(
        f"{path}: a checkpoint that needs {__name__}.RunNotes to load, which runs code"
    )
    trusted = load_model(None, str(path), device="cpu", trust=True)
    assert trusted.contents.checkpoint.ignored == ["notes (RunNotes)"]
    for name, tensor in maps(trusted).items():
        assert torch.equal(tensor, reference[name]), name


def test_safetensors_are_checked_like_any_file(tmp_path, model) -> None:
    """Integer weights and NaN are refused in a .safetensors file too, naming the tensor."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ints = {**state, "features.0.weight": state["features.0.weight"].to(torch.int32)}
    save_file(ints, tmp_path / "ints.safetensors")
    with pytest.raises(WeightsError) as err:
        load_model(None, str(tmp_path / "ints.safetensors"))
    assert str(err.value) == (
        f"{tmp_path / 'ints.safetensors'}: features.0.weight holds I32 values, not floating "
        "point (a state dict maps names to dense floating-point tensors)"
    )
    state["features.4.weight"].view(-1)[7] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    with pytest.raises(WeightsError, match=r"features.4.weight holds 1 NaN and 0 infinite"):
        load_model(None, str(tmp_path / "nan.safetensors"))


def test_wrappers_nested_ambiguous_or_empty(tmp_path, model) -> None:
    state = model.state_dict()
    nested = tmp_path / "nested.pth"
    torch.save({"model": {"state_dict": state, "step": 4}, "epoch": 2}, nested)
    checkpoint = read_checkpoint(nested)
    assert checkpoint.form.wrapper == "model/state_dict"
    assert checkpoint.ignored == ["epoch (int)", "step (int)"]
    two = tmp_path / "two.pth"
    torch.save({"student": state, "teacher": state}, two)
    with pytest.raises(WeightsError) as err:
        read_checkpoint(two)
    assert str(err.value).startswith(
        f"{two}: several state dicts ('student', 'teacher'), none of them under a usual name"
    )
    empty = tmp_path / "none.pth"
    torch.save({"epoch": 3, "loss": 0.2}, empty)
    with pytest.raises(WeightsError) as err:
        read_checkpoint(empty)
    assert str(err.value) == (
        f"{empty}: holds no state dict (entries: epoch (int), loss (float)); "
        "save model.state_dict() in it"
    )
