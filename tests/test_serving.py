"""The registered model's python_function flavour: the images it accepts, and the runtime
requirements logged with it (the flavour end to end, served for real: tests/test_pipeline.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crackdet.core.errors import CrackdetError
from crackdet.data.images import as_patch, load_rgb
from crackdet.tracking.serving import as_images


def test_images_come_as_one_a_batch_or_a_ragged_list() -> None:
    a = np.zeros((20, 30, 3), np.uint8)
    b = np.full((7, 5, 3), 255, np.uint8)
    assert [i.shape for i in as_images(a)] == [(20, 30, 3)]
    assert [i.shape for i in as_images(np.stack([a, a]))] == [(20, 30, 3)] * 2
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = a, b
    assert [i.shape for i in as_images(ragged)] == [(20, 30, 3), (7, 5, 3)]
    # JSON numbers arrive as int64 (or float): whole numbers 0-255 are taken as uint8.
    (taken,) = as_images(b.astype(np.int64)[None])
    assert taken.dtype == np.uint8 and np.array_equal(taken, b)
    assert as_images({"images": [b.astype(float)]})[0].dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (np.zeros((4, 4), np.uint8), "image 0 has shape (4,); expected H x W x 3"),
        (np.zeros((1, 4, 4, 4), np.uint8), "shape (4, 4, 4)"),
        (np.full((1, 4, 4, 3), 0.5), "float64 with values outside the whole numbers 0-255"),
        (np.full((1, 4, 4, 3), 300), "int64 with values outside the whole numbers 0-255"),
        ([], "expected RGB images"),
    ],
)
def test_other_inputs_are_refused_in_one_line(data: object, says: str) -> None:
    with pytest.raises(CrackdetError, match="^crackdet model: ") as caught:
        as_images(data)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_an_image_is_resized_as_training_resized_its_patches(tmp_path) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    trained = load_rgb(tmp_path / "p.png")  # how train and evaluate read a patch file
    assert trained.shape == (227, 227, 3)
    assert np.array_equal(as_patch(Image.fromarray(photo)), trained)
    # Independent of both: the bilinear resize the training data was made with.
    expected = np.asarray(Image.fromarray(photo).resize((227, 227), Image.Resampling.BILINEAR))
    assert np.array_equal(trained, expected)


def test_logged_requirements_are_the_runtimes_closure() -> None:
    from crackdet.tracking.model_log import runtime_closure

    needed = runtime_closure(["mlflow==3.17.2", "onnxruntime==1.30.0"])
    assert {"mlflow", "mlflow-skinny", "flask", "onnxruntime", "numpy", "protobuf"} <= needed
    assert not needed & {"pytest", "ruff", "import-linter", "mkdocs", "scikit-image"}
