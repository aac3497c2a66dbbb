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
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.layout import Layout
from crackdet.core.params import PredictParams, flatten
from crackdet.maps.campaign import (
    STORE_VARIABLES,
    CampaignWork,
    check_writable_s3,
    is_s3,
    list_s3_photos,
    read_output_text,
    upload_output,
)
from crackdet.maps.crack_outputs import CRACK_TABLE, FOLDER_CRACKS, write_folder_cracks
from crackdet.maps.html_report import worst_first, write_report
from crackdet.maps.mapping import (
    SEQUENTIAL,
    Executor,
    MappedPhotos,
    PhotoOutcome,
    PhotoWork,
    loaded,
    run_photos,
)
from crackdet.maps.outputs import (
    PhotoSummary,
    mapped_before,
    output_stems,
    write_contact_sheet,
)
from crackdet.maps.ray_executor import RayData, connect
from crackdet.model.classifier import CrackClassifier
from crackdet.model.ood import OODModel
from crackdet.tracking.provenance import git_state
from crackdet.tracking.runs import CampaignRecord, ending, start_campaign_run
from crackdet.workflows.models import (
    REGISTRY_SCHEMES,
    checkpoint_folder,
    load_model,
    model_identity,
    model_lineage,
    ood_beside,
)
from crackdet.workflows.predict import photo_files

# A sheet of every photo would grow with the campaign (~1 MB a photo in the driver) and show
# nothing at thousands: it shows the first ones; index.html has them all.
CONTACT_SHEET_PHOTOS = 60
TABLE = "photos.csv"  # the per-photo summary table, artifact campaign/photos.csv
REUSED = "reused"  # its last column: true where an earlier run's complete outputs were kept


@dataclass
class Campaign:
    """What a campaign did: counts and the failures (one line each), where, and how fast. The
    per-photo summaries are not kept: they stream into the run's ``campaign/photos.csv``."""

    photos: int
    mapped: int = 0  # mapped by this campaign
    skipped: int = 0  # complete outputs of an earlier run kept
    failed: list[str] = field(default_factory=list)
    out: str = ""
    seconds: float = 0.0  # the photo loop's, from the first photo handed over to the last back
    # Until the first photo came back: the start-up (Ray's actors, the model load) and a photo.
    first_seconds: float = 0.0
    run_id: str = ""
    executor: str = "local"
    # Traced photos whose crack table could not be read back for cracks.csv (one line each).
    tables_missing: list[str] = field(default_factory=list)

    @property
    def photos_per_hour(self) -> float:
        return self.mapped / self.seconds * 3600 if self.seconds else 0.0


def folder_for_worker(reference: str, root: Path) -> Path | None:
    """The model's checkpoint folder as a worker sees it (picklable by reference)."""
    folder = checkpoint_folder(reference, Layout(root))
    return folder.resolve() if folder is not None else None


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
        # Dense heads (crack pixels): each worker finds the checkpoint folder itself (a
        # registry version is downloaded where it runs).
        partial(folder_for_worker, model_ref, layout.root),
    )
    # Workers run in folders of their own: a local --out is given to them as an absolute path.
    work = CampaignWork(inner, out if is_s3(out) else str(Path(out).resolve()))
    where = f"ray {ray}" if ray else "local"
    # Where the photos came from and the outputs went, as any machine reads it later.
    named = [s if is_s3(s) else str(Path(s).resolve()) for s in (*sources, out)]
    run = start_campaign_run(layout.root, f"campaign {len(photos)} photos -> {out}")
    with ending(run):  # a store lost from here on is one line, the run marked FAILED
        version, trained_by = model_lineage(model_ref, layout)
        record = CampaignRecord(
            ", ".join(named[:-1]),
            named[-1],
            where,
            identity.label,
            identity.digest,
            version,
            trained_by,
        )
        mlflow.set_tags({**git_state(layout.root), **record.tags()})
        mlflow.log_params({f"predict.{k}": v for k, v in flatten(asdict(cfg)).items()})
        campaign = Campaign(len(photos), out=out, run_id=run.info.run_id, executor=where)
        scratch = Path(tempfile.mkdtemp(prefix="crackdet-campaign-table-"))
        try:
            outcomes = run_photos(work, items, executor, "predict")
            sheet, traced = _map_all(campaign, outcomes, scratch)
            if not is_s3(out) and (campaign.mapped or campaign.skipped or campaign.failed):
                _write_report(campaign, sources, sheet, scratch / TABLE)
            cracks = _write_cracks(campaign, traced, scratch)
            _log_campaign(campaign, scratch / TABLE, cracks)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return campaign


@dataclass(frozen=True, order=True)
class TracedPhotoKey:
    """A traced photo's place in the campaign's crack table (the report's order: worst first)
    and where its own table is."""

    order: tuple
    photo: str
    stem: str

    @classmethod
    def of(cls, summary: PhotoSummary) -> TracedPhotoKey:
        return cls(worst_first(summary), summary.photo, summary.outputs)


def _map_all(
    campaign: Campaign, outcomes: Iterator[PhotoOutcome], scratch: Path
) -> tuple[list[PhotoSummary], list[TracedPhotoKey]]:
    """Count the outcomes into ``campaign`` as they come, each photo's summary a row of
    ``scratch/photos.csv``: the driver keeps counts and failures, not one record a photo.
    Returns the first CONTACT_SHEET_PHOTOS summaries (the contact sheet's) and, for each photo
    whose cracks were traced, where its crack table goes in the campaign's (a few numbers)."""
    sheet: list[PhotoSummary] = []
    traced: list[TracedPhotoKey] = []
    names = [f.name for f in fields(PhotoSummary)]
    start = time.perf_counter()
    with (scratch / TABLE).open("w", newline="") as handle:
        table = csv.DictWriter(handle, fieldnames=[*names, REUSED])
        table.writeheader()
        for outcome in outcomes:
            if not campaign.first_seconds:
                campaign.first_seconds = time.perf_counter() - start
            if outcome.summary is None:
                campaign.failed.append(outcome.error)
                continue
            reused = outcome.seconds is None
            campaign.skipped += reused
            campaign.mapped += not reused
            table.writerow({**outcome.summary.to_dict(), REUSED: str(reused).lower()})
            if len(sheet) < CONTACT_SHEET_PHOTOS:
                sheet.append(outcome.summary)
            if outcome.summary.traced:
                traced.append(TracedPhotoKey.of(outcome.summary))
    campaign.seconds = time.perf_counter() - start
    return sheet, traced


def _write_cracks(campaign: Campaign, traced: list[TracedPhotoKey], scratch: Path) -> Path | None:
    """The campaign's crack table, ``scratch/cracks.csv``: every traced photo's cracks (mapped
    now or kept from an earlier run), worst photo first as the report orders them, read from
    the outputs one photo at a time. An S3 ``--out`` gets it as its ``cracks.csv`` (a local one
    gets its folder's from the report); None where no photo was traced. A photo whose table
    cannot be read is left out of it, named in ``campaign.tables_missing``: its outputs and
    the rest of the campaign's record stand."""

    def tables() -> Iterator[tuple[str, str]]:
        for key in sorted(traced):
            try:
                yield key.photo, read_output_text(campaign.out, f"{key.stem}{CRACK_TABLE}")
            except (CrackdetError, OSError, UnicodeDecodeError) as exc:
                campaign.tables_missing.append(f"{key.photo}: {first_line(str(exc))}")

    path = write_folder_cracks(scratch / FOLDER_CRACKS, tables())
    if campaign.tables_missing:
        print(
            f"predict: {len(campaign.tables_missing)} photos' crack tables could not be read "
            f"and are left out of cracks.csv: {'; '.join(campaign.tables_missing[:3])}"
        )
    if path is not None and is_s3(campaign.out):
        upload_output(path, campaign.out)
    return path


def _write_report(
    campaign: Campaign, sources: list[str], sheet: list[PhotoSummary], table: Path
) -> None:
    """A local ``--out``'s contact sheet and ``index.html``: every photo with complete outputs
    in the folder (this campaign's and earlier ones'), as a local ``crackdet predict`` writes
    them; read back from the folder, so held only while the report is written."""
    folder = Path(campaign.out)
    if sheet:
        write_contact_sheet(folder, sheet)
    with table.open(newline="") as handle:
        reused = [row["photo"] for row in csv.DictReader(handle) if row[REUSED] == "true"]
    report = MappedPhotos(mapped_before(folder, set()), campaign.failed, skipped=reused)
    # The title a local ``crackdet predict`` gives: the same report.
    names = ", ".join(s.rstrip("/").rsplit("/", 1)[-1] for s in sources)
    write_report(folder, report, f"Crack maps: {names}")


def _log_campaign(campaign: Campaign, table: Path, cracks: Path | None) -> None:
    import mlflow  # ~1.3 s to import: only where a run is logged

    mlflow.log_metrics(
        {
            "photos": campaign.photos,
            "mapped": campaign.mapped,
            "skipped": campaign.skipped,
            "failed": len(campaign.failed),
            "seconds": campaign.seconds,
            "seconds_to_first": campaign.first_seconds,
            "photos_per_hour": campaign.photos_per_hour,
        }
    )
    if campaign.mapped or campaign.skipped:
        mlflow.log_artifact(str(table), "campaign")
    if cracks is not None:  # the crack table of every photo traced
        mlflow.log_artifact(str(cracks), "campaign")
    report = {
        "photos": campaign.photos,
        "mapped": campaign.mapped,
        "skipped": campaign.skipped,
        "failed": campaign.failed,
        "crack_tables_missing": campaign.tables_missing,
        "seconds": round(campaign.seconds, 3),
        "executor": campaign.executor,
        "out": campaign.out,
    }
    mlflow.log_dict(report, "campaign/report.json")
