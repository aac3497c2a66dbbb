"""The registered model as users call it: MLflow's ``python_function`` flavour of crackdet.

A logged crackdet model holds, besides the pt2 program of the ``pytorch`` flavour, the checkpoint
folder train writes (``crackdet.maps.mapping.CHECKPOINT_FILES``: weights, spec with the operating
threshold, OOD model) and the backbone's exported ONNX graph, in the model's ``crackdet/`` folder.
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` load that folder here (``_load_pyfunc``):
images go in as people have them (uint8 RGB, H x W x 3, any size), are resized to the model's patch
as every training and test patch was (:func:`crackdet.data.images.as_patch`), and what comes out is
P(crack), the label at the model's threshold and whether the patch looks unlike the training data
(``unfamiliar``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from crackdet.core.errors import CrackdetError
from crackdet.data.images import as_patch
from crackdet.model.classifier import FORWARD_CHUNK, CrackClassifier, load_checkpoint
from crackdet.model.ood import OODModel

MODEL_FOLDER = "crackdet"  # inside the logged model's artifacts
SERVING_ENGINE = "onnxruntime"  # the exported graph, as the pipeline's default engine runs it


@dataclass(frozen=True)
class ModelBundle:
    """A checkpoint folder loaded: the classifier (backbone as its graph when the folder holds
    it) and the OOD model beside it (None when train fitted none)."""

    model: CrackClassifier
    ood: OODModel | None


def load_bundle(folder: Path) -> ModelBundle:
    """The classifier and OOD model of a checkpoint folder (``outputs/train`` or a logged
    model's ``crackdet/``); a graph in the folder named by its digest runs the backbone."""
    model = load_checkpoint(
        folder / "model.pt", folder / "model.json", SERVING_ENGINE, onnx_cache=folder
    )
    return ModelBundle(model, OODModel.load(folder / "ood.npz"))


def as_images(data: Any) -> list[np.ndarray]:
    """The images of a request: one H x W x 3 array, a batch N x H x W x 3, or a list (or 1-D
    object array, MLflow's ragged tensor) of H x W x 3 arrays of any sizes. Values must be
    whole numbers 0-255 (JSON brings them as int64: they are taken as uint8)."""
    if isinstance(data, dict) and len(data) == 1:
        (data,) = data.values()  # {"images": …}: a named input
    if isinstance(data, np.ndarray) and data.dtype != object and data.ndim == 3:
        data = data[None]
    items = list(data) if isinstance(data, (list, tuple, np.ndarray)) else None
    if not items:
        raise CrackdetError(
            "crackdet model: expected RGB images (uint8 H x W x 3 arrays, or a batch N x H x W x 3)"
        )
    images = []
    for index, item in enumerate(items):
        array = np.asarray(item)
        if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
            raise CrackdetError(
                f"crackdet model: image {index} has shape {array.shape}; expected H x W x 3 (RGB)"
            )
        if array.dtype != np.uint8:
            whole = np.issubdtype(array.dtype, np.integer) or bool(
                np.all(np.equal(np.mod(array, 1), 0))
            )
            if not whole or array.min() < 0 or array.max() > 255:
                raise CrackdetError(
                    f"crackdet model: image {index} is {array.dtype} with values outside the "
                    "whole numbers 0-255; send uint8 RGB as read from the image file"
                )
            array = array.astype(np.uint8)
        images.append(array)
    return images


@torch.inference_mode()
def classify(bundle: ModelBundle, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """P(crack), the label at the model's threshold and the OOD flag of each image."""
    model = bundle.model
    spec = model.spec
    probabilities, unfamiliar = [], []
    for start in range(0, len(images), FORWARD_CHUNK):
        chunk = images[start : start + FORWARD_CHUNK]
        patches = np.stack([as_patch(Image.fromarray(a, "RGB"), spec.patch_size) for a in chunk])
        batch = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
        features = model.features(batch)
        logits = model.logits_from_features(features)
        probabilities.append(torch.softmax(logits, dim=1)[:, 1].numpy())
        if bundle.ood is not None:
            unfamiliar.append(bundle.ood.is_ood(features.numpy()))
    p_crack = np.concatenate(probabilities).astype(np.float64)
    crack = p_crack >= spec.threshold
    labels = np.array([spec.classes[int(c)] for c in crack], dtype=object)
    result = {"p_crack": p_crack, "label": labels}
    if unfamiliar:
        result["unfamiliar"] = np.concatenate(unfamiliar)
    return result


class CrackdetPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns for a crackdet model (see the module doc)."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas  # MLflow's own dependency: the scoring server writes frames as records

        return pandas.DataFrame(classify(self.bundle, as_images(data)))


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> CrackdetPyfunc:
    """MLflow's loader hook (``loader_module`` of the ``python_function`` flavour)."""
    return CrackdetPyfunc(load_bundle(Path(data_path)))
