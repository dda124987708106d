"""The command line: parse options, call the library, map its errors to exit codes.

torch is imported only inside commands that run a model, so ``--help`` and usage errors
answer at once.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vggviz import __version__
from vggviz.core import values as checks
from vggviz.core import vocabulary
from vggviz.core.errors import UsageError, VggvizError
from vggviz.core.vocabulary import ARCHS, ModelSpec

OK, FAILED, USAGE, INTERRUPTED, PIPE_CLOSED, TERMINATED = 0, 1, 2, 130, 141, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit): stop as cleanly as for Ctrl-C."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated


def _checked(check: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback from a library check: its UsageError becomes click's BadParameter,
    which names the option (exit 2)."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except UsageError as err:
            raise click.BadParameter(str(err)) from None

    return callback


def _grid(spec: str) -> str:
    checks.parse_grid(spec)
    return spec.strip().lower()


WEIGHTS_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".safetensors")


def _check_weights(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if value in ("imagenet", "random") or Path(value).suffix.lower() in WEIGHTS_SUFFIXES:
        return value
    if Path(value).exists():
        return value
    raise click.BadParameter(
        f"{value!r}: expected imagenet, random or a weights file "
        "(.pth, .pt, .pth.tar, .ckpt, .bin, .safetensors)"
    )


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
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("outputs"),
    show_default=True,
    help="Folder for the pictures (created if missing).",
)


def _stacked(options: list[Callable[[Any], Any]], func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` under every option decorator, listed in the order --help shows them."""
    for option in reversed(options):
        func = option(func)
    return func


def input_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--stage, --size, --normalize, --layers, --batch-size: how images meet the network, for
    every command that runs it over images."""
    options = [
        click.option(
            "--stage",
            type=click.Choice(vocabulary.STAGES),
            default="relu",
            show_default=True,
            help="Network mode: take each map after the conv, its BN or its ReLU.",
        ),
        click.option(
            "--size",
            type=click.IntRange(32, 4096),
            default=224,
            show_default=True,
            help="Resize so the shorter side is this many pixels (aspect kept).",
        ),
        click.option(
            "--normalize/--no-normalize",
            default=True,
            show_default=True,
            help="ImageNet mean/std normalisation (--no-normalize: plain [0, 1], as the tutorial).",
        ),
        click.option(
            "--layers",
            "layer_spec",
            default="all",
            show_default=True,
            help="Which conv layers: all, or e.g. conv1,conv5-conv7.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1, 256),
            default=1,
            show_default=True,
            help="Images of equal size sent through the network together.",
        ),
    ]
    return _stacked(options, func)


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--arch, --weights, --trust-checkpoint, --seed, --device, --precision: shared by every
    model command."""
    options = [
        model_arch_option,
        click.option(
            "--weights",
            default="imagenet",
            show_default=True,
            callback=_check_weights,
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
            callback=_checked(checks.check_seed),
            help="Seed for --weights random: torch.manual_seed(N) before building.",
        ),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            callback=_checked(checks.parse_device),
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
    return _stacked(options, func)


def _load(spec: ModelSpec):
    from vggviz.model.loading import load

    loaded, note = load(spec)
    if note:
        click.echo(f"vggviz: {note}", err=True)
    return loaded


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Library errors become one-line messages: usage problems exit 2, the rest 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            if err.param:
                raise click.BadParameter(str(err), param_hint=f"'--{err.param}'") from None
            raise click.UsageError(str(err)) from None
        except VggvizError as err:
            spelled = getattr(err, "spelled", None)
            if spelled is not None:  # names another option as the way out: spell it
                raise click.ClickException(spelled(_flag)) from None
            prefix = f"--{err.param} " if err.param else ""
            raise click.ClickException(prefix + str(err)) from None

    return wrapper


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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
@model_arch_option
@click.option(
    "--weights",
    default=None,
    callback=lambda ctx, param, value: None if value is None else _check_weights(ctx, param, value),
    help="A weights file (or imagenet, random) to report on: its form, architecture, head, "
    "classes and what was left out.",
)
@trust_option
@click.option(
    "--size",
    type=click.IntRange(32, 4096),
    default=224,
    show_default=True,
    help="Input height and width used for the output shapes.",
)
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object on stdout.")
@handle_errors
def info(
    arch: str | None, weights: str | None, trust_checkpoint: bool, size: int, as_json: bool
) -> None:
    """Table of every conv layer: alias, module, channels, kernel, output shape, parameters,
    and what would still learn with the feature extractor frozen. With --weights, first what
    the file holds: its form, architecture, head, classes and what was left out.

    \b
    Example:
        vggviz info --arch vgg19_bn --size 320
        vggviz info --weights my_vgg16_5class.pth
        vggviz info --weights checkpoint.ckpt --json | jq .classes
    """
    from vggviz.model.info import describe_weights, format_weights, weights_json

    report = describe_weights(weights or "imagenet", arch, size=size, trust=trust_checkpoint)
    if as_json:
        click.echo(records_dumps(weights_json(report)))
    elif weights is None:
        from vggviz.model.info import format_info

        click.echo(format_info(report.model))
    else:
        click.echo(format_weights(report))


@cli.command()
@model_options
@click.option(
    "--layer", default="conv1", show_default=True, help="Which conv layer: conv3, features.7 or 3."
)
@click.option(
    "--view",
    type=click.Choice(vocabulary.VIEWS),
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
    type=click.Choice(vocabulary.SCALES),
    default="map",
    show_default=True,
    help="map: each kernel on its own scale; layer: one scale for all.",
)
@output_dir_option
@handle_errors
def filters(
    arch,
    weights,
    trust_checkpoint,
    seed,
    device,
    precision,
    layer,
    view,
    channel,
    cmap,
    scale,
    output_dir,
) -> None:
    """Draw a conv layer's kernels in a grid (conv1: 64 kernels, 8x8).

    \b
    Example:
        vggviz filters                       # conv1 of VGG16-BN, RGB
        vggviz filters --view channel        # the tutorial's grey picture
        vggviz filters --layer conv5 --cmap RdBu_r --scale layer
    """
    from vggviz.features.filters import draw_filters
    from vggviz.model.layers import select_layers

    _check_cmap(cmap)
    loaded = _load(ModelSpec(arch, weights, seed, device, precision, trust_checkpoint))
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
    from vggviz.core.drawing import check_colormap

    try:
        check_colormap(name)
    except ValueError as err:
        raise click.BadParameter(
            f"{err}; see matplotlib's colormap list", param_hint="--cmap"
        ) from None


@cli.command()
@click.argument("images", nargs=-1, required=True)
@model_options
@input_options
@click.option(
    "--mode",
    type=click.Choice(vocabulary.MODES),
    default="network",
    show_default=True,
    help="network: the network's real activations; chain: the tutorial's conv-only "
    "chain (no BatchNorm, ReLU or pooling).",
)
@click.option(
    "--select",
    type=click.Choice(vocabulary.SELECTS),
    default=None,
    help="Channels drawn: top (largest mean activation) or first. "
    "[default: top; chain mode: first]",
)
@click.option(
    "--grid",
    default="4x4",
    show_default=True,
    callback=_checked(_grid),
    help="Tiles per picture: RxC or all (clamped to the layer's channels).",
)
@click.option(
    "--cmap",
    default=None,
    help="Any matplotlib colour map, e.g. gray, viridis. [default: inferno; chain: gray]",
)
@click.option(
    "--scale",
    type=click.Choice(vocabulary.SCALES),
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
    "--skip-existing",
    is_flag=True,
    help="Skip images finished earlier from the same file with the same options.",
)
@click.option(
    "--shard",
    default=None,
    metavar="K/N",
    callback=_checked(lambda text: (checks.parse_shard(text), text)[1]),
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
    trust_checkpoint,
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

    IMAGES are files or folders (walked recursively); - reads paths from stdin (one per line,
    or NUL-separated as from find -print0). Each image gets a folder in the output directory
    (cat.jpg -> cat_jpg/) holding 01-conv1.png ... 13-conv13.png, an overview.png and
    record.json (written last); the run writes manifest.jsonl and index.html.

    \b
    Example:
        vggviz features examples/photos/cat.jpg
        vggviz features photos/ --json --quiet | jq .status
        find photos -name '*.jpg' -print0 | vggviz features - --shard 1/4 --skip-existing
    """
    from vggviz.features import job as job

    request = job.Request(
        images=images,
        out_dir=output_dir,
        model=ModelSpec(arch, weights, seed, device, precision, trust_checkpoint),
        mode=mode,
        stage=stage,
        size=size,
        normalize=normalize,
        layers=layer_spec,
        select=select,
        grid=grid,
        cmap=cmap,
        scale=scale,
        overlay=overlay,
        overview=overview,
        filters=filters,
        save_raw=save_raw,
        batch_size=batch_size,
        skip_existing=skip_existing,
        shard=shard,
    )
    sys.exit(_run_features(request, as_json, quiet))


def _note(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(f"vggviz: {message}", err=True)


class _Signals:
    """SIGINT and SIGTERM become a request to stop, polled by the job between steps, once the
    job is running; before that (imports, model loading) they interrupt as usual."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.running = False
        self.pipe_closed = False

    def __enter__(self) -> _Signals:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, old in self._old.items():
            # after a stop was asked for, more Ctrl-C while the run winds down change nothing
            signal.signal(sig, signal.SIG_IGN if self.received else old)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = self.received or signum
        if not self.running:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    def stop(self) -> bool:
        return self.received is not None or self.pipe_closed


def _run_features(request, as_json: bool, quiet: bool) -> int:
    from vggviz.features import job as job

    show_bar = not quiet and sys.stderr.isatty()
    started = time.perf_counter()
    state: dict[str, Any] = {"bar": None, "done": 0}

    def on_start(total: int) -> None:
        signals.running = True
        if show_bar and total > 1:
            state["bar"] = click.progressbar(
                length=total,
                label="images",
                file=sys.stderr,
                show_eta=True,
                show_percent=False,
                show_pos=True,
                item_show_func=lambda _: _rate(state["done"], started),
            )

    def on_record(record) -> None:
        state["done"] += 1
        bar = state["bar"]
        if record["status"] == "error":
            if bar:
                click.echo("", err=True)  # keep the message off the bar's line
            click.echo(f"error: {_shown(record['error'])}", err=True)
        if as_json and not signals.pipe_closed:
            _emit(records_dumps(record), signals)
        if bar:
            bar.update(1)

    hooks = job.Hooks(
        on_record=on_record,
        on_start=on_start,
        on_note=lambda text: _note(quiet, text),
        should_stop=lambda: signals.stop(),
    )
    with _Signals() as signals:
        try:
            summary = job.run(request, hooks)
        finally:
            if state["bar"] is not None:
                state["bar"].render_finish()
    for problem in summary.problems:  # folders that could not be listed
        click.echo(f"error: {_shown(problem)}", err=True)
    failed = summary.error + len(summary.problems)
    if signals.pipe_closed:
        return PIPE_CLOSED  # stdout's reader is gone: stop quietly, as cat does
    if summary.disk_full:
        click.echo(
            f"error: stopped after {summary.finished} of {summary.total} image(s), "
            f"{summary.ok} done: {_shown(summary.disk_full)}",
            err=True,
        )
        return FAILED
    if not summary.complete:
        click.echo(
            f"interrupted: {summary.finished} of {summary.total} image(s) finished", err=True
        )
        return TERMINATED if signals.received == signal.SIGTERM else INTERRUPTED
    if not quiet:
        where = summary.index or request.out_dir
        click.echo(
            f"{summary.line()} · pictures in {_shown(str(request.out_dir))}{os.sep} · "
            f"open {_shown(str(where))}",
            err=True,
        )
    elif failed:
        click.echo(summary.line(), err=True)
    return FAILED if failed else OK


def records_dumps(record: Any) -> str:
    from vggviz.core.folders import dumps

    return dumps(record)


def _shown(text: str) -> str:
    from vggviz.core.folders import display

    return display(text)


def _emit(line: str, signals: _Signals) -> None:
    """One line on stdout; a reader that went away ends the run quietly."""
    try:
        click.echo(line)
    except BrokenPipeError:
        signals.pipe_closed = True
        _silence_stdout()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that nothing more (not even the final flush) fails."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


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
    from vggviz.model.loading import ARCHS as archs
    from vggviz.model.loading import imagenet_cache_path

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
    from vggviz.model.loading import download_imagenet

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
    from vggviz.model.loading import import_weights

    arch, path = import_weights(file)
    click.echo(f"{arch}: {path}")


@cli.command()
@click.argument("images", nargs=-1, required=True)
@model_options
@input_options
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
    type=click.Choice(vocabulary.REDUCES),
    default="max",
    show_default=True,
    help="A map's value: max (its strongest unit, which is cropped) or mean (cropped at its "
    "strongest unit too).",
)
@click.option("--highlight", is_flag=True, help="Draw the map, upsampled, over each crop.")
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
    callback=_checked(lambda text: (checks.parse_shard(text), text)[1]),
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
    trust_checkpoint,
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
    from vggviz.top import job as job

    request = job.TopRequest(
        images=images,
        out_dir=output_dir,
        model=ModelSpec(arch, weights, seed, device, precision, trust_checkpoint),
        layers=layer_spec,
        options=job.TopOptions(
            stage=stage,
            reduce=reduce,
            k=k,
            size=size,
            normalize=normalize,
            highlight=highlight,
            batch_size=batch_size,
            checkpoint_every=checkpoint_every,
        ),
        shard=shard,
        merge=merge,
    )
    events = _TopProgress(quiet)
    try:
        with events:
            result = job.run(request, events)
    except KeyboardInterrupt as stop:
        click.echo("\ninterrupted: run the same command again to resume the scan", err=True)
        sys.exit(TERMINATED if isinstance(stop, Terminated) else INTERRUPTED)
    failed = len(result.failed)
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
    141 stdout closed early, 143 SIGTERM."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Before torch loads OpenMP: its idle threads sleep instead of spinning, which on a busy
    # 2-core machine halved the CPU time of a folder run (the drawing threads need the cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        code = cli.main(prog_name="vggviz", standalone_mode=False)
    except SystemExit as done:  # commands that set their own exit code
        code = done.code
    except click.ClickException as err:
        err.show()
        code = err.exit_code
    except (click.Abort, KeyboardInterrupt) as stop:
        click.echo("interrupted", err=True)
        code = TERMINATED if isinstance(stop.__cause__ or stop, Terminated) else INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        code = PIPE_CLOSED  # vggviz ... | head: end quietly, as cat does
    except OSError as err:  # stdout on a full device, say
        click.echo(f"Error: cannot write to standard output ({_reason(err)})", err=True)
        code = FAILED
    code = code if isinstance(code, int) else OK
    code = _flush(code)
    if "torch" in sys.modules:
        _exit_now(code)
    sys.exit(code)


def _reason(err: OSError) -> str:
    from vggviz.core.errors import os_reason

    return os_reason(err)


def _flush(code: int) -> int:
    """Flush stdout now, where its errors can still be told apart and reported."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return code or PIPE_CLOSED
    except OSError as err:
        _silence_stdout()
        click.echo(f"Error: cannot write to standard output ({_reason(err)})", err=True)
        return code or FAILED
    return code


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown, which takes 1.5-2 s once torch is loaded.

    Safe here: every output file is closed and renamed, and every worker thread joined,
    before a command returns. What is left: the exit handlers (a few ms; matplotlib's
    removes the temporary config folder it makes where $HOME is not writable) and the
    standard streams.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):  # exiting already: nothing left to stop
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
