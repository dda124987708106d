"""What ``features`` adds to the shared per-image engine (:mod:`vggviz.core.per_image`): the
network's maps of each batch, layer by layer, handed to the drawing lanes as soon as each is
computed, and each image's outputs: a picture per layer, the overview, ``maps.npz`` with
``--save-raw``, and its part of the record.

A stop asked for mid-forward is polled between layers: the batch is given up (its images are
discarded and get no record), never cut in the middle of a picture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from vggviz.core import files, memory, per_image, values
from vggviz.core.inputs import InputItem
from vggviz.core.per_image import Batch, ImageOutput, ImageWork
from vggviz.core.text import display
from vggviz.features import folders, pictures
from vggviz.model.hooks import chain_maps, network_maps
from vggviz.model.layers import ConvLayer
from vggviz.model.loading import LoadedModel

T = TypeVar("T")


class _Stopped(Exception):
    """Raised from a hook to leave the forward pass early when a stop was asked for."""


class FeatureOutput(ImageOutput):
    """One image's pictures, filled layer by layer on its drawing lane."""

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

    def add_layer(self, layer: ConvLayer, maps: np.ndarray | pictures.Kept) -> None:
        """Draw one layer: ``maps`` is its full (C, H, W) map, or what :func:`keep` kept."""
        if not self.live:
            return
        work = self.work
        try:
            kept = maps if isinstance(maps, pictures.Kept) else keep(maps, work)
            drawn = work.drawn(
                pictures.draw_layer,
                kept, layer.alias, layer.name, self.caption, work.style, self.photo, work.overview,
            )  # fmt: skip
            path = self.folder / folders.picture_name(layer.index, layer.alias)
            self.save(drawn.picture, path)
            if self.raw:
                assert isinstance(maps, np.ndarray)
                self.raw.add(layer.alias, maps)
            if drawn.overview is not None:
                tiles, top = drawn.overview
                self.rows.append(
                    pictures.OverviewRow(layer.alias, layer.name, kept.shape, tiles, top)
                )
            self.layers.append(_layer_stats(layer, kept, drawn.channels, str(path)))
        except OSError as err:
            self.failed(err)

    def complete(self) -> None:
        work = self.work
        if work.overview and self.rows:
            picture = work.drawn(
                pictures.draw_overview, self.rows, self.photo, self.caption, work.style
            )
            self.save(picture, self.folder / folders.OVERVIEW)
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
        if "draw_workers" not in common:
            one = self.image_bytes(self.size, self.size) // max(1, self.batch_size)
            self.draw_workers = per_image.drawing_workers(loaded.device.type != "cpu", one)
        self._processes: ProcessPoolExecutor | None = None
        self._starting = threading.Lock()
        self._lost = False  # the drawing processes died: draw here
        # chain-mode maps are full resolution (up to 100 MB a layer): keep few waiting
        self.backlog = 2 if mode == "chain" else len(layers) + 2

    def drawn(self, draw: Callable[..., T], *args: Any) -> T:
        """``draw(*args, encode)``: in a drawing process, one per lane, when a run draws on
        several lanes (drawing holds the GIL most of its time, so threads alone would draw
        about one image at a time), with ``encode`` True so that PNG bytes come back; here
        otherwise. Should a process die (killed, out of memory), the rest is drawn here."""
        with self._starting:  # lanes ask at once
            if self._processes is None and self.draw_workers > 1 and not self._lost:
                self._processes = per_image.drawing_processes(self.draw_workers)
            pool = self._processes
        if pool is not None:
            try:
                return pool.submit(draw, *args, True).result()
            except BrokenProcessPool:
                with self._starting:
                    self._lost = True
                    self._processes = None
                pool.shutdown(wait=False, cancel_futures=True)
        return draw(*args, False)

    def close(self) -> None:
        if self._processes is not None:
            self._processes.shutdown(cancel_futures=True)
            self._processes = None

    def owns(self, name: str) -> bool:
        return folders.owns(name)

    def image_bytes(self, height: int, width: int) -> int:
        """The memory a batch of ``height`` x ``width`` images takes, without the baseline."""
        grid = values.parse_grid(self.style.grid)
        return memory.estimate_peak_bytes(
            self.loaded.arch, height, width, batch_size=self.batch_size, mode=self.mode,
            save_raw=self.save_raw, tiles=None if grid == "all" else grid[0] * grid[1],
            baseline=False,
        )  # fmt: skip

    def check_image(self, item: InputItem, width: int, height: int) -> None:
        memory.check_image_fits(item.path, width, height, self.size, self.image_bytes)

    def process(self, batch: Batch) -> None:
        outs: list[FeatureOutput] = batch.outputs  # type: ignore[assignment]
        # A batch's maps are one tensor, held until its last image is drawn: with several
        # images, keep only what drawing needs at once (conv1 of 8 photos at 336x224 is 154
        # MB; 16 of its 64 channels are drawn). One image's stay whole: the summary is done
        # on its drawing lane, in parallel with the forward pass.
        early = len(outs) > 1 and not self.save_raw

        def hand_over(layer: ConvLayer, tensor: torch.Tensor) -> None:
            # drawing starts while the network computes the next layers
            arrays = _chw(tensor.float().cpu())
            for out, fmap in zip(outs, arrays, strict=True):
                batch.draw(out.add_layer, layer, keep(fmap, self) if early else fmap)
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


def keep(fmap: np.ndarray, work: FeaturesWork) -> pictures.Kept:
    """What drawing needs of ``fmap`` with ``work``'s style (:func:`pictures.keep`)."""
    return pictures.keep(fmap, work.style, work.overview)


def _chw(tensor: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) maps as numpy without a copy. The weights are channels-last, and so are
    the maps: they become a strided view, which drawing reads as fast (it reduces over H, W
    and gathers a few channels), where a copy to (C, H, W) order cost 5 ms a layer."""
    if tensor.is_contiguous() or not tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.contiguous().numpy()
    return np.moveaxis(tensor.permute(0, 2, 3, 1).numpy(), -1, 1)


def _layer_stats(
    layer: ConvLayer, kept: pictures.Kept, channels: list[int], path: str
) -> folders.LayerStats:
    finite = kept.finite
    return {
        "name": layer.alias,
        "module": layer.name,
        "shape": list(kept.shape),  # every channel has H x W values: the mean of the means
        "mean": round(float(kept.means.mean(dtype=np.float64)), 6) if finite else None,
        "max": round(kept.max, 6) if finite else None,
        "zero_fraction": round(kept.zero_fraction, 6),
        "nonfinite": not finite,
        "channels": channels,
        "picture": path,
    }
