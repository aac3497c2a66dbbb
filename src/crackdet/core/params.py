"""The one typed schema for ``params.yaml``.

Every stage loads its params through :func:`load_params`, which checks the whole file before any
work starts: unknown keys, missing keys, wrong types and out-of-range values all raise a
:class:`~crackdet.core.errors.CrackdetError` whose one-line message names the dotted key.
"""

from __future__ import annotations

import dataclasses
import re
import types
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
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A schema field with its bounds; every key is required, so there is no default."""
    return field(metadata={"ge": ge, "le": le, "gt": gt, "lt": lt, "choices": choices})


@dataclass(frozen=True)
class BaseParams:
    # numpy's legacy RandomState and scikit-learn take seeds below 2**32.
    seed: int = _rule(ge=0, le=2**32 - 1)


@dataclass(frozen=True)
class LabelledSource:
    """Patches in the public set's layout (``Positive/``, ``Negative/``): a local archive
    (.zip/.tar*/.rar), a folder, or the public set downloaded from Mendeley."""

    kind: str = _rule(choices=("archive", "folder", "mendeley"))
    path: str = _rule()  # archive/folder: a local path (relative to the repo root); mendeley: URL
    sha256: str = _rule()  # pin the archive's sha256 ("" records it without checking)
    licence: str = _rule()
    # How patches of one source photo are found, so split keeps them on one side: "signature"
    # (cluster colour/texture signatures) or a regular expression whose first group, applied to
    # the file name, names the photo (SDNET2018: "^(\d+)-").
    group_by: str = _rule()


@dataclass(frozen=True)
class SyntheticSource:
    """Rendered concrete patches (crackdet.data.sources.synthetic): offline, any number."""

    kind: str = _rule(choices=("synthetic",))
    per_class: int = _rule(ge=10, le=100_000)
    # classic: one look at one scale; randomised: texture, lighting, crack width and scale drawn
    # per patch, to teach what no single photographed set shows.
    style: str = _rule(choices=("classic", "randomised"))
    licence: str = _rule()


@dataclass(frozen=True)
class MasksSource:
    """Photos with pixel crack masks (``images/``, ``masks/``, optional ``masks_planking/``),
    cut into labelled windows at several scales: a window is a crack when its centre region holds
    enough crack pixels, clean when no crack pixel lies within a margin of it; windows in
    between are left out (counted). Clean windows on planking are the hard negatives."""

    kind: str = _rule(choices=("masks",))
    path: str = _rule()  # a folder or archive in that layout
    photos: str = _rule()  # file-name glob of the photos to use (e.g. "train_*")
    scales: tuple[float, ...] = _rule(gt=0.0, le=8.0)  # as predict.scale: resize, then windows
    # All lengths are shares of the window's side, so one rule labels every scale alike.
    centre: float = _rule(gt=0.0, le=1.0)  # the centre square's side
    crack_length: float = _rule(
        gt=0.0, le=4.0
    )  # crack pixels the centre must hold (0.25: a 1-px crack a quarter across)
    margin: float = _rule(ge=0.0, le=1.0)  # around a clean window: no crack pixel within it
    planking_length: float = _rule(
        gt=0.0, le=16.0
    )  # planking pixels that make a clean window a hard negative
    max_clean: int = _rule(
        ge=0
    )  # clean windows kept in all (seeded; hard negatives up to half; 0: all)
    licence: str = _rule()


Source = LabelledSource | SyntheticSource | MasksSource


@dataclass(frozen=True)
class FetchParams:
    sources: dict[str, Source]  # named; each image's manifest row records its source
    on_bad_image: str = _rule(choices=("error", "skip"))
    max_files: int = _rule(ge=1)  # extraction bounds for archives from the internet
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
    rot90: bool = _rule()  # a quarter turn (1-3) for half of the views: cracks run any way
    color_jitter: float = _rule(ge=0.0, le=1.0)
    grayscale: float = _rule(ge=0.0, le=1.0)  # the share of views turned grey
    # What another camera does to a crack: zoom (log-uniform factor; < 1 shows it thinner and
    # farther, > 1 wider and closer; [1, 1] off), lens blur (Gaussian sigma up to this; 0 off),
    # sensor noise (std up to this, 0-255 units; 0 off), JPEG re-encoding (quality drawn in this
    # range; [100, 100] off) and exposure (gamma drawn from exp(U(-e, e)); 0 off). Zoom applies
    # to three views in four, blur, noise and JPEG each to half of them.
    zoom: tuple[float, ...] = _rule(gt=0.0, le=4.0)
    blur: float = _rule(ge=0.0, le=5.0)
    noise: float = _rule(ge=0.0, le=50.0)
    jpeg_quality: tuple[int, ...] = _rule(ge=5, le=100)
    exposure: float = _rule(ge=0.0, le=1.0)


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
    # source: every fetch source weighs the same in the loss and in the choice of the best
    # epoch, each of its classes alike; none: every image alike.
    balance: str = _rule(choices=("source", "none"))
    # A source's share of the loss relative to the others (unnamed sources: 1).
    source_weights: dict[str, float] = _rule(gt=0.0, le=100.0)  # noqa: RUF009 (no default)
    # The operating threshold on the calibrated P(crack): fixed (0.5) or f1 (F1-optimal on val).
    threshold: str = _rule(choices=("fixed", "f1"))
    # The share of held-out training-source patches the OOD model accepts (its threshold is
    # this quantile of their scores): 0.95 flags about 5 % of concrete like the training data.
    ood_quantile: float = _rule(gt=0.5, lt=1.0)
    augment: AugmentParams


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = _rule(ge=1, le=4096)
    engine: str = _rule(choices=ENGINES)
    model_name: str = _rule()
    register: bool = _rule()


@dataclass(frozen=True)
class PredictParams:
    # auto: several scales per photo, from its size (auto_windows), maps averaged; a number: one
    # scale for every photo (the photo is resized by it, then windows slide over it).
    scale: float | str = _rule(gt=0.0, le=8.0, choices=("auto",))
    # scale auto: a window covers the photo's short side divided by each of these (6.75 on a
    # 512-px drone crop is scale 3; on a 12 MP photo 0.51).
    auto_windows: tuple[float, ...] = _rule(ge=1.0, le=64.0)
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
    """Dotted keys (``train.augment.zoom``); tuples become lists, as YAML writes them."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# A number as a person writes it: YAML 1.1 (PyYAML) reads ``1e-4`` as a string, because its
# floats need a dot; DVC's YAML 1.2 reads it as a number. Both must mean the same here.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# Source names become folder names under outputs/fetch/images and parts of params keys.
_SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def _check_value(key: str, tp: Any, value: Any, meta: typing.Mapping[str, Any]) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is dict:
        item = typing.get_args(tp)[1]
        if item is float:
            return _check_weights(key, value, meta)
        return _check_sources(key, item, value)
    if origin is types.UnionType:
        options = typing.get_args(tp)
        if all(dataclasses.is_dataclass(o) for o in options):
            return _check_kind(key, options, value)
        return _check_number_or_word(key, options, value, meta)
    if origin is tuple:  # tuple[X, ...]: a YAML list of X
        item = typing.get_args(tp)[0]
        if not isinstance(value, list) or not value:
            raise CrackdetError(f"params.yaml: {key} must be a non-empty list, got {value!r}")
        return tuple(_check_value(f"{key}[{i}]", item, v, meta) for i, v in enumerate(value))
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
        ("lt", lambda v, b: v < b, "<"),
    ):
        limit = meta.get(bound)
        if limit is not None and not test(value, limit):
            raise CrackdetError(f"params.yaml: {key} must be {word} {limit}; got {value!r}")
    return value


def _check_number_or_word(
    key: str, options: tuple[type, ...], value: Any, meta: typing.Mapping[str, Any]
) -> Any:
    """``float | str``: a number within the bounds, or one of the words in ``choices``."""
    words = meta.get("choices") or ()
    if isinstance(value, str) and value in words:
        return value
    number = next(o for o in options if o in (int, float))
    try:
        return _check_value(key, number, value, {k: v for k, v in meta.items() if k != "choices"})
    except CrackdetError as exc:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise  # a number out of range: the bound says it
        raise CrackdetError(
            f"params.yaml: {key} must be a number or {' or '.join(words)}; got {value!r}"
        ) from exc


def _check_sources(key: str, item: Any, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise CrackdetError(
            f"params.yaml: {key} must name at least one source (name: {{kind: …, …}})"
        )
    sources = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not _SOURCE_NAME.fullmatch(name):
            raise CrackdetError(
                f"params.yaml: {key}: source name {name!r} must be lower-case letters, digits, "
                "'_' or '-' (it names a folder)"
            )
        sources[name] = _check_value(f"{key}.{name}", item, raw, {})
    return sources


def _check_weights(key: str, value: Any, meta: typing.Mapping[str, Any]) -> dict[str, float]:
    """``name: number`` pairs (may be empty)."""
    if not isinstance(value, dict):
        raise CrackdetError(
            f"params.yaml: {key} must be a mapping of source names to numbers ({{}} for none)"
        )
    return {str(name): _check_value(f"{key}.{name}", float, v, meta) for name, v in value.items()}


def _check_kind(key: str, options: tuple[type, ...], value: Any) -> Any:
    """One of several record types, chosen by the value's ``kind``."""
    by_kind = {
        kind: cls
        for cls in options
        for kind in dataclasses.fields(cls)[0].metadata["choices"]  # the first field is kind
    }
    kind = value.get("kind") if isinstance(value, dict) else None
    if kind not in by_kind:
        raise CrackdetError(
            f"params.yaml: {key}.kind must be one of {', '.join(by_kind)}; got {kind!r}"
        )
    return _build(by_kind[kind], value, key)


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
    for name, source in params.fetch.sources.items():
        _check_source(f"fetch.sources.{name}", source)
    augment = params.train.augment
    for key, pair in (("zoom", augment.zoom), ("jpeg_quality", augment.jpeg_quality)):
        if len(pair) != 2 or pair[0] > pair[1]:
            raise CrackdetError(
                f"params.yaml: train.augment.{key} must be a range [low, high] with low <= high; "
                f"got {list(pair)}"
            )
    for name in params.train.source_weights:
        if name not in params.fetch.sources:
            raise CrackdetError(
                f"params.yaml: train.source_weights.{name} names no source in fetch.sources "
                f"({', '.join(params.fetch.sources)})"
            )
    return params


def _check_source(key: str, source: Source) -> None:
    """What the schema's types cannot say about one source."""
    if isinstance(source, LabelledSource | MasksSource) and not source.path:
        what = "URL" if source.kind == "mendeley" else "local archive or folder"
        raise CrackdetError(f"params.yaml: {key}.path must name the {what}")
    if isinstance(source, LabelledSource):
        if source.sha256 and not re.fullmatch(r"[0-9a-f]{64}", source.sha256):
            raise CrackdetError(f"params.yaml: {key}.sha256 must be 64 hex digits or empty")
        if source.group_by != "signature":
            try:
                pattern = re.compile(source.group_by)
            except re.error as exc:
                raise CrackdetError(
                    f"params.yaml: {key}.group_by is not a valid regular expression ({exc})"
                ) from None
            if pattern.groups < 1:
                raise CrackdetError(
                    f"params.yaml: {key}.group_by must be signature or a regular expression "
                    "with a group naming the photo, e.g. ^(\\d+)-"
                )


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
