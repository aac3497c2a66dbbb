"""The MLflow model registry as crackdet uses it: versions, aliases, the promotion log, and
loading a registered (pt2) model with the spec crackdet's predict and evaluate expect.

The registry keeps no alias history, so every alias move is appended to a log kept twice in
MLflow: as a registered-model tag ``promotion_log.<seq>`` (JSON, never overwritten) and as an
artifact ``promotions/<seq>.json`` in the run that produced the version; the registered model's
description shows it as a table, and every version gets a markdown description
(crackdet.tracking.descriptions). Promotions hold a lock (:func:`promotion_lock`), so parallel
experiments never interleave them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tenacity import RetryCallState, Retrying, retry_if_exception_type
from torch import nn

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import sha256_file
from crackdet.model.classifier import ModelSpec
from crackdet.tracking.descriptions import VersionCard, promotion_table, version_description
from crackdet.tracking.runs import HOST_TAG, MODEL_SHA_TAG, PID_TAG, owner_gone, owner_tags
from crackdet.tracking.serving import MODEL_FOLDER

CHAMPION = "champion"
CHALLENGER = "challenger"
KEY_METRICS = ("f1", "accuracy", "roc_auc")  # order = tie-break order of "beats or ties"
LOG_PREFIX = "promotion_log."
DIGITS = 6  # version tags hold metrics with 6 decimals; compare at that precision


def _mlflow_error() -> type[Exception]:
    """MLflow's exception type: MLflow (~1.3 s to import) loads only once the registry is used."""
    from mlflow.exceptions import MlflowException  # see above

    return MlflowException


def register(model_uri: str, name: str, tags: dict[str, str]) -> int:
    """A new version of ``name`` in the MLflow model registry, tagged with its lineage."""
    import mlflow  # ~1.3 s to import: only where the registry is used

    return int(mlflow.register_model(model_uri, name, tags=tags).version)


def registered_version(
    client: Any, name: str, run_id: str, model_uri: str, model_sha256: str
) -> Any | None:
    """The version of ``name`` that already holds this run's checkpoint: same run and same
    model digest (tag ``crackdet.model_sha256``; a version registered before that tag existed:
    the same logged model). None when there is none."""
    try:
        versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except _mlflow_error():
        return None  # no registered model of that name yet
    for version in sorted(versions, key=lambda v: int(v.version)):
        digest = version.tags.get(MODEL_SHA_TAG)
        if digest == model_sha256 or (digest is None and version.source == model_uri):
            return version
    return None


def register_once(
    client: Any, model_uri: str, name: str, tags: dict[str, str], model_sha256: str
) -> tuple[int, bool]:
    """The version of ``name`` holding this run's checkpoint, registered now unless one already
    does (a second clone's ``dvc repro`` re-evaluates a pulled checkpoint: no duplicate
    version). Returns the version number and whether it is new."""
    existing = registered_version(client, name, tags["run_id"], model_uri, model_sha256)
    if existing is not None:
        return int(existing.version), False
    return register(model_uri, name, {**tags, MODEL_SHA_TAG: model_sha256}), True


def version_standing(client: Any, name: str, version: int) -> dict[str, str]:
    """The aliases a version holds (comma-separated, "" for none) and its validation status."""
    aliases = client.get_registered_model(name).aliases
    held = sorted(alias for alias, number in aliases.items() if str(number) == str(version))
    status = get_version(client, name, version).tags.get("validation_status", "")
    return {"alias": ",".join(held), "validation_status": status}


def version_of(client: Any, uri: str) -> Any | None:
    """The registered version ``models:/name@alias`` or ``models:/name/N`` names (None for
    other URIs or when the registry does not know it)."""
    path = uri.removeprefix("models:/")
    if path == uri:
        return None
    try:
        if "@" in path:
            name, alias = path.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, number = path.rpartition("/")
        return client.get_model_version(name, number) if number.isdigit() else None
    except _mlflow_error():
        return None


def version_metrics(version: Any) -> dict[str, float]:
    """Test metrics from a version's ``test_*`` tags; a version without them cannot be judged."""
    try:
        return {k: round(float(version.tags[f"test_{k}"]), DIGITS) for k in KEY_METRICS}
    except (KeyError, ValueError):
        raise CrackdetError(
            f"model version {version.name} v{version.version}: missing test_* metric tags "
            "(registered outside the evaluate stage?)"
        ) from None


def alias_holder(client: Any, name: str, alias: str) -> Any | None:
    """The version holding ``alias``, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except _mlflow_error():
        return None


def get_version(client: Any, name: str, version: str | int) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except _mlflow_error() as exc:
        raise CrackdetError(
            f"model {name} v{version}: not in the registry ({first_line(exc)})"
        ) from None


def read_log(client: Any, name: str) -> list[dict[str, Any]]:
    """The promotion log, oldest first."""
    try:
        tags = client.get_registered_model(name).tags
    except _mlflow_error():
        raise CrackdetError(f"model {name}: not in the registry (run the pipeline first)") from None
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(LOG_PREFIX)]
    return sorted(entries, key=lambda e: e["seq"])


def append_log(client: Any, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append one entry (tag + artifact); existing entries are never rewritten. The registered
    model's description shows the whole log as a table (MLflow's UI renders it). Call it under
    :func:`promotion_lock`: the next sequence number is read, then written."""
    entries = read_log(client, name)
    seq = max((e["seq"] for e in entries), default=0) + 1
    entry = {"seq": seq, **entry}
    text = json.dumps(entry, sort_keys=True)
    client.set_registered_model_tag(name, f"{LOG_PREFIX}{seq:06d}", text)
    version = get_version(client, name, entry["to"])
    if version.run_id:
        client.log_text(version.run_id, text, f"promotions/{seq:06d}.json")
    client.update_registered_model(name, description=promotion_table(name, [*entries, entry]))
    return entry


def describe_version(client: Any, card: VersionCard) -> None:
    """Give a registered version its markdown description (figures, data, commit, replay)."""
    client.update_model_version(card.name, str(card.version), description=version_description(card))


# --------------------------------------------------------------------------------------------
# one promotion at a time, across processes and machines
# --------------------------------------------------------------------------------------------

LOCK_SUFFIX = ".promotion-lock"
LOCK_WAIT_SECONDS = 600.0  # a promotion takes seconds; re-scoring a champion, a minute or two
LOCK_STALE_SECONDS = 1800.0  # a lock this old was left by a process that died


@contextmanager
def promotion_lock(client: Any, name: str) -> Iterator[None]:
    """Hold the promotion lock of ``name``: judging a candidate against the champion, moving
    an alias and appending to the log must not interleave with another promotion (two queued
    experiments evaluating at once would both read the same champion and log sequence number).

    The lock is a registered model ``<name>.promotion-lock``, deleted when done: the store's
    unique model name makes creating it atomic on SQLite and on a tracking server alike. A
    lock whose owner died on this host, or older than LOCK_STALE_SECONDS, is broken."""
    lock = f"{name}{LOCK_SUFFIX}"
    retrying = Retrying(
        retry=retry_if_exception_type(_LockBusyError),
        # A live owner is waited for, LOCK_WAIT_SECONDS at most; a lock released or broken
        # meanwhile is tried again at once.
        wait=lambda state: 0.5 if _held(state) else 0.0,
        stop=lambda state: _held(state) and state.seconds_since_start > LOCK_WAIT_SECONDS,
        reraise=True,
    )
    try:
        retrying(_take_lock, client, name, lock)
    except _LockBusyError as taken:
        holder = taken.holder
        owner = f"pid {holder.tags.get(PID_TAG, '?')} on {holder.tags.get(HOST_TAG, '?')}"
        raise CrackdetError(
            f"model {name}: another promotion ({owner}) has held registered model {lock} for "
            f"{taken.age:.0f} s; wait for it, or delete {lock} if no promotion is running"
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(_mlflow_error()):
            client.delete_registered_model(lock)


class _LockBusyError(Exception):
    """The promotion lock was not taken: held by ``holder`` for ``age`` seconds, or (holder
    None) released or broken meanwhile."""

    def __init__(self, holder: Any | None, age: float = 0.0) -> None:
        super().__init__(holder)
        self.holder = holder
        self.age = age


def _held(state: RetryCallState) -> bool:
    """Whether the last try found the lock held by a live owner."""
    assert state.outcome is not None
    taken = state.outcome.exception()
    return isinstance(taken, _LockBusyError) and taken.holder is not None


def _take_lock(client: Any, name: str, lock: str) -> None:
    """One try at the promotion lock: create it, or break a dead owner's (else _LockBusyError)."""
    try:
        client.create_registered_model(
            lock, tags=owner_tags(), description=f"held while crackdet moves an alias of {name}"
        )
        return
    except _mlflow_error() as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    holder = _lock_holder(client, lock)
    if holder is None:
        raise _LockBusyError(None)
    age = time.time() - holder.creation_timestamp / 1000
    if owner_gone(holder.tags) or age > LOCK_STALE_SECONDS:
        print(f"promote: breaking the promotion lock of {name} left by a dead process")
        with contextlib.suppress(_mlflow_error()):
            client.delete_registered_model(lock)
        raise _LockBusyError(None)
    raise _LockBusyError(holder, age)


def _lock_holder(client: Any, lock: str) -> Any | None:
    try:
        return client.get_registered_model(lock)
    except _mlflow_error():
        return None


def list_versions(client: Any, name: str) -> list[dict[str, Any]]:
    """Versions newest first with aliases and key metrics (for ``crackdet models``)."""
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise CrackdetError(f"model {name}: no versions in the registry (run the pipeline first)")
    # search_model_versions leaves aliases empty; the registered model has the mapping.
    aliases: dict[str, list[str]] = {}
    for alias, number in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        rows.append(
            {
                "version": int(v.version),
                "aliases": ",".join(sorted(aliases.get(str(v.version), []))) or "-",
                "accuracy": v.tags.get("test_accuracy", "-"),
                "f1": v.tags.get("test_f1", "-"),
                "roc_auc": v.tags.get("test_roc_auc", "-"),
                "validation": v.tags.get("validation_status", "-"),
                "split": v.tags.get("data.split_fingerprint", "")[:12] or "-",
                "commit": v.tags.get("git.commit", "")[:10] or "-",
                "run_id": v.run_id or "-",
            }
        )
    return rows


class RegistryClassifier(nn.Module):
    """A registry (pt2) model with the ``.spec`` that crackdet's predict and evaluate expect.

    Exported pt2 modules refuse ``.eval()``/``.train()``; they are inference-only already, so the
    module is kept outside the submodule tree where those calls would reach it.
    """

    def __init__(self, exported: Any, spec: Any, digest: str = "") -> None:
        super().__init__()
        object.__setattr__(self, "_exported", exported)
        self.spec = spec
        self.digest = digest  # sha256 of the pt2 file: what identifies these weights

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._exported(images)


_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_FOLDERS: dict[str, Path] = {}  # registry URI -> its downloaded crackdet/ folder, per process


def registry_folder(uri: str) -> Path | None:
    """The checkpoint folder (``crackdet/``: weights, spec, OOD model, exported graph) that a
    model logged by crackdet train carries, downloaded once per process into a temporary
    folder removed at exit; None for a model logged without it (an older pt2-only version)."""
    if uri in _FOLDERS:
        return _FOLDERS[uri]
    import mlflow  # ~1.3 s to import: only when a registry model is asked for
    import mlflow.artifacts

    client = mlflow.MlflowClient()
    version = version_of(client, uri)
    source = version.source if version is not None else uri
    scratch = Path(tempfile.mkdtemp(prefix="crackdet-model-"))
    atexit.register(shutil.rmtree, scratch, True)
    # MLflow's download bar would land in the logs of every stage and command that loads one.
    bar = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        if source.startswith("models:/m-"):  # a logged model: fetch only its crackdet/ folder
            location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
            target = f"{location.rstrip('/')}/{MODEL_FOLDER}"
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=target, dst_path=scratch))
        else:
            whole = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch)
            local = Path(whole) / MODEL_FOLDER
    except _mlflow_error():
        return None  # no crackdet/ folder, or no such model: load_registry_model says which
    finally:
        if bar is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = bar
    found = local if (local / "model.json").is_file() else None
    if found is not None:
        _FOLDERS[uri] = found
    return found


@dataclass(frozen=True)
class _MinimalSpec:
    patch_size: int


def load_registry_model(uri: str) -> RegistryClassifier:
    """Load ``models:/name@alias`` or ``models:/name/version`` (offline) with its patch size."""
    # MLflow's model loaders (~1.3 s to import): only when a registry model is asked for.
    import mlflow.artifacts
    import mlflow.models
    import mlflow.pytorch

    try:
        info = mlflow.models.get_model_info(uri)
        local = Path(mlflow.artifacts.download_artifacts(uri))
        # MLflow's "pickle" format runs arbitrary code when loaded: only pt2 is accepted.
        if not (local / "data" / "model.pt2").is_file():
            raise CrackdetError(
                f"{uri}: not stored in the pickle-free pt2 format (loading it would unpickle "
                "code); re-log it with serialization_format='pt2', as crackdet train does"
            )
        exported = mlflow.pytorch.load_model(str(local))
        digest = sha256_file(local / "data" / "model.pt2")
    except _mlflow_error() as exc:
        raise CrackdetError(f"{uri}: cannot load from the registry ({first_line(exc)})") from None
    meta = (info.metadata or {}).get("crackdet_spec")
    if meta:
        spec: Any = ModelSpec.from_dict(meta)
    else:
        # Versions logged before the spec metadata existed: the signature's NCHW shape says it.
        try:
            shape = info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]
            spec = _MinimalSpec(int(shape[-1]))
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            raise CrackdetError(f"{uri}: no crackdet_spec metadata or input signature") from None
    return RegistryClassifier(exported, spec, digest)
