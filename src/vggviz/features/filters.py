"""The filters picture of a loaded model's conv layer, for ``vggviz filters`` and for the
run summary that ``vggviz features`` writes beside its index."""

from __future__ import annotations

from pathlib import Path

from vggviz.core import files, folders
from vggviz.core.errors import UsageError
from vggviz.features import pictures
from vggviz.model.layers import ConvLayer
from vggviz.model.loading import LoadedModel


def draw_filters(
    loaded: LoadedModel,
    layer: ConvLayer,
    out_dir: Path,
    *,
    view: str | None = None,
    channel: int = 0,
    cmap: str = "gray",
    scale: str = "map",
    suffix: str = "",
) -> Path:
    """Write ``filters-<alias>[-<view>][<suffix>].png`` in ``out_dir`` and return its path.

    ``view`` defaults to ``rgb`` for a layer that reads 3 channels (conv1 reads the photo,
    so its kernels are colours) and to ``mean`` elsewhere.
    """
    weight = layer.module.weight.detach().float().cpu().numpy()
    view = view or ("rgb" if weight.shape[1] == 3 else "mean")
    try:
        image = pictures.filters_picture(
            weight,
            alias=layer.alias,
            module=layer.name,
            weights=loaded.weights,
            random=loaded.random,
            view=view,
            channel=channel,
            cmap=cmap,
            scale=scale,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    name = folders.filters_name(layer.alias, view).removesuffix(".png") + f"{suffix}.png"
    return files.save_png(image, out_dir / name)
