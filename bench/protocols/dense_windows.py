"""Dense window maps (one backbone pass per scaled photo, the window head at every 32-px cell)
against today's window mapper, on photos with pixel masks and on Özgenel patches.

- **UAV75** (never a training source of the default pipeline: held out): every photo mapped at
  params.yaml's ``predict`` settings (``scale: auto``). Today's mapper runs as
  ``crackdet eval-maps`` runs it (:func:`crackdet.maps.scoring.evaluate_maps`). The dense map
  passes each scaled photo (padded bottom/right to a multiple of 32 by edge replication, the
  dense runtime's convention) through the backbone once in PyTorch; a pixel's value is the
  mean of the windows covering it (the 7 x 7 cells around it), brought to the photo's size and
  averaged over the scales, as the window mapper averages its windows; then scored on the same
  :func:`~crackdet.maps.scoring.evaluation_grid` with the same labels
  (:func:`~crackdet.maps.scoring.score_windows`). The classifier's head read densely (the
  window head before any training in context) is scored beside it, from the same pass.
- **Özgenel**: errors of the classifier on its val and test patches (isolated, as evaluate
  scores them) against the window head's on the same patches placed in context (4 x 4 mosaics,
  each patch's label on the window centred on it; seed and mosaic size fixed here, nothing
  chosen on test), each at its own threshold.

Needs a model folder with ``model.pt``/``model.json`` and ``window_head.pt``/``.json`` (the
train stage writes them) and, for the Özgenel part, the project's ``outputs/fetch`` and
``outputs/split`` (``--root``):

    python bench/protocols/dense_windows.py [--model outputs/train] [--root .]
        [--data ../shared/data/uav75/uav75-trainval.zip] [--photos '*'] [--skip-mapper]

Prints one JSON record and appends it to ``.cache/bench/dense_windows.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from crackdet.core.params import load_params
from crackdet.data.images import PATCH_SIZE
from crackdet.data.manifest import read_manifest
from crackdet.data.sources.masks import find_photos, read_mask
from crackdet.data.windows import resize_photo
from crackdet.maps.crackmap import scales_for
from crackdet.maps.photos import read_photo
from crackdet.maps.scoring import (
    NO_LIMITS_GIVEN,
    evaluate_maps,
    evaluation_grid,
    planking_windows,
    readable_folder,
    score_windows,
    window_labels,
)
from crackdet.model.classifier import load_checkpoint
from crackdet.model.dense import STRIDE
from crackdet.model.inputs import load_images, targets_of
from crackdet.model.window_head import WindowHead, load_window_head
from crackdet.model.window_head_training import mosaic_cells, patch_slots, trunk_of

REPO = Path(__file__).resolve().parents[2]
KEEP = ("auroc", "precision", "recall", "planking_fpr", "windows_crack", "windows_clean")


def pad_to_cells(photo: np.ndarray) -> np.ndarray:
    """Bottom/right edge replication to a multiple of the stride (the dense padding rule)."""
    pad_h, pad_w = (-photo.shape[0]) % STRIDE, (-photo.shape[1]) % STRIDE
    return np.pad(photo, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def pixel_map(cells: np.ndarray, window_cells: int, shape: tuple[int, int]) -> np.ndarray:
    """Per pixel of the scaled photo (``shape``): the mean P(crack) of the windows covering it,
    i.e. of the ``window_cells`` square of cells around its own cell."""
    pool = torch.nn.AvgPool2d(window_cells, 1, window_cells // 2, count_include_pad=False)
    covered = pool(torch.from_numpy(cells)[None, None])[0, 0].numpy()
    full = np.repeat(np.repeat(covered, STRIDE, 0), STRIDE, 1)
    return full[: shape[0], : shape[1]].astype(np.float32)


def to_size(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if array.shape == shape:
        return array
    image = Image.fromarray(array, "F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(image)


@torch.inference_mode()
def dense_maps(
    trunk: torch.nn.Module, heads: dict[str, WindowHead], photo: np.ndarray, scales: tuple
) -> dict[str, np.ndarray]:
    """Each head's heatmap of ``photo`` (its own size), averaged over ``scales``."""
    maps: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    for scale in scales:
        scaled = resize_photo(photo, scale)
        padded = pad_to_cells(scaled)
        images = torch.from_numpy(padded).permute(2, 0, 1)[None].float().div_(255.0)
        taps = trunk(images.contiguous(memory_format=torch.channels_last))
        for name, head in heads.items():
            cells = torch.softmax(head(taps), 1)[0, 1].numpy()
            pixels = pixel_map(cells, head.window_cells, scaled.shape[:2])
            maps[name].append(to_size(pixels, photo.shape[:2]))
    return {name: np.mean(m, axis=0).astype(np.float32) for name, m in maps.items()}


def dense_uav(
    model, heads: dict[str, WindowHead], thresholds: dict[str, float], data: Path, photos: str
) -> dict[str, Any]:
    """Window figures of each head's dense map on every photo, on the evaluation grid."""
    settings = load_params(REPO / "params.yaml").predict
    trunk = trunk_of(model)
    found: dict[str, list[np.ndarray]] = {"labels": [], "planking": []}
    scores: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    start = time.perf_counter()
    with readable_folder(data, NO_LIMITS_GIVEN) as folder:
        samples, _ = find_photos(folder, photos)
        for sample in samples:
            photo = read_photo(sample.image, settings.max_pixels)
            shape = photo.shape[:2]
            mask = read_mask(sample.mask, shape)
            plank = read_mask(sample.planking, shape) if sample.planking else None
            scales = scales_for(settings.scale, settings.auto_windows, *shape, PATCH_SIZE)
            heatmaps = dense_maps(trunk, heads, photo, scales)
            tiles = evaluation_grid(next(iter(heatmaps.values())), None)
            labels = window_labels(mask, tiles)
            found["labels"].append(labels)
            found["planking"].append(planking_windows(labels, plank, tiles))
            for name, heatmap in heatmaps.items():
                scores[name].append(np.array([t.p for t in evaluation_grid(heatmap, None)]))
    labels = np.concatenate(found["labels"])
    planking = np.concatenate(found["planking"])
    out: dict[str, Any] = {"photos": len(samples), "seconds": time.perf_counter() - start}
    for name in heads:
        figures = score_windows(labels, planking, np.concatenate(scores[name]), thresholds[name])
        out[name] = {k: figures[k] for k in (*KEEP, "threshold")}
    return out


def mapper_uav(model, data: Path, photos: str) -> dict[str, Any]:
    """Today's window mapper, as ``crackdet eval-maps`` runs it at params.yaml's settings."""
    settings = load_params(REPO / "params.yaml").predict
    result = evaluate_maps(data, model, settings, photos=photos)
    return {k: result.metrics.get(k) for k in (*KEEP, "threshold", "photos", "seconds")}


def ozgenel_errors(model, head: WindowHead, threshold: float, root: Path) -> dict[str, Any]:
    """Errors on Özgenel's val and test patches: classifier isolated, window head in context."""
    images = root / "outputs/fetch/images"
    trunk = trunk_of(model)
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        rows = [
            r for r in read_manifest(root / f"outputs/split/{split}.csv") if r.source == "ozgenel"
        ]
        targets = targets_of(rows)
        patches = load_images(images, rows)
        with torch.inference_mode():
            isolated = torch.cat(
                [model(patches[i : i + 16].float() / 255.0) for i in range(0, len(rows), 16)]
            )
        p_isolated = torch.softmax(isolated, 1)[:, 1]
        cells = mosaic_cells(
            trunk, head, patch_slots(patches), targets, torch.ones(len(rows)), 4, 0, "mosaics"
        )
        with torch.inference_mode():
            p_context = torch.softmax(head.raw_logits(cells.features) / head.temperature, 1)[:, 1]
        out[split] = {
            "patches": len(rows),
            "classifier_errors": int(
                ((p_isolated >= model.spec.threshold) != targets.bool()).sum()
            ),
            "window_head_in_context_errors": int(
                ((p_context >= threshold) != targets.bool()).sum()
            ),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("outputs/train"))
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/data/uav75/uav75-trainval.zip")
    )
    parser.add_argument("--photos", default="*")
    parser.add_argument("--skip-mapper", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(".cache/bench/dense_windows.jsonl"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_checkpoint(args.model / "model.pt", args.model / "model.json")
    loaded = load_window_head(args.model)
    if loaded is None:
        raise SystemExit(f"{args.model}: no window_head.pt; run the train stage first")
    head, spec = loaded
    classifier_head = WindowHead.from_classifier(model.head, float(model.temperature)).eval()
    record: dict[str, Any] = {"model": str(args.model), "photos_glob": args.photos}
    record["dense"] = dense_uav(
        model,
        {"window_head": head, "classifier_head": classifier_head},
        {"window_head": spec.threshold, "classifier_head": model.spec.threshold},
        args.data,
        args.photos,
    )
    print(json.dumps(record["dense"]), flush=True)
    if (args.root / "outputs/split/test.csv").is_file():
        record["ozgenel"] = ozgenel_errors(model, head, spec.threshold, args.root)
        print(json.dumps(record["ozgenel"]), flush=True)
    if not args.skip_mapper:
        record["mapper"] = mapper_uav(model, args.data, args.photos)
    print(json.dumps(record, sort_keys=True), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
