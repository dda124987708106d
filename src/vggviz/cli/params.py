"""Option declarations shared by the commands, and their callbacks.

Each option is declared once here; a callback turns a library check's UsageError into click's
BadParameter, which names the option (exit 2). Library messages never spell a flag: the error's
``param`` names the option, and :func:`flag` spells it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vggviz.core import values as checks
from vggviz.core import vocabulary
from vggviz.core.errors import UsageError
from vggviz.core.vocabulary import ARCHS, ModelSpec

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# a library error's ``param`` (the Python name of an option) -> its command-line spelling
_SPELLING = {"output_dir": "-o/--output-dir", "k": "-k/--top", "layers": "--layers"}


def flag(param: str) -> str:
    """The command-line spelling of the option a library error names (``shard`` -> --shard)."""
    return _SPELLING.get(param, "--" + param.replace("_", "-"))


def checked(check: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback from a library check: its UsageError becomes click's BadParameter,
    which names the option (exit 2)."""

    def callback(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except UsageError as err:  # spelled as the library's errors are: '-o/--output-dir'
            hint = f"'{flag(param.name)}'" if param.name else None
            raise click.BadParameter(str(err), param_hint=hint) from None

    return callback


def _grid(spec: str) -> str:
    checks.parse_grid(spec)
    return spec.strip().lower()


def _shard(text: str) -> str:
    checks.parse_shard(text)
    return text


WEIGHTS_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".safetensors")


def check_weights(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """imagenet, random, or a weights file (a missing one is the loader's to report)."""
    if value is None or value in ("imagenet", "random"):
        return value
    if Path(value).suffix.lower() in WEIGHTS_SUFFIXES or Path(value).exists():
        return value
    raise click.BadParameter(
        f"{value!r}: expected imagenet, random or a weights file "
        "(.pth, .pt, .pth.tar, .ckpt, .bin, .safetensors)"
    )


def stacked(options: list[Decorator], func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` under every option decorator, listed in the order --help shows them."""
    for option in reversed(options):
        func = option(func)
    return func


arch_option = click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default="vgg16_bn",
    show_default=True,
    help="torchvision VGG architecture.",
)

model_arch_option = click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default=None,
    help="torchvision VGG architecture. [default: the weights file's own, found from its "
    "tensors; vgg16_bn for imagenet and random]",
)

trust_option = click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Also load weights files that run code when loaded (a model saved whole, "
    "TorchScript): only for files you made.",
)

output_dir_option = click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False),  # a str: '' (an unset variable) must not become '.'
    default="outputs",
    show_default=True,
    callback=checked(checks.check_output_dir),
    help="Folder for the pictures (created if missing).",
)

quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar or summary on stderr."
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per input on stdout (JSON Lines)."
)


def shard_option(help: str) -> Decorator:
    """--shard K/N, with the command's own description of what a part does."""
    return click.option("--shard", default=None, metavar="K/N", callback=checked(_shard), help=help)


def cmap_option(default: str | None, help: str) -> Decorator:
    """--cmap; the name is checked against matplotlib's maps when the command runs."""
    return click.option("--cmap", default=default, show_default=default is not None, help=help)


grid_callback = checked(_grid)


def stage_choice(help: str) -> Decorator:
    """--stage (conv, bn or relu), with the command's own words for what it picks."""
    return click.option(
        "--stage",
        type=click.Choice(vocabulary.STAGES),
        default="relu",
        show_default=True,
        help=help,
    )


stage_option = stage_choice("Network mode: take each map after the conv, its BN or its ReLU.")

size_option = click.option(
    "--size",
    type=click.IntRange(32, 4096),
    default=224,
    show_default=True,
    help="Resize so the shorter side is this many pixels (aspect kept).",
)

normalize_option = click.option(
    "--normalize/--no-normalize",
    default=True,
    show_default=True,
    help="ImageNet mean/std normalisation (--no-normalize: plain [0, 1], as the tutorial).",
)

batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Images of equal size sent through the network together.",
)


def input_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--stage, --size, --normalize, --layers, --batch-size: how images meet the network, for
    every command that runs it over images."""
    layers = click.option(
        "--layers",
        "layer_spec",
        default="all",
        show_default=True,
        help="Which conv layers: all, or e.g. conv1,conv5-conv7.",
    )
    return stacked([stage_option, size_option, normalize_option, layers, batch_size_option], func)


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--arch, --weights, --trust-checkpoint, --seed, --device, --precision: shared by every
    model command, which gets them as one ``model`` (a ModelSpec)."""

    @functools.wraps(func)
    def with_model(
        *args: Any, arch, weights, trust_checkpoint, seed, device, precision, **kwargs: Any
    ) -> Any:
        spec = ModelSpec(arch, weights, seed, device, precision, trust_checkpoint)
        return func(*args, model=spec, **kwargs)

    options = [
        model_arch_option,
        click.option(
            "--weights",
            default="imagenet",
            show_default=True,
            callback=check_weights,
            help="imagenet (torchvision's cache, downloaded if missing), random, or your "
            "own weights file: a state dict or training checkpoint (.pth, .pt, .pth.tar, "
            ".ckpt, .bin) or .safetensors, with any head.",
        ),
        trust_option,
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            callback=checked(checks.check_seed),
            help="Seed for --weights random: torch.manual_seed(N) before building.",
        ),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            callback=checked(checks.parse_device),
            help="auto (CUDA when available), cpu, cuda or cuda:N.",
        ),
        click.option(
            "--precision",
            type=click.Choice(vocabulary.PRECISIONS),
            default="fp32",
            show_default=True,
            help="Arithmetic of the forward pass.",
        ),
    ]
    return stacked(options, with_model)
