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
# escaped in JSON too: lone surrogates (not UTF-8), and the line breaks JSON leaves raw that
# str.splitlines() would split a JSON line at (a script's reader of manifest.jsonl, say)
_JSON_ESCAPED = re.compile("[\ud800-\udfff\x85\u2028\u2029]")


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


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, split at "\n" alone: ``str.splitlines()`` also
    splits at U+2028, U+0085 and other characters that file names may hold."""
    return next((line.strip() for line in text.split("\n") if line.strip()), "")


def dumps(obj: object, **kwargs: Any) -> str:
    """JSON text that is valid UTF-8 whatever the file names: lone surrogates (undecodable
    bytes of a name) become ``\\uXXXX`` escapes, and so do U+0085, U+2028 and U+2029, so that
    a line of JSON Lines is one line even to ``str.splitlines()``. NaN and Inf are refused."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, **kwargs)
    return _JSON_ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# What would break a line or drive a terminal: C0 and C1 controls and DEL (newline, escape,
# U+0085), the line and paragraph separators, and the bidirectional overrides that would show
# a name reversed. Every character ``str.splitlines()`` splits at is among them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def display(text: str) -> str:
    """A name (or a message holding names) fit for one line of a terminal, a picture or a
    page: undecodable bytes shown as U+FFFD, and line breaks, control characters and
    direction overrides as backslash escapes (``new\\nline.png``), so that one bad input
    stays one line. JSON keeps the exact name; this is only how it is shown."""
    if _SURROGATE.search(text):
        text = os.fsencode(text).decode("utf-8", "replace")
    return _UNSAFE.sub(_escape, text)


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
