"""crackdet from Python: load a model, map a photo, with the command line's defaults and
results (``crackdet predict`` maps through the same :func:`crackdet.maps.mapping.map_photo`).

    import crackdet
    model = crackdet.load_model()     # the pipeline's checkpoint, a folder, or a models:/ URI
    result = crackdet.map_photo("wall.jpg", model)     # or an RGB uint8 array
    result.crack_area_fraction, result.heatmap, result.mask

Settings are params.yaml's ``predict`` section: the repository's when run inside one, else the
defaults packaged with crackdet; ``scale``, ``overlap`` and ``threshold`` override them as the
command's options do, checked by the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from crackdet.core.layout import Layout, repo_root
from crackdet.core.overrides import params_or_defaults, predict_settings
from crackdet.core.params import PredictParams
from crackdet.maps.crackmap import Tile
from crackdet.maps.mapping import Mapper, prepare_mapper
from crackdet.maps.mapping import map_photo as map_one
from crackdet.model.ood import OODModel
from crackdet.workflows.models import checkpoint_folder, model_identity, ood_beside
from crackdet.workflows.models import load_model as load_reference


@dataclass(frozen=True)
class Model:
    """A loaded model: the network, how outputs name it, and its OOD model (None: none)."""

    network: nn.Module
    reference: str
    label: str
    ood: OODModel | None
    layout: Layout  # where exported graphs are cached
    folder: Path | None = None  # the checkpoint folder (its dense heads, if any)
    # Preparing a mapper (graph session, OOD model, decoder) costs about as much as mapping a
    # small photo: kept per settings, as a campaign's worker keeps its one.
    _mappers: dict[PredictParams, Mapper] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def mapper(self, settings: PredictParams) -> Mapper:
        """The mapper for ``settings``, prepared on first use (the last MAPPERS_KEPT kept)."""
        prepared = self._mappers.pop(settings, None)
        if prepared is None:
            prepared = prepare_mapper(
                self.network, settings, self.ood, self.layout.graph_cache, self.folder
            )
        self._mappers[settings] = prepared  # most recently used last
        while len(self._mappers) > MAPPERS_KEPT:
            del self._mappers[next(iter(self._mappers))]
        return prepared


MAPPERS_KEPT = 4


@dataclass(frozen=True)
class PhotoResult:
    """One photo's crack map, in the photo's own pixels."""

    heatmap: np.ndarray  # float32 HxW crack probability (what <photo>_heatmap.npy holds)
    mask: np.ndarray  # bool HxW: heatmap >= threshold (what <photo>_mask.png shows)
    threshold: float
    crack_area_fraction: float
    scales: tuple[float, ...]
    tiles: list[Tile]
    ood_map: np.ndarray | None  # float32 HxW share of unfamiliar windows (None: no OOD model)
    ood_fraction: float | None
    engine: str
    seconds: float


def load_model(reference: str | Path | None = None) -> Model:
    """A checkpoint folder (``model.pt`` + ``model.json``, with ``ood.npz`` when there is one)
    or a registry URI (``models:/crack-classifier@champion``); by default the checkpoint the
    repository's pipeline trained."""
    layout = Layout(repo_root())
    reference = str(layout.train.dir if reference is None else reference)
    network = load_reference(reference, layout)
    label = model_identity(reference, network, layout).label
    folder = checkpoint_folder(reference, layout)
    return Model(network, reference, label, ood_beside(reference), layout, folder)


def map_photo(
    photo: str | Path | np.ndarray,
    model: Model,
    *,
    scale: float | str | None = None,
    overlap: float | None = None,
    threshold: float | None = None,
    params: str | Path | None = None,
) -> PhotoResult:
    """Map one photo (a path, or an RGB uint8 HxWx3 array) as ``crackdet predict`` does.
    ``params``: a params.yaml (default: the repository's, else the packaged defaults)."""
    settings = predict_settings(
        params_or_defaults(params, model.layout.root),
        scale=scale,
        overlap=overlap,
        threshold=threshold,
    )
    mapper = model.mapper(settings)
    source = photo if isinstance(photo, np.ndarray) else Path(photo)
    mapped = map_one(mapper, source)
    result = mapped.result
    return PhotoResult(
        heatmap=result.heatmap,
        mask=result.heatmap >= mapper.threshold,
        threshold=mapper.threshold,
        crack_area_fraction=round(result.crack_fraction(mapper.threshold), 6),
        scales=mapped.scales,
        tiles=result.tiles,
        ood_map=result.ood_map,
        ood_fraction=result.ood_fraction,
        engine=mapper.engine,
        seconds=result.seconds,
    )
