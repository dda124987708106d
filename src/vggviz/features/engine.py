"""What ``features`` adds to the shared per-image engine (:mod:`vggviz.core.per_image`): the
network's maps of each batch, layer by layer, handed to the drawing thread as soon as each is
computed, and each image's outputs: a picture per layer, the overview, ``maps.npz`` with
``--save-raw``, and its part of the record.

A stop asked for mid-forward is polled between layers: the batch is given up (its images are
discarded and get no record), never cut in the middle of a picture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch

from vggviz.core import drawing, files, memory, values
from vggviz.core.inputs import InputItem
from vggviz.core.per_image import Batch, ImageOutput, ImageWork
from vggviz.core.text import display
from vggviz.features import folders, pictures
from vggviz.model.hooks import chain_maps, network_maps
from vggviz.model.layers import ConvLayer
from vggviz.model.loading import LoadedModel


class _Stopped(Exception):
    """Raised from a hook to leave the forward pass early when a stop was asked for."""


class FeatureOutput(ImageOutput):
    """One image's pictures, filled layer by layer on the drawing thread."""

    work: FeaturesWork

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        work = self.work
        self.caption = pictures.Caption(
            display(str(self.item.rel)),
            work.loaded.weights,
            work.loaded.random,
            work.mode,
            work.stage,
        )
        self.layers: list[folders.LayerStats] = []
        self.rows: list[pictures.OverviewRow] = []
        self.raw: files.NpzWriter | None = None

    def begin(self) -> None:
        if self.work.save_raw:
            self.raw = files.NpzWriter(self.folder / folders.RAW)

    def add_layer(self, layer: ConvLayer, fmap: np.ndarray) -> None:
        if not self.live:
            return
        style = self.work.style
        try:
            finite = bool(np.isfinite(fmap).all())
            if not finite:  # overflowing weights: draw what is finite, and say so
                fmap = _finite(fmap)
            # near float32's limit, means and spans overflow again: the picture is still right
            with np.errstate(over="ignore", invalid="ignore"):
                means = drawing.channel_means(fmap)  # once, for the picture, overview, record
                image, channels = pictures.layer_picture(
                    fmap,
                    alias=layer.alias,
                    module=layer.name,
                    caption=self.caption,
                    style=style,
                    photo=self.photo,
                    means=means,
                )
            path = self.save(image, self.folder / folders.picture_name(layer.index, layer.alias))
            if self.raw:
                self.raw.add(layer.alias, fmap)
            if self.work.overview:
                with np.errstate(over="ignore", invalid="ignore"):
                    tiles, top = pictures.overview_tiles(fmap, style, means=means)
                self.rows.append(
                    pictures.OverviewRow(layer.alias, layer.name, fmap.shape, tiles, top)
                )
            self.layers.append(_layer_stats(layer, fmap, means, finite, channels, str(path)))
        except OSError as err:
            self.failed(err)

    def complete(self) -> None:
        if self.work.overview and self.rows:
            image = pictures.overview_picture(self.rows, self.photo, self.caption, self.work.style)
            self.save(image, self.folder / folders.OVERVIEW)
        if self.raw:
            self.outputs.append(self.raw.close())
            self.raw = None

    def abort(self) -> None:
        if self.raw:
            self.raw.abort()
            self.raw = None

    def fields(self) -> dict[str, Any]:
        return {
            "overview": str(self.folder / folders.OVERVIEW) if self.work.overview else None,
            "layers": self.layers,
            "nonfinite": any(layer["nonfinite"] for layer in self.layers),
        }


class FeaturesWork(ImageWork):
    """Everything about a features run except the inputs: the model, its layers, the mode and
    the style of the pictures."""

    output_type = FeatureOutput
    empty: ClassVar[Mapping[str, Any]] = MappingProxyType({"layers": []})

    def __init__(
        self,
        loaded: LoadedModel,
        layers: Sequence[ConvLayer],
        *,
        mode: str = "network",
        stage: str = "relu",
        style: pictures.Style | None = None,
        save_raw: bool = False,
        overview: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.loaded, self.layers, self.mode, self.stage = loaded, layers, mode, stage
        self.style = style or pictures.Style()
        self.save_raw, self.overview = save_raw, overview
        # chain-mode maps are full resolution (up to 100 MB a layer): keep few waiting
        self.backlog = 2 if mode == "chain" else len(layers) + 2

    def owns(self, name: str) -> bool:
        return folders.owns(name)

    def check_image(self, item: InputItem, width: int, height: int) -> None:
        grid = values.parse_grid(self.style.grid)
        tiles = None if grid == "all" else grid[0] * grid[1]

        def estimate(h: int, w: int) -> int:
            return memory.estimate_peak_bytes(
                self.loaded.arch, h, w, batch_size=self.batch_size, mode=self.mode,
                save_raw=self.save_raw, tiles=tiles, baseline=False,
            )  # fmt: skip

        memory.check_image_fits(item.path, width, height, self.size, estimate)

    def process(self, batch: Batch) -> None:
        outs: list[FeatureOutput] = batch.outputs  # type: ignore[assignment]

        def hand_over(layer: ConvLayer, tensor: torch.Tensor) -> None:
            # drawing starts while the network computes the next layers
            arrays = _chw(tensor.float().cpu())
            for out, fmap in zip(outs, arrays, strict=True):
                batch.draw(out.add_layer, layer, fmap)
            if batch.stopping():
                raise _Stopped

        x = torch.from_numpy(batch.arrays()).to(self.loaded.device, self.loaded.dtype)
        try:
            if self.mode == "network":
                network_maps(self.loaded.model, self.layers, x, self.stage, on_map=hand_over)
            else:
                for layer, tensor in chain_maps(self.loaded.layers, x, self.layers):
                    hand_over(layer, tensor)
        except _Stopped:
            batch.abandon()


def _chw(tensor: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) maps as numpy without a copy. The weights are channels-last, and so are
    the maps: they become a strided view, which drawing reads as fast (it reduces over H, W
    and gathers a few channels), where a copy to (C, H, W) order cost 5 ms a layer."""
    if tensor.is_contiguous() or not tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.contiguous().numpy()
    return np.moveaxis(tensor.permute(0, 2, 3, 1).numpy(), -1, 1)


def _finite(fmap: np.ndarray) -> np.ndarray:
    finite = fmap[np.isfinite(fmap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return np.nan_to_num(fmap, nan=0.0, posinf=hi, neginf=lo)


def _layer_stats(
    layer: ConvLayer,
    fmap: np.ndarray,
    means: np.ndarray,
    finite: bool,
    channels: list[int],
    path: str,
) -> folders.LayerStats:
    return {
        "name": layer.alias,
        "module": layer.name,
        "shape": list(fmap.shape),  # every channel has H x W values: the mean of the means
        "mean": round(float(means.mean(dtype=np.float64)), 6) if finite else None,
        "max": round(float(fmap.max()), 6) if finite else None,
        "zero_fraction": round(float(np.count_nonzero(fmap == 0) / fmap.size), 6),
        "nonfinite": not finite,
        "channels": channels,
        "picture": path,
    }
