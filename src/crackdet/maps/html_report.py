"""The inspection report of a mapped folder: ``index.html``, one card per photo, most cracked
first.

Self-contained: one HTML file, its style inline, no script, nothing fetched from the network.
It shows the thumbnails written beside it and links to the full overlays, masks and JSON files,
so the output folder opens as it is, and can be copied or zipped whole. Every figure comes from
the photos' :class:`PhotoSummary` (what their JSON files say); nothing is recomputed here.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from crackdet.core.io import write_text
from crackdet.maps.mapping import MappedPhotos, PhotoFiles, PhotoSummary

REPORT = "index.html"

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1280px;
  padding: 1.2rem; color: #1d2329; background: #f4f5f7; }
h1 { font-size: 1.5rem; margin: 0 0 .3rem; }
p.lead { margin: .2rem 0 1rem; color: #4a5560; }
.errors { background: #fde8e8; border: 1px solid #e3a1a1; padding: .6rem 1rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
  gap: 1rem; padding: 0; }
.card { list-style: none; background: #fff; border: 1px solid #d6dbe0; border-radius: 6px;
  overflow: hidden; }
.card img { display: block; width: 100%; height: auto; background: #ccd; }
.card .body { padding: .6rem .8rem .8rem; }
.card h2 { font-size: 1rem; margin: 0 0 .4rem; overflow-wrap: anywhere; }
.card dl { display: grid; grid-template-columns: auto 1fr; gap: .1rem .8rem; margin: 0; }
.card dt { color: #5b6670; } .card dd { margin: 0; font-variant-numeric: tabular-nums; }
.area { font-size: 1.3rem; font-weight: 600; }
.files { margin-top: .5rem; font-size: .9rem; }
.legend { display: inline-block; width: 120px; height: .8rem; vertical-align: middle;
  background: linear-gradient(90deg, rgb(30,200,60), rgb(230,30,30)); }
"""


def write_report(out: Path, mapped: MappedPhotos, title: str) -> Path:
    """Write ``out/index.html`` for the photos ``mapped`` into ``out``; return its path."""
    cards = sorted(mapped.summaries, key=lambda s: (-s.crack_area_fraction, s.photo))
    models = sorted({s.model for s in cards})
    counts = f"{len(cards)} photo{'' if len(cards) == 1 else 's'}"
    if mapped.skipped:
        counts += f" ({len(mapped.skipped)} kept from an earlier run: same photo, model, settings)"
    if mapped.errors:
        counts += f", {len(mapped.errors)} could not be read"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_text(title)}</h1>",
        f'<p class="lead">{_text(counts)}, most cracked first. Model: '
        f"{', '.join(_text(m) or 'unnamed' for m in models) or '-'}. "
        'Overlay: <span class="legend"></span> P(crack) 0 to 1 per 227-px window. Crack area: '
        "share of pixels at or over the threshold. Unfamiliar: share of windows unlike the "
        "training data (their probabilities are guesses). Click a photo for the full map.</p>",
    ]
    if mapped.errors:
        items = "".join(f"<li>{_text(error)}</li>" for error in mapped.errors)
        parts.append(f'<div class="errors"><strong>Not mapped</strong><ul>{items}</ul></div>')
    parts.append('<ul class="cards">')
    parts += [_card(out, summary) for summary in cards]
    parts.append("</ul></body></html>")
    path = out / REPORT
    write_text(path, "\n".join(parts) + "\n")
    return path


def _card(out: Path, summary: PhotoSummary) -> str:
    files = PhotoFiles(out, summary.outputs)
    unfamiliar = "not measured" if summary.ood_fraction is None else _percent(summary.ood_fraction)
    rows = [
        ("unfamiliar", unfamiliar),
        ("threshold", f"{summary.threshold:.3f}"),
        ("windows over it", f"{summary.tiles_flagged} of {summary.tiles_total}"),
        ("model", summary.model or "-"),
        (
            "mapped at",
            f"{summary.width}×{summary.height} px, scale "
            + " and ".join(f"{s:g}" for s in summary.scales),
        ),
        ("overlap, engine", f"{summary.overlap:g}, {summary.engine}"),
    ]
    details = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in rows)
    links = " · ".join(
        f'<a href="{_href(path)}">{label}</a>'
        for label, path in (
            ("overlay", files.overlay),
            ("mask", files.mask),
            ("heatmap", files.heatmap),
            ("JSON", files.record),
        )
    )
    return (
        '<li class="card">'
        f'<a href="{_href(files.overlay)}"><img src="{_href(files.thumbnail)}" '
        f'alt="crack map of {_text(summary.photo)}" '
        f'style="aspect-ratio: {summary.width} / {summary.height}"></a>'
        f'<div class="body"><h2>{_text(summary.photo)}</h2>'
        f'<dl><dt>crack area</dt><dd class="area">{_percent(summary.crack_area_fraction)}</dd>'
        f'{details}</dl><div class="files">{links}</div></div></li>'
    )


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def _href(path: Path) -> str:
    """A link relative to the report (its folder), safe for any file name."""
    return quote(path.name)


def _text(value: object) -> str:
    return html.escape(str(value))
