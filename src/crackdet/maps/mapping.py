"""Mapping a set of photos: per photo an overlay, a heatmap, a mask and a JSON of its tiles.

Shared by the ``predict_samples`` stage and ``crackdet predict``. A photo that cannot be read is
named on one line and the others are still mapped; the caller decides what a failure means.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crackdet.core.errors import CrackdetError
from crackdet.core.io import save_npy, write_json, write_with
from crackdet.core.params import PredictParams
from crackdet.maps.crackmap import crack_map
from crackdet.maps.photos import read_photo
from crackdet.maps.render import contact_sheet, overlay_image
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
    scale: float
    engine: str
    crack_area_fraction: float
    tiles_flagged: int
    tiles_total: int
    ood_fraction: float | None
    outputs: str  # the stem of this photo's output files in the output folder

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MappedPhotos:
    """The photos mapped (in order), the one-line errors of those that could not be read, and
    the seconds each map took (kept out of the written files: outputs must be the same bytes
    for the same photos and model)."""

    summaries: list[PhotoSummary]
    errors: list[str]
    seconds: list[float] = field(default_factory=list)


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
) -> MappedPhotos:
    """Per photo: ``<stem>_overlay.png``, ``<stem>_heatmap.png`` / ``.npy`` (crack probability),
    ``<stem>_mask.png`` (at the threshold) and ``<stem>.json``; plus ``contact_sheet.png``.
    ``graph_cache``: folder of exported graphs for the onnxruntime and openvino engines (None:
    temp export); ``command`` names the caller in error lines."""
    summaries, errors, thumbnails, seconds = [], [], [], []
    stems = output_stems(photos)
    renamed = [f"{p} -> {stems[p]}_*" for p in photos if stems[p] != p.stem]
    if renamed:
        print(f"{command}: photos share a file name; outputs named apart: {', '.join(renamed)}")
    engine = effective_engine(model, params.engine)  # torch for a registry (pt2) model
    extract = classifier_features(model, engine, graph_cache)
    # The operating threshold chosen on val travels with the model; params can override it.
    threshold = operating_threshold(model, params.threshold, params.use_model_threshold)
    for photo_path in photos:
        try:
            photo = read_photo(photo_path, params.max_pixels, params.scale)
        except CrackdetError as exc:
            print(f"{command}: error: {exc}", file=sys.stderr)
            errors.append(str(exc))
            continue
        result = crack_map(
            model, photo, params.overlap, params.batch_size, params.scale, ood, extract
        )
        overlay = overlay_image(photo, result.heatmap, params.alpha, result.ood_map)
        stem = stems[photo_path]
        write_with(out / f"{stem}_overlay.png", partial(overlay.save, **PNG))
        heat8 = Image.fromarray(np.round(result.heatmap * 255).astype(np.uint8), "L")
        write_with(out / f"{stem}_heatmap.png", partial(heat8.save, **PNG))
        write_with(
            out / f"{stem}_heatmap.npy", partial(save_npy, result.heatmap.astype(np.float16))
        )
        mask = Image.fromarray(((result.heatmap >= threshold) * 255).astype(np.uint8), "L")
        write_with(out / f"{stem}_mask.png", partial(mask.save, **PNG))
        summary = PhotoSummary(
            photo=photo_path.name,
            width=int(photo.shape[1]),
            height=int(photo.shape[0]),
            model=model_ref,
            threshold=threshold,
            overlap=params.overlap,
            scale=params.scale,
            engine=engine_label(engine),
            crack_area_fraction=round(result.crack_fraction(threshold), 6),
            tiles_flagged=sum(t.p >= threshold for t in result.tiles),
            tiles_total=len(result.tiles),
            ood_fraction=result.ood_fraction,
            outputs=stem,
        )
        tiles = [t.to_dict() for t in result.tiles]
        write_json(out / f"{stem}.json", {**summary.to_dict(), "tiles": tiles})
        summaries.append(summary)
        seconds.append(result.seconds)
        thumbnails.append(overlay)
        print(
            f"{command}: {photo_path.name}: {summary.tiles_flagged}/"
            f"{summary.tiles_total} tiles over {threshold:.3f} in {result.seconds:.1f} s"
        )
    if thumbnails:
        sheet = contact_sheet(thumbnails)
        write_with(out / "contact_sheet.png", partial(sheet.save, format="PNG"))
    return MappedPhotos(summaries, errors, seconds)
