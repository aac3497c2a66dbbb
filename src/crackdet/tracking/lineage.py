"""Lineage you can read: ``crackdet trace`` says which commit, params, data and weights made a
run or a registered model (the replay is crackdet.tracking.replay).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.params import flatten
from crackdet.tracking.runs import CAMPAIGN_STAGE, STAGE_TAG, CampaignRecord
from crackdet.tracking.store import server_unreachable


def resolve_run(client: Any, target: str) -> tuple[Any, list[Any]]:
    """A run id, ``models:/name@alias`` or ``models:/name/version`` → (run, its model versions)."""
    from mlflow.exceptions import MlflowException  # MLflow (~1.3 s): only when a run is looked up

    run_id = target
    try:
        if target.startswith("models:/"):
            ref = target[len("models:/") :]
            if "@" in ref:
                name, alias = ref.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            elif "/" in ref:
                name, number = ref.split("/", 1)
                version = client.get_model_version(name, number)
            else:
                raise CrackdetError(f"{target}: use models:/NAME@ALIAS or models:/NAME/VERSION")
            if not version.run_id:
                raise CrackdetError(f"{target}: version {version.version} names no MLflow run")
            run_id = version.run_id
        run = client.get_run(run_id)
        versions = client.search_model_versions(f"run_id='{run_id}'")
    except MlflowException as exc:
        # A server that does not answer is not a missing run: say which server, not "not found".
        lost = server_unreachable(exc, f"looking up {target}")
        if lost is not None:
            raise lost from None
        raise CrackdetError(
            f"{target}: not found in the MLflow store ({first_line(exc)})"
        ) from None
    return run, sorted(versions, key=lambda v: (v.name, int(v.version)))


def run_params(run: Any) -> dict[str, str]:
    """The params a run ended with: logged params, overridden by ``params.<key>`` tags.

    MLflow params are immutable; a later stage rerun with a changed value records it as a tag
    (crackdet.tracking.runs.log_stage_params), and that tag is the value the run's outputs used.
    """
    params = dict(run.data.params)
    for key, value in run.data.tags.items():
        if key.startswith("params."):
            params[key[len("params.") :]] = value
    return params


# Sections no stage reads (the CI gate's tolerance): runs do not record them, so they are not
# compared either.
NOT_PIPELINE = ("ci.",)


def workspace_params(root: Path) -> dict[str, str]:
    try:
        tree = yaml.safe_load((root / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(tree, dict):
        return {}
    return {k: str(v) for k, v in flatten(tree).items() if not k.startswith(NOT_PIPELINE)}


def params_diff(recorded: dict[str, str], current: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, run value, workspace value) for every key that differs; '-' where absent. Numbers
    compare as numbers: a float key written 10 in params.yaml is logged as 10.0."""
    keys = sorted(set(recorded) | set(current))
    return [
        (k, recorded.get(k, "-"), current.get(k, "-"))
        for k in keys
        if not _same(recorded.get(k, "-"), current.get(k, "-"))
    ]


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def model_locations(client: Any, run: Any, versions: list[Any]) -> list[str]:
    lines = [f"run artifacts: {run.info.artifact_uri}"]
    for version in versions:
        # search_model_versions leaves aliases empty; the registered model has the mapping.
        aliases = client.get_registered_model(version.name).aliases
        where = version.source
        if version.source.startswith("models:/m-"):
            try:
                where = client.get_logged_model(version.source[len("models:/") :]).artifact_location
            except Exception:  # an older server without logged models: keep the models:/ URI
                where = version.source
        names = sorted(a for a, n in aliases.items() if str(n) == str(version.version))
        tag = f" @{',@'.join(names)}" if names else ""
        lines.append(f"models:/{version.name}/{version.version}{tag}: {where}")
    return lines


def trace(client: Any, target: str, root: Path) -> dict[str, Any]:
    """Everything needed to say where a run's figures came from (``crackdet trace``); for a
    campaign's run, what it mapped with what and where, and the lineage of its model."""
    run, versions = resolve_run(client, target)
    tags = run.data.tags
    if tags.get(STAGE_TAG) == CAMPAIGN_STAGE:
        return _campaign_trace(client, run, root)
    recorded = run_params(run)
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "git_commit": tags.get("git.commit", "unknown"),
        "git_dirty": tags.get("git.dirty", "unknown"),
        "dvc_exp_name": tags.get("dvc.dvc_exp_name", "-"),
        "params": recorded,
        "params_diff": params_diff(recorded, workspace_params(root)),
        "data": {k: v for k, v in sorted(tags.items()) if k.startswith("data.")},
        "dvc_lock": {k: v for k, v in sorted(tags.items()) if k.startswith("dvc.") and "/" in k},
        "metrics": dict(sorted(run.data.metrics.items())),
        "model": model_locations(client, run, versions),
        "versions": [f"{v.name}/{v.version}" for v in versions],
    }


def format_trace(info: dict[str, Any]) -> str:
    if info.get("kind") == CAMPAIGN_STAGE:
        return "\n".join(_format_campaign(info))
    lines = [
        f"run        {info['run_id']} ({info['run_name']}, {info['status']})",
        f"git        {info['git_commit']} dirty={info['git_dirty']}",
        f"dvc exp    {info['dvc_exp_name']}",
        "data",
        *(f"  {k}: {v}" for k, v in info["data"].items()),
        "dvc.lock",
        *(f"  {k}: {v}" for k, v in info["dvc_lock"].items()),
        f"params     {len(info['params'])} recorded; diff against the workspace params.yaml:",
    ]
    if info["params_diff"]:
        width = max(len(k) for k, _, _ in info["params_diff"])
        lines.append(f"  {'key'.ljust(width)}  run -> workspace")
        lines += [f"  {k.ljust(width)}  {a} -> {b}" for k, a, b in info["params_diff"]]
    else:
        lines.append("  (identical)")
    lines.append("metrics")
    lines += [f"  {k}: {v:g}" for k, v in info["metrics"].items()]
    lines.append("model files")
    lines += [f"  {line}" for line in info["model"]]
    return "\n".join(lines)


def _campaign_trace(client: Any, run: Any, root: Path) -> dict[str, Any]:
    """A campaign's run: its model (version, digest, and the trace of the run that trained
    it), settings (and how they differ from the workspace's), photos, outputs, counts."""
    record = CampaignRecord.from_tags(run.data.tags)
    settings = run_params(run)
    sections = {key.split(".", 1)[0] + "." for key in settings}
    current = {k: v for k, v in workspace_params(root).items() if k.startswith(tuple(sections))}
    trained: dict[str, Any] | None = None
    missing = ""
    if record.model_run:
        try:
            trained = trace(client, record.model_run, root)
        except CrackdetError as exc:  # a run of another store, or deleted: say so, go on
            missing = str(exc)
    else:
        missing = "no run of this MLflow store trained this model"
    return {
        "kind": CAMPAIGN_STAGE,
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "git_commit": run.data.tags.get("git.commit", "unknown"),
        "git_dirty": run.data.tags.get("git.dirty", "unknown"),
        "campaign": asdict(record),
        "settings": settings,
        "settings_diff": params_diff(settings, current) if current else [],
        "counts": dict(sorted(run.data.metrics.items())),
        "artifacts": f"{run.info.artifact_uri}/{CAMPAIGN_STAGE}",
        "trained_by": trained,
        "trained_by_missing": missing,
    }


def _format_campaign(info: dict[str, Any]) -> list[str]:
    record, counts = info["campaign"], info["counts"]
    version = f", registered as {record['model_version']}" if record["model_version"] else ""
    lines = [
        f"campaign   {info['run_id']} ({info['run_name']}, {info['status']})",
        f"git        {info['git_commit']} dirty={info['git_dirty']}",
        f"model      {record['model']}{version}",
        f"  digest   {record['model_digest']} (the outputs' made_from.model)",
        f"photos     {record['input']}",
        f"outputs    {record['output']}",
        f"executor   {record['executor']}",
        "counts     "
        + ", ".join(
            f"{k} {counts[k]:g}" for k in ("photos", "mapped", "skipped", "failed") if k in counts
        ),
    ]
    if "seconds" in counts:
        rate = counts.get("photos_per_hour", 0.0)
        lines.append(f"  time     {counts['seconds']:.1f} s, {rate:.0f} photos/h")
    lines.append(f"  tables   {info['artifacts']}/photos.csv, report.json (the failures)")
    lines.append(f"settings   {len(info['settings'])} recorded:")
    lines += [f"  {k}: {v}" for k, v in sorted(info["settings"].items())]
    if info["settings_diff"]:
        width = max(len(k) for k, _, _ in info["settings_diff"])
        lines.append("  differ from the workspace params.yaml:")
        lines.append(f"    {'key'.ljust(width)}  run -> workspace")
        lines += [f"    {k.ljust(width)}  {a} -> {b}" for k, a, b in info["settings_diff"]]
    trained = info["trained_by"]
    if trained is None:
        lines.append(f"trained by {info['trained_by_missing']}")
    else:
        lines.append(f"trained by run {trained['run_id']}:")
        lines += [f"  {line}" for line in format_trace(trained).splitlines()]
    return lines
