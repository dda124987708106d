"""`vggviz explain` as a user runs it: records and pictures equal to direct calls of the
Grad-CAM and the deletion check on the same model, class names from every source, classes
asked for by name and index, the output-folder contract, and the run's index page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import load_npz, write_photo
from PIL import Image

from vggviz.cli import cli
from vggviz.core import images
from vggviz.explain import index_page, pictures
from vggviz.explain.deletion import deletion_test
from vggviz.explain.gradcam import GradCam
from vggviz.explain.labels import imagenet_names
from vggviz.model.layers import select_layers
from vggviz.model.loading import load_model

SIZE = 64
NAMES = ["cat", "coins", "horse", "coffee", "astronaut"]


def invoke(out: Path, weights: Path | str, *args: object, input: str | None = None):
    argv = ["explain", *map(str, args), "--weights", str(weights)]
    argv += ["--size", str(SIZE), "--device", "cpu", "-o", str(out)]
    return CliRunner().invoke(cli, argv, input=input, catch_exceptions=False)


def lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines()]


def manifest(out: Path, name: str = "manifest.jsonl") -> list[dict]:
    return lines((out / name).read_text("utf-8"))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_photo(folder / "a.png", 48, 64, seed=1)
    write_photo(folder / "b.png", 64, 48, seed=2)
    write_photo(folder / "c.png", 50, 50, seed=3)
    return folder


@pytest.fixture(scope="module")
def tutorial(tutorial_file):
    return load_model(None, str(tutorial_file), device="cpu", head=True)


def direct(loaded, photo: Path, *, top=3, classes=None, layer=None, stage="relu"):
    """The explanation and deletion check of ``photo`` by direct calls, as a Python user
    would make them, and the photo as the network saw it."""
    shown, array = images.for_model(photo, SIZE, True)
    x = torch.from_numpy(array)[None]
    conv = select_layers(loaded.layers, layer)[0] if layer else None
    (explanation,) = GradCam(loaded.model, conv, stage)(x, top=top, classes=classes)
    (deletions,) = deletion_test(loaded.model, x, [explanation])
    return explanation, deletions, shown


def assert_matches(record: dict, explanation, deletions, names) -> None:
    approx = pytest.approx
    assert [p["class"] for p in record["predictions"]] == list(explanation.top)
    for p in record["predictions"]:
        assert p["label"] == names[p["class"]]
        assert p["probability"] == approx(float(explanation.probabilities[p["class"]]), rel=1e-5)
        assert p["logit"] == approx(float(explanation.logits[p["class"]]), rel=1e-5, abs=1e-6)
    got = record["explanations"]
    assert [e["class"] for e in got] == [c.index for c in explanation.explained]
    order = np.argsort(-explanation.logits, kind="stable")
    for e, c, d in zip(got, explanation.explained, deletions, strict=True):
        assert e["label"] == names[c.index]
        assert e["rank"] == int(np.flatnonzero(order == c.index)[0]) + 1
        assert e["probability"] == approx(c.probability, rel=1e-5)
        assert e["logit"] == approx(c.logit, rel=1e-5, abs=1e-6)
        assert e["resolution"] == list(c.evidence.shape)
        assert e["peak"] == (list(c.peak) if c.peak else None)
        deletion = e["deletion"]
        assert deletion["fraction"] == 0.2
        for key in ("original", "top", "random"):
            assert deletion[key] == approx(getattr(d, key), rel=1e-4, abs=1e-7)
            assert deletion[f"{key}_logit"] == approx(getattr(d, f"{key}_logit"), rel=1e-4)
        assert e["picture"] == str(Path(record["folder"]) / "explain.png")


# --- records and pictures against direct calls ---------------------------------------------


def test_records_and_pictures_equal_direct_calls(tmp_path, photos, tutorial_file, tutorial):
    """The tutorial's 5-class head gives its own predictions; every number of every record
    equals direct calls of GradCam and deletion_test on the same model; the picture is the
    one explain_picture draws from them; --json prints exactly the manifest's lines."""
    out = tmp_path / "out"
    result = invoke(out, tutorial_file, photos, "--json")
    assert result.exit_code == 0, result.output
    got = lines(result.stdout)
    assert got == manifest(out)
    assert [Path(r["input"]).name for r in got] == ["a.png", "b.png", "c.png"]
    names = [f"class {i}" for i in range(5)]
    for record in got:
        folder = Path(record["folder"])
        assert record["status"] == "ok"
        assert record["classes"] == 5 and record["names"] == "numbers"
        assert record["nonfinite"] is False
        assert sorted(p.name for p in folder.iterdir()) == ["explain.png", "record.json"]
        assert record["outputs"] == [str(folder / "explain.png"), str(folder / "record.json")]
        assert json.loads((folder / "record.json").read_text("utf-8")) == record
        explanation, deletions, shown = direct(tutorial, Path(record["input"]))
        assert record["size"] == list(shown.shape[:2])
        assert_matches(record, explanation, deletions, names)
        layer = tutorial.layers[-1]
        assert {(e["layer"], e["module"], e["stage"]) for e in record["explanations"]} == {
            (layer.alias, layer.relu, "relu")
        }
        panels = [
            pictures.Panel(c.index, names[c.index], c.probability, c.evidence, d)
            for c, d in zip(explanation.explained, deletions, strict=True)
        ]
        caption = pictures.Caption(
            Path(record["input"]).name,
            "vgg11",
            tutorial_file.name,
            False,
            layer.alias,
            layer.relu,
            "relu",
        )
        predictions = [(names[i], float(explanation.probabilities[i])) for i in explanation.top]
        want = np.asarray(pictures.explain_picture(shown, panels, predictions, caption))
        with Image.open(folder / "explain.png") as im:
            picture = np.asarray(im.convert("RGB"))
        assert picture.shape == want.shape
        assert np.abs(picture.astype(int) - want).max() <= 2


def test_classes_by_name_and_index_with_labels(
    tmp_path, photos, tutorial_file, tutorial, labels_file
):
    """--class explains those classes, in the order asked, whatever their rank; the
    predictions are still the top K; names come from --labels."""
    out = tmp_path / "out"
    args = [photos / "a.png", "--labels", labels_file, "--class", "astronaut", "--class", "1"]
    result = invoke(out, tutorial_file, *args, "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    (record,) = lines(result.stdout)
    assert record["names"] == "labels"
    assert [e["class"] for e in record["explanations"]] == [4, 1]
    assert [e["label"] for e in record["explanations"]] == ["astronaut", "coins"]
    explanation, deletions, _ = direct(tutorial, photos / "a.png", top=2, classes=[4, 1])
    assert len(record["predictions"]) == 2
    assert_matches(record, explanation, deletions, NAMES)


def test_an_unknown_class_name_is_a_usage_error_before_any_image(
    tmp_path, photos, tutorial_file, labels_file
):
    out = tmp_path / "out"
    result = invoke(out, tutorial_file, photos, "--labels", labels_file, "--class", "coin")
    assert result.exit_code == 2
    assert "unknown class 'coin'; nearest: 'coins'" in result.stderr
    assert "Traceback" not in result.output
    assert not list(out.rglob("record.json"))
    # the checkpoint's own names are numbers: "class 7" is out of range, "7" too
    for spec, message in [("class 7", "unknown class 'class 7'"), ("7", "class 7 is out of range")]:
        result = invoke(out, tutorial_file, photos, "--class", spec)
        assert result.exit_code == 2, result.output
        assert message in result.stderr
        assert "'--class'" in result.stderr
    assert not list(out.rglob("record.json"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat\ncoins\nhorse\n", "3 names, but the model's head has 5 outputs"),
        ("cat\n\ncoins\nhorse\ncoffee\nastronaut\n", "line 2 is empty"),
        (b"cat\ncoins\n\xff\n", "not UTF-8 text (line 3)"),
        (None, "cannot read"),
    ],
)
def test_a_bad_labels_file_is_refused_before_any_image(
    tmp_path, photos, tutorial_file, text, message
):
    labels = tmp_path / "labels.txt"
    if isinstance(text, bytes):
        labels.write_bytes(text)
    elif text is not None:
        labels.write_text(text)
    out = tmp_path / "out"
    result = invoke(out, tutorial_file, photos, "--labels", labels)
    assert result.exit_code == 2, result.output
    last = result.stderr.splitlines()[-1]  # after click's usage lines: one message
    assert last.startswith(f"Error: Invalid value for '--labels': {labels}: ")
    assert message in last
    assert not list(out.rglob("record.json"))


def test_names_stored_in_a_checkpoint(tmp_path, photos, tutorial_file, labels_file):
    """A training checkpoint's class names are used; --labels goes over them."""
    state = torch.load(tutorial_file, weights_only=True)
    names = ["tabby", "penny", "pony", "espresso", "spaceman"]
    wrapped = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "model_state_dict": state, "class_names": names}, wrapped)
    result = invoke(tmp_path / "out", wrapped, photos / "a.png", "--json", "-k", "5")
    assert result.exit_code == 0, result.output
    (record,) = lines(result.stdout)
    assert record["names"] == "checkpoint"
    assert {p["label"] for p in record["predictions"]} == set(names)
    result = invoke(tmp_path / "out2", wrapped, photos / "a.png", "--json", "--labels", labels_file)
    (record,) = lines(result.stdout)
    assert record["names"] == "labels"
    assert all(p["label"] == NAMES[p["class"]] for p in record["predictions"])


def test_a_checkpoint_without_a_head_is_one_line_exit_1(tmp_path, photos, vgg11_file):
    out = tmp_path / "out"
    result = invoke(out, vgg11_file, photos)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {vgg11_file}: holds no classifier, only the conv layers' weights; save the "
        "whole model's state_dict() once its head is trained\n"
    )
    assert not list(out.rglob("record.json"))


def test_random_weights_have_imagenet_names(tmp_path):
    """--weights random builds torchvision's 1000-class head: ImageNet's names."""
    photo = write_photo(tmp_path / "p.png", 32, 32)
    out = tmp_path / "out"
    argv = ["explain", photo, "--weights", "random", "--arch", "vgg11", "--size", "32"]
    result = CliRunner().invoke(cli, [*map(str, argv), "-k", "1", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = lines(result.stdout)
    assert record["classes"] == 1000 and record["names"] == "imagenet"
    (p,) = record["predictions"]
    assert p["label"] == imagenet_names()[p["class"]]
    assert 0 < p["probability"] < 1


def test_layer_and_stage(tmp_path, photos, tutorial_file, tutorial):
    out = tmp_path / "out"
    args = [photos / "b.png", "--layer", "conv5", "--stage", "conv", "--json", "-k", "2"]
    result = invoke(out, tutorial_file, *args)
    assert result.exit_code == 0, result.output
    (record,) = lines(result.stdout)
    conv5 = tutorial.layers[4]
    assert {(e["layer"], e["module"]) for e in record["explanations"]} == {("conv5", conv5.name)}
    explanation, deletions, _ = direct(
        tutorial, photos / "b.png", top=2, layer="conv5", stage="conv"
    )
    assert_matches(record, explanation, deletions, [f"class {i}" for i in range(5)])
    assert record["explanations"][0]["resolution"] == [10, 8]  # 85x64 pooled 3 times


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "conv1-conv3"], "'conv1-conv3' names 3 layers; explain one at a time"),
        (["--layer", "conv9"], "unknown layer 'conv9': this model has conv1..conv8"),
        (["--stage", "bn"], "conv8 (features.18) has no BN after it"),
    ],
)
def test_layer_errors_are_usage_errors(tmp_path, photos, tutorial_file, args, message):
    result = invoke(tmp_path / "out", tutorial_file, photos, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not list((tmp_path / "out").rglob("record.json"))


def test_save_raw_holds_the_evidence(tmp_path, photos, tutorial_file, tutorial):
    out = tmp_path / "out"
    result = invoke(out, tutorial_file, photos / "c.png", "--save-raw", "--json", "-k", "2")
    assert result.exit_code == 0, result.output
    (record,) = lines(result.stdout)
    folder = Path(record["folder"])
    assert record["outputs"] == [
        str(folder / n) for n in ("explain.png", "cams.npz", "record.json")
    ]
    raw = load_npz(folder / "cams.npz")
    explanation, _, _ = direct(tutorial, photos / "c.png", top=2)
    assert sorted(raw) == sorted(f"class_{c.index}" for c in explanation.explained)
    for c in explanation.explained:
        array = raw[f"class_{c.index}"]
        assert array.dtype == np.float32 and array.shape == c.evidence.shape
        assert array.max() > 0  # the comparison is not 0 == 0
        np.testing.assert_allclose(array, c.evidence, rtol=1e-4, atol=1e-6 * array.max())


def test_skip_existing_and_what_redoes_a_photo(tmp_path, photos, tutorial_file, labels_file):
    out = tmp_path / "out"
    assert invoke(out, tutorial_file, photos).exit_code == 0
    first = {r["input"]: r["fingerprint"] for r in manifest(out)}
    again = invoke(out, tutorial_file, photos, "--skip-existing", "--json")
    assert [r["status"] for r in lines(again.stdout)] == ["skipped"] * 3
    assert "0 done, 0 failed, 3 skipped" in again.stderr
    seen = set(first.values())
    for change in (
        ["-k", "2"],
        ["--class", "3"],
        ["--layer", "conv7"],
        ["--stage", "conv"],
        ["--no-normalize"],
        ["--save-raw"],
        ["--no-check"],
        ["--labels", labels_file],
    ):
        redo = invoke(out, tutorial_file, photos, "--skip-existing", "--json", *change)
        got = lines(redo.stdout)
        assert [r["status"] for r in got] == ["ok"] * 3, change
        prints = {r["fingerprint"] for r in got}
        assert len(prints) == 1 and not prints & seen, change
        seen |= prints
    # a labels file renamed in place (same name, other names) is another picture
    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(NAMES) + "\n")
    assert invoke(out, tutorial_file, photos, "--labels", labels).exit_code == 0
    labels.write_text("\n".join(reversed(NAMES)) + "\n")
    redo = invoke(out, tutorial_file, photos, "--labels", labels, "--skip-existing", "--json")
    assert [r["status"] for r in lines(redo.stdout)] == ["ok"] * 3


def test_shards_split_the_photos(tmp_path, photos, tutorial_file):
    out = tmp_path / "out"
    for k in (1, 2):
        result = invoke(out, tutorial_file, photos, "--shard", f"{k}/2")
        assert result.exit_code == 0, result.output
    parts = [manifest(out, f"manifest-shard-{k}-of-2.jsonl") for k in (1, 2)]
    inputs = [r["input"] for part in parts for r in part]
    assert sorted(inputs) == sorted(str(p) for p in photos.iterdir())
    assert len({r["folder"] for part in parts for r in part}) == 3
    assert (out / "index-shard-1-of-2.html").is_file()


def test_features_and_explain_never_share_an_output_folder(
    tmp_path, photos, tutorial_file, vgg11_file
):
    out = tmp_path / "out"
    assert invoke(out, tutorial_file, photos).exit_code == 0
    features = CliRunner().invoke(
        cli,
        ["features", str(photos), "--weights", str(vgg11_file), "--size", "32", "-o", str(out)],
    )
    assert features.exit_code == 2
    assert f"{out} holds the outputs of vggviz explain; give vggviz features a folder" in (
        features.stderr
    )
    other = tmp_path / "other"
    argv = ["features", str(photos), "--weights", str(vgg11_file), "--size", "32", "-o", str(other)]
    assert CliRunner().invoke(cli, argv).exit_code == 0
    result = invoke(other, tutorial_file, photos)
    assert result.exit_code == 2
    assert f"{other} holds the outputs of vggviz features; give vggviz explain a folder" in (
        result.stderr
    )
    assert not list(other.rglob("explain.png"))


def test_a_bad_photo_is_one_line_and_the_rest_goes_on(tmp_path, photos, tutorial_file):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    result = invoke(out, tutorial_file, photos, "--json")
    assert result.exit_code == 1
    got = {Path(r["input"]).name: r for r in lines(result.stdout)}
    assert [got[n]["status"] for n in ("a.png", "b.png", "broken.jpg", "c.png")] == [
        "ok",
        "ok",
        "error",
        "ok",
    ]
    broken = got["broken.jpg"]
    assert broken["predictions"] == [] and broken["explanations"] == []
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert errors == [f"error: {broken['error']}"]
    assert broken["error"].startswith(str(photos / "broken.jpg") + ": ")


def test_the_index_counts_first_predictions(tmp_path, photos, tutorial_file, labels_file):
    (photos / "broken.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = invoke(out, tutorial_file, photos, "--labels", labels_file)
    assert result.exit_code == 1
    records = manifest(out)
    page = (out / "index.html").read_text("utf-8")
    firsts = [r["predictions"][0] for r in records if r["status"] == "ok"]
    for cls in {p["class"] for p in firsts}:
        mine = [p for p in firsts if p["class"] == cls]
        mean = sum(p["probability"] for p in mine) / len(mine)
        unsure = sum(p["probability"] < 0.5 for p in mine)
        row = f"<tr><td>{cls}</td><td>{NAMES[cls]}</td><td>{len(mine)}</td><td>{mean:.2f}</td>"
        assert row in page
        assert (f'<td class="unsure">{unsure}</td>' if unsure else "<td>0</td>") in page
    assert page.count('<section class="image"') == 4
    assert '<span class="badge error">error</span>' in page and 'class="errbox"' in page
    for record in records:
        if record["status"] == "ok":
            url = Path(record["folder"]).relative_to(out).as_posix() + "/explain.png"
            assert f'<a href="{url}"><img src="{url}"' in page
    assert "<script" not in page


def test_the_index_page_from_records():
    """Counts, means and the unsure list from hand-made records, errors in red, odd values
    tolerated."""

    def record(name: str, cls: int, p: float) -> dict:
        predictions = [{"class": cls, "label": NAMES[cls], "probability": p, "logit": 1.0}]
        return {"input": name, "status": "ok", "predictions": predictions, "explanations": []}

    records = [
        record("a.jpg", 0, 0.9),
        record("b.jpg", 0, 0.3),
        record("c.jpg", 1, 0.6),
        {"input": "d.jpg", "status": "error", "error": "d.jpg: truncated", "outputs": []},
        {"input": "e.jpg", "status": "skipped", "predictions": "odd"},
    ]
    rows = index_page.first_predictions(records)
    assert list(rows) == [0, 1]
    assert (rows[0].photos, rows[0].mean, rows[0].unsure) == (2, pytest.approx(0.6), 1)
    assert (rows[1].photos, rows[1].mean, rows[1].unsure) == (1, pytest.approx(0.6), 0)
    assert [n for n, _ in index_page.unsure_photos(records)] == [2]
    html = index_page._class_table(records) + index_page._unsure(records)
    assert '<a href="#img-2">b.jpg</a>: cat 0.30' in html
    assert "1 photo where the model is unsure" in html
    hostile = [{**record("<x>.jpg", 0, 0.2), "predictions": [{"class": 0, "label": "<script>"}]}]
    page = index_page._class_table(hostile) + index_page._image_section(1, hostile[0], str)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_in_a_subprocess_json_lines_equal_the_manifest(tmp_path, photos, tutorial_file):
    out = tmp_path / "out"
    argv = ["explain", str(photos), "--weights", str(tutorial_file), "--size", str(SIZE)]
    done = subprocess.run(
        [sys.executable, "-m", "vggviz", *argv, "--json", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == manifest(out)
    assert done.stderr.strip().splitlines()[-1].startswith("3 done, 0 failed, 0 skipped · ")


def test_overflowing_weights_give_nulls_not_nan(tmp_path, photos, tutorial_file):
    """Activations that overflow make the logits NaN: the record says nonfinite, its numbers
    are null (JSON has no NaN), and the picture is still drawn."""
    state = torch.load(tutorial_file, weights_only=True)
    for key in ("features.0.weight", "features.3.weight"):
        state[key] = state[key] * 1e30
    huge = tmp_path / "huge.pth"
    torch.save(state, huge)
    result = invoke(tmp_path / "out", huge, photos / "a.png", "--json")
    assert result.exit_code == 0, result.output
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout
    (record,) = lines(result.stdout)
    assert record["nonfinite"] is True
    assert all(p["probability"] is None for p in record["predictions"])
    assert all(e["deletion"]["top"] is None for e in record["explanations"])
    with Image.open(Path(record["folder"]) / "explain.png") as im:
        im.load()


def test_no_check_runs_no_deletion_forward(tmp_path, photos, tutorial_file, monkeypatch):
    """--no-check: the explanation alone (records say deletion null, the picture has no
    check line), and the check's forwards are never run."""
    from vggviz.explain import engine

    def refuse(*_args, **_kwargs):
        raise AssertionError("the deletion check ran")

    monkeypatch.setattr(engine, "deletion_test", refuse)
    out = tmp_path / "out"
    result = invoke(out, tutorial_file, photos / "a.png", "--no-check", "--json", "-k", "2")
    assert result.exit_code == 0, result.output
    (record,) = lines(result.stdout)
    assert [e["deletion"] for e in record["explanations"]] == [None, None]
    assert record["explanations"][0]["peak"] is not None
    monkeypatch.undo()
    checked = invoke(tmp_path / "checked", tutorial_file, photos / "a.png", "-k", "2", "--json")
    (with_check,) = lines(checked.stdout)
    sizes = []
    for r in (record, with_check):
        with Image.open(Path(r["folder"]) / "explain.png") as im:
            sizes.append(im.size)
    # the same picture but for the title's check line and each panel's: shorter, as wide
    assert sizes[0][0] == sizes[1][0] and sizes[0][1] < sizes[1][1]
    assert record["fingerprint"] != with_check["fingerprint"]
    page = (out / "index.html").read_text("utf-8")
    assert "logit" in page and "→" not in page.split("<tbody>")[-1]


def test_batches_give_the_same_records(tmp_path, tutorial_file):
    """Photos of one size go through the network (and the check) together with
    --batch-size: the same numbers as one at a time."""
    folder = tmp_path / "same"
    for i in range(4):
        write_photo(folder / f"s{i}.png", 48, 64, seed=10 + i)
    one = invoke(tmp_path / "one", tutorial_file, folder, "--json", "-k", "2")
    four = invoke(
        tmp_path / "four", tutorial_file, folder, "--json", "-k", "2", "--batch-size", "4"
    )
    assert one.exit_code == four.exit_code == 0, four.output
    for a, b in zip(lines(one.stdout), lines(four.stdout), strict=True):
        assert [p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]]
        for ea, eb in zip(a["explanations"], b["explanations"], strict=True):
            assert ea["peak"] == eb["peak"]
            assert eb["logit"] == pytest.approx(ea["logit"], rel=1e-4, abs=1e-5)
            for key in ("top_logit", "random_logit"):
                assert eb["deletion"][key] == pytest.approx(ea["deletion"][key], rel=1e-4, abs=1e-5)
