"""Measure ``vggviz top``: scan speed against the bare forward pass, peak memory for a small
and a large folder, and the cost of pass 2. Prints Markdown.

1. Memory (run first, before this process imports torch: a child's peak RSS from
   ``os.wait4`` starts from the forking process's own high-water mark). ``vggviz top`` runs as
   its own process on folders of ``--counts`` photos (default 60 and 1000) at ``--rss-size``;
   the report gives each run's wall time, peak RSS, and pass 2's time from its own note.
2. Speed, in this process, alternating A/B/C ``--repeats`` times on the same decoded photos:
   the bare forward (the model up to the last conv's ReLU, nothing captured), the scan's
   compute (the same forward under the reducing hooks, plus the running top-K and float16
   rows), and the whole scan from the files (decoding on its side thread, chunks and
   checkpoints), each at batch 1 and ``--batch``.

Photos are made from examples/photos (square crops, flips and rescales; deterministic) into
a temporary folder. Usage:
    python benchmarks/bench_top.py [--arch vgg16] [--weights PATH|random] [--size 224]
        [--rss-size 64] [--counts 60,1000] [--repeats 3] [--batch 8] [--speed-photos 24]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "examples" / "photos"
MIB = 1024 * 1024


def make_photos(folder: Path, count: int, side: int, seed: int = 0) -> Path:
    """``count`` distinct square photos of ``side`` px: random crops of the sample photos,
    some mirrored, rescaled."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))]
    rng = random.Random(seed)
    for n in range(count):
        src = sources[n % len(sources)]
        crop = rng.randint(min(src.size) // 3, min(src.size))
        left = rng.randint(0, src.width - crop)
        top = rng.randint(0, src.height - crop)
        img = src.crop((left, top, left + crop, top + crop)).resize((side, side))
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        img.save(folder / f"p{n:05d}.jpg", quality=90)
    return folder


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split())
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model.group(1) if model else 'CPU'}; {os.cpu_count()} cores; " + ", ".join(shown)


def memory_runs(args: argparse.Namespace, work: Path) -> list[str]:
    lines = [
        "| photos | wall s | peak RSS MiB | pass 2 s (its note) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    peaks = {}
    for count in args.counts:
        folder = make_photos(work / f"rss{count}", count, args.rss_size + args.rss_size // 2)
        out = work / f"out{count}"
        argv = [sys.executable, "-m", "vggviz", "top", str(folder), "-o", str(out)]
        argv += ["--arch", args.arch, "--weights", args.weights, "--device", "cpu"]
        argv += ["--size", str(args.rss_size), "--layers", args.layers]
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = child.stderr.read().decode()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        if status != 0:
            sys.exit(f"vggviz top failed on {count} photos:\n{stderr}")
        match = re.search(r"crops and pictures in ([\d.]+) s", stderr)
        peaks[count] = usage.ru_maxrss * 1024 / MIB
        lines.append(
            f"| {count} | {wall:.1f} | {peaks[count]:.0f} | {match.group(1) if match else '?'} |"
        )
    small, large = min(peaks), max(peaks)
    lines.append(
        f"\n{large} photos: peak {peaks[large] - peaks[small]:+.0f} MiB against {small} "
        f"photos (target <= +100 MiB)"
    )
    return lines


def speed_runs(args: argparse.Namespace, work: Path) -> list[str]:
    import numpy as np
    import torch

    from vggviz.core import images, inputs, lifecycle
    from vggviz.core.vocabulary import ModelSpec
    from vggviz.model.hooks import reduced_maps
    from vggviz.model.layers import select_layers
    from vggviz.model.loading import load_model
    from vggviz.top.job import run_top
    from vggviz.top.ranking import TopK
    from vggviz.top.request import TopOptions

    loaded = load_model(args.arch, args.weights, device="cpu")
    model = lifecycle.model_identity(ModelSpec(args.arch, args.weights, device="cpu"), args.arch)
    layers = select_layers(loaded.layers, args.layers)
    folder = make_photos(work / "speed", args.speed_photos, args.size + args.size // 7)
    found = inputs.discover([str(folder)])
    tensors = [
        torch.from_numpy(
            images.to_array(images.resize_for_model(images.load_rgb(i.path), args.size), True)
        )
        for i in found.items
    ]
    stop = int(layers[-1].relu.split(".")[-1]) + 1
    trunk = loaded.model.features[:stop]

    def batches(size: int):
        return [torch.stack(tensors[i : i + size]) for i in range(0, len(tensors), size)]

    def paired(size: int) -> tuple[float, float]:
        """Bare forward and scan compute on each batch back to back, so that this machine's
        slow spells hit both alike; returns the two totals."""
        tops = {la.alias: TopK.empty(la.module.out_channels, 9) for la in layers}
        bare_s = scan_s = bare_cpu = scan_cpu = 0.0
        for n, x in enumerate(batches(size)):
            started, cpu0 = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                trunk(x)
            middle, cpu1 = time.perf_counter(), time.process_time()
            out = reduced_maps(loaded.model, layers, x, "relu", "max")
            numbers = np.arange(n * size, n * size + len(x))
            for alias, (vals, where) in out.items():
                tops[alias].add(vals, numbers, where)
                vals.astype(np.float16)
            scan_s += time.perf_counter() - middle
            scan_cpu += time.process_time() - cpu1
            bare_s += middle - started
            bare_cpu += cpu1 - cpu0
        return (bare_s, bare_cpu), (scan_s, scan_cpu)

    def scan_files(size: int) -> tuple[float, float]:
        target = Path(tempfile.mkdtemp(dir=work))
        options = TopOptions(batch_size=size, size=args.size, checkpoint_every=100)
        started, cpu0 = time.perf_counter(), time.process_time()
        plan = lifecycle.plan([str(folder)], target, "1/1")
        run_top(loaded, layers, plan, options, target, model=model)
        return time.perf_counter() - started, time.process_time() - cpu0

    names = ("bare forward", "scan compute", "scan from files")
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {
        (name, size): [] for size in (1, args.batch) for name in names
    }
    paired(1)  # warm-up
    for _ in range(args.repeats):
        for size in (1, args.batch):
            bare, scan = paired(size)
            files = scan_files(size)
            for name, (wall, cpu) in zip(names, (bare, scan, files), strict=True):
                runs[(name, size)].append((wall / len(tensors), cpu / len(tensors)))
    lines = [
        "| batch | what | wall ms per photo | speed vs bare | CPU ms per photo | vs bare |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for (name, size), times in runs.items():
        wall = statistics.median(t[0] for t in times) * 1000
        cpu = statistics.median(t[1] for t in times) * 1000
        ref = runs[("bare forward", size)]
        base = [statistics.median(t[i] for t in ref) * 1000 for i in (0, 1)]
        lines.append(
            f"| {size} | {name} | {wall:.1f} | {base[0] / wall:.0%} | {cpu:.1f} | "
            f"{base[1] / cpu:.0%} |"
        )
    shape = "x".join(map(str, tensors[0].shape[1:]))
    lines.insert(0, f"{len(tensors)} photos of {shape}, fp32, {args.repeats} repeats\n")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--layers", default="all")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rss-size", type=int, default=64)
    parser.add_argument("--counts", default="60,1000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--speed-photos", type=int, default=24)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    args.counts = [int(c) for c in args.counts.split(",")]
    print(f"Machine: {cpu_flags()}; {time.strftime('%Y-%m-%d %H:%M')}; {args.arch} {args.weights}")
    with tempfile.TemporaryDirectory(prefix="bench-top-") as tmp:
        work = Path(tmp)
        if not args.skip_memory:
            print(f"\n## Memory and pass 2 (--size {args.rss_size}, --layers {args.layers})\n")
            print("\n".join(memory_runs(args, work)))
        print(f"\n## Scan speed (--size {args.size})\n")
        print("\n".join(speed_runs(args, work)))


if __name__ == "__main__":
    main()
