"""Model files never run pickled code: registry versions must be pt2 (checkpoints: test_models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crackdet.core.errors import CrackdetError


def test_registry_model_in_pickle_format_is_refused(chdir_tmp: Path) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    from crackdet.tracking.registry import load_registry_model

    mlflow.set_tracking_uri(f"sqlite:///{chdir_tmp / 'mlflow.db'}")
    mlflow.set_experiment("pickled")  # an earlier test's active experiment is not in this store
    with mlflow.start_run():
        mlflow.pytorch.log_model(
            torch.nn.Linear(2, 2),
            name="model",
            serialization_format="pickle",
            registered_model_name="pickled",
        )
    with pytest.raises(CrackdetError) as exc:
        load_registry_model("models:/pickled/1")
    assert str(exc.value) == (
        "models:/pickled/1: not stored in the pickle-free pt2 format (loading it would unpickle "
        "code); re-log it with serialization_format='pt2', as crackdet train does"
    )
