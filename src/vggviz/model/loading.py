"""Building a VGG and putting weights into it: ImageNet, a file in any form, or seeded random.

Only the modules the feature maps need (every conv, its BatchNorm and ReLU, the pools between
them) get real tensors on the chosen device; unless the head is asked for, the classifier is
left on the meta device, which costs no memory. Files are memory-mapped where their format
allows, so a 528 MB checkpoint is read only where needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vggviz.core import vocabulary
from vggviz.core.errors import DeviceError, UsageError, WeightsError
from vggviz.core.values import parse_device
from vggviz.core.vocabulary import DEFAULT_ARCH, ModelSpec
from vggviz.model.architectures import ARCHS, Head, vgg
from vggviz.model.checkpoints import read_checkpoint, shown
from vggviz.model.contents import Contents, examine
from vggviz.model.imagenet import (
    IMAGENET_WEIGHTS,
    check_arch,
    download_imagenet,
    imagenet_cache_path,
    import_weights,
    mappable_copy,
)
from vggviz.model.layers import ConvLayer, find_conv_layers

__all__ = [
    "ARCHS",
    "PRECISIONS",
    "LoadedModel",
    "bf16_is_native",
    "build",
    "build_random",
    "check_arch",
    "download_imagenet",
    "imagenet_cache_path",
    "import_weights",
    "load",
    "load_model",
    "resolve_device",
]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISIONS = {name: _DTYPES[name] for name in vocabulary.PRECISIONS}  # torch dtype by name
IMAGENET_CLASSES = 1000


@dataclass
class LoadedModel:
    """A frozen, eval-mode VGG with real weights where they are used, and what they are."""

    model: nn.Module
    arch: str
    weights: str  # what the weights are, for titles and records
    random: bool
    device: torch.device
    dtype: torch.dtype
    layers: list[ConvLayer]
    head: bool = False  # model.classifier holds real weights and can run (asked for)
    classes: int | None = None  # the head's outputs; None when the weights have no head
    class_names: list[str] | None = None  # as the checkpoint stores them, one per output
    # the outputs are ImageNet's 1000 classes: torchvision's weights, random init (its
    # recipe's head), or a file whose head has 1000 outputs and no names of its own
    imagenet_head: bool = False
    contents: Contents | None = None  # what a weights file held: form, head, ignored entries


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


def load(spec: ModelSpec, *, head: bool = False) -> tuple[LoadedModel, str | None]:
    """:func:`load_model` for a command's model options, with the bf16 note when it applies."""
    loaded = load_model(
        spec.arch,
        spec.weights,
        seed=spec.seed,
        device=spec.device,
        precision=spec.precision,
        head=head,
        trust=spec.trust_checkpoint,
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


def build(arch: str, device: str | torch.device = "meta", head: Head | None = None) -> nn.Module:
    """The architecture, with ``head`` as its classifier when given (torchvision's otherwise);
    on the meta device (the default) it costs no time or memory."""
    with torch.device(device):
        return vgg(check_arch(arch), head)


RNG_CHUNK = 1 << 20  # floats drawn at a time when skipping what torchvision draws for nothing


def build_random(arch: str, seed: int, *, head: bool = False) -> nn.Module:
    """``torch.manual_seed(seed); torchvision.models.<arch>(weights=None)``, number for
    number: the conv part, and the classifier when ``head`` (553 MB for vgg16, so it stays
    on the meta device otherwise).

    torchvision's recipe: every module's default init in construction order (features, then
    the three classifier Linears: one uniform draw per element), then its init loop redraws
    each conv's weight (``kaiming_normal_``, fan_out) and zeroes biases, then draws each
    Linear's weight from N(0, 0.01). The Linears' default draws are overwritten, so they are
    replayed into a small buffer: CPU ``uniform_`` takes one 32-bit number per float element
    in order, so chunks consume the generator exactly as one big tensor would
    (``tests/test_models.py`` checks the weights against torchvision).
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
        if head:
            for module in model.classifier.to_empty(device="cpu"):
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0, 0.01)
                    nn.init.constant_(module.bias, 0)
    return model


def _skip_uniform(count: int) -> None:
    """Advance the default generator as ``torch.empty(count).uniform_()`` would."""
    buffer = torch.empty(min(count, RNG_CHUNK))
    while count > 0:
        n = min(count, RNG_CHUNK)
        buffer[:n].uniform_()
        count -= n


def _needed_modules(
    model: nn.Module, layers: list[ConvLayer], head: bool
) -> list[tuple[str, nn.Module]]:
    """Leaf modules the run computes: from the input up to the last conv's ReLU for the
    maps, every one (through the classifier) for the head."""
    last = layers[-1].relu or layers[-1].bn or layers[-1].name
    needed = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue
        needed.append((name, module))
        if name == last and not head:
            break
    return needed


def _check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse NaN or Inf in the tensors the run computes with: one of them spreads to every
    map after it, and pictures of NaN are black (a warning would scroll away above a folder
    of useless pictures; nothing in a run can make such weights useful)."""
    for key, tensor in state.items():
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


def load_model(
    arch: str | None = None,
    weights: str = "imagenet",
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    head: bool | None = False,
    trust: bool = False,
) -> LoadedModel:
    """A frozen, eval-mode model whose conv part holds real weights on ``device``.

    ``weights``: "imagenet" (torchvision's cache, downloading if needed), "random" (exactly
    ``torch.manual_seed(seed); torchvision.models.<arch>(weights=None)``) or a file in any
    form :func:`~vggviz.model.checkpoints.read_checkpoint` reads. ``arch``: None takes it
    from the file (vgg16_bn for imagenet and random); one the file does not fit is refused.
    ``head``: also load the classifier, on ``device`` and ready to run (refused when the
    weights have none); None: when the weights have one; False: the classifier stays on the
    meta device (never run, costs no memory). ``trust``: also
    load files that run code when loaded (pickled models, TorchScript).
    """
    if arch is not None:
        check_arch(arch)
    if precision not in PRECISIONS:
        raise UsageError(
            f"{precision!r}: expected one of {', '.join(PRECISIONS)}", param="precision"
        )
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = PRECISIONS[precision]
    contents: Contents | None = None
    classes, names, imagenet = IMAGENET_CLASSES, None, True
    if weights == "random":
        arch = arch or DEFAULT_ARCH
        head = head is not False  # torchvision's seeded init always has its head
        model = build_random(arch, seed, head=head)
        layers = find_conv_layers(model)
        needed = _needed_modules(model, layers, head)
        description = f"random (seed {seed})"
    else:
        if weights == "imagenet":
            arch = arch or DEFAULT_ARCH
            head = head is not False
            path = mappable_copy(download_imagenet(arch), head=head)
            description = f"ImageNet ({IMAGENET_WEIGHTS})"
        else:
            path = Path(weights)
            description = path.name
        contents = examine(read_checkpoint(path, trust=trust), arch)
        arch = contents.arch
        if head is None:
            head = contents.head is not None
        if head and contents.head is None:
            raise WeightsError(_no_head(contents))
        model = build(arch, "meta", contents.head if head else None)
        layers = find_conv_layers(model)
        needed = _needed_modules(model, layers, head)
        wanted = [
            f"{name}.{key}"
            for name, module in needed
            for key, _ in [*module.named_parameters(), *module.named_buffers()]
        ]
        state = contents.checkpoint.tensors(wanted)
        _check_finite(state, shown(path))
        model.load_state_dict(state, strict=False, assign=True)  # same module objects
        if weights != "imagenet":
            classes, names = contents.classes, contents.class_names
            imagenet = classes == IMAGENET_CLASSES and names is None
    _place(model, needed, device, dtype)
    if contents is not None:
        contents.checkpoint.release()  # every weight is the model's own now
    model.eval().requires_grad_(False)
    return LoadedModel(
        model,
        arch,
        description,
        weights == "random",
        device,
        dtype,
        layers,
        head=head,
        classes=classes,
        class_names=names,
        imagenet_head=imagenet,
        contents=contents,
    )


def _place(
    model: nn.Module, needed: list[tuple[str, nn.Module]], device: torch.device, dtype: torch.dtype
) -> None:
    """Needed modules onto ``device`` in ``dtype`` (an fp16 file's weights are cast here);
    every other one onto the meta device: never run, so never held in memory."""
    keep = {id(m) for _, m in needed}
    for _, module in model.named_modules():
        if list(module.children()):
            continue
        if id(module) not in keep:
            module.to("meta")
            continue
        for key, buf in module.named_buffers():
            if buf.is_meta:  # num_batches_tracked of old checkpoints: unused in eval mode
                setattr(module, key, torch.zeros((), dtype=buf.dtype))
        mapped = {key: t.data_ptr() for key, t in _tensors(module) if t.device.type == "cpu"}
        # channels-last conv weights: the forward pass is 35% faster on an AVX-512 CPU
        # (224x336: 97 instead of 150 ms), and it is the layout GPUs' tensor cores want
        module.to(device=device, dtype=dtype, memory_format=torch.channels_last)
        for key, t in _tensors(module):  # what .to() left in the memory-mapped file: copied,
            if mapped.get(key) == t.data_ptr():  # so the file's mapping is let go (65 MB of
                t.data = t.data.clone()  # pages a 528 MB checkpoint kept resident)
        if type(module) is nn.BatchNorm2d and device.type == "cpu":
            module.__class__ = InPlaceBatchNorm2d


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]


class InPlaceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in eval mode without autograd, writes its output over its input
    (the conv's output, which nothing else reads): one map fewer in memory at the forward's
    peak (154 MB for 8 photos of 336x224), and no fresh allocation to fault in. The numbers
    are the same to the bit: it is torch's own kernel, given its input as the output. Like
    VGG's ``ReLU(inplace=True)`` it says ``inplace``, so a hook that keeps the conv's output
    copies it first (:func:`vggviz.model.hooks.followed_in_place`)."""

    inplace = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and x.requires_grad
        if self.training or grad or self.running_mean is None or self.running_var is None:
            return super().forward(x)
        empty = x.new_empty(0)
        torch.ops.aten.native_batch_norm.out(
            x, self.weight, self.bias, self.running_mean, self.running_var, False, 0.0,
            self.eps, out=x, save_mean=empty, save_invstd=empty.clone(),
        )  # fmt: skip
        return x


def _no_head(contents: Contents) -> str:
    path = shown(contents.checkpoint.path)
    if contents.head_problem:
        return f"{path}: its classifier cannot be rebuilt ({contents.head_problem})"
    return (
        f"{path}: holds no classifier, only the conv layers' weights; save the whole "
        "model's state_dict() once its head is trained"
    )
