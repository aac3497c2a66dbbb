"""Mapping photos: one function maps one photo with a prepared :class:`Mapper`, one loop runs
photos through an executor, and :func:`map_photos` writes each photo's outputs
(:mod:`crackdet.maps.outputs`).

Shared by the ``predict_samples`` stage, ``crackdet predict``, ``crackdet eval-maps``
(:mod:`crackdet.maps.scoring`) and the Python API. A photo that cannot be read is named on one
line and the others are still mapped; the caller decides what a failure means. Mapping a folder
resumes: a photo whose outputs are all there, made from the same photo bytes, model and
settings (the JSON's ``made_from``, written last), is not mapped again but counted.

The executor is the seam for other runners: :class:`Sequential` maps in this process; a
process pool or a cluster runner (:mod:`crackdet.maps.ray_executor`) implements the same
``map(work, items)``. The work is a :class:`PhotoWork`: it pickles (model, settings, output
folder) and prepares its :class:`Mapper` (whose engine session does not pickle) on its first
photo in whichever process runs it, so each worker prepares one once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.core.io import sha256_file
from crackdet.core.params import PredictParams
from crackdet.core.progress import progress, say
from crackdet.maps.crack_outputs import (
    PhotoPlace,
    TracedPhoto,
    check_scale_csvs,
    photo_mm_per_pixel,
    photo_place,
    trace_photo,
)
from crackdet.maps.crackmap import CrackMap, crack_map, scales_for
from crackdet.maps.dense_map import DENSE_FILES, DenseRunner, dense_map, load_dense
from crackdet.maps.outputs import (
    MadeFrom,
    PhotoFiles,
    PhotoSummary,
    already_mapped,
    output_stems,
    with_crack_settings,
    write_contact_sheet,
    write_outputs,
)
from crackdet.maps.photos import read_photo
from crackdet.model.classifier import CrackClassifier, operating_threshold
from crackdet.model.engines import FeatureFn, classifier_features, effective_engine, engine_label
from crackdet.model.ood import OODModel

Item = TypeVar("Item")
Result = TypeVar("Result")


class Executor(Protocol):
    """Runs a per-photo function over photos and yields the results in the photos' order."""

    def map(self, work: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]: ...


class Sequential:
    """One photo after another, in this process."""

    def map(self, work: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        return (work(item) for item in items)


SEQUENTIAL = Sequential()


def run_photos(
    work: Callable[[Item], Result],
    items: list[Item],
    executor: Executor = SEQUENTIAL,
    desc: str = "map",
) -> Iterator[Result]:
    """The photo loop: ``work`` on every item through ``executor``, with a progress bar."""
    yield from progress(executor.map(work, items), total=len(items), desc=desc, unit="photo")


@dataclass(frozen=True)
class Mapper:
    """What maps photos, prepared once: the model, its feature function for the engine, the
    operating threshold, the OOD model and the settings (params.yaml ``predict``); ``dense``:
    the one-pass runner where the model folder has a window head or decoder."""

    model: CrackClassifier
    settings: PredictParams
    extract: FeatureFn | None
    engine: str  # the engine actually used (torch for a registry model)
    threshold: float
    ood: OODModel | None
    dense: DenseRunner | None = None

    def scales(self, height: int, width: int) -> tuple[float, ...]:
        return scales_for(
            self.settings.scale,
            self.settings.auto_windows,
            height,
            width,
            self.model.spec.patch_size,
        )

    def largest_scale(self, height: int, width: int) -> float:
        return max(self.scales(height, width))

    def read(self, path: Path) -> np.ndarray:
        """A photo as RGB, refused when it (or its largest mapped size) is over max_pixels."""
        return read_photo(path, self.settings.max_pixels, self.largest_scale)


def prepare_mapper(
    model: CrackClassifier,
    settings: PredictParams,
    ood: OODModel | None = None,
    graph_cache: Path | None = None,
    folder: Path | None = None,
    dense: DenseRunner | None = None,
) -> Mapper:
    """A :class:`Mapper`; ``graph_cache``: folder of exported graphs for the graph engines
    (None: a temporary export); ``folder``: the model's checkpoint folder, whose dense heads
    (window head, pixel decoder) are used when it has them; ``dense``: a runner already made."""
    engine = effective_engine(model, settings.engine)  # torch for a registry (pt2) model
    # The operating threshold chosen on val travels with the model; params can override it.
    threshold = operating_threshold(model, settings.threshold, settings.use_model_threshold)
    if dense is None and folder is not None:
        # No OOD flags on dense maps yet: the OOD model is fit on isolated windows' features,
        # and in-context cells sit off that distribution (measured, classifier's OOD model on
        # the 7x7-pooled cells of the three sample photos at scale 1: 41-85 % of cells flagged
        # against 0-19 % of windows). A dense runner made with pooled features applies one.
        windows = settings.windows == "dense"
        dense = load_dense(folder, settings.engine, graph_cache, pooled=False, windows=windows)
    if dense is not None and "window" in dense.outputs:
        # The window map comes from the one pass: no per-window feature function, and its
        # operating threshold is the window head's (chosen on windows in context).
        if settings.use_model_threshold and dense.window_threshold is not None:
            threshold = dense.window_threshold
        return Mapper(model, settings, None, dense.engine, threshold, ood, dense)
    extract = classifier_features(model, engine, graph_cache)
    return Mapper(model, settings, extract, engine, threshold, ood, dense)


@dataclass(frozen=True)
class PhotoMap:
    """One photo mapped: its pixels, the scales the map averages, the window map and, where
    the model has a pixel decoder, P(crack pixel) at the photo's own size (float32 HxW)."""

    photo: np.ndarray
    scales: tuple[float, ...]
    result: CrackMap
    pixels: np.ndarray | None = None
    pixel_threshold: float | None = None  # the decoder's, chosen on val (None: it chose none)


def map_photo(mapper: Mapper, photo: Path | np.ndarray) -> PhotoMap:
    """Map one photo (a path, read as :meth:`Mapper.read` does, or an RGB uint8 array): in one
    backbone pass per scale where the mapper has a dense runner, else window by window."""
    pixels = mapper.read(photo) if isinstance(photo, Path) else photo
    scales = mapper.scales(*pixels.shape[:2])
    settings = mapper.settings
    crack_pixels = pixel_threshold = None
    if mapper.dense is not None:
        dense = dense_map(mapper.dense, pixels, scales, mapper.ood)
        crack_pixels, pixel_threshold = dense.pixels, mapper.dense.pixel_threshold
        if dense.heatmap is not None:
            return PhotoMap(pixels, scales, dense.crack_map(), crack_pixels, pixel_threshold)
    result = crack_map(
        mapper.model,
        pixels,
        settings.overlap,
        settings.batch_size,
        scales,
        mapper.ood,
        mapper.extract,
    )
    return PhotoMap(pixels, scales, result, crack_pixels, pixel_threshold)


@dataclass
class MappedPhotos:
    """The photos mapped (in order), the one-line errors of those that could not be read, the
    seconds each map took (kept out of the written files: outputs must be the same bytes for the
    same photos and model), and the photos whose outputs were already complete (``skipped``:
    listed in ``summaries`` too, with no seconds)."""

    summaries: list[PhotoSummary]
    errors: list[str]
    seconds: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PhotoOutcome:
    """What mapping one photo into the output folder gave."""

    summary: PhotoSummary | None  # None: the photo could not be read (``error``)
    error: str = ""
    seconds: float | None = None  # None: its complete outputs were reused
    photo: str = ""


# The files of a checkpoint folder that decide its maps: weights, spec (threshold, temperature)
# and the OOD model; then the dense heads (window head, pixel decoder) where there are some.
CHECKPOINT_FILES = ("model.pt", "model.json", "ood.npz", *DENSE_FILES)


def checkpoint_digest(folder: Path) -> str:
    """sha256 over the sha256s of a checkpoint folder's CHECKPOINT_FILES: what identifies the
    model whose maps a folder holds. An absent classifier file counts as "-"; an absent dense
    file not at all, so a folder without heads keeps the digest it had before they existed."""
    digest = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        path = folder / name
        if name in DENSE_FILES and not path.is_file():
            continue
        digest.update(f"{name}:{sha256_file(path) if path.is_file() else '-'}\n".encode())
    return digest.hexdigest()


def map_photos(
    model: CrackClassifier,
    photos: list[Path],
    out: Path,
    params: PredictParams,
    model_ref: str = "",
    ood: OODModel | None = None,
    graph_cache: Path | None = None,
    command: str = "predict_samples",
    model_digest: str = "",
    executor: Executor = SEQUENTIAL,
    folder: Path | None = None,
) -> MappedPhotos:
    """Per photo: ``<stem>_overlay.jpg``, ``<stem>_heatmap.png`` / ``.npy`` (crack probability),
    ``<stem>_mask.png`` (at the threshold), ``<stem>_thumb.jpg`` and ``<stem>.json``; where the
    model has a pixel decoder, the traced cracks' files (:mod:`crackdet.maps.crack_outputs`);
    plus ``contact_sheet.png``. Every scale CSV (``predict.scale_csv``) is checked first.
    ``model_ref``: how the model is named in the outputs; ``model_digest``: what identifies its
    weights (empty: never reuse outputs); ``graph_cache``: folder of exported graphs for the
    onnxruntime and openvino engines (None: temp export); ``command`` names the caller in error
    lines; ``folder``: the checkpoint folder, whose dense heads map in one backbone pass where it
    has them."""
    check_scale_csvs(photos, params)  # before anything is mapped: one line per scale CSV
    stems = output_stems(photos)
    renamed = [f"{p} -> {stems[p]}_*" for p in photos if stems[p] != p.stem]
    if renamed:
        print(f"{command}: photos share a file name; outputs named apart: {', '.join(renamed)}")
    work = PhotoWork(
        partial(loaded, model, ood),
        params,
        graph_cache,
        out,
        model_ref,
        model_digest,
        command,
        folder,
    )
    mapped = collect(run_photos(work, [(p, stems[p]) for p in photos], executor, command))
    if mapped.summaries:
        write_contact_sheet(out, mapped.summaries)
    return mapped


def collect(outcomes: Iterable[PhotoOutcome]) -> MappedPhotos:
    """The outcomes of a photo loop, sorted into mapped, reused and failed photos."""
    mapped = MappedPhotos([], [])
    for outcome in outcomes:
        if outcome.summary is None:
            mapped.errors.append(outcome.error)
            continue
        mapped.summaries.append(outcome.summary)
        if outcome.seconds is None:
            mapped.skipped.append(outcome.photo)
        else:
            mapped.seconds.append(outcome.seconds)
    return mapped


def loaded(model: CrackClassifier, ood: OODModel | None) -> tuple[CrackClassifier, OODModel | None]:
    """A model loader for a model already in this process (PhotoWork's ``load``)."""
    return model, ood


ModelLoader = Callable[[], "tuple[CrackClassifier, OODModel | None]"]


class PhotoWork:
    """Maps one photo (path, output stem) into ``out`` (:func:`map_into_folder`). Pickles
    without its :class:`Mapper`, which it prepares on its first photo from ``load`` (a
    picklable function giving the model and OOD model): a cluster worker loads the model once.
    """

    def __init__(
        self,
        load: ModelLoader,
        settings: PredictParams,
        graph_cache: Path | None,
        out: Path,
        model_ref: str,
        digest: str,
        command: str,
        folder: Path | Callable[[], Path | None] | None = None,
    ) -> None:
        self.load, self.settings, self.graph_cache = load, settings, graph_cache
        self.out, self.model_ref, self.digest, self.command = out, model_ref, digest, command
        # The checkpoint folder (its dense heads, if any), or how a worker finds its own copy.
        self.folder = folder
        self._mapper: Mapper | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mapper": None}

    def mapper(self) -> Mapper:
        if self._mapper is None:
            model, ood = self.load()
            folder = self.folder() if callable(self.folder) else self.folder
            self._mapper = prepare_mapper(model, self.settings, ood, self.graph_cache, folder)
        return self._mapper

    def __call__(self, item: tuple[Path, str]) -> PhotoOutcome:
        return map_into_folder(
            self.mapper(),
            self.out,
            item,
            model_ref=self.model_ref,
            digest=self.digest,
            command=self.command,
        )


def map_into_folder(
    mapper: Mapper,
    out: Path,
    item: tuple[Path, str],
    *,
    model_ref: str,
    digest: str,
    command: str,
) -> PhotoOutcome:
    """Map one photo (path, output stem) into ``out``, or reuse its complete outputs."""
    path, stem = item
    settings = mapper.settings
    files = PhotoFiles(out, stem)
    try:
        mm_per_pixel = photo_mm_per_pixel(path, settings)
    except CrackdetError as exc:
        say(f"{command}: error: {exc}", error=True)
        return PhotoOutcome(None, error=str(exc), photo=path.name)
    made_from = MadeFrom(
        photo_sha256=_digest(path),
        model=digest,
        scale=settings.scale,
        auto_windows=list(settings.auto_windows),
        overlap=settings.overlap,
        threshold=mapper.threshold,
        engine=engine_label(mapper.engine),
        alpha=settings.alpha,
        windows=settings.windows,
    )
    made_from = with_crack_settings(made_from, settings, mm_per_pixel)
    done = already_mapped(files, made_from)
    if done is not None:
        return PhotoOutcome(done, photo=path.name)
    try:
        mapped = map_photo(mapper, path)
    except CrackdetError as exc:
        say(f"{command}: error: {exc}", error=True)
        return PhotoOutcome(None, error=str(exc), photo=path.name)
    photo, result, threshold = mapped.photo, mapped.result, mapper.threshold
    summary = PhotoSummary(
        photo=path.name,
        width=int(photo.shape[1]),
        height=int(photo.shape[0]),
        model=model_ref,
        threshold=threshold,
        overlap=settings.overlap,
        scales=list(mapped.scales),
        engine=engine_label(mapper.engine),
        crack_area_fraction=round(result.crack_fraction(threshold), 6),
        tiles_flagged=sum(t.p >= threshold for t in result.tiles),
        tiles_total=len(result.tiles),
        ood_fraction=result.ood_fraction,
        outputs=files.stem,
    )

    def trace() -> tuple[TracedPhoto | None, PhotoPlace | None]:
        """Where the model has a pixel decoder: measured cracks, and where the photo was taken."""
        traced = trace_photo(mapped.pixels, mapped.pixel_threshold, mm_per_pixel, settings)
        return traced, photo_place(path) if traced is not None else None

    summary = write_outputs(files, photo, result, summary, made_from, settings.alpha, trace)
    return PhotoOutcome(summary, seconds=result.seconds, photo=path.name)


def _digest(photo: Path) -> str:
    """The photo's sha256, or "" when it cannot be read (read_photo then says why)."""
    try:
        return sha256_file(photo)
    except OSError:
        return ""
