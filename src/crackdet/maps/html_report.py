"""The inspection report of a mapped folder: ``index.html``, one card per photo, most cracked
first.

Self-contained: one HTML file, its style inline, no script, nothing fetched from the network.
It shows the thumbnails written beside it and links to the full overlays, masks and JSON files,
so the output folder opens as it is, and can be copied or zipped whole. Every figure comes from
the photos' :class:`PhotoSummary` (what their JSON files say); nothing is recomputed here. The
markup is the Jinja template ``templates/report.html``, autoescaped: values go in as text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import jinja2

from crackdet.core.io import write_text
from crackdet.maps.mapping import MappedPhotos
from crackdet.maps.outputs import PhotoFiles, PhotoSummary

REPORT = "index.html"
TEMPLATE = "report.html"


@dataclass(frozen=True)
class Card:
    """One photo's card: its figures as the report prints them, its links relative to it."""

    photo: str
    width: int
    height: int
    area: str
    details: list[tuple[str, str]]
    overlay: str
    thumbnail: str
    links: list[tuple[str, str]]


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("crackdet.maps", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(TEMPLATE)


def write_report(out: Path, mapped: MappedPhotos, title: str) -> Path:
    """Write ``out/index.html`` for the photos ``mapped`` into ``out``; return its path."""
    summaries = sorted(mapped.summaries, key=lambda s: (-s.crack_area_fraction, s.photo))
    counts = f"{len(summaries)} photo{'' if len(summaries) == 1 else 's'}"
    if mapped.skipped:
        counts += f" ({len(mapped.skipped)} kept from an earlier run: same photo, model, settings)"
    if mapped.errors:
        counts += f", {len(mapped.errors)} could not be read"
    html = _template().render(
        title=title,
        counts=counts,
        models=[model or "unnamed" for model in sorted({s.model for s in summaries})],
        errors=mapped.errors,
        cards=[_card(out, summary) for summary in summaries],
    )
    path = out / REPORT
    write_text(path, html)
    return path


def _card(out: Path, summary: PhotoSummary) -> Card:
    files = PhotoFiles(out, summary.outputs)
    unfamiliar = "not measured" if summary.ood_fraction is None else _percent(summary.ood_fraction)
    scales = " and ".join(f"{s:g}" for s in summary.scales)
    return Card(
        photo=summary.photo,
        width=summary.width,
        height=summary.height,
        area=_percent(summary.crack_area_fraction),
        details=[
            ("unfamiliar", unfamiliar),
            ("threshold", f"{summary.threshold:.3f}"),
            ("windows over it", f"{summary.tiles_flagged} of {summary.tiles_total}"),
            ("model", summary.model or "-"),
            ("mapped at", f"{summary.width}×{summary.height} px, scale {scales}"),
            ("overlap, engine", f"{summary.overlap:g}, {summary.engine}"),
        ],
        overlay=_href(files.overlay),
        thumbnail=_href(files.thumbnail),
        links=[
            ("overlay", _href(files.overlay)),
            ("mask", _href(files.mask)),
            ("heatmap", _href(files.heatmap)),
            ("JSON", _href(files.record)),
        ],
    )


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def _href(path: Path) -> str:
    """A link relative to the report (its folder), safe for any file name."""
    return quote(path.name)
