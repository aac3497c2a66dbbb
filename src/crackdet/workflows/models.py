"""Models by reference: a checkpoint folder (``model.pt`` + ``model.json``) or a registry/run
URI, for the commands that score or map with any model, and how to name and identify one; and
what the registry holds of a model (``crackdet models``, ``crackdet promotion-log``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from crackdet.core.io import write_with
from crackdet.core.layout import Layout
from crackdet.maps.mapping import checkpoint_digest
from crackdet.model.classifier import load_checkpoint
from crackdet.model.ood import OODModel
from crackdet.tracking.registry import (
    RegistryClassifier,
    list_versions,
    load_registry_model,
    read_log,
    registry_folder,
    version_of,
)
from crackdet.tracking.runs import run_of_checkpoint
from crackdet.tracking.store import client_for

REGISTRY_SCHEMES = ("models:/", "runs:/")


def load_model(reference: str, layout: Layout, engine: str = "torch") -> nn.Module:
    """A checkpoint folder or a registry URI (``models:/crack-classifier@champion``), as a module
    taking float RGB [0, 1] NCHW. A checkpoint's backbone runs as its exported graph when
    ``engine`` is a graph engine and the graph is in the layout's cache.

    A registered version logged by crackdet train carries its checkpoint folder and graph
    (crackdet.tracking.model_log): it loads exactly as that folder would, its graph joining
    the layout's cache, so maps, speed and the OOD hatching are the folder's. An older
    pt2-only version loads as its pt2 program."""
    folder = checkpoint_folder(reference, layout)
    if folder is None:
        return load_registry_model(reference)
    return load_checkpoint(folder / "model.pt", folder / "model.json", engine, layout.graph_cache)


def checkpoint_folder(reference: str, layout: Layout) -> Path | None:
    """The checkpoint folder a reference names: the folder itself, or the registered version's
    downloaded ``crackdet/`` folder (None: a version without one)."""
    if not reference.startswith(REGISTRY_SCHEMES):
        return Path(reference)
    client_for(layout.root)  # registry URIs resolve against the project's store
    folder = registry_folder(reference)
    if folder is not None:
        # The cache is keyed by a digest of the weights, settings and torch version: a graph
        # exported by another torch version is named otherwise and never found here.
        for graph in folder.glob("*.onnx"):
            cached = layout.graph_cache / graph.name
            if not cached.is_file():
                write_with(cached, lambda tmp, graph=graph: shutil.copyfile(graph, tmp))
    return folder


@dataclass(frozen=True)
class ModelIdentity:
    """How outputs name a model (``label``) and what identifies its weights (``digest``)."""

    label: str
    digest: str


def model_identity(reference: str, model: nn.Module, layout: Layout) -> ModelIdentity:
    """``crack-classifier v3 (@champion)`` for a registry alias, the folder and a short digest
    for a checkpoint; the digest is the pt2 file's or the checkpoint folder's."""
    if reference.startswith(REGISTRY_SCHEMES):
        version = version_of(client_for(layout.root), reference)
        label = reference
        if version is not None:
            alias = reference.split("@", 1)[1] if "@" in reference else ""
            label = f"{version.name} v{version.version}" + (f" (@{alias})" if alias else "")
        if isinstance(model, RegistryClassifier):
            return ModelIdentity(label, model.digest)
        # The same files as the checkpoint folder: the same digest, so maps made from either
        # count as made by this model.
        return ModelIdentity(label, checkpoint_digest(checkpoint_folder(reference, layout)))
    digest = checkpoint_digest(Path(reference))
    return ModelIdentity(f"{reference} ({digest[:12]})", digest)


def model_lineage(reference: str, layout: Layout) -> tuple[str, str]:
    """(``NAME/N`` of the registered version or "", the run that trained the model or ""): where
    ``crackdet trace`` of a run that used the model finds the model's own lineage."""
    client = client_for(layout.root)
    if reference.startswith("runs:/"):
        return "", reference.removeprefix("runs:/").split("/", 1)[0]
    if reference.startswith(REGISTRY_SCHEMES):
        version = version_of(client, reference)
        if version is None:
            return "", ""
        return f"{version.name}/{version.version}", version.run_id or ""
    return "", run_of_checkpoint(client, Path(reference))


def ood_beside(reference: str) -> OODModel | None:
    """The OOD model that lives next to a checkpoint folder, or travels with a registered
    version (an older pt2-only version carries none)."""
    folder = registry_folder(reference) if reference.startswith(REGISTRY_SCHEMES) else None
    if folder is None and reference.startswith(REGISTRY_SCHEMES):
        return None
    return OODModel.load((folder or Path(reference)) / "ood.npz")


def list_models(root: Path, name: str) -> list[dict[str, Any]]:
    """``crackdet models``: the registered versions of ``name``, newest first, with their
    aliases and key metrics."""
    return list_versions(client_for(root), name)


def promotion_log(root: Path, name: str) -> list[dict[str, Any]]:
    """``crackdet promotion-log`` (and ``models --log``): every alias move of ``name``."""
    return read_log(client_for(root), name)
