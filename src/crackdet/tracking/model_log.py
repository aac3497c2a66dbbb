"""Logging what train produced into its MLflow run: the data set as an input and the model in
MLflow's pickle-free pt2 format, with the project's pinned requirements and no local paths."""

from __future__ import annotations

import tomllib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_incrementing

from crackdet.core.layout import Layout
from crackdet.model.classifier import CrackClassifier

# Tries of log_input while another run inserts the same data set row (see log_data_input).
DATASET_TRIES = 4


def dataset_race_retry(error: type[Exception]) -> Retrying:
    """Retry a call that raised ``error`` (MLflow's) on losing the race to insert a shared data
    set row: two runs logging the same data set at once on a tracking server, the loser's
    insert hits the row's primary key (HTTP 400 naming ``dataset_pk``); its SQLite twin is
    retried by crackdet.tracking.store. Here too the retry finds the winner's row.
    DATASET_TRIES tries, 0.2 s, 0.4 s, ... apart."""
    return Retrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, error) and "dataset_pk" in str(exc)),
        stop=stop_after_attempt(DATASET_TRIES),
        wait=wait_incrementing(start=0.2, increment=0.2),
        reraise=True,
    )


def log_data_input(layout: Layout, lineage: dict[str, str]) -> None:
    """The fetched data set as the run's training input, named by its manifest digest."""
    # MLflow's dataset API (~1.3 s to import with MLflow): only in a logging stage.
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():
        # MLflow registers two equivalent local sources and warns that it picked one.
        warnings.simplefilter("ignore", UserWarning)
        # Repo-relative: no folder of this machine in the logged source.
        source = resolve_dataset_source(layout.fetch.manifest.relative_to(layout.root).as_posix())
    # MLflow keeps at most 36 characters of a dataset digest; the full one is in the tags.
    dataset = MetaDataset(
        source,
        name=f"crackdet-{lineage['data.sources'].replace(',', '+')}",
        digest=lineage["data.manifest_sha256"][:32],
    )
    dataset_race_retry(MlflowException)(mlflow.log_input, dataset, context="training")


def log_model(layout: Layout, model: CrackClassifier, example: torch.Tensor) -> str:
    """Log the classifier in MLflow's pickle-free pt2 format; return its ``models:/`` URI."""
    import mlflow.pytorch  # ~1.3 s to import with MLflow: only in a logging stage

    with export_without_source_paths():
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example.numpy(),  # a batch of 2+, else the export only accepts batch 1
            pip_requirements=model_requirements(layout),
            serialization_format="pt2",
            # What a registry consumer needs to rebuild preprocessing and read the outputs.
            metadata={"crackdet_spec": model.spec.to_dict()},
            # MLflow would reload the exported program in a simulated serving environment and
            # check its requirements (~3 s, a tenth of a train-only rerun). The pipeline tests
            # check instead that the registered model loads and matches the checkpoint.
            validate_serving_input=False,
        )
    return info.model_uri


def model_requirements(layout: Layout) -> list[str] | None:
    """The project's pinned direct dependencies, constrained by the whole lock file.

    MLflow stores them as the model's requirements.txt plus constraints.txt (the lock), which
    reinstalls exactly this environment; MLflow checks the listed requirements against the
    installed packages, and listing ~15 instead of all ~190 locked ones keeps that under 0.1 s
    instead of ~1.5 s. None (MLflow's inference) outside a crackdet checkout."""
    lock, project = layout.requirements_lock, layout.pyproject
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
    import torch.export  # not loaded by ``import torch``; only when a model is logged

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
