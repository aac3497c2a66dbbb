"""Repeated grouped 5-fold cross-validation on Özgenel's 4,000 patches: the model against the
probe, with intervals.

A single 600-patch test split cannot tell two models apart when each makes 0–2 errors; here every
Özgenel patch is scored once per repetition by a model that never saw its group. Fold f of the
Özgenel groups (the split's source-photo groups, kept whole; assigned to folds in a seeded order)
is the test fold, fold f+1 the validation fold (best epoch, temperature, threshold), the rest
train, plus the other default sources' own train/val splits (never scored). Each repetition uses
its own seed for the folds and for training (init, shuffling, augmented views).

Two baselines, each a logistic-regression probe on the same frozen features:
- ``probe``: trained on the same rows as the model (all sources): the like-for-like comparison;
- ``probe_ozgenel``: trained on the Özgenel training folds alone: what an in-domain-only model
  gets on in-domain patches.

    python bench/protocols/cv.py [--shared ../shared/data] [--work .cache/bench] [--seeds 42,43,44]
        [--set KEY=VALUE ...]

Prints errors per fold and totals with 95 % Wilson intervals on accuracy, and McNemar's exact
test between the model and each probe; appends the result to ``WORK/cv.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from pathlib import Path

import numpy as np
from common import Workspace, classify, prepare, train_on, write_result

from crackdet.data.manifest import ManifestRow
from crackdet.model.inputs import targets_of
from crackdet.model.metrics import mcnemar_exact, wilson_interval
from crackdet.model.probe import fit_probe

OTHERS = {"sdnet", "synthetic"}  # params.yaml's other sources


def grouped_folds(
    rows: list[ManifestRow], group_of: dict[str, str], k: int, seed: int
) -> list[list[ManifestRow]]:
    """K folds of whole groups: groups in a seeded order, each onto the fold with fewest images."""
    members: dict[str, list[ManifestRow]] = {}
    for row in rows:
        members.setdefault(group_of[row.path], []).append(row)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    folds: list[list[ManifestRow]] = [[] for _ in range(k)]
    for group in sorted(order, key=lambda g: -len(members[g])):  # stable: seeded order ties
        min(folds, key=len).extend(members[group])
    return folds


def repetition(ws: Workspace, seed: int, k: int) -> dict[str, object]:
    """One K-fold pass with ``seed``: errors of the model and both probes on every fold."""
    base = dataclasses.replace(ws.params.base, seed=seed)
    ws = dataclasses.replace(ws, params=dataclasses.replace(ws.params, base=base))
    ozgenel = [r for split in ("train", "val", "test") for r in ws.of(split, {"ozgenel"})]
    folds = grouped_folds(ozgenel, ws.group_of, k, seed)
    wrong = {
        "model": np.zeros(0, bool),
        "probe": np.zeros(0, bool),
        "probe_ozgenel": np.zeros(0, bool),
    }
    per_fold = []
    for f in range(k):
        test, val = folds[f], folds[(f + 1) % k]
        train = [r for g, fold in enumerate(folds) if g not in (f, (f + 1) % k) for r in fold]
        trained = train_on(ws, train + ws.of("train", OTHERS), val + ws.of("val", OTHERS))
        model = trained.result.model
        evaluation, features = classify(ws, model, test)
        y = evaluation.targets
        assert trained.probe is not None
        _, oz_features = classify(ws, model, train)  # plain-view features: from the cache
        probe_oz = fit_probe(oz_features, targets_of(train).numpy(), seed)
        fold_wrong = {
            "model": evaluation.predictions != y,
            "probe": (trained.probe.crack_probability(features) >= 0.5) != y,
            "probe_ozgenel": (probe_oz.crack_probability(features) >= 0.5) != y,
        }
        for name, miss in fold_wrong.items():
            wrong[name] = np.concatenate([wrong[name], miss])
        per_fold.append({name: int(miss.sum()) for name, miss in fold_wrong.items()})
        print(f"cv: seed {seed} fold {f + 1}/{k}: {per_fold[-1]}", flush=True)
    return {"seed": seed, "n": len(ozgenel), "per_fold": per_fold, "wrong": wrong}


def summarise(reps: list[dict[str, object]]) -> dict[str, object]:
    """Totals over the repetitions, Wilson intervals, McNemar's exact test model vs probes."""
    out: dict[str, object] = {"seeds": [r["seed"] for r in reps]}
    wrong = {name: np.concatenate([r["wrong"][name] for r in reps]) for name in reps[0]["wrong"]}
    n = len(wrong["model"])
    for name, miss in wrong.items():
        low, high = wilson_interval(int(n - miss.sum()), n)
        out[name] = {
            "errors": int(miss.sum()),
            "per_seed": [int(r["wrong"][name].sum()) for r in reps],
            "accuracy": float(1 - miss.mean()),
            "accuracy_ci95": [low, high],
        }
    for probe in ("probe", "probe_ozgenel"):
        only_model = int((wrong["model"] & ~wrong[probe]).sum())
        only_probe = int((wrong[probe] & ~wrong["model"]).sum())
        out[f"mcnemar_vs_{probe}"] = {
            "only_model_wrong": only_model,
            "only_probe_wrong": only_probe,
            "p": mcnemar_exact(only_model, only_probe),
        }
    out["scored"] = n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    ws = prepare(args.work, args.shared, args.set)
    if ws.params.train.unfreeze:  # the probes are fitted on the model's own features
        parser.error("train.unfreeze > 0: the probes need the frozen backbone's features")
    clock = time.perf_counter()
    reps = [repetition(ws, int(s), args.folds) for s in args.seeds.split(",")]
    record = summarise(reps) | {
        "folds": args.folds,
        "per_fold": [r["per_fold"] for r in reps],
        "seconds": round(time.perf_counter() - clock, 1),
        "set": args.set,
    }
    print(record, flush=True)
    write_result(args.work / "cv.jsonl", record)


if __name__ == "__main__":
    main()
