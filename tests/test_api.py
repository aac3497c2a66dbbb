"""The Python API and ``crackdet predict``'s options: the same defaults and the same maps as
the command, overrides checked by the schema's rules, packaged defaults outside a repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crackdet.cli.main import main
from crackdet.core.overrides import PACKAGED_PARAMS, predict_settings
from crackdet.core.params import load_params
from crackdet.data.images import CLASSES
from crackdet.model.classifier import build_classifier

PROJECT = Path(__file__).resolve().parents[1]


def test_packaged_defaults_are_the_repository_predict_section() -> None:
    assert load_params(PACKAGED_PARAMS).predict == load_params(PROJECT / "params.yaml").predict


def test_import_crackdet_loads_no_torch() -> None:
    code = "import sys, crackdet; print('torch' in sys.modules, callable(crackdet.map_photo))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]  # map_photo: loaded on first use


def test_overrides_are_checked_by_the_schema_rules() -> None:
    params = load_params(PACKAGED_PARAMS)
    settings = predict_settings(params, scale=2, overlap=0.25, threshold=0.3)
    assert (settings.scale, settings.overlap, settings.threshold) == (2.0, 0.25, 0.3)
    assert settings.use_model_threshold is False  # a threshold given replaces the model's
    assert predict_settings(params) == params.predict
    with pytest.raises(Exception, match=r"^--scale must be <= 8.0; got 9.0$"):
        predict_settings(params, scale=9.0)
    with pytest.raises(Exception, match=r"^--threshold must be <= 1.0; got 1.5$"):
        predict_settings(params, threshold=1.5)


def test_api_and_cli_give_the_same_maps_outside_a_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import crackdet

    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(model.state_dict(), ckpt / "model.pt")
    (ckpt / "model.json").write_text(json.dumps(model.spec.to_dict()))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "wall.png")
    monkeypatch.chdir(tmp_path)  # no params.yaml, no dvc.yaml: the packaged defaults

    args = ["predict", "wall.png", "--model", "ckpt", "--scale", "1", "--threshold", "0.4"]
    assert main([*args, "--out", "maps"]) == 0
    assert "1 of 1 photos mapped" in capsys.readouterr().out
    result = crackdet.map_photo("wall.png", crackdet.load_model("ckpt"), scale=1, threshold=0.4)
    heatmap = np.load(tmp_path / "maps" / "wall_heatmap.npy")
    assert heatmap.tobytes() == result.heatmap.astype(np.float16).tobytes()
    mask = np.asarray(Image.open(tmp_path / "maps" / "wall_mask.png")) == 255
    assert np.array_equal(mask, result.mask)
    record = json.loads((tmp_path / "maps" / "wall.json").read_text())
    assert record["crack_area_fraction"] == result.crack_area_fraction
    assert record["threshold"] == result.threshold == 0.4
    assert record["scales"] == list(result.scales) == [1.0]
    assert result.engine == load_params(PACKAGED_PARAMS).predict.engine
    loaded = crackdet.load_model("ckpt")
    from_array = crackdet.map_photo(pixels, loaded, scale=1, threshold=0.4)
    assert np.array_equal(from_array.heatmap, result.heatmap)
    # A loaded model prepares its mapper once per settings: the second call maps with the
    # first one's, and gives the same map.
    settings = predict_settings(load_params(PACKAGED_PARAMS), scale=1, threshold=0.4)
    assert list(loaded._mappers) == [settings]  # map_photo prepared it, and kept it
    first = loaded.mapper(settings)
    again = crackdet.map_photo(pixels, loaded, scale=1, threshold=0.4)
    assert loaded.mapper(settings) is first and np.array_equal(again.heatmap, result.heatmap)
    assert loaded.mapper(predict_settings(load_params(PACKAGED_PARAMS), scale=2)) is not first

    assert main([*args[:-2], "--scale", "9", "--out", "other"]) == 2
    assert capsys.readouterr().err == "crackdet predict: error: --scale must be <= 8.0; got 9.0\n"
    assert not (tmp_path / "other").exists()
