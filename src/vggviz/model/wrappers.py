"""Where a training checkpoint keeps its weights, what torchvision calls them, and the class
names stored beside them: plain mappings in, plain names out (nothing is read from disk here).

``where`` in the functions below is the file as messages show it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vggviz.core.errors import WeightsError

WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "state_dict_ema")
NAME_KEYS = ("classes", "class_names", "class_to_idx", "idx_to_class")
HYPER_PARAMETERS = "hyper_parameters"  # Lightning's saved hparams, where names often are
_DROPPED = ("module", "_orig_mod")  # wrapper modules' names, anywhere in a key


def unwrap(where: str, obj: Any) -> tuple[str | None, Any, list[Mapping]]:
    """(where the weights were, the state dict or module, the wrappers passed through)."""
    outer: list[Mapping] = []
    trail: list[str] = []
    while len(trail) <= 3:
        if isinstance(obj, nn.Module) or (isinstance(obj, Mapping) and _is_state_dict(obj)):
            return "/".join(trail) or None, obj, outer
        if not isinstance(obj, Mapping):
            raise WeightsError(
                f"{where}: holds a {type(obj).__name__}, not a state dict "
                "(a mapping of names to tensors); save model.state_dict()"
            )
        outer.append(obj)
        key = _weights_entry(where, obj)
        trail.append(key)
        obj = obj[key]
    raise WeightsError(f"{where}: no state dict found under {'/'.join(trail)}")


def _is_state_dict(obj: Mapping) -> bool:
    """Mostly tensors and nothing that holds weights itself (a few odd entries are then
    reported as such, not unwrapped)."""
    if any(isinstance(v, nn.Module) or _holds_weights(v) for v in obj.values()):
        return False
    tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
    return bool(obj) and tensors * 2 > len(obj)


def _weights_entry(where: str, wrapper: Mapping) -> str:
    """The entry of a training checkpoint that holds the weights."""
    for key in WRAPPERS:
        if _holds_weights(wrapper.get(key)):
            return key
    candidates = [k for k, v in wrapper.items() if isinstance(k, str) and _holds_weights(v)]
    if len(candidates) > 1:  # e.g. a model and its optimizer: the one with VGG names
        vgg_like = [k for k in candidates if _looks_like_vgg(wrapper[k])]
        candidates = vgg_like or candidates
    if len(candidates) == 1:
        return candidates[0]
    entries = ", ".join(_describe_entry(k, v) for k, v in list(wrapper.items())[:6])
    if candidates:
        raise WeightsError(
            f"{where}: several state dicts ({', '.join(map(repr, candidates))}), "
            f"none of them under a usual name ({', '.join(WRAPPERS)}); save the model's alone"
        )
    raise WeightsError(
        f"{where}: holds no state dict (entries: {entries}); save model.state_dict() in it"
    )


def _holds_weights(value: object) -> bool:
    if isinstance(value, nn.Module):
        return True
    if not isinstance(value, Mapping) or not value:
        return False
    return _is_state_dict(value) or any(_holds_weights(v) for v in value.values())


def _looks_like_vgg(value: object) -> bool:
    """A module, or a mapping with (maybe deeper) names of a VGG's conv part."""
    if isinstance(value, nn.Module):
        return True
    if not isinstance(value, Mapping):
        return False
    keys = [k for k in value if isinstance(k, str)]
    if any("features." in k or _FEATURES_ONLY.match(k) for k in keys):
        return True
    return any(_looks_like_vgg(v) for v in value.values())


def _describe_entry(key: object, value: object) -> str:
    return f"{key} ({type(value).__name__})"


def left_out(outer: list[Mapping], wrapper: str | None, names: tuple[str, Any] | None) -> list[str]:
    """The wrappers' other entries (epoch, optimizer, ...), as ``name (type)``."""
    used = set((wrapper or "").split("/"))
    if names and "." not in names[0]:
        used.add(names[0])  # hyper_parameters hold more than names: still listed
    return [
        _describe_entry(key, value)
        for mapping in outer
        for key, value in mapping.items()
        if key not in used
    ]


_FEATURES_ONLY = re.compile(r"\d+\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def normalise(
    where: str, keys: list[str]
) -> tuple[dict[str, str], tuple[str, ...], str | None, list[str]]:
    """torchvision's name for each key that belongs to the VGG: ({new: old}, prefixes removed,
    prefix added, the keys left out)."""
    removed: list[str] = []
    renamed: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        kept = [p for p in parts if p not in _DROPPED]
        for part in _DROPPED:
            if part in parts and f"{part}." not in removed:
                removed.append(f"{part}.")
        renamed[key] = ".".join(kept)
    added = None
    new_names = list(renamed.values())
    if not any(n.startswith(("features.", "classifier.")) for n in new_names):
        if new_names and all(_FEATURES_ONLY.match(n) for n in new_names):
            renamed = {k: f"features.{n}" for k, n in renamed.items()}
            added = "features."
        else:
            prefixes = {n[: n.index("features.")] for n in new_names if ".features." in f".{n}"}
            if len(prefixes) == 1 and (prefix := prefixes.pop()):
                removed.append(prefix)
                renamed = {k: n.removeprefix(prefix) for k, n in renamed.items()}
    names: dict[str, str] = {}
    left: list[str] = []
    for old, new in renamed.items():
        if not new.startswith(("features.", "classifier.")):
            left.append(key_name(old))
            continue
        if new in names:
            raise WeightsError(
                f"{where}: two tensors are named {key_name(new)} once prefixes are removed "
                f"({key_name(names[new])} and {key_name(old)}); save one model's state dict"
            )
        names[new] = old
    return names, tuple(removed), added, left


def class_names(outer: list[Mapping] | Mapping) -> tuple[str, list[str]] | None:
    """(where, names) of the classes, from the usual entries or Lightning's hparams."""
    mappings = [outer] if isinstance(outer, Mapping) else outer
    for mapping in mappings:
        places: list[tuple[str, Any]] = [(k, mapping.get(k)) for k in NAME_KEYS]
        hparams = mapping.get(HYPER_PARAMETERS)
        if isinstance(hparams, Mapping):
            places += [(f"{HYPER_PARAMETERS}.{k}", hparams.get(k)) for k in NAME_KEYS]
        for where, value in places:
            names = _names(value)
            if names:
                return where, names
    return None


def _names(value: object) -> list[str] | None:
    """Class names from a list, a name -> index or an index -> name mapping."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if not isinstance(value, Mapping) or not value:
        return None
    pairs = []
    for k, v in value.items():
        if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool):
            pairs.append((v, k))  # class_to_idx
        elif isinstance(v, str) and (isinstance(k, int) or (isinstance(k, str) and k.isdigit())):
            pairs.append((int(k), v))  # idx_to_class
        else:
            return None
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))):
        return None
    return [name for _, name in pairs]


def short(value: object, most: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def key_name(key: str) -> str:
    """A key as a message shows it: as is when plain, quoted and shortened when it holds
    line breaks or control characters or is very long (messages stay one line)."""
    return key if key.isprintable() and len(key) <= 120 else short(key, 120)


def few(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
