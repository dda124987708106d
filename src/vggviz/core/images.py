"""Image loading and preparation for the network (Pillow and numpy only).

Everything that can go wrong with an input file is turned into an
:class:`~vggviz.core.errors.InputError`, so a batch can report the file and go on.
"""

from __future__ import annotations

import re
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vggviz.core.errors import InputError, UsageError
from vggviz.core.text import read_reason

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
"""Lower-case suffixes treated as images when walking folders (match case-insensitively)."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

MIN_SIDE = 32
"""VGG pools four times before its last conv block; 32 px keeps every layer at least 2 px."""

MAX_ASPECT = 4
"""The longer side is capped at this many times ``size`` so extreme panoramas stay affordable."""

_GREY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def load_rgb(path: str | Path) -> Image.Image:
    """Read ``path`` as a fully loaded 8-bit RGB image, upright and on a white background.

    EXIF orientation is applied, animated files give their first frame, and every failure
    (missing, unreadable, not an image, truncated, corrupt, too large) becomes an
    :class:`InputError` naming the file, so callers need no other ``except``.
    """
    p = Path(path)
    _check_file(p)
    try:
        # Bomb warnings are refusals whatever the caller's warning filters; other Pillow
        # warnings (odd EXIF, odd chunks) are not worth failing a readable image over.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(p, "rb") as fp, Image.open(fp) as im:
                _check_pixels(p, im.width * im.height)
                im.load()
                return rgb8(im)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(p, _bomb_reason(str(exc))) from None
    except Exception as exc:
        raise InputError(p, _reason(exc)) from None


def rgb8(im: Image.Image) -> Image.Image:
    """Any loaded Pillow image as 8-bit RGB, upright (EXIF) and on a white background."""
    return _to_rgb8(_exif_transpose(im))


def _check_file(p: Path) -> None:
    """Explain missing, special and empty files before Pillow gives a vaguer message."""
    try:
        st = p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise InputError(p, "broken symbolic link") from None
        raise InputError(p, "no such file") from None
    except PermissionError:
        raise InputError(p, "permission denied") from None
    except NotADirectoryError:
        raise InputError(p, "no such file (a parent is not a folder)") from None
    except OSError as exc:
        raise InputError(p, read_reason(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(p, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device could block or never end; refuse rather than hang.
        raise InputError(p, "not a regular file")
    if st.st_size == 0:
        raise InputError(p, "empty file")


def _check_pixels(p: Path, pixels: int) -> None:
    """Refuse anything over Pillow's limit, even when Pillow itself only warned."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and pixels > limit:
        raise InputError(p, _bomb_message(pixels, limit))


def _bomb_message(pixels: int, limit: int) -> str:
    return (
        f"image too large: {pixels:,} pixels exceeds the limit of {limit:,} "
        "(decompression-bomb guard)"
    )


def _bomb_reason(text: str) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    match = _BOMB_PIXELS.search(text)
    if match is None or limit is None:
        return "image too large (decompression-bomb guard)"
    return _bomb_message(int(match.group(1)), limit)


def _reason(exc: BaseException) -> str:
    """Map an exception from opening or decoding to a short user-facing phrase."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (unrecognised format)"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode the image"
    if isinstance(exc, OSError) and exc.errno is not None:
        return read_reason(exc)
    text = str(exc).lower()
    if "truncated" in text or isinstance(exc, EOFError):
        return "truncated image data"
    if isinstance(exc, _UnsupportedMode):
        return str(exc)
    return "corrupt image data"


class _UnsupportedMode(ValueError):
    """A pixel mode this loader does not know how to show as RGB."""


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation; unreadable EXIF is ignored because the pixels are still fine."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im.copy()


def _to_rgb8(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without Pillow's clipping pitfalls.

    Pillow clips 16-bit and float values straight to 0..255 (mid-grey 16-bit comes out
    white), so those are rescaled here; transparency is composited over white.
    """
    mode = im.mode
    if mode in _GREY16_MODES:
        return _grey_to_rgb(_scale_int(np.asarray(im)))
    if mode == "F":
        return _grey_to_rgb(_scale_float(np.asarray(im)))
    if mode == "P":
        # Palette transparency (a tRNS index or byte table) becomes real alpha first.
        if "transparency" in im.info:
            im.apply_transparency()
        if im.palette is not None and im.palette.mode == "RGBA":
            return _over_white(im.convert("RGBA"))
        return im.convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return _over_white(im.convert("RGBA"))
    try:
        return im.convert("RGB")
    except ValueError:
        raise _UnsupportedMode(f"unsupported pixel mode {mode}") from None


def _scale_int(a: np.ndarray) -> np.ndarray:
    """16-bit greyscale to 8 bits by round(v / 257); wider integer data is stretched."""
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        return _stretch(a.astype(np.float64))
    return ((a + 128) // 257).astype(np.uint8)


def _scale_float(a: np.ndarray) -> np.ndarray:
    """Float greyscale: 0..1 and 0..255 are taken at face value, anything else stretched."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo < 0.0 or hi > 255.0:
        return _stretch(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _grey_to_rgb(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)).convert("RGB")


def _over_white(rgba: Image.Image) -> Image.Image:
    """Composite over white, rounding: out = (c * a + 255 * (255 - a)) / 255."""
    a = np.asarray(rgba, dtype=np.uint32)
    alpha = a[..., 3:4]
    out = (a[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(out.astype(np.uint8))


def model_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Return the (width, height) an image of ``width`` x ``height`` is resized to.

    Rule: scale so the shorter side equals ``size``, keeping the aspect ratio. If the longer
    side would then exceed ``4 * size`` (extreme panoramas), it is capped at ``4 * size`` and
    the shorter side shrinks with it, but never below 32 px, because VGG pools four times
    before its last conv block and 32 px keeps every layer at least 2 px; only then is the
    aspect ratio given up. A size that already obeys the rule is returned unchanged.
    """
    if size < MIN_SIDE:
        raise UsageError(f"size must be at least {MIN_SIDE} pixels, got {size}")
    if width < 1 or height < 1:
        raise ValueError(f"image has no pixels: {width}x{height}")
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, _div_round(long * size, short)
    if new_long > MAX_ASPECT * size:
        new_long = MAX_ASPECT * size
        new_short = max(MIN_SIDE, _div_round(short * new_long, long))
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _div_round(num: int, den: int) -> int:
    """``num / den`` rounded half up, in integers so every machine gets the same answer."""
    return (2 * num + den) // (2 * den)


def resize_for_model(img: Image.Image, size: int) -> Image.Image:
    """Resize to :func:`model_size` with antialiased bilinear filtering.

    An image already at the target size is returned as is, so its pixels are untouched.
    """
    target = model_size(img.width, img.height, size)
    if target == img.size:
        return img
    return img.resize(target, Image.Resampling.BILINEAR, reducing_gap=None)


def to_array(img: Image.Image, normalize: bool) -> np.ndarray:
    """Return a float32 (3, H, W) array in [0, 1], optionally ImageNet-normalised.

    The pretrained weights expect per-channel ``(x - mean) / std``; untrained or custom
    weights may not, hence the switch.
    """
    if img.mode != "RGB":
        raise ValueError(f"to_array expects an RGB image (use load_rgb), got mode {img.mode}")
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    if normalize:
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
        std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
        arr = (arr - mean) / std
    return np.ascontiguousarray(arr, dtype=np.float32)


def for_model(
    path: str | Path,
    size: int,
    normalize: bool,
    check: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A file as every job feeds it to the network: the photo resized for the model, (H, W, 3)
    uint8, and the network's input made from it, (3, H, W) float32. ``check(width, height)``
    may refuse the resized size (raising InputError) before the input is made. Raises
    InputError."""
    photo = resize_for_model(load_rgb(path), size)
    if check is not None:
        check(photo.width, photo.height)
    return np.asarray(photo), to_array(photo, normalize)


def image_for_model(
    image: Image.Image, size: int, normalize: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`for_model` for an image already in memory (the Python API's PIL input)."""
    photo = resize_for_model(rgb8(image), size)
    return np.asarray(photo), to_array(photo, normalize)
