#!/usr/bin/env python3
"""Make a folder of a few hundred photos from a few, for trying ``vggviz top`` at scale.

Each source photo gives ``--per-photo`` variants: a random crop (from close-ups of a tenth of
the photo to the whole of it, aspect 3:4 to 4:3), flipped left-right half of the time, and
rescaled so its shorter side is 224-448 px. The same seed gives the same files on every
machine; each photo has its own random stream, so adding a photo changes no other's variants.

    python examples/make_folder.py /tmp/photos300              # 15 photos x 20 = 300 files
    vggviz top /tmp/photos300 -o /tmp/top --arch vgg16 --weights vgg16_features.pth

Needs only Pillow. The default source is ``examples/photos/``: the 15 free sample photos that
come with the repository (licences in ``examples/README.md``).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageOps

DEFAULT_PHOTOS = Path(__file__).resolve().parent / "photos"
SUFFIXES = {".jpg", ".jpeg", ".png"}
MIN_AREA = 0.1  # smallest crop, as a share of the photo: close-ups of eyes, letters, coins
SHORT_SIDE = (224, 448)  # rescaled shorter side; vggviz resizes to --size 224 in any case


def variant(photo: Image.Image, rng: random.Random) -> Image.Image:
    """One random crop of ``photo``, maybe mirrored, rescaled."""
    w, h = photo.size
    # log-uniform area: as many close-ups as wide views
    area = w * h * math.exp(rng.uniform(math.log(MIN_AREA), 0.0))
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = min(w, max(16, round(math.sqrt(area * aspect))))
    ch = min(h, max(16, round(math.sqrt(area / aspect))))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = photo.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    short = rng.randint(*SHORT_SIDE)
    scale = short / min(cw, ch)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    return out.resize(size, Image.Resampling.LANCZOS)


def make_folder(photos: Path, out: Path, per_photo: int, seed: int) -> list[Path]:
    sources = sorted(p for p in photos.iterdir() if p.suffix.lower() in SUFFIXES)
    if not sources:
        raise SystemExit(f"make_folder: no photos in {photos}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        with Image.open(source) as im:
            photo = ImageOps.exif_transpose(im).convert("RGB")
        rng = random.Random(f"{seed}:{source.name}")  # str seeds are hashed the same everywhere
        for i in range(per_photo):
            path = out / f"{source.stem}-{i:03d}.jpg"
            variant(photo, rng).save(path, quality=90)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the variants into")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="source folder")
    parser.add_argument("--per-photo", type=int, default=20, help="variants per photo (20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.photos.is_dir():
        parser.error(f"--photos {args.photos}: not a folder")
    written = make_folder(args.photos, args.out, args.per_photo, args.seed)
    print(f"{len(written)} images in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
