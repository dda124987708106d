"""The parts every vggviz page shares: its skeleton (head, inline CSS, the header with the
run's facts), escaping, and how numbers and counts are written.

Pages are static files with inline CSS and relative links, opened straight from disk.
Stdlib only: no torch, no click.
"""

from __future__ import annotations

import functools
import html
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from vggviz.core.files import atomic_file
from vggviz.core.text import display

TIMES = "\N{MULTIPLICATION SIGN}"

Link = Callable[[Any], str | None]  # record path -> URL relative to the index, or None

CSS = """
:root { color-scheme: light; --fg: #1d2330; --muted: #5d6779; --line: #dde2ea;
  --bg: #f4f6f9; --card: #fff; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
a { color: var(--accent); }
header.top { background: #1f2a44; color: #fff; padding: 18px 0 14px; }
header.top h1 { margin: 0 0 8px; font-size: 22px; font-weight: 600; }
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
dl.info { display: flex; flex-wrap: wrap; gap: 6px 8px; margin: 0; font-size: 13px; }
dl.info div { background: rgba(255,255,255,.12); border-radius: 4px; padding: 2px 8px; }
dl.info dt { display: inline; color: #b9c4dc; }
dl.info dt::after { content: ":"; }
dl.info dd { display: inline; margin: 0 0 0 4px; }
.summary { margin: 16px 0 8px; font-size: 16px; }
.summary .bad { color: #b3261e; font-weight: 600; }
.summary .skip { color: #8a5a00; }
nav.toc { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 12px; max-height: 13em; overflow: auto; }
nav.toc ol { margin: 0; padding: 0; list-style-position: inside; columns: 18em auto;
  column-gap: 24px; font-size: 13px; }
nav.toc li::marker { color: var(--muted); }
nav.toc li { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
nav.toc li.error a { color: #b3261e; }
nav.toc li.skipped a { color: #8a5a00; }
section.image { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  margin: 18px 0; padding: 14px 16px 16px; }
section.image h2 { margin: 0; font-size: 17px; word-break: break-all; }
.meta { color: var(--muted); font-size: 13px; margin: 2px 0 10px; }
.meta a.up { float: right; }
.badge { display: inline-block; font-size: 11px; font-weight: 600; letter-spacing: .04em;
  text-transform: uppercase; border-radius: 3px; padding: 1px 6px; margin-right: 6px;
  vertical-align: 2px; background: #e3e7ee; color: var(--muted); }
.badge.ok { background: #e2f3e6; color: #1e6b34; }
.badge.error { background: #fbe0de; color: #b3261e; }
.badge.skipped { background: #fdf0d5; color: #8a5a00; }
.errbox { background: #fdecea; border: 1px solid #f2b8b2; border-left: 5px solid #d93025;
  color: #8c1d18; border-radius: 4px; padding: 8px 12px; margin: 8px 0;
  white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, monospace;
  font-size: 13px; }
.note { background: #fdf6e3; border-left: 5px solid #e0a800; border-radius: 4px;
  padding: 6px 12px; margin: 8px 0; font-size: 13px; }
.overview img { display: block; max-width: 100%; max-height: 85vh; height: auto;
  border: 1px solid var(--line); }
table.layers { border-collapse: collapse; margin-top: 12px; font-size: 13px; width: 100%; }
table.layers th { text-align: left; font-weight: 600; color: var(--muted);
  border-bottom: 2px solid var(--line); padding: 4px 8px; white-space: nowrap; }
table.layers td { border-bottom: 1px solid var(--line); padding: 4px 8px; vertical-align: middle; }
table.layers tr:hover td { background: #f7f9fc; }
table.layers :is(td, th):nth-child(n+4):nth-child(-n+6) { text-align: right;
  font-variant-numeric: tabular-nums; white-space: nowrap; }
table.layers td:nth-child(7) { color: var(--muted); font-size: 12px; }
table.layers td:is(:nth-child(2), :nth-child(3)) { font-family: ui-monospace, monospace;
  font-size: 12px; white-space: nowrap; }
table.layers td:last-child { width: 172px; }
table.layers img, .files img { display: block; width: 160px; height: 100px; object-fit: contain;
  background: #eef1f5; border: 1px solid var(--line); }
.files { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 10px; font-size: 12px; }
.files a { display: block; max-width: 162px; word-break: break-all; }
figure.run { margin: 8px 0 16px; }
figure.run img { max-width: min(100%, 380px); border: 1px solid var(--line); }
figure.run figcaption { color: var(--muted); font-size: 13px; }
"""


def head(title: str, info: Iterable[tuple[str, Any]], css: str = "") -> str:
    """A page up to its ``<main>``: the document head with the shared CSS (and ``css``), and
    the header with ``title`` and the run's facts (key, value) as a strip of chips."""
    e = esc
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n<style>{CSS}{css}</style>\n</head>\n<body>\n"
        f'<header class="top" id="top"><div class="wrap">\n<h1>{e(title)}</h1>\n'
    ]
    items = "".join(f"<div><dt>{e(k)}</dt><dd>{e(text(v))}</dd></div>" for k, v in info)
    if items:
        parts.append(f'<dl class="info">{items}</dl>\n')
    parts.append('</div></header>\n<main class="wrap">\n')
    return "".join(parts)


FOOT = "</main>\n</body>\n</html>\n"


def number(value: Any) -> str:
    """Four significant digits: enough to compare layers, short enough for a column."""
    return f"{value:.4g}" if is_num(value) else esc(text(value))


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def text(value: Any) -> str:
    """Any JSON value as page text; None is empty, undecodable bytes are U+FFFD."""
    return "" if value is None else display(str(value))


def esc(value: Any) -> str:
    return html.escape(text(value), quote=True)


def is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_seq(value: Any) -> bool:
    """A JSON array; a string would otherwise be taken one character at a time."""
    return isinstance(value, list | tuple)


def write(out_dir: str | Path, name: str, body: Callable[[IO[str], Link], None]) -> Path:
    """``out_dir/<name>``, streamed by ``body(file, link)`` (``link``: record paths to URLs
    relative to the page) to a temporary name and moved into place: a reader, or a crash,
    never sees half a page, and an older page survives a failed rewrite."""
    out_dir = Path(out_dir)
    link = linker(out_dir)
    with atomic_file(out_dir / name, "w") as fh:
        body(fh, link)
    return out_dir / name


# --- the parts every per-image job's index page shares ------------------------------------


def status(record: Any) -> str:
    """A record's status, or 'unknown'; safe to use as a CSS class."""
    found = record.get("status") if isinstance(record, dict) else None
    return found if found in ("ok", "error", "skipped") else "unknown"


def summary(records: Sequence[Any], noun: str) -> str:
    """One line with the counts a reader checks first: how many, how many went wrong."""
    statuses = [status(r) for r in records]
    failed, skipped = statuses.count("error"), statuses.count("skipped")
    parts = [plural(len(records), noun)]
    parts.append(f'<span class="{"bad" if failed else ""}">{failed} failed</span>')
    parts.append(f'<span class="{"skip" if skipped else ""}">{skipped} skipped</span>')
    return f'<p class="summary">{", ".join(parts)}</p>\n'


def toc(records: Sequence[Any], noun: str) -> str:
    """Anchored list of the inputs, scrollable so that a long run does not push the rest
    down; entry N links to ``#img-N`` (see :func:`section_start`)."""
    items = []
    for n, record in enumerate(records, 1):
        name = esc(text(record.get("input")) or f"{noun} {n}")
        items.append(
            f'<li class="{status(record)}"><a href="#img-{n}" title="{name}">{name}</a></li>'
        )
    return f'<nav class="toc"><ol>{"".join(items)}</ol></nav>\n'


def section_start(n: int, record: Any, link: Link, noun: str) -> str:
    """The opening of input N's section: its anchor, status badge and name (a link to it)."""
    name = text(record.get("input")) or f"{noun} {n}"
    found = status(record)
    url = link(record.get("input"))
    heading = f'<a href="{esc(url)}">{esc(name)}</a>' if url else esc(name)
    return (
        f'<section class="image" id="img-{n}">\n'
        f'<h2><span class="badge {found}">{esc(found)}</span>{heading}</h2>\n'
    )


def linker(out_dir: Path) -> Link:
    """Return a function turning a record path into a URL relative to ``out_dir``.

    Record paths are relative to the working directory or absolute; the browser resolves
    links against the index's folder, hence the relpath of resolved paths. Quoting makes
    spaces, '#', '?' and non-ASCII names work, and turns ':' into %3A so that no file name
    can pass for a URL scheme. Folders are resolved once each (a run has ~30 files per
    folder and resolving is the slow part); a file that is itself a symlink is linked as is.
    """
    base = Path(out_dir).resolve()

    def relative(path: str | Path) -> str:
        resolved = Path(path).resolve()
        try:
            rel = os.path.relpath(resolved, base)
        except ValueError:  # another drive on Windows: no relative path exists
            return resolved.as_uri()
        return "" if rel == os.curdir else quote(os.fsencode(rel.replace(os.sep, "/")), safe="/")

    @functools.lru_cache(maxsize=1024)
    def folder_prefix(folder: str) -> str:
        url = relative(folder or os.curdir)
        return url + "/" if url else ""

    def link(path: Any) -> str | None:
        if not isinstance(path, str | os.PathLike):
            return None
        text = os.fspath(path)
        if not isinstance(text, str) or not text:
            return None
        folder, name = os.path.split(text)
        if name in ("", os.curdir, os.pardir):
            return relative(text) or "./"
        return folder_prefix(folder) + quote(os.fsencode(name), safe="")

    return link
