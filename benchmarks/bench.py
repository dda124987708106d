"""Time vggviz against the tutorial it replaces, and print a Markdown table.

Every measured run is its own process: wall time is taken around the process (start-up, imports
and interpreter exit included, as a user pays them) and peak memory is the child's own peak
resident set size, read from ``os.wait4`` (on Linux that figure starts from the forking
process's own high-water mark, so the harness never imports torch: set-up and the CUDA probe
run in child processes, and the report gives the harness's peak). Configurations alternate
with the baseline (tutorial, A, B, C, tutorial, A, B, C, ...) so that this machine's slow spells
hit all of them, and medians are reported.

Set-up is cached in benchmarks/.cache/ (git-ignored): a random-init VGG16-BN checkpoint saved
with ``torch.save`` (seed 0, about 528 MB), a 224x224 photo, and folders of 100 and 60 distinct
336x224 photos (3:2, like most photos) made from the sample photos by crops and flips.

Beside the end-to-end runs, a child process times the bare network (``model.features`` on
the same 60 photos, batch 1, no hooks, no drawing) in fp32 and bf16: the folder's end-to-end
rate is judged against it. Once per bench, the same few photos are drawn in fp32 and in bf16
and the pictures compared pixel by pixel.

Usage: python benchmarks/bench.py [--device cpu|cuda] [--repeats 3] [--vggviz PATH] [--quick]
(VGGVIZ_SHARED: the shared folder whose photos/ also feed the test photos; default ../shared)
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
CHECKPOINT = CACHE / "vgg16_bn_random_seed0.pth"
PHOTO = CACHE / "photo224.jpg"
FOLDER100 = CACHE / "photos100-336x224"
FOLDER60 = CACHE / "photos60-336x224"
FOLDER_SIZE = (336, 224)  # width, height
SETUP_STAMP = CACHE / "setup.json"
SETUP_VERSION = 2
COMPARE_PHOTOS = 4  # photos drawn in fp32 and bf16 for the picture comparison
TUTORIAL = HERE / "tutorial.py"
MIB = 1024 * 1024
GB = 1000**3

# Targets (issue 9 and the project brief): speed-ups are wall-time ratios against the tutorial.
TARGET_DEFAULT_SPEEDUP = 12.0
TARGET_CHAIN_SPEEDUP = 4.0
TARGET_DEFAULT_PEAK = 1.0 * GB
TARGET_CHAIN_PEAK = 1.2 * GB
TARGET_BATCH8_PEAK = 1.2 * GB
TARGET_FOLDER_SHARE = 0.5  # a folder's end-to-end photos/s against the bare forward's
TARGET_FLAT = 1.10  # 100-photo peak at most 10% above the 60-photo peak
TARGET_LATENCY = 0.5  # s, --help and a usage error
LATENCY_REPEATS = 5
LAYERS = 13  # VGG16-BN's conv layers: each run must write at least one PNG per layer per photo


# --------------------------------------------------------------------------- set-up


def source_photos() -> list[Path]:
    """The project's example photos (examples/, searched recursively) and the shared ones."""
    found = []
    shared = Path(os.environ.get("VGGVIZ_SHARED", REPO.parent / "shared"))
    for folder in (REPO / "examples", shared / "photos"):
        if folder.is_dir():
            found += sorted((p for p in folder.rglob("*.jpg") if p.is_file()), key=lambda p: p.name)
    unique = list({sha256(p): p for p in found}.values())
    if not unique:
        sys.exit("bench: no sample photos (*.jpg) in examples/ or ../shared/photos/")
    return unique


def main_photo_source(sources: Sequence[Path]) -> Path:
    cats = [p for p in sources if p.name == "cat.jpg"]
    return cats[0] if cats else sources[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_checkpoint(path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn(weights=None)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


def center_224(path: Path, out: Path) -> None:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        img.resize((224, 224), Image.Resampling.LANCZOS).save(out, quality=92)


def make_folder(sources: Sequence[Path], folder: Path, count: int) -> None:
    """``count`` distinct 336x224 photos: random 3:2 crops, shifts and flips of the sources."""
    from PIL import Image, ImageOps

    rng = random.Random(0)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    images = []
    for src in sources:
        with Image.open(src) as img:
            images.append(img.convert("RGB"))
    aspect = FOLDER_SIZE[0] / FOLDER_SIZE[1]
    seen: set[str] = set()
    made = 0
    while made < count:
        img = images[made % len(images)]
        width = rng.uniform(0.45, 1.0) * min(img.width, img.height * aspect)
        height = width / aspect
        left = rng.uniform(0, img.width - width)
        top = rng.uniform(0, img.height - height)
        box = (round(left), round(top), round(left + width), round(top + height))
        crop = img.crop(box).resize(FOLDER_SIZE, Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        digest = hashlib.sha256(crop.tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        crop.save(tmp / f"photo{made:03d}.jpg", quality=92)
        made += 1
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def setup() -> None:
    """Make what is missing from the cache, in a child process.

    The harness itself must stay small: a child's peak RSS (``ru_maxrss``) starts from the
    high-water mark of the process that forked it, so a harness that had imported torch or
    built the model would put a floor of about 1 GiB under every measurement.
    """
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--setup-only"], check=True)


def setup_here() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    sources = source_photos()
    wanted = {
        "version": SETUP_VERSION,
        "sources": [sha256(p) for p in sources],
        "photo": sha256(main_photo_source(sources)),
    }
    if not CHECKPOINT.is_file():
        log(f"set-up: saving a random-init vgg16_bn checkpoint to {CHECKPOINT} ...")
        make_checkpoint(CHECKPOINT)
    stamp = json.loads(SETUP_STAMP.read_text()) if SETUP_STAMP.is_file() else None
    if stamp != wanted or not (PHOTO.is_file() and FOLDER100.is_dir() and FOLDER60.is_dir()):
        log(f"set-up: making test photos from {len(sources)} sample photos ...")
        center_224(main_photo_source(sources), PHOTO)
        make_folder(sources, FOLDER100, 100)
        tmp60 = FOLDER60.with_name(FOLDER60.name + ".tmp")
        shutil.rmtree(tmp60, ignore_errors=True)
        tmp60.mkdir()
        for photo in sorted(FOLDER100.glob("*.jpg"))[:60]:
            shutil.copy2(photo, tmp60 / photo.name)
        shutil.rmtree(FOLDER60, ignore_errors=True)
        tmp60.replace(FOLDER60)
        SETUP_STAMP.write_text(json.dumps(wanted, indent=1) + "\n")
    # Read the checkpoint once so that the first measured run does not pay a cold disk.
    with CHECKPOINT.open("rb") as f:
        while f.read(64 * MIB):
            pass


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    wall: float  # seconds
    peak: int  # bytes, the child's peak RSS
    rc: int
    tail: str = ""  # last lines of the child's output when it failed
    cpu: float = 0.0  # seconds of user + system CPU time of the child
    png_bytes: int = 0  # what the run wrote as PNG in its per-photo folders

    @property
    def ok(self) -> bool:
        return self.rc == 0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(cmd: Sequence[str], workdir: Path, expect_rc: int = 0) -> Run:
    """Run ``cmd`` in its own process; wall time around it, peak RSS of that child."""
    out_log = workdir / "child.log"
    with out_log.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    tail = ""
    if rc != expect_rc:
        lines = out_log.read_text(errors="replace").splitlines()
        tail = "\n".join(lines[-15:])
    return Run(wall, usage.ru_maxrss * scale, rc, tail, usage.ru_utime + usage.ru_stime)


@dataclass
class Config:
    key: str
    label: str
    commands: list[list[str]]  # run one after the other; walls summed, peaks maxed
    min_pngs: int = 1  # the run must write at least this many PNGs
    photos: int = 1  # photos per run: the speed-up is per photo
    runs: list[Run] = field(default_factory=list)

    def measure_once(self, scratch: Path) -> Run:
        work = Path(tempfile.mkdtemp(prefix=self.key + "-", dir=scratch))
        try:
            out = work / "out"
            total = Run(0.0, 0, 0)
            for template in self.commands:
                cmd = [str(work / "out") if arg == "{out}" else arg for arg in template]
                run = measure(cmd, work)
                total = Run(
                    total.wall + run.wall,
                    max(total.peak, run.peak),
                    run.rc,
                    run.tail,
                    total.cpu + run.cpu,
                )
                if not run.ok:
                    total.tail = f"$ {' '.join(cmd)}\n{run.tail}"
                    break
            pngs = len(list(out.rglob("*.png"))) if out.is_dir() else 0
            total.png_bytes = (
                sum(p.stat().st_size for p in out.glob("*/*.png")) if out.is_dir() else 0
            )
            if total.ok and pngs < self.min_pngs:
                total.rc = -1
                total.tail = f"wrote {pngs} PNGs, expected at least {self.min_pngs}"
            self.runs.append(total)
            return total
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @property
    def failed(self) -> Run | None:
        return next((r for r in self.runs if not r.ok), None)

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def peak(self) -> float:
        return statistics.median(r.peak for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r.cpu for r in self.runs)

    @property
    def rate(self) -> float:
        """Photos per second, end to end (start-up and exit included)."""
        return self.photos / self.wall

    @property
    def png_per_photo(self) -> float:
        return statistics.median(r.png_bytes for r in self.runs) / self.photos


def latency(cmd: Sequence[str], expect_rc: int, scratch: Path) -> tuple[float, Run | None]:
    """Median wall of ``LATENCY_REPEATS`` runs; the first run with an unexpected exit code."""
    walls, bad = [], None
    for _ in range(LATENCY_REPEATS):
        run = measure(cmd, scratch, expect_rc)
        walls.append(run.wall)
        if run.rc != expect_rc and bad is None:
            bad = run
    return statistics.median(walls), bad


# --------------------------------------------------------------------------- the bare network


@dataclass
class Forward:
    """The bare network's photos/s, with OpenMP's idle threads spinning (torch's default) and
    sleeping (what ``vggviz`` sets), and the weights channels-last (what vggviz uses) or in
    torch's default layout: the fastest is the baseline, so that the comparison never
    flatters vggviz (spinning wins on an idle machine, loses badly on a busy one)."""

    precision: str
    rates: dict[str, list[float]] = field(default_factory=dict)  # policy -> one per repeat
    error: str = ""

    def policy_rate(self, policy: str) -> float:
        return statistics.median(self.rates[policy])

    @property
    def rate(self) -> float:
        return max(self.policy_rate(p) for p in self.rates)

    @property
    def detail(self) -> str:
        return ", ".join(f"{self.policy_rate(p):.2f} with {p}" for p in self.rates)


OMP_POLICIES = {"spinning": "ACTIVE", "sleeping": "PASSIVE"}
LAYOUTS = ("channels-last", "default")


def forward_here(folder: Path, precision: str, device: str, layout: str) -> None:
    """Print the bare network's photos/s on ``folder``: ``model.features`` at batch 1, loaded
    and preprocessed as vggviz does, after one warm-up photo (oneDNN's set-up), with its
    weights in ``layout``: channels-last (what vggviz uses) or torch's default."""
    import torch

    from vggviz.core import images
    from vggviz.model.loading import load_model

    loaded = load_model("vgg16_bn", str(CHECKPOINT), device=device, precision=precision)
    if layout == "default":
        loaded.model.features.to(memory_format=torch.contiguous_format)
    xs = [
        torch.from_numpy(images.to_array(images.resize_for_model(images.load_rgb(p), 224), True))
        for p in sorted(folder.glob("*.jpg"))
    ]
    features = loaded.model.features

    def sync() -> None:
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        features(xs[0][None].to(loaded.device, loaded.dtype))
        sync()
        start = time.perf_counter()
        for x in xs:
            features(x[None].to(loaded.device, loaded.dtype))
        sync()
        seconds = time.perf_counter() - start
    print(json.dumps({"photos": len(xs), "seconds": seconds}))


def measure_forward(fwd: Forward, device: str) -> list[str]:
    """One run per weights layout and OpenMP wait policy; returns what to log."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--forward", fwd.precision]
    got = []
    for layout in LAYOUTS:
        for policy, value in OMP_POLICIES.items():
            env = {**os.environ, "OMP_WAIT_POLICY": value}
            done = subprocess.run(
                [*cmd, "--device", device, "--layout", layout],
                capture_output=True, text=True, cwd=REPO, env=env,
            )  # fmt: skip
            what = f"{policy} OpenMP threads, {layout}"
            if done.returncode != 0:
                fwd.error = (done.stderr.strip().splitlines() or ["failed"])[-1]
                got.append(f"{what}: FAILED ({fwd.error})")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rate = result["photos"] / result["seconds"]
            fwd.rates.setdefault(what, []).append(rate)
            got.append(f"{rate:.2f} photos/s ({what})")
    return got


# --------------------------------------------------------------------------- bf16 vs fp32


def compare_here(first: Path, second: Path) -> None:
    """Print how the pictures of two runs differ: the fraction of pixels that differ and the
    largest difference in 8-bit levels, for all layer pictures, for those whose channel
    choice (the strongest 16, by mean) came out the same, and for the overviews; and how
    many layers chose other channels."""
    import numpy as np
    from PIL import Image

    stats: dict[str, list[int]] = {}

    def add(kind: str, diff: np.ndarray) -> None:
        entry = stats.setdefault(kind, [0, 0, 0])
        entry[0] += int(np.count_nonzero(diff))
        entry[1] += diff.size
        entry[2] = max(entry[2], int(diff.max()))

    layers = same_layers = 0
    for record_path in sorted(first.glob("*/record.json")):
        mine = json.loads(record_path.read_text())
        theirs = json.loads((second / record_path.relative_to(first)).read_text())
        chosen = {la["name"]: la["channels"] for la in theirs["layers"]}
        pictures = [
            (la["picture"], la["channels"] == chosen.get(la["name"])) for la in mine["layers"]
        ]
        pictures.append((mine["overview"], None))
        for picture, same in pictures:
            a = Path(picture)
            b = second / a.relative_to(first)
            with Image.open(a) as ia, Image.open(b) as ib:
                pa = np.asarray(ia.convert("RGB")).astype(np.int16)
                pb = np.asarray(ib.convert("RGB")).astype(np.int16)
            if pa.shape != pb.shape:  # a wider bar label, say: count every pixel as changed
                pa, pb = np.zeros(1, np.int16), np.full(1, 255, np.int16)
            diff = np.abs(pa - pb).max(axis=-1) if pa.ndim == 3 else np.abs(pa - pb)
            if same is None:
                add("overview", diff)
                continue
            layers += 1
            add("layer", diff)
            if same:
                same_layers += 1
                add("layer, same channels", diff)
    result = {k: {"differ": v[0], "pixels": v[1], "max": v[2]} for k, v in stats.items()}
    print(json.dumps({"pictures": result, "layers": layers, "same_channels": same_layers}))


def bf16_vs_fp32(vggviz: str, device: str, scratch: Path) -> dict[str, Any] | str:
    """Draw the first COMPARE_PHOTOS photos of the folder in fp32 and in bf16, and compare."""
    photos = [str(p) for p in sorted(FOLDER60.glob("*.jpg"))[:COMPARE_PHOTOS]]
    outs = {}
    for precision in ("fp32", "bf16"):
        out = scratch / f"compare-{precision}"
        cmd = [vggviz, "features", *photos, "--weights", str(CHECKPOINT), "-o", str(out)]
        cmd += ["--quiet", "--no-filters", "--device", device, "--precision", precision]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            return f"{precision} run failed (exit {done.returncode})"
        outs[precision] = out
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compare"]
    done = subprocess.run(
        [*cmd, str(outs["fp32"]), str(outs["bf16"])], capture_output=True, text=True, cwd=REPO
    )
    if done.returncode != 0:
        return "comparison failed: " + (done.stderr.strip().splitlines() or [""])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def cuda_probe() -> str | None:
    """The GPU's name, or None when torch sees no CUDA device (asked in a child process)."""
    code = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or None


def harness_peak() -> int:
    """This process's own peak RSS in bytes: a floor under every child's figure."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024)


def machine_line(device: str, repeats: int, gpu: str | None) -> str:
    cpu = platform.processor() or platform.machine()
    isa = ""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    model = [line for line in info if line.startswith("model name")]
    if model:
        cpu = model[0].split(":", 1)[1].strip()
    flags = [line for line in info if line.startswith("flags")]
    if flags:
        isa = f" ({cpu_isa(set(flags[0].split(':', 1)[1].split()))})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch_version = metadata.version("torch")
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    extra = f", GPU {gpu} (peak RSS is host memory only)" if device == "cuda" else ""
    return (
        f"Machine: {cpu}{isa}, {cores} cores, torch {torch_version}, Python "
        f"{platform.python_version()}, {when}; device {device}{extra}; "
        f"{repeats} repeat(s), medians; commit {git_commit()}; load average {load()} at start"
    )


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_isa(flags: set[str]) -> str:
    """The CPU flags that matter to torch's kernels, and whether bf16 has hardware support."""
    present = [name for name in ISA_FLAGS if name in flags] or ["no AVX2"]
    native = {"amx_bf16", "avx512_bf16"} & flags
    return "flags " + " ".join(present) + (", native bf16" if native else ", no native bf16")


def load() -> str:
    """The 1-minute load average: above the core count, other work shared the CPUs."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def mib(n: float) -> str:
    return f"{n / MIB:,.0f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def report(
    configs: dict[str, Config],
    forwards: dict[str, Forward],
    lat: dict[str, tuple[float, Run | None]],
    compare: dict[str, Any] | str | None,
    header: str,
    drawing: dict[str, int | None],
) -> str:
    base = configs["tutorial"]
    lines = [
        "# vggviz vs the tutorial",
        "",
        header,
        "",
        "| configuration | median wall s | peak RSS MiB | speed-up vs tutorial "
        "| memory vs tutorial | median CPU s | PNG MB/photo |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base_ok = base.failed is None
    for cfg in configs.values():
        if not cfg.runs:
            continue
        if cfg.failed is not None:
            lines.append(f"| {cfg.label} | failed (exit {cfg.failed.rc}) | | | | | |")
            continue
        if cfg is base:
            speed = memory = "1.00x (baseline)"
        elif base_ok:
            speed = f"{base.wall * cfg.photos / cfg.wall:.1f}x"
            if cfg.photos > 1:
                speed += " per photo"
            memory = f"{cfg.peak / base.peak:.2f}x"
        else:
            speed = memory = "n/a"
        png = f"{cfg.png_per_photo / 1e6:.2f}" if cfg.png_per_photo else ""
        lines.append(
            f"| {cfg.label} | {cfg.wall:.2f} | {mib(cfg.peak)} | {speed} | {memory} "
            f"| {cfg.cpu:.1f} | {png} |"
        )
    lines += [
        "",
        "Each run is its own process: wall includes start-up and interpreter exit; peak RSS is "
        "that process's maximum resident set (os.wait4); CPU s is its user + system time, which "
        "other load on the machine inflates less than wall. PNG MB/photo: the photo's layer "
        "pictures and overview (1 MB = 10^6 bytes).",
        "",
    ]

    def ok(key: str) -> bool:
        return key in configs and bool(configs[key].runs) and configs[key].failed is None

    one = configs["features"]
    folder_rows = []
    for key, precision in (("folder60", "fp32"), ("folder60_bf16", "bf16")):
        fwd = forwards.get(precision)
        if not ok(key) or fwd is None or not fwd.rates:
            if key in configs and configs[key].runs:
                why = fwd.error if fwd is not None and fwd.error else "a run failed"
                lines.append(f"Folder, {precision}: not measured ({why}).")
                folder_rows.append((precision, None, None))
            continue
        cfg = configs[key]
        steady = ""
        if ok("features") and cfg.wall > one.wall and precision == "fp32":
            per = (cfg.wall - one.wall) / (cfg.photos - 1)
            steady = f"; {1 / per:.2f} photos/s after start-up ({per * 1000:.0f} ms/photo)"
        share = cfg.rate / fwd.rate
        lines.append(
            f"Folder of {cfg.photos} photos of {FOLDER_SIZE[0]}x{FOLDER_SIZE[1]}, {precision}: "
            f"{cfg.rate:.2f} photos/s end to end{steady}; the bare forward pass on the same "
            f"photos {fwd.rate:.2f} photos/s ({1000 / fwd.rate:.0f} ms/photo; {fwd.detail}): "
            f"{share:.0%} of it."
        )
        folder_rows.append((precision, cfg.rate, fwd.rate))
    if ok("folder60"):
        workers = f"{drawing['all']} drawing worker(s)" if drawing.get("all") else "drawing"
        line = f"Cores: the folder run on all {len(os.sched_getaffinity(0))} cores used {workers}"
        if ok("folder60_core"):
            single = configs["folder60_core"]
            line += (
                f"; on one core ({drawing.get('one')} worker) it drew "
                f"{single.rate:.2f} photos/s: all cores are "
                f"{configs['folder60'].rate / single.rate:.2f}x one"
            )
        lines.append(line + ".")
    flat = None
    if ok("folder60") and ok("folder100"):
        b60, b100 = configs["folder60"], configs["folder100"]
        flat = b100.peak <= b60.peak * TARGET_FLAT
        lines.append(
            f"Memory flatness: 60 photos peak RSS {mib(b60.peak)} MiB; 100 photos "
            f"{mib(b100.peak)} MiB ({(b100.peak - b60.peak) / MIB:+,.0f} MiB)."
        )
    if isinstance(compare, dict):
        parts = []
        for kind, c in compare["pictures"].items():
            frac = c["differ"] / c["pixels"] if c["pixels"] else 0.0
            parts.append(f"{kind}: {frac:.2%} of pixels differ, by at most {c['max']} levels")
        lines.append(
            f"bf16 vs fp32 pictures of {COMPARE_PHOTOS} photos: {compare['same_channels']} of "
            f"{compare['layers']} layer pictures show the same channels; " + "; ".join(parts) + "."
        )
    elif compare:
        lines.append(f"bf16 vs fp32 pictures: {compare}.")
    help_wall, help_bad = lat["help"]
    usage_wall, usage_bad = lat["usage"]
    lines.append(
        f"Latency (median of {LATENCY_REPEATS}): `vggviz --help` {help_wall * 1000:.0f} ms"
        + (f" (exit {help_bad.rc}!)" if help_bad else "")
        + f"; usage error `vggviz features --mode bogus` {usage_wall * 1000:.0f} ms"
        + (f" (exit {usage_bad.rc}, expected 2!)" if usage_bad else " (exit 2)")
        + "."
    )
    lines += ["", "| target | measured | result |", "| --- | --- | --- |"]

    def speed_target(cfg: Config, need: float) -> tuple[str, bool]:
        if cfg.failed is not None or not base_ok:
            return "failed", False
        got = base.wall / cfg.wall
        return f"{got:.1f}x", got >= need

    def peak_target(key: str, limit: float) -> tuple[str, bool | None]:
        if key not in configs:
            return "not measured (--quick)", None
        if not ok(key):
            return "failed", False
        return f"{mib(configs[key].peak)} MiB", configs[key].peak <= limit

    rows = [
        (
            f"one photo, default (features, filters included) >= {TARGET_DEFAULT_SPEEDUP:g}x "
            "faster than the tutorial",
            *speed_target(one, TARGET_DEFAULT_SPEEDUP),
        ),
    ]
    for precision, rate, fwd_rate in folder_rows:
        name = (
            f"folder of 60 {FOLDER_SIZE[0]}x{FOLDER_SIZE[1]} photos, {precision}: "
            f">= {TARGET_FOLDER_SHARE:.0%} of the bare forward's photos/s"
        )
        if rate is None or fwd_rate is None:
            rows.append((name, "failed", False))
        else:
            rows.append(
                (
                    name,
                    f"{rate / fwd_rate:.0%} ({rate:.2f} vs {fwd_rate:.2f} photos/s)",
                    rate >= TARGET_FOLDER_SHARE * fwd_rate,
                )
            )
    limit = f"{TARGET_DEFAULT_PEAK / GB:.1f} GB ({mib(TARGET_DEFAULT_PEAK)} MiB)"
    rows += [
        (f"default peak RSS <= {limit}", *peak_target("features", TARGET_DEFAULT_PEAK)),
        (f"`--weights random` peak RSS <= {limit}", *peak_target("random", TARGET_DEFAULT_PEAK)),
        (f"60-photo folder peak RSS <= {limit}", *peak_target("folder60", TARGET_DEFAULT_PEAK)),
        (
            f"`--batch-size 8` peak RSS <= {TARGET_BATCH8_PEAK / GB:.1f} GB "
            f"({mib(TARGET_BATCH8_PEAK)} MiB)",
            *peak_target("batch8", TARGET_BATCH8_PEAK),
        ),
    ]
    if flat is not None:
        b60, b100 = configs["folder60"], configs["folder100"]
        rows.append(
            (
                f"flat memory (100-photo peak <= {TARGET_FLAT:.2f}x 60-photo peak)",
                f"{b100.peak / b60.peak:.2f}x",
                flat,
            )
        )
    rows += [
        (
            f"chain >= {TARGET_CHAIN_SPEEDUP:g}x faster",
            *speed_target(configs["chain"], TARGET_CHAIN_SPEEDUP),
        ),
        (
            f"chain peak RSS <= {TARGET_CHAIN_PEAK / GB:.1f} GB ({mib(TARGET_CHAIN_PEAK)} MiB)",
            *peak_target("chain", TARGET_CHAIN_PEAK),
        ),
        (
            f"`--help` <= {TARGET_LATENCY:g} s",
            f"{help_wall:.2f} s",
            help_wall <= TARGET_LATENCY and help_bad is None,
        ),
        (
            f"usage error <= {TARGET_LATENCY:g} s, exit 2",
            f"{usage_wall:.2f} s",
            usage_wall <= TARGET_LATENCY and usage_bad is None,
        ),
    ]
    lines += [f"| {name} | {got} | {verdict(good)} |" for name, got, good in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def build_configs(vggviz: str, device: str, py: str, bf16: bool) -> dict[str, Config]:
    ckpt, photo = str(CHECKPOINT), str(PHOTO)
    feats = [vggviz, "features"]
    common = ["--weights", ckpt, "-o", "{out}", "--quiet", "--device", device]
    filters = [vggviz, "filters", "--weights", ckpt, "-o", "{out}", *filters_extra(vggviz, device)]
    tutorial = [py, str(TUTORIAL), "--weights", ckpt, "--image", photo, "--out", "{out}"]
    folder60, folder100 = str(FOLDER60), str(FOLDER100)
    configs = [
        Config("tutorial", "tutorial (baseline)", [[*tutorial, "--device", device]], 1 + LAYERS),
        Config(
            "features",
            "vggviz features (default: network, relu; + conv1 filters, overview, index), fp32",
            [[*feats, photo, *common, "--precision", "fp32"]],
            LAYERS,
        ),
        Config(
            "random",
            "vggviz features --weights random (seed 0), fp32",
            [[*feats, photo, "--weights", "random", "-o", "{out}", "--quiet", "--device", device]],
            LAYERS,
        ),
        Config("filters", "vggviz filters (alone; features draws them too)", [filters]),
        Config(
            "chain",
            "vggviz features --mode chain --no-normalize, fp32",
            [[*feats, photo, *common, "--mode", "chain", "--no-normalize", "--precision", "fp32"]],
            LAYERS,
        ),
        Config(
            "folder60",
            "vggviz features on a 60-photo folder (336x224), fp32",
            [[*feats, folder60, *common, "--precision", "fp32"]],
            60 * LAYERS,
            60,
        ),
        *one_core_config(feats, folder60, common),
        Config(
            "batch8",
            "vggviz features on the 60-photo folder, --batch-size 8, fp32",
            [[*feats, folder60, *common, "--precision", "fp32", "--batch-size", "8"]],
            60 * LAYERS,
            60,
        ),
        Config(
            "folder100",
            "vggviz features on a 100-photo folder (336x224), fp32",
            [[*feats, folder100, *common, "--precision", "fp32"]],
            100 * LAYERS,
            100,
        ),
    ]
    if bf16:
        configs += [
            Config(
                "bf16",
                "vggviz features (default), bf16",
                [[*feats, photo, *common, "--precision", "bf16"]],
                LAYERS,
            ),
            Config(
                "folder60_bf16",
                "vggviz features on the 60-photo folder, bf16",
                [[*feats, folder60, *common, "--precision", "bf16"]],
                60 * LAYERS,
                60,
            ),
        ]
    return {c.key: c for c in configs}


def first_core() -> int | None:
    """The first core this process may use, when it may use more than one and ``taskset``
    is there to pin a run to it."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return cores[0] if len(cores) > 1 and shutil.which("taskset") else None


def one_core_config(feats: list[str], folder: str, common: list[str]) -> list[Config]:
    core = first_core()
    if core is None:
        return []
    cmd = ["taskset", "-c", str(core), *feats, folder, *common, "--precision", "fp32"]
    label = f"vggviz features on the 60-photo folder, one core (`taskset -c {core}`), fp32"
    return [Config("folder60_core", label, [cmd], 60 * LAYERS, 60)]


def drawing_workers(device: str, pin: int | None = None) -> int | None:
    """The drawing workers vggviz sizes for the folder run (asked in a child process, pinned
    to core ``pin`` when given, as the run is)."""
    code = (
        "from vggviz.core import memory, per_image; "
        f"one = memory.estimate_peak_bytes('vgg16_bn', {FOLDER_SIZE[1]}, {FOLDER_SIZE[0]}, "
        "baseline=False); "
        f"print(per_image.drawing_workers({device != 'cpu'}, one))"
    )
    cmd = [sys.executable, "-c", code]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin), *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    return int(done.stdout) if done.returncode == 0 and done.stdout.strip().isdigit() else None


def native_bf16(device: str) -> bool:
    """CUDA, or a CPU with AVX512-BF16 or AMX: elsewhere torch emulates bf16, 100x slower."""
    if device == "cuda":
        return True
    try:
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def filters_extra(vggviz: str, device: str) -> list[str]:
    """``--quiet`` / ``--device`` for ``vggviz filters`` if it has them."""
    try:
        text = subprocess.run(
            [vggviz, "filters", "--help"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    extra = ["--quiet"] if "--quiet" in text else []
    return extra + (["--device", device] if "--device" in text else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    parser.add_argument(
        "--vggviz",
        default=str(Path(sys.executable).parent / "vggviz"),
        help="the vggviz executable (default: next to this Python)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="one repeat, no 100-photo or batch-8 run"
    )
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--forward", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=LAYOUTS, default=LAYOUTS[0], help=argparse.SUPPRESS)
    parser.add_argument("--compare", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.setup_only:
        setup_here()
        return 0
    if args.forward:
        forward_here(FOLDER60, args.forward, args.device, args.layout)
        return 0
    if args.compare:
        compare_here(*args.compare)
        return 0
    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        parser.error("--repeats must be at least 1")

    gpu = cuda_probe() if args.device == "cuda" else None
    if args.device == "cuda" and gpu is None:
        print("CUDA not available: CUDA not measured")
        return 0
    if not (os.path.isfile(args.vggviz) and os.access(args.vggviz, os.X_OK)):
        log(f"bench: no vggviz executable at {args.vggviz}; `pip install -e .` or pass --vggviz")
        return 1

    setup()
    started = time.perf_counter()
    header = machine_line(args.device, repeats, gpu)
    bf16 = native_bf16(args.device)
    configs = build_configs(args.vggviz, args.device, sys.executable, bf16)
    if args.quick:
        for key in ("folder100", "batch8"):
            configs.pop(key)
    forwards = {p: Forward(p) for p in (("fp32", "bf16") if bf16 else ("fp32",))}
    order = [
        "tutorial", "features", "random", "filters", "chain", "bf16",
        "folder60", "forward-fp32", "folder60_core", "folder60_bf16", "forward-bf16",
        "batch8", "folder100",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vggviz-bench-") as tmp:
        scratch = Path(tmp)
        for rep in range(1, repeats + 1):
            for key in order:
                if key.startswith("forward-"):
                    fwd = forwards.get(key.removeprefix("forward-"))
                    if fwd is not None:
                        got = measure_forward(fwd, args.device)
                        log(f"[{rep}/{repeats}] bare forward, {fwd.precision}: {'; '.join(got)}")
                    continue
                if key not in configs:
                    continue
                cfg = configs[key]
                run = cfg.measure_once(scratch)
                state = "" if run.ok else f"  FAILED (exit {run.rc})"
                log(
                    f"[{rep}/{repeats}] {cfg.label}: {run.wall:.2f} s wall, {run.cpu:.1f} s CPU, "
                    f"{mib(run.peak)} MiB{state}"
                )
                if not run.ok and len([r for r in cfg.runs if not r.ok]) == 1:
                    log(run.tail)
        lat = {
            "help": latency([args.vggviz, "--help"], 0, scratch),
            "usage": latency([args.vggviz, "features", "--mode", "bogus", str(PHOTO)], 2, scratch),
        }
        compare = bf16_vs_fp32(args.vggviz, args.device, scratch) if bf16 else None
    for key, (_, bad) in lat.items():
        if bad is not None:
            log(f"latency run '{key}' exited {bad.rc}:\n{bad.tail}")

    header += (
        f", {load()} at end; harness peak RSS {mib(harness_peak())} MiB (a floor under each row); "
        f"the bench took {(time.perf_counter() - started) / 60:.1f} min"
    )
    core = first_core()
    drawing = {"all": drawing_workers(args.device), "one": None}
    if core is not None:
        drawing["one"] = drawing_workers(args.device, core)
    text = report(configs, forwards, lat, compare, header, drawing)
    print(text)
    out = HERE / f"results-{args.device}.md"
    out.write_text(text)
    log(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
