"""What a pickle would import to load, read from its opcodes: never unpickled, so nothing in
it runs. Used to say what a file that ``weights_only`` refuses holds (a model saved whole
names its class) without trusting it."""

from __future__ import annotations

import argparse
import io
import pathlib
import pickle
import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch

# harmless classes common in training checkpoints' extras (Lightning hparams, argparse
# options); allowing them lets weights_only read such files
HARMLESS = (argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath)


def refusal(err: pickle.UnpicklingError) -> str | None:
    """What ``weights_only`` refused (None: the pickle itself is damaged): the line of torch's
    message that names it, without torch's advice about its own options."""
    text = str(err)
    if "Weights only load failed" not in text:
        return None
    for line in text.split("\n"):  # a global's name may hold U+2028 or U+0085
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip()
            return reason.split(" was not an allowed global")[0].removeprefix(
                "Unsupported global: GLOBAL "
            )
    return "code that weights-only loading refuses"


def unsafe_globals(path: Path, kind: str) -> list[str]:
    """The classes and functions a pickle would import to load, that ``weights_only``
    refuses, in order of appearance (the saved object's own class first)."""
    allowed = set(_allowed_globals())
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                data = next(m for m in archive.namelist() if m.endswith("data.pkl"))
                found = list(_pickle_globals(io.BytesIO(archive.read(data)), 1))
        else:
            with path.open("rb") as f:  # magic number, protocol, system info, then the object
                found = list(_pickle_globals(f, 4))
    except (StopIteration, OSError, zipfile.BadZipFile):
        return []
    unsafe: list[str] = []
    for name in found:
        if name not in allowed and name not in unsafe:
            unsafe.append(name)
    return unsafe


def _allowed_globals() -> list[str]:
    names = [f"{c.__module__}.{c.__qualname__}" for c in HARMLESS]
    names += [
        f"{g.__module__}.{g.__qualname__}"
        for g in getattr(torch.serialization, "get_safe_globals", list)()
        if hasattr(g, "__qualname__")
    ]
    try:  # torch's own list (private; without it every global counts as unsafe)
        from torch import _weights_only_unpickler

        names += list(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):
        pass
    return names


_STRINGS = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING"}
_STRINGS |= {"SHORT_BINSTRING"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_NO_PUSH = {"PROTO", "FRAME", "MEMOIZE", "STOP", "POP", "POP_MARK"} | _MEMO_PUT


def _pickle_globals(data: IO[bytes], pickles: int) -> Iterator[str]:
    """``module.name`` of every GLOBAL and STACK_GLOBAL in the next ``pickles`` pickles,
    read by opcode only (pickletools never imports or calls anything)."""
    for _ in range(pickles):
        pushed: list[str | None] = []  # what each opcode pushed, when it was a string
        memo: dict[int, str | None] = {}
        try:
            for op, arg, _pos in pickletools.genops(data):
                name = op.name
                if name == "GLOBAL":  # protocols 0-2 spell builtins as Python 2 did
                    yield str(arg).replace(" ", ".").replace("__builtin__.", "builtins.")
                    pushed.append(None)
                elif name == "STACK_GLOBAL":
                    module, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
                    if isinstance(module, str) and isinstance(attr, str):
                        yield f"{module}.{attr}"
                    pushed.append(None)
                elif name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif name in _MEMO_PUT:
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif name in _MEMO_GET:
                    pushed.append(memo.get(int(arg)))
                elif name in _STRINGS:
                    pushed.append(arg if isinstance(arg, str) else None)
                elif name not in _NO_PUSH:
                    pushed.append(None)
        except (ValueError, EOFError, pickle.UnpicklingError):
            return
