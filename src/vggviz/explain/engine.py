"""What ``explain`` adds to the shared per-image engine (:mod:`vggviz.core.per_image`): per
batch, the predictions and Grad-CAM evidence (one forward, a backward above the map per
class) and the deletion check (K + 1 forwards per photo, batched); per image, ``explain.png``,
``cams.npz`` with ``--save-raw``, and its part of the record.

A stop asked for mid-batch is polled between the Grad-CAM and the check and between the
check's forward passes: the batch is given up (its images are discarded and get no record).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, TypedDict

import numpy as np
import torch

from vggviz.core import files, memory
from vggviz.core.inputs import InputItem
from vggviz.core.per_image import Batch, ImageOutput, ImageWork
from vggviz.core.text import display
from vggviz.explain import memory as explain_memory
from vggviz.explain import pictures
from vggviz.explain.deletion import FRACTION, Deletion, Stopped, deletion_test
from vggviz.explain.gradcam import ClassEvidence, Explanation, GradCam
from vggviz.explain.request import PICTURE, RAW, Names, is_owned
from vggviz.model.layers import ConvLayer
from vggviz.model.loading import LoadedModel

# Functional TypedDicts: a record's first key, "class", is a Python keyword.
Prediction = TypedDict(
    "Prediction",
    {"class": int, "label": str, "probability": float | None, "logit": float | None},
)
"""One of the K most probable classes. A number is None only where the head's arithmetic
overflowed (``nonfinite``): JSON has no NaN."""


class DeletionRecord(TypedDict):
    """The deletion check of one explained class: probabilities and logits as is, after
    blurring ``fraction`` of the photo where the evidence is strongest, and at random."""

    fraction: float
    original: float | None
    top: float | None
    random: float | None
    original_logit: float | None
    top_logit: float | None
    random_logit: float | None


ExplanationRecord = TypedDict(
    "ExplanationRecord",
    {
        "class": int,
        "label": str,
        "rank": int,  # 1: the most probable class
        "layer": str,
        "module": str,
        "stage": str,
        "probability": float | None,
        "logit": float | None,
        "resolution": list[int],  # (rows, cols) of the evidence: the map's
        "peak": list[int] | None,  # [row, col] of the largest evidence; None: no evidence
        "deletion": DeletionRecord | None,  # None: the check was not asked for
        "picture": str,
    },
)


class ExplainOutput(ImageOutput):
    """One image's picture, evidence arrays and record fields, made on its drawing lane."""

    work: ExplainWork

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.predictions: list[Prediction] = []
        self.explanations: list[ExplanationRecord] = []
        self.nonfinite = False

    def draw(self, explanation: Explanation, deletions: Sequence[Deletion | None]) -> None:
        if not self.live:
            return
        work = self.work
        names = work.names.names
        try:
            logits, probs = explanation.logits, explanation.probabilities
            self.nonfinite = not (np.isfinite(logits).all() and np.isfinite(probs).all())
            self.predictions = [
                _prediction(i, names[i], probs[i], logits[i]) for i in explanation.top
            ]
            path = self.folder / PICTURE
            self.explanations = [
                _explanation(c, names[c.index], _rank(logits, c.index), d, work, str(path))
                for c, d in zip(explanation.explained, deletions, strict=True)
            ]
            panels = [
                pictures.Panel(
                    c.index, names[c.index], _shown(c.probability), _finite(c.evidence), d, FRACTION
                )
                for c, d in zip(explanation.explained, deletions, strict=True)
            ]
            shown = [(names[i], _shown(float(probs[i]))) for i in explanation.top]
            caption = pictures.Caption(
                display(str(self.item.rel)),
                work.loaded.arch,
                work.loaded.weights,
                work.loaded.random,
                work.layer.alias,
                work.cam.module_name,
                work.stage,
            )
            self.save(pictures.explain_picture(self.photo, panels, shown, caption), path)
            if work.save_raw:
                raw = files.NpzWriter(self.folder / RAW)
                try:
                    for c in explanation.explained:
                        raw.add(f"class_{c.index}", c.evidence)
                    self.outputs.append(raw.close())
                except BaseException:
                    raw.abort()
                    raise
        except OSError as err:
            self.failed(err)

    def fields(self) -> dict[str, Any]:
        return {
            "predictions": self.predictions,
            "explanations": self.explanations,
            "classes": len(self.work.names.names),
            "names": self.work.names.source,
            "nonfinite": self.nonfinite,
        }


class ExplainWork(ImageWork):
    """Everything about an explain run except the inputs: the model and its head, the map,
    the classes to explain and what to call them."""

    output_type = ExplainOutput
    empty: ClassVar[Mapping[str, Any]] = MappingProxyType({"predictions": [], "explanations": []})

    def __init__(
        self,
        loaded: LoadedModel,
        layer: ConvLayer,
        names: Names,
        *,
        stage: str = "relu",
        top: int = 3,
        classes: Sequence[int] | None = None,
        save_raw: bool = False,
        check: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.loaded, self.layer, self.names, self.stage = loaded, layer, names, stage
        self.top, self.classes, self.save_raw = top, list(classes) if classes else None, save_raw
        self.check = check
        self.cam = GradCam(loaded.model, layer, stage)

    @property
    def explained(self) -> int:
        """Classes explained per image."""
        return len(self.classes) if self.classes else min(self.top, len(self.names.names))

    def owns(self, name: str) -> bool:
        return is_owned(name)

    def check_image(self, item: InputItem, width: int, height: int) -> None:
        def estimate(h: int, w: int) -> int:
            return explain_memory.estimate_peak_bytes(
                self.loaded.arch, h, w, layer=self.layer.index, classes=self.explained,
                batch_size=self.batch_size, baseline=False,
            )  # fmt: skip

        memory.check_image_fits(item.path, width, height, self.size, estimate)

    def process(self, batch: Batch) -> None:
        x = torch.from_numpy(batch.arrays()).to(self.loaded.device)
        explanations = self.cam(x, top=self.top, classes=self.classes)
        try:
            deletions = self._check(x, explanations, batch)
        except Stopped:
            batch.abandon()
            return
        for out, explanation, checked in zip(batch.outputs, explanations, deletions, strict=True):
            batch.draw(out.draw, explanation, checked)  # type: ignore[attr-defined]

    def _check(
        self, x: torch.Tensor, explanations: list[Explanation], batch: Batch
    ) -> Sequence[Sequence[Deletion | None]]:
        """The deletion check of every explained class (None each without the check);
        raises Stopped when a stop is asked for before or during it."""
        if batch.stopping():
            raise Stopped
        if not self.check:
            return [[None] * len(e.explained) for e in explanations]
        return deletion_test(
            self.loaded.model, x, explanations, batch_size=self.batch_size, stopping=batch.stopping
        )


def _number(value: float) -> float | None:
    """A float for JSON: None where the head's arithmetic overflowed (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _shown(p: float) -> float:
    return p if math.isfinite(p) else 0.0


def _finite(evidence: np.ndarray) -> np.ndarray:
    if np.isfinite(evidence).all():
        return evidence
    return np.nan_to_num(evidence, nan=0.0, posinf=0.0, neginf=0.0)


def _rank(logits: np.ndarray, index: int) -> int:
    """1 for the most probable class: by logit (probabilities underflow to ties), then by
    the lower index, as the predictions are ordered."""
    value = logits[index]
    return int(np.count_nonzero(logits > value) + np.count_nonzero(logits[:index] == value)) + 1


def _prediction(index: int, label: str, probability: float, logit: float) -> Prediction:
    return {
        "class": index,
        "label": label,
        "probability": _number(probability),
        "logit": _number(logit),
    }


def _explanation(
    c: ClassEvidence,
    label: str,
    rank: int,
    d: Deletion | None,
    work: ExplainWork,
    picture: str,
) -> ExplanationRecord:
    deletion: DeletionRecord | None = (
        None
        if d is None
        else {
            "fraction": FRACTION,
            "original": _number(d.original),
            "top": _number(d.top),
            "random": _number(d.random),
            "original_logit": _number(d.original_logit),
            "top_logit": _number(d.top_logit),
            "random_logit": _number(d.random_logit),
        }
    )
    return {
        "class": c.index,
        "label": label,
        "rank": rank,
        "layer": work.layer.alias,
        "module": work.cam.module_name,
        "stage": work.stage,
        "probability": _number(c.probability),
        "logit": _number(c.logit),
        "resolution": list(c.evidence.shape),
        "peak": list(c.peak) if c.peak is not None else None,
        "deletion": deletion,
        "picture": picture,
    }
