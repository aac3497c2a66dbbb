"""``crackdet ci-check --base REV``: the pull-request gate on params and metrics.

1. ``params.yaml`` is validated against the schema (an invalid file fails the check).
2. ``dvc params diff REV --json`` is shown as a table (DVC exits 0 whatever changed, so the
   verdict is ours).
3. If params, code (``src/``, ``dvc.yaml``, the pins) or ``data.dvc`` changed since REV, the
   pipeline reruns on the embedded default data (``dvc pull data.dvc`` if the photos are absent,
   then ``dvc repro``).
4. ``dvc metrics diff REV --json --all`` is judged: a quality metric that worsens by more than
   ``ci.max_metric_regression`` fails the check. The tolerance is read from REV's params.yaml when
   it has one, so a pull request cannot loosen its own gate.

A markdown report (usable as a pull-request comment) is written either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import write_text
from crackdet.core.params import load_params

HIGHER_IS_BETTER = ("accuracy", "precision", "recall", "f1", "roc_auc", "val_acc")
LOWER_IS_BETTER = ("val_loss",)
NOT_JUDGED = ("probe", "per_source", "coverage")
# Changes to these paths change what the pipeline computes.
PIPELINE_INPUTS = ("src/", "dvc.yaml", "pyproject.toml", "requirements.lock", "data.dvc")


@dataclass
class CiResult:
    base: str
    params_error: str | None = None
    params_rows: list[tuple[str, str, Any, Any]] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    reran: bool = False
    tolerance: float = 0.0
    metric_rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _env() -> dict[str, str]:
    """Subprocesses find this environment's dvc and python (stage commands are python -m …)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _out(args: list[str], root: Path) -> str:
    try:
        result = subprocess.run(
            args, cwd=root, env=_env(), capture_output=True, text=True, check=True
        )
    except subprocess.CalledProcessError as exc:
        detail = first_line(Exception((exc.stderr or exc.stdout or "").strip() or exc))
        raise CrackdetError(f"`{' '.join(args)}` failed: {detail}") from None
    return result.stdout


def _json(args: list[str], root: Path) -> dict[str, Any]:
    text = _out(args, root).strip()
    try:
        return json.loads(text) if text else {}
    except ValueError:
        raise CrackdetError(f"`{' '.join(args)}` printed no JSON: {text[:80]!r}") from None


def tolerance_at(root: Path, base: str) -> float:
    """``ci.max_metric_regression`` from REV's params.yaml, else from the workspace's."""
    shown = subprocess.run(
        ["git", "show", f"{base}:params.yaml"], cwd=root, capture_output=True, text=True
    )
    if shown.returncode == 0:
        try:
            value = (yaml.safe_load(shown.stdout) or {}).get("ci", {}).get("max_metric_regression")
        except (yaml.YAMLError, AttributeError):
            value = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return load_params(root / "params.yaml").ci.max_metric_regression


def changed_inputs(root: Path, base: str) -> list[str]:
    """Pipeline-relevant files that differ between REV and the working tree (untracked too)."""
    tracked = _out(["git", "diff", "--name-only", base, "--"], root).split()
    untracked = _out(["git", "ls-files", "--others", "--exclude-standard"], root).split()
    return sorted(
        {p for p in tracked + untracked if p.startswith(PIPELINE_INPUTS) and p != "params.yaml"}
    )


def judge_metrics(diff: dict[str, Any], tolerance: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for the report and the failures, from ``dvc metrics diff --json`` output."""
    rows, failures = [], []
    for path, metrics in sorted(diff.items()):
        for name, values in sorted(metrics.items()):
            old, new = values.get("old"), values.get("new")
            leaf = name.rsplit(".", 1)[-1]
            numeric = all(isinstance(v, (int, float)) for v in (old, new))
            verdict = "info"
            # The probe is the baseline the model is compared with, not a product metric; the
            # per-source and coverage figures are parts of the test split (a few dozen images
            # each: one image moves them by points) and are shown, not judged.
            judged = not name.startswith(NOT_JUDGED) and leaf in HIGHER_IS_BETTER + LOWER_IS_BETTER
            if numeric and judged:
                worse = (old - new) if leaf in HIGHER_IS_BETTER else (new - old)
                verdict = "ok"
                if worse > tolerance + 1e-12:
                    verdict = "REGRESSED"
                    failures.append(
                        f"{path}: {name} {old:.4f} -> {new:.4f} worsens by {worse:.4f} "
                        f"(> ci.max_metric_regression {tolerance})"
                    )
            elif old is None or new is None:
                verdict = "new" if old is None else "removed"
            rows.append({"file": path, "metric": name, "old": old, "new": new, "verdict": verdict})
    return rows, failures


def ci_check(root: Path, base: str, rerun: str = "auto") -> CiResult:
    """Run the whole check (see the module docstring); ``rerun``: auto | always | never."""
    if subprocess.run(
        ["git", "rev-parse", "--verify", "-q", f"{base}^{{commit}}"],
        cwd=root,
        capture_output=True,
    ).returncode:
        raise CrackdetError(f"--base {base}: not a commit in this repository")
    result = CiResult(base)
    try:
        load_params(root / "params.yaml")
    except CrackdetError as exc:
        result.params_error = "; ".join(str(exc).splitlines())  # one report line
        result.failures += [f"invalid params: {line}" for line in str(exc).splitlines()]
    params = _json(["dvc", "params", "diff", base, "--json"], root)
    for path, keys in sorted(params.items()):
        for key, values in sorted(keys.items()):
            result.params_rows.append((path, key, values.get("old"), values.get("new")))
    result.changed_files = changed_inputs(root, base)
    if result.params_error:
        return result  # nothing below is meaningful with params the stages would refuse
    result.tolerance = tolerance_at(root, base)
    changed = bool(result.params_rows or result.changed_files)
    if rerun == "always" or (rerun == "auto" and changed):
        photos = root / "data" / "photos"
        if not photos.is_dir() or not any(photos.iterdir()):
            _out(["dvc", "pull", "data.dvc"], root)
        print("ci-check: params or code changed: dvc repro", flush=True)
        repro = subprocess.run(["dvc", "repro"], cwd=root, env=_env())
        if repro.returncode != 0:
            result.failures.append(f"dvc repro failed (exit {repro.returncode})")
            return result
        result.reran = True
    metrics = _json(["dvc", "metrics", "diff", base, "--all", "--json"], root)
    result.metric_rows, failures = judge_metrics(metrics, result.tolerance)
    result.failures += failures
    return result


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value).replace("|", "\\|")


def _raw(value: Any) -> str:
    """A params value as written in params.yaml (no rounding)."""
    return "–" if value is None else str(value).replace("|", "\\|")


def markdown(result: CiResult) -> str:
    """The report: verdict, params validation and diff, changed files, metrics diff."""
    verdict = "PASS" if result.ok else "FAIL"
    lines = [f"## crackdet ci-check: {verdict} (base `{result.base}`)", ""]
    if result.failures:
        lines += ["**Failures**", "", *(f"- {f}" for f in result.failures), ""]
    lines += ["### Params", ""]
    lines.append(
        f"- `params.yaml`: {'invalid: ' + result.params_error if result.params_error else 'valid'}"
    )
    if result.params_rows:
        lines += ["", "| file | key | base | this change |", "|---|---|---|---|"]
        lines += [f"| {p} | `{k}` | {_raw(o)} | {_raw(n)} |" for p, k, o, n in result.params_rows]
    else:
        lines.append("- no params changed")
    lines += ["", "### Code and data", ""]
    if result.changed_files:
        lines += [f"- `{p}`" for p in result.changed_files]
    else:
        lines.append("- no pipeline code or data changed")
    tolerance = "not judged" if result.params_error else str(result.tolerance)
    lines += [
        "",
        f"Pipeline rerun: {'yes (dvc repro)' if result.reran else 'no'}; tolerance "
        f"`ci.max_metric_regression` = {tolerance}",
        "",
        "### Metrics (`dvc metrics diff`)",
        "",
    ]
    if result.metric_rows:
        lines += ["| file | metric | base | this change | verdict |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['file']} | `{r['metric']}` | {_cell(r['old'])} | {_cell(r['new'])} | "
            f"{r['verdict']} |"
            for r in result.metric_rows
        ]
    else:
        lines.append("- no metrics compared")
    return "\n".join(lines) + "\n"


def write_report(result: CiResult, path: Path) -> Path:
    write_text(path, markdown(result))
    return path
