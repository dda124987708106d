"""Option values checked before anything heavy loads: grid, seed, device and shard syntax."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vggviz.core import values, vocabulary
from vggviz.core.errors import UsageError
from vggviz.core.inputs import parse_shard


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("4x4", (4, 4)),
        (" 2X8 ", (2, 8)),
        ("all", "all"),
        ("ALL", "all"),
        ("0001x0016", (1, 16)),
        ("4096x4096", (4096, 4096)),
    ],
)
def test_parse_grid(spec, expected) -> None:
    assert values.parse_grid(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0x0", "'0x0': expected RxC with at least 1 row and 1 column"),
        ("4x0", "'4x0': expected RxC with at least 1 row and 1 column"),
        ("4097x1", "'4097x1': expected RxC with at most 4096 rows and 4096 columns"),
        ("1x1000000000", "'1x1000000000': expected RxC with at most 4096 rows and 4096 columns"),
        ("1x" + "9" * 5000, "expected RxC with at most 4096 rows"),  # no int() of 5000 digits
        ("4", "'4': expected RxC (like 4x4 or 8x8) or all"),
        ("-1x4", "expected RxC (like 4x4 or 8x8) or all"),
        ("4x4x4", "expected RxC (like 4x4 or 8x8) or all"),
        ("", "'': expected RxC"),
    ],
)
def test_parse_grid_refuses(spec, message) -> None:
    with pytest.raises(UsageError) as err:
        values.parse_grid(spec)
    assert message in str(err.value)
    assert err.value.param == "grid"
    assert "--" not in str(err.value)  # the command line adds its own flag name
    assert len(str(err.value)) < 120  # a 5000-digit value is not echoed whole


def test_seed_range_is_torchs() -> None:
    state = torch.random.get_rng_state()
    for seed in (0, 1, values.SEED_MAX, values.SEED_MIN, -1):
        assert values.check_seed(seed) == seed
        torch.manual_seed(seed)  # the same values torch accepts
    for seed in (values.SEED_MAX + 1, values.SEED_MIN - 1, 99999999999999999999999):
        with pytest.raises((RuntimeError, ValueError)):  # RuntimeError in older torch
            torch.manual_seed(seed)  # ... and the same it refuses
        with pytest.raises(UsageError, match=f"^{str(seed)[:20]}.*: a seed must be between") as err:
            values.check_seed(seed)
        assert err.value.param == "seed"
    torch.random.set_rng_state(state)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("auto", "auto"),
        ("CPU", "cpu"),
        (" cuda ", "cuda"),
        ("cuda:0", "cuda:0"),
        ("Cuda:01", "cuda:1"),
    ],
)
def test_parse_device(spec, expected) -> None:
    assert values.parse_device(spec) == expected


@pytest.mark.parametrize("spec", ["tpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "", "cuda:1234567"])
def test_parse_device_refuses(spec) -> None:
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N$") as err:
        values.parse_device(spec)
    assert err.value.param == "device"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1/1000001", "shard count N must be at most 1000000; got '1/1000001'"),
        ("1/" + "9" * 240, "shard count N must be at most 1000000; got '1/9999999999999999"),
        ("9" * 240 + "/4", "shard number K must be between 1 and N (4); got '99999"),
    ],
)
def test_shard_counts_are_bounded(text, message) -> None:
    with pytest.raises(UsageError) as err:
        parse_shard(text)
    assert str(err.value).startswith(message)
    assert len(str(err.value)) < 120
    assert err.value.param == "shard"


def test_largest_shard_count_is_accepted() -> None:
    assert parse_shard("1000000/1000000") == (1_000_000, 1_000_000)
    assert parse_shard("007/0010") == (7, 10)


NAMED_CHOICES = ("MODES", "STAGES", "SCALES", "SELECTS", "PRECISIONS", "VIEWS", "REDUCES")


def test_one_vocabulary() -> None:
    """The named choices are defined once, in core/vocabulary: the command line offers exactly
    those, and no other module defines them again or passes them on as its own."""
    import ast

    import click

    from vggviz.cli import cli
    from vggviz.model import loading

    options = {name.lower()[:-1]: name for name in NAMED_CHOICES}  # the option of each
    offered = 0
    for command in cli.commands.values():
        for param in command.params:
            if isinstance(param.type, click.Choice) and param.name in options:
                wanted = getattr(vocabulary, options[param.name])
                assert tuple(param.type.choices) == wanted, (command.name, param.name)
                offered += 1
    assert offered >= 8  # mode, stage x2, scale x2, select, precision x2, view, reduce
    package = Path(vocabulary.__file__).parents[1]
    for path in package.rglob("*.py"):
        if path.name == "vocabulary.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            bound = {t.id for t in targets if isinstance(t, ast.Name)}
            exported = set()
            if "__all__" in bound and isinstance(node.value, ast.List | ast.Tuple):
                exported = {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
            again = (bound | exported) & set(NAMED_CHOICES)
            if path.name == "loading.py":  # its PRECISIONS maps the vocabulary's names to dtypes
                again -= {"PRECISIONS"}
            assert not again, f"{path.relative_to(package)} defines {sorted(again)} again"
        assert "re-exported" not in path.read_text(encoding="utf-8"), path
    assert tuple(loading.PRECISIONS) == vocabulary.PRECISIONS
    assert loading.PRECISIONS["bf16"] is torch.bfloat16
    assert set(vocabulary.STYLE_DEFAULTS) == set(vocabulary.MODES)
    for style in vocabulary.STYLE_DEFAULTS.values():
        assert style["select"] in vocabulary.SELECTS and style["scale"] in vocabulary.SCALES
    assert vocabulary.STYLE_DEFAULTS["chain"] == {"select": "first", "cmap": "gray", "scale": "map"}


def test_library_messages_never_spell_a_flag() -> None:
    """A library error names its option in ``param``; the command line spells it. So no
    message raised below cli/ holds a ``--flag``."""
    import ast
    import re

    package = Path(vocabulary.__file__).parents[1]
    skipped = {package / "cli"}
    flags = re.compile(r"(?<![\w-])--[a-z]")
    found = []
    for path in sorted(package.rglob("*.py")):
        if any(path == s or s in path.parents for s in skipped):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            texts = [p.value for p in ast.walk(node.exc) if isinstance(p, ast.Constant)]
            found += [
                f"{path.relative_to(package)}:{node.lineno}: {text}"
                for text in texts
                if isinstance(text, str) and flags.search(text)
            ]
    assert not found, "\n".join(found)


def test_top_options_name_their_option_in_param() -> None:
    from vggviz.top.request import TopOptions

    for options, param in [
        (TopOptions(reduce="median"), "reduce"),
        (TopOptions(k=0), "k"),
        (TopOptions(batch_size=0), "batch_size"),
        (TopOptions(checkpoint_every=0), "checkpoint_every"),
    ]:
        with pytest.raises(UsageError) as err:
            options.check()
        assert err.value.param == param and "--" not in str(err.value)


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
