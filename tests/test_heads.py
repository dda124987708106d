"""Heads of every shape are rebuilt from a state dict's names and shapes and give the logits
of the module that was saved; the architecture is found from the tensors; class names are
found where people store them."""

from __future__ import annotations

import pytest
import torch
import torchvision
from test_checkpoint_forms import X, logits, tutorial_vgg
from torch import nn

from vggviz.core.errors import WeightsError
from vggviz.model.architectures import ARCHS, HeadError, detect_arch, read_head
from vggviz.model.checkpoints import read_checkpoint
from vggviz.model.contents import examine
from vggviz.model.imagenet import imagenet_cache_path
from vggviz.model.loading import load_model


@pytest.fixture(scope="module")
def features_state(vgg11_bn_file) -> dict[str, torch.Tensor]:
    state = torch.load(vgg11_bn_file, weights_only=True)
    return {k.removeprefix("features."): v for k, v in state.items()}


def _torchvision_with(last: nn.Module, vgg11_bn_random: nn.Module) -> nn.Sequential:
    """torchvision's classifier with its last layer replaced (``classifier[6] = ...``),
    sharing the trained layers' tensors rather than copying 400 MB."""
    return nn.Sequential(*list(vgg11_bn_random.classifier)[:6], last)


HEADS = {
    # name: (classifier, layers as described, classes)
    "torchvision's 1000 classes": (
        lambda tv: tv.classifier,
        "classifier.0 Linear(25088 -> 4096), classifier.1 ReLU (presumed), classifier.2 "
        "Dropout (presumed), classifier.3 Linear(4096 -> 4096), classifier.4 ReLU (presumed), "
        "classifier.5 Dropout (presumed), classifier.6 Linear(4096 -> 1000)",
        1000,
    ),
    "classifier[6] = Linear(4096, 10)": (
        lambda tv: _torchvision_with(nn.Linear(4096, 10), tv),
        "classifier.0 Linear(25088 -> 4096), classifier.1 ReLU (presumed), classifier.2 "
        "Dropout (presumed), classifier.3 Linear(4096 -> 4096), classifier.4 ReLU (presumed), "
        "classifier.5 Dropout (presumed), classifier.6 Linear(4096 -> 10)",
        10,
    ),
    "the tutorial's Linear(25088, 5)": (
        lambda tv: nn.Linear(25088, 5),
        "classifier Linear(25088 -> 5)",
        5,
    ),
    "Linear, ReLU, Dropout, Linear": (
        lambda tv: nn.Sequential(
            nn.Linear(25088, 256), nn.ReLU(), nn.Dropout(0.4), nn.Linear(256, 3)
        ),
        "classifier.0 Linear(25088 -> 256), classifier.1 ReLU (presumed), "
        "classifier.2 Dropout (presumed), classifier.3 Linear(256 -> 3)",
        3,
    ),
    "Dropout first": (
        lambda tv: nn.Sequential(nn.Dropout(0.2), nn.Linear(25088, 7)),
        "classifier.0 Dropout (presumed), classifier.1 Linear(25088 -> 7)",
        7,
    ),
    "with BatchNorm1d": (
        lambda tv: nn.Sequential(
            nn.Linear(25088, 64), nn.BatchNorm1d(64), nn.ReLU(True), nn.Linear(64, 4)
        ),
        "classifier.0 Linear(25088 -> 64), classifier.1 BatchNorm1d(64), "
        "classifier.2 ReLU (presumed), classifier.3 Linear(64 -> 4)",
        4,
    ),
    "no bias": (
        lambda tv: nn.Linear(25088, 2, bias=False),
        "classifier Linear(25088 -> 2, no bias)",
        2,
    ),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_is_rebuilt_with_its_logits(
    tmp_path, name, features_state, vgg11_bn_random
) -> None:
    make, described, classes = HEADS[name]
    torch.manual_seed(11)
    head = make(vgg11_bn_random)
    if name == "with BatchNorm1d":  # trained statistics, not the identity
        head[1].running_mean.normal_()
        head[1].running_var.uniform_(0.5, 2)
    model = tutorial_vgg(features_state, head)
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    contents = examine(read_checkpoint(path))
    assert contents.arch == "vgg11_bn" and contents.detected
    assert ", ".join(la.describe() for la in contents.head.layers) == described
    loaded = load_model(None, str(path), device="cpu", head=True)
    assert loaded.head and loaded.classes == classes
    assert loaded.imagenet_head == (classes == 1000)  # 1000 outputs, no names: ImageNet's
    torch.testing.assert_close(logits(loaded.model), logits(model))
    maps_only = load_model(None, str(path), device="cpu")
    assert maps_only.classes == classes and not maps_only.head
    assert all(p.is_meta for p in maps_only.model.classifier.parameters())


def test_a_head_that_cannot_be_rebuilt_is_reported_and_ignored(tmp_path, features_state) -> None:
    """``model.avgpool = AdaptiveAvgPool2d(1)`` with ``Linear(512, 4)``: the file cannot show
    the pooling. The maps still come; the head is refused only when asked for."""
    model = tutorial_vgg(features_state, nn.Linear(512, 4))
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    path = tmp_path / "pooled.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(None, str(path), device="cpu")
    assert loaded.classes is None
    assert loaded.contents.head_problem == (
        "classifier takes 512 values but gets 25088 from the pooled maps (512 x 7 x 7); "
        "was the pooling before it changed? the file cannot show that"
    )
    with pytest.raises(WeightsError) as err:
        load_model(None, str(path), device="cpu", head=True)
    assert str(err.value) == f"{path}: its classifier cannot be rebuilt (" + (
        loaded.contents.head_problem + ")"
    )


@pytest.mark.parametrize(
    ("shapes", "problem"),
    [
        (
            {"classifier.0.weight": (8, 25088), "classifier.2.weight": (3, 9)},
            "classifier.2 takes 9 values but gets 8 from classifier.0",
        ),
        ({"classifier.fc.weight": (3, 25088)}, "classifier.fc.weight is not a layer of a"),
        ({"classifier.0.weight": (3, 25088, 1)}, "classifier.0 (weight [3, 25088, 1]) is nei"),
        (
            {"classifier.weight": (3, 25088), "classifier.bias": (4,)},
            "classifier.bias has shape [4], expected [3]",
        ),
    ],
)
def test_heads_that_do_not_add_up_are_named(shapes, problem) -> None:
    with pytest.raises(HeadError) as err:
        read_head(shapes)
    assert str(err.value).startswith(problem)


def test_random_weights_with_the_head_are_torchvisions_exactly(vgg11_random) -> None:
    """With the head, its draws are real: every tensor is torchvision's seeded init."""
    loaded = load_model("vgg11", "random", seed=0, device="cpu", head=True)
    mine, theirs = loaded.model.state_dict(), vgg11_random.state_dict()
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key
    assert loaded.classes == 1000 and loaded.imagenet_head and loaded.class_names is None
    torch.testing.assert_close(logits(loaded.model), logits(vgg11_random))
    without = load_model("vgg11", "random", seed=0, device="cpu")
    assert all(p.is_meta for p in without.model.classifier.parameters())
    assert without.classes == 1000 and not without.head


def test_imagenet_head_comes_from_a_full_mappable_copy(tmp_path, monkeypatch, vgg11_random) -> None:
    """torchvision's legacy-format ImageNet file: a features run maps the small features-only
    copy; a head run makes (once) and maps a full copy."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    original = imagenet_cache_path("vgg11")
    original.parent.mkdir(parents=True)
    torch.save(vgg11_random.state_dict(), original, _use_new_zipfile_serialization=False)
    folder = original.parent / "vggviz"
    load_model("vgg11", "imagenet", device="cpu")
    assert sorted(p.name for p in folder.iterdir()) == ["vgg11-8a719046-features.pt"]
    loaded = load_model("vgg11", "imagenet", device="cpu", head=True)
    assert sorted(p.name for p in folder.iterdir()) == [
        "vgg11-8a719046-features.pt",
        "vgg11-8a719046-full.pt",
    ]
    assert loaded.head and loaded.classes == 1000 and loaded.imagenet_head
    torch.testing.assert_close(logits(loaded.model), logits(vgg11_random))
    full = torch.load(folder / "vgg11-8a719046-full.pt", weights_only=True, mmap=True)
    assert sorted(full) == sorted(vgg11_random.state_dict())


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_is_found_from_its_tensors(arch) -> None:
    with torch.device("meta"):
        state = torchvision.models.get_model(arch, weights=None).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert detect_arch(shapes) == arch
    features = {k: v for k, v in shapes.items() if k.startswith("features.")}
    assert detect_arch(features) == arch  # without the head too
    without_counters = {k: v for k, v in features.items() if "num_batches" not in k}
    assert detect_arch(without_counters) == arch  # torchvision's 2017 files lack them
    one_short = dict(list(without_counters.items())[:-1])
    assert detect_arch(one_short) is None


def test_an_architecture_asked_for_must_fit(tmp_path, vgg11_bn_file) -> None:
    with pytest.raises(WeightsError) as err:
        load_model("vgg13_bn", str(vgg11_bn_file), device="cpu")
    assert str(err.value).endswith("it looks like a vgg11_bn checkpoint (try arch='vgg11_bn')")
    assert load_model("vgg11_bn", str(vgg11_bn_file), device="cpu").arch == "vgg11_bn"


NAMES = ["cat", "coins", "horse"]


@pytest.mark.parametrize(
    ("entries", "where"),
    [
        ({"classes": NAMES}, "classes"),
        ({"class_names": tuple(NAMES)}, "class_names"),
        ({"class_to_idx": {"horse": 2, "cat": 0, "coins": 1}}, "class_to_idx"),
        ({"idx_to_class": {1: "coins", 0: "cat", 2: "horse"}}, "idx_to_class"),
        ({"idx_to_class": {"1": "coins", "0": "cat", "2": "horse"}}, "idx_to_class"),
        ({"hyper_parameters": {"class_names": NAMES, "lr": 0.1}}, "hyper_parameters.class_names"),
    ],
)
def test_class_names_are_found_where_people_store_them(
    tmp_path, features_state, entries, where
) -> None:
    model = tutorial_vgg(features_state, nn.Linear(25088, 3))
    path = tmp_path / "named.pth"
    torch.save({"model_state_dict": model.state_dict(), **entries}, path)
    loaded = load_model(None, str(path), device="cpu", head=True)
    assert loaded.class_names == NAMES and loaded.contents.checkpoint.names_from == where
    assert not loaded.imagenet_head


def test_class_names_that_do_not_match_the_head_are_not_used(tmp_path, features_state) -> None:
    model = tutorial_vgg(features_state, nn.Linear(25088, 3))
    path = tmp_path / "named.pth"
    torch.save({"model_state_dict": model.state_dict(), "classes": ["a", "b"]}, path)
    contents = examine(read_checkpoint(path))
    assert contents.class_names is None
    assert contents.notes == ["classes holds 2 names but the head has 3 outputs: names not used"]
    torch.save({"state_dict": model.state_dict(), "class_to_idx": {"a": 0, "b": 5}}, path)
    assert read_checkpoint(path).class_names is None  # indices with a gap: not names


def test_maps_of_a_detected_architecture_match_an_explicit_one(vgg11_bn_file) -> None:
    detected = load_model(None, str(vgg11_bn_file), device="cpu")
    explicit = load_model("vgg11_bn", str(vgg11_bn_file), device="cpu")
    with torch.no_grad():
        assert torch.equal(detected.model.features(X), explicit.model.features(X))


@pytest.mark.parametrize("arch", ARCHS)
def test_the_counted_signature_is_the_built_models(arch) -> None:
    from vggviz.model.architectures import conv_signature, vgg

    with torch.device("meta"):
        built = vgg(arch).features.state_dict()
    assert conv_signature(arch) == {
        f"features.{k}": tuple(v.shape) for k, v in built.items() if "num_batches" not in k
    }
