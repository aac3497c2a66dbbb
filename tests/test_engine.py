"""Inference engines: ONNX Runtime and PyTorch agree on features, maps and cached features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crackdet.data import CLASSES
from crackdet.engine import OnnxFeatures, effective_engine, feature_fn
from crackdet.errors import CrackdetError
from crackdet.features import FeatureCache, cache_key
from crackdet.models import build_classifier
from crackdet.predict import crack_map


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier("efficientnet_lite0", True, 16, 0.0, 227, CLASSES).eval()


def test_engines_agree_on_features_for_any_batch_size(model, tmp_path: Path) -> None:
    onnx = feature_fn(model, "onnxruntime", tmp_path)
    assert isinstance(onnx, OnnxFeatures)
    torch.manual_seed(1)
    for batch in (1, 3, 16):  # the exported graph has a dynamic batch axis
        images = torch.rand(batch, 3, 227, 227)
        with torch.inference_mode():
            expected = model.features(images)
        got = onnx(images)
        assert got.shape == expected.shape == (batch, model.spec.num_features)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
        # Not trivially equal: different images give different features.
        assert (expected[0] - model.features(torch.rand(1, 3, 227, 227))[0]).abs().max() > 1e-3


def test_engines_agree_on_a_crack_map(model, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(400, 600, 3), dtype=np.uint8)
    photo[100:110, :, :] = 20  # a dark line so the map is not flat
    by_torch = crack_map(model, photo, overlap=0.5, batch_size=4)
    by_onnx = crack_map(
        model, photo, overlap=0.5, batch_size=4, extract=feature_fn(model, "onnxruntime", tmp_path)
    )
    p_torch = np.array([t["p"] for t in by_torch.tiles])
    p_onnx = np.array([t["p"] for t in by_onnx.tiles])
    assert len(p_torch) == len(p_onnx) > 4
    assert np.ptp(p_torch) > 1e-4  # the tiles differ, so agreement means something
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    np.testing.assert_allclose(by_onnx.heatmap, by_torch.heatmap, atol=1e-4)


def test_export_is_cached_and_keyed_by_weights(model, tmp_path: Path) -> None:
    feature_fn(model, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    graphs = list(tmp_path.glob("*.onnx"))
    assert len(graphs) == 1
    stamp = graphs[0].stat().st_mtime_ns
    feature_fn(model, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    assert graphs[0].stat().st_mtime_ns == stamp  # reused, not exported again
    other = build_classifier("efficientnet_lite0", False, 16, 0.0, 227, CLASSES).eval()
    feature_fn(other, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    assert len(list(tmp_path.glob("*.onnx"))) == 2  # other weights, another graph
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temp files


def test_damaged_graph_is_named_removed_and_re_exported(model, tmp_path: Path) -> None:
    feature_fn(model, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    (graph,) = tmp_path.glob("*.onnx")
    graph.write_bytes(b"not an onnx graph")
    with pytest.raises(CrackdetError) as info:
        feature_fn(model, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    message = str(info.value)
    assert "\n" not in message and str(graph) in message and "unreadable ONNX graph" in message
    assert not graph.exists()
    features = feature_fn(model, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    assert features.shape == (2, model.spec.num_features) and graph.exists()


def test_engine_choice_and_feature_cache_keys(model, tmp_path: Path) -> None:
    assert effective_engine(model, "onnxruntime") == "onnxruntime"
    assert effective_engine(model, "torch") == "torch"
    assert feature_fn(model, "torch") == model.features
    with pytest.raises(CrackdetError, match="engine 'tensorrt'"):
        effective_engine(model, "tensorrt")
    by_torch = FeatureCache(tmp_path, cache_key(model, None, 0, "torch"))
    by_onnx = FeatureCache(tmp_path, cache_key(model, None, 0, "onnxruntime"))
    assert by_torch.folder != by_onnx.folder  # features of the two engines never mix
    assert by_onnx.key["engine"].startswith("onnxruntime-")
