"""Reading a weights file in every form people save one, without ever running its code.

A tutorial reader's checkpoint may be a plain state dict, PyTorch's documented general
checkpoint (``{"epoch", "model_state_dict", "optimizer_state_dict", "loss"}``), a Lightning
``.ckpt``, pytorch/examples' ``.pth.tar``, a ``.safetensors`` file, a model saved whole, or a
TorchScript archive; its names may carry ``module.`` (DataParallel, DDP), ``_orig_mod.``
(``torch.compile``) or ``model.`` (Lightning). :func:`read_checkpoint` turns any of them into
one :class:`Checkpoint`: tensor names as torchvision's VGG has them, shapes and dtypes known
before any weight is read, the tensors read on demand (memory-mapped where the format allows),
and a record of what was unwrapped, renamed and left out.

Safety: PyTorch files are read with ``weights_only=True``, which refuses anything that would
call code; a file that needs code (a pickled module, TorchScript) is loaded only when the
caller trusts it, and is otherwise refused with both ways out. The code it would run is
named from the pickle's opcodes, never by unpickling it.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vggviz.core.errors import WeightsError
from vggviz.core.text import display, first_line
from vggviz.model.pickles import HARMLESS, refusal, unsafe_globals
from vggviz.model.wrappers import class_names, few, key_name, left_out, normalise, short, unwrap

SUFFIXES = (".pth", ".pt", ".pth.tar", ".tar", ".ckpt", ".bin", ".safetensors")
_MODEL_MODULES = ("torch.nn.modules.", "torch.nn.parallel.", "torchvision.models.", "timm.")
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's pre-1.6 format
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class UntrustedCheckpointError(WeightsError):
    """A file that can only be loaded by running code from it (a model pickled whole, a
    TorchScript archive). :meth:`spelled` names the way out in the caller's own terms (the
    command line's flag, the library's argument)."""

    def __init__(self, path: Path, what: str, resave: str) -> None:
        self.path, self.what, self.resave = path, what, resave
        super().__init__(
            param="trust_checkpoint",
            ways_out=lambda spell: (
                f"{shown(path)}: {what}, which runs code when loaded; "
                f"if you made it yourself, use {spell('trust_checkpoint')}, "
                f"or re-save it as a state dict in Python: {resave}"
            ),
        )


@dataclass(frozen=True)
class Form:
    """How the weights were stored, and what it took to get torchvision's names back."""

    format: str  # "PyTorch (zip)", "PyTorch (legacy)", "safetensors", "TorchScript", ...
    wrapper: str | None = None  # the entry holding the weights, e.g. "model_state_dict"
    removed: tuple[str, ...] = ()  # prefixes taken off the names: "module.", "model." ...
    added: str | None = None  # "features." for a conv part saved on its own

    def describe(self) -> str:
        parts = [self.format]
        if self.wrapper:
            parts.append(f"weights under {self.wrapper!r}")
        if self.removed:
            parts.append("prefix " + ", ".join(repr(p) for p in self.removed) + " removed")
        if self.added:
            parts.append(f"{self.added!r} added (the conv part alone)")
        return "; ".join(parts)


@dataclass
class Checkpoint:
    """A weights file's tensors under torchvision's names, read on demand."""

    path: Path
    form: Form
    shapes: dict[str, tuple[int, ...]]  # name -> shape, for every tensor kept
    dtypes: dict[str, torch.dtype]
    entries: list[str] = field(default_factory=list)  # a wrapper's other entries, described
    others: list[str] = field(default_factory=list)  # tensors outside the VGG, as named
    class_names: list[str] | None = None  # as the file stores them, not yet checked
    names_from: str | None = None  # where: "class_to_idx", "hyper_parameters.classes" ...
    head_kinds: list[str] | None = None  # module types of a held model's classifier
    _fetch: Callable[[list[str]], dict[str, torch.Tensor]] | None = None

    @property
    def ignored(self) -> list[str]:
        """What the file holds besides the VGG's weights, described for a person."""
        others = [f"{len(self.others)} tensor(s) outside the VGG: {few(self.others)}"]
        return self.entries + (others if self.others else [])

    @property
    def dtype_names(self) -> list[str]:
        """The floating-point types of the weights, most common first."""
        counts: dict[str, int] = {}
        for name, dtype in self.dtypes.items():
            if dtype.is_floating_point and not name.endswith("num_batches_tracked"):
                key = str(dtype).removeprefix("torch.")
                counts[key] = counts.get(key, 0) + 1
        return sorted(counts, key=lambda k: -counts[k])

    def tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors of ``names`` (those the file has), read now (mapped where it can)."""
        assert self._fetch is not None, "the checkpoint's tensors were released"
        return self._fetch([n for n in names if n in self.shapes])

    def release(self) -> None:
        """Let go of the file's tensors (its memory mapping) once the model holds its own."""
        self._fetch = None


def read_checkpoint(path: str | Path, *, trust: bool = False) -> Checkpoint:
    """Every form of VGG weights file as one :class:`Checkpoint`; :class:`WeightsError` (one
    line: the file, what it is, what to do) for anything else. ``trust``: also load files that
    run code when loaded; only for files the user made."""
    path = Path(path)
    _check_file(path)
    kind = _sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    form, obj, kinds = _load_torch(path, kind, trust)
    wrapper, state, outer = unwrap(shown(path), obj)
    if isinstance(state, nn.Module):  # a model saved whole inside a wrapper
        kinds = _classifier_kinds(state)
        state = state.state_dict()
    for key, value in state.items():
        problem = _tensor_problem(key, value)
        if problem:
            raise WeightsError(
                f"{shown(path)}: {problem} "
                "(a state dict maps names to dense floating-point tensors)"
            )
    names, removed, added, others = normalise(shown(path), list(state))
    found = class_names(outer)
    tensors = {new: state[old] for new, old in names.items()}
    checkpoint = Checkpoint(
        path=path,
        form=Form(form, wrapper, removed, added),
        shapes={k: tuple(v.shape) for k, v in tensors.items()},
        dtypes={k: v.dtype for k, v in tensors.items()},
        entries=left_out(outer, wrapper, found),
        others=others,
        class_names=found[1] if found else None,
        names_from=found[0] if found else None,
        head_kinds=kinds,
        _fetch=lambda wanted: {n: tensors[n] for n in wanted},
    )
    return checkpoint


# --- The file itself ------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    """Refuse what is not a weights file at all before any reader sees it."""
    try:
        if path.is_dir():
            inside = sorted(
                p.name for p in path.iterdir() if p.is_file() and _suffix(p) in SUFFIXES
            )
            hint = f"; it holds {', '.join(inside[:3])}: give one of those" if inside else ""
            raise WeightsError(f"{shown(path)}: a folder, not a weights file{hint}")
        size = path.stat().st_size
        if not path.is_file():
            raise WeightsError(
                f"{shown(path)}: not a regular file (a device or a pipe); save the weights "
                "to a file and give that"
            )
    except FileNotFoundError:
        raise WeightsError(f"{shown(path)}: no such weights file") from None
    except OSError as err:
        raise WeightsError(f"{shown(path)}: cannot be read ({_os_reason(err)})") from None
    if size == 0:
        raise WeightsError(
            f"{shown(path)}: an empty file (0 bytes); was its saving cut short? save it again"
        )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".pth.tar" if name.endswith(".pth.tar") else path.suffix.lower()


def _sniff(path: Path) -> str:
    """The format by the file's first bytes: zip, torchscript, legacy, safetensors, other."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as err:
        raise WeightsError(f"{shown(path)}: cannot be read ({_os_reason(err)})") from None
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise WeightsError(
                f"{shown(path)}: a truncated zip archive (its end is missing); was its saving or "
                "copying cut short? save or copy it again"
            )
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise WeightsError(
                f"{shown(path)}: a damaged zip archive ({err}); save it again"
            ) from None
        scripted = any(m.endswith("/constants.pkl") or "/code/" in m for m in members)
        return "torchscript" if scripted else "zip"
    if head.startswith(_LEGACY_MAGIC):
        return "legacy"
    if head.startswith(b"version https://git-lfs"):
        raise WeightsError(
            f"{shown(path)}: a Git LFS pointer, not the weights themselves; "
            "fetch them with git lfs pull"
        )
    if head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        raise WeightsError(
            f"{shown(path)}: a web page, not weights (a download that went wrong?); "
            "download it again"
        )
    if _suffix(path) == ".safetensors" or (len(head) > 8 and head[8:9] == b"{"):
        return "safetensors"
    return "other"


# --- PyTorch files -----------------------------------------------------------------------------

_FORMATS = {
    "zip": "PyTorch (zip)",
    "legacy": "PyTorch (legacy format)",
    "other": "PyTorch",
    "torchscript": "TorchScript archive",
}


def _load_torch(path: Path, kind: str, trust: bool) -> tuple[str, Any, list[str] | None]:
    """(format, loaded object, classifier module types if a model was loaded whole)."""
    if kind == "torchscript":
        if not trust:
            raise UntrustedCheckpointError(
                path, "a TorchScript archive (torch.jit.save)", _resave(path, "torch.jit.load({})")
            )
        module = _quietly(lambda: torch.jit.load(str(path), map_location="cpu"))
        return _FORMATS[kind], module, _classifier_kinds(module)
    try:
        obj = _quietly(lambda: _weights_only(path, mmap=kind == "zip"))
    except pickle.UnpicklingError as err:
        refused = refusal(err) if kind != "other" else None  # torch's files have a magic
        unsafe = unsafe_globals(path, kind) if refused is not None else []
        if refused is None:
            raise WeightsError(_unreadable(path, kind, err)) from None
        whole = any(g.startswith(_MODEL_MODULES) for g in unsafe)
        if not trust:
            if whole:
                what = f"a whole pickled model ({unsafe[0]}, saved by torch.save(model))"
                resave = _resave(path, "torch.load({}, weights_only=False)")
            else:
                needs = few(unsafe) if unsafe else refused
                what = f"a checkpoint that needs {needs} to load"
                resave = "torch.save(model.state_dict(), 'weights.pth') where you trained it"
            raise UntrustedCheckpointError(path, what, resave) from None
        obj = _quietly(lambda: torch.load(path, map_location="cpu", weights_only=False))
        form = f"{_FORMATS[kind]}, pickled model {unsafe[0]}" if whole else _FORMATS[kind]
        return form, obj, _classifier_kinds(obj) if isinstance(obj, nn.Module) else None
    except Exception as err:
        raise WeightsError(_unreadable(path, kind, err)) from None
    return _FORMATS[kind], obj, None


def _weights_only(path: Path, mmap: bool) -> Any:
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with allow(list(HARMLESS)) if allow else contextlib.nullcontext():
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _quietly(load: Callable[[], Any]) -> Any:
    """torch's notes while loading (odd contents, TorchScript's deprecation) are not the
    user's business: problems are reported below in messages of our own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load()


def _unreadable(path: Path, kind: str, err: BaseException) -> str:
    reason = _reason(err)
    if kind == "legacy" and ("EOF" in reason or isinstance(err, EOFError)):
        return (
            f"{shown(path)}: a PyTorch file (legacy format) that is cut short ({reason}); "
            "save it again"
        )
    if kind == "other":  # torch's reason would only say which byte it did not expect
        return (
            f"{shown(path)}: not a PyTorch or safetensors file (neither format's first bytes); "
            "save the weights with torch.save(model.state_dict(), FILE)"
        )
    return f"{shown(path)}: a damaged PyTorch file ({reason}); save it again"


def _resave(path: Path, load: str) -> str:
    suffix = _suffix(path)
    stem = path.name[: -len(suffix)] if suffix in SUFFIXES else path.stem
    target = path.with_name(f"{stem}_state_dict.pth")
    return f"torch.save({load.format(repr(str(path)))}.state_dict(), {str(target)!r})"


def _classifier_kinds(module: object) -> list[str] | None:
    classifier = getattr(module, "module", module)  # DataParallel holds the model
    classifier = getattr(classifier, "classifier", None)
    if isinstance(classifier, nn.Sequential):
        return [getattr(m, "original_name", type(m).__name__) for m in classifier]
    return None


# --- safetensors ---------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> Checkpoint:
    """Names, shapes and dtypes from the header; tensors read only when asked for."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            metadata = f.metadata() or {}
            info = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in keys}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            f"{shown(path)}: not a valid safetensors file ({_reason(err)}); is it complete? "
            "download or save it again"
        ) from None
    for key, (_shape, dtype) in info.items():
        torch_dtype = _SAFETENSORS_DTYPES.get(dtype)
        if key.endswith("num_batches_tracked"):
            continue
        if torch_dtype is None or not torch_dtype.is_floating_point:
            what = "not floating point" if torch_dtype else "a type vggviz does not read"
            raise WeightsError(
                f"{shown(path)}: {key_name(key)} holds {dtype} values, {what} "
                "(a state dict maps names to dense floating-point tensors)"
            )
    names, removed, added, others = normalise(shown(path), keys)
    found = class_names({k: _json(v) for k, v in metadata.items()})

    def fetch(wanted: list[str]) -> dict[str, torch.Tensor]:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {n: f.get_tensor(names[n]) for n in wanted}

    return Checkpoint(
        path=path,
        form=Form("safetensors", None, removed, added),
        shapes={new: tuple(info[old][0]) for new, old in names.items()},
        dtypes={
            new: _SAFETENSORS_DTYPES.get(info[old][1], torch.int64) for new, old in names.items()
        },
        others=others,
        class_names=found[1] if found else None,
        names_from=f"metadata {found[0]}" if found else None,
        _fetch=fetch,
    )


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- Tensors -----------------------------------------------------------------------------------


def _tensor_problem(key: object, value: object) -> str | None:
    """Why ``key: value`` cannot be a weight of a VGG (None if it can): only string names and
    dense, real floating-point tensors with data; BatchNorm's step counter is an integer."""
    if not isinstance(key, str):
        return f"key {short(key)} ({type(key).__name__}) is not a name"
    key = key_name(key)
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


def shown(path: str | Path) -> str:
    """A file name as a one-line message shows it: as is, or quoted with its line breaks,
    control characters and undecodable bytes escaped."""
    text = str(path)
    return text if text.isprintable() else f"'{display(text)}'"


def _reason(err: BaseException) -> str:
    """The first line of an error, without torch's advice about its own options."""
    return first_line(str(getattr(err, "reason", "") or err)) or type(err).__name__


def _os_reason(err: OSError) -> str:
    from vggviz.core.text import reason

    return reason(err)
