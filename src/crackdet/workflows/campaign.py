"""``crackdet predict`` as an inspection campaign: photos from folders or ``s3://`` prefixes,
outputs to a folder or an ``s3://`` prefix, mapped in this process or on a Ray cluster
(``--ray``), each campaign an MLflow run in the ``crackdet-campaigns`` experiment.

Everything that can be checked is checked before any photo is mapped, one line each: the
photos can be listed, the output location can be written, the cluster answers, the model loads.
A photo that fails is named in the campaign's failures and the others go on; a rerun reuses
complete outputs (the JSON's ``made_from``) and redoes partial ones.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from crackdet.core.errors import CrackdetError
from crackdet.core.layout import Layout
from crackdet.core.params import PredictParams, flatten
from crackdet.maps.campaign import (
    STORE_VARIABLES,
    CampaignWork,
    check_writable_s3,
    is_s3,
    list_s3_photos,
)
from crackdet.maps.html_report import write_report
from crackdet.maps.mapping import (
    SEQUENTIAL,
    Executor,
    MappedPhotos,
    PhotoWork,
    collect,
    loaded,
    run_photos,
)
from crackdet.maps.outputs import mapped_before, output_stems, write_contact_sheet
from crackdet.maps.ray_executor import RayData, connect
from crackdet.model.classifier import CrackClassifier
from crackdet.model.ood import OODModel
from crackdet.tracking.runs import ending, start_campaign_run
from crackdet.workflows.models import REGISTRY_SCHEMES, load_model, model_identity, ood_beside
from crackdet.workflows.predict import photo_files


@dataclass
class Campaign:
    """What a campaign did: the photos' outcomes, where, and how fast."""

    mapped: MappedPhotos
    photos: int
    out: str
    seconds: float
    run_id: str = ""
    executor: str = "local"


def load_for_worker(reference: str, root: Path) -> tuple[CrackClassifier, OODModel | None]:
    """The model and its OOD model, loaded in a worker (picklable by reference)."""
    return load_model(reference, Layout(root)), ood_beside(reference)


def list_sources(sources: list[str]) -> list[str]:
    """Photo paths and URIs from the folders, files and ``s3://`` prefixes named."""
    photos: list[str] = []
    local = [s for s in sources if not is_s3(s)]
    for source in sources:
        if is_s3(source):
            found, other = list_s3_photos(source)
            if other:
                print(f"predict: {len(other)} objects under {source} are not photos; left out")
            if not found:
                raise CrackdetError(f"{source}: no photos under this prefix; check the URI")
            photos += found
    if local:
        photos += [str(p.resolve()) for p in photo_files([Path(s) for s in local])]
    return photos


def check_out(out: str) -> None:
    """One line when the output location cannot be written (before any photo is mapped)."""
    if is_s3(out):
        check_writable_s3(out)
        return
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise CrackdetError(f"{out}: exists and is not a folder; name a folder for --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".crackdet-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CrackdetError(
            f"{out}: cannot write outputs here ({exc.strerror}); pick --out"
        ) from None


def run_campaign(
    sources: list[str],
    model_ref: str,
    out: str,
    cfg: PredictParams,
    layout: Layout,
    ray: str | None = None,
    workers: int | None = None,
) -> Campaign:
    """Map the photos of ``sources`` into ``out`` (see the module docstring)."""
    import mlflow  # ~1.3 s to import: only where a run is logged

    photos = list_sources(sources)
    check_out(out)
    executor: Executor = SEQUENTIAL
    if ray:
        names = (*STORE_VARIABLES, "CRACKDET_OFFLINE")
        connect(ray, {k: os.environ[k] for k in names if k in os.environ})
        executor = RayData(workers)
    model = load_model(model_ref, layout)
    identity = model_identity(model_ref, model, layout)
    # Here the loaded model serves; Ray's actors, in other processes, load their own.
    load = None if ray else partial(loaded, model, ood_beside(model_ref))
    if not model_ref.startswith(REGISTRY_SCHEMES) and Path(model_ref).exists():
        model_ref = str(Path(model_ref).resolve())  # workers run in other folders
    stems = output_stems([Path(p) for p in photos])
    items = [(p, stems[Path(p)]) for p in photos]
    inner = PhotoWork(
        load or partial(load_for_worker, model_ref, layout.root),
        cfg,
        # The project's graph cache (exported once, written atomically): on a node without
        # it, the first actor there exports into it.
        layout.graph_cache,
        Path("."),
        identity.label,
        identity.digest,
        "predict",
    )
    # Workers run in folders of their own: a local --out is given to them as an absolute path.
    work = CampaignWork(inner, out if is_s3(out) else str(Path(out).resolve()))
    where = f"ray {ray}" if ray else "local"
    run = start_campaign_run(layout.root, f"campaign {len(photos)} photos -> {out}")
    with ending(run):
        mlflow.set_tags(
            {
                "campaign.input": ", ".join(sources),
                "campaign.output": out,
                "campaign.executor": where,
                "campaign.model": identity.label,
                "campaign.model_digest": identity.digest,
            }
        )
        mlflow.log_params({f"predict.{k}": v for k, v in flatten(asdict(cfg)).items()})
        start = time.perf_counter()
        mapped = collect(run_photos(work, items, executor, "predict"))
        seconds = time.perf_counter() - start
        campaign = Campaign(mapped, len(photos), out, seconds, run.info.run_id, where)
        if not is_s3(out) and (mapped.summaries or mapped.errors):
            folder = Path(out)
            if mapped.summaries:
                write_contact_sheet(folder, mapped.summaries)
            stems_done = {s.outputs for s in mapped.summaries}
            report = replace(
                mapped, summaries=[*mapped.summaries, *mapped_before(folder, stems_done)]
            )
            # The title a local ``crackdet predict`` gives: the same report bytes.
            names = ", ".join(s.rstrip("/").rsplit("/", 1)[-1] for s in sources)
            write_report(folder, report, f"Crack maps: {names}")
        _log_campaign(campaign)
    return campaign


def _log_campaign(campaign: Campaign) -> None:
    import mlflow  # ~1.3 s to import: only where a run is logged

    mapped = campaign.mapped
    done = len(mapped.summaries) - len(mapped.skipped)
    mlflow.log_metrics(
        {
            "photos": campaign.photos,
            "mapped": done,
            "skipped": len(mapped.skipped),
            "failed": len(mapped.errors),
            "seconds": campaign.seconds,
            "photos_per_hour": done / campaign.seconds * 3600 if campaign.seconds else 0.0,
        }
    )
    table = io.StringIO()
    rows = [s.to_dict() for s in mapped.summaries]
    if rows:
        writer = csv.DictWriter(table, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        mlflow.log_text(table.getvalue(), "campaign/photos.csv")
    report = {
        "photos": campaign.photos,
        "mapped": done,
        "skipped": mapped.skipped,
        "failed": mapped.errors,
        "seconds": round(campaign.seconds, 3),
        "executor": campaign.executor,
        "out": campaign.out,
    }
    mlflow.log_dict(report, "campaign/report.json")
