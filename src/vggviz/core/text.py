"""Text for people and for files: values shown in messages, names shown in pictures and on
terminals, JSON that stays valid whatever the file names, and what an OS error means.

Every module that words a message or writes JSON takes it from here, so a file name that is
not UTF-8 is shown, escaped and explained one way everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Sequence
from typing import Any

_SHOWN = 40  # longest value echoed in a message
_SURROGATE = re.compile("[\ud800-\udfff]")
# Line breaks to str.splitlines (and to JavaScript) that JSON leaves raw: a name holding one
# would split a JSON line in two for any reader that splits lines that way.
_ESCAPED = re.compile("[\ud800-\udfff\x85\u2028\u2029]")


def shown(text: str, quote: bool = True) -> str:
    """A value for a message (``repr`` unless ``quote`` is false), shortened when long: a
    240-digit count is noise."""
    short = text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
    return repr(short) if quote else short


def few(items: Sequence[str], n: int = 3) -> str:
    """The first ``n`` of ``items`` and a count of the rest: a message about a million missing
    shards stays one short line."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def dumps(obj: object, **kwargs: Any) -> str:
    """JSON text that is valid UTF-8 whatever the file names: lone surrogates (undecodable
    bytes of a name) become ``\\uXXXX`` escapes, and so do U+0085, U+2028 and U+2029, which
    ``str.splitlines`` and JavaScript take for line breaks: one record is one line for every
    reader. NaN and Inf are refused (not JSON)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, **kwargs)
    return _ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def display(text: str) -> str:
    """A name fit for a picture, a page or a terminal: undecodable bytes shown as U+FFFD."""
    return os.fsencode(text).decode("utf-8", "replace") if _SURROGATE.search(text) else text


# --- what an OS error means -----------------------------------------------------------------


def reason(err: OSError) -> str:
    """The short reason of an OS error, as a user reads it: "no space left on device"."""
    if err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    return str(err) or type(err).__name__


def cannot(verb: str, path: object, err: OSError) -> str:
    """``<path>: cannot <verb> (<reason>)``: one line naming the path and the reason."""
    return f"{display(str(path))}: cannot {verb} ({reason(err)})"


def write_error(path: object, err: OSError) -> str:
    """``<path>: cannot write (<reason>)``, for any OS error while writing."""
    return cannot("write", path, err)


def read_reason(err: OSError) -> str:
    """Why an input file cannot be read, in the words of a batch's error line."""
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, IsADirectoryError):
        return "is a directory, not an image file"
    name = os.strerror(err.errno) if err.errno else "unknown error"
    if err.errno == errno.EIO:
        name = "input/output error"
    return f"cannot read file ({name.lower()})"


def list_reason(err: OSError) -> str:
    """Why a folder of inputs cannot be listed."""
    if isinstance(err, PermissionError):
        return "cannot list folder (permission denied)"
    return f"cannot list folder ({(err.strerror or 'unknown error').lower()})"
