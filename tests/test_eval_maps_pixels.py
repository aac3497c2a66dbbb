"""eval-maps' crack-pixel figures: tolerant counts summed over photos, planking called crack,
skeleton length error, the per-photo table, and "absent, and why" for a model without pixels."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crackdet.data.images import CLASSES
from crackdet.data.sources.synthetic import render_photo
from crackdet.maps.crackmap import CrackMap
from crackdet.maps.mapping import PhotoMap
from crackdet.maps.scoring import (
    CRACK,
    NO_PIXELS,
    mask_length,
    photo_pixels,
    photos_csv,
    pixel_figures,
    pixel_section,
    score_pixels,
    score_windows,
)
from crackdet.model.classifier import build_classifier
from crackdet.model.pixel_metrics import PixelCounts
from crackdet.workflows.eval_maps import summary_line
from tests.helpers import PROJECT


def _line(shape: tuple[int, int], row: int, x0: int, x1: int, width: int = 1) -> np.ndarray:
    """A horizontal crack ``width`` px thick from column ``x0`` to ``x1`` (inclusive)."""
    mask = np.zeros(shape, dtype=bool)
    mask[row : row + width, x0 : x1 + 1] = True
    return mask


def test_prediction_equal_to_the_truth_scores_one() -> None:
    truth = _line((64, 160), 30, 10, 129, width=3)
    scored = score_pixels("a.png", truth, truth)
    c = scored.counts
    assert (c.precision, c.recall, c.f1) == (1.0, 1.0, 1.0)
    assert c.predicted == c.true == 3 * 120
    assert scored.length_error == 0.0


def test_two_pixels_off_is_found_three_is_missed() -> None:
    truth = _line((64, 160), 30, 10, 109)  # 100 px
    near = score_pixels("a.png", _line((64, 160), 32, 10, 109), truth).counts
    assert (near.correct, near.found, near.f1) == (100, 100, 1.0)
    far = score_pixels("a.png", _line((64, 160), 33, 10, 109), truth).counts
    assert (far.predicted, far.correct, far.found, far.f1) == (100, 0, 0, 0.0)
    # 50 more predicted pixels far from any crack: precision 100/150, recall still 1.
    extra = _line((64, 160), 30, 10, 109) | _line((64, 160), 5, 100, 149)
    counts = score_pixels("a.png", extra, truth).counts
    assert counts.precision == pytest.approx(100 / 150) and counts.recall == 1.0


def test_planking_called_crack_is_the_share_of_planking_pixels_predicted() -> None:
    truth = _line((80, 80), 70, 0, 79)
    planking = np.zeros((80, 80), dtype=bool)
    planking[0:20, 0:20] = True  # 400 px of wood grain
    planking[70, :] = True  # planking under the crack is crack, not planking
    predicted = truth.copy()
    predicted[0:5, 0:20] = True  # 100 planking pixels called crack
    counts = score_pixels("a.png", predicted, truth, planking).counts
    assert counts.planking == 400 and counts.planking_called == 100
    assert counts.planking_called_share == 0.25


def test_length_error_against_a_drawn_line_of_known_length() -> None:
    truth = _line((64, 200), 30, 20, 140, width=3)  # 121 px long: length 120 along its axis
    assert mask_length(truth) == pytest.approx(120, abs=1.0)
    half = _line((64, 200), 31, 20, 80)  # 61 px: length 60
    assert mask_length(half) == 60.0
    scored = score_pixels("a.png", half, truth)
    assert scored.true_length == pytest.approx(120, abs=1.0)
    assert scored.length_error == pytest.approx(0.5, abs=0.01)
    diagonal = np.zeros((128, 128), dtype=bool)
    steps = np.arange(10, 111)  # 101 pixels: 100 diagonal steps
    diagonal[steps, steps] = True
    assert mask_length(diagonal) == pytest.approx(100 * math.sqrt(2))
    assert mask_length(np.zeros((8, 8), dtype=bool)) == 0.0


def test_photos_add_counts_before_dividing_and_length_errors_take_the_median() -> None:
    shape = (64, 160)
    truth = _line(shape, 30, 10, 109)
    hit = _line(shape, 30, 10, 109) | _line(shape, 5, 100, 149)  # P 2/3, R 1: F1 0.8
    missed = _line(shape, 50, 10, 59)  # 50 true px, none predicted: F1 undefined
    photos = [
        score_pixels("a.png", hit, truth),
        score_pixels("b.png", np.zeros(shape, bool), missed),
        score_pixels("c.png", _line(shape, 30, 10, 59), truth),  # half the length
        score_pixels("d.png", np.zeros(shape, bool), np.zeros(shape, bool)),  # no crack at all
    ]
    assert photos[0].counts.f1 == pytest.approx(0.8) and photos[1].counts.f1 is None
    figures = pixel_figures(photos)
    # Summed: predicted 150 + 0 + 50, correct 100 + 0 + 50, true 100 + 50 + 100, found
    # 100 + 0 + 52 (c's prediction ends 2 px short of x 61: those 2 true pixels are found too).
    assert figures["pixel_precision"] == pytest.approx(150 / 200)
    assert figures["pixel_recall"] == pytest.approx(152 / 250)
    p, r = 150 / 200, 152 / 250
    assert figures["pixel_f1"] == pytest.approx(2 * p * r / (p + r))
    assert figures["pixel_planking_called"] is None  # no planking masks
    # Length errors (a 100-px line is 99 long): a (148 - 99) / 99, b 1.0 (nothing predicted),
    # c (99 - 49) / 99; d has no true crack.
    errors = sorted(e for e in (q.length_error for q in photos) if e is not None)
    assert len(errors) == 3 and photos[3].length_error is None
    assert figures["length_error_median"] == errors[1]
    assert errors[1] == pytest.approx(50 / 99, abs=1e-6)
    assert figures["photos_with_pixels"] == 4


def _photo_map(pixels: np.ndarray | None, shape: tuple[int, int]) -> PhotoMap:
    heatmap = np.zeros(shape, dtype=np.float32)
    result = CrackMap(heatmap, [], 0.0, None)
    return PhotoMap(np.zeros((*shape, 3), np.uint8), (1.0,), result, pixels)


def test_a_map_is_scored_at_the_pixel_threshold_and_not_at_all_without_pixels() -> None:
    shape = (64, 160)
    truth = _line(shape, 30, 10, 109, width=2)
    probabilities = np.where(truth, 0.9, 0.05).astype(np.float32)
    exact = photo_pixels("a.png", _photo_map(probabilities, shape), truth, None, 0.5)
    assert exact is not None and exact.counts.f1 == 1.0 and exact.length_error == 0.0
    above_all = photo_pixels("a.png", _photo_map(probabilities, shape), truth, None, 0.95)
    assert above_all is not None and above_all.counts.predicted == 0
    assert above_all.counts.recall == 0.0 and above_all.counts.f1 is None
    everything = photo_pixels("a.png", _photo_map(probabilities, shape), truth, None, 0.01)
    assert everything is not None and everything.counts.predicted == truth.size
    assert photo_pixels("a.png", _photo_map(None, shape), truth, None, 0.5) is None


def test_a_map_is_measured_as_predict_measures_its_cracks() -> None:
    """With predict's settings the predicted length is the traced cracks' (specks under
    min_crack_length_px dropped unless grouped with a crack), not the called mask's skeleton."""
    from dataclasses import replace

    from crackdet.core.params import load_params

    shape = (64, 200)
    truth = _line(shape, 20, 10, 149)
    called = _line(shape, 20, 10, 149)
    called[20, 60:92] = False  # the crack seen in two stretches, 10-59 and 92-149,
    called[20, 80:82] = True  # with a 2-px speck 11 px before the second
    called[50, 100:105] = True  # and a speck 30 px from any crack
    probabilities = np.where(called, 0.9, 0.05).astype(np.float32)
    mapped = _photo_map(probabilities, shape)
    settings = replace(
        load_params(PROJECT / "params.yaml").predict,
        min_crack_length_px=10.0,
        crack_gap_px=0.0,
        pixel_hysteresis=1.0,
    )
    raw = photo_pixels("a.png", mapped, truth, None, 0.5)
    traced = photo_pixels("a.png", mapped, truth, None, 0.5, settings)
    assert raw is not None and traced is not None
    assert raw.counts == traced.counts  # the same pixels are called either way
    # The skeleton: stretches 10-59 (49) and 92-149 (57), specks 80-81 (1) and 100-104 (4).
    assert raw.predicted_length == 49 + 57 + 1 + 4
    assert traced.predicted_length == 49 + 57  # the specks dropped
    grouped = photo_pixels("a.png", mapped, truth, None, 0.5, replace(settings, crack_gap_px=12))
    assert grouped is not None and grouped.predicted_length == 49 + 57 + 1  # near speck kept


def test_per_photo_table_holds_each_photos_figures() -> None:
    shape = (64, 160)
    truth = _line(shape, 30, 10, 109)
    photos = [
        score_pixels("a.png", _line(shape, 30, 10, 59), truth),
        score_pixels("b.png", np.zeros(shape, bool), np.zeros(shape, bool)),
    ]
    rows = list(csv.DictReader(io.StringIO(photos_csv(photos))))
    assert [r["photo"] for r in rows] == ["a.png", "b.png"]
    assert float(rows[0]["precision"]) == 1.0 and float(rows[0]["recall"]) == 0.52  # 2 px on
    assert float(rows[0]["length_error"]) == pytest.approx(50 / 99, abs=1e-5)
    assert int(rows[0]["true"]) == 100 and int(rows[0]["predicted"]) == 50
    assert rows[1]["f1"] == "" and rows[1]["length_error"] == ""  # undefined, not 0
    assert sum((p.counts for p in photos), PixelCounts()).true == 100


def _window_metrics() -> dict:
    labels = np.array([CRACK, CRACK])
    metrics = score_windows(labels, np.zeros(2, bool), np.array([0.9, 0.2]), 0.5)
    return {**metrics, "photos": 2, "scale": 1.0, "overlap": 0.5, "seconds": 1.0}


def test_the_printed_line_gives_the_pixel_figures_or_why_there_are_none() -> None:
    shape = (64, 160)
    truth = _line(shape, 30, 10, 109)
    photos = [score_pixels("a.png", _line(shape, 30, 10, 59), truth)]
    section = pixel_section(photos, ["b.png"], 0.4)
    assert section["pixel_threshold"] == 0.4 and section["photos_without_pixels"] == ["b.png"]
    assert section["pixel_photos"] == [photos[0].row()]
    line = summary_line(_window_metrics() | section)
    assert "\n" not in line
    r = 52 / 100  # precision 1
    assert (
        f"; crack pixels (2-px tolerance) @ 0.400: f1 {2 * r / (1 + r):.4f} precision 1.0000 "
        "recall 0.5200, planking called crack n/a, median length error "
        f"{50 / 99:.4f} on 1 photos (1 mapped without pixels: b.png)"
    ) in line
    absent = pixel_section([], ["a.png", "b.png"], 0.5)
    assert absent == {"pixels_absent": NO_PIXELS}
    assert f"; crack pixels: none scored, {NO_PIXELS}" in summary_line(_window_metrics() | absent)


# --------------------------------------------------------------------------------------------
# The real command on a model without a pixel decoder
# --------------------------------------------------------------------------------------------


@pytest.fixture
def masked_set(tmp_path: Path) -> Path:
    """Two 256x256 rendered photos with their crack masks; one with a planking mask."""
    root = tmp_path / "set"
    for sub in ("images", "masks", "masks_planking"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name, n_cracks in (("a", 1), ("b", 0)):
        image, mask = render_photo(rng, 256, 256, n_cracks)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    plank = np.zeros((256, 256), np.uint8)
    plank[:60, :] = 255
    Image.fromarray(plank).save(root / "masks_planking" / "b.png")
    return root


def test_a_model_without_pixels_has_no_pixel_figures_and_says_why(
    masked_set: Path, chdir_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    import mlflow

    from crackdet.cli.main import main

    (chdir_tmp / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy2(PROJECT / "params.yaml", chdir_tmp / "params.yaml")
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", True, 16, 0.0, 227, CLASSES).eval()
    ckpt = chdir_tmp / "ckpt"
    ckpt.mkdir()
    torch.save(model.state_dict(), ckpt / "model.pt")
    (ckpt / "model.json").write_text(json.dumps(model.spec.to_dict()))
    assert not (ckpt / "decoder.pt").exists()
    args = ["eval-maps", str(masked_set), "--model", str(ckpt), "--scale", "1"]
    assert main([*args, "--out", "m.json"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("eval-maps set: auroc ")
    assert f"; crack pixels: none scored, {NO_PIXELS}" in line
    metrics = json.loads((chdir_tmp / "m.json").read_text())
    assert metrics["pixels_absent"] == NO_PIXELS and "no pixel decoder" in NO_PIXELS
    assert not {k for k in metrics if k.startswith(("pixel_", "length_error"))}
    assert metrics["photos"] == 2 and metrics["windows_crack"] + metrics["windows_clean"] >= 1
    run = mlflow.get_run(metrics["run_id"])
    assert not [k for k in run.data.metrics if k.startswith("pixels/")]
    assert "maps/windows_crack" in run.data.metrics  # the window figures stay as they were
    assert run.data.tags["eval.pixels_absent"] == NO_PIXELS
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "eval-maps")}
    assert logged == {"eval-maps/metrics.json", "eval-maps/windows.csv"}

    assert main([*args, "--pixel-threshold", "1.5"]) == 2
    assert capsys.readouterr().err == (
        "crackdet eval-maps: error: --pixel-threshold must be between 0 and 1 (exclusive); "
        "got 1.5\n"
    )
