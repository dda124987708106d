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
224x224 photos made from the sample photos.

Usage: python benchmarks/bench.py [--device cpu|cuda] [--repeats 3] [--vggviz PATH] [--quick]
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
CHECKPOINT = CACHE / "vgg16_bn_random_seed0.pth"
PHOTO = CACHE / "photo224.jpg"
FOLDER100 = CACHE / "photos100"
FOLDER60 = CACHE / "photos60"
SETUP_STAMP = CACHE / "setup.json"
SETUP_VERSION = 1
TUTORIAL = HERE / "tutorial.py"
MIB = 1024 * 1024
GB = 1000**3

# Targets (see the project brief): speed-ups are wall-time ratios against the tutorial.
TARGET_DEFAULT_SPEEDUP = 10.0
TARGET_CHAIN_SPEEDUP = 4.0
TARGET_DEFAULT_PEAK = 1.0 * GB
TARGET_CHAIN_PEAK = 1.2 * GB
TARGET_BATCH_RATE = 3.0  # images/s on the 60-photo folder
TARGET_FLAT = 1.10  # 100-photo peak at most 10% above the 60-photo peak
TARGET_LATENCY = 0.5  # s, --help and a usage error
LATENCY_REPEATS = 5
LAYERS = 13  # VGG16-BN's conv layers: each run must write at least one PNG per layer per photo


# --------------------------------------------------------------------------- set-up


def source_photos() -> list[Path]:
    """The project's example photos (examples/, searched recursively), else the shared ones."""
    for folder in (REPO / "examples", REPO.parent / "shared" / "photos"):
        found = sorted((p for p in folder.rglob("*.jpg") if p.is_file()), key=lambda p: p.name)
        if found:
            return found
    sys.exit("bench: no sample photos (*.jpg) in examples/ or ../shared/photos/")


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
    """``count`` distinct 224x224 photos: random crops, shifts and flips of the sources."""
    from PIL import Image, ImageOps

    rng = random.Random(0)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    images = []
    for src in sources:
        with Image.open(src) as img:
            images.append(img.convert("RGB"))
    seen: set[str] = set()
    made = 0
    while made < count:
        img = images[made % len(images)]
        side = rng.uniform(0.45, 1.0) * min(img.size)
        left = rng.uniform(0, img.width - side)
        top = rng.uniform(0, img.height - side)
        box = (round(left), round(top), round(left + side), round(top + side))
        crop = img.crop(box).resize((224, 224), Image.Resampling.LANCZOS)
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


def latency(cmd: Sequence[str], expect_rc: int, scratch: Path) -> tuple[float, Run | None]:
    """Median wall of ``LATENCY_REPEATS`` runs; the first run with an unexpected exit code."""
    walls, bad = [], None
    for _ in range(LATENCY_REPEATS):
        run = measure(cmd, scratch, expect_rc)
        walls.append(run.wall)
        if run.rc != expect_rc and bad is None:
            bad = run
    return statistics.median(walls), bad


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


def cpu_isa(flags: set[str]) -> str:
    """The widest vector/matrix extension, and whether bf16 has hardware support."""
    widest = next(
        (name for name in ("amx_bf16", "avx512f", "avx2", "avx") if name in flags), "no AVX"
    )
    native = {"amx_bf16", "avx512_bf16"} & flags
    return widest + (", native bf16" if native else ", no native bf16")


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


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(
    configs: dict[str, Config],
    lat: dict[str, tuple[float, Run | None]],
    header: str,
) -> str:
    base = configs["tutorial"]
    lines = [
        "# vggviz vs the tutorial",
        "",
        header,
        "",
        "| configuration | median wall s | peak RSS MiB | speed-up vs tutorial "
        "| memory vs tutorial | median CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base_ok = base.failed is None
    for cfg in configs.values():
        if cfg.failed is not None:
            lines.append(f"| {cfg.label} | failed (exit {cfg.failed.rc}) | | | | |")
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
        lines.append(
            f"| {cfg.label} | {cfg.wall:.2f} | {mib(cfg.peak)} | {speed} | {memory} "
            f"| {cfg.cpu:.1f} |"
        )
    lines += [
        "",
        "Each run is its own process: wall includes start-up and interpreter exit; peak RSS is "
        "that process's maximum resident set (os.wait4); CPU s is its user + system time, which "
        "other load on the machine inflates less than wall.",
        "",
    ]

    b100, b60, one = configs["batch100"], configs["batch60"], configs["features"]
    if b100.failed is None:
        rate = 100 / b100.wall
        text = f"Throughput: 100 photos in one process: {b100.wall:.2f} s, {rate:.1f} images/s"
        if one.failed is None and b100.wall > one.wall:
            per = (b100.wall - one.wall) / 99
            text += f" ({1 / per:.1f} images/s after start-up, i.e. {per * 1000:.0f} ms/photo)"
        lines.append(text + f", peak RSS {mib(b100.peak)} MiB.")
    else:
        lines.append(f"Throughput: 100-photo folder failed (exit {b100.failed.rc}).")
    flat = None
    if b60.failed is None and b100.failed is None:
        flat = b100.peak <= b60.peak * TARGET_FLAT
        lines.append(
            f"Memory flatness: 60 photos {b60.wall:.2f} s ({60 / b60.wall:.1f} images/s), "
            f"peak RSS {mib(b60.peak)} MiB; 100 photos peak RSS {mib(b100.peak)} MiB "
            f"({(b100.peak - b60.peak) / MIB:+,.0f} MiB)."
        )
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

    def peak_target(cfg: Config, limit: float) -> tuple[str, bool]:
        if cfg.failed is not None:
            return "failed", False
        return f"{mib(cfg.peak)} MiB", cfg.peak <= limit

    default, chain = configs["features"], configs["chain"]
    rows = [
        (
            f"default (features, filters included) >= {TARGET_DEFAULT_SPEEDUP:g}x faster",
            *speed_target(default, TARGET_DEFAULT_SPEEDUP),
        ),
        (f"chain >= {TARGET_CHAIN_SPEEDUP:g}x faster", *speed_target(chain, TARGET_CHAIN_SPEEDUP)),
        (
            f"default peak RSS <= {TARGET_DEFAULT_PEAK / GB:.1f} GB "
            f"({mib(TARGET_DEFAULT_PEAK)} MiB)",
            *peak_target(default, TARGET_DEFAULT_PEAK),
        ),
        (
            f"chain peak RSS <= {TARGET_CHAIN_PEAK / GB:.1f} GB ({mib(TARGET_CHAIN_PEAK)} MiB)",
            *peak_target(chain, TARGET_CHAIN_PEAK),
        ),
    ]
    if flat is None:
        rows.append(("60-photo folder >= 3 images/s, flat memory", "failed", False))
    else:
        rate60 = 60 / b60.wall
        rows.append(
            (
                f"60-photo folder >= {TARGET_BATCH_RATE:g} images/s, flat memory "
                f"(100-photo peak <= {TARGET_FLAT:.2f}x 60-photo peak)",
                f"{rate60:.1f} images/s, {b100.peak / b60.peak:.2f}x",
                rate60 >= TARGET_BATCH_RATE and flat,
            )
        )
    rows.append(
        (
            f"`--help` <= {TARGET_LATENCY:g} s",
            f"{help_wall:.2f} s",
            help_wall <= TARGET_LATENCY and help_bad is None,
        )
    )
    rows.append(
        (
            f"usage error <= {TARGET_LATENCY:g} s, exit 2",
            f"{usage_wall:.2f} s",
            usage_wall <= TARGET_LATENCY and usage_bad is None,
        )
    )
    lines += [f"| {name} | {got} | {verdict(ok)} |" for name, got, ok in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def build_configs(vggviz: str, device: str, py: str) -> dict[str, Config]:
    ckpt, photo = str(CHECKPOINT), str(PHOTO)
    feats = [vggviz, "features"]
    common = ["--weights", ckpt, "-o", "{out}", "--quiet", "--device", device]
    filters = [vggviz, "filters", "--weights", ckpt, "-o", "{out}", *filters_extra(vggviz, device)]
    tutorial = [py, str(TUTORIAL), "--weights", ckpt, "--image", photo, "--out", "{out}"]
    configs = [
        Config("tutorial", "tutorial (baseline)", [[*tutorial, "--device", device]], 1 + LAYERS),
        Config(
            "features",
            "vggviz features (default: network, relu; + conv1 filters, overview, index), fp32",
            [[*feats, photo, *common, "--precision", "fp32"]],
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
            "bf16",
            "vggviz features (default), bf16",
            [[*feats, photo, *common, "--precision", "bf16"]],
            LAYERS,
        ),
        Config(
            "batch100",
            "vggviz features on a 100-photo folder, fp32",
            [[*feats, str(FOLDER100), *common, "--precision", "fp32"]],
            100 * LAYERS,
            100,
        ),
        Config(
            "batch60",
            "vggviz features on a 60-photo folder, fp32",
            [[*feats, str(FOLDER60), *common, "--precision", "fp32"]],
            60 * LAYERS,
            60,
        ),
    ]
    return {c.key: c for c in configs}


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
    parser.add_argument("--quick", action="store_true", help="one repeat, for smoke tests")
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.setup_only:
        setup_here()
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
    header = machine_line(args.device, repeats, gpu)
    configs = build_configs(args.vggviz, args.device, sys.executable)
    order = ["tutorial", "features", "filters", "chain", "bf16", "batch100", "batch60"]
    with tempfile.TemporaryDirectory(prefix="vggviz-bench-") as tmp:
        scratch = Path(tmp)
        for rep in range(1, repeats + 1):
            for key in order:
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
    for key, (_, bad) in lat.items():
        if bad is not None:
            log(f"latency run '{key}' exited {bad.rc}:\n{bad.tail}")

    header += (
        f", {load()} at end; harness peak RSS {mib(harness_peak())} MiB (a floor under each row)"
    )
    text = report(configs, lat, header)
    print(text)
    out = HERE / f"results-{args.device}.md"
    out.write_text(text)
    log(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
