"""Mapping a set of photos: per photo an overlay, a heatmap, a mask and a JSON of its tiles.

Shared by the ``predict_samples`` stage and ``crackdet predict``. A photo that cannot be read is
named on one line and the others are still mapped; the caller decides what a failure means.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
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
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MappedPhotos:
    """The photos mapped (in order) and the one-line errors of those that could not be read."""

    summaries: list[PhotoSummary]
    errors: list[str]


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
    summaries, errors, thumbnails = [], [], []
    engine = effective_engine(model, params.engine)  # torch for a registry (pt2) model
    extract = classifier_features(model, engine, graph_cache)
    # The operating threshold chosen on val travels with the model; params can override it.
    threshold = operating_threshold(model, params.threshold, params.use_model_threshold)
    for photo_path in photos:
        try:
            photo = read_photo(photo_path, params.max_pixels)
        except CrackdetError as exc:
            print(f"{command}: error: {exc}", file=sys.stderr)
            errors.append(str(exc))
            continue
        result = crack_map(
            model, photo, params.overlap, params.batch_size, params.scale, ood, extract
        )
        overlay = overlay_image(photo, result.heatmap, params.alpha, result.ood_map)
        stem = photo_path.stem
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
            seconds=round(result.seconds, 3),
        )
        tiles = [t.to_dict() for t in result.tiles]
        write_json(out / f"{stem}.json", {**summary.to_dict(), "tiles": tiles})
        summaries.append(summary)
        thumbnails.append(overlay)
        print(
            f"{command}: {photo_path.name}: {summary.tiles_flagged}/"
            f"{summary.tiles_total} tiles over {threshold:.3f} in {result.seconds:.1f} s"
        )
    if thumbnails:
        sheet = contact_sheet(thumbnails)
        write_with(out / "contact_sheet.png", partial(sheet.save, format="PNG"))
    return MappedPhotos(summaries, errors)
