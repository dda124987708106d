"""A static ``index.html`` for one run: every image, every layer, opened straight from disk.

The page is plain HTML with inline CSS and relative links, so it works over ``file://`` with
no server, survives the output folder being moved or zipped, and stays small enough for
thousands of images (pictures are linked, never embedded). Stdlib only: it must not pull in
torch or click.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from vggviz.core import html as page
from vggviz.core.folders import index_name
from vggviz.core.html import TIMES as _TIMES
from vggviz.core.html import Link
from vggviz.core.html import esc as _esc
from vggviz.core.html import is_num as _is_num
from vggviz.core.html import is_seq as _is_seq
from vggviz.core.html import number as _number
from vggviz.core.html import text as _text
from vggviz.features.folders import OVERVIEW

INDEX_NAME = index_name("")
_CHANNELS_SHOWN = 8  # channel numbers printed in a layer row; the rest are counted


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

    The file is streamed to a temporary name and moved into place
    (:func:`vggviz.core.html.write`). Records may be incomplete: missing keys are left out.
    ``figures`` (caption, path) are run-wide pictures shown above the images, such as the
    model's conv1 filters.
    """
    return page.write(
        out_dir,
        name,
        lambda fh, link: _write_page(
            fh, records, title=title, run_info=run_info, link=link, figures=figures
        ),
    )


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
    fh.write(page.head(title, run_info.items()))
    fh.write(page.summary(records, "image"))
    for caption, path in figures:
        href = link(path)
        if href:
            fh.write(
                f'<figure class="run"><a href="{href}"><img src="{href}" alt="{e(caption)}">'
                f"</a><figcaption>{e(caption)}</figcaption></figure>\n"
            )
    if records:
        fh.write(page.toc(records, "image"))
    for number, record in enumerate(records, 1):
        fh.write(_image_section(number, record, link))
    fh.write(page.FOOT)


def _image_section(number: int, record: Mapping[str, Any], link: Link) -> str:
    """One image: heading, status, error, overview, layer table, and any other outputs."""
    e = _esc
    name = _text(record.get("input")) or f"image {number}"
    status = page.status(record)
    parts = [page.section_start(number, record, link, "image")]

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
