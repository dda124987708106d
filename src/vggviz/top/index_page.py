"""``index.html`` for a ``vggviz top`` run: every layer, every channel's best crops, its
dead fraction and the spread of its values over the dataset, opened straight from disk.

Like every vggviz page (:mod:`vggviz.core.html`) it is one static file with inline CSS and relative
links, and no script: a run over VGG19 has 5,504 channels, so the page is streamed layer by
layer, every picture is loaded lazily, each strip's box is sized before it loads (so links to
a channel land on it), and the layers are linked from the top. Histograms are inline SVG paths of a
few hundred bytes. Stdlib and vggviz's torch-free modules only: never torch or click.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from vggviz.core import html as page
from vggviz.core.html import TIMES as _TIMES
from vggviz.core.html import esc as _esc
from vggviz.core.html import is_num as _is_num
from vggviz.core.html import is_seq as _is_seq
from vggviz.core.html import number as _number
from vggviz.core.html import plural as _plural
from vggviz.core.html import text as _text
from vggviz.top.pictures import PAGE_ROWS, strip_size

INDEX_NAME = "index.html"
STRIP_HEIGHT = 80  # CSS pixels a channel's strip is shown at
HIST_W, HIST_H = 160, 40  # the histogram's box, CSS pixels

_TOP_CSS = """
main.wrap, header.top .wrap { max-width: 1400px; }
nav.layers ol { columns: 20em auto; }
nav.layers li { white-space: nowrap; }
nav.layers .n { color: var(--muted); }
.legend { color: var(--muted); font-size: 13px; margin: 10px 0; }
section.layer { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  margin: 18px 0; padding: 14px 16px 16px; }
section.layer h2 { margin: 0; font-size: 19px; }
section.layer h2 small { font-size: 13px; color: var(--muted); font-weight: 400;
  font-family: ui-monospace, monospace; margin-left: 8px; }
.pages { font-size: 13px; margin: 4px 0; }
.pages a { margin-right: 10px; white-space: nowrap; }
.dead { font-size: 13px; background: #fdf6e3; border-left: 5px solid #e0a800;
  border-radius: 4px; padding: 6px 12px; margin: 8px 0; }
.dead a { margin-right: 6px; }
.alive { font-size: 13px; color: var(--muted); margin: 8px 0; }
div.scroll { overflow-x: auto; }
table.channels { border-collapse: collapse; margin-top: 8px; font-size: 13px; }
table.channels th { text-align: left; font-weight: 600; color: var(--muted);
  border-bottom: 2px solid var(--line); padding: 4px 8px; white-space: nowrap; }
table.channels td { border-bottom: 1px solid var(--line); padding: 3px 8px; }
table.channels tr:target td { background: #fff4c2; }
table.channels td:first-child { font-weight: 600; white-space: nowrap; }
table.channels :is(td, th):nth-child(n+3):nth-child(-n+5) { text-align: right;
  font-variant-numeric: tabular-nums; white-space: nowrap; }
table.channels tr.never td:first-child { color: #8a5a00; }
img.strip { display: block; height: 80px; width: auto; background: #24242b; }
svg.hist { display: block; width: 160px; height: 40px; background: #eef1f5; }
svg.hist path { fill: #2f5fb3; }
.range { display: flex; justify-content: space-between; width: 160px; color: var(--muted);
  font-size: 11px; font-variant-numeric: tabular-nums; }
"""


def write_top_index(
    out_dir: Path,
    result: dict,
    *,
    pages: dict[str, list[str]],
    strips: dict[str, dict[int, str]],
    name: str = INDEX_NAME,
) -> Path:
    """index.html for a top run. ``result`` is exactly top.json's content; ``pages[alias]``
    are the pages' paths relative to out_dir; ``strips[alias][channel]`` the channel
    strip's relative path.

    A layer's pages are taken to hold its channels in order, as
    :func:`vggviz.top.pictures.layer_pages` lays them out (:func:`per_page`), so that each
    channel's strip links to its page.
    The file is written to a temporary name and moved into place. Missing or odd fields are
    left out rather than failing the page.
    """
    return page.write(out_dir, name, lambda fh, _link: _write_page(fh, result, pages, strips))


def _url(path: Any) -> str | None:
    """A path relative to the index as a URL: quoted, so spaces, '#', '?' and non-ASCII work
    and no name can pass for a URL scheme (':' becomes %3A)."""
    if not isinstance(path, str) or not path:
        return None
    return quote(path.replace("\\", "/"), safe="/")


def _anchor(alias: str, channel: Any = None) -> str:
    """An element id: the alias quoted (ids may not hold spaces), then the channel."""
    base = "layer-" + quote(alias, safe="")
    return base if channel is None else f"{base}-c{channel}"


def _layers(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    layers = result.get("layers")
    if not isinstance(layers, Mapping):
        return []
    return [(str(k), v) for k, v in layers.items() if isinstance(v, Mapping)]


def _channels(layer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    channels = layer.get("channels")
    return [c for c in channels if isinstance(c, Mapping)] if _is_seq(channels) else []


def never_active(channel: Mapping[str, Any]) -> bool:
    """No image activates the channel: dead in every image (or, without a dead fraction,
    a maximum of zero or less)."""
    dead = channel.get("dead_fraction")
    if _is_num(dead):
        return dead >= 1.0
    peak = channel.get("max")
    return _is_num(peak) and peak <= 0


def _strip_ratio(result: Mapping[str, Any]) -> tuple[int, int]:
    """Every strip of a run has k slots of one height: its size follows from top.json's
    ``k``, so the page reserves each strip's box before it loads; (0, 0) without a k."""
    k = result.get("k")
    return strip_size(k) if isinstance(k, int) and not isinstance(k, bool) and k > 0 else (0, 0)


def _write_page(
    fh: IO[str],
    result: Mapping[str, Any],
    pages: Mapping[str, Sequence[str]],
    strips: Mapping[str, Mapping[int, str]],
) -> None:
    layers = _layers(result)
    title = f"vggviz top: {_text(result.get('arch')) or 'VGG'}"
    width, height = _strip_ratio(result)
    ratio = f"img.strip {{ aspect-ratio: {width} / {height}; }}\n" if width else ""
    info = [
        (key, result.get(key))
        for key in ("arch", "weights", "stage", "reduce", "size", "images", "k")
        if result.get(key) is not None
    ]
    fh.write(page.head(title, info, _TOP_CSS + ratio))
    fh.write(_summary(result, layers))
    if layers:
        fh.write(_nav(layers))
        fh.write(_legend(result))
    for alias, layer in layers:
        fh.write(_layer_section(alias, layer, pages.get(alias, ()), strips.get(alias, {}), result))
    fh.write(page.FOOT)


def _summary(result: Mapping[str, Any], layers: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    channels = sum(len(_channels(layer)) for _, layer in layers)
    dead = sum(never_active(c) for _, layer in layers for c in _channels(layer))
    images = result.get("images")
    parts = []
    if _is_num(images):
        parts.append(f"{int(images):,} image" + ("" if images == 1 else "s"))
    parts += [_plural(len(layers), "layer"), f"{channels:,} channel" + "s" * (channels != 1)]
    parts.append(f'<span class="{"skip" if dead else ""}">{dead} never active</span>')
    return f'<p class="summary">{", ".join(parts)}</p>\n'


def _nav(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    items = []
    for alias, layer in layers:
        channels = _channels(layer)
        dead = sum(never_active(c) for c in channels)
        rf = layer.get("receptive_field")
        size = rf.get("size") if isinstance(rf, Mapping) else None
        extra = f"{len(channels)} ch"
        if _is_num(size):
            extra += f", {size} px"
        if dead:
            extra += f", {dead} never active"
        items.append(
            f'<li><a href="#{_anchor(alias)}">{_esc(alias)}</a> <span class="n">{extra}</span></li>'
        )
    return f'<nav class="toc layers"><ol>{"".join(items)}</ol></nav>\n'


def _legend(result: Mapping[str, Any]) -> str:
    k = result.get("k")
    top = f"top {k}" if _is_num(k) else "top"
    reduce = _text(result.get("reduce")) or "max"
    return (
        f'<p class="legend">Each row: a channel, its {_esc(top)} images (best first, cropped to the'
        " receptive field of the unit that fired; hover for names and values, click for the"
        f" full-size page), the share of images on which it is never active (dead), the mean and"
        f" maximum of its per-image {_esc(reduce)} value, and a histogram of that value over"
        " every image (bar height grows with the square root of the count, so thin tails"
        " show).</p>\n"
    )


def per_page(channels: int, pages: int) -> int:
    """Channels per page of a layer with ``channels`` channels drawn on ``pages`` pages by
    :func:`vggviz.top.pictures.layer_pages` (full pages of one of PAGE_ROWS, the last one
    maybe short), or 0 when no such split fits and strips are better left unlinked."""
    for rows in PAGE_ROWS:
        if channels and pages and math.ceil(channels / rows) == pages:
            return rows
    return 0


def _pages_line(alias: str, paths: Sequence[str], channels: Sequence[Mapping[str, Any]]) -> str:
    links = []
    per = per_page(len(channels), len(paths))
    for i, path in enumerate(paths):
        url = _url(path)
        if not url:
            continue
        label = f"page {i + 1}"
        chunk = channels[i * per : (i + 1) * per] if per else []
        if chunk:
            label += f" (#{_text(chunk[0].get('channel'))}-#{_text(chunk[-1].get('channel'))})"
        links.append(f'<a href="{_esc(url)}">{_esc(label)}</a>')
    return f'<div class="pages">{"".join(links)}</div>\n' if links else ""


def _layer_section(
    alias: str,
    layer: Mapping[str, Any],
    pages: Sequence[str],
    strips: Mapping[int, str],
    result: Mapping[str, Any],
) -> str:
    e = _esc
    channels = _channels(layer)
    parts = [f'<section class="layer" id="{_anchor(alias)}">\n']
    parts.append(f"<h2>{e(alias)}<small>{e(_text(layer.get('module')))}</small></h2>\n")
    meta = [_plural(len(channels), "channel")]
    rf = layer.get("receptive_field")
    if isinstance(rf, Mapping) and _is_num(rf.get("size")):
        text = f"receptive field {rf['size']}{_TIMES}{rf['size']} px"
        if _is_num(rf.get("jump")):
            text += f", one unit every {rf['jump']} px"
        meta.append(text)
    parts.append(f'<div class="meta"><a class="up" href="#top">top ↑</a>{" · ".join(meta)}</div>\n')
    paths = [p for p in pages if isinstance(p, str)]
    parts.append(_pages_line(alias, paths, channels))

    dead = [c for c in channels if never_active(c)]
    if dead:
        links = "".join(
            f'<a href="#{_anchor(alias, e(_text(c.get("channel"))))}">'
            f"#{e(_text(c.get('channel')))}</a>"
            for c in dead
        )
        parts.append(
            f'<div class="dead"><b>Never active</b> on any of the images '
            f"({len(dead)} of {len(channels)}): {links}</div>\n"
        )
    elif channels:
        parts.append('<div class="alive">Every channel is active on some image.</div>\n')

    if channels:
        images = result.get("images")
        over = f" over {int(images):,} images" if _is_num(images) else ""
        parts.append(
            '<div class="scroll"><table class="channels"><thead><tr><th>channel</th>'
            '<th>best images</th><th title="share of images on which it is never active">'
            f'dead</th><th>mean</th><th>max</th><th title="its values{e(over)}">histogram</th>'
            "</tr></thead><tbody>\n"
        )
        per = per_page(len(channels), len(paths))
        for i, channel in enumerate(channels):
            page = _url(paths[i // per]) if per and i // per < len(paths) else None
            parts.append(_channel_row(alias, channel, strips, page))
        parts.append("</tbody></table></div>\n")
    parts.append("</section>\n")
    return "".join(parts)


def _channel_row(
    alias: str, channel: Mapping[str, Any], strips: Mapping[int, str], page: str | None
) -> str:
    e = _esc
    number = channel.get("channel")
    label = _text(number)
    dead = channel.get("dead_fraction")
    dead_text = f"{dead * 100:.1f}%" if _is_num(dead) else ""
    strip = _url(strips.get(number)) if isinstance(number, int) else None
    cell = ""
    if strip:
        tops = channel.get("top")
        lines = [
            f"{i}. {_text(t.get('input'))}  {_number(t.get('value'))}"
            for i, t in enumerate(tops if _is_seq(tops) else (), 1)
            if isinstance(t, Mapping)
        ]
        tip = "&#10;".join(e(line) for line in lines)
        cell = (
            f'<img class="strip" src="{e(strip)}" loading="lazy" '
            f'alt="{e(alias)} #{e(label)}: best images" title="{tip}">'
        )
        if page:
            cell = f'<a href="{e(page)}">{cell}</a>'
    row_class = ' class="never"' if never_active(channel) else ""
    return (
        f'<tr id="{_anchor(alias, e(label))}"{row_class}><td>#{e(label)}</td><td>{cell}</td>'
        f"<td>{dead_text}</td><td>{_number(channel.get('mean'))}</td>"
        f"<td>{_number(channel.get('max'))}</td><td>{_histogram(channel.get('histogram'))}</td>"
        "</tr>\n"
    )


def _histogram(hist: Any) -> str:
    """A small bar chart of a channel's values as one SVG path (square-root heights), with
    the first and last bin edges under it; empty when the histogram is missing or odd."""
    if not isinstance(hist, Mapping):
        return ""
    counts, edges = hist.get("counts"), hist.get("edges")
    if not _is_seq(counts) or not counts or not all(_is_num(c) and c >= 0 for c in counts):
        return ""
    top = max(counts)
    n = len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = round(HIST_H * math.sqrt(count / top), 1) if top else 0
        if count and h < 1:
            h = 1.0  # a bin with any image stays visible
        if h:
            bars.append(f"M{i} {HIST_H}v-{h:g}h.9V{HIST_H}z")
    total = sum(counts)
    svg = (
        f'<svg class="hist" viewBox="0 0 {n} {HIST_H}" preserveAspectRatio="none" role="img"'
        f' aria-label="histogram of {_text(int(total))} values"><path d="{"".join(bars)}"/></svg>'
    )
    if _is_seq(edges) and len(edges) == n + 1 and all(_is_num(x) for x in edges):
        svg += f'<div class="range"><span>{edges[0]:.3g}</span><span>{edges[-1]:.3g}</span></div>'
    return svg
