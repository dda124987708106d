"""The house rules of src/vggviz, checked on the source itself: dependencies run one way
(cli -> jobs -> model -> core), jobs never import each other, core never imports torch (not
even when it runs), click only in cli/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vggviz

PACKAGE = Path(vggviz.__file__).parent
JOBS = {"features", "top", "explain"}
# what each folder may import from the package besides itself
ALLOWED = {
    "cli": {"core", "model", *JOBS, ""},
    **{job: {"core", "model", ""} for job in JOBS},
    "model": {"core", ""},
    "core": {""},
    # the Python API for notebooks: a consumer of the library, as cli/ is
    "api": {"core", "model", "features"},
    # vggviz/__init__.py (the version, the API's names loaded lazily), __main__.py (the CLI)
    "": {"cli", "api"},
}


def _folder(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    if rel == Path("api.py"):
        return "api"
    return rel.parts[0] if len(rel.parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, anywhere in it (functions and TYPE_CHECKING blocks too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, node.module)] + [(node.lineno, n) for n in names]
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_dependencies_run_one_way_and_jobs_never_import_each_other() -> None:
    wrong = []
    for path in _sources():
        mine = _folder(path)
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "vggviz" or len(parts) < 2:
                continue
            target = parts[1] if (PACKAGE / parts[1]).is_dir() or parts[1] == "api" else ""
            if target != mine and target not in ALLOWED[mine]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_folders_have_no_import_cycle() -> None:
    """Folder A imports folder B: an edge. The graph must be a DAG (the rules above make it
    one; this says so directly, for folders added later)."""
    edges: dict[str, set[str]] = {}
    for path in _sources():
        mine = _folder(path)
        for _, module in _imports(path):
            parts = module.split(".")
            folder = parts[1] if parts[0] == "vggviz" and len(parts) > 1 else ""
            if mine and folder not in ("", mine) and (PACKAGE / folder).is_dir():
                edges.setdefault(mine, set()).add(folder)
    seen: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if seen.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*trail, node]))
        if seen.get(node) == 2:
            return
        seen[node] = 1
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, [*trail, node])
        seen[node] = 2

    for node in sorted(edges):
        visit(node, [])
    assert edges["cli"] >= {"core", "features", "top"}  # the walk saw real edges


def test_click_only_in_cli_and_torch_never_in_core() -> None:
    wrong = []
    for path in _sources():
        folder = _folder(path)
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top == "click" and folder != "cli":
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports click")
            if top in ("torch", "torchvision") and folder == "core":
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {top}")
    assert not wrong, "\n".join(wrong)


def test_importing_every_core_module_leaves_torch_out() -> None:
    modules = sorted(f"vggviz.core.{p.stem}" for p in (PACKAGE / "core").glob("*.py"))
    assert "vggviz.core.per_image" in modules and "vggviz.core.lifecycle" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', "
        "'click')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_command_line_starts_light() -> None:
    """``vggviz --help`` loads click and the option vocabulary only: not torch, and not the
    numpy and Pillow side of the library either (what a run needs it imports when it runs)."""
    code = (
        "import sys\nimport vggviz.cli\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'PIL'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
