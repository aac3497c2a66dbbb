"""Mapping a set of photos: per photo an overlay, a heatmap, a mask, a thumbnail and a JSON of
its tiles.

Shared by the ``predict_samples`` stage and ``crackdet predict``. A photo that cannot be read is
named on one line and the others are still mapped; the caller decides what a failure means.
Mapping a folder resumes: a photo whose outputs are all there, made from the same photo bytes,
model and settings (the JSON's ``made_from``, written last), is not mapped again but counted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crackdet.core.errors import CrackdetError
from crackdet.core.io import save_npy, sha256_file, write_json, write_with
from crackdet.core.params import PredictParams
from crackdet.core.progress import progress, say
from crackdet.maps.crackmap import crack_map, scales_for
from crackdet.maps.drawing import contact_sheet, overlay_image
from crackdet.maps.photos import read_photo
from crackdet.model.classifier import CrackClassifier, operating_threshold
from crackdet.model.engines import classifier_features, effective_engine, engine_label
from crackdet.model.ood import OODModel

# zlib level 1: a 12 MP overlay encodes in ~0.8 s instead of ~4.8 s at the default 6, ~9 % larger.
PNG = {"format": "PNG", "compress_level": 1}


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


@dataclass(frozen=True)
class PhotoFiles:
    """The files a mapped photo gets in the output folder, named by its stem."""

    folder: Path
    stem: str

    @property
    def overlay(self) -> Path:
        return self.folder / f"{self.stem}_overlay.png"

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

    def all(self) -> tuple[Path, ...]:
        return (
            self.overlay,
            self.heatmap,
            self.heatmap_npy,
            self.mask,
            self.thumbnail,
            self.record,
        )


@dataclass
class MappedPhotos:
    """The photos mapped (in order), the one-line errors of those that could not be read, the
    seconds each map took (kept out of the written files: outputs must be the same bytes for the
    same photos and model), and the photos whose outputs were already complete (``skipped``:
    listed in ``summaries`` too, with no seconds)."""

    summaries: list[PhotoSummary]
    errors: list[str]
    seconds: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# The files of a checkpoint folder that decide its maps: weights, spec (threshold, temperature)
# and the OOD model.
CHECKPOINT_FILES = ("model.pt", "model.json", "ood.npz")


def checkpoint_digest(folder: Path) -> str:
    """sha256 over the sha256s of a checkpoint folder's CHECKPOINT_FILES (absent ones too):
    what identifies the model whose maps a folder holds."""
    digest = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        path = folder / name
        digest.update(f"{name}:{sha256_file(path) if path.is_file() else '-'}\n".encode())
    return digest.hexdigest()


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


def map_photos(
    model: CrackClassifier,
    photos: list[Path],
    out: Path,
    params: PredictParams,
    model_ref: str = "",
    ood: OODModel | None = None,
    graph_cache: Path | None = None,
    command: str = "predict_samples",
    model_digest: str = "",
) -> MappedPhotos:
    """Per photo: ``<stem>_overlay.png``, ``<stem>_heatmap.png`` / ``.npy`` (crack probability),
    ``<stem>_mask.png`` (at the threshold), ``<stem>_thumb.jpg`` and ``<stem>.json``; plus
    ``contact_sheet.png``. ``model_ref``: how the model is named in the outputs;
    ``model_digest``: what identifies its weights (empty: never reuse outputs); ``graph_cache``:
    folder of exported graphs for the onnxruntime and openvino engines (None: temp export);
    ``command`` names the caller in error lines."""
    summaries, errors, seconds, skipped = [], [], [], []
    stems = output_stems(photos)
    renamed = [f"{p} -> {stems[p]}_*" for p in photos if stems[p] != p.stem]
    if renamed:
        print(f"{command}: photos share a file name; outputs named apart: {', '.join(renamed)}")
    engine = effective_engine(model, params.engine)  # torch for a registry (pt2) model
    extract = classifier_features(model, engine, graph_cache)
    # The operating threshold chosen on val travels with the model; params can override it.
    threshold = operating_threshold(model, params.threshold, params.use_model_threshold)
    patch = model.spec.patch_size

    def largest_scale(height: int, width: int) -> float:
        return max(scales_for(params.scale, params.auto_windows, height, width, patch))

    for photo_path in progress(photos, desc=command, unit="photo"):
        files = PhotoFiles(out, stems[photo_path])
        made_from = MadeFrom(
            photo_sha256=_digest(photo_path),
            model=model_digest,
            scale=params.scale,
            auto_windows=list(params.auto_windows),
            overlap=params.overlap,
            threshold=threshold,
            engine=engine_label(engine),
            alpha=params.alpha,
        )
        done = _already_mapped(files, made_from)
        if done is not None:
            summaries.append(done)
            skipped.append(photo_path.name)
            continue
        try:
            photo = read_photo(photo_path, params.max_pixels, largest_scale)
        except CrackdetError as exc:
            say(f"{command}: error: {exc}", error=True)
            errors.append(str(exc))
            continue
        scales = scales_for(params.scale, params.auto_windows, *photo.shape[:2], patch)
        result = crack_map(model, photo, params.overlap, params.batch_size, scales, ood, extract)
        overlay = overlay_image(photo, result.heatmap, params.alpha, result.ood_map)
        write_with(files.overlay, partial(overlay.save, **PNG))
        heat8 = Image.fromarray(np.round(result.heatmap * 255).astype(np.uint8), "L")
        write_with(files.heatmap, partial(heat8.save, **PNG))
        write_with(files.heatmap_npy, partial(save_npy, result.heatmap.astype(np.float16)))
        mask = Image.fromarray(((result.heatmap >= threshold) * 255).astype(np.uint8), "L")
        write_with(files.mask, partial(mask.save, **PNG))
        thumb = thumbnail(overlay)
        write_with(files.thumbnail, partial(thumb.save, format="JPEG", quality=85))
        summary = PhotoSummary(
            photo=photo_path.name,
            width=int(photo.shape[1]),
            height=int(photo.shape[0]),
            model=model_ref,
            threshold=threshold,
            overlap=params.overlap,
            scales=list(scales),
            engine=engine_label(engine),
            crack_area_fraction=round(result.crack_fraction(threshold), 6),
            tiles_flagged=sum(t.p >= threshold for t in result.tiles),
            tiles_total=len(result.tiles),
            ood_fraction=result.ood_fraction,
            outputs=files.stem,
        )
        tiles = [t.to_dict() for t in result.tiles]
        record = {**summary.to_dict(), "made_from": asdict(made_from), "tiles": tiles}
        write_json(files.record, record)
        summaries.append(summary)
        seconds.append(result.seconds)
    if summaries:
        sheet = contact_sheet([_open(PhotoFiles(out, s.outputs).thumbnail) for s in summaries])
        write_with(out / "contact_sheet.png", partial(sheet.save, format="PNG"))
    return MappedPhotos(summaries, errors, seconds, skipped)


THUMB_WIDTH = 480  # the report's cards and the contact sheet


def thumbnail(overlay: Image.Image) -> Image.Image:
    """The overlay scaled to THUMB_WIDTH pixels wide (never enlarged)."""
    thumb = overlay.copy()
    thumb.thumbnail((THUMB_WIDTH, max(1, overlay.height * THUMB_WIDTH // overlay.width)))
    return thumb


def _open(path: Path) -> Image.Image:
    """An image read whole and its file closed (a folder of photos must not exhaust handles)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def _digest(photo: Path) -> str:
    """The photo's sha256, or "" when it cannot be read (read_photo then says why)."""
    try:
        return sha256_file(photo)
    except OSError:
        return ""


def _already_mapped(files: PhotoFiles, made_from: MadeFrom) -> PhotoSummary | None:
    """The summary of a photo whose outputs are complete and made from ``made_from``."""
    if not (made_from.model and made_from.photo_sha256):
        return None
    if not all(path.is_file() for path in files.all()):
        return None
    try:
        record = json.loads(files.record.read_text())
        if record.get("made_from") != asdict(made_from):
            return None
        return PhotoSummary.from_dict(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable or older: map the photo again
