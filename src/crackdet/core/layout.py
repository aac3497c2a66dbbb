"""The workspace layout: every path a stage reads or writes, named once.

Stages, commands and tests ask a :class:`Layout` for paths instead of spelling ``outputs/…``
themselves, so the layout dvc.yaml declares lives in one module (``tests/test_architecture.py``
checks that the two agree).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "CRACKDET_CACHE"  # share one feature/graph cache between clones


def repo_root(start: Path | None = None) -> Path:
    """The workspace root: the nearest folder with dvc.yaml (or .dvc/) from the working folder.

    A queued experiment runs in a temporary copy of the repository: that copy is its workspace
    and its outputs go there (DVC collects them from it), never into ``DVC_ROOT``, where
    parallel experiments would overwrite each other's outputs.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() or (folder / ".dvc").is_dir():
            return folder
    return here


@dataclass(frozen=True)
class FetchOutputs:
    dir: Path

    @property
    def images(self) -> Path:
        return self.dir / "images"

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.csv"

    @property
    def signatures(self) -> Path:
        return self.dir / "signatures.npz"

    @property
    def duplicates(self) -> Path:
        return self.dir / "duplicates.csv"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def masks(self) -> Path:
        """masks/<source>/{images,masks,masks_planking}: a masks source's photos, kept whole
        for the pixel decoder (the windows in images/ are cut from them)."""
        return self.dir / "masks"


@dataclass(frozen=True)
class SplitOutputs:
    dir: Path

    def manifest(self, split: str) -> Path:
        """``train.csv``, ``val.csv`` or ``test.csv``."""
        return self.dir / f"{split}.csv"

    @property
    def groups(self) -> Path:
        return self.dir / "groups.csv"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"


@dataclass(frozen=True)
class TrainOutputs:
    dir: Path

    @property
    def model(self) -> Path:
        return self.dir / "model.pt"

    @property
    def spec(self) -> Path:
        return self.dir / "model.json"

    @property
    def probe(self) -> Path:
        return self.dir / "probe.json"

    @property
    def ood(self) -> Path:
        return self.dir / "ood.npz"

    @property
    def history(self) -> Path:
        return self.dir / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def run(self) -> Path:
        return self.dir / "run.json"

    @property
    def decoder(self) -> Path:
        return self.dir / "decoder.pt"

    @property
    def decoder_spec(self) -> Path:
        return self.dir / "decoder.json"


@dataclass(frozen=True)
class EvaluateOutputs:
    dir: Path

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.dir / "plots"

    @property
    def report(self) -> Path:
        return self.dir / "report"

    @property
    def registered(self) -> Path:
        return self.dir / "registered.json"


@dataclass(frozen=True)
class Layout:
    """Paths of one workspace (the repository root, or a queued experiment's copy of it)."""

    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def photos(self) -> Path:
        """The sample photos predict_samples maps (tracked by ``data.dvc``)."""
        return self.root / "data" / "photos"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def fetch(self) -> FetchOutputs:
        return FetchOutputs(self.outputs / "fetch")

    @property
    def split(self) -> SplitOutputs:
        return SplitOutputs(self.outputs / "split")

    @property
    def train(self) -> TrainOutputs:
        return TrainOutputs(self.outputs / "train")

    @property
    def evaluate(self) -> EvaluateOutputs:
        return EvaluateOutputs(self.outputs / "evaluate")

    @property
    def predict(self) -> Path:
        return self.outputs / "predict"

    @property
    def ci_report(self) -> Path:
        return self.outputs / "ci-check.md"

    @property
    def downloads(self) -> Path:
        return self.root / ".cache" / "downloads"

    @property
    def cache(self) -> Path:
        """``$CRACKDET_CACHE`` when set, else ``<root>/.cache``: features, graphs, probes."""
        env = os.environ.get(CACHE_ENV)
        return Path(env) if env else self.root / ".cache"

    @property
    def features_cache(self) -> Path:
        return self.cache / "features"

    @property
    def graph_cache(self) -> Path:
        """Exported ONNX graphs (crackdet.model.engines) live beside the feature cache."""
        return self.cache / "onnx"

    @property
    def probe_cache(self) -> Path:
        """Fitted probe baselines (crackdet.model.probe)."""
        return self.cache / "probes"

    @property
    def requirements_lock(self) -> Path:
        return self.root / "requirements.lock"

    @property
    def pyproject(self) -> Path:
        return self.root / "pyproject.toml"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"
