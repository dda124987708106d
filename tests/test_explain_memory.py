"""explain's memory bound: torch-free, above a real run's peak and near it, growing with what
an explain run holds (size, batch, an earlier layer, the head)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import write_photo

from vggviz.explain import memory


def test_the_torch_free_parts_need_no_torch() -> None:
    modules = "vggviz.explain.memory, vggviz.explain.request, vggviz.explain.labels"
    code = f"import sys, {modules}, vggviz.explain.index_page; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_layer_numbers() -> None:
    assert memory.layer_number(None, "vgg16_bn") == 13
    assert memory.layer_number(None, "vgg11") == 8
    assert memory.layer_number("conv5", "vgg11") == 5
    assert memory.layer_number(" 3 ", "vgg11") == 3
    assert memory.layer_number("conv99", "vgg11") == 8
    assert memory.layer_number("features.7", "vgg11") == 1  # unknown here: the costliest


def test_the_estimate_grows_with_what_is_held(tmp_path) -> None:
    def est(**kw):
        args = {"layer": 8, "classes": 3, "batch_size": 1, "head": 1 << 20, **kw}
        return memory.estimate_peak_bytes("vgg11", 224, 224, **args)

    base = est()
    assert est(batch_size=4) > base
    assert est(layer=1) > est(layer=5) > base
    assert est(classes=20) > base
    assert est(head=memory.IMAGENET_HEAD) - base == memory.IMAGENET_HEAD - (1 << 20)
    assert memory.estimate_peak_bytes("vgg11", 448, 448, layer=8) > est()
    weights = tmp_path / "tiny.pth"
    weights.write_bytes(b"x" * 1000)
    assert memory.head_bytes(str(weights)) == 1000
    assert memory.head_bytes("random") == memory.head_bytes("imagenet") == memory.IMAGENET_HEAD
    assert memory.head_bytes(str(tmp_path / "absent.pth")) == memory.IMAGENET_HEAD


@pytest.mark.parametrize(("size", "layer", "batch"), [(320, None, 1), (256, "conv3", 2)])
def test_the_estimate_bounds_a_real_run(tmp_path, tutorial_file, size, layer, batch) -> None:
    """Peak RSS of a real run (a child process) stays under the estimate, and near it."""
    photos = [write_photo(tmp_path / f"sq{i}.png", size, size, seed=i) for i in range(batch)]
    args = [
        *("explain", *map(str, photos), "--weights", str(tutorial_file), "--device", "cpu"),
        *("--size", str(size), "--batch-size", str(batch), "-q", "-o", str(tmp_path / "o")),
        *(["--layer", layer] if layer else []),
    ]
    # VmHWM is the child's own peak (ru_maxrss would include the forked pytest process)
    code = (
        "import os, sys, vggviz.cli as cli\n"
        "def report(code):\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
        "    print(int(status) * 1024, flush=True)\n"
        "    os._exit(code)\n"
        "cli._exit_now = report\n"
        "cli.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout)
    estimate = memory.estimate_peak_bytes(
        "vgg11",
        size,
        size,
        layer=memory.layer_number(layer, "vgg11"),
        batch_size=batch,
        head=memory.head_bytes(str(tutorial_file)),
    )
    assert peak < estimate < 1.6 * peak
