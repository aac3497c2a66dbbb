"""The inspection report of a mapped folder: ``index.html``, one card per photo, worst first
(severity, then widest crack), and ``cracks.csv``, every traced crack of those photos.

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
from crackdet.maps.crack_outputs import FOLDER_CRACKS, folder_tables, write_folder_cracks
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
    headline: str  # "3 cracks", or why there are none to count
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
    """Write ``out/index.html`` for the photos ``mapped`` into ``out``, and ``out/cracks.csv``
    where any was traced; return the report's path."""
    summaries = sorted(mapped.summaries, key=worst_first)
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
        traced=any(s.traced for s in summaries),
    )
    path = out / REPORT
    write_text(path, html)
    write_folder_cracks(
        out / FOLDER_CRACKS, folder_tables(out, ((s.photo, s.outputs) for s in summaries))
    )
    return path


def worst_first(summary: PhotoSummary) -> tuple:
    """The report's order: traced photos by severity, widest crack, total length; then those
    not traced (no pixel decoder) by their share of windows over the threshold; then by name."""
    if summary.traced:
        width, length = summary.crack_max_width or 0.0, summary.crack_length or 0.0
        return (0, -summary.crack_severity_rank, -width, -length, 0.0, summary.photo)
    flagged = summary.tiles_flagged / max(1, summary.tiles_total)
    return (1, 0, 0.0, 0.0, -flagged, summary.photo)


def _card(out: Path, summary: PhotoSummary) -> Card:
    files = PhotoFiles(out, summary.outputs)
    unfamiliar = "not measured" if summary.ood_fraction is None else _percent(summary.ood_fraction)
    scales = " and ".join(f"{s:g}" for s in summary.scales)
    cracks: list[tuple[str, str]] = []
    links = [("window map", _href(files.overlay))]
    if summary.traced:
        unit = summary.crack_unit
        count = summary.crack_count or 0
        headline = f"{count} crack{'' if count == 1 else 's'}"
        cracks = [
            ("total length", f"{summary.crack_length or 0:.1f} {unit}"),
            ("widest", f"{summary.crack_max_width or 0:.2f} {unit}"),
            ("severity", summary.crack_severity or ("-" if not count else "no scale")),
        ]
        links = [
            ("traced", _href(files.cracks.traced)),
            ("crack mask", _href(files.cracks.mask)),
            ("cracks CSV", _href(files.cracks.table)),
            ("GeoJSON", _href(files.cracks.geojson)),
            *links,
        ]
    else:
        headline = "not traced"
        cracks = [("why", "the model has no pixel decoder")]
    return Card(
        photo=summary.photo,
        width=summary.width,
        height=summary.height,
        headline=headline,
        details=[
            *cracks,
            ("unfamiliar", unfamiliar),
            ("threshold", f"{summary.threshold:.3f}"),
            ("windows over it", f"{summary.tiles_flagged} of {summary.tiles_total}"),
            ("model", summary.model or "-"),
            ("mapped at", f"{summary.width}×{summary.height} px, scale {scales}"),
            ("overlap, engine", f"{summary.overlap:g}, {summary.engine}"),
        ],
        overlay=links[0][1],
        thumbnail=_href(files.thumbnail),
        links=[
            *links,
            ("window mask", _href(files.mask)),
            ("heatmap", _href(files.heatmap)),
            ("JSON", _href(files.record)),
        ],
    )


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def _href(path: Path) -> str:
    """A link relative to the report (its folder), safe for any file name."""
    return quote(path.name)
