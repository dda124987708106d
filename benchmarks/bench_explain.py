"""Time ``vggviz explain -k 1`` over a folder against pytorch-grad-cam's README recipe doing
the same (VGG16-BN, Grad-CAM at conv13 after its ReLU, one overlay PNG per photo), and say
where explain's time goes. Prints Markdown.

Every measured run is its own process, timed around it (start-up and exit included, as a user
pays them), with its own peak RSS from ``os.wait4``; the harness never imports torch (a
child's peak starts from the harness's). Configurations alternate (A, B, C, ..., A, B, C, ...)
so that a busy machine's slow spells hit all of them, and ratios come from the same round.

Set-up is cached in benchmarks/.cache/ (git-ignored): a folder of 336x224 photos (3:2 crops
and flips of the sample photos, as ``bench.py`` makes them), a tutorial reader's checkpoint
(random-init VGG16-BN features, seed 0, and ``nn.Linear(25088, 5)``), and pytorch-grad-cam
with what it imports (``grad-cam``, ``ttach``, ``tqdm``, ``opencv-python-headless``,
``scipy``, ``scikit-learn`` and its ``joblib``, ``threadpoolctl``, ``narwhals``,
``cloudpickle``), installed with ``pip --target benchmarks/.cache/gradcam --no-deps`` and
put on the baseline's PYTHONPATH only: never a dependency of vggviz.

Both sides run torchvision's seeded random init (no download); the arithmetic is that of the
ImageNet weights. Usage:
    python benchmarks/bench_explain.py [--photos 30] [--repeats 1] [--vggviz PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import bench  # the features bench: photos, process measurement, machine line
from bench import CACHE, HERE, MIB, REPO, Run, log, measure

GRADCAM_ENV = CACHE / "gradcam"
GRADCAM_PACKAGES = (
    *("grad-cam", "ttach", "tqdm", "opencv-python-headless", "scipy", "scikit-learn"),
    *("joblib", "threadpoolctl", "narwhals", "cloudpickle"),
)
CHECKPOINT = CACHE / "vgg16_bn_random_seed0_5class.pth"
BASELINE = Path(__file__).resolve().parent / "gradcam_readme.py"
TARGET_RATIO = 5.0  # issue 15: explain -k 1 at least 5x the baseline's photos/s


def folder_for(count: int) -> Path:
    return CACHE / f"photos{count}-336x224"


# --------------------------------------------------------------------------- set-up


def setup_here(count: int) -> None:
    """Photos and the tutorial checkpoint (in a child: this imports torch)."""
    import torch
    import torchvision

    CACHE.mkdir(parents=True, exist_ok=True)
    folder = folder_for(count)
    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) != count:
        log(f"set-up: making {count} photos of 336x224 in {folder} ...")
        bench.make_folder(bench.source_photos(), folder, count)
    if not CHECKPOINT.is_file():
        log(f"set-up: saving a tutorial-style checkpoint to {CHECKPOINT} ...")
        torch.manual_seed(0)
        model = torchvision.models.vgg16_bn(weights=None)
        model.classifier = torch.nn.Linear(25088, 5)
        tmp = CHECKPOINT.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(CHECKPOINT)


def gradcam_ready(py: str) -> bool:
    env = {**os.environ, "PYTHONPATH": str(GRADCAM_ENV)}
    done = subprocess.run(
        [py, "-c", "import pytorch_grad_cam"], env=env, capture_output=True, cwd=REPO
    )
    return done.returncode == 0


def install_gradcam(py: str) -> None:
    """pytorch-grad-cam and what it imports, into the bench's own folder."""
    if gradcam_ready(py):
        return
    log(f"set-up: installing pytorch-grad-cam into {GRADCAM_ENV} (bench only) ...")
    cmd = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*cmd, "--target", str(GRADCAM_ENV), *GRADCAM_PACKAGES], check=True)
    if not gradcam_ready(py):
        sys.exit("bench_explain: pytorch_grad_cam still does not import; see the lines above")


def gradcam_versions() -> str:
    found = []
    for name in ("grad_cam", "opencv_python_headless", "scipy", "scikit_learn"):
        versions = sorted(GRADCAM_ENV.glob(f"{name}-*.dist-info"))
        if versions:
            found.append(versions[-1].name.removesuffix(".dist-info").replace("_", "-", 1))
    return ", ".join(found)


# --------------------------------------------------------------------------- where the time goes


def parts_here(folder: Path, count: int) -> None:
    """Per photo, in this process: the bare forward, explain's Grad-CAM (one forward, the
    backward above the map), a full-autograd Grad-CAM as pytorch-grad-cam computes it
    (every weight requires grad, the backward through the whole network), the deletion
    check of one class (two forwards), the picture and its PNG. Prints JSON (ms medians)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from vggviz.core import files, images
    from vggviz.explain import pictures
    from vggviz.explain.deletion import deletion_test
    from vggviz.explain.gradcam import GradCam, network_logits
    from vggviz.model.loading import load_model

    loaded = load_model("vgg16_bn", "random", device="cpu", head=True)
    model, cam = loaded.model, GradCam(loaded.model)
    relu13 = model.get_submodule(loaded.layers[-1].relu)
    times: dict[str, list[float]] = {}

    def timed(name: str, fn):
        start = time.perf_counter()
        result = fn()
        times.setdefault(name, []).append(1000 * (time.perf_counter() - start))
        return result

    def full_autograd(x: torch.Tensor) -> None:
        store = {}

        def keep(_m, _i, out):
            out.retain_grad()
            store["map"] = out

        model.requires_grad_(True)
        handle = relu13.register_forward_hook(keep)
        try:
            logits = model(x)
            logits[0, int(logits[0].argmax())].backward()
            fmap, grad = store["map"], store["map"].grad
            torch.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap).sum(1)).detach()
        finally:
            handle.remove()
            model.zero_grad(set_to_none=True)
            model.requires_grad_(False)

    scratch = Path(tempfile.mkdtemp())
    try:
        for path in sorted(folder.glob("*.jpg"))[:count]:
            photo, array = images.for_model(path, 224, True)
            x = torch.from_numpy(array)[None]
            with torch.inference_mode():
                timed("bare forward (logits)", lambda x=x: network_logits(model, x))
            explained = timed("explain's Grad-CAM, 1 class", lambda x=x: cam(x, top=1))
            timed("full-autograd Grad-CAM (pytorch-grad-cam's way)", lambda x=x: full_autograd(x))
            checks = timed(
                "deletion check, 1 class (2 forwards)",
                lambda x=x, e=explained: deletion_test(model, x, e, batch_size=1),
            )
            e, d = explained[0], checks[0]
            panels = [
                pictures.Panel(c.index, "x", c.probability, c.evidence, dd)
                for c, dd in zip(e.explained, d, strict=True)
            ]
            caption = pictures.Caption("x", "vgg16_bn", "random", True, "conv13", "f", "relu")
            picture = timed(
                "picture",
                lambda p=photo, pa=panels, c=caption: pictures.explain_picture(
                    p, pa, [("x", 0.5)], c
                ),
            )
            timed("PNG", lambda im=picture: files.save_png(im, scratch / "x.png"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {k: statistics.median(v[1:] or v) for k, v in times.items()}  # first: warm-up
    print(json.dumps({"medians": medians, "threads": torch.get_num_threads()}))


def measure_parts(py: str, folder: Path, count: int) -> dict:
    done = subprocess.run(
        [py, str(Path(__file__).resolve()), "--parts", str(folder), str(count)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- end to end


@dataclass
class Config:
    key: str
    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    pngs: int = 1  # PNGs written per photo, at least
    runs: list[Run] = field(default_factory=list)

    def measure_once(self, scratch: Path, photos: int) -> Run:
        work = Path(tempfile.mkdtemp(prefix=self.key + "-", dir=scratch))
        try:
            cmd = [str(work / "out") if a == "{out}" else a for a in self.command]
            old = {k: os.environ.get(k) for k in self.env}
            os.environ.update(self.env)
            try:
                run = measure(cmd, work)
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            written = len(list((work / "out").rglob("*.png"))) if (work / "out").is_dir() else 0
            if run.ok and written < self.pngs * photos:
                run.rc, run.tail = -1, f"wrote {written} PNGs, expected {self.pngs * photos}"
            self.runs.append(run)
            return run
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


def configs(vggviz: str, py: str, folder: Path) -> list[Config]:
    explain = [vggviz, "explain", str(folder), "--arch", "vgg16_bn", "-k", "1", "-q"]
    return [
        Config(
            "gradcam",
            "pytorch-grad-cam, README recipe (baseline): GradCAM at conv13, overlay PNG",
            [py, str(BASELINE), str(folder), "{out}"],
            {"PYTHONPATH": str(GRADCAM_ENV)},
        ),
        Config(
            "explain",
            "vggviz explain -k 1 (Grad-CAM + deletion check + picture + record), "
            "random weights (torchvision's 1000-class head)",
            [*explain, "--weights", "random", "-o", "{out}"],
        ),
        Config(
            "tutorial",
            "vggviz explain -k 1, the tutorial's checkpoint (Linear(25088, 5) head)",
            [*explain, "--weights", str(CHECKPOINT), "-o", "{out}"],
        ),
        Config(
            "nocheck",
            "vggviz explain -k 1 --no-check, random weights",
            [*explain, "--weights", "random", "--no-check", "-o", "{out}"],
        ),
        Config(
            "features",
            "vggviz features (peak RSS reference), the tutorial's checkpoint",
            [vggviz, "features", str(folder), "--weights", str(CHECKPOINT), "-q", "-o", "{out}"],
            pngs=14,
        ),
    ]


# --------------------------------------------------------------------------- report


def report(runs: list[Config], photos: int, parts: dict, started: str, minutes: float) -> str:
    base = next(c for c in runs if c.key == "gradcam")
    out = [
        "# vggviz explain vs pytorch-grad-cam",
        "",
        f"{started}; load average {bench.load()} at end; the bench took {minutes:.1f} min. "
        f"{photos} photos of 336x224; baseline packages: {gradcam_versions()}.",
        "",
        "| configuration | median wall s | photos/s | vs pytorch-grad-cam | peak RSS MiB "
        "| median CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in runs:
        if any(not r.ok for r in c.runs):
            bad = next(r for r in c.runs if not r.ok)
            out.append(f"| {c.label} | failed (rc {bad.rc}) | | | | |")
            log(f"{c.key} failed:\n{bad.tail}")
            continue
        wall = c.median("wall")
        ratio = "1.00x (baseline)" if c is base else f"{base.median('wall') / wall:.2f}x"
        # ratios of one round each, so that slow spells do not favour either side
        rounds = [b.wall / r.wall for b, r in zip(base.runs, c.runs, strict=False)]
        if c is not base and len(rounds) > 1:
            ratio += f" ({', '.join(f'{v:.2f}' for v in rounds)})"
        out.append(
            f"| {c.label} | {wall:.1f} | {photos / wall:.3f} | {ratio} | "
            f"{c.median('peak') / MIB:,.0f} | {c.median('cpu'):.1f} |"
        )
    targets = [("explain", "`explain -k 1`"), ("nocheck", "`explain -k 1 --no-check`")]
    rows = []
    for key, what in targets:
        config = next(c for c in runs if c.key == key)
        if all(r.ok for r in config.runs + base.runs):
            ratio = base.median("wall") / config.median("wall")
            verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
            rows.append(
                f"| {what} >= {TARGET_RATIO:g}x pytorch-grad-cam's photos/s | {ratio:.2f}x "
                f"| {verdict} |"
            )
    if rows:
        out += ["", "| target (issue 15) | measured | result |", "| --- | --- | --- |", *rows]
    if "medians" in parts:
        out += [
            "",
            "Where explain's time goes, per photo (ms, medians, this process, "
            f"{parts['threads']} threads):",
            "",
        ]
        out += ["| step | ms | in bare forwards |", "| --- | ---: | ---: |"]
        forward = parts["medians"]["bare forward (logits)"]
        for name, ms in parts["medians"].items():
            out.append(f"| {name} | {ms:,.0f} | {ms / forward:.2f} |")
    elif parts:
        out += ["", f"(the per-step timing failed: {parts.get('error')})"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--vggviz", default=str(Path(sys.executable).parent / "vggviz"))
    parser.add_argument("--parts-photos", type=int, default=6)
    parser.add_argument("--setup-only", type=int, metavar="COUNT")
    parser.add_argument("--parts", nargs=2, metavar=("FOLDER", "COUNT"))
    args = parser.parse_args(argv)
    if args.setup_only:
        setup_here(args.setup_only)
        return 0
    if args.parts:
        parts_here(Path(args.parts[0]), int(args.parts[1]))
        return 0
    py = sys.executable
    begun = time.monotonic()
    subprocess.run(
        [py, str(Path(__file__).resolve()), "--setup-only", str(args.photos)], check=True
    )
    install_gradcam(py)
    folder = folder_for(args.photos)
    started = bench.machine_line("cpu", args.repeats, None)
    runs = configs(args.vggviz, py, folder)
    scratch = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    try:
        for round_ in range(args.repeats):
            for c in runs:
                log(f"round {round_ + 1}/{args.repeats}: {c.key} ...")
                run = c.measure_once(scratch, args.photos)
                log(f"  {run.wall:.1f} s, {run.peak / MIB:,.0f} MiB, rc {run.rc}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log("where the time goes ...")
    parts = measure_parts(py, folder, args.parts_photos)
    text = report(runs, args.photos, parts, started, (time.monotonic() - begun) / 60)
    print(text)
    out = HERE / "results-explain-cpu.md"
    out.write_text(text)
    log(f"written to {out}")
    failed = any(not r.ok for c in runs for r in c.runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
