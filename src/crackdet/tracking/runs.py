"""The pipeline's MLflow run: train creates it, evaluate and predict_samples resume it.

One pipeline execution = one MLflow run. ``train`` creates it and tags it with the sha256 of the
checkpoint it wrote (``crackdet.model_sha256``) and the logged model's URI; ``evaluate`` and
``predict_samples`` resume the run that made the checkpoint in front of them: the one
``outputs/train/run.json`` names when its digest matches, else the newest run of the store
tagged with that digest (a queued experiment's workspace, or a checkout whose model DVC
restored from its cache). The run id is deliberately not a DVC output: it differs on every run,
and DVC's outputs must be the same bytes for the same code, params and data. A run
records the pid and host that own it; a run left RUNNING by a process killed with SIGKILL is
marked KILLED by the next run start on that host (:func:`mark_orphaned_runs`).

``crackdet eval`` and ``crackdet eval-maps`` log runs of their own to experiment
``crackdet-evaluations`` (:func:`start_evaluation_run`), started before the work. Every run is
ended by :func:`ending`: FINISHED, or FAILED on an error, and a tracking server that stops
answering mid-run is one line naming it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import sha256_file, write_json
from crackdet.core.layout import Layout
from crackdet.core.params import flatten
from crackdet.tracking.provenance import git_state
from crackdet.tracking.redact import redact, source_name
from crackdet.tracking.store import (
    CAMPAIGNS,
    EVALUATIONS,
    EXPERIMENT_NAME,
    init_store,
    server_errors,
    server_unreachable,
    tracking_uri,
    with_outcome,
    without_retries,
)

MODEL_SHA_TAG = "crackdet.model_sha256"
# `dvc repro --force train` would rerun fetch, split and train but not what reads the checkpoint.
RERUN_TRAIN = "rerun train and the stages after it: dvc repro --force --downstream train"
MODEL_URI_TAG = "crackdet.model_uri"
STAGE_TAG = "crackdet.stage"  # pipeline, campaign, or the evaluation command
CAMPAIGN_STAGE = "campaign"


@dataclass(frozen=True)
class RunInfo:
    """The pipeline run that trained a checkpoint (``outputs/train/run.json``, beside it)."""

    run_id: str
    model_uri: str
    model_sha256: str

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> RunInfo | None:
        """The record, or None when the file is absent or unreadable (then the store is asked)."""
        try:
            data = json.loads(path.read_text())
            return cls(str(data["run_id"]), str(data["model_uri"]), str(data["model_sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class CampaignRecord:
    """What a campaign's run says of it in ``campaign.*`` tags (``crackdet trace`` reads them
    back); the settings are its ``predict.*`` params, the counts its metrics."""

    input: str  # the photo folders and s3:// prefixes, comma-separated
    output: str
    executor: str  # "local" or "ray ADDRESS"
    model: str  # as the outputs name it
    model_digest: str  # what the outputs' made_from carries
    model_version: str = ""  # NAME/N of a registry model ("" for a checkpoint folder)
    model_run: str = ""  # the pipeline run that trained it ("" when this store has none)

    def tags(self) -> dict[str, str]:
        return {f"{CAMPAIGN_STAGE}.{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> CampaignRecord:
        return cls(**{f.name: tags.get(f"{CAMPAIGN_STAGE}.{f.name}", "") for f in fields(cls)})


def model_tags(model_uri: str, model_sha256: str) -> dict[str, str]:
    """What train tags its run with, so the run of a checkout's checkpoint can be found."""
    return {MODEL_SHA_TAG: model_sha256, MODEL_URI_TAG: model_uri}


def run_of_model(layout: Layout) -> RunInfo:
    """The run that trained ``outputs/train/model.pt`` (see the module docstring)."""
    import mlflow  # ~1.3 s to import: only where a run is logged

    shown = layout.train.model.relative_to(layout.root)
    try:
        digest = sha256_file(layout.train.model)
    except FileNotFoundError:
        raise CrackdetError(f"{shown}: not found; run the train stage first") from None
    recorded = RunInfo.read(layout.train.run)
    if recorded is not None and recorded.model_sha256 == digest:
        return recorded
    experiment_id = init_store(layout.root)
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{MODEL_SHA_TAG}` = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise CrackdetError(
            f"{shown}: no run in the MLflow store {tracking_uri(layout.root)} trained this "
            f"checkpoint (sha256 {digest[:12]}); {RERUN_TRAIN}"
        )
    tags = runs[0].data.tags
    return RunInfo(runs[0].info.run_id, tags.get(MODEL_URI_TAG, ""), digest)


def run_of_checkpoint(client: Any, folder: Path) -> str:
    """The pipeline run of this store that trained the checkpoint in ``folder`` ("" when none
    did): the one its ``run.json`` names when the digest matches, else the newest run tagged
    with the digest (as :func:`run_of_model`, without its errors: a campaign maps with any
    checkpoint, and its lineage says when the store does not know it)."""
    try:
        digest = sha256_file(folder / "model.pt")
    except OSError:
        return ""
    recorded = RunInfo.read(folder / "run.json")
    if recorded is not None and recorded.model_sha256 == digest:
        return recorded.run_id
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return ""
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{MODEL_SHA_TAG}` = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else ""


# --------------------------------------------------------------------------------------------
# run ownership: a SIGKILLed process cannot end its run, so the next run start does it
# --------------------------------------------------------------------------------------------

PID_TAG = "crackdet.pid"
HOST_TAG = "crackdet.host"
START_TAG = "crackdet.pid_start"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so count from its closing paren.
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns the active run (checked by mark_orphaned_runs)."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), START_TAG: _process_start(pid) or ""}


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    current = _process_start(pid)
    return not (start and current is not None and current != start)


def owner_gone(tags: dict[str, str]) -> bool:
    """Whether ``tags`` (owner_tags) name a process of this host that no longer runs."""
    if tags.get(HOST_TAG) != socket.gethostname():
        return False
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return False
    return pid != os.getpid() and not _alive(pid, tags.get(START_TAG, ""))


def mark_orphaned_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of this host whose owning process is gone; return ids."""
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    killed = []
    for run in runs:
        tags = run.data.tags
        if not owner_gone(tags):
            continue
        pid = tags[PID_TAG]
        client.set_tag(run.info.run_id, "crackdet.killed_reason", f"owner pid {pid} vanished")
        client.set_terminated(run.info.run_id, status="KILLED")
        killed.append(run.info.run_id)
    return killed


def _start_run(root: Path, experiment: str, stage: str, run_name: str | None) -> Any:
    """A new run in ``experiment`` owned by this process, after marking the runs of dead
    processes KILLED."""
    import mlflow  # ~1.3 s to import: only where a run is logged

    experiment_id = init_store(root, experiment)
    with server_errors(f"starting a run in experiment {experiment}"):
        for run_id in mark_orphaned_runs(mlflow.MlflowClient(), experiment_id):
            print(f"MLflow run {run_id} was left RUNNING by a killed process: marked KILLED")
        tags = {STAGE_TAG: stage, **owner_tags()}
        tags["mlflow.source.name"] = source_name(root)
        return mlflow.start_run(run_name=run_name, tags=tags)


def start_pipeline_run(root: Path, run_name: str | None = None) -> Any:
    """Create the run that train, evaluate and predict_samples of this execution share."""
    return _start_run(root, EXPERIMENT_NAME, "pipeline", run_name or pipeline_run_name(root))


def pipeline_run_name(root: Path) -> str:
    """What MLflow's run list shows: the DVC experiment (or ``repro``) and the commit, so a run
    is told apart without opening it (MLflow's default is a random two-word name)."""
    state = git_state(root)
    label = os.environ.get("DVC_EXP_NAME") or "repro"
    commit = state["git.commit"]
    where = commit[:7] if commit != "none" else "no commit"
    changed = " (changed inputs)" if state["git.dirty"] == "true" else ""
    return f"{label} @ {where}{changed}"


def start_evaluation_run(root: Path, stage: str, run_name: str) -> Any:
    """A run of ``crackdet eval``/``eval-maps`` in their own experiment, started before the
    work so its duration is the evaluation's."""
    return _start_run(root, EVALUATIONS, stage, run_name)


def start_campaign_run(root: Path, run_name: str) -> Any:
    """A ``crackdet predict`` campaign's run in its own experiment, started before the work."""
    return _start_run(root, CAMPAIGNS, CAMPAIGN_STAGE, run_name)


# The words server_unreachable's line carries, to tell it from other CrackdetErrors.
_UNREACHABLE = ": unreachable ("


def _lost_server(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking server stopped answering (MLflow's error, or the line
    server_unreachable made of it)."""
    if isinstance(exc, CrackdetError):
        return _UNREACHABLE in str(exc)
    return isinstance(exc, Exception) and server_unreachable(exc) is not None


@contextmanager
def ending(run: Any) -> Iterator[Any]:
    """Yield the active ``run`` and end it: FINISHED, or FAILED on any error.

    A tracking server that stops answering becomes one line naming it, after one more try
    (without retries) to mark the run FAILED; if that fails too, the run stays RUNNING there
    until the next run start on this host marks it KILLED, and the line says so. MLflow's own
    exit hook would otherwise spend a second retry budget on it. A server lost only when the
    run is ended (after other work or another error) gets the same line."""
    import mlflow  # ~1.3 s to import: only where a run is logged

    run_id = run.info.run_id
    doing = f"logging run {run_id}"
    stays = f"run {run_id} stays RUNNING there until the next run start marks it KILLED"
    try:
        yield run
    except BaseException as exc:
        if not _lost_server(exc):
            _end(mlflow, "FAILED", doing, stays)
            raise
        after = f"run {run_id} is marked FAILED"
        try:
            with without_retries():
                mlflow.end_run(status="FAILED")  # ends it locally even when the server is gone
        except Exception:
            after = stays
        if isinstance(exc, CrackdetError):  # a line made inside the run: say what became of it
            raise with_outcome(exc, after) from None
        raise server_unreachable(exc, doing, after) from None
    _end(mlflow, "FINISHED", doing, stays)


def _end(mlflow: Any, status: str, doing: str, stays: str) -> None:
    """End the active run; a server lost now is one line (MLflow ended the run locally)."""
    try:
        mlflow.end_run(status=status)
    except Exception as exc:
        error = server_unreachable(exc, doing, stays)
        if error is None:
            raise
        raise error from None


@contextmanager
def resume_pipeline_run(layout: Layout) -> Iterator[tuple[Any, RunInfo]]:
    """Reopen the run that trained the checkpoint in ``outputs/train``; yields the active run
    and its record."""
    import mlflow  # ~1.3 s to import: only where a run is logged

    root = layout.root
    with server_errors("looking up the run of outputs/train"):
        info = run_of_model(layout)
    run_id = info.run_id
    init_store(root)
    try:
        # Take ownership before the run turns RUNNING again, so no sweep sees a dead owner.
        client = mlflow.MlflowClient()
        for key, value in owner_tags().items():
            client.set_tag(run_id, key, value)
        run = mlflow.start_run(run_id=run_id)
    except Exception as exc:  # MLflow raises its own types for a run it doesn't know
        lost = server_unreachable(exc, f"resuming run {run_id}")
        if lost is not None:
            raise lost from None
        raise CrackdetError(
            f"run {run_id} of {layout.train.model.relative_to(root)} cannot be resumed in the "
            f"MLflow store {tracking_uri(root)} ({first_line(exc)}); {RERUN_TRAIN}"
        ) from None
    with ending(run):
        yield run, info


def log_stage_params(root: Path, section: str, values: dict[str, Any]) -> None:
    """Log a later stage's params section into the resumed run.

    MLflow params are immutable. When evaluate or predict_samples reruns alone with changed
    params, the value train logged stays and the new one is recorded as tag ``params.<key>``.
    """
    import mlflow  # ~1.3 s to import: only where a run is logged

    active = mlflow.active_run()
    assert active is not None, "log_stage_params needs an active run"
    logged = mlflow.get_run(active.info.run_id).data.params
    fresh = {}
    for key, value in flatten({section: values}).items():
        value = redact(value, root)
        if key not in logged:
            fresh[key] = value
        elif logged[key] != str(value):
            mlflow.set_tag(f"params.{key}", str(value))
    if fresh:
        mlflow.log_params(fresh)
