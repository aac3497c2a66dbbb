"""Inference engines for the frozen backbone: PyTorch, ONNX Runtime or OpenVINO on CPU.

With a frozen backbone every image costs one backbone forward pass, in training (feature cache),
evaluation and crack maps alike. ONNX Runtime runs EfficientNet-Lite0 faster than PyTorch eager
on a CPU, and OpenVINO faster again, most where the CPU computes bfloat16 natively (AVX512-BF16,
AMX, AVX2-VNNI-2); docs/results.md has the figures, bench/speed/predict_speed.py prints all
three. The graph holds only normalisation + backbone (what ``CrackClassifier.features``
computes); the head, temperature and OOD score stay in PyTorch, so every engine shares every line
after the features. ONNX Runtime agrees with PyTorch to ~1e-5 on the features, so it is the
default everywhere (the figures of training and evaluation then hold for the registered PyTorch
model); OpenVINO's bfloat16 features differ by a few per cent (tests/test_engine.py bounds both),
close enough for crack maps (``predict.engine: openvino``). The feature cache keys on the engine,
with OpenVINO's precision and instruction set, so features of two engines never mix.

The exported ONNX graph is cached in ``.cache/onnx/`` (beside the feature cache) under a digest of
the backbone's weights, the preprocessing and the torch version, so an export happens
once per model; ONNX Runtime and OpenVINO both run that one file.

Each engine is one entry of :data:`ENGINES` (:func:`register_engine`): its label for cache keys,
and for an engine that runs the exported graph, the session class that opens it. The schema's
names (``crackdet.core.params.ENGINES``) must match; ``tests/test_registries.py`` names the side
that lacks one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import write_with

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # float RGB [0, 1] NCHW → (N, F) features

# How graphs are exported; part of the graph digest, so a change here never reuses old graphs.
EXPORT_SETTINGS: dict[str, Any] = {
    "dynamo": False,  # the TorchScript exporter: ~1 s here, no onnxscript round trip
    "input_names": ["images"],
    "output_names": ["features"],
    "dynamic_axes": {"images": {0: "batch"}, "features": {0: "batch"}},
    "opset_version": 17,
}


class _Features(nn.Module):
    """What gets exported: ``model.features`` (normalisation inside) as a standalone graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)


class GraphSession(typing.Protocol):
    """An exported features graph opened by an engine: float RGB [0, 1] NCHW in, (N, F) out."""

    engine: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Engine:
    name: str
    label: Callable[[], str]  # the engine, its version and arithmetic: cache keys and run tags
    session: Callable[[Path], GraphSession] | None  # opens the exported graph; None: PyTorch


ENGINES: dict[str, Engine] = {}


def register_engine(engine: Engine) -> Engine:
    if engine.name in ENGINES:
        raise ValueError(f"engine {engine.name} registered twice")
    ENGINES[engine.name] = engine
    return engine


def _engine(name: str) -> Engine:
    if name not in ENGINES:
        raise CrackdetError(f"engine {name!r}: expected one of {', '.join(ENGINES)}")
    return ENGINES[name]


def engine_label(name: str) -> str:
    """The engine, its version and (OpenVINO) its arithmetic, for cache keys and run tags."""
    return _engine(name).label()


def _onnxruntime_label() -> str:
    import onnxruntime  # each engine's package loads only when that engine is named

    return f"onnxruntime-{onnxruntime.__version__}"


def _openvino_label() -> str:
    import openvino  # as above (~1 s)

    return f"openvino-{openvino.__version__.split('-')[0]}-{openvino_precision()}"


@functools.cache
def openvino_precision() -> str:
    """The arithmetic crackdet asks OpenVINO for, which decides the features' exact values:
    ``bf16-<isa>`` where the CPU computes bfloat16 natively (the instruction set is part of it:
    AMX, AVX512-BF16 and AVX2-VNNI-2 kernels round differently), else ``f32``."""
    import openvino  # only where OpenVINO is the engine

    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        return "f32"
    flags = _cpu_flags()
    isa = next((name for flag, name in _BF16_ISAS if flag in flags), "cpu")
    return f"bf16-{isa}"


# The kernel OpenVINO picks, most capable first (Linux /proc/cpuinfo flag names).
_BF16_ISAS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512"), ("avx_ne_convert", "avx2"))


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the label says bf16-cpu
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _openvino_hint(precision: str) -> str:
    return precision.partition("-")[0]  # "bf16-avx512" -> "bf16"


def _openvino_reason(exc: BaseException) -> str:
    """OpenVINO's messages end with the reason; the first lines are source locations."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def graph_digest(state: Mapping[str, torch.Tensor], spec: Any) -> str:
    """Digest of everything the exported graph depends on: the backbone and normaliser tensors
    (in state-dict order), the input size and the exporter's version. ``state`` is a model's
    state dict or a checkpoint's: both name and order their tensors alike."""
    digest = hashlib.sha256()
    settings = [spec.backbone, spec.patch_size, spec.mean, spec.std, torch.__version__]
    digest.update(json.dumps([*settings, EXPORT_SETTINGS], sort_keys=True).encode())
    for name, tensor in state.items():
        if name.startswith("head.") or name == "temperature":
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def graph_file(cache: Path, state: Mapping[str, torch.Tensor], spec: Any) -> Path:
    """Where the graph of a backbone with these tensors lives in ``cache``."""
    return cache / f"{graph_digest(state, spec)}.onnx"


def ensure_graph(model: nn.Module, cache: Path) -> Path:
    """The model's exported graph in ``cache``, exported now if it is not there yet."""
    path = graph_file(cache, model.state_dict(), model.spec)  # type: ignore[attr-defined]
    if not path.is_file():
        export_onnx(model, path)
    return path


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Export ``model.features`` with a dynamic batch axis (atomic write: temp file, rename)."""
    size = model.spec.patch_size  # type: ignore[attr-defined]
    # Drawn from its own generator, and the export runs under fork_rng: exporting (or finding the
    # graph cached) must not shift the global RNG that head init and shuffling draw from.
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    write_onnx(
        _Features(model).eval(),
        example,
        path,
        EXPORT_SETTINGS,
        model.spec.backbone,  # type: ignore[attr-defined]
        "set train.engine, evaluate.engine and predict.engine to torch",
    )
    return path


def write_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    settings: dict[str, Any],
    what: str,
    hint: str,
) -> None:
    """``torch.onnx.export`` of ``module`` into ``path`` (atomic write: temp file, rename),
    leaving the global RNG and every submodule's train/eval mode as they were; an exporter
    error is one line naming ``what`` and what to do (``hint``)."""

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(module, (example,), str(tmp), **settings)

    # The exporter flips train/eval on the whole module tree: put every module back as it was.
    modes = {sub: sub.training for sub in module.modules()}
    try:
        write_with(path, write)
    except CrackdetError:
        raise
    except Exception as exc:  # the exporter's own errors (unsupported operator, …)
        raise CrackdetError(f"{what}: ONNX export failed ({first_line(exc)}); {hint}") from None
    finally:
        for sub, training in modes.items():
            sub.train(training)


def onnxruntime_session(path: Path) -> Any:
    """An ONNX Runtime CPU session of an exported graph with PyTorch's thread count; a graph it
    cannot open is removed (the next run re-exports it) and named on one line."""
    import onnxruntime  # only where ONNX Runtime is the engine

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except MemoryError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise _unreadable_graph(path, first_line(exc)) from None


def _unreadable_graph(path: Path, reason: str) -> CrackdetError:
    """A foreign or damaged graph file is removed, so the next run re-exports it."""
    path.unlink(missing_ok=True)
    return CrackdetError(
        f"{path}: unreadable ONNX graph, removed; run again to re-export ({reason})"
    )


def _graph_input(images: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)


class OnnxSession:
    """An exported features graph run by ONNX Runtime's CPU provider, with PyTorch's thread
    count: float RGB [0, 1] NCHW in, (N, F) features out."""

    engine = "onnxruntime"

    def __init__(self, path: Path) -> None:
        self.session = onnxruntime_session(path)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (features,) = self.session.run(None, {"images": _graph_input(images)})
        return torch.from_numpy(features)


class OpenVinoSession:
    """The same exported graph compiled by OpenVINO for the CPU (latency mode, PyTorch's thread
    count, bfloat16 where the CPU has it: :func:`openvino_precision`). Its results do not depend
    on the batch size or on the run."""

    engine = "openvino"

    def __init__(self, path: Path) -> None:
        # Only where OpenVINO is the engine.
        import openvino
        from openvino.frontend import FrontEndManager

        try:  # the ONNX frontend only: a damaged file is named as such, no other reader tried
            frontend = FrontEndManager().load_by_framework("onnx")
            graph = frontend.convert(frontend.load(str(path)))
        except MemoryError:
            raise
        except Exception as exc:  # OpenVINO raises exception types of its own
            raise _unreadable_graph(path, _openvino_reason(exc)) from None
        try:  # a readable graph OpenVINO cannot compile stays: ONNX Runtime may still run it
            config = {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "INFERENCE_PRECISION_HINT": _openvino_hint(openvino_precision()),
            }
            self.compiled = openvino.Core().compile_model(graph, "CPU", config)
        except MemoryError:
            raise
        except Exception as exc:
            raise CrackdetError(
                f"{path}: OpenVINO cannot compile this graph ({_openvino_reason(exc)}); "
                "set the engine params to onnxruntime or torch"
            ) from None
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # infer() copies its outputs (share_outputs=False): nothing aliases the request's buffer.
        (features,) = self.request.infer({0: _graph_input(images)}).values()
        return torch.from_numpy(features)


register_engine(Engine("onnxruntime", _onnxruntime_label, OnnxSession))
register_engine(Engine("openvino", _openvino_label, OpenVinoSession))
register_engine(Engine("torch", lambda: f"torch-{torch.__version__}", None))

# The engines that run the exported ONNX graph (the first is training's default graph engine).
GRAPH_ENGINES = tuple(name for name, engine in ENGINES.items() if engine.session is not None)


def open_graph(path: Path, engine: str) -> GraphSession:
    """A session running the exported graph at ``path`` with ``engine`` (one of GRAPH_ENGINES)."""
    session = _engine(engine).session
    if session is None:
        raise CrackdetError(
            f"engine {engine!r} runs no exported graph; use one of {', '.join(GRAPH_ENGINES)}"
        )
    return session(path)


class OnnxFeatures:
    """``model.features`` through ONNX Runtime or OpenVINO. The graph is exported (or found in
    ``cache``) and loaded on the first call, so a run whose features all come from the feature
    cache never pays for it."""

    def __init__(self, model: nn.Module, cache: Path | None, engine: str) -> None:
        self.model, self.cache, self.engine = model, cache, engine
        self.session: GraphSession | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.session is None:
            with tempfile.TemporaryDirectory(prefix="crackdet-onnx-") as scratch:
                # No cache folder: a temp export; the session keeps the graph in memory.
                graph = ensure_graph(self.model, Path(self.cache or scratch))
                self.session = open_graph(graph, self.engine)
        return self.session(images)


def feature_fn(model: nn.Module, engine: str, cache: Path | None = None) -> FeatureFn:
    """The backbone-feature function of a crackdet classifier for ``engine``.

    ONNX Runtime and OpenVINO are used only where they apply: a crackdet classifier (not an
    opaque registry model) on the CPU. On CUDA this is PyTorch's own ``model.features``. The
    graph runs the backbone in eval mode, which is how crackdet always computes features.
    ``cache``: folder of exported graphs (None: export to a temp folder each time).
    """
    engine = effective_engine(model, engine)
    if engine in GRAPH_ENGINES and not _runs_graph(model):
        return OnnxFeatures(model, cache, engine)
    return model.features  # type: ignore[return-value]


def classifier_features(
    model: nn.Module, engine: str, cache: Path | None = None
) -> FeatureFn | None:
    """:func:`feature_fn` for a crackdet classifier; None for an opaque registry (pt2) model,
    which has no separate backbone and runs whole in PyTorch."""
    return feature_fn(model, engine, cache) if hasattr(model, "features") else None


def _runs_graph(model: nn.Module) -> bool:
    """An OnnxClassifier (crackdet.model.classifier): its ``features`` already are the graph."""
    return getattr(model, "graph_engine", None) is not None


def effective_engine(model: nn.Module, engine: str) -> str:
    """The engine :func:`feature_fn` will actually use for this model."""
    _engine(engine)
    if _runs_graph(model):
        return str(model.graph_engine)
    on_cpu = all(t.device.type == "cpu" for t in model.parameters())
    usable = on_cpu and hasattr(model, "features")
    return engine if engine in GRAPH_ENGINES and usable else "torch"
