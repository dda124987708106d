"""The command line: parse options, call the library, map its errors to exit codes.

torch is imported only inside commands that run a model, so ``--help`` and usage errors
answer at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vggviz import __version__
from vggviz.catalog import ARCHS
from vggviz.errors import UsageError, VggvizError

OK, FAILED, USAGE, INTERRUPTED, TERMINATED = 0, 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit): stop as cleanly as for Ctrl-C."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated


DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
GRID_RE = re.compile(r"^(all|[1-9]\d*x[1-9]\d*)$")

# Defaults that depend on --mode: chain mode reproduces the tutorial's picture exactly
# (first 16 channels, grey, each map stretched on its own); network mode shows the most
# active channels on one honest scale per layer.
STYLE_DEFAULTS = {
    "network": {"select": "top", "cmap": "inferno", "scale": "layer"},
    "chain": {"select": "first", "cmap": "gray", "scale": "map"},
}


def _check_device(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not DEVICE_RE.match(value.strip().lower()):
        raise click.BadParameter(f"{value!r}: expected auto, cpu, cuda or cuda:N")
    return value.strip().lower()


def _check_weights(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if value in ("imagenet", "random") or Path(value).suffix.lower() in (".pth", ".pt"):
        return value
    if Path(value).exists():
        return value
    raise click.BadParameter(f"{value!r}: expected imagenet, random or a .pth/.pt file")


arch_option = click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default="vgg16_bn",
    show_default=True,
    help="torchvision VGG architecture.",
)


output_dir_option = click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("outputs"),
    show_default=True,
    help="Folder for the pictures (created if missing).",
)


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--arch, --weights, --seed, --device, --precision: shared by every model command."""
    options = [
        arch_option,
        click.option(
            "--weights",
            default="imagenet",
            show_default=True,
            callback=_check_weights,
            help="imagenet (torchvision's cache, downloaded if missing), random, "
            "or a state-dict file (.pth/.pt).",
        ),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Seed for --weights random: torch.manual_seed(N) before building.",
        ),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            callback=_check_device,
            help="auto (CUDA when available), cpu, cuda or cuda:N.",
        ),
        click.option(
            "--precision",
            type=click.Choice(["fp32", "bf16"]),
            default="fp32",
            show_default=True,
            help="Arithmetic of the forward pass.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(arch: str, weights: str, seed: int, device: str, precision: str):
    from vggviz.models import bf16_is_native, load_model

    loaded = load_model(arch, weights, seed=seed, device=device, precision=precision)
    if precision == "bf16" and not bf16_is_native(loaded.device):
        click.echo(
            f"vggviz: note: {loaded.device} has no bfloat16 instructions (AVX512-BF16 or AMX); "
            "--precision bf16 will be far slower than fp32 here",
            err=True,
        )
    return loaded


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Library errors become one-line messages: usage problems exit 2, the rest 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            raise click.UsageError(str(err)) from None
        except VggvizError as err:
            raise click.ClickException(str(err)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vggviz")
def cli() -> None:
    """See what a VGG network does: its first-layer filters and what each conv layer makes
    of a photo, as PNG pictures.

    \b
    Example:
        vggviz features photos/ -o outputs/
        vggviz filters
        vggviz info
    """


@cli.command()
@arch_option
@click.option(
    "--size",
    type=click.IntRange(32, 4096),
    default=224,
    show_default=True,
    help="Input height and width used for the output shapes.",
)
@handle_errors
def info(arch: str, size: int) -> None:
    """Table of every conv layer: alias, module, channels, kernel, output shape, parameters,
    and what would still learn with the feature extractor frozen.

    \b
    Example:
        vggviz info --arch vgg19_bn --size 320
    """
    from vggviz.info import describe, format_info

    click.echo(format_info(describe(arch, size, size)))


@cli.command()
@model_options
@click.option(
    "--layer", default="conv1", show_default=True, help="Which conv layer: conv3, features.7 or 3."
)
@click.option(
    "--view",
    type=click.Choice(["rgb", "channel", "mean"]),
    default=None,
    help="rgb: each 3-channel kernel in colour (default for conv1); channel: one "
    "input channel, the tutorial's grey picture; mean: mean over input channels "
    "(default for deeper layers).",
)
@click.option(
    "--channel",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Input channel drawn by --view channel.",
)
@click.option("--cmap", default="gray", show_default=True, help="Colour map for channel/mean.")
@click.option(
    "--scale",
    type=click.Choice(["map", "layer"]),
    default="map",
    show_default=True,
    help="map: each kernel on its own scale; layer: one scale for all.",
)
@output_dir_option
@handle_errors
def filters(
    arch, weights, seed, device, precision, layer, view, channel, cmap, scale, output_dir
) -> None:
    """Draw a conv layer's kernels in a grid (conv1: 64 kernels, 8x8).

    \b
    Example:
        vggviz filters                       # conv1 of VGG16-BN, RGB
        vggviz filters --view channel        # the tutorial's grey picture
        vggviz filters --layer conv5 --cmap RdBu_r --scale layer
    """
    from vggviz.filters import draw_filters
    from vggviz.layers import select_layers

    _check_cmap(cmap)
    loaded = _load(arch, weights, seed, device, precision)
    picked = select_layers(loaded.layers, layer)
    if len(picked) != 1:
        raise click.BadParameter(
            f"{layer!r} names {len(picked)} layers; name one", param_hint="--layer"
        )
    try:
        path = draw_filters(
            loaded, picked[0], output_dir, view=view, channel=channel, cmap=cmap, scale=scale
        )
    except OSError as err:
        raise click.ClickException(f"{output_dir}: cannot write ({err.strerror or err})") from None
    click.echo(str(path))


def _check_cmap(name: str) -> None:
    from vggviz.render import check_colormap

    try:
        check_colormap(name)
    except ValueError as err:
        raise click.BadParameter(
            f"{err}; see matplotlib's colormap list", param_hint="--cmap"
        ) from None


@cli.command()
@click.argument("images", nargs=-1, required=True)
@model_options
@click.option(
    "--mode",
    type=click.Choice(["network", "chain"]),
    default="network",
    show_default=True,
    help="network: the network's real activations; chain: the tutorial's conv-only "
    "chain (no BatchNorm, ReLU or pooling).",
)
@click.option(
    "--stage",
    type=click.Choice(["conv", "bn", "relu"]),
    default="relu",
    show_default=True,
    help="Network mode: take each map after the conv, BN or ReLU.",
)
@click.option(
    "--size",
    type=click.IntRange(32, 4096),
    default=224,
    show_default=True,
    help="Resize so the shorter side is this many pixels (aspect kept).",
)
@click.option(
    "--normalize/--no-normalize",
    default=True,
    show_default=True,
    help="ImageNet mean/std normalisation (--no-normalize: plain [0, 1], as the tutorial).",
)
@click.option(
    "--layers",
    "layer_spec",
    default="all",
    show_default=True,
    help="Which conv layers: all, or e.g. conv1,conv5-conv7.",
)
@click.option(
    "--select",
    type=click.Choice(["top", "first"]),
    default=None,
    help="Channels drawn: top (largest mean activation) or first. "
    "[default: top; chain mode: first]",
)
@click.option("--grid", default="4x4", show_default=True, help="Tiles per picture: RxC or all.")
@click.option(
    "--cmap",
    default=None,
    help="Any matplotlib colour map, e.g. gray, viridis. [default: inferno; chain: gray]",
)
@click.option(
    "--scale",
    type=click.Choice(["layer", "map"]),
    default=None,
    help="layer: one robust scale shared by the layer's maps, with a colour bar; map: each "
    "map stretched on its own. [default: layer; chain: map]",
)
@click.option("--overlay", is_flag=True, help="Blend each map, upsampled, over the photo.")
@click.option(
    "--overview/--no-overview",
    default=True,
    show_default=True,
    help="Also draw overview.png: every layer's strongest maps on one page.",
)
@click.option(
    "--filters/--no-filters",
    default=True,
    show_default=True,
    help="Also draw the model's conv1 filters once per run, shown atop index.html.",
)
@click.option(
    "--save-raw",
    is_flag=True,
    help="Also write maps.npz: every layer's (C, H, W) float32 map, as drawn.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Images of equal size sent through the network together.",
)
@click.option("--skip-existing", is_flag=True, help="Skip images whose outputs are all present.")
@click.option(
    "--shard",
    default=None,
    metavar="K/N",
    help="Do only the K-th of N deterministic parts of the inputs.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per input on stdout (JSON Lines)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary on stderr.")
@output_dir_option
@handle_errors
def features(
    images,
    arch,
    weights,
    seed,
    device,
    precision,
    mode,
    stage,
    size,
    normalize,
    layer_spec,
    select,
    grid,
    cmap,
    scale,
    overlay,
    overview,
    filters,
    save_raw,
    batch_size,
    skip_existing,
    shard,
    as_json,
    quiet,
    output_dir,
) -> None:
    """Draw, for each image and each conv layer, a grid of the layer's feature maps.

    IMAGES are files or folders (walked recursively); - reads paths from stdin. Each image
    gets a folder in the output directory holding 01-conv1.png ... 13-conv13.png, an
    overview.png and record.json; the run writes manifest.jsonl and index.html.

    \b
    Example:
        vggviz features examples/photos/cat.jpg
        vggviz features photos/ --json --quiet | jq .status
        find photos -name '*.jpg' | vggviz features - --shard 1/4 --skip-existing
    """
    if not GRID_RE.match(grid.strip().lower()):
        raise click.BadParameter(f"{grid!r}: expected RxC (like 4x4) or all", param_hint="--grid")
    defaults = STYLE_DEFAULTS[mode]
    cmap = cmap or defaults["cmap"]
    _check_cmap(cmap)
    from vggviz import inputs

    shard_kn = inputs.parse_shard(shard) if shard else None
    found = inputs.discover(images)
    if not found.items and not found.problems:
        passed = f" (passed over {found.hidden} hidden and {found.not_images} non-image file(s))"
        raise click.ClickException(f"no images found in {' '.join(images)}" + passed)
    folders = inputs.output_dirs(found.items, output_dir)
    work = list(zip(found.items, folders, strict=True))
    if shard_kn:
        mine = {id(item) for item in inputs.shard(found.items, *shard_kn)}
        work = [(item, folder) for item, folder in work if id(item) in mine]
    if found.hidden or found.not_images:
        _note(quiet, f"passed over {found.hidden} hidden and {found.not_images} non-image file(s)")

    from vggviz import pictures, pipeline
    from vggviz.layers import select_layers

    loaded = _load(arch, weights, seed, device, precision)
    layers = select_layers(loaded.layers, layer_spec)
    if mode == "network":
        for layer in layers:
            layer.stage_module(stage)  # refuse --stage bn on a model without BatchNorm now
    job = pipeline.Job(
        mode=mode,
        stage=stage,
        size=size,
        normalize=normalize,
        style=pictures.Style(
            select=select or defaults["select"],
            grid=grid.strip().lower(),
            cmap=cmap,
            scale=scale or defaults["scale"],
            overlay=overlay,
        ),
        save_raw=save_raw,
        overview=overview,
        batch_size=batch_size,
        skip_existing=skip_existing,
        filters=filters,
    )
    run_info = {
        "arch": arch,
        "weights": loaded.weights,
        "mode": mode,
        "stage": stage if mode == "network" else "-",
        "device": str(loaded.device),
        "precision": precision,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    status = _run_features(
        loaded, layers, work, job, output_dir, shard_kn, as_json, quiet, run_info, found.problems
    )
    sys.exit(status)


def _note(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(f"vggviz: {message}", err=True)


def _run_features(
    loaded,
    layers,
    work,
    job,
    output_dir: Path,
    shard_kn,
    as_json: bool,
    quiet: bool,
    run_info: dict[str, str],
    problems,
) -> int:
    from vggviz import pipeline

    for problem in problems:  # folders that could not be listed
        click.echo(f"error: {problem}", err=True)
    show_bar = not quiet and sys.stderr.isatty() and len(work) > 1
    started = time.perf_counter()
    finished = [0]
    bar = (
        click.progressbar(
            length=len(work),
            label="images",
            file=sys.stderr,
            show_eta=True,
            show_percent=False,
            show_pos=True,
            item_show_func=lambda _: _rate(finished[0], started),
        )
        if show_bar
        else None
    )

    def on_record(record: dict[str, Any]) -> None:
        finished[0] += 1
        if record["status"] == "error":
            if bar:
                click.echo("", err=True)  # keep the message off the bar's line
            click.echo(f"error: {record['error']}", err=True)
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False))
        if bar:
            bar.update(1)

    suffix = f"-shard-{shard_kn[0]}-of-{shard_kn[1]}" if shard_kn else ""
    try:
        with bar if bar else contextlib.nullcontext():
            counts, index = pipeline.run_to_folder(
                loaded,
                layers,
                work,
                job,
                output_dir,
                run_info=run_info,
                on_record=on_record,
                suffix=suffix,
            )
    except KeyboardInterrupt as stop:
        click.echo(f"\ninterrupted: {finished[0]} of {len(work)} image(s) finished", err=True)
        return TERMINATED if isinstance(stop, Terminated) else INTERRUPTED
    failed = counts.error + len(problems)
    if not quiet:
        click.echo(
            f"{counts.summary()} · pictures in {output_dir}{os.sep} · open {index}", err=True
        )
    elif failed:
        click.echo(counts.summary(), err=True)
    return FAILED if failed else OK


def _rate(done: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    return f"{done / elapsed:.1f} img/s" if elapsed > 0 and done else ""


@cli.group(invoke_without_command=True)
@click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default=None,
    help="Only this architecture (default: all VGGs).",
)
@click.pass_context
@handle_errors
def weights(ctx: click.Context, arch: str | None) -> None:
    """Where torchvision's ImageNet weights are expected, and whether they are there.

    For offline compute nodes: download on a machine with internet, copy the file over,
    then `vggviz weights import FILE`.

    \b
    Example:
        vggviz weights
        vggviz weights download --arch vgg16_bn
        vggviz weights import vgg16_bn-6c64b313.pth
    """
    if ctx.invoked_subcommand is not None:
        return
    from vggviz.models import ARCHS as archs
    from vggviz.models import imagenet_cache_path

    missing = 0
    for name in [arch] if arch else archs:
        path = imagenet_cache_path(name)
        there = path.is_file()
        missing += not there
        click.echo(f"{name:<9} {'present' if there else 'missing'}  {path}")
    if arch and missing:
        sys.exit(FAILED)


@weights.command("download")
@arch_option
@handle_errors
def weights_download(arch: str) -> None:
    """Fetch the ImageNet weights into torchvision's cache (TORCH_HOME).

    \b
    Example:
        vggviz weights download --arch vgg16_bn
    """
    from vggviz.models import download_imagenet

    click.echo(str(download_imagenet(arch)))


@weights.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def weights_import(file: Path) -> None:
    """Check a copied checkpoint against torchvision's hash and put it in the cache.

    \b
    Example:
        vggviz weights import /mnt/usb/vgg16_bn-6c64b313.pth
    """
    from vggviz.models import import_weights

    arch, path = import_weights(file)
    click.echo(f"{arch}: {path}")


@cli.command()
@click.argument("images", nargs=-1, required=True)
@model_options
@click.option(
    "--stage",
    type=click.Choice(["conv", "bn", "relu"]),
    default="relu",
    show_default=True,
    help="Take each map after the conv, BN or ReLU.",
)
@click.option(
    "--size",
    type=click.IntRange(32, 4096),
    default=224,
    show_default=True,
    help="Resize so the shorter side is this many pixels (aspect kept).",
)
@click.option(
    "--normalize/--no-normalize",
    default=True,
    show_default=True,
    help="ImageNet mean/std normalisation (--no-normalize: plain [0, 1]).",
)
@click.option(
    "--layers",
    "layer_spec",
    default="all",
    show_default=True,
    help="Which conv layers: all, or e.g. conv1,conv5-conv7.",
)
@click.option(
    "-k",
    "--top",
    "k",
    type=click.IntRange(1, 100),
    default=9,
    show_default=True,
    help="Images kept per channel.",
)
@click.option(
    "--reduce",
    type=click.Choice(["max", "mean"]),
    default="max",
    show_default=True,
    help="A map's value: max (its strongest unit, which is cropped) or mean (cropped at its "
    "strongest unit too).",
)
@click.option("--highlight", is_flag=True, help="Draw the map, upsampled, over each crop.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Images of equal size sent through the network together.",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Inputs between two checkpoints of the scan (a killed scan resumes from the last).",
)
@click.option(
    "--shard",
    default=None,
    metavar="K/N",
    help="Scan only the K-th of N deterministic parts and leave a partial result for --merge.",
)
@click.option(
    "--merge",
    is_flag=True,
    help="Combine the partial results of all N shards in -o (same IMAGES and options), "
    "then crop and draw.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary on stderr.")
@output_dir_option
@handle_errors
def top(
    images,
    arch,
    weights,
    seed,
    device,
    precision,
    stage,
    size,
    normalize,
    layer_spec,
    k,
    reduce,
    highlight,
    batch_size,
    checkpoint_every,
    shard,
    merge,
    quiet,
    output_dir,
) -> None:
    """For every channel, the K images of a folder that excite it most, each cropped to the
    receptive field of its strongest unit.

    Writes top.json, one or more pages per layer (top-pages/), a strip per channel
    (top-strips/), the images-by-channels matrix (top-matrix/) and index.html. The scan
    checkpoints in -o and resumes when run again with the same options.

    \b
    Example:
        vggviz top photos/ --layers conv10-conv13 -o top/
        vggviz top photos/ -o top/ --shard 2/8      # one part, on one node
        vggviz top photos/ -o top/ --merge          # then all parts together
    """
    from vggviz import inputs

    shard_kn = inputs.parse_shard(shard) if shard else None
    found = inputs.discover(images)
    if not found.items and not found.problems:
        passed = f" (passed over {found.hidden} hidden and {found.not_images} non-image file(s))"
        raise click.ClickException(f"no images found in {' '.join(images)}" + passed)
    if found.hidden or found.not_images:
        _note(quiet, f"passed over {found.hidden} hidden and {found.not_images} non-image file(s)")
    for problem in found.problems:
        click.echo(f"error: {problem}", err=True)

    from vggviz.layers import select_layers
    from vggviz.top import TopOptions, run_top

    loaded = _load(arch, weights, seed, device, precision)
    options = TopOptions(
        stage=stage,
        reduce=reduce,
        k=k,
        size=size,
        normalize=normalize,
        highlight=highlight,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
    )
    events = _TopProgress(quiet)
    try:
        with events:
            result = run_top(
                loaded,
                select_layers(loaded.layers, layer_spec),
                found.items,
                options,
                output_dir,
                shard=shard_kn,
                merge=merge,
                events=events,
            )
    except KeyboardInterrupt as stop:
        click.echo("\ninterrupted: run the same command again to resume the scan", err=True)
        sys.exit(TERMINATED if isinstance(stop, Terminated) else INTERRUPTED)
    failed = len(result.failed) + len(found.problems)
    done = f"{result.scanned} scanned, {len(result.failed)} failed"
    if result.scan_dir is not None:
        summary = f"{done} · partial result in {result.scan_dir}{os.sep} (then --merge)"
    else:
        summary = f"{done} · {result.top_json}"
        summary += f" · open {result.index}" if result.index else ""
    if not quiet or failed:
        click.echo(summary, err=True)
    sys.exit(FAILED if failed else OK)


class _TopProgress:
    """The library's events on stderr: a progress bar per phase, errors and notes as lines."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.show_bar = not quiet and sys.stderr.isatty()
        self.bar: Any = None

    def __enter__(self) -> _TopProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None

    def phase(self, name: str, total: int, done: int = 0) -> None:
        self._close()
        if self.show_bar and total > done:
            label = {"crops": "crops (inputs run again)", "pictures": "pictures (channels)"}
            label = label.get(name, name)
            self.bar = click.progressbar(
                length=total, label=label, file=sys.stderr, show_eta=True, show_pos=True
            )
            self.bar.update(done)

    def advance(self, count: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def failed(self, message: str) -> None:
        if self.bar is not None:
            click.echo("", err=True)  # keep the message off the bar's line
        click.echo(f"error: {message}", err=True)

    def note(self, message: str) -> None:
        if not self.quiet:
            if self.bar is not None:
                click.echo("", err=True)
            click.echo(f"vggviz: {message}", err=True)


def main() -> None:
    """Console entry point: exit codes 0 ok, 1 failed inputs or errors, 2 usage, 130 Ctrl-C,
    143 SIGTERM."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = cli.main(prog_name="vggviz", standalone_mode=False)
    except SystemExit as done:  # commands that set their own exit code; click on EPIPE
        code = done.code
    except click.ClickException as err:
        err.show()
        code = err.exit_code
    except (click.Abort, KeyboardInterrupt) as stop:
        click.echo("interrupted", err=True)
        code = TERMINATED if isinstance(stop.__cause__ or stop, Terminated) else INTERRUPTED
    except BrokenPipeError:
        code = OK  # a closed pipe (vggviz ... | head) is not an error worth a traceback
    code = code if isinstance(code, int) else OK
    if "torch" in sys.modules:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown, which takes 1.5-2 s once torch is loaded.

    Safe here: every output file is closed and renamed, and every worker thread joined,
    before a command returns; only the standard streams still need flushing.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
