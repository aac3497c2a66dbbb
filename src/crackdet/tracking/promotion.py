"""Promotion: the gates and the beats-or-ties rule, and moving ``champion``/``challenger``.

Every new ``crack-classifier`` version is tagged with its lineage and test metrics and judged
against the version holding the ``champion`` alias on the same test split (same split
fingerprint; when the fingerprints differ the champion is re-scored on the current split). It
becomes ``champion`` when it passes the gates in ``params.yaml`` (``promote.*``) and beats or ties
the champion, else ``challenger``.

"Beats or ties" compares (F1, accuracy, ROC AUC) lexicographically, rounded to the 6 decimals the
version tags hold. The gates: accuracy >= ``promote.min_accuracy``, F1 >= ``promote.min_f1``, and
no key metric below the champion's by more than ``promote.max_regression``. :func:`judge` is the
pure rule; the rest reads and writes the registry (crackdet.tracking.registry).
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crackdet.core.errors import CrackdetError
from crackdet.core.params import PromoteParams
from crackdet.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    DIGITS,
    KEY_METRICS,
    alias_holder,
    append_log,
    get_version,
    promotion_lock,
    version_metrics,
)

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


def actor() -> str:
    """Who moved an alias: ``CRACKDET_ACTOR`` (CI sets it), else user@host."""
    if os.environ.get("CRACKDET_ACTOR"):
        return os.environ["CRACKDET_ACTOR"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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
    """Judge a freshly registered version, tag it and give it ``champion`` or ``challenger``
    (one promotion at a time: another process's waits)."""
    with promotion_lock(client, name):
        return _auto_promote(client, name, version, gates, reevaluate)


def _auto_promote(
    client: Any,
    name: str,
    version: str | int,
    gates: PromoteParams,
    reevaluate: Reevaluator | None,
) -> tuple[Decision, dict[str, Any]]:
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
    with promotion_lock(client, name):
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
