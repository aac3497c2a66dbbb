"""The one typed schema for ``params.yaml``.

Every stage loads its params through :func:`load_params`, which checks the whole file before any
work starts: unknown keys, missing keys, wrong types and out-of-range values all raise a
:class:`~crackdet.core.errors.CrackdetError` whose one-line message names the dotted key.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crackdet.core.errors import CrackdetError

# crackdet.model.engines; kept here so params import no torch
ENGINES = ("onnxruntime", "openvino", "torch")
GRAPH_ENGINES = ("onnxruntime", "openvino")  # engines that run the exported ONNX graph

# Backbones crackdet knows how to build (see crackdet.model.backbones); torchvision ones need the
# torchvision weights cache when pretrained.
BACKBONES = (
    "efficientnet_lite0",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
)


def _rule(
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A schema field with its bounds; every key is required, so there is no default."""
    return field(metadata={"ge": ge, "le": le, "gt": gt, "choices": choices})


@dataclass(frozen=True)
class BaseParams:
    # numpy's legacy RandomState and scikit-learn take seeds below 2**32.
    seed: int = _rule(ge=0, le=2**32 - 1)


@dataclass(frozen=True)
class FetchParams:
    source: str = _rule(choices=("synthetic", "archive", "mendeley"))
    archive: str = _rule()  # local .zip/.tar*/.rar or a folder with Positive/ and Negative/
    url: str = _rule()
    sha256: str = _rule()  # optional pin for the download; "" records without checking
    synthetic_per_class: int = _rule(ge=10, le=100_000)
    on_bad_image: str = _rule(choices=("error", "skip"))
    max_files: int = _rule(ge=1)
    max_bytes: int = _rule(ge=1)
    max_pixels: int = _rule(ge=1)
    near_duplicate_bits: int = _rule(ge=-1, le=16)


@dataclass(frozen=True)
class SplitParams:
    strategy: str = _rule(choices=("grouped", "random"))
    groups: int = _rule(ge=2, le=1_000_000)
    train: float = _rule(gt=0.0, le=1.0)
    val: float = _rule(gt=0.0, le=1.0)
    test: float = _rule(gt=0.0, le=1.0)


@dataclass(frozen=True)
class AugmentParams:
    views: int = _rule(ge=1, le=32)
    rotation: float = _rule(ge=0.0, le=180.0)
    hflip: bool = _rule()
    vflip: bool = _rule()
    color_jitter: float = _rule(ge=0.0, le=1.0)


@dataclass(frozen=True)
class TrainParams:
    backbone: str = _rule(choices=BACKBONES)
    pretrained: bool = _rule()
    epochs: int = _rule(ge=1, le=1000)
    batch_size: int = _rule(ge=1, le=4096)
    lr: float = _rule(gt=0.0, le=1.0)
    weight_decay: float = _rule(ge=0.0, le=1.0)
    lr_step_epochs: int = _rule(ge=1)
    lr_gamma: float = _rule(gt=0.0, le=1.0)
    hidden: int = _rule(ge=1, le=65_536)
    dropout: float = _rule(ge=0.0, le=0.99)
    unfreeze: int = _rule(ge=0, le=64)
    # unfreeze > 0: cached (the frozen trunk's activations of the augment views, computed once)
    # or online (fresh augmentation and a whole forward pass every epoch)
    finetune: str = _rule(choices=("cached", "online"))
    engine: str = _rule(choices=ENGINES)  # backbone forward passes on CPU (crackdet.model.engines)
    augment: AugmentParams


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = _rule(ge=1, le=4096)
    engine: str = _rule(choices=ENGINES)
    model_name: str = _rule()
    register: bool = _rule()


@dataclass(frozen=True)
class PredictParams:
    scale: float = _rule(gt=0.0, le=8.0)
    overlap: float = _rule(ge=0.0, le=0.9)
    batch_size: int = _rule(ge=1, le=4096)
    engine: str = _rule(choices=ENGINES)
    use_model_threshold: bool = _rule()
    threshold: float = _rule(ge=0.0, le=1.0)
    alpha: float = _rule(ge=0.0, le=1.0)
    max_pixels: int = _rule(ge=1)


@dataclass(frozen=True)
class PromoteParams:
    """Gates a new registry version must pass to take the ``champion`` alias
    (crackdet.tracking.promotion)."""

    min_accuracy: float = _rule(ge=0.0, le=1.0)
    min_f1: float = _rule(ge=0.0, le=1.0)
    max_regression: float = _rule(ge=0.0, le=1.0)  # largest allowed drop vs the champion


@dataclass(frozen=True)
class CiParams:
    max_metric_regression: float = _rule(ge=0.0)  # `crackdet ci-check` tolerance per metric


@dataclass(frozen=True)
class Params:
    base: BaseParams
    fetch: FetchParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams
    predict: PredictParams
    promote: PromoteParams
    ci: CiParams

    def as_flat_dict(self) -> dict[str, Any]:
        """``{"train.augment.rotation": 10.0, …}``: the form logged to MLflow."""
        return flatten(dataclasses.asdict(self))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# A number as a person writes it: YAML 1.1 (PyYAML) reads ``1e-4`` as a string, because its
# floats need a dot; DVC's YAML 1.2 reads it as a number. Both must mean the same here.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check_value(key: str, tp: Any, value: Any, meta: typing.Mapping[str, Any]) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)
    # bool is an int subclass in Python; YAML `true` must never pass as a count.
    ok = (
        isinstance(value, bool)
        if tp is bool
        else isinstance(value, tp) and not isinstance(value, bool)
        if tp in (int, str)
        else isinstance(value, (int, float)) and not isinstance(value, bool)
    )
    if not ok:
        raise CrackdetError(
            f"params.yaml: {key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    if tp is float:
        value = float(value)
    choices = meta.get("choices")
    if choices and value not in choices:
        raise CrackdetError(
            f"params.yaml: {key} must be one of {', '.join(choices)}; got {value!r}"
        )
    for bound, test, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
    ):
        limit = meta.get(bound)
        if limit is not None and not test(value, limit):
            raise CrackdetError(f"params.yaml: {key} must be {word} {limit}; got {value!r}")
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "the top level"
    if not isinstance(raw, dict):
        raise CrackdetError(f"params.yaml: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dotted = (prefix + ".") if prefix else ""
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise CrackdetError(
            f"params.yaml: unknown key {dotted}{unknown[0]} (known keys in {where}: "
            f"{', '.join(fields)})"
        )
    values = {}
    for name, fld in fields.items():
        if name not in raw:
            raise CrackdetError(f"params.yaml: missing key {dotted}{name}")
        tp = hints[name]
        values[name] = _check_value(f"{dotted}{name}", tp, raw[name], fld.metadata)
    return cls(**values)


def parse_params(raw: Any) -> Params:
    """Validate an already-loaded YAML tree and return typed params."""
    params: Params = _build(Params, raw, "")
    total = params.split.train + params.split.val + params.split.test
    if abs(total - 1.0) > 1e-6:
        raise CrackdetError(
            f"params.yaml: split.train + split.val + split.test must sum to 1; got {total:g}"
        )
    if params.fetch.source == "archive" and not params.fetch.archive:
        raise CrackdetError(
            "params.yaml: fetch.archive must name a local archive or folder when "
            "fetch.source is archive"
        )
    if params.fetch.sha256 and len(params.fetch.sha256) != 64:
        raise CrackdetError("params.yaml: fetch.sha256 must be 64 hex digits or empty")
    return params


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise CrackdetError naming the key on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
        _refuse_duplicate_keys(yaml.compose(text), "")
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise CrackdetError(f"{_display(path)}: not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CrackdetError(f"{_display(path)}: not valid YAML{where}") from None
    except CrackdetError as exc:
        raise CrackdetError(f"{_display(path)}: {exc}") from None
    try:
        return parse_params(raw)
    except CrackdetError as exc:
        raise CrackdetError(str(exc).replace("params.yaml", _display(path), 1)) from None


def _refuse_duplicate_keys(node: yaml.Node | None, prefix: str) -> None:
    """PyYAML keeps the last of two equal keys without a word, DVC refuses the file: a
    duplicate is an error here too, naming the key and both lines."""
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise CrackdetError(
                    f"duplicate key {key} at lines {first_line[key]} and {line}; keep one"
                )
            first_line[key] = line
            _refuse_duplicate_keys(value_node, f"{key}.")
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, prefix)


def _display(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
