"""A static ``index.html`` for one explain run: what the model predicted first across the
photos (how often each class, how sure), the photos where it was unsure, then every photo
with its picture and predictions. Opens from disk (inline CSS, relative links, no script).
Stdlib only: it must not pull in torch or click.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vggviz.core import html as page
from vggviz.core.folders import index_name
from vggviz.core.html import Link, esc, is_num, is_seq, plural, text
from vggviz.explain.request import PICTURE

INDEX_NAME = index_name("")
UNSURE = 0.5  # a top-1 probability below this: the model is unsure of the photo
SATURATED = 0.01  # the deletion check's probabilities closer than this: show the logits

CSS = """
table.classes { border-collapse: collapse; font-size: 14px; margin: 8px 0 16px;
  background: var(--card); border: 1px solid var(--line); }
table.classes th { text-align: left; color: var(--muted); font-weight: 600;
  border-bottom: 2px solid var(--line); padding: 4px 10px; }
table.classes td { border-bottom: 1px solid var(--line); padding: 4px 10px; }
table.classes :is(td, th):nth-child(n+3) { text-align: right;
  font-variant-numeric: tabular-nums; }
table.classes td.unsure { color: #8a5a00; font-weight: 600; }
section.image .picture img { display: block; max-width: 100%; max-height: 60vh; height: auto;
  border: 1px solid var(--line); }
table.preds { border-collapse: collapse; font-size: 13px; margin-top: 10px; }
table.preds td, table.preds th { padding: 2px 10px 2px 0; text-align: left; }
table.preds th { color: var(--muted); font-weight: 600; }
table.preds td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.preds tr.explained td:first-child::before { content: "\\25B8 "; color: var(--accent); }
p.unsure { font-size: 14px; }
"""


@dataclass
class ClassRow:
    """One class as the photos' first prediction."""

    label: str
    photos: int = 0
    probabilities: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return sum(self.probabilities) / len(self.probabilities) if self.probabilities else None

    @property
    def unsure(self) -> int:
        return sum(p < UNSURE for p in self.probabilities)


def first_predictions(records: Sequence[Mapping[str, Any]]) -> dict[Any, ClassRow]:
    """Per class index, the photos predicted as it first, most photos first (then by
    index): finished and skipped photos alike, since a skipped one lists its predictions."""
    rows: dict[Any, ClassRow] = {}
    for record in records:
        first = _first(record)
        if first is None:
            continue
        row = rows.setdefault(first.get("class"), ClassRow(text(first.get("label"))))
        row.photos += 1
        p = first.get("probability")
        if is_num(p):
            row.probabilities.append(float(p))
    order = sorted(rows.items(), key=lambda kv: (-kv[1].photos, str(kv[0])))
    return dict(order)


def unsure_photos(records: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """(number, record) of the photos whose first prediction is below UNSURE."""
    found = []
    for number, record in enumerate(records, 1):
        first = _first(record)
        p = first.get("probability") if first else None
        if is_num(p) and p < UNSURE:
            found.append((number, record))
    return found


def write_index(
    out_dir: Path,
    records: Sequence[Mapping[str, Any]],
    *,
    title: str,
    run_info: Mapping[str, str],
    name: str = INDEX_NAME,
) -> Path:
    """Write ``out_dir/<name>`` for ``records`` (atomically) and return its path. Records may
    be incomplete: missing keys are left out."""
    return page.write(
        out_dir,
        name,
        lambda fh, link: _write_page(fh, records, title=title, run_info=run_info, link=link),
    )


def _write_page(
    fh: IO[str],
    records: Sequence[Mapping[str, Any]],
    *,
    title: str,
    run_info: Mapping[str, str],
    link: Link,
) -> None:
    """Stream the page section by section: 10,000 photos never sit in memory as one str."""
    fh.write(page.head(title, run_info.items(), CSS))
    fh.write(page.summary(records, "photo"))
    fh.write(_class_table(records))
    fh.write(_unsure(records))
    if records:
        fh.write("<h2>Photos</h2>\n" + page.toc(records, "photo"))
    for number, record in enumerate(records, 1):
        fh.write(_image_section(number, record, link))
    fh.write(page.FOOT)


def _class_table(records: Sequence[Mapping[str, Any]]) -> str:
    rows = first_predictions(records)
    if not rows:
        return ""
    body = []
    for index, row in rows.items():
        mean = f"{row.mean:.2f}" if row.mean is not None else ""
        unsure = f'<td class="unsure">{row.unsure}</td>' if row.unsure else "<td>0</td>"
        body.append(
            f"<tr><td>{esc(index)}</td><td>{esc(row.label)}</td><td>{row.photos}</td>"
            f"<td>{mean}</td>{unsure}</tr>\n"
        )
    return (
        "<h2>Predicted first</h2>\n"
        '<table class="classes"><thead><tr><th>class</th><th>label</th><th>photos</th>'
        f"<th>mean probability</th><th>below {UNSURE:g}</th></tr></thead><tbody>\n"
        + "".join(body)
        + "</tbody></table>\n"
    )


def _unsure(records: Sequence[Mapping[str, Any]]) -> str:
    found = unsure_photos(records)
    if not found:
        return ""
    items = []
    for number, record in found:
        first = _first(record) or {}
        name = esc(text(record.get("input")) or f"photo {number}")
        p = first.get("probability")
        items.append(
            f'<li><a href="#img-{number}">{name}</a>: {esc(first.get("label"))} {p:.2f}</li>'
        )
    return (
        f'<p class="unsure">{plural(len(found), "photo")} where the model is unsure '
        f"(first prediction below {UNSURE:g}):</p>\n"
        f'<nav class="toc"><ul>{"".join(items)}</ul></nav>\n'
    )


def _image_section(number: int, record: Mapping[str, Any], link: Link) -> str:
    """One photo: heading, status, error, picture and predictions."""
    name = text(record.get("input")) or f"photo {number}"
    status = page.status(record)
    parts = [page.section_start(number, record, link, "photo")]
    meta = [f"#{number}"]
    size = record.get("size")
    if is_seq(size) and size:
        meta.append("model input " + esc(page.TIMES.join(text(v) for v in size)))
    folder_url = link(record.get("folder"))
    if folder_url:
        meta.append(f'<a href="{esc(folder_url)}/">folder</a>')
    parts.append(f'<div class="meta"><a class="up" href="#top">top ↑</a>{" · ".join(meta)}</div>\n')
    if record.get("error"):
        parts.append(f'<div class="errbox">{esc(record.get("error"))}</div>\n')
    if status == "skipped":
        reason = record.get("reason")
        why = f": {esc(reason)}" if reason else ""
        earlier = " Its picture is from an earlier run." if record.get("outputs") else ""
        parts.append(f'<div class="note">Skipped{why}.{earlier}</div>\n')
    picture = link(_picture(record))
    if picture:
        parts.append(
            f'<div class="picture"><a href="{esc(picture)}"><img src="{esc(picture)}" '
            f'loading="lazy" alt="evidence for {esc(name)}"></a></div>\n'
        )
    parts.append(_predictions(record))
    parts.append("</section>\n")
    return "".join(parts)


def _predictions(record: Mapping[str, Any]) -> str:
    """The top classes with probability and logit; the explained ones marked, with their
    deletion check, and any explained class outside the top listed after them."""
    predictions = [p for p in _list(record.get("predictions")) if isinstance(p, Mapping)]
    explained = {
        e.get("class"): e for e in _list(record.get("explanations")) if isinstance(e, Mapping)
    }
    if not predictions and not explained:
        return ""
    rows = []
    listed = set()
    for p in predictions:
        listed.add(p.get("class"))
        rows.append(_row(p, explained.get(p.get("class"))))
    rows += [_row(e, e) for c, e in explained.items() if c not in listed]
    return (
        '<table class="preds"><thead><tr><th>class</th><th>label</th><th>probability</th>'
        "<th>logit</th><th>check: after blurring the top 20% · 20% at random</th></tr>"
        "</thead><tbody>" + "".join(rows) + "</tbody></table>\n"
    )


def _row(p: Mapping[str, Any], explanation: Mapping[str, Any] | None) -> str:
    deletion = explanation.get("deletion") if explanation else None
    cls = ' class="explained"' if explanation else ""
    return (
        f"<tr{cls}><td>{esc(p.get('class'))}</td><td>{esc(p.get('label'))}</td>"
        f'<td class="num">{_p(p.get("probability"))}</td>'
        f'<td class="num">{page.number(p.get("logit"))}</td>'
        f"<td>{esc(check_text(deletion))}</td></tr>"
    )


def check_text(deletion: Any) -> str:
    """The deletion check as the picture words it: ``0.91 → 0.12 · random 0.85``; the logits
    when the three probabilities are within SATURATED of each other (a saturated head)."""
    if not isinstance(deletion, Mapping):
        return ""
    probs = [deletion.get(k) for k in ("original", "top", "random")]
    logits = [deletion.get(f"{k}_logit") for k in ("original", "top", "random")]
    if all(is_num(v) for v in probs) and max(probs) - min(probs) >= SATURATED:
        a, b, c = (_p(v) for v in probs)
        return f"{a} → {b} · random {c}"
    if all(is_num(v) for v in logits):
        a, b, c = (f"{v:.3g}" for v in logits)
        return f"logit {a} → {b} · random {c}"
    return ""


def _p(value: Any) -> str:
    if not is_num(value):
        return ""
    return f"{value:.3f}" if value >= 0.001 or value == 0 else f"{value:.1e}"


def _first(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if page.status(record) == "error":
        return None
    predictions = _list(record.get("predictions"))
    first = predictions[0] if predictions else None
    return first if isinstance(first, Mapping) else None


def _picture(record: Mapping[str, Any]) -> Any:
    for path in _list(record.get("outputs")):
        if isinstance(path, str) and Path(path).name == PICTURE:
            return path
    return None


def _list(value: Any) -> list[Any]:
    return list(value) if is_seq(value) else []
