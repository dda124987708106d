"""The memory estimate: an upper bound from the channel table, the memory there is, and the
refusal when a size cannot fit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vggviz.core import memory
from vggviz.core.errors import UsageError


def test_estimate_grows_with_what_is_held() -> None:
    est = memory.estimate_peak_bytes
    base = est("vgg16_bn", 224, 224)
    assert memory.BASELINE < base < memory.BASELINE + 200e6
    assert est("vgg16_bn", 448, 448) > base
    assert est("vgg16_bn", 224, 224, batch_size=4) > base
    assert est("vgg16_bn", 224, 224, save_raw=True) > base
    assert est("vgg16_bn", 224, 224, tiles=None) > base  # --grid all draws every channel
    assert est("vgg16_bn", 224, 224, layers=2) < base
    assert est("vgg16_bn", 224, 224, mode="chain") > base  # nothing pooled
    assert est("vgg19_bn", 224, 224) > base > est("vgg11", 224, 224)
    assert est("vgg16_bn", 224, 224, baseline=False) == base - memory.BASELINE


def test_maps_dominate_at_large_sizes() -> None:
    """Held maps grow with the pixels: 4x the pixels, about 4x the memory above baseline."""
    small = memory.estimate_peak_bytes("vgg16_bn", 1024, 1024, baseline=False)
    large = memory.estimate_peak_bytes("vgg16_bn", 2048, 2048, baseline=False)
    assert 3.5 < large / small <= 4.0
    # the held maps alone: every conv map of VGG16 at 1024 px, float32
    maps = 4 * sum(
        c * (1024 >> block) ** 2
        for block, widths in enumerate(memory.vocabulary.blocks("vgg16"))
        for c in widths
    )
    assert maps < small < 2 * maps


def test_unknown_names_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="'vgg12'"):
        memory.estimate_peak_bytes("vgg12", 224, 224)
    with pytest.raises(UsageError, match="'tutorial'") as err:
        memory.estimate_peak_bytes("vgg16", 224, 224, mode="tutorial")
    assert err.value.param == "mode"


def test_check_fits_names_both_numbers() -> None:
    memory.check_fits(2_000_000_000, 3_000_000_000)
    memory.check_fits(2_000_000_000, None)  # unknown: no check
    with pytest.raises(UsageError) as err:
        memory.check_fits(24_400_000_000, 9_100_000_000, what="a run at 4000x4000 pixels")
    assert str(err.value) == (
        "a run at 4000x4000 pixels needs about 24.4 GB of memory but 9.1 GB is available; "
        "use a smaller size or batch, or set VGGVIZ_NO_MEMORY_CHECK=1 to try anyway"
    )
    assert err.value.param == "size"


def test_size_4000_is_refused_before_loading_anything(monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 9_000_000_000)
    monkeypatch.delenv(memory.FORCE_ENV, raising=False)
    with pytest.raises(UsageError, match=r"^a run at 4000x4000 pixels needs about 2\d\.\d GB"):
        memory.check_memory("vgg16_bn", 4000)
    assert memory.check_memory("vgg16_bn", 224) < 1e9
    assert memory.check_memory("vgg16_bn", 4000, force=True) > 9e9
    monkeypatch.setenv(memory.FORCE_ENV, "1")
    assert memory.check_memory("vgg16_bn", 4000) > 9e9
    monkeypatch.setenv(memory.FORCE_ENV, "0")
    with pytest.raises(UsageError):
        memory.check_memory("vgg16_bn", 4000)


def test_meminfo(tmp_path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    2000000 kB\n")
    assert memory._meminfo_available(str(meminfo)) == 2_048_000_000
    meminfo.write_text("MemTotal:       24000000 kB\n")  # kernels before 3.14
    assert memory._meminfo_available(str(meminfo)) is None
    assert memory._meminfo_available(str(tmp_path / "absent")) is None
    assert memory._meminfo_available() is not None  # this machine (Linux)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_of_the_tightest_ancestor(tmp_path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "self_cgroup"
    _write(proc, "0::/slurm/job_7/step_0\n")
    _write(root / "cgroup.controllers", "cpu memory pids\n")
    _write(root / "slurm/job_7/step_0/memory.max", "max\n")
    _write(root / "slurm/job_7/memory.max", "4000000000\n")
    _write(root / "slurm/job_7/memory.current", "1000000000\n")
    _write(root / "slurm/memory.max", "64000000000\n")
    _write(root / "slurm/memory.current", "60000000000\n")
    assert memory._cgroup_room(str(root), str(proc)) == 3_000_000_000
    _write(root / "slurm/job_7/memory.max", "max\n")
    assert memory._cgroup_room(str(root), str(proc)) == 4_000_000_000  # the parent's room


def test_cgroup_v2_on_a_hybrid_system(tmp_path) -> None:
    """v1 controllers with v2 mounted at root/unified (systemd's hybrid layout)."""
    root, proc = tmp_path / "cgroup", tmp_path / "self_cgroup"
    _write(proc, "4:memory:/\n0::/job\n")
    _write(root / "unified/cgroup.controllers", "\n")
    _write(root / "unified/job/memory.max", "2500000000\n")
    _write(root / "unified/job/memory.current", "500000000\n")
    _write(root / "memory/memory.limit_in_bytes", "9223372036854771712\n")
    assert memory._cgroup_room(str(root), str(proc)) == 2_000_000_000


def test_cgroup_v1_and_no_limit(tmp_path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "self_cgroup"
    _write(proc, "12:cpu,cpuacct:/job\n5:memory:/job\n")
    _write(root / "memory/job/memory.limit_in_bytes", "2000000000\n")
    _write(root / "memory/job/memory.usage_in_bytes", "500000000\n")
    assert memory._cgroup_room(str(root), str(proc)) == 1_500_000_000
    _write(root / "memory/job/memory.limit_in_bytes", "9223372036854771712\n")  # unlimited
    assert memory._cgroup_room(str(root), str(proc)) is None
    assert memory._cgroup_room(str(root), str(tmp_path / "absent")) is None


def test_available_is_the_smaller(monkeypatch) -> None:
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 8_000_000_000)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: 3_000_000_000)
    assert memory.available_bytes() == 3_000_000_000
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    assert memory.available_bytes() == 8_000_000_000
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    assert memory.available_bytes() is None


def test_memory_module_needs_no_torch() -> None:
    code = "import sys, vggviz.core.memory, vggviz.core.values; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("mode", "size", "layers"), [("network", 320, 8), ("chain", 512, 2)])
def test_estimate_bounds_a_real_run(tmp_path, vgg11_file, mode, size, layers) -> None:
    """Peak RSS of a real run (a child process) stays under the estimate, and near it."""
    from conftest import write_photo

    photo = write_photo(tmp_path / "square.png", size, size)
    args = [
        *("features", str(photo), "--arch", "vgg11", "--weights", str(vgg11_file)),
        *("--device", "cpu", "--size", str(size), "--mode", mode, "--layers", f"1-{layers}"),
        *("-q", "-o", str(tmp_path / "o")),
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
    estimate = memory.estimate_peak_bytes("vgg11", size, size, mode=mode, layers=layers)
    assert peak < estimate < 1.6 * peak
