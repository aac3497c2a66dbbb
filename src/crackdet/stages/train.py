"""DVC stage ``train``: ``python -m crackdet.stages.train``.

Creates the pipeline's MLflow run (params, lineage tags, data input, per-epoch metrics, model) and
writes the DVC outputs: a plain state-dict checkpoint, its model description, the per-epoch
history (DVC plots), metrics, and the run id that evaluate and predict_samples resume.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from crackdet.data import read_manifest
from crackdet.engine import GRAPH_ENGINES, effective_engine, ensure_graph
from crackdet.errors import CrackdetError, first_line
from crackdet.features import cache_root, onnx_root, probe_root
from crackdet.io import write_json, write_text, write_with
from crackdet.ood import fit_ood, save_empty
from crackdet.probe import fit_probe_cached
from crackdet.stages._common import run_stage, stage_params
from crackdet.tracking import RUN_FILE, lineage_tags, safe_params, start_pipeline_run
from crackdet.train import EpochRecord, TrainResult, load_images, targets_of, train_model

OUT = Path("outputs/train")
IMAGES = Path("outputs/fetch/images")
SPLIT = Path("outputs/split")
LOCK_FILE = Path("requirements.lock")


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


def data_lineage(root: Path) -> dict[str, str]:
    """Tags naming the exact data: source, archive and manifest digests, split fingerprint."""
    try:
        fetched = json.loads((root / "outputs/fetch/summary.json").read_text())
        split = json.loads((root / SPLIT / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise CrackdetError(
            f"outputs/fetch or outputs/split summary unreadable ({first_line(exc)})"
        ) from None
    tags = {
        "data.source": fetched["source"],
        "data.manifest_sha256": fetched["manifest_sha256"],
        "data.count": str(fetched["count"]),
        "data.split_fingerprint": split["fingerprint"],
        "data.test_fingerprint": split["test_fingerprint"],
        "data.split_strategy": split["strategy"],
        "data.split_groups": str(split["groups"]),
        "data.duplicate_groups": str(fetched["duplicates"]["groups"]),
    }
    if fetched.get("archive_sha256"):
        tags["data.archive_sha256"] = fetched["archive_sha256"]
    return tags


def log_data_input(lineage: dict[str, str]) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # MLflow registers two equivalent local sources and warns that it picked one.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source("outputs/fetch/manifest.csv")
    # MLflow keeps at most 36 characters of a dataset digest; the full one is in the tags.
    dataset = MetaDataset(
        source,
        name=f"crackdet-{lineage['data.source']}",
        digest=lineage["data.manifest_sha256"][:32],
    )
    mlflow.log_input(dataset, context="training")


def log_model(root: Path, result: TrainResult, example: torch.Tensor) -> str:
    """Log the classifier in MLflow's pickle-free pt2 format; return its ``models:/`` URI."""
    import mlflow.pytorch

    with export_without_source_paths():
        info = mlflow.pytorch.log_model(
            result.model,
            name="model",
            input_example=example.numpy(),  # a batch of 2+, else the export only accepts batch 1
            pip_requirements=model_requirements(root),
            serialization_format="pt2",
            # What a registry consumer needs to rebuild preprocessing and read the outputs.
            metadata={"crackdet_spec": result.model.spec.to_dict()},
            # MLflow would reload the exported program in a simulated serving environment and
            # check its requirements (~3 s, a tenth of a train-only rerun). The pipeline tests
            # check instead that the registered model loads and matches the checkpoint.
            validate_serving_input=False,
        )
    return info.model_uri


def model_requirements(root: Path) -> list[str] | None:
    """The project's pinned direct dependencies, constrained by the whole lock file.

    MLflow stores them as the model's requirements.txt plus constraints.txt (the lock), which
    reinstalls exactly this environment; MLflow checks the listed requirements against the
    installed packages, and listing ~15 instead of all ~190 locked ones keeps that under 0.1 s
    instead of ~1.5 s. None (MLflow's inference) outside a crackdet checkout."""
    import tomllib

    lock, project = root / LOCK_FILE, root / "pyproject.toml"
    if not (lock.exists() and project.exists()):
        return None
    try:
        dependencies = tomllib.loads(project.read_text())["project"]["dependencies"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return None  # an unusual pyproject: let MLflow infer the requirements
    return [*dependencies, f"-c {lock}"]


@contextmanager
def export_without_source_paths() -> Iterator[None]:
    """Strip the Python stack traces torch.export records on every graph node before the
    program is saved: they hold absolute paths of this machine (venv, checkout), which must not
    travel with a logged model. MLflow saves through ``torch.export.save``; it is wrapped for
    the duration of the call only."""
    import torch.export

    original = torch.export.save

    def save(exported: Any, *args: Any, **kwargs: Any) -> Any:
        for module in exported.graph_module.modules():
            if isinstance(module, torch.fx.GraphModule):
                for node in module.graph.nodes:
                    node.meta.pop("stack_trace", None)
        return original(exported, *args, **kwargs)

    torch.export.save = save
    try:
        yield
    finally:
        torch.export.save = original


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` through an open handle: given a path, torch names the archive's records
    after the file, here a random temporary name, so equal weights gave a new md5 in dvc.lock
    on every run."""
    with open(path, "wb") as handle:
        torch.save(state, handle)


def calibrate_on_val(result: TrainResult, images_dir: Path, val_rows: list) -> dict[str, float]:
    """Fit the temperature and the F1-optimal threshold on val; store both in the model."""
    from crackdet.calibrate import (
        expected_calibration_error,
        f1_optimal_threshold,
        fit_temperature,
    )
    from crackdet.features import features_for

    model = result.model
    features = result.val_features
    if features is None:  # finetune: online: the tuned backbone's features were never computed
        features, _ = features_for(model, images_dir, val_rows, 0, None, 0, None)
    targets = targets_of(val_rows)
    with torch.no_grad():
        raw = model.head(features)
    temperature = fit_temperature(raw, targets)
    raw_probs = torch.softmax(raw, 1)[:, 1].numpy()
    probs = torch.softmax(raw / temperature, 1)[:, 1].numpy()
    threshold = f1_optimal_threshold(probs, targets.numpy())
    model.temperature.fill_(temperature)
    model.spec = dataclasses.replace(model.spec, threshold=threshold, temperature=temperature)
    return {
        "temperature": temperature,
        "threshold": threshold,
        "val_ece_raw": expected_calibration_error(raw_probs, targets.numpy()),
        "val_ece": expected_calibration_error(probs, targets.numpy()),
    }


def run(root: Path) -> TrainResult:
    import mlflow

    params = stage_params(root)
    train_rows = read_manifest(root / SPLIT / "train.csv")
    val_rows = read_manifest(root / SPLIT / "val.csv")
    lineage = data_lineage(root)
    run = start_pipeline_run(root)
    try:
        mlflow.log_params(safe_params(params.as_flat_dict(), root))  # no local paths
        mlflow.set_tags({**lineage_tags(root, ("fetch", "split")), **lineage})
        log_data_input(lineage)

        def log_epoch(record: EpochRecord) -> None:
            mlflow.log_metrics(
                {
                    "train_loss": record.train_loss,
                    "train_acc": record.train_acc,
                    "val_loss": record.val_loss,
                    "val_acc": record.val_acc,
                    "lr": record.lr,
                    "epoch_seconds": record.seconds,
                },
                step=record.epoch,
            )
            print(
                f"train: epoch {record.epoch}/{params.train.epochs} "
                f"train_loss {record.train_loss:.4f} train_acc {record.train_acc:.4f} "
                f"val_loss {record.val_loss:.4f} val_acc {record.val_acc:.4f}",
                flush=True,
            )

        result = train_model(
            params,
            root / IMAGES,
            train_rows,
            val_rows,
            on_epoch=log_epoch,
            cache_dir=cache_root(root),
        )
        best = result.best
        calibration = calibrate_on_val(result, root / IMAGES, val_rows)
        probe_val_acc, probe_json = None, {}
        if result.probe_inputs is not None:
            probe_train, probe_val = (f.numpy() for f in result.probe_inputs)
            probe = fit_probe_cached(
                probe_train, targets_of(train_rows).numpy(), params.base.seed, probe_root(root)
            )
            probe_hits = (probe.crack_probability(probe_val) >= 0.5) == targets_of(val_rows).numpy()
            probe_val_acc = float(probe_hits.mean())
            probe_json = probe.to_dict()
        # {} when a randomly initialised backbone is fine-tuned: no pretrained features
        write_json(root / OUT / "probe.json", probe_json)
        if result.train_features is not None and result.val_features is not None:
            ood = fit_ood(result.train_features.numpy(), result.val_features.numpy())
            ood.save(root / OUT / "ood.npz")
            mlflow.log_metric("ood_threshold", ood.threshold)
        else:  # finetune: online computes no features of the tuned backbone
            save_empty(root / OUT / "ood.npz")
        # metrics.json is versioned in git (DVC metrics): only deterministic figures go there;
        # timings go to MLflow only.
        metrics = {
            "best_epoch": result.best_epoch,
            "val_acc": best.val_acc,
            "val_loss": best.val_loss,
            "probe_val_acc": probe_val_acc,
            **calibration,
            "train_images": len(train_rows),
            "val_images": len(val_rows),
        }
        mlflow.log_metrics(
            {
                "best_epoch": result.best_epoch,
                "best_val_acc": best.val_acc,
                "best_val_loss": best.val_loss,
                **calibration,
                **({"probe_val_acc": probe_val_acc} if probe_val_acc is not None else {}),
                **{k: round(v, 3) for k, v in result.timings.items()},
            }
        )
        out = root / OUT
        write_with(out / "model.pt", lambda p: save_state(result.model.state_dict(), p))
        write_json(out / "model.json", result.model.spec.to_dict())
        write_text(out / "history.csv", history_csv(result.history))
        write_json(out / "metrics.json", metrics)
        for name in ("model.json", "history.csv"):
            mlflow.log_artifact(str(out / name), artifact_path="train")
        mlflow.log_artifact(str(root / SPLIT / "groups.csv"), artifact_path="data")
        mlflow.log_artifact(str(root / "outputs/fetch/duplicates.csv"), artifact_path="data")
        mlflow.log_artifact(str(root / SPLIT / "summary.json"), artifact_path="data")
        stage_engines = (params.train.engine, params.evaluate.engine, params.predict.engine)
        if any(effective_engine(result.model, e) in GRAPH_ENGINES for e in stage_engines):
            # evaluate and predict_samples then run the backbone as this graph without building
            # it in PyTorch; a frozen backbone's graph is exported once and found from then on.
            ensure_graph(result.model, onnx_root(root))
        example = load_images(root / IMAGES, val_rows[:2]).float() / 255.0
        model_uri = log_model(root, result, example)
        write_json(root / RUN_FILE, {"run_id": run.info.run_id, "model_uri": model_uri})
        print(
            f"train: best epoch {result.best_epoch} val_acc {best.val_acc:.4f}; "
            f"MLflow run {run.info.run_id}"
        )
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()
    return result


def main() -> int:
    return run_stage("train", run)


if __name__ == "__main__":
    sys.exit(main())
