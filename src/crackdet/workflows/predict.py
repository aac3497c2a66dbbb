"""``crackdet predict``: crack maps of any photos or folders with any model (a checkpoint
folder or a registry URI), and the inspection report ``index.html`` beside them. A rerun into
the same folder maps only the photos whose outputs are missing or were made otherwise."""

from __future__ import annotations

from pathlib import Path

from crackdet.core.layout import Layout
from crackdet.core.params import PredictParams
from crackdet.maps.html_report import write_report
from crackdet.maps.mapping import MappedPhotos, map_photos
from crackdet.maps.photos import left_out_line, list_photos
from crackdet.workflows.models import load_model, model_identity, ood_beside


def predict(
    photos: list[Path], model_ref: str, out: Path, cfg: PredictParams, layout: Layout
) -> MappedPhotos:
    """``crackdet predict``: map photos and folders of photos with a checkpoint folder or a
    registry model into ``out``."""
    model = load_model(model_ref, layout)
    ood = ood_beside(model_ref)
    files: list[Path] = []
    left_out: list[Path] = []
    for item in photos:
        if item.is_dir():
            folder = list_photos(item)
            files += folder.photos
            left_out += folder.left_out
        else:
            files.append(item)
    if left_out:
        print(left_out_line("predict", left_out))
    identity = model_identity(model_ref, model, layout)
    # Exported graphs are cached where the pipeline keeps them (run from the repo root).
    mapped = map_photos(
        model,
        files,
        out,
        cfg,
        identity.label,
        ood,
        layout.graph_cache,
        "predict",
        model_digest=identity.digest,
    )
    if mapped.summaries or mapped.errors:
        write_report(out, mapped, f"Crack maps: {', '.join(p.name for p in photos)}")
    return mapped
