"""Class names: ImageNet's for ImageNet heads, a labels file's, a checkpoint's, or "class N";
and the classes a user asks for by name or index.

Torch-free: it can run before the model is loaded.

ImageNet's 1,000 names are the ones torchvision ships with its weights
(``VGG16_Weights.IMAGENET1K_V1.meta["categories"]``), read without importing torchvision:
``import torchvision`` costs about 3 s, while finding its ``models/_meta.py`` and evaluating
the one list literal in it takes milliseconds. Should that private file ever move or change
shape, the public weights API is used instead (and the 3 s paid once per run).
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from vggviz.core.errors import UsageError, WeightsError
from vggviz.core.text import cannot, display

__all__ = [
    "IMAGENET_CLASSES",
    "class_names",
    "imagenet_names",
    "read_labels",
    "resolve_classes",
]

IMAGENET_CLASSES = 1000
LABELS_MAX_BYTES = 8 << 20  # a labels file of 100,000 long names is 4 MB
NEAREST = 5  # names suggested for an unknown one


@functools.cache
def imagenet_names() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, in output order (as torchvision's weights give them)."""
    names = _names_from_source()
    if names is None:
        from torchvision.models import VGG16_Weights

        names = tuple(VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    return names


def _names_from_source() -> tuple[str, ...] | None:
    """``_IMAGENET_CATEGORIES`` from torchvision's source, without running any of it."""
    try:
        spec = importlib.util.find_spec("torchvision")  # finds the package, runs nothing
        if spec is None or not spec.submodule_search_locations:
            return None
        source = Path(next(iter(spec.submodule_search_locations)), "models", "_meta.py")
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, ValueError, SyntaxError, ImportError):
        return None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "_IMAGENET_CATEGORIES"
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            if (
                isinstance(value, list)
                and len(value) == IMAGENET_CLASSES
                and all(isinstance(v, str) for v in value)
            ):
                return tuple(value)
    return None


def read_labels(path: str | Path) -> list[str]:
    """The class names of a labels file: UTF-8 text, one name a line, in output order.

    Surrounding blanks (and a byte-order mark) are dropped and so are blank lines at the end;
    a blank line before the last name is an error, since every later name would be shifted
    by one class.
    """
    shown = display(str(path))
    try:
        with open(path, "rb") as f:
            data = f.read(LABELS_MAX_BYTES + 1)
    except OSError as err:
        raise UsageError(cannot("read", path, err), param="labels") from None
    if len(data) > LABELS_MAX_BYTES:
        raise UsageError(
            f"{shown}: larger than {LABELS_MAX_BYTES >> 20} MiB, not a labels file", param="labels"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UsageError(
            f"{shown}: not UTF-8 text (line {line}); expected one class name a line",
            param="labels",
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UsageError(f"{shown}: no class names in it", param="labels")
    for number, line in enumerate(lines, 1):
        if not line:
            raise UsageError(
                f"{shown}: line {number} is empty; expected one class name a line",
                param="labels",
            )
    return lines


def class_names(
    count: int,
    *,
    labels: str | Path | None = None,
    stored: Sequence[str] | None = None,
    imagenet: bool = False,
) -> list[str]:
    """The names of a head's ``count`` outputs, from the first source that has them: a labels
    file, the names a checkpoint holds (``stored``), ImageNet's when ``imagenet`` and the
    head has 1,000 outputs, else ``class 0``, ``class 1``, ..."""
    if labels is not None:
        names = read_labels(labels)
        if len(names) != count:
            raise UsageError(
                f"{display(str(labels))}: {_count(len(names), 'name')}, "
                f"but the model's head has {_count(count, 'output')}",
                param="labels",
            )
        return names
    if stored is not None:
        if len(stored) != count:
            raise WeightsError(
                f"the checkpoint names {_count(len(stored), 'class', 'classes')}, "
                f"but its head has {_count(count, 'output')}"
            )
        return [str(name) for name in stored]
    if imagenet and count == IMAGENET_CLASSES:
        return list(imagenet_names())
    return [f"class {i}" for i in range(count)]


def resolve_classes(specs: Sequence[str], names: Sequence[str]) -> list[int]:
    """The class indices that ``specs`` ask for, each a name (exact first, then ignoring
    case, then with underscores read as spaces) or an index; repeats are dropped, the order
    is kept. Names win over indices, so a labels file that names a class "3" means it."""
    exact: dict[str, list[int]] = {}
    folded: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        exact.setdefault(name, []).append(i)
        folded.setdefault(name.casefold(), []).append(i)
    chosen: list[int] = []
    for spec in specs:
        index = _resolve(spec, names, exact, folded)
        if index not in chosen:
            chosen.append(index)
    return chosen


def _resolve(
    spec: str,
    names: Sequence[str],
    exact: dict[str, list[int]],
    folded: dict[str, list[int]],
) -> int:
    key = spec.strip()
    if not key:
        raise UsageError("an empty class name", param="class")
    # "tiger_cat" is how a shell user spells "tiger cat"
    hits = (
        exact.get(key) or folded.get(key.casefold()) or folded.get(key.replace("_", " ").casefold())
    )
    if hits:
        if len(hits) > 1:
            listed = ", ".join(str(i) for i in hits)
            raise UsageError(f"{key!r} names classes {listed}; give the index", param="class")
        return hits[0]
    if re.fullmatch(r"[0-9]+", key):
        index = int(key)
        if index < len(names):
            return index
        raise UsageError(
            f"class {index} is out of range: the model's classes are 0..{len(names) - 1}",
            param="class",
        )
    near = nearest(key, names)
    hint = f"; nearest: {', '.join(repr(n) for n in near)}" if near else ""
    raise UsageError(f"unknown class {key!r}{hint}", param="class")


def nearest(key: str, names: Sequence[str], n: int = NEAREST) -> list[str]:
    """Names close to ``key``: those holding it as a word ("cat" -> "tiger cat"), then
    difflib's closest spellings; each once, ``n`` at most."""
    folded = key.casefold()
    word = re.compile(rf"\b{re.escape(folded)}\b")
    found = [name for name in names if word.search(name.casefold())]
    lowered = {name.casefold(): name for name in names}
    for close in difflib.get_close_matches(folded, list(lowered), n=n, cutoff=0.6):
        found.append(lowered[close])
    return list(dict.fromkeys(found))[:n]


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
