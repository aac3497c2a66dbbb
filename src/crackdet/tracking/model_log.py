"""Logging what train produced into its MLflow run: the data set as an input and the whole model
(pickle-free pt2 program, checkpoint folder with threshold and OOD model, exported graph, a
``python_function`` flavour taking images), with the runtime's pinned requirements and no local
paths."""

from __future__ import annotations

import shutil
import tempfile
import tomllib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_incrementing

from crackdet.core.io import write_bytes, write_json
from crackdet.core.layout import Layout
from crackdet.model.classifier import CrackClassifier
from crackdet.model.ood import OODModel, save_empty
from crackdet.tracking.serving import MODEL_FOLDER

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


@dataclass(frozen=True)
class ModelFiles:
    """What travels with the logged model besides its pt2 program: the checkpoint folder train
    writes (``model.pt`` bytes, the OOD model) and the backbone's exported graph."""

    checkpoint: bytes
    ood: OODModel | None  # None: train fitted none (an empty ood.npz, as in outputs/train)
    graph: Path | None  # the exported ONNX graph in the cache; None when the export failed
    # Writes the dense heads' files (pixel decoder, window head) into a folder, as train writes
    # them beside model.pt: the registered model then maps exactly as the folder does.
    heads: Callable[[Path], None] | None = None


def log_model(
    layout: Layout, model: CrackClassifier, example: torch.Tensor, files: ModelFiles
) -> str:
    """Log the classifier (see :func:`save_crackdet_model`); return its ``models:/`` URI."""
    from mlflow.models import Model  # ~1.3 s to import with MLflow: only in a logging stage

    with export_without_source_paths(), tempfile.TemporaryDirectory() as scratch:
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=_FLAVOR,
            classifier=model,
            example=example,
            files=files,
            pip_requirements=model_requirements(layout, Path(scratch)),
            # What a registry consumer needs to rebuild preprocessing and read the outputs.
            metadata={"crackdet_spec": model.spec.to_dict()},
            # MLflow would reload the model in a simulated serving environment and check its
            # requirements (~3 s, a tenth of a train-only rerun). The tests serve it for real.
            validate_serving_input=False,
        )
    return info.model_uri


def save_crackdet_model(
    path: str,
    mlflow_model: Any,
    classifier: CrackClassifier,
    example: torch.Tensor,
    files: ModelFiles,
    pip_requirements: list[str] | None,
    **_: Any,
) -> None:
    """Save the whole model into ``path`` (what ``Model.log`` calls as the flavour's save):

    - the ``pytorch`` flavour: the pickle-free pt2 program (float RGB [0, 1] NCHW in, logits
      out), for ``mlflow.pytorch.load_model``;
    - ``crackdet/``: the checkpoint folder as in ``outputs/train`` (weights, spec with the
      operating threshold and temperature, OOD model) and the backbone's ONNX graph, from which
      ``crackdet predict --model models:/…`` maps exactly as from the folder;
    - the ``python_function`` flavour on that folder (crackdet.tracking.serving): uint8 RGB
      images of any size in, P(crack), label and the OOD flag out; the signature and input
      example say so."""
    import mlflow.pytorch  # MLflow's flavours: only where a model is logged
    from mlflow.models.signature import ModelSignature
    from mlflow.models.utils import _save_example
    from mlflow.pyfunc import add_to_model
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    mlflow.pytorch.save_model(
        classifier,
        path,
        mlflow_model=mlflow_model,
        input_example=example.numpy(),  # a batch of 2+, else the export only accepts batch 1
        pip_requirements=pip_requirements,
        serialization_format="pt2",
    )
    root = Path(path)
    # The float example the export needed is ~6 MB of JSON and not what the flavour takes.
    for name in (mlflow_model.saved_input_example_info or {}).values():
        if isinstance(name, str) and name.endswith(".json"):
            (root / name).unlink(missing_ok=True)
    mlflow_model.saved_input_example_info = None
    _save_example(mlflow_model, image_example(example), path)
    mlflow_model.signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), "images")]),
        outputs=Schema(
            [
                ColSpec("double", "p_crack"),
                ColSpec("string", "label"),
                ColSpec("boolean", "unfamiliar", required=False),
            ]
        ),
    )
    folder = root / MODEL_FOLDER
    folder.mkdir()
    write_bytes(folder / "model.pt", files.checkpoint)
    write_json(folder / "model.json", classifier.spec.to_dict())
    if files.ood is not None:
        files.ood.save(folder / "ood.npz")
    else:
        save_empty(folder / "ood.npz")
    if files.graph is not None:
        shutil.copyfile(files.graph, folder / files.graph.name)
    if files.heads is not None:
        files.heads(folder)
    mlflow_model.flavors.pop("python_function", None)
    add_to_model(
        mlflow_model,
        loader_module="crackdet.tracking.serving",
        data=MODEL_FOLDER,
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    mlflow_model.model_size_bytes = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    mlflow_model.save(str(root / "MLmodel"))


# Model.log's "flavor": the module-like object whose save_model writes the model.
_FLAVOR = SimpleNamespace(__name__="crackdet", save_model=save_crackdet_model)


def image_example(example: torch.Tensor, side: int = 24) -> np.ndarray:
    """A small input example as the python_function flavour takes it: the first example image
    as uint8 RGB, shrunk (any size is accepted; a full patch would be ~600 KB of JSON)."""
    rgb = (example[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb, "RGB").resize((side, side)))[None]


def model_requirements(layout: Layout, scratch: Path) -> list[str] | None:
    """The runtime's pinned direct dependencies (``pyproject.toml``'s ``dependencies``),
    constrained by the lines of ``requirements.lock`` they need (what those pins pull in,
    per the installed packages' metadata; test, lint and docs tools are left out).

    MLflow stores them as the model's requirements.txt plus constraints.txt, which reinstalls
    the runtime of this environment, and checks every line against the installed packages
    when the model loads: a tool missing there would be a warning. None (MLflow's inference)
    outside a crackdet checkout."""
    lock, project = layout.requirements_lock, layout.pyproject
    if not (lock.exists() and project.exists()):
        return None
    try:
        dependencies = tomllib.loads(project.read_text())["project"]["dependencies"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return None  # an unusual pyproject: let MLflow infer the requirements
    needed = runtime_closure(dependencies)
    lines = [
        line for line in lock.read_text().splitlines() if line.strip() and _name(line) in needed
    ]
    constraints = scratch / "constraints.txt"
    constraints.write_text("\n".join(lines) + "\n")
    return [*dependencies, f"-c {constraints}"]


def runtime_closure(requirements: list[str]) -> set[str]:
    """Normalised names of ``requirements`` and everything they require, transitively, as the
    installed distributions declare it (extras not asked for and markers that do not apply
    here are left out)."""
    # Only when a model is logged (packaging comes with pip and MLflow).
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [(Requirement(r), frozenset[str]()) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        env_extras = extras or frozenset({""})
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": e}) for e in env_extras
        ):
            continue
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            declared = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: pinned by its own line if the lock has one
        for line in declared:
            try:
                todo.append((Requirement(line), frozenset(requirement.extras)))
            except InvalidRequirement:
                continue
    return {key for key in seen if "[" not in key}


def _name(line: str) -> str:
    """The normalised package name of a ``name==version`` lock line."""
    from packaging.utils import canonicalize_name  # as in runtime_closure

    return canonicalize_name(line.split("==", 1)[0].split("[", 1)[0].strip())


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
