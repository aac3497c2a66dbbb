"""Promotion through the MLflow model registry: gates, aliases, and an append-only promotion log.

Every new ``crack-classifier`` version is tagged with its lineage and test metrics and judged
against the version holding the ``champion`` alias on the same test split (same split
fingerprint; when the fingerprints differ the champion is re-scored on the current split). It
becomes ``champion`` when it passes the gates in ``params.yaml`` (``promote.*``) and beats or ties
the champion, else ``challenger``.

"Beats or ties" compares (F1, accuracy, ROC AUC) lexicographically, rounded to the 6 decimals the
version tags hold. The gates: accuracy >= ``promote.min_accuracy``, F1 >= ``promote.min_f1``, and
no key metric below the champion's by more than ``promote.max_regression``.

The registry keeps no alias history, so every alias move is appended to a log kept twice in
MLflow: as a registered-model tag ``promotion_log.<seq>`` (JSON, never overwritten) and as an
artifact ``promotions/<seq>.json`` in the run that produced the version.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crackdet.errors import CrackdetError, first_line
from crackdet.params import PromoteParams

CHAMPION = "champion"
CHALLENGER = "challenger"
KEY_METRICS = ("f1", "accuracy", "roc_auc")  # order = tie-break order of "beats or ties"
LOG_PREFIX = "promotion_log."
DIGITS = 6  # version tags hold metrics with 6 decimals; compare at that precision

Reevaluator = Callable[[Any], dict[str, float]]


@dataclass
class Decision:
    """The verdict on a candidate: gates passed, whether it beats or ties, and why."""

    passed: bool
    beats: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def alias(self) -> str:
        return CHAMPION if self.passed and self.beats else CHALLENGER

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"


def client_for(root: Path | None = None) -> Any:
    """An MlflowClient on the project's store (``MLFLOW_TRACKING_URI`` wins, as for the stages)."""
    import mlflow

    from crackdet.tracking import repo_root, tracking_uri

    mlflow.set_tracking_uri(tracking_uri(root or repo_root()))
    return mlflow.MlflowClient()


def actor() -> str:
    """Who moved an alias: ``CRACKDET_ACTOR`` (CI sets it), else user@host."""
    if os.environ.get("CRACKDET_ACTOR"):
        return os.environ["CRACKDET_ACTOR"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(client: Any, name: str, version: str | int) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise CrackdetError(
            f"model {name} v{version}: not in the registry ({first_line(exc)})"
        ) from None


def judge(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    gates: PromoteParams,
    champion_label: str = "champion",
) -> Decision:
    """Apply the gates and the beats-or-ties rule (pure: no registry access)."""
    reasons = []
    if candidate["accuracy"] < gates.min_accuracy:
        reasons.append(
            f"accuracy {candidate['accuracy']:.4f} < promote.min_accuracy {gates.min_accuracy}"
        )
    if candidate["f1"] < gates.min_f1:
        reasons.append(f"f1 {candidate['f1']:.4f} < promote.min_f1 {gates.min_f1}")
    if champion is None:
        return Decision(not reasons, True, reasons or ["no champion yet"])
    for key in KEY_METRICS:
        drop = round(champion[key] - candidate[key], DIGITS)
        if drop > gates.max_regression:
            reasons.append(
                f"{key} {candidate[key]:.4f} regresses {drop:.4f} from {champion_label} "
                f"{champion[key]:.4f} (> promote.max_regression {gates.max_regression})"
            )
    passed = not reasons
    beats = tuple(candidate[k] for k in KEY_METRICS) >= tuple(champion[k] for k in KEY_METRICS)
    if passed:
        word = "beats or ties" if beats else "passes the gates but trails"
        reasons.append(
            f"{word} {champion_label} (f1 {candidate['f1']:.4f} vs {champion['f1']:.4f}, "
            f"accuracy {candidate['accuracy']:.4f} vs {champion['accuracy']:.4f})"
        )
    return Decision(passed, beats, reasons)


def champion_metrics(
    client: Any, candidate: Any, champion: Any, reevaluate: Reevaluator | None
) -> tuple[dict[str, float], str]:
    """The champion's metrics on the candidate's test split, and a note on how they were got."""
    fp_new = candidate.tags.get("data.split_fingerprint", "")
    fp_old = champion.tags.get("data.split_fingerprint", "")
    if fp_new and fp_new == fp_old:
        return version_metrics(champion), f"v{champion.version} on the same split {fp_new[:12]}"
    note = (
        f"split fingerprints differ (champion v{champion.version}: {fp_old[:12] or 'none'}, "
        f"v{candidate.version}: {fp_new[:12] or 'none'}): re-evaluated v{champion.version} "
        "on the current split"
    )
    if reevaluate is None:
        raise CrackdetError(
            f"{note.split(':')[0]}; cannot re-evaluate v{champion.version} here (run `dvc repro` "
            f"so outputs/split matches v{candidate.version}, or use --force)"
        )
    print(f"promote: {note}")
    scored = reevaluate(champion)
    return {k: round(float(scored[k]), DIGITS) for k in KEY_METRICS}, note


def read_log(client: Any, name: str) -> list[dict[str, Any]]:
    """The promotion log, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        raise CrackdetError(f"model {name}: not in the registry (run the pipeline first)") from None
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(LOG_PREFIX)]
    return sorted(entries, key=lambda e: e["seq"])


def append_log(client: Any, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append one entry (tag + artifact); existing entries are never rewritten."""
    seq = max((e["seq"] for e in read_log(client, name)), default=0) + 1
    entry = {"seq": seq, **entry}
    text = json.dumps(entry, sort_keys=True)
    client.set_registered_model_tag(name, f"{LOG_PREFIX}{seq:06d}", text)
    version = get_version(client, name, entry["to"])
    if version.run_id:
        client.log_text(version.run_id, text, f"promotions/{seq:06d}.json")
    return entry


def _move_alias(
    client: Any,
    name: str,
    version: Any,
    alias: str,
    *,
    mode: str,
    why: str,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    previous = alias_holder(client, name, alias)
    client.set_registered_model_alias(name, alias, str(version.version))
    return append_log(
        client,
        name,
        {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "who": actor(),
            "alias": alias,
            "from": int(previous.version) if previous is not None else None,
            "to": int(version.version),
            "mode": mode,
            "why": why,
            "metrics": metrics,
        },
    )


def auto_promote(
    client: Any,
    name: str,
    version: str | int,
    gates: PromoteParams,
    reevaluate: Reevaluator | None = None,
) -> tuple[Decision, dict[str, Any]]:
    """Judge a freshly registered version, tag it and give it ``champion`` or ``challenger``."""
    candidate = get_version(client, name, version)
    mine = version_metrics(candidate)
    champ = alias_holder(client, name, CHAMPION)
    theirs, note = None, "no champion yet"
    if champ is not None and champ.version != candidate.version:
        theirs, note = champion_metrics(client, candidate, champ, reevaluate)
    label = f"champion v{champ.version}" if champ is not None else "champion"
    decision = judge(mine, theirs, gates, label)
    client.set_model_version_tag(name, str(candidate.version), "validation_status", decision.status)
    client.set_model_version_tag(
        name, str(candidate.version), "validation_detail", "; ".join(decision.reasons)[:4900]
    )
    entry = _move_alias(
        client,
        name,
        candidate,
        decision.alias,
        mode="auto",
        why="; ".join(decision.reasons),
        metrics={"candidate": mine, "champion": theirs, "compared": note},
    )
    return decision, entry


def manual_promote(
    client: Any,
    name: str,
    version: str | int,
    alias: str,
    reason: str,
    gates: PromoteParams,
    *,
    force: bool = False,
    reevaluate: Reevaluator | None = None,
) -> dict[str, Any]:
    """Move ``alias`` by hand; gated (minimums, regression vs champion) unless ``force``."""
    if not reason.strip():
        raise CrackdetError("promote: --reason must say why (it goes into the promotion log)")
    candidate = get_version(client, name, version)
    mine = version_metrics(candidate)
    theirs, note = None, "no champion compared"
    decision = Decision(True, True, ["forced"])
    if not force:
        champ = alias_holder(client, name, CHAMPION)
        if alias == CHAMPION and champ is not None and champ.version != candidate.version:
            theirs, note = champion_metrics(client, candidate, champ, reevaluate)
        label = f"champion v{champ.version}" if champ is not None else "champion"
        decision = judge(mine, theirs, gates, label)
        if not decision.passed:
            raise CrackdetError(
                f"model {name} v{candidate.version} fails the promotion gates: "
                f"{'; '.join(decision.reasons)} (use --force to override)"
            )
    return _move_alias(
        client,
        name,
        candidate,
        alias,
        mode="forced" if force else "manual",
        why=reason.strip(),
        metrics={"candidate": mine, "champion": theirs, "compared": note},
    )


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


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain aligned text table (no extra dependency)."""
    if not rows:
        return "(none)"
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def format_log(entries: list[dict[str, Any]]) -> str:
    lines = []
    for e in entries:
        source = f"v{e['from']}" if e["from"] is not None else "-"
        cand = e.get("metrics", {}).get("candidate") or {}
        figures = " ".join(f"{k}={cand[k]:.4f}" for k in KEY_METRICS if k in cand)
        lines.append(
            f"#{e['seq']} {e['when']} {e['who']} {e['alias']}: {source} -> v{e['to']} "
            f"[{e['mode']}] {figures} | {e['why']}"
        )
    return "\n".join(lines) or "(no promotions yet)"


class RegistryClassifier(nn.Module):
    """A registry (pt2) model with the ``.spec`` that crackdet's predict and evaluate expect.

    Exported pt2 modules refuse ``.eval()``/``.train()``; they are inference-only already, so the
    module is kept outside the submodule tree where those calls would reach it.
    """

    def __init__(self, exported: Any, spec: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_exported", exported)
        self.spec = spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._exported(images)


@dataclass(frozen=True)
class _MinimalSpec:
    patch_size: int


def load_registry_model(uri: str) -> RegistryClassifier:
    """Load ``models:/name@alias`` or ``models:/name/version`` (offline) with its patch size."""
    import mlflow.artifacts
    import mlflow.models
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    from crackdet.models import ModelSpec

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
    except MlflowException as exc:
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
    return RegistryClassifier(exported, spec)


def workspace_reevaluator(root: Path, candidate: Any, batch_size: int) -> Reevaluator | None:
    """Re-score a version on the workspace's test split, if that split is the candidate's."""
    summary = root / "outputs/split/summary.json"
    try:
        fingerprint = json.loads(summary.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None
    if fingerprint != candidate.tags.get("data.split_fingerprint"):
        return None
    return split_reevaluator(root, candidate.name, batch_size)


def split_reevaluator(root: Path, name: str, batch_size: int) -> Reevaluator:
    """Score a registered version on ``outputs/split/test.csv`` (what evaluate scores)."""

    def score(version: Any) -> dict[str, float]:
        from crackdet.data import read_manifest
        from crackdet.evaluate import evaluate_rows

        model = load_registry_model(f"models:/{name}/{version.version}")
        rows = read_manifest(root / "outputs/split/test.csv")
        metrics = evaluate_rows(model, root / "outputs/fetch/images", rows, batch_size).metrics()
        return {k: float(metrics[k]) for k in KEY_METRICS}  # type: ignore[arg-type]

    return score
