"""``crackdet predict``: crack maps of any photos or folders with any model (a checkpoint
folder or a registry URI), and the inspection report ``index.html`` beside them. A rerun into
the same folder maps only the photos whose outputs are missing or were made otherwise; the
report covers every photo mapped into the folder, by this run or an earlier one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from crackdet.core.errors import CrackdetError
from crackdet.core.layout import Layout
from crackdet.core.params import PredictParams
from crackdet.data.images import IMAGE_SUFFIXES
from crackdet.maps.html_report import write_report
from crackdet.maps.mapping import MappedPhotos, map_photos
from crackdet.maps.outputs import mapped_before
from crackdet.maps.photos import left_out_line, list_photos
from crackdet.workflows.models import checkpoint_folder, load_model, model_identity, ood_beside


def predict(
    photos: list[Path], model_ref: str, out: Path, cfg: PredictParams, layout: Layout
) -> MappedPhotos:
    """``crackdet predict``: map photos and folders of photos with a checkpoint folder or a
    registry model into ``out``. Everything handed over is checked before anything is
    written: every path exists, ``out`` is a folder (or new), there is a photo to map."""
    files = photo_files(photos)
    if out.exists() and not out.is_dir():
        raise CrackdetError(f"{out}: exists and is not a folder; name a folder for --out")
    model = load_model(model_ref, layout)
    ood = ood_beside(model_ref)
    if ood is None:
        print(
            f"predict: {model_ref} has no OOD model (ood.npz): surfaces unlike the training "
            "data are not hatched"
        )
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
        folder=checkpoint_folder(model_ref, layout),
    )
    # Photos an earlier run mapped into this folder stay in its report.
    stems = {s.outputs for s in mapped.summaries}
    report = replace(mapped, summaries=[*mapped.summaries, *mapped_before(out, stems)])
    if report.summaries or report.errors:
        write_report(out, report, f"Crack maps: {', '.join(p.name for p in photos)}")
    return mapped


def photo_files(photos: list[Path]) -> list[Path]:
    """The photos named and those in the folders named (what is not a photo is named on one
    line); a path that does not exist, or nothing to map, is an error."""
    missing = [p for p in photos if not p.exists()]
    if missing:
        raise CrackdetError(
            f"{', '.join(map(str, missing))}: no such photo or folder; check the path"
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
    if not files:
        raise CrackdetError(
            f"{', '.join(map(str, photos))}: no photos to map (files ending "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    return files
