"""The commands: each turns click's values into one library call and reports its result.

torch is imported only inside commands that run a model, so ``--help`` and usage errors
answer at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vggviz import __version__
from vggviz.cli.params import (
    arch_option,
    batch_size_option,
    check_weights,
    cmap_option,
    flag,
    grid_callback,
    input_options,
    json_option,
    model_arch_option,
    model_options,
    normalize_option,
    output_dir_option,
    quiet_option,
    shard_option,
    size_option,
    stage_choice,
    trust_option,
)
from vggviz.cli.terminal import ExitCode, handle_errors, run_job, shown, stop_point
from vggviz.core import vocabulary
from vggviz.core.vocabulary import ARCHS, ModelSpec
from vggviz.explain.request import TOP_MAX

if TYPE_CHECKING:
    from vggviz.core.lifecycle import Summary


def _load(model: ModelSpec):
    from vggviz.model.loading import load

    stop_point()  # a signal while torch was imported ends the command here, never inside
    loaded, note = load(model)
    stop_point()
    if note:
        click.echo(f"vggviz: {note}", err=True)
    return loaded


def _check_cmap(name: str) -> None:
    from vggviz.core.drawing import check_colormap

    try:
        check_colormap(name)
    except ValueError as err:
        raise click.BadParameter(
            f"{err}; see matplotlib's colormap list", param_hint="--cmap"
        ) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vggviz")
def cli() -> None:
    """See what a VGG network does: its first-layer filters, what each conv layer makes of a
    photo, and what it predicts and where in the photo its evidence lies, as PNG pictures.

    \b
    Example:
        vggviz features photos/ -o outputs/
        vggviz explain photos/ --weights my_vgg.pth -o explained/
        vggviz filters
        vggviz info
    """


@cli.command()
@model_arch_option
@click.option(
    "--weights",
    default=None,
    callback=check_weights,
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
    from vggviz.core.text import dumps
    from vggviz.model.info import describe_weights, format_info, format_weights, weights_json

    stop_point()
    report = describe_weights(weights or "imagenet", arch, size=size, trust=trust_checkpoint)
    stop_point()
    if as_json:
        click.echo(dumps(weights_json(report)))
    elif weights is None:
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
@cmap_option("gray", "Colour map for channel/mean.")
@click.option(
    "--scale",
    type=click.Choice(vocabulary.SCALES),
    default="map",
    show_default=True,
    help="map: each kernel on its own scale; layer: one scale for all.",
)
@output_dir_option
@handle_errors
def filters(model, layer, view, channel, cmap, scale, output_dir) -> None:
    """Draw a conv layer's kernels in a grid (conv1: 64 kernels, 8x8).

    \b
    Example:
        vggviz filters                       # conv1 of VGG16-BN, RGB
        vggviz filters --view channel        # the tutorial's grey picture
        vggviz filters --layer conv5 --cmap RdBu_r --scale layer
    """
    from vggviz.features.pictures import draw_filters
    from vggviz.model.layers import select_layers

    _check_cmap(cmap)
    loaded = _load(model)
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
        from vggviz.core.text import write_error

        raise click.ClickException(write_error(err.filename or output_dir, err)) from None
    click.echo(str(path))


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
    callback=grid_callback,
    help="Tiles per picture: RxC or all (clamped to the layer's channels).",
)
@cmap_option(None, "Any matplotlib colour map, e.g. gray, viridis. [default: inferno; chain: gray]")
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
@shard_option("Do only the K-th of N deterministic parts of the inputs.")
@json_option
@quiet_option
@output_dir_option
@handle_errors
def features(images, model, layer_spec, as_json, quiet, output_dir, **options) -> None:
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
        images=images, out_dir=output_dir, model=model, layers=layer_spec, **options
    )
    sys.exit(run_job(job.run, request, _pictures_in(output_dir), quiet=quiet, as_json=as_json))


def _pictures_in(out_dir: Path) -> Callable[[Summary], str]:
    """The closing line of a per-image job: the counts, where the pictures are, what to open."""

    def closing(summary: Summary) -> str:
        where = summary.index or out_dir
        return (
            f"{summary.line()} · pictures in {shown(str(out_dir))}{os.sep} · "
            f"open {shown(str(where))}"
        )

    return closing


@cli.command()
@click.argument("images", nargs=-1, required=True)
@model_options
@click.option(
    "-k",
    "--top",
    "k",
    type=click.IntRange(1, TOP_MAX),
    default=3,
    show_default=True,
    help="Classes predicted per photo, best first; without --class, also the ones explained.",
)
@click.option(
    "--class",
    "classes",
    multiple=True,
    metavar="NAME|INDEX",
    help="Explain this class instead of the top K (repeatable): a name (tiger_cat or "
    "'tiger cat') or an output index.",
)
@click.option(
    "--labels",
    default=None,
    metavar="FILE",
    help="Class names, one a line in output order, over those of the checkpoint or ImageNet.",
)
@click.option(
    "--layer",
    default=None,
    help="The conv layer whose map is explained: conv13, features.40 or 13. "
    "[default: the last conv]",
)
@stage_choice("That conv layer's map after the conv, its BatchNorm or its ReLU.")
@size_option
@normalize_option
@batch_size_option
@click.option(
    "--check/--no-check",
    "deletion_check",
    default=True,
    show_default=True,
    help="The deletion check: each class's probability after blurring the 20% of the photo "
    "with the most evidence, and 20% at random (K + 1 more forward passes a photo).",
)
@click.option(
    "--save-raw",
    is_flag=True,
    help="Also write cams.npz: each explained class's evidence (class_<index>), float32, at "
    "the layer's resolution, before upsampling or scaling.",
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Skip photos finished earlier from the same file with the same options.",
)
@shard_option("Do only the K-th of N deterministic parts of the inputs.")
@json_option
@quiet_option
@output_dir_option
@handle_errors
def explain(images, model, k, classes, as_json, quiet, output_dir, **options) -> None:
    """What the model predicts for each photo, and where in the photo its evidence lies
    (Grad-CAM at the last conv), checked by blurring that evidence.

    IMAGES are files or folders (walked recursively); - reads paths from stdin. Each photo
    gets a folder in the output directory (cat.jpg -> cat_jpg/) holding explain.png (the
    photo, its top predictions, one panel of evidence per class with its deletion check) and
    record.json (written last); the run writes manifest.jsonl and index.html.

    \b
    Example:
        vggviz explain examples/photos/cat.jpg --weights random
        vggviz explain photos/ --weights my_vgg.pth --labels classes.txt -o explained/
        vggviz explain cat.jpg --class 'tiger cat' --class 'Egyptian cat'
        vggviz explain photos/ --json --quiet | jq -c '[.input, .predictions[0].label]'
    """
    from vggviz.explain import job as job

    request = job.Request(
        images=images, out_dir=output_dir, model=model, top=k, classes=classes, **options
    )
    sys.exit(run_job(job.run, request, _pictures_in(output_dir), quiet=quiet, as_json=as_json))


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
        sys.exit(ExitCode.FAILED)


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
@shard_option("Scan only the K-th of N deterministic parts and leave a partial result for --merge.")
@click.option(
    "--merge",
    is_flag=True,
    help="Combine the partial results of all N shards in -o (same IMAGES and options), "
    "then crop and draw.",
)
@quiet_option
@output_dir_option
@handle_errors
def top(images, model, layer_spec, shard, merge, quiet, output_dir, **options) -> None:
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
        model=model,
        layers=layer_spec,
        options=job.TopOptions(**options),
        shard=shard,
        merge=merge,
    )

    def closing(summary: Summary) -> str:
        outputs = summary.outputs
        if "partial" in outputs:
            where = f"partial result in {shown(str(outputs['partial']))}{os.sep}"
            return f"{summary.line()} · {where} (then {flag('merge')})"
        index = f" · open {shown(str(summary.index))}" if summary.index else ""
        return f"{summary.line()} · {shown(str(outputs['result']))}{index}"

    sys.exit(run_job(job.run, request, closing, quiet=quiet))
