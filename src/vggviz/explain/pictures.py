"""The explain picture: the photo with the model's predictions, then one panel per explained
class with its evidence over the photo, its probability and the deletion check.

Inputs are numpy arrays and plain results; the output is a PIL image in the house style of
``core/drawing`` (dark background, title block, colour bar). Text is drawn at whole pixels on
the final canvas and never resampled, so it stays crisp.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vggviz.core import drawing
from vggviz.core.drawing import BACKGROUND, FOREGROUND, MUTED, PAD, WARNING, ColourBar
from vggviz.core.text import display

if TYPE_CHECKING:  # the picture itself needs no torch
    from vggviz.explain.deletion import Deletion

__all__ = [
    "Caption",
    "Panel",
    "column_width",
    "deletion_line",
    "explain_body",
    "explain_picture",
    "overlay",
    "probability_text",
    "shown_size",
]

BOX = 360  # a panel's photo fits in BOX x BOX pixels
TEXT_MIN = 250  # narrowest panel column: room for the deletion line at 13 px
COLUMNS = 4  # panels per row before the next row starts
NAME_SIZE, LINE_SIZE = 18, 14
GAP = 14  # between panel columns
SEPARATOR = "  ·  "
SATURATED = 0.01  # probabilities closer than this: the deletion line shows the logits
STAGE_TEXT = {"conv": "the conv's output", "bn": "after its BatchNorm", "relu": "after its ReLU"}
FIGURE_MIN = 760  # narrowest picture: room for the title lines and the colour bar's label
OVERLAY_ALPHA = 0.8  # the evidence colour's weight at its peak
PHOTO_DIM = 0.7  # the greyscale photo under the evidence, dimmed so the colours stand out


@dataclass(frozen=True)
class Caption:
    """What the picture's title says about the image and the model."""

    image: str  # the input's name (undecodable bytes are shown as U+FFFD)
    arch: str
    weights: str
    random: bool
    layer: str  # alias, e.g. "conv13"
    module: str  # e.g. "features.29"
    stage: str


@dataclass(frozen=True)
class Panel:
    """One explained class: the evidence at the layer's resolution and what is said of it."""

    index: int
    name: str
    probability: float
    evidence: np.ndarray  # float32 (h, w) >= 0
    deletion: Deletion | None = None  # None when the check was not run
    fraction: float = 0.2


def explain_picture(
    photo: np.ndarray,
    panels: Sequence[Panel],
    predictions: Sequence[tuple[str, float]],
    caption: Caption,
    cmap: str = "inferno",
) -> Image.Image:
    """The photo (H, W, 3) uint8 as the network saw it, with ``predictions`` ((name,
    probability), best first) under it, then one panel per explained class; under a title
    block, the random-weights warning when it applies, and the colour bar."""
    body = explain_body(photo, panels, predictions, cmap)
    evidence = panels[0].evidence.shape
    room = body.width - 2 * (PAD + 6)
    title = [
        _fit_middle(_clean(display(caption.image)), 22, room),
        _fit(
            f"{caption.arch}  ·  weights: {caption.weights}  ·  Grad-CAM at {caption.layer} "
            f"({caption.module}), {STAGE_TEXT.get(caption.stage, caption.stage)}  ·  "
            f"evidence {evidence[0]}x{evidence[1]}",
            15,
            room,
        ),
    ]
    if panels[0].deletion is not None:
        share = _percent(panels[0].fraction)
        check = (
            f"check: each class's probability after blurring the {share} of the photo with "
            f"the most evidence, and {share} at random"
        )
        title.append(_fit(check, 15, room))
    bar = ColourBar(
        drawing.colormap(cmap), 0.0, 1.0, "evidence, each panel on its own scale (1 = its peak)"
    )
    return drawing.figure(body, title, bar, drawing.random_warning(caption.random, caption.weights))


def explain_body(
    photo: np.ndarray,
    panels: Sequence[Panel],
    predictions: Sequence[tuple[str, float]],
    cmap: str = "inferno",
) -> Image.Image:
    """The picture's body: cells of one column width each, in rows of up to COLUMNS, PAD
    from the edges and GAP apart; the photo (or its evidence) at the top of each cell,
    centred, :func:`shown_size` big, and the text under it."""
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 photo, got {photo.dtype} {photo.shape}")
    if not panels:
        raise ValueError("nothing to draw: no explained class")
    lut = drawing.colormap(cmap)
    height, width = photo.shape[:2]
    size = shown_size(height, width)
    shown = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
    column = column_width(height, width)
    cells = [_photo_cell(shown, predictions, (height, width), column)]
    cells += [_class_cell(shown, panel, lut, column) for panel in panels]
    return _arrange(cells, column)


def shown_size(height: int, width: int) -> tuple[int, int]:
    """(width, height) of a photo in a panel: its longer side BOX pixels."""
    scale = BOX / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def column_width(height: int, width: int) -> int:
    """Width of a panel's column: the photo's, or the room its text lines need."""
    return max(shown_size(height, width)[0], TEXT_MIN)


def probability_text(p: float) -> str:
    """0.91, 0.07, or 3.1e-04 below 0.01 (so small is not shown as 0.00)."""
    if p >= 0.01 or p == 0:
        return f"{p:.2f}"
    return f"{p:.1e}"


def deletion_line(deletion: Deletion, fraction: float = 0.2) -> tuple[str, bool]:
    """The deletion check as one short line, and whether it speaks against the evidence
    (blurring it did not hurt the class more than blurring at random).

    When the three probabilities are within SATURATED of each other (a saturated head puts
    1.00 on its class, and 0 on the others, whatever is blurred), the logits are shown
    instead: they still differ."""
    share = _percent(fraction)
    probs = [deletion.original, deletion.top, deletion.random]
    if max(probs) - min(probs) < SATURATED:
        logits = [deletion.original_logit, deletion.top_logit, deletion.random_logit]
        texts = ["logit " + _logit_text(logits[0]), *(_logit_text(v) for v in logits[1:])]
        worse = logits[1] >= logits[2]
    else:
        texts = [probability_text(p) for p in probs]
        worse = probs[1] >= probs[2]
    line = f"blur top {share}: {texts[0]} -> {texts[1]}{SEPARATOR}random {share}: {texts[2]}"
    return line, worse


def overlay(photo: np.ndarray, heat: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Evidence ``heat`` (H, W) uint8 over a dimmed greyscale ``photo`` (H, W, 3): the colour's
    weight grows linearly with the evidence, so the photo shows wherever the evidence is weak
    (``drawing.overlay``'s square-root weight tints the whole photo, since Grad-CAM is rarely
    exactly zero) and the colour map's top end is reached only at the peak."""
    grey = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    weight = (heat.astype(np.float32) * (OVERLAY_ALPHA / 255.0))[..., None]
    out = (grey * PHOTO_DIM)[..., None] * (1 - weight) + lut[heat].astype(np.float32) * weight
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _logit_text(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _photo_cell(
    shown: np.ndarray,
    predictions: Sequence[tuple[str, float]],
    size: tuple[int, int],
    column: int,
) -> Image.Image:
    lines = [(f"input {size[1]}x{size[0]}", NAME_SIZE, FOREGROUND)]
    for rank, (name, p) in enumerate(predictions, 1):
        text = f"{rank}. {probability_text(p)}  {_clean(name)}"
        lines.append((_fit(text, LINE_SIZE, column), LINE_SIZE, MUTED))
    return _cell(shown, lines, column)


def _class_cell(shown: np.ndarray, panel: Panel, lut: np.ndarray, column: int) -> Image.Image:
    h, w = shown.shape[:2]
    peak = float(panel.evidence.max()) if panel.evidence.size else 0.0
    scaled = panel.evidence / peak if peak > 0 else np.zeros_like(panel.evidence)
    grey = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    heat = drawing.upsample(grey[None], (h, w))[0]
    body = overlay(shown, heat, lut)
    name = _fit(_clean(panel.name), NAME_SIZE, column)
    facts = f"p {probability_text(panel.probability)}  ·  class {panel.index}"
    if peak <= 0:
        facts += "  ·  no evidence"
    lines = [(name, NAME_SIZE, FOREGROUND)]
    lines += [(t, LINE_SIZE, MUTED) for t in _wrap(facts, LINE_SIZE, column)]
    if panel.deletion is not None:
        text, worse = deletion_line(panel.deletion, panel.fraction)
        # no evidence: the top fraction is the random one, a tie that says nothing more
        colour = WARNING if worse and peak > 0 else MUTED
        lines += [(t, LINE_SIZE, colour) for t in _wrap(text, LINE_SIZE, column)]
    return _cell(body, lines, column)


def _cell(image: np.ndarray, lines: Sequence[tuple[str, int, tuple]], column: int) -> Image.Image:
    """An image centred in a column of ``column`` pixels, with text lines under it."""
    heights = [size + 8 for _, size, _ in lines]
    h, w = image.shape[:2]
    cell = Image.new("RGB", (column, h + 8 + sum(heights)), BACKGROUND)
    cell.paste(Image.fromarray(image), ((column - w) // 2, 0))
    y = h + 8
    for (text, size, fill), step in zip(lines, heights, strict=True):
        drawing.draw_text(cell, (0, y), text, size, fill)
        y += step
    return cell


def _arrange(cells: Sequence[Image.Image], column: int) -> Image.Image:
    """Cells in rows of at most COLUMNS, left to right, on at least FIGURE_MIN pixels."""
    cols = min(len(cells), COLUMNS)
    rows = math.ceil(len(cells) / cols)
    cell_h = max(c.height for c in cells)
    width = max(cols * column + (cols - 1) * GAP + 2 * PAD, FIGURE_MIN)
    out = Image.new("RGB", (width, rows * cell_h + (rows - 1) * GAP + 2 * PAD), BACKGROUND)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        out.paste(cell, (PAD + c * (column + GAP), PAD + r * (cell_h + GAP)))
    return out


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _clean(text: str) -> str:
    """Control characters and line separators, which no font draws, as U+FFFD."""
    if _UNPRINTABLE.search(text) or any(unicodedata.category(ch) == "Cf" for ch in text):
        return "".join(
            "\ufffd" if _UNPRINTABLE.match(ch) or unicodedata.category(ch) == "Cf" else ch
            for ch in text
        )
    return text


def _fit(text: str, size: int, width: float) -> str:
    """``text``, cut with an ellipsis at the end when it is wider than ``width`` pixels."""
    if drawing.text_length(text, size) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if drawing.text_length(text[:mid].rstrip() + "…", size) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…"


def _wrap(text: str, size: int, width: float) -> list[str]:
    """``text`` on as few lines as fit ``width``, broken only between its " · " parts (a
    part too long on its own is cut)."""
    lines: list[str] = []
    for part in text.split(SEPARATOR):
        if lines and drawing.text_length(lines[-1] + SEPARATOR + part, size) <= width:
            lines[-1] += SEPARATOR + part
        else:
            lines.append(part)
    return [_fit(line, size, width) for line in lines]


def _fit_middle(text: str, size: int, width: float) -> str:
    """``text`` with its middle replaced by an ellipsis when it is wider than ``width``
    pixels: a file name keeps its start and its extension."""
    if drawing.text_length(text, size) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        head, tail = text[: (mid + 1) // 2], text[len(text) - mid // 2 :] if mid > 1 else ""
        if drawing.text_length(head + "…" + tail, size) <= width:
            lo = mid
        else:
            hi = mid - 1
    head, tail = text[: (lo + 1) // 2], text[len(text) - lo // 2 :] if lo > 1 else ""
    return head + "…" + tail


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"
