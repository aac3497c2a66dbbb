"""Measured cracks as an inspector uses them: from a photo's P(crack pixel) map to its crack
mask, traced overlay, crack table (CSV), GeoJSON of the polylines, and the folder's table of all
cracks.

The photo's scale (millimetres per pixel) is ``predict.mm_per_pixel``, or the photo's row of
the scale CSV beside it (``predict.scale_csv``); with neither, cracks are measured in pixels and
have no severity. The GeoJSON's coordinates are the photo's pixels (x right, y down), not
longitude and latitude: the photo's own EXIF GPS position and capture time, where it has them,
are properties of each crack, so a crack can be carried to a drawing and the photo to a map.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from crackdet.core.errors import CrackdetError
from crackdet.core.io import atomic_path, write_json, write_text, write_with
from crackdet.core.params import PredictParams, WidthBand
from crackdet.maps.cracks import Crack, crack_mask, trace_cracks

FOLDER_CRACKS = "cracks.csv"  # every photo's cracks, in the report's folder
CRACK_TABLE = "_cracks.csv"  # a photo's own, after its output stem
SCALE_COLUMNS = ("photo", "mm_per_pixel")
DEFAULT_PIXEL_THRESHOLD = 0.5  # a decoder that chose no threshold on val
# The crack mask: a 1-bit PNG at zlib level 1 (a 12 MP mask: ~40 kB, a tenth of a second).
PNG = {"format": "PNG", "compress_level": 1}
# The traced overlay is a JPEG: a 12 MP photo is ~1.8 MB and 0.1 s, where a PNG is ~15 MB and
# 1.5-3 s (zlib level 1), the larger part of the time to write a photo's outputs.
JPEG = {"format": "JPEG", "quality": 90, "subsampling": 0}  # 4:4:4: thin lines keep colour
# Traced cracks by band, narrowest first (the last colour repeats for more bands); one colour
# where the scale is unknown and cracks have no severity.
BAND_COLOURS = ((255, 220, 0), (255, 140, 0), (230, 20, 20), (170, 0, 170))
UNGRADED_COLOUR = (0, 200, 255)
CSV_COLUMNS = (
    "crack",
    "length",
    "mean_width",
    "max_width",
    "unit",
    "severity",
    "branches",
    "x0",
    "y0",
    "x1",
    "y1",
    "length_px",
    "mean_width_px",
    "max_width_px",
)


# --- the photo's scale -----------------------------------------------------------------------


@functools.cache
def _read_scale_csv(path: Path, _stamp: tuple[int, int]) -> dict[str, float]:
    """``photo -> mm_per_pixel`` from a scale CSV (``_stamp``: its mtime and size, so a changed
    file is read again)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CrackdetError(f"{path}: cannot be read ({exc}); fix or remove it") from None
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != SCALE_COLUMNS:
        raise CrackdetError(
            f"{path}: columns must be {','.join(SCALE_COLUMNS)}; got "
            f"{','.join(reader.fieldnames or ()) or 'none'}"
        )
    scales: dict[str, float] = {}
    for line, row in enumerate(reader, start=2):
        name, value = (row.get("photo") or "").strip(), (row.get("mm_per_pixel") or "").strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise CrackdetError(
                f"{path}: line {line} ({name}): mm_per_pixel must be a positive number; "
                f"got {value!r}"
            )
        if name in scales:
            raise CrackdetError(f"{path}: line {line}: {name} is listed twice; keep one row")
        scales[name] = number
    return scales


def scale_csv_of(folder: Path, settings: PredictParams) -> dict[str, float] | None:
    """The scale CSV of a folder of photos (None: ``predict.scale_csv`` is empty)."""
    if not settings.scale_csv:
        return None
    path = folder / settings.scale_csv
    if not path.is_file():
        raise CrackdetError(
            f"{path}: not found (predict.scale_csv names it); add it beside the photos "
            '(columns photo,mm_per_pixel) or set predict.scale_csv to ""'
        )
    stat = path.stat()
    return _read_scale_csv(path, (stat.st_mtime_ns, stat.st_size))


def check_scale_csvs(photos: list[Path], settings: PredictParams) -> None:
    """Before anything is mapped: every folder's scale CSV lists each photo mapped from it and
    names no photo that is not there; all problems at once, one line per CSV."""
    if not settings.scale_csv:
        return
    by_folder: dict[Path, list[Path]] = {}
    for photo in photos:
        by_folder.setdefault(photo.parent, []).append(photo)
    problems = []
    for folder, mapped in by_folder.items():
        try:
            table = scale_csv_of(folder, settings)
        except CrackdetError as exc:
            problems.append(str(exc))
            continue
        assert table is not None
        path = folder / settings.scale_csv
        missing = [p.name for p in mapped if p.name not in table]
        absent = sorted(name for name in table if not (folder / name).is_file())
        if missing or absent:
            said = []
            if missing:
                said.append(f"misses {', '.join(missing)}")
            if absent:
                said.append(f"names photos that are not there: {', '.join(absent)}")
            problems.append(f"{path}: {'; '.join(said)}; list each photo once, by file name")
    if problems:
        raise CrackdetError("\n".join(problems))


def photo_mm_per_pixel(photo: Path, settings: PredictParams) -> float | None:
    """The photo's millimetres per pixel: its row of the scale CSV, else predict.mm_per_pixel
    (None: unknown)."""
    table = scale_csv_of(photo.parent, settings)
    if table is None:
        return settings.mm_per_pixel
    if photo.name not in table:
        raise CrackdetError(
            f"{photo.parent / settings.scale_csv}: misses {photo.name}; add its row"
        )
    return table[photo.name]


def pixel_threshold(setting: float | str, model_threshold: float | None) -> float:
    """P(crack pixel) at or over which a pixel is crack: a number from params, or ("model")
    the decoder's own, chosen on val."""
    if isinstance(setting, str):
        return DEFAULT_PIXEL_THRESHOLD if model_threshold is None else float(model_threshold)
    return float(setting)


# --- the photo's place and time (EXIF) -------------------------------------------------------

GPS_IFD, EXIF_IFD = 0x8825, 0x8769
DATETIME, DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x0132, 0x9003, 0x9011


@dataclass(frozen=True)
class PhotoPlace:
    """Where and when the photo was taken, as its EXIF says (None: not recorded)."""

    latitude: float | None = None  # decimal degrees, north positive
    longitude: float | None = None  # decimal degrees, east positive
    altitude_m: float | None = None  # metres above sea level
    captured: str | None = None  # ISO 8601 local time (with its offset where recorded)

    def properties(self) -> dict[str, Any]:
        """The GeoJSON properties it gives (only those recorded)."""
        values = {
            "photo_latitude": self.latitude,
            "photo_longitude": self.longitude,
            "photo_altitude_m": self.altitude_m,
            "photo_captured": self.captured,
        }
        return {key: value for key, value in values.items() if value is not None}


def _degrees(value: Any, ref: Any, negative: str) -> float | None:
    try:
        d, m, s = (float(v) for v in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    number = d + m / 60 + s / 3600
    if not math.isfinite(number):
        return None
    ref = ref.decode() if isinstance(ref, bytes) else str(ref or "")
    return round(-number if ref.strip().upper() == negative else number, 7)


def photo_place(path: Path) -> PhotoPlace:
    """The photo's EXIF GPS position and capture time; an empty record when it has none (or
    none that reads)."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            gps = dict(exif.get_ifd(GPS_IFD))
            extra = dict(exif.get_ifd(EXIF_IFD))
            stamp = extra.get(DATETIME_ORIGINAL) or exif.get(DATETIME)
            offset = extra.get(OFFSET_TIME_ORIGINAL)
    except (OSError, ValueError, SyntaxError):
        return PhotoPlace()
    latitude = _degrees(gps.get(2), gps.get(1), "S") if 2 in gps else None
    longitude = _degrees(gps.get(4), gps.get(3), "W") if 4 in gps else None
    altitude = None
    if 6 in gps:
        try:
            altitude = float(gps[6])
            below = gps.get(5) in (1, b"\x01")
            altitude = round(-altitude if below else altitude, 3)
        except (TypeError, ValueError, ZeroDivisionError):
            altitude = None
    captured = None
    if isinstance(stamp, str) and len(stamp) >= 19 and stamp[4] == ":" and stamp[7] == ":":
        captured = f"{stamp[:4]}-{stamp[5:7]}-{stamp[8:10]}T{stamp[11:19]}"
        if isinstance(offset, str) and offset.strip():
            captured += offset.strip()
    if latitude is None or longitude is None:
        latitude = longitude = None  # half a position is no position
    return PhotoPlace(latitude, longitude, altitude, captured)


# --- tracing and the photo's crack files -----------------------------------------------------


@dataclass(frozen=True)
class TracedPhoto:
    """A photo's cracks, traced from its crack pixels."""

    mask: np.ndarray  # bool HxW: P(crack pixel) >= threshold
    cracks: list[Crack]
    mm_per_pixel: float | None
    bands: tuple[WidthBand, ...]

    @property
    def unit(self) -> str:
        return "px" if self.mm_per_pixel is None else "mm"

    def in_unit(self, pixels: float) -> float:
        return pixels if self.mm_per_pixel is None else pixels * self.mm_per_pixel

    @property
    def total_length(self) -> float:
        return self.in_unit(sum(c.length_px for c in self.cracks))

    @property
    def max_width(self) -> float:
        return self.in_unit(max((c.max_width_px for c in self.cracks), default=0.0))

    @property
    def severity_rank(self) -> int:
        """The index of the worst crack's band in ``bands`` (-1: no crack, or no scale)."""
        names = [b.name for b in self.bands]
        return max((names.index(c.severity) for c in self.cracks if c.severity), default=-1)

    @property
    def severity(self) -> str:
        rank = self.severity_rank
        return self.bands[rank].name if rank >= 0 else ""

    def rows(self) -> list[dict[str, Any]]:
        """The crack table: one row per crack, lengths and widths in ``unit``."""
        return [
            {
                "crack": c.id,
                "length": round(self.in_unit(c.length_px), 3),
                "mean_width": round(self.in_unit(c.mean_width_px), 3),
                "max_width": round(self.in_unit(c.max_width_px), 3),
                "unit": self.unit,
                "severity": c.severity,
                "branches": c.branches,
                "x0": c.bbox[0],
                "y0": c.bbox[1],
                "x1": c.bbox[2],
                "y1": c.bbox[3],
                "length_px": round(c.length_px, 2),
                "mean_width_px": round(c.mean_width_px, 2),
                "max_width_px": round(c.max_width_px, 2),
            }
            for c in self.cracks
        ]


def trace_photo(
    pixels: np.ndarray | None,
    decoder_threshold: float | None,
    mm_per_pixel: float | None,
    settings: PredictParams,
) -> TracedPhoto | None:
    """Threshold P(crack pixel) at predict.pixel_threshold (``decoder_threshold``: the one the
    decoder chose on val) and trace the cracks, in mm where the scale is known; None where the
    model has no pixel decoder (``pixels`` None)."""
    if pixels is None:
        return None
    threshold = pixel_threshold(settings.pixel_threshold, decoder_threshold)
    mask = crack_mask(pixels, threshold, settings.pixel_hysteresis)
    cracks, _ = trace_cracks(
        mask,
        mm_per_pixel=mm_per_pixel,
        bands=settings.width_bands,
        min_length_px=settings.min_crack_length_px,
        gap_px=settings.crack_gap_px,
    )
    return TracedPhoto(mask, cracks, mm_per_pixel, settings.width_bands)


@dataclass(frozen=True)
class CrackFiles:
    """A photo's crack files in the output folder, named by its stem."""

    folder: Path
    stem: str

    @property
    def mask(self) -> Path:
        return self.folder / f"{self.stem}_cracks.png"

    @property
    def traced(self) -> Path:
        return self.folder / f"{self.stem}_traced.jpg"

    @property
    def table(self) -> Path:
        return self.folder / f"{self.stem}{CRACK_TABLE}"

    @property
    def geojson(self) -> Path:
        return self.folder / f"{self.stem}_cracks.geojson"

    def all(self) -> tuple[Path, ...]:
        return (self.mask, self.traced, self.table, self.geojson)


def band_colour(crack: Crack, bands: tuple[WidthBand, ...]) -> tuple[int, int, int]:
    names = [b.name for b in bands]
    if not crack.severity or crack.severity not in names:
        return UNGRADED_COLOUR
    return BAND_COLOURS[min(names.index(crack.severity), len(BAND_COLOURS) - 1)]


def traced_image(photo: np.ndarray, traced: TracedPhoto) -> Image.Image:
    """The photo, dimmed, with each crack's polylines drawn in its severity's colour and its id
    beside its start."""
    height, width = photo.shape[:2]
    image = Image.fromarray(photo, "RGB").point(lambda v: v * 3 // 4)  # a lookup table: fast
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(height, width) / 700))
    # Numbers readable at the photo's size: about 1.5 % of its long side.
    font = ImageFont.load_default(size=max(10, round(max(height, width) / 70)))
    for crack in traced.cracks:
        colour = band_colour(crack, traced.bands)
        for poly in crack.polylines:
            if len(poly) == 1:
                draw.point(poly, fill=colour)
            else:
                draw.line(poly, fill=colour, width=line, joint="curve")
        x, y = crack.polylines[0][0]
        draw.text((x + line + 2, y + line + 2), str(crack.id), fill=colour, font=font)
    return image


def write_crack_files(
    files: CrackFiles, photo: np.ndarray, traced: TracedPhoto, name: str, place: PhotoPlace
) -> Image.Image:
    """The crack mask (1-bit PNG, white = crack), the traced overlay (JPEG), the crack table
    and the GeoJSON, each written atomically; returns the traced overlay (the photo's thumbnail
    shows it)."""
    mask = Image.fromarray(np.ascontiguousarray(traced.mask, dtype=bool))  # mode "1"
    write_with(files.mask, partial(mask.save, **PNG))
    overlay = traced_image(photo, traced)
    write_with(files.traced, partial(overlay.save, **JPEG))
    write_text(files.table, _csv(traced.rows(), CSV_COLUMNS))
    write_json(files.geojson, geojson(traced, name, photo.shape[1], photo.shape[0], place))
    return overlay


def geojson(
    traced: TracedPhoto, name: str, width: int, height: int, place: PhotoPlace
) -> dict[str, Any]:
    """A FeatureCollection, one feature per crack: its polylines in pixel coordinates, its row
    of the crack table and the photo's place and time as properties."""
    features = []
    for crack, row in zip(traced.cracks, traced.rows(), strict=True):
        # A line has two positions at least: a one-pixel crack is a line from it to itself.
        lines = [
            [[x, y] for x, y in (poly * 2 if len(poly) == 1 else poly)] for poly in crack.polylines
        ]
        geometry = (
            {"type": "LineString", "coordinates": lines[0]}
            if len(lines) == 1
            else {"type": "MultiLineString", "coordinates": lines}
        )
        features.append(
            {
                "type": "Feature",
                "id": crack.id,
                "geometry": geometry,
                "properties": {"photo": name, **row, **place.properties()},
            }
        )
    return {
        "type": "FeatureCollection",
        # Not longitude/latitude (RFC 7946's default): x right, y down in the photo's pixels.
        "coordinates": "photo pixels (x right, y down)",
        "photo": {
            "name": name,
            "width": width,
            "height": height,
            "mm_per_pixel": traced.mm_per_pixel,
            **place.properties(),
        },
        "features": features,
    }


def _csv(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def folder_tables(folder: Path, photos: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(photo name, its crack table's text) of ``photos`` ((photo name, output stem)) whose
    table is in ``folder``, one at a time."""
    for name, stem in photos:
        table = CrackFiles(folder, stem).table
        if table.is_file():
            yield name, table.read_text(encoding="utf-8")


def write_folder_cracks(target: Path, tables: Iterable[tuple[str, str]]) -> Path | None:
    """``cracks.csv``: the crack tables ``tables`` yields ((photo name, table text), in order)
    with a photo column first, streamed one photo at a time (a campaign's thousands of photos
    are never held together); None (nothing written) when there is none."""
    tables = iter(tables)
    first = next(tables, None)
    if first is None:
        return None
    with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=("photo", *CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for name, text in itertools.chain([first], tables):
            writer.writerows({"photo": name, **row} for row in csv.DictReader(io.StringIO(text)))
    return target
