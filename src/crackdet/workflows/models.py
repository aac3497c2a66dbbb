"""Models by reference: a checkpoint folder (``model.pt`` + ``model.json``) or a registry/run
URI, for the commands that score or map with any model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from crackdet.core.layout import Layout
from crackdet.model.classifier import load_checkpoint
from crackdet.tracking.registry import load_registry_model
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
