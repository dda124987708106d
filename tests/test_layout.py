"""The house's rules, read from the source: dependencies run one way (cli -> jobs -> model ->
core), the jobs never import each other, core/ never imports torch, click lives in cli/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vggviz.core.errors import UsageError

PACKAGE = Path(__file__).parent.parent / "src" / "vggviz"
JOBS = ("features", "top", "explain")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def part(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else ""


def test_dependencies_run_one_way() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = part(path)
        for name in imports(path):
            top, _, rest = name.partition(".")
            other = rest.split(".")[0] if top == "vggviz" else ""
            where = f"{path.relative_to(PACKAGE)} imports {name}"
            if mine == "core" and (
                top in ("torch", "torchvision", "click") or other in ("cli", "model", *JOBS)
            ):
                problems.append(where)
            if mine == "model" and (top == "click" or other in ("cli", *JOBS)):
                problems.append(where)
            if mine in JOBS and (top == "click" or other == "cli"):
                problems.append(where)
            if mine in JOBS and other in JOBS and other != mine:
                problems.append(where)
    assert not problems, "\n".join(problems)


def test_explain_request_names_its_option_in_param() -> None:
    from vggviz.explain.request import Request

    for request, param in [
        (Request(["x"], top=0), "k"),
        (Request(["x"], top=21), "k"),
        (Request(["x"], classes=[str(n) for n in range(21)]), "class"),
        (Request(["x"], stage="pool"), "stage"),
        (Request(["x"], batch_size=0), "batch_size"),
    ]:
        with pytest.raises(UsageError) as err:
            request.check()
        assert err.value.param == param and "--" not in str(err.value)
