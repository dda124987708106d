"""Tests for vggviz.core.images: every bad file is an InputError, every odd file loads right."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggviz.core import images
from vggviz.core.errors import InputError, UsageError
from vggviz.core.images import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_rgb,
    model_size,
    resize_for_model,
    to_array,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def noise(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


def assert_uniform(img: Image.Image, colour: tuple[int, int, int]) -> None:
    assert img.mode == "RGB"
    arr = pixels(img).reshape(-1, 3)
    assert (arr == np.array(colour, dtype=np.uint8)).all(), np.unique(arr, axis=0)[:5]


def assert_refused(path: Path, reason: str) -> None:
    with pytest.raises(InputError) as info:
        load_rgb(path)
    assert type(info.value) is InputError
    assert info.value.path == str(path)
    assert info.value.reason == reason
    assert str(info.value) == f"{path}: {reason}"


def write_truncated(path: Path, fmt: str) -> None:
    buf = path.with_suffix(".full")
    noise().save(buf, fmt)
    data = buf.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- files that must be refused -------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.touch()
    assert_refused(p, "empty file")


@pytest.mark.parametrize(("name", "fmt"), [("cut.jpg", "JPEG"), ("cut.png", "PNG")])
def test_truncated(tmp_path: Path, name: str, fmt: str) -> None:
    p = tmp_path / name
    write_truncated(p, fmt)
    assert_refused(p, "truncated image data")


def test_corrupt_pixel_data_with_valid_checksum(tmp_path: Path) -> None:
    """Scrambled compressed data behind a correct CRC: only the decoder can tell."""
    good = tmp_path / "good.png"
    noise().save(good)
    data = bytearray(good.read_bytes())
    at = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[at - 4 : at])
    for i in range(at + 20, at + 60):
        data[i] ^= 0xFF
    data[at + 4 + length : at + 8 + length] = struct.pack(
        ">I", zlib.crc32(bytes(data[at : at + 4 + length]))
    )
    p = tmp_path / "scrambled.png"
    p.write_bytes(bytes(data))
    assert_refused(p, "corrupt image data")


@pytest.mark.parametrize(
    ("name", "text"),
    [("page.jpg", "<!DOCTYPE html><html><body>404</body></html>\n"), ("notes.png", "hello\n")],
)
def test_not_an_image(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    assert_refused(p, "not an image (unrecognised format)")


def test_decompression_bomb_refused_even_when_warnings_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (30, 30), 7).save(tmp_path / "ok.png")  # 900 px: allowed
    Image.new("L", (40, 40)).save(tmp_path / "warn.png")  # 1600 px: Pillow only warns
    Image.new("L", (50, 50)).save(tmp_path / "error.png")  # 2500 px > 2x: Pillow raises

    assert_uniform(load_rgb(tmp_path / "ok.png"), (7, 7, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_refused(
            tmp_path / "warn.png",
            "image too large: 1,600 pixels exceeds the limit of 1,000 (decompression-bomb guard)",
        )
    assert_refused(
        tmp_path / "error.png",
        "image too large: 2,500 pixels exceeds the limit of 1,000 (decompression-bomb guard)",
    )


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, where chmod 000 still reads; fake the failing open instead."""
    p = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(p)

    def deny(file: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(images, "open", deny, raising=False)
    assert_refused(p, "permission denied")


def test_broken_symlink(tmp_path: Path) -> None:
    p = tmp_path / "gone.jpg"
    p.symlink_to(tmp_path / "never-existed.jpg")
    assert_refused(p, "broken symbolic link")


def test_missing_file(tmp_path: Path) -> None:
    assert_refused(tmp_path / "nope.png", "no such file")


def test_directory(tmp_path: Path) -> None:
    d = tmp_path / "folder.jpg"
    d.mkdir()
    assert_refused(d, "is a directory, not an image file")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    p = tmp_path / "pipe.png"
    os.mkfifo(p)
    assert_refused(p, "not a regular file")


# --- odd but valid files ----------------------------------------------------------------


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (10, 6), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as check:
        assert check.n_frames == 3
    img = load_rgb(p)
    assert img.size == (10, 6)
    assert_uniform(img, RED)


@pytest.mark.parametrize(("mode", "ext"), [("I;16", "png"), ("I;16B", "tif"), ("I", "tif")])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path, mode: str, ext: str) -> None:
    values = [0, 255, 257, 32768, 40000, 65535]
    expected = [0, 1, 1, 128, 156, 255]  # round(v / 257); Pillow alone would say 255
    p = tmp_path / f"deep.{ext}"
    src = Image.new(mode, (len(values), 1))
    for x, v in enumerate(values):
        src.putpixel((x, 0), v)
    src.save(p)
    with Image.open(p) as check:
        assert check.mode in {mode, "I;16"}
    img = load_rgb(p)
    assert img.mode == "RGB"
    assert pixels(img)[0].tolist() == [[v, v, v] for v in expected]


def test_float_image_scaled(tmp_path: Path) -> None:
    unit = tmp_path / "unit.tif"
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32)).save(unit)
    assert pixels(load_rgb(unit))[0, :, 0].tolist() == [0, 64, 255]
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.array([[-10.0, 45.0, 1000.0]], dtype=np.float32)).save(wide)
    assert pixels(load_rgb(wide))[0, :, 0].tolist() == [0, 14, 255]


def test_cmyk_tiff_exact(tmp_path: Path) -> None:
    p = tmp_path / "print.tif"
    Image.new("CMYK", (5, 5), (0, 255, 255, 0)).save(p)
    assert_uniform(load_rgb(p), RED)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=100)
    with Image.open(p) as check:
        assert check.mode == "CMYK"
    img = load_rgb(p)
    assert img.mode == "RGB"
    assert np.abs(pixels(img).astype(int) - RED).max() <= 3


def test_palette_with_index_transparency(tmp_path: Path) -> None:
    p = tmp_path / "pal.png"
    src = Image.new("P", (2, 1))
    src.putpalette([*RED, *BLUE])
    src.putpixel((1, 0), 1)
    src.save(p, transparency=1)
    assert pixels(load_rgb(p))[0].tolist() == [list(RED), list(WHITE)]


def test_palette_with_alpha_table(tmp_path: Path) -> None:
    p = tmp_path / "pal-alpha.png"
    src = Image.new("P", (3, 1))
    src.putpalette([*RED, *BLUE, *GREEN])
    src.putpixel((1, 0), 1)
    src.putpixel((2, 0), 2)
    src.save(p, transparency=bytes([255, 128, 0]))
    # blue at alpha 128 over white: (0*128 + 255*127) / 255 = 127
    assert pixels(load_rgb(p))[0].tolist() == [list(RED), [127, 127, 255], list(WHITE)]


def test_palette_without_transparency(tmp_path: Path) -> None:
    p = tmp_path / "pal.gif"
    src = Image.new("P", (2, 1))
    src.putpalette([*GREEN, *BLUE])
    src.putpixel((1, 0), 1)
    src.save(p)
    assert pixels(load_rgb(p))[0].tolist() == [list(GREEN), list(BLUE)]


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    p = tmp_path / "alpha.png"
    src = Image.new("RGBA", (3, 1))
    src.putdata([(255, 0, 0, 128), (0, 0, 0, 0), (10, 20, 30, 255)])
    src.save(p)
    assert pixels(load_rgb(p))[0].tolist() == [[255, 127, 127], [255, 255, 255], [10, 20, 30]]


@pytest.mark.parametrize(("mode", "ext"), [("LA", "png"), ("PA", "tif")])
def test_grey_and_palette_alpha(tmp_path: Path, mode: str, ext: str) -> None:
    p = tmp_path / f"ga.{ext}"
    Image.new(mode, (2, 2), (0, 128)).save(p)  # black (palette index 0) at alpha 128
    assert_uniform(load_rgb(p), (127, 127, 127))


def test_one_bit(tmp_path: Path) -> None:
    p = tmp_path / "bits.png"
    src = Image.new("1", (3, 1), 0)
    src.putpixel((1, 0), 1)
    src.save(p)
    assert pixels(load_rgb(p))[0].tolist() == [[0, 0, 0], [255, 255, 255], [0, 0, 0]]


def test_greyscale_l(tmp_path: Path) -> None:
    p = tmp_path / "grey.png"
    Image.new("L", (4, 3), 77).save(p)
    img = load_rgb(p)
    assert img.size == (4, 3)
    assert_uniform(img, (77, 77, 77))


def test_exif_orientation_applied(tmp_path: Path) -> None:
    """Orientation 6 means "rotate 90 degrees clockwise to display"."""
    src = Image.new("RGB", (80, 40))
    src.paste(RED, (0, 0, 40, 20))  # top-left
    src.paste(GREEN, (40, 0, 80, 20))  # top-right
    src.paste(BLUE, (0, 20, 40, 40))  # bottom-left
    src.paste(WHITE, (40, 20, 80, 40))  # bottom-right
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "phone.jpg"
    src.save(p, exif=exif, quality=95)

    img = load_rgb(p)
    assert img.size == (40, 80)
    arr = pixels(img).astype(int)
    # Clockwise: top-left -> top-right, bottom-left -> top-left, and so on.
    for (x, y), colour in {(30, 20): RED, (10, 20): BLUE, (30, 60): GREEN, (10, 60): WHITE}.items():
        assert np.abs(arr[y, x] - colour).max() <= 8, ((x, y), arr[y, x], colour)


def test_result_is_detached_from_the_file(tmp_path: Path) -> None:
    p = tmp_path / "n.png"
    src = noise(9, 5)
    src.save(p)
    img = load_rgb(p)
    p.unlink()
    assert np.array_equal(pixels(img), pixels(src))


@pytest.mark.parametrize("side", [1, 7])
def test_tiny_images(tmp_path: Path, side: int) -> None:
    p = tmp_path / f"tiny{side}.png"
    Image.new("RGB", (side, side), (1, 2, 3)).save(p)
    img = load_rgb(p)
    assert img.size == (side, side)
    assert model_size(side, side, 224) == (224, 224)
    big = resize_for_model(img, 224)
    assert big.size == (224, 224)
    assert_uniform(big, (1, 2, 3))


def test_extreme_panorama(tmp_path: Path) -> None:
    p = tmp_path / "strip.png"
    Image.new("RGB", (4000, 50), (9, 99, 199)).save(p)
    img = load_rgb(p)
    assert model_size(4000, 50, 224) == (896, 32)
    small = resize_for_model(img, 224)
    assert small.size == (896, 32)
    assert_uniform(small, (9, 99, 199))


# --- sizes and arrays ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "size", "expected"),
    [
        (640, 480, 224, (299, 224)),  # 298.67 rounds up
        (480, 640, 224, (224, 299)),
        (224, 224, 224, (224, 224)),
        (5, 2, 33, (83, 33)),  # 82.5 rounds half up, not to even
        (1000, 100, 224, (896, 90)),  # aspect 10: longer side capped at 4 * size
        (4000, 50, 224, (896, 32)),  # cap would give 11 px: held at 32
        (50, 4000, 224, (32, 896)),
        (896, 32, 224, (896, 32)),  # already obeys the rule: unchanged
        (896, 224, 224, (896, 224)),
        (100, 100, 32, (32, 32)),
    ],
)
def test_model_size(w: int, h: int, size: int, expected: tuple[int, int]) -> None:
    assert model_size(w, h, size) == expected


def test_model_size_is_idempotent() -> None:
    for size in (32, 100, 224):
        for w in (1, 3, 31, 50, 224, 999, 4000):
            for h in (1, 7, 32, 224, 1001, 5000):
                once = model_size(w, h, size)
                assert model_size(*once, size) == once, (w, h, size)
                assert min(once) >= 32
                assert max(once) <= 4 * size


def test_model_size_rejects_tiny_size() -> None:
    with pytest.raises(UsageError, match="at least 32"):
        model_size(100, 100, 31)


def test_resize_keeps_image_already_at_size() -> None:
    img = noise(299, 224)
    assert resize_for_model(img, 224) is img


def test_resize_antialiases_when_shrinking() -> None:
    """A 1 px checkerboard shrunk 3x must turn grey; point sampling would keep 0 and 255."""
    board = (np.indices((672, 672)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = pixels(resize_for_model(Image.fromarray(board).convert("RGB"), 224))
    assert out.shape == (224, 224, 3)
    assert out.min() >= 100
    assert out.max() <= 155


def test_to_array_plain() -> None:
    img = Image.new("RGB", (5, 3), (255, 0, 51))
    arr = to_array(img, normalize=False)
    assert arr.dtype == np.float32
    assert arr.shape == (3, 3, 5)
    assert arr.flags.c_contiguous
    for channel, value in enumerate((1.0, 0.0, 0.2)):
        assert np.allclose(arr[channel], value, atol=1e-7, rtol=0)


def test_to_array_normalised() -> None:
    img = Image.new("RGB", (4, 2), (255, 0, 51))
    arr = to_array(img, normalize=True)
    assert arr.dtype == np.float32
    assert arr.shape == (3, 2, 4)
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        assert np.allclose(arr[channel], value, atol=1e-6, rtol=0)


def test_to_array_requires_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        to_array(Image.new("L", (2, 2)), normalize=False)


def test_constants() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    expected = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
    assert isinstance(IMAGE_EXTENSIONS, frozenset)
    assert expected == IMAGE_EXTENSIONS
