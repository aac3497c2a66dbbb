"""The train stage's work: train, calibrate on val, fit the probe and the OOD model, write the
checkpoint and its description, and log it all into a new pipeline run in MLflow."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from crackdet.core.errors import CrackdetError
from crackdet.core.io import write_bytes, write_json, write_text
from crackdet.core.layout import Layout
from crackdet.core.params import BaseParams, DecoderParams, TrainParams, flatten
from crackdet.core.progress import say
from crackdet.data.manifest import ManifestRow, read_manifest
from crackdet.data.records import FetchSummary, SplitSummary
from crackdet.data.sources import KINDS
from crackdet.model.backbones import backbone_taps
from crackdet.model.classifier import CrackClassifier, checkpoint_bytes
from crackdet.model.decoder import save_decoder, save_no_decoder
from crackdet.model.decoder_training import (
    DecoderEpoch,
    DecoderResult,
    PixelPhoto,
    masks_photos,
    split_photos,
    synthetic_photos,
    train_decoder,
)
from crackdet.model.dense import DenseTrunk
from crackdet.model.engines import GRAPH_ENGINES, effective_engine, ensure_graph
from crackdet.model.fitting import EpochRecord, TrainResult, calibrate_on_val, train_model
from crackdet.model.inputs import load_images, targets_of
from crackdet.model.ood import OODModel, fit_ood, save_empty
from crackdet.model.probe import Probe, fit_probe_cached
from crackdet.model.window_head import save_window_head
from crackdet.model.window_head_training import (
    HeadEpoch,
    WindowHeadResult,
    classifier_window_head,
    train_window_head,
)
from crackdet.tracking.metric_names import (
    DECODER,
    DECODER_EPOCH,
    EPOCH,
    WINDOW_HEAD_EPOCH,
    fit_names,
    timing_names,
    window_head_names,
)
from crackdet.tracking.model_log import ModelFiles, log_data_input, log_model
from crackdet.tracking.provenance import data_lineage, lineage_tags
from crackdet.tracking.redact import safe_params
from crackdet.tracking.runs import RunInfo, ending, model_tags, start_pipeline_run


def history_csv(history: list[EpochRecord]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"])
    for r in history:
        writer.writerow(
            [
                r.epoch,
                f"{r.train_loss:.6f}",
                f"{r.train_acc:.6f}",
                f"{r.val_loss:.6f}",
                f"{r.val_acc:.6f}",
                f"{r.lr:.8f}",
            ]
        )
    return buf.getvalue()


def upstream_params(layout: Layout) -> dict[str, object]:
    """The fetch and split params that made this run's data, as their stages recorded them."""
    return {
        **FetchSummary.read(layout.fetch.summary).params,
        **SplitSummary.read(layout.split.summary).params,
    }


def plain_sources(summary: FetchSummary) -> frozenset[str]:
    """Sources whose images training never augments, as their kind says (masks windows, cut at
    the maps' scales, are already the views the maps will score)."""
    return frozenset(
        name
        for name, s in summary.sources.items()
        if s.kind in KINDS and not KINDS[s.kind].augmented
    )


def train(layout: Layout, base: BaseParams, cfg: TrainParams) -> TrainResult:
    """Run the train stage: outputs in ``outputs/train``, a new pipeline run in MLflow."""
    import mlflow  # ~1.3 s to import: only in the stages that log

    val_rows = read_manifest(layout.split.manifest("val"))
    lineage = data_lineage(layout)
    with ending(start_pipeline_run(layout.root)) as run:
        logged = {
            **upstream_params(layout),
            **flatten({"base": asdict(base), "train": asdict(cfg)}),
        }
        mlflow.log_params(safe_params(logged, layout.root))  # no local paths
        mlflow.set_tags({**lineage_tags(layout.root, ("fetch", "split")), **lineage})
        log_data_input(layout, lineage)

        def log_epoch(record: EpochRecord) -> None:
            figures = {key: getattr(record, key) for key in EPOCH}
            mlflow.log_metrics({EPOCH[k]: v for k, v in figures.items()}, step=record.epoch)
            say(
                f"train: epoch {record.epoch}/{cfg.epochs} "
                f"train_loss {record.train_loss:.4f} train_acc {record.train_acc:.4f} "
                f"val_loss {record.val_loss:.4f} val_acc {record.val_acc:.4f}"
            )

        def log_decoder_epoch(record: DecoderEpoch) -> None:
            figures = {key: getattr(record, key) for key in DECODER_EPOCH}
            mlflow.log_metrics({DECODER_EPOCH[k]: v for k, v in figures.items()}, step=record.epoch)
            say(
                f"train: decoder epoch {record.epoch}/{cfg.decoder.epochs} "
                f"train_loss {record.train_loss:.4f} val_loss {record.val_loss:.4f} "
                f"val_f1 {record.val_f1:.4f} val_planking {record.val_planking:.4f}"
            )

        trained = fit(layout, base, cfg, log_epoch)
        result = trained.result
        _log_fit(trained)
        decoded = fit_decoder(layout, base.seed, cfg, result.model, log_decoder_epoch)
        if decoded is not None:
            mlflow.log_metrics(
                {
                    f"{DECODER}best_epoch": decoded.best_epoch,
                    f"{DECODER}threshold": decoded.spec.threshold,
                    **{f"{DECODER}best_{k}": v for k, v in decoded.spec.metrics.items()},
                }
            )
        window_head = fit_window_head_logged(layout, base.seed, cfg, trained)
        graph = _export_graph(layout, result)
        example = load_images(layout.fetch.images, val_rows[:2]).float() / 255.0
        heads = partial(_save_heads, decoded, window_head)
        files = ModelFiles(trained.checkpoint, trained.ood, graph, heads)
        model_uri = log_model(layout, result.model, example, files)
        mlflow.set_tags(model_tags(model_uri, trained.checkpoint_sha256))
        # Files last: a failure above (MLflow, the export) leaves the last good outputs.
        _write_outputs(layout, trained, decoded)
        save_window_head(layout.train.dir, window_head.head, window_head.spec)
        RunInfo(run.info.run_id, model_uri, trained.checkpoint_sha256).write(layout.train.run)
        best = result.best
        print(
            f"train: best epoch {result.best_epoch} val_acc {best.val_acc:.4f}; "
            f"MLflow run {run.info.run_id}"
        )
    return result


@dataclass(frozen=True)
class Trained:
    """Everything train writes, computed before any file is written."""

    result: TrainResult
    checkpoint: bytes
    probe: Probe | None  # None: a randomly initialised backbone fine-tuned, nothing to compare
    ood: OODModel | None  # None: finetune: online computes no features of the tuned backbone
    metrics: dict[str, object]  # metrics.json: deterministic figures only (git-versioned)

    @property
    def checkpoint_sha256(self) -> str:
        return hashlib.sha256(self.checkpoint).hexdigest()


def fit(
    layout: Layout,
    base: BaseParams,
    cfg: TrainParams,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> Trained:
    """Train on ``outputs/split``'s train and val manifests: :func:`fit_rows` on them."""
    return fit_rows(
        layout,
        base.seed,
        cfg,
        read_manifest(layout.split.manifest("train")),
        read_manifest(layout.split.manifest("val")),
        plain_sources(FetchSummary.read(layout.fetch.summary)),
        on_epoch,
    )


def fit_rows(
    layout: Layout,
    seed: int,
    cfg: TrainParams,
    train_rows: list[ManifestRow],
    val_rows: list[ManifestRow],
    plain: frozenset[str] = frozenset(),
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> Trained:
    """Train on ``train_rows`` (images in ``layout``'s fetch output), then calibrate on
    ``val_rows`` and fit the probe baseline and the OOD model beside the model: everything train
    writes, in memory (no MLflow, no files: the benches train this way, on their own rows)."""
    result = train_model(
        cfg,
        seed,
        layout.fetch.images,
        train_rows,
        val_rows,
        on_epoch=on_epoch,
        features_cache=layout.features_cache,
        graph_cache=layout.graph_cache,
        plain_sources=plain,
    )
    calibration = calibrate_on_val(result, layout.fetch.images, val_rows, cfg.threshold)
    probe, probe_val_acc = None, None
    if result.probe_inputs is not None:
        probe_train, probe_val = (f.numpy() for f in result.probe_inputs)
        probe = fit_probe_cached(
            probe_train, targets_of(train_rows).numpy(), seed, layout.probe_cache
        )
        hits = (probe.crack_probability(probe_val) >= 0.5) == targets_of(val_rows).numpy()
        probe_val_acc = float(hits.mean())
    ood = None
    if result.train_features is not None and result.val_features is not None:
        ood = fit_ood(result.train_features.numpy(), result.val_features.numpy(), cfg.ood_quantile)
    best = result.best
    metrics = {
        "best_epoch": result.best_epoch,
        "val_acc": best.val_acc,
        "val_loss": best.val_loss,
        "probe_val_acc": probe_val_acc,
        **calibration,
        "train_images": len(train_rows),
        "val_images": len(val_rows),
    }
    return Trained(result, checkpoint_bytes(result.model.state_dict()), probe, ood, metrics)


def fit_window_head_logged(
    layout: Layout, seed: int, cfg: TrainParams, trained: Trained
) -> WindowHeadResult:
    """The window head of dense maps (``train.window_head``), its epochs and figures logged
    into the active run: trained in context on the split's train/val patches and synthetic
    photos, or the classifier's head as it is when disabled."""
    import mlflow  # ~1.3 s to import: only in the stages that log

    model = trained.result.model
    if not cfg.window_head.enabled:
        return classifier_window_head(model)

    def log_epoch(record: HeadEpoch) -> None:
        figures = {k: getattr(record, k) for k in WINDOW_HEAD_EPOCH}
        finite = {WINDOW_HEAD_EPOCH[k]: v for k, v in figures.items() if math.isfinite(v)}
        mlflow.log_metrics(finite, step=record.epoch)
        say(
            f"train: window head epoch {record.epoch}/{cfg.window_head.epochs} "
            f"val_loss {record.val_loss:.4f} val_auc {record.val_auc:.4f}"
        )

    result = train_window_head(
        model,
        cfg,
        seed,
        layout.fetch.images,
        read_manifest(layout.split.manifest("train")),
        read_manifest(layout.split.manifest("val")),
        log_epoch,
    )
    figures = {k: v for k, v in result.metrics.items() if math.isfinite(v)}
    mlflow.log_metrics(
        window_head_names(figures)
        | timing_names({f"window_head_{k}": round(v, 3) for k, v in result.timings.items()})
    )
    return result


def _log_fit(trained: Trained) -> None:
    """The fit's figures into the active run (timings to MLflow only, never metrics.json)."""
    import mlflow  # ~1.3 s to import: only in the stages that log

    result, metrics = trained.result, trained.metrics
    figures = {k: v for k, v in metrics.items() if k not in ("best_epoch", "val_acc", "val_loss")}
    mlflow.log_metrics(
        fit_names(
            {
                "best_epoch": result.best_epoch,
                "best_val_acc": result.best.val_acc,
                "best_val_loss": result.best.val_loss,
                **{k: float(v) for k, v in figures.items() if isinstance(v, int | float)},
                **({"ood_threshold": trained.ood.threshold} if trained.ood else {}),
            }
        )
        | timing_names({k: round(v, 3) for k, v in result.timings.items()})
    )


def decoder_photos(layout: Layout, seed: int, cfg: DecoderParams) -> list[PixelPhoto]:
    """The pixel decoder's photos: rendered from the seed, and every masks source's as fetch
    kept them, at the source's scales (as its windows were cut)."""
    summary = FetchSummary.read(layout.fetch.summary)
    photos = synthetic_photos(seed, cfg.synthetic_photos, cfg.crop)
    for name, source in summary.sources.items():
        if source.kind != "masks":
            continue
        folder = layout.fetch.masks / name
        if not folder.is_dir():
            raise CrackdetError(
                f"{folder}: missing (fetch keeps a masks source's photos there for the pixel "
                "decoder); rerun fetch: dvc repro --force fetch"
            )
        # The fetch params as fetch recorded them (train reads no fetch section of params.yaml).
        scales = [float(s) for s in summary.params[f"fetch.sources.{name}.scales"]]
        max_pixels = int(summary.params["fetch.max_pixels"])
        photos += masks_photos(folder, name, scales, max_pixels)
    return photos


def fit_decoder(
    layout: Layout,
    seed: int,
    cfg: TrainParams,
    model: CrackClassifier,
    on_epoch: Callable[[DecoderEpoch], None] | None = None,
) -> DecoderResult | None:
    """The pixel decoder over ``model``'s backbone (None: ``train.decoder.enabled`` is false)."""
    if not cfg.decoder.enabled:
        return None
    try:
        backbone_taps(model.spec.backbone)
    except CrackdetError as exc:
        raise CrackdetError(f"{exc}; or set train.decoder.enabled: false") from None
    backbone = copy.deepcopy(model.backbone).cpu().eval()
    trunk = DenseTrunk(model.spec.backbone, backbone, model.spec.mean, model.spec.std).eval()
    train_photos, val_photos = split_photos(
        decoder_photos(layout, seed, cfg.decoder), cfg.decoder.val_share, seed
    )
    return train_decoder(trunk, train_photos, val_photos, cfg.decoder, seed, on_epoch)


def _save_heads(decoded: DecoderResult | None, window_head: WindowHeadResult, folder: Path) -> None:
    """The dense heads' files in ``folder``, as train writes them beside model.pt."""
    _save_decoder(decoded, folder)
    save_window_head(folder, window_head.head, window_head.spec)


def _save_decoder(decoded: DecoderResult | None, folder: Path) -> None:
    """The pixel decoder's files in ``folder`` (empty ones when none was trained)."""
    if decoded is not None:
        save_decoder(folder, decoded.decoder, decoded.spec)
    else:
        save_no_decoder(folder)


def _write_outputs(layout: Layout, trained: Trained, decoded: DecoderResult | None) -> None:
    """The checkpoint, its description, probe, OOD model, pixel decoder, history (DVC plots)
    and metrics; the small ones are logged to MLflow too."""
    import mlflow  # ~1.3 s to import: only in the stages that log

    out, result = layout.train, trained.result
    _save_decoder(decoded, out.dir)
    write_bytes(out.model, trained.checkpoint)
    write_json(out.spec, result.model.spec.to_dict())
    write_json(out.probe, trained.probe.to_dict() if trained.probe else {})
    if trained.ood is not None:
        trained.ood.save(out.ood)
    else:
        save_empty(out.ood)
    write_text(out.history, history_csv(result.history))
    decoder_metrics = {}
    if decoded is not None:  # flat keys, as dvc metrics shows them
        decoder_metrics = {
            "decoder_best_epoch": decoded.best_epoch,
            "decoder_threshold": decoded.spec.threshold,
            **{f"decoder_{k}": v for k, v in decoded.spec.metrics.items()},
        }
    write_json(out.metrics, {**trained.metrics, **decoder_metrics})
    for path in (out.spec, out.history, out.decoder_spec):
        mlflow.log_artifact(str(path), artifact_path="train")
    data = (
        layout.split.groups,
        layout.fetch.duplicates,
        layout.split.summary,
        layout.fetch.summary,
    )
    for path in data:
        mlflow.log_artifact(str(path), artifact_path="data")


def _export_graph(layout: Layout, result: TrainResult) -> Path | None:
    """Export the backbone's ONNX graph, so evaluate and predict_samples run it without building
    the backbone in PyTorch; a frozen backbone's graph is exported once and found from then on.
    A backbone that cannot be exported is said on one line: stages whose engine is torch still
    work, the others stop with the exporter's reason. Returns the graph's file (None: none)."""
    if effective_engine(result.model, GRAPH_ENGINES[0]) not in GRAPH_ENGINES:
        return None  # not on the CPU: the graph engines do not apply
    try:
        return ensure_graph(result.model, layout.graph_cache)
    except CrackdetError as exc:
        print(f"train: warning: {exc}", file=sys.stderr)
        return None
