"""Building a VGG and putting weights into it: ImageNet, a file, or seeded random.

Only the modules the feature maps need (every conv, its BatchNorm and ReLU, the pools between
them) get real tensors on the chosen device; the classifier is left on the meta device, which
costs no memory. Files are memory-mapped, so a 528 MB checkpoint is read only where needed.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vggviz.core import vocabulary
from vggviz.core.errors import DeviceError, UsageError, WeightsError
from vggviz.core.files import atomic_file
from vggviz.core.values import parse_device
from vggviz.core.vocabulary import ModelSpec
from vggviz.model.architectures import ARCHS, IMAGENET_FILES, vgg
from vggviz.model.layers import ConvLayer, find_conv_layers

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISIONS = {name: _DTYPES[name] for name in vocabulary.PRECISIONS}  # torch dtype by name
DOWNLOAD_TIMEOUT_S = 30  # an offline compute node should fail fast, not hang


@dataclass
class LoadedModel:
    model: nn.Module
    arch: str
    weights: str  # what the weights are, for titles and records
    random: bool
    device: torch.device
    dtype: torch.dtype
    layers: list[ConvLayer]


def resolve_device(spec: str) -> torch.device:
    """``auto`` is CUDA when available; asking for CUDA where there is none is an error."""
    spec = parse_device(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"{spec}: CUDA is not available here; use cpu", param="device")
    device = torch.device(spec)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(
            f"{spec}: only {count} CUDA device(s) (cuda:0..cuda:{count - 1})", param="device"
        )
    return device


def bf16_is_native(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic has hardware support on ``device``. Without it (CPUs
    lacking AVX512-BF16 and AMX) torch emulates it, 50-150x slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def load(spec: ModelSpec) -> tuple[LoadedModel, str | None]:
    """:func:`load_model` for a command's model options, with the bf16 note when it applies."""
    loaded = load_model(
        spec.arch, spec.weights, seed=spec.seed, device=spec.device, precision=spec.precision
    )
    return loaded, bf16_note(loaded)


def bf16_note(loaded: LoadedModel) -> str | None:
    """A warning worth printing when bf16 was asked for on hardware that emulates it."""
    if loaded.dtype != torch.bfloat16 or bf16_is_native(loaded.device):
        return None
    return (
        f"note: {loaded.device} has no bfloat16 instructions (AVX512-BF16 or AMX); "
        "bf16 will be far slower than fp32 here"
    )


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise UsageError(f"unknown {arch!r}: expected one of {', '.join(ARCHS)}", param="arch")
    return arch


def build(arch: str, device: str | torch.device = "meta") -> nn.Module:
    """The architecture; on the meta device (the default) it costs no time or memory."""
    with torch.device(device):
        return vgg(check_arch(arch))


RNG_CHUNK = 1 << 20  # floats drawn at a time when skipping what torchvision draws for nothing


def build_random(arch: str, seed: int) -> nn.Module:
    """The conv part of ``torch.manual_seed(seed); torchvision.models.<arch>(weights=None)``,
    number for number, without the classifier (553 MB for vgg16) ever existing.

    torchvision's recipe: every module's default init in construction order (features, then
    the three classifier Linears: one uniform draw per element), then its init loop redraws
    each conv's weight (``kaiming_normal_``, fan_out) and zeroes biases; the classifier's own
    redraws come after the last conv, so they need not happen. The Linears' default draws
    are replayed into a small buffer: CPU ``uniform_`` takes one 32-bit number per float
    element in order, so chunks consume the generator exactly as one big tensor would
    (``tests/test_models.py`` checks the weights against torchvision). The classifier stays
    on the meta device.
    """
    model = build(arch, "meta")
    torch.manual_seed(seed)
    features = model.features.to_empty(device="cpu")
    with torch.no_grad():
        for module in features:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()  # conv default init draws; BatchNorm draws nothing
        for module in model.classifier:
            if isinstance(module, nn.Linear):
                _skip_uniform(module.weight.numel())
                if module.bias is not None:
                    _skip_uniform(module.bias.numel())
        for module in features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
    return model


def _skip_uniform(count: int) -> None:
    """Advance the default generator as ``torch.empty(count).uniform_()`` would."""
    buffer = torch.empty(min(count, RNG_CHUNK))
    while count > 0:
        n = min(count, RNG_CHUNK)
        buffer[:n].uniform_()
        count -= n


# --- ImageNet weights through torchvision's weights API and torch.hub's cache -----------------

IMAGENET_WEIGHTS = "IMAGENET1K_V1"


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
        torch.hub.load_state_dict_from_url(
            url, progress=progress, check_hash=True, map_location="meta"
        )
    except Exception as err:  # network, HTTP, hash and disk errors all end the same way
        raise WeightsError(
            f"ImageNet weights for {arch} are not cached at {path} and could not be downloaded "
            f"({_reason(err)}); copy the file there (vggviz weights import FILE), "
            f"or use --weights PATH or --weights random"
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
    text = str(getattr(err, "reason", "") or err).strip().splitlines()
    return text[0] if text else type(err).__name__


# --- State dict files ----------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt state dict, memory-mapped when the file allows it.

    ``weights_only=True``: a checkpoint can never run code. A ``{"state_dict": ...}`` wrapper
    is unwrapped; legacy (pre-zip) files, which cannot be mapped, are read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        with warnings.catch_warnings():
            # torch's notes on odd contents (sparse checks, TypedStorage) are not the
            # user's business: such files are refused below with a message of our own
            warnings.simplefilter("ignore", UserWarning)
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "zipfile" not in str(err) and "mmap" not in str(err):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: not a loadable state dict ({_reason(err)})") from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    for key, value in obj.items():
        problem = _tensor_problem(key, value)
        if problem:
            raise WeightsError(
                f"{path}: {problem} (a state dict maps names to dense floating-point tensors)"
            )
    return dict(obj)


def _tensor_problem(key: object, value: object) -> str | None:
    """Why ``key: value`` cannot be a weight of a VGG (None if it can): only string names and
    dense, real floating-point tensors with data; BatchNorm's step counter is an integer."""
    if not isinstance(key, str):
        return f"key {_short(key)} ({type(key).__name__}) is not a name"
    key = _name(key)
    if not isinstance(value, torch.Tensor):
        return f"{key} is not a tensor but {type(value).__name__}"
    if value.is_meta:
        return f"{key} is a meta tensor (a shape without data)"
    if value.is_quantized:
        return f"{key} is a quantized tensor ({value.dtype})"
    if value.is_nested or value.layout != torch.strided:
        return f"{key} is not a dense tensor (layout {value.layout})"
    if key.rsplit(".", 1)[-1] == "num_batches_tracked":
        return None  # BatchNorm's step counter: int64 by design, unused in eval mode
    if not value.is_floating_point():
        return f"{key} holds {value.dtype} values, not floating point"
    return None


def _short(value: object, most: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def _name(key: str) -> str:
    """A key as a message shows it: as is when plain, quoted and shortened when it holds
    line breaks or control characters or is very long (messages stay one line)."""
    return key if key.isprintable() and len(key) <= 120 else _short(key, 120)


def mappable_copy(path: Path) -> Path:
    """``path`` if it can be memory-mapped, else a features-only copy in the current format,
    made once in a ``vggviz`` folder beside it.

    torchvision's ImageNet checkpoints are in the legacy (pre-zip) format, which must be read
    whole (528 MB for vgg16_bn) on every run; the copy holds only the 59 MB the maps need and
    maps in milliseconds. A cache that cannot be written just means the slow path.
    """
    if zipfile.is_zipfile(path):
        return path
    copy = path.parent / "vggviz" / f"{path.stem}-features.pt"
    if copy.is_file() and copy.stat().st_mtime >= path.stat().st_mtime:
        return copy
    features = {k: v for k, v in read_state_dict(path).items() if k.startswith("features.")}
    try:
        with atomic_file(copy) as f:
            torch.save(features, f)
    except OSError:
        return path
    return copy


def _guess_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    convs = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 4]
    has_bn = any(k.endswith("running_mean") for k in state)
    counts = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}
    base = counts.get(len(convs))
    return f"{base}_bn" if base and has_bn else base


def _needed_modules(model: nn.Module, layers: list[ConvLayer]) -> list[tuple[str, nn.Module]]:
    """Leaf modules from the input up to the last conv's ReLU: all the maps ever need."""
    last = layers[-1].relu or layers[-1].bn or layers[-1].name
    needed = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue
        needed.append((name, module))
        if name == last:
            break
    return needed


def _fit(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    arch: str,
    source: str,
    needed: list[tuple[str, nn.Module]],
) -> None:
    """Refuse, naming what does not fit, any checkpoint not made for this architecture."""
    own = model.state_dict(keep_vars=True)
    unexpected = [_name(k) for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    wanted = [
        f"{name}.{key}"
        for name, module in needed
        for key, _ in [*module.named_parameters(), *module.named_buffers()]
        if key != "num_batches_tracked"  # absent from torchvision's 2017 checkpoints
    ]
    missing = [k for k in wanted if k not in state]
    if not (unexpected or shapes or missing):
        _check_finite(state, wanted, source)
        return
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if shapes:
        problems.append(f"wrong shape {_few(shapes)}")
    guess = _guess_arch(state)
    hint = (
        f"; it looks like a {guess} checkpoint (try --arch {guess})"
        if guess and guess != arch
        else ""
    )
    raise WeightsError(f"{source} does not fit {arch}: {'; '.join(problems)}{hint}")


def _check_finite(state: Mapping[str, torch.Tensor], keys: list[str], source: str) -> None:
    """Refuse NaN or Inf in the tensors the maps are computed from: one of them spreads to
    every map after it, and pictures of NaN are black (a warning would scroll away above a
    folder of useless pictures; nothing in a run can make such weights useful)."""
    for key in keys:
        tensor = state[key]
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        # min and max propagate NaN: 20-100x faster here than isfinite(tensor).all()
        if not bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all()):
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
            raise WeightsError(
                f"{source}: {key} holds {nan} NaN and {inf} infinite value(s) of "
                f"{tensor.numel()}; these weights cannot give meaningful maps"
            )


def _few(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_model(
    arch: str = "vgg16_bn",
    weights: str = "imagenet",
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> LoadedModel:
    """A frozen, eval-mode model whose conv part holds real weights on ``device``.

    ``weights``: "imagenet" (torchvision's cache, downloading if needed), "random" (exactly
    ``torch.manual_seed(seed); torchvision.models.<arch>(weights=None)``) or a file path.
    """
    check_arch(arch)
    if precision not in PRECISIONS:
        raise UsageError(
            f"{precision!r}: expected one of {', '.join(PRECISIONS)}", param="precision"
        )
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = PRECISIONS[precision]
    state: dict[str, torch.Tensor] | None = None
    if weights == "random":
        model = build_random(arch, seed)
        description = f"random (seed {seed})"
    else:
        path = mappable_copy(download_imagenet(arch)) if weights == "imagenet" else Path(weights)
        description = f"ImageNet ({IMAGENET_WEIGHTS})" if weights == "imagenet" else path.name
        state = read_state_dict(path)
        model = build(arch, "meta")
    layers = find_conv_layers(model)
    needed = _needed_modules(model, layers)
    if state is not None:
        _fit(model, state, arch, str(path), needed)
        model.load_state_dict(state, strict=False, assign=True)  # same module objects
    keep = {id(m) for _, m in needed}
    for _, module in model.named_modules():
        if list(module.children()):
            continue
        if id(module) not in keep:
            module.to("meta")  # the classifier: never run, so never held in memory
            continue
        for key, buf in module.named_buffers():
            if buf.is_meta:  # num_batches_tracked of old checkpoints: unused in eval mode
                setattr(module, key, torch.zeros((), dtype=buf.dtype))
        # channels-last conv weights: the forward pass is 35% faster on an AVX-512 CPU
        # (224x336: 97 instead of 150 ms), and it is the layout GPUs' tensor cores want
        module.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    model.eval().requires_grad_(False)
    return LoadedModel(model, arch, description, state is None, device, dtype, layers)
