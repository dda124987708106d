"""PNG encoding at the speed of ISA-L's deflate.

Deflate is most of what drawing costs: a 336x224 photo's 13 layer pictures and overview are
about 10 Mpx, which Pillow's zlib (level 1) deflated in 130 ms of the 270 ms a photo took to
draw. Pillow cannot use another deflate, so the PNG container (a signature and four kinds of
chunk, RFC 2083) is written here around ``isal.isal_zlib`` (Intel's ISA-L, 4x faster than
zlib at level 1 and smaller output on these pictures; it releases the GIL, so encoder threads
run in parallel). Every row has PNG filter 0 (none): the pictures are flat colours, text and
colour-map tiles, where filtering costs time and buys nothing (palette pictures are never
filtered, as libpng advises). Without ``isal`` (a platform with no wheel) the standard
library's zlib does the same job, more slowly.
"""

from __future__ import annotations

import struct
import zlib
from types import ModuleType

import numpy as np
from PIL import Image

deflate: ModuleType
try:
    from isal import isal_zlib as deflate
except ImportError:  # pragma: no cover - isal has wheels for every platform torch has
    deflate = zlib

LEVEL = 1  # ISA-L's levels are 0-3; 1: 18 ms and 2.6 MB for a photo's layer pictures
SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPE = {"L": 0, "RGB": 2, "P": 3}  # 8 bits a sample in each


def encodable(image: Image.Image) -> bool:
    """Whether :func:`encode` takes this image (the modes vggviz draws in)."""
    return image.mode in COLOUR_TYPE


def encode(image: Image.Image) -> bytes:
    """``image`` (mode L, RGB or P) as the bytes of a PNG file."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    rows = np.empty((height, 1 + pixels[0].size), dtype=np.uint8)
    rows[:, 0] = 0  # each row's filter byte: none
    rows[:, 1:] = pixels.reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPE[image.mode], 0, 0, 0)
    parts = [SIGNATURE, _chunk(b"IHDR", header)]
    if image.mode == "P":
        palette = image.getpalette("RGB") or []
        if len(palette) < 3 * 256:  # every index drawn must have a colour
            entries = max(int(pixels.max(initial=0)) + 1, len(palette) // 3)
            palette = (palette + [0, 0, 0] * entries)[: 3 * entries]
        parts.append(_chunk(b"PLTE", bytes(palette)))
    parts.append(_chunk(b"IDAT", deflate.compress(rows, LEVEL)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
