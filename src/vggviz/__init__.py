"""vggviz: see what a VGG network does to a photo.

From Python (see the README's "From Python")::

    import vggviz
    model = vggviz.load_model("vgg16_bn", weights="imagenet")
    maps = vggviz.feature_maps(model, "cat.jpg")       # {"conv1": (C, H, W) tensor, ...}
    vggviz.layer_picture(maps, "conv5").save("conv5.png")

The package imports nothing heavy at start-up so that ``vggviz --help`` stays instant: the
names below load torch the first time one of them is used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "FeatureMaps",
    "__version__",
    "feature_maps",
    "filters_picture",
    "layer_picture",
    "load_model",
]

_API = {"FeatureMaps", "feature_maps", "filters_picture", "layer_picture", "load_model"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from vggviz import api

        return getattr(api, name)
    raise AttributeError(f"module 'vggviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
