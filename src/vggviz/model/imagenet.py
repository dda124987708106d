"""torchvision's ImageNet weights: where torch.hub caches them, fetching them, importing a
copied file, and a copy that can be memory-mapped."""

from __future__ import annotations

import hashlib
import shutil
import socket
import zipfile
from pathlib import Path

import torch

from vggviz.core.errors import UsageError, WeightsError
from vggviz.core.files import atomic_file
from vggviz.core.interrupts import interruptible
from vggviz.core.text import first_line
from vggviz.core.vocabulary import ARCHS, IMAGENET_FILES

IMAGENET_WEIGHTS = "IMAGENET1K_V1"
DOWNLOAD_TIMEOUT_S = 30  # an offline compute node should fail fast, not hang


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise UsageError(f"unknown {arch!r}: expected one of {', '.join(ARCHS)}", param="arch")
    return arch


def imagenet_cache_path(arch: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet checkpoint; honours TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILES[check_arch(arch)]


def download_imagenet(arch: str, progress: bool = True) -> Path:
    """Fetch the ImageNet checkpoint into the cache (torchvision progress bar, hash check)."""
    path = imagenet_cache_path(arch)
    if path.is_file():
        return path
    import torchvision

    url = torchvision.models.get_model_weights(arch)[IMAGENET_WEIGHTS].url
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with interruptible():  # minutes of network: Ctrl-C stops it at once, torch cleans up
            torch.hub.load_state_dict_from_url(
                url, progress=progress, check_hash=True, map_location="meta"
            )
    except Exception as err:  # network, HTTP, hash and disk errors all end the same way
        why = _reason(err)
        raise WeightsError(
            param="weights",
            ways_out=lambda spell: (
                f"ImageNet weights for {arch} are not cached at {path} and could not be "
                f"downloaded ({why}); copy the file there (vggviz weights import FILE), "
                f"or use {spell('weights', 'PATH')} or {spell('weights', 'random')}"
            ),
        ) from err
    finally:
        socket.setdefaulttimeout(previous)
    return path


def import_weights(file: str | Path) -> tuple[str, Path]:
    """Check a copied checkpoint against torchvision's hash (the 8 hex digits in its file name)
    and put it in the cache. Returns the architecture it belongs to and the cache path."""
    file = Path(file)
    if not file.is_file():
        raise WeightsError(f"{file}: no such file")
    with interruptible():  # hashing and copying 500 MB: Ctrl-C stops it at once
        digest = _sha256(file)
        for arch in ARCHS:
            target = imagenet_cache_path(arch)
            expected = target.stem.rsplit("-", 1)[-1]
            if digest.startswith(expected):
                with file.open("rb") as src, atomic_file(target) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                return arch, target
    raise WeightsError(
        f"{file}: sha256 {digest[:8]}... matches none of torchvision's VGG ImageNet checkpoints "
        f"(e.g. {imagenet_cache_path('vgg16_bn').name}); is it complete?"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reason(err: BaseException) -> str:
    return first_line(str(getattr(err, "reason", "") or err)) or type(err).__name__


def mappable_copy(path: Path, *, head: bool = False) -> Path:
    """``path`` if it can be memory-mapped, else a copy in the current format, made once in a
    ``vggviz`` folder beside it: the conv part only (``-features.pt``), or with the
    classifier too when ``head`` (``-full.pt``).

    torchvision's ImageNet checkpoints are in the legacy (pre-zip) format, which must be read
    whole (528 MB for vgg16_bn) on every run. The features copy holds only the 59 MB the maps
    need; the full copy serves the commands that run the classifier, and maps as fast. A
    cache that cannot be written just means the slow path.
    """
    if zipfile.is_zipfile(path):
        return path
    copy = path.parent / "vggviz" / f"{path.stem}-{'full' if head else 'features'}.pt"
    if copy.is_file() and copy.stat().st_mtime >= path.stat().st_mtime:
        return copy
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache: the checkpoint reader says what is wrong with it
        return path
    if isinstance(state, dict) and not head:
        state = {k: v for k, v in state.items() if k.startswith("features.")}
    try:
        with atomic_file(copy) as f:
            torch.save(state, f)
    except OSError:
        return path
    return copy
