"""The explain picture: layout, the photo's and the evidence's pixels, text that fits, the
random-weights warning, and the deletion line."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import photo_array
from PIL import Image

from vggviz.core import drawing
from vggviz.core.drawing import BACKGROUND, FOREGROUND, PAD, WARNING
from vggviz.explain import pictures
from vggviz.explain.deletion import Deletion
from vggviz.explain.pictures import (
    BOX,
    COLUMNS,
    FIGURE_MIN,
    GAP,
    PHOTO_DIM,
    TEXT_MIN,
    Caption,
    Panel,
    column_width,
    deletion_line,
    explain_body,
    explain_picture,
    probability_text,
    shown_size,
)

GOOD = Deletion(0.91, 0.12, 0.85, 5.0, 1.0, 4.5)
BAD = Deletion(0.91, 0.88, 0.80, 5.0, 4.9, 4.4)
SATURATED = Deletion(1.0, 1.0, 1.0, 274.0, 146.0, 245.0)


def _caption(random: bool = False, image: str = "cat.jpg") -> Caption:
    return Caption(
        image,
        "vgg11",
        "random (seed 0)" if random else "mine.pth",
        random,
        "conv8",
        "features.18",
        "relu",
    )


def _hot_corner(h: int = 3, w: int = 4) -> np.ndarray:
    evidence = np.zeros((h, w), dtype=np.float32)
    evidence[0, 0] = 2.5
    return evidence


def _cell_origin(i: int, column: int, cell_h: int, shown_w: int) -> tuple[int, int]:
    r, c = divmod(i, COLUMNS)
    return PAD + c * (column + GAP) + (column - shown_w) // 2, PAD + r * (cell_h + GAP)


def _grey(photo: np.ndarray) -> np.ndarray:
    return photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def test_body_pixels_photo_and_evidence() -> None:
    """The first cell is the photo, resized; an evidence panel is the dimmed grey photo where
    the evidence is zero and the colour map's top near its peak; a panel without evidence is
    the dimmed grey photo everywhere."""
    photo = photo_array(48, 64)
    panels = [Panel(3, "tabby", 0.7, _hot_corner(), GOOD), Panel(5, "lynx", 0.1, _hot_corner() * 0)]
    body = np.asarray(explain_body(photo, panels, [("tabby", 0.7), ("lynx", 0.1)]))
    w, h = shown_size(48, 64)
    assert (w, h) == (BOX, 270)
    column = column_width(48, 64)
    assert body.shape[1] == max(3 * column + 2 * GAP + 2 * PAD, FIGURE_MIN)
    shown = np.asarray(Image.fromarray(photo).resize((w, h), Image.Resampling.LANCZOS))
    cell_h = body.shape[0] - 2 * PAD
    x, y = _cell_origin(0, column, cell_h, w)
    np.testing.assert_array_equal(body[y : y + h, x : x + w], shown)
    dim = np.clip(_grey(shown) * PHOTO_DIM + 0.5, 0, 255).astype(np.uint8)
    x, y = _cell_origin(1, column, cell_h, w)
    panel = body[y : y + h, x : x + w].astype(int)
    # the hot cell is the top-left 90x90 of the 360x270 panel; beyond its neighbours, nothing
    quiet = panel[h // 2 :, w // 2 :]
    np.testing.assert_array_equal(quiet, np.repeat(dim[h // 2 :, w // 2 :, None], 3, axis=2))
    top = drawing.colormap("inferno")[255].astype(float)
    corner = panel[:20, :20].reshape(-1, 3).mean(axis=0)
    want = 0.8 * top + 0.2 * dim[:20, :20].mean() * np.ones(3)
    np.testing.assert_allclose(corner, want, atol=3)
    x, y = _cell_origin(2, column, cell_h, w)
    np.testing.assert_array_equal(body[y : y + h, x : x + w], np.repeat(dim[..., None], 3, axis=2))


@pytest.mark.parametrize(("k", "rows", "cols"), [(1, 1, 2), (3, 1, 4), (4, 2, 4), (7, 2, 4)])
def test_panels_fill_rows_of_four(k: int, rows: int, cols: int) -> None:
    photo = photo_array(48, 64)
    panels = [Panel(i, f"class {i}", 0.1, _hot_corner(), GOOD) for i in range(k)]
    body = explain_body(photo, panels, [("class 0", 0.1)])
    column = column_width(48, 64)
    assert body.width == max(cols * column + (cols - 1) * GAP + 2 * PAD, FIGURE_MIN)
    one_row = explain_body(photo, panels[:1], [("class 0", 0.1)]).height - 2 * PAD
    assert body.height == rows * one_row + (rows - 1) * GAP + 2 * PAD


@pytest.mark.parametrize(
    ("height", "width", "shown"),
    [(896, 224, (90, 360)), (224, 896, (360, 90)), (32, 32, (360, 360))],
)
def test_tall_wide_and_tiny_photos(height: int, width: int, shown: tuple[int, int]) -> None:
    assert shown_size(height, width) == shown
    photo = photo_array(height, width)
    picture = explain_picture(
        photo, [Panel(0, "a", 0.5, _hot_corner(), GOOD)], [("a", 0.5)], _caption()
    )
    assert picture.width >= max(2 * column_width(height, width), FIGURE_MIN)
    assert column_width(height, width) == max(shown[0], TEXT_MIN)


def test_picture_is_the_body_under_the_title_with_crisp_text() -> None:
    photo = photo_array(48, 64)
    panels = [Panel(0, "tabby", 0.7, _hot_corner(), GOOD)]
    body = explain_body(photo, panels, [("tabby", 0.7)])
    picture = explain_picture(photo, panels, [("tabby", 0.7)], _caption())
    assert picture.mode == "RGB"
    assert picture.width == body.width
    top = picture.height - body.height
    np.testing.assert_array_equal(np.asarray(picture)[top:], np.asarray(body))
    title = np.asarray(picture)[:top]
    # text drawn on the final canvas, never resampled: glyph cores are the exact colour
    assert (title == FOREGROUND).all(axis=2).sum() > 100
    assert not (title == WARNING).all(axis=2).any()


def test_random_weights_warning() -> None:
    photo = photo_array(48, 64)
    panels = [Panel(0, "tabby", 0.7, _hot_corner(), GOOD)]
    calm = explain_picture(photo, panels, [("tabby", 0.7)], _caption())
    loud = explain_picture(photo, panels, [("tabby", 0.7)], _caption(random=True))
    assert loud.height == calm.height + 22  # one more line in the title block
    top = loud.height - explain_body(photo, panels, [("tabby", 0.7)]).height
    assert (np.asarray(loud)[:top] == WARNING).all(axis=2).sum() > 100


def test_a_bad_check_is_drawn_in_the_warning_colour() -> None:
    photo = photo_array(48, 64)
    good = explain_body(photo, [Panel(0, "a", 0.9, _hot_corner(), GOOD)], [("a", 0.9)])
    bad = explain_body(photo, [Panel(0, "a", 0.9, _hot_corner(), BAD)], [("a", 0.9)])
    assert not (np.asarray(good) == WARNING).all(axis=2).any()
    assert (np.asarray(bad) == WARNING).all(axis=2).sum() > 50


def test_long_names_stay_in_their_column() -> None:
    """ImageNet-long and absurdly long names are cut with an ellipsis: nothing is drawn in
    the gaps between the columns."""
    photo = photo_array(224, 64)  # a narrow photo: columns at their narrowest
    long = "American Staffordshire terrier, " * 6
    panels = [Panel(i, long, 0.3, _hot_corner(), BAD) for i in range(3)]
    body = np.asarray(explain_body(photo, panels, [(long, 0.3)] * 3))
    column = column_width(224, 64)
    assert column == TEXT_MIN
    for c in range(1, 4):
        gap = body[:, PAD + c * (column + GAP) - GAP : PAD + c * (column + GAP)]
        assert (gap == BACKGROUND).all()
    assert pictures._fit(long, 18, 250).endswith("…")
    assert drawing.text_length(pictures._fit(long, 18, 250), 18) <= 250


def test_file_names_that_are_not_utf8_or_hold_control_characters() -> None:
    name = os.fsdecode(b"caf\xe9\xff\xe2\x80\xa8\n.jpg")
    # core/text.display, every picture's one helper: undecodable bytes as U+FFFD, line breaks
    # as escapes, so that the name stays one line and says what it holds
    assert pictures._clean(pictures.display(name)) == "caf\ufffd\ufffd\\u2028\\n.jpg"
    photo = photo_array(48, 64)
    picture = explain_picture(
        photo, [Panel(0, "a\u2028b", 0.5, _hot_corner(), GOOD)], [("a", 0.5)], _caption(image=name)
    )
    assert picture.size[0] >= FIGURE_MIN
    cut = pictures._fit_middle("a_very_long_photo_name_" * 20 + ".jpg", 22, 400)
    assert cut.endswith(".jpg") and "…" in cut and cut.startswith("a_very")
    assert drawing.text_length(cut, 22) <= 400


def test_deletion_line() -> None:
    assert deletion_line(GOOD) == ("blur top 20%: 0.91 -> 0.12  ·  random 20%: 0.85", False)
    assert deletion_line(BAD)[1] is True
    # saturated: the probabilities all read 1.00, the logits still tell the cases apart
    assert deletion_line(SATURATED) == (
        "blur top 20%: logit 274 -> 146  ·  random 20%: 245",
        False,
    )
    assert deletion_line(GOOD, 0.3)[0].startswith("blur top 30%:")
    # a class the model rules out: probabilities 0 whatever happens, logits still move
    ruled_out = Deletion(0.0, 0.0, 2.8e-40, -138.0, -163.0, -169.0)
    assert deletion_line(ruled_out) == (
        "blur top 20%: logit -138 -> -163  ·  random 20%: -169",
        True,
    )
    small = Deletion(0.004, 0.0001, 0.003, -5.5, -9.2, -5.8)
    assert deletion_line(small)[0] == "blur top 20%: logit -5.5 -> -9.2  ·  random 20%: -5.8"


def test_probability_text() -> None:
    assert [probability_text(p) for p in (0.912, 0.0031, 0.0, 1.0, 0.01)] == [
        "0.91",
        "3.1e-03",
        "0.00",
        "1.00",
        "0.01",
    ]


def test_errors() -> None:
    photo = photo_array(48, 64)
    with pytest.raises(ValueError, match="no explained class"):
        explain_body(photo, [], [])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 photo"):
        explain_body(photo.astype(np.float32), [Panel(0, "a", 0.5, _hot_corner())], [])


def test_explain_imports_no_other_job_and_its_pictures_no_torch() -> None:
    """Jobs never import each other or click; drawing and names work without torch."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import vggviz.explain

    for path in Path(vggviz.explain.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("vggviz.features", "vggviz.top", "vggviz.cli")), path
                assert name.split(".")[0] != "click", path
    code = (
        "import sys, vggviz.explain.pictures, vggviz.explain.labels; print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
