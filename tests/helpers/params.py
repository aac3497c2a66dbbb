"""Params trees for tests: the project's params.yaml, shrunk so a pipeline runs in seconds."""

from __future__ import annotations

from typing import Any

import yaml

from tests.helpers.project import PROJECT


def default_params_tree() -> dict[str, Any]:
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


def synthetic_source(per_class: int, style: str = "classic") -> dict[str, Any]:
    return {"kind": "synthetic", "per_class": per_class, "style": style, "licence": "generated"}


def archive_source(path: str, kind: str = "archive", sha256: str = "") -> dict[str, Any]:
    return {
        "kind": kind,
        "path": path,
        "sha256": sha256,
        "licence": "test data",
        "group_by": "signature",
    }


def tiny_params_tree(**overrides: Any) -> dict[str, Any]:
    """The project's params shrunk so a whole pipeline runs in seconds on 2 cores."""
    tree = default_params_tree()
    # One small rendered source: no data to pull, and it runs in seconds.
    tree["fetch"]["sources"] = {"synthetic": synthetic_source(24)}
    tree["train"]["source_weights"] = {}
    tree["train"]["epochs"] = 2
    # The pixel decoder on a few tiny rendered photos: its own tests train it in earnest.
    tree["train"]["decoder"].update({"synthetic_photos": 4, "crop": 64, "epochs": 1})
    # The window head in context: a few rendered photos, small, two epochs.
    tree["train"]["window_head"].update(
        {"enabled": True, "epochs": 2, "photos": 2, "photo_size": 256}
    )
    # scale auto maps a test's 480-px photos at 4-6x (thousands of windows); it has tests of
    # its own (test_maps_eval, the default pipeline), the rest map at 1.
    tree["predict"]["scale"] = 1.0
    for dotted, value in overrides.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return tree
