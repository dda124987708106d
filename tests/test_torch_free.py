"""Help and usage errors answer at once: they never import torch (1.5 s, and gigabytes of
address space on a login node)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The child runs the console entry point with the given argv and prints whether torch got
# imported. main() ends a process that loaded torch with os._exit, so its _exit_now is
# replaced to print first.
CHILD = """
import os, sys
import vggviz.cli as cli

def report(code):
    print("TORCH", "torch" in sys.modules, code, flush=True)
    os._exit(code)

cli._exit_now = report
sys.argv = ["vggviz", *sys.argv[1:]]
try:
    cli.main()
except SystemExit as done:
    report(done.code if isinstance(done.code, int) else 0)
"""


def _run(*argv: str) -> tuple[bool, int, str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    last = done.stdout.strip().splitlines()[-1].split()
    assert last[0] == "TORCH", done.stdout + done.stderr
    return last[1] == "True", int(last[2]), done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["features", "--help"],
        ["filters", "--help"],
        ["info", "--help"],
        ["weights", "--help"],
        ["top", "--help"],
        ["features", "x.jpg", "--grid", "0x0"],
        ["features", "x.jpg", "--grid", "bogus"],
        ["features", "x.jpg", "--mode", "bogus"],
        ["features", "x.jpg", "--stage", "bogus"],
        ["features", "x.jpg", "--precision", "fp8"],
        ["features", "x.jpg", "--device", "tpu"],
        ["features", "x.jpg", "--size", "8"],
        ["features", "x.jpg", "--shard", "4/3"],
        ["features", "x.jpg", "--shard", "1/" + "9" * 240],
        ["features"],
        ["top", "x.jpg", "--reduce", "median"],
        ["top", "x.jpg", "-k", "0"],
        ["top", "x.jpg", "--shard", "0/3"],
        ["top", "x.jpg", "--size", "8"],
        ["top", "x.jpg", "--merge", "--shard", "1/2"],
        ["top"],
        ["explain", "--help"],
        ["explain"],
        ["explain", "x.jpg", "-k", "0"],
        ["explain", "x.jpg", "-k", "1000000000"],
        ["explain", "x.jpg", "--size", "8"],
        ["explain", "x.jpg", "--stage", "bogus"],
        ["explain", "x.jpg", "--batch-size", "257"],
        ["explain", "x.jpg", "--shard", "0/3"],
        ["explain", "x.jpg", "--device", "tpu"],
    ],
)
def test_help_and_usage_errors_never_import_torch(tmp_path, argv) -> None:
    if argv[1:2] == ["x.jpg"]:  # never the default imagenet: no download, ever
        argv = [*argv, "--weights", str(tmp_path / "absent.pth"), "-o", str(tmp_path / "out")]
    imported, code, stderr = _run(*argv)
    assert code == (0 if "--help" in argv or "--version" in argv else 2), stderr
    assert "Traceback" not in stderr
    assert not imported


# Values that cannot work, found by vggviz.core.values / vggviz.core.memory before anything heavy.
@pytest.mark.parametrize(
    "argv",
    [
        ["features", "x.jpg", "--grid", "1x1000000000"],
        ["features", "x.jpg", "--seed", "99999999999999999999999"],
        ["features", "x.jpg", "--size", "4000", "--mode", "chain"],
        ["top", "x.jpg", "--size", "4096", "--batch-size", "256"],
    ],
)
def test_absurd_values_are_refused_before_torch(tmp_path, argv) -> None:
    # a weights file that does not exist: should torch load, it fails fast and offline
    weights = ["--weights", str(tmp_path / "absent.pth"), "-o", str(tmp_path / "out")]
    imported, code, stderr = _run(*argv, *weights)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert not imported


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--class", "tabby kat"], "unknown class 'tabby kat'; nearest: 'tabby'"),
        (["--class", "1000"], "class 1000 is out of range: the model's classes are 0..999"),
        (["--labels", "{tmp}/absent.txt"], "absent.txt: cannot read (no such file"),
        (["--labels", "{tmp}/five.txt"], "5 names, but the model's head has 1000 outputs"),
        (
            ["--class", "cat", "--labels", "{tmp}/five.txt", "--weights", "{tmp}/absent.pth"],
            "'cat' names classes 0, 1; give the index",
        ),
        (["--size", "4096", "--batch-size", "256"], "needs about"),
        ([f"--class={n}" for n in range(21)], "21 classes: at most 20 per run"),
    ],
)
def test_explain_refuses_classes_and_labels_before_torch(tmp_path, argv, message) -> None:
    """With ImageNet's head (imagenet or random weights) or a labels file, the class names
    are known without the model: a wrong one is refused before torch loads."""
    (tmp_path / "five.txt").write_text("cat\ncat\ndog\nfox\nowl\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--weights" not in argv:
        argv += ["--weights", "random"]
    imported, code, stderr = _run("explain", "x.jpg", *argv, "-o", str(tmp_path / "out"))
    assert code == 2, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    assert not imported
