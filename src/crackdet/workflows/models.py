"""Models by reference: a checkpoint folder (``model.pt`` + ``model.json``) or a registry/run
URI, for the commands that score or map with any model, and how to name and identify one; and
what the registry holds of a model (``crackdet models``, ``crackdet promotion-log``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from crackdet.core.layout import Layout
from crackdet.maps.mapping import checkpoint_digest
from crackdet.model.classifier import load_checkpoint
from crackdet.model.ood import OODModel
from crackdet.tracking.registry import (
    RegistryClassifier,
    list_versions,
    load_registry_model,
    read_log,
    version_of,
)
from crackdet.tracking.store import client_for

REGISTRY_SCHEMES = ("models:/", "runs:/")


def load_model(reference: str, layout: Layout, engine: str = "torch") -> nn.Module:
    """A checkpoint folder or a registry URI (``models:/crack-classifier@champion``), as a module
    taking float RGB [0, 1] NCHW. A checkpoint's backbone runs as its exported graph when
    ``engine`` is a graph engine and the graph is in the layout's cache."""
    if reference.startswith(REGISTRY_SCHEMES):
        client_for(layout.root)  # registry URIs resolve against the project's store
        return load_registry_model(reference)
    folder = Path(reference)
    return load_checkpoint(folder / "model.pt", folder / "model.json", engine, layout.graph_cache)


@dataclass(frozen=True)
class ModelIdentity:
    """How outputs name a model (``label``) and what identifies its weights (``digest``)."""

    label: str
    digest: str


def model_identity(reference: str, model: nn.Module, layout: Layout) -> ModelIdentity:
    """``crack-classifier v3 (@champion)`` for a registry alias, the folder and a short digest
    for a checkpoint; the digest is the pt2 file's or the checkpoint folder's."""
    if isinstance(model, RegistryClassifier):
        version = version_of(client_for(layout.root), reference)
        label = reference
        if version is not None:
            alias = reference.split("@", 1)[1] if "@" in reference else ""
            label = f"{version.name} v{version.version}" + (f" (@{alias})" if alias else "")
        return ModelIdentity(label, model.digest)
    digest = checkpoint_digest(Path(reference))
    return ModelIdentity(f"{reference} ({digest[:12]})", digest)


def ood_beside(reference: str) -> OODModel | None:
    """The OOD model that lives next to a checkpoint folder; registry models carry none."""
    if reference.startswith(REGISTRY_SCHEMES):
        return None
    return OODModel.load(Path(reference) / "ood.npz")


def list_models(root: Path, name: str) -> list[dict[str, Any]]:
    """``crackdet models``: the registered versions of ``name``, newest first, with their
    aliases and key metrics."""
    return list_versions(client_for(root), name)


def promotion_log(root: Path, name: str) -> list[dict[str, Any]]:
    """``crackdet promotion-log`` (and ``models --log``): every alias move of ``name``."""
    return read_log(client_for(root), name)
