"""A mapped photo's outputs in an output folder: their names, their writers, and whether a
complete set made from the same inputs is already there (a rerun then reuses it).

Completeness is judged by the photo's JSON (``<stem>.json``, with ``made_from``): it is
removed before any other output of the photo is replaced and written last, so a set that a
killed run left half-replaced has no JSON and is mapped again, never taken for done.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crackdet.core.io import remove_stale_temps, save_npy, write_json, write_with
from crackdet.core.params import PredictParams
from crackdet.maps.crack_outputs import (
    JPEG,
    CrackFiles,
    PhotoPlace,
    TracedPhoto,
    write_crack_files,
)
from crackdet.maps.crackmap import CrackMap
from crackdet.maps.drawing import contact_sheet, overlay_image

# The heatmap and mask: smooth 8-bit images, zlib level 1 (~0.1 s and well under 0.1 MB at 12 MP).
PNG = {"format": "PNG", "compress_level": 1}
THUMB_WIDTH = 480  # the report's cards and the contact sheet
CONTACT_SHEET = "contact_sheet.png"


@dataclass(frozen=True)
class PhotoSummary:
    """What one mapped photo's JSON says besides its tiles (also listed in ``summary.json``)."""

    photo: str
    width: int
    height: int
    model: str
    threshold: float
    overlap: float
    scales: list[float]  # the scales the map averages (predict.scale, or those auto chose)
    engine: str
    crack_area_fraction: float
    tiles_flagged: int
    tiles_total: int
    ood_fraction: float | None
    outputs: str  # the stem of this photo's output files in the output folder
    # Traced cracks (crackdet.maps.crack_outputs), where the model has a pixel decoder; None
    # and "": not traced. Lengths and widths in crack_unit (mm where the scale is known, else px).
    crack_count: int | None = None
    crack_length: float | None = None  # all cracks together
    crack_max_width: float | None = None
    crack_severity: str = ""  # the worst crack's band ("" without a scale)
    crack_severity_rank: int = -1  # its index in predict.width_bands (-1: none)
    crack_unit: str = ""

    @property
    def traced(self) -> bool:
        return self.crack_count is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhotoSummary:
        """From a photo's JSON (KeyError: written by a crackdet without some field)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class MadeFrom:
    """What a photo's outputs were made from (its JSON's ``made_from``): when all of it is the
    same, the outputs are reused instead of mapping the photo again."""

    photo_sha256: str
    model: str  # the model's digest (crackdet.workflows.models.model_identity)
    scale: float | str  # a number or "auto"
    auto_windows: list[float]  # a list, as the JSON holds it (compared with it)
    overlap: float
    threshold: float
    engine: str
    alpha: float
    windows: str = "sliding"  # predict.windows: sliding windows or the dense pass's window head
    # The crack outputs' settings: predict.pixel_threshold, the photo's mm per pixel (from
    # predict.mm_per_pixel or the scale CSV), predict.width_bands, predict.min_crack_length_px,
    # predict.pixel_hysteresis, predict.crack_gap_px.
    pixel_threshold: float | str = ""
    mm_per_pixel: float | None = None
    width_bands: list[dict[str, Any]] = field(default_factory=list)
    min_crack_length_px: float = 0.0
    pixel_hysteresis: float = 1.0
    crack_gap_px: float = 0.0


@dataclass(frozen=True)
class PhotoFiles:
    """The files a mapped photo gets in the output folder, named by its stem."""

    folder: Path
    stem: str

    @property
    def overlay(self) -> Path:
        return self.folder / f"{self.stem}_overlay.jpg"

    @property
    def heatmap(self) -> Path:
        return self.folder / f"{self.stem}_heatmap.png"

    @property
    def heatmap_npy(self) -> Path:
        return self.folder / f"{self.stem}_heatmap.npy"

    @property
    def mask(self) -> Path:
        return self.folder / f"{self.stem}_mask.png"

    @property
    def thumbnail(self) -> Path:
        return self.folder / f"{self.stem}_thumb.jpg"

    @property
    def record(self) -> Path:
        """The JSON: summary, ``made_from`` and tiles; written last, so it marks completion."""
        return self.folder / f"{self.stem}.json"

    @property
    def cracks(self) -> CrackFiles:
        """The traced cracks' files (where the model has a pixel decoder)."""
        return CrackFiles(self.folder, self.stem)

    def maps(self) -> tuple[Path, ...]:
        """The files every mapped photo has, but its JSON."""
        return (self.overlay, self.heatmap, self.heatmap_npy, self.mask, self.thumbnail)

    def all(self) -> tuple[Path, ...]:
        """The photo's files that are there to copy, its JSON last: the maps, the crack files
        that exist (a photo mapped without a pixel decoder has none), the JSON."""
        cracks = tuple(p for p in self.cracks.all() if p.is_file())
        return (*self.maps(), *cracks, self.record)

    def expected(self, summary: PhotoSummary) -> tuple[Path, ...]:
        """Every file of a photo whose JSON says ``summary`` (a copier fetching a set reads the
        JSON first, then these), its JSON last."""
        return (*self.maps(), *(self.cracks.all() if summary.traced else ()), self.record)

    def complete(self, summary: PhotoSummary) -> bool:
        """Every file of a photo whose JSON says ``summary`` is there."""
        return all(path.is_file() for path in self.expected(summary))


def output_stems(photos: list[Path]) -> dict[Path, str]:
    """A distinct output stem per photo: its file stem, or, where two photos share one, its
    file name (``x.jpg``, ``x.png``), or, where those collide too (same name in two folders),
    the folder and file name (``a-x.jpg``, ``b-x.jpg``). Outputs never overwrite each other."""
    stems = {photo: photo.stem for photo in photos}
    for rule in (lambda p: p.name, lambda p: f"{p.parent.name}-{p.name}"):
        counts: dict[str, int] = {}
        for stem in stems.values():
            counts[stem] = counts.get(stem, 0) + 1
        stems = {p: (rule(p) if counts[s] > 1 else s) for p, s in stems.items()}
    counts = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    # Still equal (the same folder name twice): number them in the order given.
    seen: dict[str, int] = {}
    for photo, stem in list(stems.items()):
        if counts[stem] > 1:
            seen[stem] = seen.get(stem, 0) + 1
            stems[photo] = f"{stem}-{seen[stem]}"
    return stems


def already_mapped(files: PhotoFiles, made_from: MadeFrom) -> PhotoSummary | None:
    """The summary of a photo whose outputs are complete and made from ``made_from``; None when
    it must be mapped (again). Temporary files that killed writers left beside them go."""
    for path in (*files.maps(), *files.cracks.all(), files.record):
        remove_stale_temps(path)
    if not (made_from.model and made_from.photo_sha256):
        return None
    if not files.record.is_file():
        return None
    try:
        record = json.loads(files.record.read_text())
        if record.get("made_from") != asdict(made_from):
            return None
        summary = PhotoSummary.from_dict(record)
        return summary if files.complete(summary) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable or older: map the photo again


def mapped_before(folder: Path, exclude: set[str]) -> list[PhotoSummary]:
    """The photos whose complete outputs are in ``folder`` (an earlier run's), but for the
    stems in ``exclude``; in name order."""
    summaries = []
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if record.stem in exclude:
            continue
        try:
            summary = PhotoSummary.from_dict(json.loads(record.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a photo's JSON (or unreadable: that photo is mapped again)
        if summary.outputs == record.stem and PhotoFiles(folder, summary.outputs).complete(summary):
            summaries.append(summary)
    return summaries


# What the crack outputs are made from: the traced cracks and where the photo was taken, or
# (None, None) for a model without pixel decoder.
Tracer = Callable[[], tuple[TracedPhoto | None, PhotoPlace | None]]


def write_outputs(
    files: PhotoFiles,
    photo: np.ndarray,
    result: CrackMap,
    summary: PhotoSummary,
    made_from: MadeFrom,
    alpha: float,
    trace: Tracer = lambda: (None, None),
) -> PhotoSummary:
    """Overlay (JPEG), heatmap (PNG and float16 ``.npy``), mask at the summary's threshold,
    the cracks ``trace`` gives and their files (else any old ones go), thumbnail, then the JSON;
    returns the summary with the cracks' figures. The old JSON goes first: until the new one
    is written the set is incomplete. The window map's files do not depend on the cracks, so
    a second thread encodes them while ``trace`` runs (PIL's encoders and most of the tracing
    release the GIL: on 2 cores a 12 MP photo's outputs take the longer of the two, not both)."""
    files.record.unlink(missing_ok=True)
    with ThreadPoolExecutor(1, thread_name_prefix="crackdet-maps") as pool:
        window = pool.submit(write_window_files, files, photo, result, summary.threshold, alpha)
        traced, place = trace()
        summary = with_cracks(summary, traced)
        shown = None  # what the thumbnail shows: the traced cracks where there are, else the map
        if traced is None:
            for path in files.cracks.all():
                path.unlink(missing_ok=True)
        else:
            shown = write_crack_files(
                files.cracks, photo, traced, summary.photo, place or PhotoPlace()
            )
        overlay = window.result()
    thumb = thumbnail(overlay if shown is None else shown)
    write_with(files.thumbnail, partial(thumb.save, format="JPEG", quality=85))
    tiles = [t.to_dict() for t in result.tiles]
    record = {**summary.to_dict(), "made_from": asdict(made_from), "tiles": tiles}
    write_json(files.record, record, compact=True)  # a dense map: ~10,000 cells at scale auto
    return summary


def write_window_files(
    files: PhotoFiles, photo: np.ndarray, result: CrackMap, threshold: float, alpha: float
) -> Image.Image:
    """The window map's files: overlay (a JPEG like the traced one: a 12 MP overlay PNG took
    0.9 s to encode at zlib level 1, the JPEG 0.04 s, on a 2-core Xeon with AVX-512), heatmap
    PNG and float16 ``.npy``, and the mask at ``threshold``; returns the overlay."""
    overlay = overlay_image(photo, result.heatmap, alpha, result.ood_map)
    write_with(files.overlay, partial(overlay.save, **JPEG))
    # An overlay PNG (what crackdet wrote before) would show an older map beside this one.
    files.overlay.with_suffix(".png").unlink(missing_ok=True)
    heat8 = Image.fromarray(np.round(result.heatmap * 255).astype(np.uint8), "L")
    write_with(files.heatmap, partial(heat8.save, **PNG))
    write_with(files.heatmap_npy, partial(save_npy, result.heatmap.astype(np.float16)))
    mask = Image.fromarray(((result.heatmap >= threshold) * 255).astype(np.uint8), "L")
    write_with(files.mask, partial(mask.save, **PNG))
    return overlay


def with_crack_settings(
    made_from: MadeFrom, settings: PredictParams, mm_per_pixel: float | None
) -> MadeFrom:
    """``made_from`` with the settings the crack outputs are made from."""
    return replace(
        made_from,
        pixel_threshold=settings.pixel_threshold,
        mm_per_pixel=mm_per_pixel,
        width_bands=[asdict(band) for band in settings.width_bands],
        min_crack_length_px=settings.min_crack_length_px,
        pixel_hysteresis=settings.pixel_hysteresis,
        crack_gap_px=settings.crack_gap_px,
    )


def with_cracks(summary: PhotoSummary, traced: TracedPhoto | None) -> PhotoSummary:
    """``summary`` with the figures of its traced cracks (unchanged when not traced)."""
    if traced is None:
        return summary
    return replace(
        summary,
        crack_count=len(traced.cracks),
        crack_length=round(traced.total_length, 3),
        crack_max_width=round(traced.max_width, 3),
        crack_severity=traced.severity,
        crack_severity_rank=traced.severity_rank,
        crack_unit=traced.unit,
    )


def write_contact_sheet(folder: Path, summaries: list[PhotoSummary]) -> None:
    """``contact_sheet.png``: the thumbnails of ``summaries``, in order."""
    sheet = contact_sheet([_open(PhotoFiles(folder, s.outputs).thumbnail) for s in summaries])
    write_with(folder / CONTACT_SHEET, partial(sheet.save, format="PNG"))


def thumbnail(overlay: Image.Image) -> Image.Image:
    """The overlay scaled to THUMB_WIDTH pixels wide (never enlarged)."""
    thumb = overlay.copy()
    thumb.thumbnail((THUMB_WIDTH, max(1, overlay.height * THUMB_WIDTH // overlay.width)))
    return thumb


def _open(path: Path) -> Image.Image:
    """An image read whole and its file closed (a folder of photos must not exhaust handles)."""
    with Image.open(path) as image:
        return image.convert("RGB")
