"""The one typed schema for ``params.yaml``: its sections, and the names they accept.

Every stage loads its params through :func:`load_params`, which checks the whole file before any
work starts: unknown keys, missing keys, wrong types and out-of-range values are all reported
at once in a :class:`~crackdet.core.errors.CrackdetError`, one line per problem, each naming the
dotted key. The generic checks are in :mod:`crackdet.core.schema`; what one section or record
needs beyond its fields' rules is its ``check`` method here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crackdet.core.errors import CrackdetError
from crackdet.core.schema import INVALID, Problems, build_fields, kinds_of
from crackdet.core.schema import rule as _rule

# The names of crackdet.model.engines.ENGINES, kept here so params import no torch.
ENGINES = ("onnxruntime", "openvino", "torch")

# The names of crackdet.model.decoder.DECODERS (pixel decoder architectures), for the schema.
DECODERS = ("subpixel", "fullres")

# Backbones crackdet knows how to build (see crackdet.model.backbones); torchvision ones need the
# torchvision weights cache when pretrained.
BACKBONES = (
    "efficientnet_lite0",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
)


# Source names become folder names under outputs/fetch/images and parts of params keys.
SOURCE_NAMES = (
    r"[a-z0-9][a-z0-9_-]{0,39}",
    "lower-case letters, digits, '_' or '-' (it names a folder)",
)


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

    def check(self, key: str) -> list[str]:
        found = []
        if not self.path:
            what = "URL" if self.kind == "mendeley" else "local archive or folder"
            found.append(f"{key}.path must name the {what}")
        if self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            found.append(f"{key}.sha256 must be 64 hex digits or empty")
        if self.group_by != "signature":
            try:
                if re.compile(self.group_by).groups < 1:
                    found.append(
                        f"{key}.group_by must be signature or a regular expression with a "
                        "group naming the photo, e.g. ^(\\d+)-"
                    )
            except re.error as exc:
                found.append(f"{key}.group_by is not a valid regular expression ({exc})")
        return found


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

    def check(self, key: str) -> list[str]:
        return [] if self.path else [f"{key}.path must name the local archive or folder"]


Source = LabelledSource | SyntheticSource | MasksSource

# Each source kind and its record: the names crackdet.data.sources registers a fetch for.
SOURCE_KINDS: dict[str, type] = kinds_of(typing.get_args(Source))


@dataclass(frozen=True)
class FetchParams:
    # named; each image's manifest row records its source
    sources: dict[str, Source] = _rule(names=SOURCE_NAMES, what="source")  # noqa: RUF009
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

    def check(self, key: str) -> list[str]:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            return [f"{key}.train + {key}.val + {key}.test must sum to 1; got {total:g}"]
        return []


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
    zoom: tuple[float, ...] = _rule(gt=0.0, le=4.0, span=True)
    blur: float = _rule(ge=0.0, le=5.0)
    noise: float = _rule(ge=0.0, le=50.0)
    jpeg_quality: tuple[int, ...] = _rule(ge=5, le=100, span=True)
    exposure: float = _rule(ge=0.0, le=1.0)


@dataclass(frozen=True)
class DecoderParams:
    """The pixel decoder (crackdet.model.decoder), trained after the classifier on crops of
    photos with crack masks: ``synthetic_photos`` rendered from the seed plus every masks
    source's photos, split by photo into train and val."""

    enabled: bool = _rule()
    arch: str = _rule(choices=DECODERS)  # how it reaches full resolution (crackdet.model.decoder)
    epochs: int = _rule(ge=1, le=1000)  # the best epoch (crack-pixel F1) is picked on val
    crop: int = _rule(ge=64, le=2048)  # crop side in px, a multiple of 32 (the taps' stride)
    batch_size: int = _rule(ge=1, le=1024)
    lr: float = _rule(gt=0.0, le=1.0)  # Adam
    channels: int = _rule(ge=2, le=256)  # the top-down path's width
    full: int = _rule(ge=1, le=64)  # the image branch's width
    synthetic_photos: int = _rule(ge=0, le=100_000)  # rendered crop-sized photos (free masks)
    # Crops in train and in val at most (seeded sample, crops with crack pixels first up to
    # three quarters; 0: all): bounds the backbone passes and the cached taps (~16 B a pixel).
    max_crops: int = _rule(ge=0, le=1_000_000)
    val_share: float = _rule(gt=0.0, lt=1.0)  # of the photos, for the best epoch and threshold
    pos_weight: float = _rule(gt=0.0, le=1000.0)  # BCE weight of crack pixels (they are few)
    planking_weight: float = _rule(ge=0.0, le=1000.0)  # BCE weight of planking: hard negatives
    dice: float = _rule(ge=0.0, le=100.0)  # weight of the soft Dice term beside the BCE
    flips: bool = _rule()  # flip crops and their cached taps together (free augmentation)

    def check(self, key: str) -> list[str]:
        return [] if self.crop % 32 == 0 else [f"{key}.crop must be a multiple of 32"]


@dataclass(frozen=True)
class WindowHeadParams:
    """The window head of dense maps (crackdet.model.window_head): the classifier's head read at
    every stride-32 cell of one backbone pass, fine-tuned on features computed in context."""

    enabled: bool = _rule()
    epochs: int = _rule(ge=0, le=1000)  # 0: the classifier's head as it is (calibrated in context)
    lr: float = _rule(gt=0.0, le=1.0)  # Adam
    batch_size: int = _rule(ge=1, le=65_536)  # labelled cells per step
    mosaic: int = _rule(ge=1, le=16)  # training patches per side of a mosaic (one pass each)
    photos: int = _rule(ge=0, le=1000)  # synthetic photos with crack masks (a quarter for val)
    photo_size: int = _rule(ge=256, le=4096)  # their side in pixels


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
    source_weights: dict[str, float] = _rule(gt=0.0, le=100.0, what="source")  # noqa: RUF009
    # The operating threshold on the calibrated P(crack): fixed (0.5) or f1 (F1-optimal on val).
    threshold: str = _rule(choices=("fixed", "f1"))
    # The share of held-out training-source patches the OOD model accepts (its threshold is
    # this quantile of their scores): 0.95 flags about 5 % of concrete like the training data.
    ood_quantile: float = _rule(gt=0.5, lt=1.0)
    augment: AugmentParams
    decoder: DecoderParams
    window_head: WindowHeadParams


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = _rule(ge=1, le=4096)
    engine: str = _rule(choices=ENGINES)
    model_name: str = _rule()
    register: bool = _rule()


@dataclass(frozen=True)
class WidthBand:
    """A severity class: cracks whose maximum width is below ``below_mm`` (null: no upper bound)
    and not in an earlier band (crackdet.maps.cracks grades cracks by them)."""

    name: str = _rule()
    below_mm: float | None = _rule(gt=0.0, le=1000.0)


def width_band_problem(bands: tuple[WidthBand, ...], key: str) -> str | None:
    """What is wrong with a list of width bands (one line naming ``key``), or None: bands must
    be named apart, strictly increasing, positive, and end open."""
    if not bands:
        return f"{key}: no bands; give at least one, the last without an upper bound"
    names = [b.name for b in bands]
    if len(set(names)) != len(names):
        return f"{key}: band names repeat ({', '.join(names)}); name each once"
    if bands[-1].below_mm is not None:
        return f"{key}: the last band ({bands[-1].name}) needs no upper bound"
    limits: list[float] = []
    for band in bands[:-1]:
        if band.below_mm is None:
            return f"{key}: only the last band may be open-ended ({band.name} is)"
        limits.append(band.below_mm)
    if not all(limit > 0 and math.isfinite(limit) for limit in limits):
        return f"{key}: band limits must be positive millimetres"
    if any(later <= earlier for earlier, later in itertools.pairwise(limits)):
        return (
            f"{key}: band limits out of order ({', '.join(f'{v:g}' for v in limits)}); "
            "list them from the narrowest up"
        )
    return None


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
    # Where the window map comes from: sliding (a backbone pass per window) or dense (the window
    # head over the one backbone pass the pixel decoder reads: faster, lower window AUC so far,
    # docs/results.md). The crack pixels come from the one pass either way.
    windows: str = _rule(choices=("sliding", "dense"))
    # Where the model has a pixel decoder: P(crack pixel) at or over this is a crack pixel;
    # model: the threshold the decoder chose on val (0.5 when it has none).
    pixel_threshold: float | str = _rule(ge=0.0, le=1.0, choices=("model",))
    # Millimetres per photo pixel (null: unknown, cracks are measured in pixels).
    mm_per_pixel: float | None = _rule(gt=0.0, le=1000.0)
    # A CSV beside the photos (columns photo, mm_per_pixel) giving photos their own scale over
    # mm_per_pixel ("": none); it must list exactly the photos mapped from its folder.
    scale_csv: str = _rule()
    # Severity: the band a crack's maximum width falls in (crackdet.maps.cracks).
    width_bands: tuple[WidthBand, ...] = _rule()
    min_crack_length_px: float = _rule(ge=0.0, le=100_000.0)  # shorter cracks: specks
    # Pixels at or over this share of the pixel threshold join the crack pixels they touch
    # (hysteresis: a faint stretch links two clear ones); 1: off.
    pixel_hysteresis: float = _rule(gt=0.0, le=1.0)
    # Traced pieces whose end comes within this many pixels (centre to centre) of another piece
    # are one crack (a crack seen in stretches is counted and measured whole); 0: each its own.
    crack_gap_px: float = _rule(ge=0.0, le=10_000.0)

    def check(self, key: str) -> list[str]:
        found = []
        problem = width_band_problem(self.width_bands, f"{key}.width_bands")
        if problem:
            found.append(problem)
        if Path(self.scale_csv).name != self.scale_csv:
            found.append(f"{key}.scale_csv must be a file name (looked up beside the photos)")
        return found


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


def parse_params(raw: Any) -> Params:
    """Validate an already-loaded YAML tree and return typed params; every problem is reported,
    one line each."""
    problems = Problems()
    sections = build_fields(Params, raw, "", problems)
    if sections is not None:
        fetch, train = sections["fetch"], sections["train"]
        if fetch is not INVALID and train is not INVALID:
            problems += [
                f"train.source_weights.{name} names no source in fetch.sources "
                f"({', '.join(fetch.sources)})"
                for name in train.source_weights
                if name not in fetch.sources
            ]
    problems.raise_if_any("params.yaml: ")
    return Params(**sections)  # type: ignore[arg-type]


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
        tag = re.search(r"tag '([^']+)'", str(getattr(exc, "problem", "")))
        if isinstance(exc, yaml.constructor.ConstructorError) and tag:
            # e.g. !!python/object/apply:os.system: safe_load refuses it; say which and where.
            name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise CrackdetError(
                f"{_display(path)}: tag {name}{where} is not allowed (params hold plain values "
                "only); remove the tag"
            ) from None
        raise CrackdetError(f"{_display(path)}: not valid YAML{where}") from None
    except CrackdetError as exc:
        raise CrackdetError(f"{_display(path)}: {exc}") from None
    try:
        return parse_params(raw)
    except CrackdetError as exc:
        lines = str(exc).splitlines()
        raise CrackdetError(
            "\n".join(line.replace("params.yaml", _display(path), 1) for line in lines)
        ) from None


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
