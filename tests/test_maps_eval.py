"""Crack maps scored against pixel masks: window labels, metrics, folder/zip input, errors, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crackdet.core.errors import CrackdetError
from crackdet.core.params import parse_params
from crackdet.data.images import CLASSES
from crackdet.data.sources.synthetic import render_photo
from crackdet.data.windows import window_starts
from crackdet.maps.crackmap import Tile
from crackdet.maps.scoring import (
    CLEAN,
    CRACK,
    IGNORED,
    evaluate_maps,
    planking_windows,
    score_windows,
    window_labels,
)
from crackdet.model.classifier import build_classifier
from tests.helpers import PROJECT, default_params_tree

SIZE = 454  # 3 x 3 windows of 227 px at 50 % overlap
PLANK_BOX = (slice(0, 120), slice(300, SIZE))  # planking pixels in photo "b" (y, x)


def _tile(x: int, y: int, size: int = 100) -> Tile:
    return Tile(x, y, size, 0.5)


def test_window_labels_crack_clean_ignored() -> None:
    mask = np.zeros((300, 300), dtype=bool)
    mask[10:20, 10:30] = True  # 200 px, all inside the first tile
    mask[150:155, 150:160] = True  # 50 px: below the crack minimum
    tiles = [_tile(0, 0), _tile(120, 120), _tile(200, 0), _tile(0, 10, 100)]
    labels = window_labels(mask, tiles, min_pixels=100)
    # the last tile holds rows 10..19 of the crack: 10 rows x 20 columns = 200 px
    assert labels.tolist() == [CRACK, IGNORED, CLEAN, CRACK]
    assert window_labels(mask, tiles, min_pixels=201).tolist() == [
        IGNORED,
        IGNORED,
        CLEAN,
        IGNORED,
    ]


def test_window_labels_clip_tiles_overhanging_the_photo() -> None:
    mask = np.zeros((120, 150), dtype=bool)
    mask[100:120, 140:150] = True  # 200 px in the bottom-right corner
    # A rescaled map can round a tile a pixel past the border; a padded one far past it.
    labels = window_labels(mask, [_tile(51, 21, 100), _tile(0, 0, 227), _tile(0, 0, 50)])
    assert labels.tolist() == [CRACK, CRACK, CLEAN]


def test_planking_windows_are_clean_windows_with_planking() -> None:
    crack = np.zeros((200, 200), dtype=bool)
    crack[0:20, 0:10] = True  # 200 crack px in tile 0
    planking = np.zeros((200, 200), dtype=bool)
    planking[:, :] = True
    planking[100:200, 100:200] = False
    tiles = [_tile(0, 0), _tile(100, 0), _tile(100, 100), _tile(60, 60)]
    labels = window_labels(crack, tiles)
    assert labels.tolist() == [CRACK, CLEAN, CLEAN, CLEAN]
    # tile 0 has planking but holds a crack; tile 2 has none; tile 3 has 100^2 - 60^2 px of it
    assert planking_windows(labels, planking, tiles).tolist() == [False, True, False, True]
    assert not planking_windows(labels, None, tiles).any()


def test_score_windows_against_hand_counts() -> None:
    labels = np.array([CRACK, CRACK, CRACK, CLEAN, CLEAN, CLEAN, CLEAN, IGNORED])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05, 0.99])
    planking = np.array([False, False, False, True, True, False, False, False])
    metrics = score_windows(labels, planking, scores, threshold=0.5)
    # crack/clean pairs ranked correctly: 0.9 beats 4, 0.6 beats 3, 0.2 beats 2 -> 9 of 12
    assert metrics["auroc"] == pytest.approx(9 / 12)
    assert metrics["precision"] == pytest.approx(2 / 3)  # flagged 0.9, 0.6, 0.7 (IGNORED 0.99 out)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["planking_fpr"] == pytest.approx(1 / 2)
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (2, 1, 1, 3)
    counts = [metrics[f"windows_{k}"] for k in ("crack", "clean", "ignored", "planking")]
    assert counts == [3, 4, 1, 2]


def test_score_windows_undefined_figures_are_none() -> None:
    metrics = score_windows(np.array([CLEAN, CLEAN]), np.zeros(2, bool), np.array([0.1, 0.2]), 0.5)
    assert metrics["auroc"] is None and metrics["precision"] is None
    assert metrics["recall"] is None and metrics["planking_fpr"] is None


# --------------------------------------------------------------------------------------------
# A fabricated data set mapped with a real model
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # ImageNet backbone with a random head: enough to check that scores are passed through.
    return build_classifier("efficientnet_lite0", True, 16, 0.0, 227, CLASSES).eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 454x454 photos: "a" with cracks, "b" without cracks but with a planking mask."""
    root = tmp_path_factory.mktemp("maps") / "uav-like"
    for sub in ("images", "masks", "masks_planking"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name, n_cracks in (("a", 2), ("b", 0)):
        image, mask = render_photo(rng, SIZE, SIZE, n_cracks)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    plank = np.zeros((SIZE, SIZE), np.uint8)
    plank[PLANK_BOX] = 255
    Image.fromarray(plank).save(root / "masks_planking" / "b.png")
    return root


def _independent_windows(model, root: Path) -> tuple[list[int], list[float], list[bool]]:
    """Labels, scores and planking flags recomputed by brute force: window grid from the
    overlap, pixel sums per window, one forward pass per crop."""
    labels, scores, planking = [], [], []
    for name in ("a", "b"):
        photo = np.asarray(Image.open(root / "images" / f"{name}.png"))
        crack = np.asarray(Image.open(root / "masks" / f"{name}.png")) == 255
        plank = np.zeros_like(crack)
        if name == "b":
            plank[PLANK_BOX] = True
        for y in window_starts(SIZE, 227, 0.5):
            for x in window_starts(SIZE, 227, 0.5):
                n = int(crack[y : y + 227, x : x + 227].sum())
                label = CRACK if n >= 100 else CLEAN if n == 0 else IGNORED
                labels.append(label)
                planking.append(label == CLEAN and plank[y : y + 227, x : x + 227].sum() >= 100)
                crop = torch.from_numpy(photo[y : y + 227, x : x + 227].copy()).permute(2, 0, 1)
                with torch.inference_mode():
                    logits = model(crop[None].float() / 255.0)
                scores.append(float(torch.softmax(logits, 1)[0, 1]))
    return labels, scores, planking


def _pair_auroc(labels: list[int], scores: list[float]) -> float:
    pos = [s for lab, s in zip(labels, scores, strict=True) if lab == CRACK]
    neg = [s for lab, s in zip(labels, scores, strict=True) if lab == CLEAN]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _maps(model, data: Path, threshold: float = 0.5, photos: str = "*"):
    """evaluate_maps at the settings every test here uses (scale 1, overlap 0.5)."""
    shipped = parse_params(default_params_tree()).predict
    settings = dataclasses.replace(
        shipped,
        scale=1.0,
        auto_windows=(6.75,),
        overlap=0.5,
        batch_size=8,
        engine="torch",
        use_model_threshold=False,
        threshold=threshold,
        alpha=0.45,
        max_pixels=10**7,
    )
    return evaluate_maps(data, model, settings, photos=photos)


def _run(model, data: Path, threshold: float = 0.5) -> dict:
    return _maps(model, data, threshold).metrics


def test_evaluate_maps_matches_independent_scoring(model, dataset: Path) -> None:
    labels, scores, planking = _independent_windows(model, dataset)
    assert CRACK in labels and CLEAN in labels, "fabricated set must hold both window kinds"
    assert any(planking)
    # A random head's scores sit anywhere: split them mid-range, in the widest gap so batched
    # and one-by-one forward passes (equal to ~1e-6) fall on the same side.
    ranked = sorted(scores)
    k = max(range(4, len(ranked) - 5), key=lambda i: ranked[i + 1] - ranked[i])
    threshold = (ranked[k] + ranked[k + 1]) / 2
    result = _maps(model, dataset, threshold)
    metrics = result.metrics
    assert metrics["photos"] == 2 and metrics["photos_with_planking_mask"] == 1
    assert len(result.windows) == 18
    assert [w.label for w in result.windows] == [
        {CRACK: "crack", CLEAN: "clean", IGNORED: "ignored"}[lab] for lab in labels
    ]
    assert [w.planking for w in result.windows] == planking
    assert metrics["windows_crack"] == labels.count(CRACK)
    assert metrics["windows_clean"] == labels.count(CLEAN)
    assert metrics["windows_ignored"] == labels.count(IGNORED)
    assert metrics["windows_planking"] == sum(planking)
    assert [w.p for w in result.windows] == pytest.approx(scores, abs=1e-5)
    assert metrics["auroc"] == pytest.approx(_pair_auroc(labels, scores), abs=1e-9)
    truth = np.array(labels)
    flagged = np.array(scores) >= threshold
    tp = int((flagged & (truth == CRACK)).sum())
    assert metrics["recall"] == pytest.approx(tp / labels.count(CRACK))
    if metrics["precision"] is not None:
        assert metrics["precision"] == pytest.approx(tp / int((flagged & (truth != IGNORED)).sum()))
    plank_flags = flagged[np.array(planking)]
    assert metrics["planking_fpr"] == pytest.approx(plank_flags.mean())
    from crackdet.model.calibrate import f1_optimal_threshold

    scored = truth != IGNORED
    expected = f1_optimal_threshold(np.array(scores)[scored], (truth[scored] == CRACK).astype(int))
    assert metrics["f1_threshold"] == pytest.approx(expected, abs=1e-5)


def _zip(folder: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return dest


def test_zip_gives_the_folder_result(model, dataset: Path, tmp_path: Path) -> None:
    folder = _run(model, dataset)
    flat = _run(model, _zip(dataset, tmp_path / "flat.zip"))
    wrapped = _run(model, _zip(dataset, tmp_path / "wrapped.zip", prefix="uav-like/"))
    drop = ("seconds", "map_seconds")
    for other in (flat, wrapped):
        assert {k: v for k, v in other.items() if k not in drop} == {
            k: v for k, v in folder.items() if k not in drop
        }


def _copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def test_masks_in_other_encodings_score_as_0_255_masks(model, dataset: Path, tmp_path) -> None:
    """A 0/1 crack mask and a red-on-black planking mask are the truth they show (they were
    read as "no crack" and "no planking": scored against the wrong truth, silently)."""
    data = _copy(dataset, tmp_path)
    crack = np.asarray(Image.open(data / "masks" / "a.png")) > 0
    Image.fromarray(crack.astype(np.uint8)).save(data / "masks" / "a.png")
    plank = np.asarray(Image.open(data / "masks_planking" / "b.png")) > 0
    red = np.stack([plank * 180, plank * 0, plank * 0], axis=2).astype(np.uint8)
    Image.fromarray(red).save(data / "masks_planking" / "b.png")
    expected, got = _maps(model, dataset), _maps(model, data)
    assert expected.metrics["windows_crack"] > 0 and expected.metrics["windows_planking"] > 0
    assert [(w.label, w.planking) for w in got.windows] == [
        (w.label, w.planking) for w in expected.windows
    ]


def test_missing_mask_names_the_photo(model, dataset: Path, tmp_path: Path) -> None:
    data = _copy(dataset, tmp_path)
    (data / "masks" / "b.png").unlink()
    with pytest.raises(CrackdetError) as info:
        _run(model, data)
    message = str(info.value)
    assert "b.png" in message and "mask" in message and "\n" not in message


def test_mask_size_mismatch_names_the_mask(model, dataset: Path, tmp_path: Path) -> None:
    data = _copy(dataset, tmp_path)
    Image.new("L", (SIZE, SIZE - 1)).save(data / "masks_planking" / "b.png")
    with pytest.raises(CrackdetError) as info:
        _run(model, data)
    message = str(info.value)
    assert str(data / "masks_planking" / "b.png") in message and "\n" not in message
    assert f"{SIZE}x{SIZE - 1}" in message


@pytest.mark.parametrize("case", ["missing", "no_images", "bad_mask"])
def test_other_errors_are_one_line(model, dataset: Path, tmp_path: Path, case: str) -> None:
    if case == "missing":
        data = tmp_path / "nope.zip"
    elif case == "no_images":
        data = tmp_path / "empty"
        data.mkdir()
    else:
        data = _copy(dataset, tmp_path)
        (data / "masks" / "a.png").write_bytes(b"not a png")
    with pytest.raises(CrackdetError) as info:
        _run(model, data)
    assert str(data if case != "bad_mask" else data / "masks" / "a.png") in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_logs_an_mlflow_run(
    model, dataset: Path, chdir_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    import mlflow

    from crackdet.cli.main import main

    (chdir_tmp / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy2(PROJECT / "params.yaml", chdir_tmp / "params.yaml")
    ckpt = chdir_tmp / "ckpt"
    ckpt.mkdir()
    torch.save(model.state_dict(), ckpt / "model.pt")
    spec = dataclasses.replace(model.spec, threshold=0.25)  # the operating threshold from val
    (ckpt / "model.json").write_text(json.dumps(spec.to_dict()))
    archive = _zip(dataset, chdir_tmp / "maps.zip")
    code = main(["eval-maps", str(archive), "--model", str(ckpt), "--out", "m.json"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("eval-maps maps.zip: auroc ") and "\n" not in line
    metrics = json.loads((chdir_tmp / "m.json").read_text())
    assert metrics["threshold"] == 0.25 and metrics["photos"] == 2
    assert metrics["scale"] == "auto" and metrics["overlap"] == 0.5  # params.yaml predict.*
    run = mlflow.get_run(metrics["run_id"])
    assert run.data.tags["crackdet.stage"] == "eval-maps"
    assert mlflow.get_experiment(run.info.experiment_id).name == "crackdet-evaluations"
    # Started before the maps were made: the run spans the seconds the scoring measured.
    assert run.info.end_time - run.info.start_time >= metrics["seconds"] * 1000
    assert run.data.tags["eval.data"] == "maps.zip"
    assert run.data.tags["eval.model"] == str(ckpt)
    assert run.data.params["threshold"] == "0.25"
    assert run.data.metrics["maps/auroc"] == pytest.approx(metrics["auroc"])
    assert run.data.metrics["maps/recall"] == pytest.approx(metrics["recall"])
    assert run.data.metrics["maps/planking_fpr"] == pytest.approx(metrics["planking_fpr"])
    assert ("maps/precision" in run.data.metrics) == (metrics["precision"] is not None)

    assert main(["eval-maps", str(archive), "--model", str(ckpt), "--overlap", "0.95"]) == 2
    assert capsys.readouterr().err == (
        "crackdet eval-maps: error: --overlap must be <= 0.9; got 0.95\n"
    )


def test_eval_honours_fetch_on_bad_image_as_its_hint_says(
    model, chdir_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    """``crackdet eval`` hinted "set fetch.on_bad_image: skip" and then ignored the setting."""
    import mlflow
    import yaml

    from crackdet.cli.main import main
    from crackdet.data.sources.synthetic import write_patch_set

    (chdir_tmp / "dvc.yaml").write_text("stages: {}\n")
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    (chdir_tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ckpt = chdir_tmp / "ckpt"
    ckpt.mkdir()
    torch.save(model.state_dict(), ckpt / "model.pt")
    (ckpt / "model.json").write_text(json.dumps(model.spec.to_dict()))
    write_patch_set(chdir_tmp / "set", 3, seed=4)
    (chdir_tmp / "set" / "Positive" / "broken.jpg").write_bytes(b"<html>404</html>")
    command = ["eval", "set", "--model", str(ckpt), "--out", "m.json"]
    assert main(command) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own log lines
    assert error == (
        "crackdet eval: error: set: Positive/broken.jpg: not a readable image (not in any image "
        "format Pillow knows); remove or replace it, or set fetch.on_bad_image: skip"
    )
    params["fetch"]["on_bad_image"] = "skip"
    (chdir_tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(command) == 0
    out = capsys.readouterr().out
    assert (
        "eval: skipped 1 unreadable image of set (fetch.on_bad_image: skip): Positive/broken.jpg"
    ) in out.splitlines()
    metrics = json.loads((chdir_tmp / "m.json").read_text())
    assert metrics["n"] == 6 and metrics["skipped"] == ["Positive/broken.jpg"]
    run = mlflow.search_runs(
        experiment_names=["crackdet-evaluations"], output_format="list", max_results=1
    )[0]
    assert run.data.tags["data.skipped"] == "1"


def test_photos_pattern_scores_only_matching_photos(model, dataset: Path) -> None:
    """A held-out part of a set is scored alone (``--photos 'val_*'``), window for window as in
    the whole-set run, and a pattern matching nothing is a one-line error."""
    whole = _maps(model, dataset)
    only_b = _maps(model, dataset, photos="b.*")
    assert only_b.metrics["photos"] == 1 and only_b.metrics["photos_pattern"] == "b.*"
    assert {w.photo for w in only_b.windows} == {"b.png"}
    assert [w.p for w in only_b.windows] == pytest.approx(
        [w.p for w in whole.windows if w.photo == "b.png"], abs=1e-6
    )
    with pytest.raises(CrackdetError, match=r"--photos 'val_\*': matches none of the photos"):
        _maps(model, dataset, photos="val_*")


def test_auto_scales_map_every_photo_at_the_same_share_of_its_frame() -> None:
    from crackdet.maps.crackmap import SCALE_BOUNDS, auto_scales

    windows = (6.75, 9.0)
    for height, width in ((512, 512), (3024, 4032), (1080, 1920)):
        scales = auto_scales(height, width, windows, 227)
        assert len(scales) == 2
        for scale, divisor in zip(scales, windows, strict=True):
            # A 227-px window at this scale covers the short side / divisor, to a pixel.
            assert abs(227 / scale - min(height, width) / divisor) < 1.0
    assert auto_scales(512, 512, windows, 227) == (2.993, 3.99)
    assert auto_scales(20, 30, windows, 227) == (SCALE_BOUNDS[1],)  # clamped, once


def test_evaluation_grid_scores_windows_by_the_mean_of_the_map() -> None:
    from crackdet.maps.scoring import evaluation_grid

    heatmap = np.zeros((135, 200), np.float32)
    heatmap[:, 100:] = 1.0  # right half "crack"
    ood = np.zeros_like(heatmap)
    ood[:40, :40] = 1.0  # one unfamiliar corner
    tiles = evaluation_grid(heatmap, ood)
    side = round(135 / 6.75)  # 20 px
    assert {t.size for t in tiles} == {side}
    for t in tiles:
        expected = heatmap[t.y : t.y + side, t.x : t.x + side].mean()
        assert abs(t.p - expected) < 1e-5
        assert t.ood == bool(ood[t.y : t.y + side, t.x : t.x + side].mean() >= 0.5)
    # Edge-flush, 50 % overlap: every pixel is covered, the last window ends at the border.
    assert max(t.x for t in tiles) + side == 200 and max(t.y for t in tiles) + side == 135
    assert any(t.ood for t in tiles) and not all(t.ood for t in tiles)
