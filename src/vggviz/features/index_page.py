"""A static ``index.html`` for one run: every image, every layer, opened straight from disk.

The page is plain HTML with inline CSS and relative links, so it works over ``file://`` with
no server, survives the output folder being moved or zipped, and stays small enough for
thousands of images (pictures are linked, never embedded). Stdlib only: it must not pull in
torch or click.
"""

from __future__ import annotations

import functools
import html
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from vggviz.core.files import atomic_file
from vggviz.core.folders import OVERVIEW, display, index_name

INDEX_NAME = index_name("")
_CHANNELS_SHOWN = 8  # channel numbers printed in a layer row; the rest are counted
_TIMES = "\N{MULTIPLICATION SIGN}"

Link = Callable[[Any], str | None]  # record path -> URL relative to the index, or None

_CSS = """
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


def write_index(
    out_dir: Path,
    records: Sequence[Mapping[str, Any]],
    *,
    title: str,
    run_info: Mapping[str, str],
    name: str = INDEX_NAME,
    figures: Sequence[tuple[str, str | Path]] = (),
) -> Path:
    """Write ``out_dir/<name>`` for ``records`` and return its path.

    The file is streamed to a temporary name in ``out_dir`` and moved into place
    (:func:`vggviz.core.files.atomic_file`), so a reader (or a crash) never sees half a page and
    an older index survives a failed rewrite. Records may be incomplete: missing keys are
    left out. ``figures`` (caption, path) are run-wide pictures shown above the images,
    such as the model's conv1 filters.
    """
    out_dir = Path(out_dir)
    link = _linker(out_dir)
    with atomic_file(out_dir / name, "w") as fh:
        _write_page(fh, records, title=title, run_info=run_info, link=link, figures=figures)
    return out_dir / name


def _linker(out_dir: Path) -> Link:
    """Return a function turning a record path into a URL relative to ``out_dir``.

    Record paths are relative to the working directory or absolute; the browser resolves
    links against the index's folder, hence the relpath of resolved paths. Quoting makes
    spaces, '#', '?' and non-ASCII names work, and turns ':' into %3A so that no file name
    can pass for a URL scheme. Folders are resolved once each (a run has ~30 files per
    folder and resolving is the slow part); a file that is itself a symlink is linked as is.
    """
    base = out_dir.resolve()

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


def _write_page(
    fh: IO[str],
    records: Sequence[Mapping[str, Any]],
    *,
    title: str,
    run_info: Mapping[str, str],
    link: Link,
    figures: Sequence[tuple[str, str | Path]] = (),
) -> None:
    """Stream the page section by section, so 10,000 images never sit in memory as one str."""
    e = _esc
    fh.write(
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<header class="top" id="top"><div class="wrap">\n<h1>{e(title)}</h1>\n'
    )
    if run_info:
        items = "".join(f"<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>" for k, v in run_info.items())
        fh.write(f'<dl class="info">{items}</dl>\n')
    fh.write('</div></header>\n<main class="wrap">\n')
    fh.write(_summary(records))
    for caption, path in figures:
        href = link(path)
        if href:
            fh.write(
                f'<figure class="run"><a href="{href}"><img src="{href}" alt="{e(caption)}">'
                f"</a><figcaption>{e(caption)}</figcaption></figure>\n"
            )
    if records:
        fh.write(_toc(records))
    for number, record in enumerate(records, 1):
        fh.write(_image_section(number, record, link))
    fh.write("</main>\n</body>\n</html>\n")


def _summary(records: Sequence[Mapping[str, Any]]) -> str:
    """One line with the counts a reader checks first: how many, how many went wrong."""
    statuses = [_status(r) for r in records]
    failed, skipped = statuses.count("error"), statuses.count("skipped")
    parts = [_plural(len(records), "image")]
    parts.append(f'<span class="{"bad" if failed else ""}">{failed} failed</span>')
    parts.append(f'<span class="{"skip" if skipped else ""}">{skipped} skipped</span>')
    return f'<p class="summary">{", ".join(parts)}</p>\n'


def _toc(records: Sequence[Mapping[str, Any]]) -> str:
    """Anchored list of images, scrollable so that a long run does not push the pages down."""
    items = []
    for number, record in enumerate(records, 1):
        name = _esc(_text(record.get("input")) or f"image {number}")
        status = _status(record)
        items.append(f'<li class="{status}"><a href="#img-{number}" title="{name}">{name}</a></li>')
    return f'<nav class="toc"><ol>{"".join(items)}</ol></nav>\n'


def _image_section(number: int, record: Mapping[str, Any], link: Link) -> str:
    """One image: heading, status, error, overview, layer table, and any other outputs."""
    e = _esc
    name = _text(record.get("input")) or f"image {number}"
    status = _status(record)
    parts = [f'<section class="image" id="img-{number}">\n']
    input_url = link(record.get("input"))
    heading = f'<a href="{e(input_url)}">{e(name)}</a>' if input_url else e(name)
    parts.append(f'<h2><span class="badge {status}">{e(status)}</span>{heading}</h2>\n')

    meta = [f"#{number}"]
    size = record.get("size")
    if _is_seq(size) and size:
        meta.append("model input " + e(_TIMES.join(_text(v) for v in size)))
    folder_url = link(record.get("folder"))
    if folder_url:
        meta.append(f'<a href="{e(folder_url)}/">folder</a>')
    parts.append(f'<div class="meta"><a class="up" href="#top">top ↑</a>{" · ".join(meta)}</div>\n')

    error = record.get("error")
    if error:
        parts.append(f'<div class="errbox">{e(_text(error))}</div>\n')
    if status == "skipped":
        reason = record.get("reason")
        why = f": {e(_text(reason))}" if reason else ""
        earlier = " Its pictures below are from an earlier run." if record.get("outputs") else ""
        parts.append(f'<div class="note">Skipped{why}.{earlier}</div>\n')

    shown: set[str] = set()
    overview_url = link(record.get("overview") or _find_overview(record.get("outputs")))
    if overview_url:
        shown.add(overview_url)
        parts.append(
            f'<div class="overview"><a href="{e(overview_url)}"><img src="{e(overview_url)}"'
            f' loading="lazy" alt="overview of {e(name)}"></a></div>\n'
        )

    layers = record.get("layers")
    rows = [
        _layer_row(layer, link, shown)
        for layer in (layers if _is_seq(layers) else ())
        if isinstance(layer, Mapping)
    ]
    if rows:
        parts.append(
            '<table class="layers"><thead><tr><th>layer</th><th>module</th>'
            "<th>shape C&times;H&times;W</th>"
            "<th>mean</th><th>max</th><th>zeros</th>"
            "<th>channels drawn</th><th>picture</th></tr></thead><tbody>\n"
        )
        parts.extend(rows)
        parts.append("</tbody></table>\n")

    parts.append(_other_files(record.get("outputs"), link, shown))
    parts.append("</section>\n")
    return "".join(parts)


def _layer_row(layer: Mapping[str, Any], link: Link, shown: set[str]) -> str:
    """One table row; every cell tolerates a missing or odd value."""
    e = _esc
    name = _text(layer.get("name"))
    shape = layer.get("shape")
    shape_text = _TIMES.join(_text(v) for v in shape) if _is_seq(shape) else ""
    zero = layer.get("zero_fraction")
    zero_text = f"{zero * 100:.1f}%" if _is_num(zero) else ""
    url = link(layer.get("picture"))
    if url:
        shown.add(url)
        picture = f'<a href="{e(url)}"><img src="{e(url)}" loading="lazy" alt="{e(name)}"></a>'
    else:
        picture = ""
    # No per-cell classes: the CSS styles columns by position, which keeps big runs small.
    return (
        f"<tr><td>{e(name)}</td><td>{e(_text(layer.get('module')))}</td>"
        f"<td>{e(shape_text)}</td><td>{_number(layer.get('mean'))}</td>"
        f"<td>{_number(layer.get('max'))}</td><td>{zero_text}</td>"
        f"<td>{_channels(layer.get('channels'))}</td><td>{picture}</td></tr>\n"
    )


def _other_files(outputs: Any, link: Link, shown: set[str]) -> str:
    """Outputs not shown above (a skipped image's pictures, .npz files), so none is hidden."""
    if not _is_seq(outputs):
        return ""
    items = []
    for path in outputs:
        url = link(path)
        if not url or url in shown:
            continue
        shown.add(url)
        label = _esc(Path(str(path)).name)
        if url.lower().endswith((".png", ".jpg", ".jpeg")):
            items.append(
                f'<a href="{_esc(url)}"><img src="{_esc(url)}" loading="lazy"'
                f' alt="{label}">{label}</a>'
            )
        else:
            items.append(f'<a href="{_esc(url)}">{label}</a>')
    return f'<div class="files">{"".join(items)}</div>\n' if items else ""


def _find_overview(outputs: Any) -> Any:
    """A skipped record may list its overview only among ``outputs``; find it by file name."""
    if _is_seq(outputs):
        for path in outputs:
            if isinstance(path, str) and Path(path).name == OVERVIEW:
                return path
    return None


def _channels(channels: Any) -> str:
    """A few channel numbers and a count: enough to recognise the pick, short on the page."""
    if not _is_seq(channels) or not channels:
        return ""
    values = [_text(c) for c in channels]
    text = ", ".join(values[:_CHANNELS_SHOWN])
    if len(values) > _CHANNELS_SHOWN:
        text += f", … ({len(values)} total)"
    return _esc(text)


def _number(value: Any) -> str:
    """Four significant digits: enough to compare layers, short enough for a column."""
    return f"{value:.4g}" if _is_num(value) else _esc(_text(value))


def _status(record: Mapping[str, Any]) -> str:
    """The record's status, or 'unknown'; safe to use as a CSS class."""
    status = record.get("status")
    return status if status in ("ok", "error", "skipped") else "unknown"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _text(value: Any) -> str:
    return "" if value is None else display(str(value))


def _esc(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_seq(value: Any) -> bool:
    """A JSON array; a string would otherwise be taken one character at a time."""
    return isinstance(value, list | tuple)
