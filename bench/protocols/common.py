"""What the headline benches share: one workspace with every real source fetched and split, a
model trained on chosen rows exactly as the train stage trains, and how each kind of held-out
data is scored (patches, photos against pixel masks, images that are not concrete at all).

The workspace holds the full local copies of the sources (``--shared``, default
``../shared/data``): Özgenel's 4,000-patch sample, the 400 SDNET2018 deck patches, the synthetic
renderer at params.yaml's settings, and UAV75 ``train_*`` photos as a masks source. Everything
else (train, augment, OOD, predict) is the repository's params.yaml: the benches measure the
defaults. Fetch, split and features are cached in the workspace, so a second bench reuses them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from crackdet.core.layout import Layout
from crackdet.core.overrides import predict_settings
from crackdet.core.params import Params, load_params
from crackdet.data.fetch import fetch
from crackdet.data.manifest import ManifestRow, read_manifest
from crackdet.data.records import FetchSummary
from crackdet.maps.crackmap import crack_map
from crackdet.maps.scoring import evaluate_maps
from crackdet.model.classifier import CrackClassifier
from crackdet.model.engines import feature_fn
from crackdet.model.metrics import Evaluation, score_classifier
from crackdet.workflows.split import split
from crackdet.workflows.train import Trained, fit_rows, plain_sources

REPO = Path(__file__).resolve().parents[2]
UAV_ZIP = "uav75/uav75-trainval.zip"
# Images scikit-image ships (no download) that are surely not concrete surfaces.
NOT_CONCRETE = (
    "astronaut", "camera", "cat", "chelsea", "clock", "coffee", "coins", "colorwheel",
    "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket",
    "text", "cell", "brick", "grass", "gravel",
)  # fmt: skip


def bench_sources(shared: Path, repo_params: dict[str, Any]) -> dict[str, Any]:
    """The sources every bench fetches: params.yaml's synthetic source, the full local copies
    of the real ones, and UAV75 ``train_*`` cut into windows at the scales maps use."""
    return {
        "ozgenel": {
            "kind": "archive",
            "path": str(shared / "ozgenel-4k.zip"),
            "sha256": "a45923238134f260a5c2ee79a66f58c69b471e32c71bc5a6b5fcfe28a93031fb",
            "licence": "CC BY 4.0",
            "group_by": "signature",
        },
        "sdnet": {
            "kind": "archive",
            "path": str(shared / "sdnet-decks/sdnet-decks-400.zip"),
            "sha256": "d687df66718d602fe06740514989fe1d3aaaef0338f46a67f6e288c77a40a6d1",
            "licence": "CC BY 4.0",
            "group_by": r"^(\d+)-",
        },
        "synthetic": repo_params["fetch"]["sources"]["synthetic"],
        "uav75": {
            "kind": "masks",
            "path": str(shared / UAV_ZIP),
            "photos": "train_*",
            "scales": [1.0, 2.0, 3.0, 4.0],
            "centre": 0.5,
            "crack_length": 0.25,
            "margin": 0.125,
            "planking_length": 0.5,
            "max_clean": 3000,
            "licence": "GPL-3.0",
        },
    }


@dataclass(frozen=True)
class Workspace:
    layout: Layout
    params: Params
    rows: dict[str, list[ManifestRow]]  # split name -> rows
    group_of: dict[str, str]  # path -> split group
    plain: frozenset[str]  # sources training never augments

    def of(self, split: str, sources: set[str]) -> list[ManifestRow]:
        return [r for r in self.rows[split] if r.source in sources]

    def every(self, source: str) -> list[ManifestRow]:
        return [r for rows in self.rows.values() for r in rows if r.source == source]


def prepare(work: Path, shared: Path, overrides: list[str] = ()) -> Workspace:
    """Fetch and split the bench sources into ``work`` (skipped when done for the same data
    params). ``overrides``: ``KEY=VALUE`` settings of params.yaml (YAML values), e.g.
    ``train.backbone=efficientnet_lite1``, to measure another choice the same way."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["fetch"]["sources"] = bench_sources(shared.resolve(), raw)
    for item in overrides:
        dotted, _, value = item.partition("=")
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = yaml.safe_load(value)
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(text)
    params = load_params(work / "params.yaml")
    layout = Layout(work)
    stamp = work / "prepared.sha256"
    data = {k: raw[k] for k in ("base", "fetch", "split")}  # what fetch and split read
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        fetch(params.fetch, params.base.seed, layout)
        split(layout, params.base, params.split)
        stamp.write_text(digest)
    rows = {name: read_manifest(layout.split.manifest(name)) for name in ("train", "val", "test")}
    with layout.split.groups.open() as table:
        next(table)
        group_of = {path: group for path, group, _ in (line.strip().split(",") for line in table)}
    plain = plain_sources(FetchSummary.read(layout.fetch.summary))
    return Workspace(layout, params, rows, group_of, plain)


def train_on(ws: Workspace, train: list[ManifestRow], val: list[ManifestRow]) -> Trained:
    """What the train stage trains, on these rows (params.yaml's train section)."""
    return fit_rows(ws.layout, ws.params.base.seed, ws.params.train, train, val, ws.plain)


def classify(
    ws: Workspace, model: CrackClassifier, rows: list[ManifestRow]
) -> tuple[Evaluation, np.ndarray]:
    """The model's evaluation of ``rows`` at its own threshold, and their plain-view features
    (from the workspace's cache when computed before), as the evaluate stage computes them."""
    return score_classifier(
        model,
        ws.layout.fetch.images,
        rows,
        ws.layout.features_cache,
        engine=ws.params.evaluate.engine,
        graph_cache=ws.layout.graph_cache,
    )


def score_patches(ws: Workspace, trained: Trained, rows: list[ManifestRow]) -> dict[str, Any]:
    """Accuracy (with its Wilson interval) at the model's own threshold, ROC AUC, errors, and
    the share of patches the OOD model flags."""
    model = trained.result.model
    evaluation, features = classify(ws, model, rows)
    figures = evaluation.metrics()
    keep = ("accuracy", "accuracy_ci95_low", "accuracy_ci95_high", "roc_auc", "fp", "fn", "n")
    out: dict[str, Any] = {k: figures[k] for k in keep}
    if len(set(evaluation.targets.tolist())) < 2:  # one class only: no ranking to score
        out["roc_auc"] = None
    out["threshold"] = model.spec.threshold
    if trained.ood is not None:
        out["ood_share"] = float(trained.ood.is_ood(features).mean())
    return out


def score_maps(ws: Workspace, trained: Trained, data: Path, photos: str) -> dict[str, Any]:
    """``crackdet eval-maps`` at params.yaml's predict settings (scale auto) and the model's
    threshold: window ROC AUC, recall, planking false-positive rate, OOD share."""
    model = trained.result.model
    settings = predict_settings(ws.params, threshold=model.spec.threshold)
    result = evaluate_maps(
        data, model, settings, photos=photos, graph_cache=ws.layout.graph_cache, ood=trained.ood
    )
    keep = (
        "auroc", "recall", "precision", "planking_fpr", "ood_share", "accepted_auroc",
        "windows_crack", "windows_clean", "windows_planking", "photos", "map_seconds",
    )  # fmt: skip
    return {k: result.metrics.get(k) for k in keep}


def not_concrete_ood(ws: Workspace, trained: Trained) -> dict[str, Any]:
    """Share of map windows (scale 1, as a photo this size is shown) the OOD model flags on
    scikit-image's sample images, overall and per image."""
    import skimage.data  # a dev dependency: only this bench needs it

    model, ood = trained.result.model, trained.ood
    assert ood is not None
    extract = feature_fn(model, ws.params.predict.engine, ws.layout.graph_cache)
    per_image: dict[str, float] = {}
    flagged = total = 0
    for name in NOT_CONCRETE:
        image = getattr(skimage.data, name)()
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = image[..., :3]
        result = crack_map(model, image, 0.5, 16, 1.0, ood, extract)
        flags = [bool(t.ood) for t in result.tiles]
        per_image[name] = round(float(np.mean(flags)), 3)
        flagged, total = flagged + sum(flags), total + len(flags)
    return {"ood_share": flagged / total, "windows": total, "per_image": per_image}


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a bench's results accumulate, one line per run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")
