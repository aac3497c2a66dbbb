"""Inference engines: ONNX Runtime and OpenVINO agree with PyTorch on features and maps, and
features of different engines never share a cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import crackdet.model.engines
from crackdet.core.errors import CrackdetError
from crackdet.data.images import CLASSES
from crackdet.maps.crackmap import crack_map
from crackdet.model.classifier import build_classifier
from crackdet.model.engines import (
    ENGINES,
    GRAPH_ENGINES,
    OnnxFeatures,
    effective_engine,
    feature_fn,
    openvino_precision,
)
from crackdet.model.features import FeatureCache, cache_key


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


@pytest.fixture(params=["native", "f32"])
def openvino_arithmetic(request, monkeypatch) -> str:
    """Run a test with the precision this CPU gets (bf16 where it has it) and forced to f32,
    so both branches run on a bf16 machine too. Returns the precision in force."""
    if request.param == "f32":
        monkeypatch.setattr(crackdet.model.engines, "openvino_precision", lambda: "f32")
    return crackdet.model.engines.openvino_precision()


def test_openvino_features_match_pytorch_and_do_not_depend_on_the_batch(
    model, tmp_path: Path, openvino_arithmetic: str
) -> None:
    openvino = feature_fn(model, "openvino", tmp_path)
    assert isinstance(openvino, OnnxFeatures) and openvino.engine == "openvino"
    torch.manual_seed(2)
    images = torch.rand(16, 3, 227, 227)
    with torch.inference_mode():
        expected = model.features(images)
    got = openvino(images)
    assert got.shape == expected.shape
    # The session computes in the precision the cache key names.
    compiled = openvino.session.compiled.get_property("INFERENCE_PRECISION_HINT")
    assert str(compiled).lower().startswith(f"<type: '{_ov_type(openvino_arithmetic)}")
    if openvino_arithmetic == "f32":
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    else:  # bfloat16 arithmetic: a few per cent per image, same direction
        relative = (got - expected).norm(dim=1) / expected.norm(dim=1)
        assert relative.max() < 0.1, relative
        assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.995
    # Whatever the precision: the same image gives the same features alone, in any batch,
    # and on every call, so maps and cached features do not depend on the batch size.
    assert torch.equal(openvino(images[:1])[0], got[0])
    assert torch.equal(openvino(images[5:8]), got[5:8])
    assert torch.equal(openvino(images), got)


def _ov_type(precision: str) -> str:
    return "bfloat16" if precision.startswith("bf16") else "float32"


def test_engines_agree_on_a_crack_map(model, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(400, 600, 3), dtype=np.uint8)
    photo[100:110, :, :] = 20  # a dark line so the map is not flat
    by_torch = crack_map(model, photo, overlap=0.5, batch_size=4)
    by_onnx = crack_map(
        model, photo, overlap=0.5, batch_size=4, extract=feature_fn(model, "onnxruntime", tmp_path)
    )
    p_torch = np.array([t.p for t in by_torch.tiles])
    p_onnx = np.array([t.p for t in by_onnx.tiles])
    assert len(p_torch) == len(p_onnx) > 4
    assert np.ptp(p_torch) > 1e-4  # the tiles differ, so agreement means something
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    np.testing.assert_allclose(by_onnx.heatmap, by_torch.heatmap, atol=1e-4)
    by_openvino = crack_map(
        model, photo, overlap=0.5, batch_size=4, extract=feature_fn(model, "openvino", tmp_path)
    )
    p_openvino = np.array([t.p for t in by_openvino.tiles])
    atol = 1e-4 if openvino_precision() == "f32" else 0.02  # bf16: see the test above
    np.testing.assert_allclose(p_openvino, p_torch, atol=atol)


def test_export_is_cached_and_keyed_by_weights(model, tmp_path: Path) -> None:
    feature_fn(model, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    graphs = list(tmp_path.glob("*.onnx"))
    assert len(graphs) == 1
    stamp = graphs[0].stat().st_mtime_ns
    feature_fn(model, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    feature_fn(model, "openvino", tmp_path)(torch.rand(2, 3, 227, 227))  # runs the same file
    assert graphs[0].stat().st_mtime_ns == stamp  # reused, not exported again
    other = build_classifier("efficientnet_lite0", False, 16, 0.0, 227, CLASSES).eval()
    feature_fn(other, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    assert len(list(tmp_path.glob("*.onnx"))) == 2  # other weights, another graph
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temp files


@pytest.mark.parametrize("engine", GRAPH_ENGINES)
def test_damaged_graph_is_named_removed_and_re_exported(model, tmp_path: Path, engine) -> None:
    feature_fn(model, engine, tmp_path)(torch.rand(2, 3, 227, 227))
    (graph,) = tmp_path.glob("*.onnx")
    graph.write_bytes(b"not an onnx graph")
    with pytest.raises(CrackdetError) as info:
        feature_fn(model, engine, tmp_path)(torch.rand(2, 3, 227, 227))
    message = str(info.value)
    assert "\n" not in message and str(graph) in message and "unreadable ONNX graph" in message
    # The engine's own reason, not a source location: ONNX Runtime's "Protobuf parsing
    # failed", OpenVINO's "Model can't be parsed".
    assert ("parsing failed" in message) if engine == "onnxruntime" else ("parsed" in message)
    assert "src/" not in message and ".cpp" not in message
    assert not graph.exists()
    features = feature_fn(model, engine, tmp_path)(torch.rand(2, 3, 227, 227))
    assert features.shape == (2, model.spec.num_features) and graph.exists()


def test_engine_choice_and_feature_cache_keys(model, tmp_path: Path) -> None:
    assert effective_engine(model, "onnxruntime") == "onnxruntime"
    assert effective_engine(model, "openvino") == "openvino"
    assert effective_engine(model, "torch") == "torch"
    assert feature_fn(model, "torch") == model.features
    with pytest.raises(CrackdetError, match="engine 'tensorrt'"):
        effective_engine(model, "tensorrt")
    caches = {e: FeatureCache(tmp_path, cache_key(model, None, 0, e)) for e in ENGINES}
    assert len({cache.folder for cache in caches.values()}) == 3  # engines' features never mix
    assert caches["onnxruntime"].key["engine"].startswith("onnxruntime-")


def test_openvino_cache_key_names_its_arithmetic(model, tmp_path: Path, monkeypatch) -> None:
    """bf16 features differ from f32 ones, and between instruction sets (AMX, AVX512-BF16 and
    AVX2 kernels round differently): each gets its own cache folder."""
    folders = {}
    for precision in ("f32", "bf16-amx", "bf16-avx512"):
        monkeypatch.setattr(crackdet.model.engines, "openvino_precision", lambda p=precision: p)
        key = cache_key(model, None, 0, "openvino")
        assert key["engine"].startswith("openvino-") and key["engine"].endswith(f"-{precision}")
        folders[precision] = FeatureCache(tmp_path, key).folder
    assert len(set(folders.values())) == 3
    monkeypatch.undo()
    native = openvino_precision()  # what this CPU gets, from its capabilities and flags
    assert native in {"f32", "bf16-amx", "bf16-avx512", "bf16-avx2", "bf16-cpu"}


def _save_checkpoint(model, folder: Path) -> tuple[Path, Path]:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(model.spec.to_dict()))
    return folder / "model.pt", folder / "model.json"


@pytest.mark.parametrize("engine", GRAPH_ENGINES)
def test_checkpoint_loads_around_its_exported_graph(model, tmp_path: Path, engine) -> None:
    from crackdet.model.classifier import OnnxClassifier, load_checkpoint
    from crackdet.model.engines import ensure_graph

    checkpoint, spec = _save_checkpoint(model, tmp_path / "train")
    graphs = tmp_path / "onnx"
    # No graph yet: the PyTorch backbone is built (and exports on demand).
    assert not isinstance(load_checkpoint(checkpoint, spec, engine, graphs), OnnxClassifier)
    ensure_graph(model, graphs)
    light = load_checkpoint(checkpoint, spec, engine, graphs)
    assert isinstance(light, OnnxClassifier) and light.graph_engine == engine
    # The model runs its graph with the engine it was loaded for, whatever is asked later.
    assert effective_engine(light, "torch") == engine
    assert feature_fn(light, "onnxruntime") == light.features
    images = torch.rand(5, 3, 227, 227)
    atol = 1e-4 if engine == "onnxruntime" or openvino_precision() == "f32" else 0.02
    with torch.inference_mode():
        assert torch.allclose(light.features(images), feature_fn(model, engine, graphs)(images))
        assert torch.allclose(light(images), model(images), atol=atol)
    # The torch engine never takes the graph.
    assert not isinstance(load_checkpoint(checkpoint, spec, "torch", graphs), OnnxClassifier)
    # A damaged graph is not fatal here: removed, and the PyTorch backbone is built instead.
    (graph,) = graphs.glob("*.onnx")
    graph.write_bytes(b"damaged")
    fallback = load_checkpoint(checkpoint, spec, engine, graphs)
    assert not isinstance(fallback, OnnxClassifier) and not graph.exists()
    with torch.inference_mode():
        assert torch.allclose(fallback(images), model(images), atol=1e-5)


@pytest.mark.parametrize("engine", GRAPH_ENGINES)
def test_light_checkpoint_load_imports_neither_timm_nor_torchvision(
    model, tmp_path: Path, engine: str
) -> None:
    """What keeps evaluate and predict_samples quick to start: with the graph exported, loading
    a checkpoint and mapping features never imports timm or torchvision (~2 s per process)."""
    import subprocess
    import sys

    from crackdet.model.engines import ensure_graph

    checkpoint, spec = _save_checkpoint(model, tmp_path / "train")
    ensure_graph(model, tmp_path / "onnx")
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from crackdet.model.classifier import load_checkpoint\n"
        "import crackdet.stages.evaluate, crackdet.stages.predict_samples\n"
        f"m = load_checkpoint(Path({str(checkpoint)!r}), Path({str(spec)!r}), {engine!r},"
        f" Path({str(tmp_path / 'onnx')!r}))\n"
        "m(torch.rand(2, 3, 227, 227))\n"
        "print(type(m).__name__, m.graph_engine,"
        " sorted(n for n in ('timm', 'torchvision') if n in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert result.stdout.strip() == f"OnnxClassifier {engine} []"


def test_a_backbone_onnx_cannot_express_fails_in_one_line_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    from torch import nn

    from crackdet.model.classifier import CrackClassifier, ModelSpec

    class SingularValues(nn.Module):  # aten::linalg_svdvals has no ONNX (opset 17) form
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svdvals(images.mean(1))[:, :4]

    spec = ModelSpec("efficientnet_lite0", 4, 8, 0.0, (0.5,) * 3, (0.5,) * 3, 227, CLASSES, "test")
    model = CrackClassifier(SingularValues(), spec).eval()
    with pytest.raises(CrackdetError) as info:
        feature_fn(model, "onnxruntime", tmp_path)(torch.rand(2, 3, 227, 227))
    message = str(info.value)
    assert "\n" not in message and "ONNX export failed" in message and "engine" in message
    assert "linalg_svdvals" in message
    assert not list(tmp_path.iterdir())  # no graph, no temp file
    assert feature_fn(model, "torch")(torch.rand(2, 3, 227, 227)).shape == (2, 4)  # the way out
