"""``crackdet predict``: crack maps of any photos or folders with any model (a checkpoint
folder or a registry URI)."""

from __future__ import annotations

from pathlib import Path

from crackdet.core.layout import Layout
from crackdet.core.params import PredictParams
from crackdet.maps.mapping import MappedPhotos, map_photos
from crackdet.maps.photos import left_out_line, list_photos
from crackdet.model.ood import OODModel
from crackdet.workflows.models import REGISTRY_SCHEMES, load_model


def predict(
    photos: list[Path], model_ref: str, out: Path, cfg: PredictParams, layout: Layout
) -> MappedPhotos:
    """``crackdet predict``: map photos and folders of photos with a checkpoint folder or a
    registry model into ``out``."""
    model = load_model(model_ref, layout)
    # The OOD model lives next to a checkpoint; registry models have none.
    ood = (
        None
        if model_ref.startswith(REGISTRY_SCHEMES)
        else OODModel.load(Path(model_ref) / "ood.npz")
    )
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
    # Exported graphs are cached where the pipeline keeps them (run from the repo root).
    return map_photos(model, files, out, cfg, model_ref, ood, layout.graph_cache, "predict")
