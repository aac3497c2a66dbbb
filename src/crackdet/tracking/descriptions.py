"""What the model registry shows people: a markdown description of every registered version
(its test figures with their interval, the data and split it was judged on, the commit, how to
reproduce it) and, on the registered model, the promotion log as a table.

MLflow's UI renders both as markdown. Its database holds at most 5,000 characters per
description (PostgreSQL refuses more), so the table keeps the newest alias moves that fit; the
JSON tags ``promotion_log.*`` stay the whole record that tools read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crackdet.data.records import SplitSummary
from crackdet.tracking.provenance import DATA_SOURCES_TAG

DESCRIPTION_LIMIT = 5000
WHY_CHARS = 180  # a reason longer than this is cut in the table (the JSON tag has it whole)


@dataclass(frozen=True)
class SplitFigures:
    """The evaluate stage's test-split figures a version is judged by."""

    accuracy: float
    accuracy_low: float  # 95 % Wilson interval
    accuracy_high: float
    precision: float
    recall: float
    f1: float
    roc_auc: float
    images: int
    threshold: float

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> SplitFigures:
        """From ``outputs/evaluate/metrics.json``'s figures."""
        return cls(
            accuracy=float(metrics["accuracy"]),
            accuracy_low=float(metrics["accuracy_ci95_low"]),
            accuracy_high=float(metrics["accuracy_ci95_high"]),
            precision=float(metrics["precision"]),
            recall=float(metrics["recall"]),
            f1=float(metrics["f1"]),
            roc_auc=float(metrics["roc_auc"]),
            images=int(metrics["n"]),
            threshold=float(metrics["threshold"]),
        )


@dataclass(frozen=True)
class BaselineFigures:
    """The probe baseline scored on the same test images."""

    accuracy: float
    only_model_wrong: int
    only_baseline_wrong: int
    mcnemar_p: float

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> BaselineFigures | None:
        probe = metrics.get("probe")
        if not probe:
            return None
        return cls(
            accuracy=float(probe["accuracy"]),
            only_model_wrong=int(probe["only_model_wrong"]),
            only_baseline_wrong=int(probe["only_baseline_wrong"]),
            mcnemar_p=float(probe["mcnemar_p"]),
        )


@dataclass(frozen=True)
class VersionCard:
    """Everything a registered version's description says."""

    name: str
    version: int
    run_id: str
    figures: SplitFigures
    baseline: BaselineFigures | None
    data_source: str
    manifest_sha256: str
    split: SplitSummary
    commit: str
    dirty: str  # "true" | "false" | "unknown" (git_state)
    experiment: str  # the DVC experiment's name, or ""


def version_card(
    name: str,
    version: int,
    run: Any,
    metrics: dict[str, Any],
    tags: dict[str, str],
    split: SplitSummary,
) -> VersionCard:
    """What the registry's page of a version says: evaluate's ``metrics``, the version's lineage
    ``tags`` (commit, manifest digest) and the tags train gave its MLflow ``run``."""
    run_tags = run.data.tags
    return VersionCard(
        name=name,
        version=version,
        run_id=run.info.run_id,
        figures=SplitFigures.from_metrics(metrics),
        baseline=BaselineFigures.from_metrics(metrics),
        data_source=", ".join(s for s in run_tags.get(DATA_SOURCES_TAG, "").split(",") if s)
        or "unknown",
        manifest_sha256=tags["data.manifest_sha256"],
        split=split,
        commit=tags["git.commit"],
        dirty=tags["git.dirty"],
        experiment=run_tags.get("dvc.dvc_exp_name", ""),
    )


def split_line(split: SplitSummary) -> str:
    """``grouped (24 groups), seed 42: train 32, val 8, test 8 images``."""
    sizes = ", ".join(f"{part} {sum(split.counts.get(part, {}).values())}" for part in _PARTS)
    groups = f" ({split.groups} groups)" if split.strategy == "grouped" else ""
    return f"{split.strategy}{groups}, seed {split.seed}: {sizes} images"


_PARTS = ("train", "val", "test")


def version_description(card: VersionCard) -> str:
    """The markdown MLflow shows on the version's page."""
    fig = card.figures
    rows = [
        (
            "accuracy",
            f"**{fig.accuracy:.4f}** (95 % CI {fig.accuracy_low:.4f}–{fig.accuracy_high:.4f})",
        ),
        ("precision", f"{fig.precision:.4f}"),
        ("recall", f"{fig.recall:.4f}"),
        ("F1", f"{fig.f1:.4f}"),
        ("ROC AUC", f"{fig.roc_auc:.4f}"),
    ]
    if card.baseline is not None:
        base = card.baseline
        rows.append(
            (
                "probe baseline",
                f"accuracy {base.accuracy:.4f}; wrong only by the model {base.only_model_wrong}, "
                f"only by the probe {base.only_baseline_wrong} (exact McNemar p "
                f"{base.mcnemar_p:.3f})",
            )
        )
    state = {"true": "uncommitted changes", "false": "clean"}.get(card.dirty, "state unknown")
    lineage = [
        ("data", f"{card.data_source}, manifest sha256 `{card.manifest_sha256}`"),
        ("split", f"{split_line(card.split)}; fingerprint `{card.split.fingerprint}`"),
        ("commit", f"`{card.commit}` ({state})"),
        ("MLflow run", f"`{card.run_id}`"),
    ]
    if card.experiment:
        lineage.append(("DVC experiment", f"`{card.experiment}`"))
    lines = [
        # The first line is what MLflow's list of versions shows, unrendered: plain text.
        f"Test accuracy {fig.accuracy:.4f} (95 % CI {fig.accuracy_low:.4f}–"
        f"{fig.accuracy_high:.4f}), F1 {fig.f1:.4f}, ROC AUC {fig.roc_auc:.4f} on {fig.images} "
        f"images; commit `{card.commit[:10]}`.",
        "",
        f"The test split's {fig.images} images were never used for any choice; operating "
        f"threshold {fig.threshold:.3f} (chosen on val).",
        "",
        *_table(("test metric", "value"), rows),
        "",
        *_table(("lineage", ""), lineage),
        "",
        "Reproduce (reruns the pipeline at that commit, params and data; prints MATCH or a diff) "
        "and trace:",
        "",
        "```bash",
        f"crackdet reproduce {card.run_id}",
        f"crackdet trace models:/{card.name}/{card.version}",
        "```",
    ]
    return "\n".join(lines)[:DESCRIPTION_LIMIT]


def promotion_table(name: str, entries: list[dict[str, Any]]) -> str:
    """The promotion log of ``name`` as a markdown table, newest first, cut to fit the store."""
    head = [
        f"**Promotion log** of `{name}`, newest first: every move of the `champion` and "
        "`challenger` aliases, by whom and why. `crackdet promotion-log` prints all of it; the "
        "tags `promotion_log.*` hold it as JSON.",
        "",
        *_table(("#", "when (UTC)", "alias", "version", "by", "mode", "F1", "accuracy", "why"), []),
    ]
    rows: list[str] = []
    newest = sorted(entries, key=lambda e: e["seq"], reverse=True)
    size = sum(len(line) + 1 for line in head) + 120  # room for the "older moves" line
    for entry in newest:
        row = _log_row(entry)
        if size + len(row) + 1 > DESCRIPTION_LIMIT:
            break
        rows.append(row)
        size += len(row) + 1
    tail = []
    if len(rows) < len(newest):
        tail = ["", f"*{len(newest) - len(rows)} older moves not shown: `crackdet promotion-log`*"]
    return "\n".join([*head, *rows, *tail])


def _log_row(entry: dict[str, Any]) -> str:
    source = f"v{entry['from']}" if entry.get("from") is not None else "none"
    figures = (entry.get("metrics") or {}).get("candidate") or {}
    why = " ".join(str(entry.get("why", "")).split())
    if len(why) > WHY_CHARS:
        why = why[: WHY_CHARS - 1] + "…"
    cells = (
        str(entry["seq"]),
        str(entry.get("when", "")).replace("T", " ").removesuffix("+00:00"),
        f"`{entry.get('alias', '')}`",
        f"{source} → v{entry.get('to')}",
        str(entry.get("who", "")),
        str(entry.get("mode", "")),
        _figure(figures.get("f1")),
        _figure(figures.get("accuracy")),
        why,
    )
    return _row(cells)


def _figure(value: Any) -> str:
    return f"{float(value):.4f}" if isinstance(value, (int, float)) else "-"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return [_row(header), _row(tuple("---" for _ in header)), *(_row(r) for r in rows)]


def _row(cells: tuple[str, ...]) -> str:
    # A pipe inside a cell would end it: markdown's escape keeps it text.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
