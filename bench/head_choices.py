"""Head choices against the probe, on validation and on test, with the split held fixed.

For a few head variants (``train.*`` overrides of params.yaml) this trains exactly what the train
stage trains (cached frozen features, best epoch on val, temperature and threshold fitted on val),
then prints its errors on val (where choices may be made) and on test (where they may not), next
to the logistic-regression probe on the same features. It shows whether a variant's test figure
could have been foreseen on val: picking the variant by its test column would repeat the blog's
flaw.

With ``--folds K`` it asks the same question with more images and without the test split:
grouped K-fold cross-validation over train + val (the split's source-photo groups kept whole).
Fold f is scored by a model trained on the other folds but one, with fold f+1 as its validation
split (best epoch, temperature and threshold chosen there, as the train stage does), and by the
probe trained on the same images; errors are summed over all folds, so every train/val image is
scored once by a model that never saw its group.

Run it in a checkout where the pipeline has run on real data (it reads ``outputs/fetch``,
``outputs/split`` and the feature cache; cold features are computed and cached):

    python bench/head_choices.py [--params params.yaml] [--folds 5]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from crackdet.data import ManifestRow, read_manifest
from crackdet.evaluate import evaluate_classifier
from crackdet.features import cache_root
from crackdet.params import Params, load_params
from crackdet.probe import fit_probe
from crackdet.stages.train import calibrate_on_val
from crackdet.train import targets_of, train_model

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "lr 3e-4": {"lr": 3e-4},
    "lr 3e-4 12 epochs step 6": {"lr": 3e-4, "epochs": 12, "lr_step_epochs": 6},
    "12 epochs step 6": {"epochs": 12, "lr_step_epochs": 6},
    "3 views": {"augment.views": 3},
    "plain view only": {"augment.views": 1},
    "hidden 256 dropout 0.2": {"hidden": 256, "dropout": 0.2},
    "weight decay 1e-4": {"weight_decay": 1e-4},
}


def with_train(params: Params, overrides: dict[str, Any]) -> Params:
    train = params.train
    augment = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("augment.")}
    plain = {k: v for k, v in overrides.items() if not k.startswith("augment.")}
    train = dataclasses.replace(
        train, augment=dataclasses.replace(train.augment, **augment), **plain
    )
    return dataclasses.replace(params, train=train)


def grouped_folds(rows: list[ManifestRow], group_of: dict[str, str], k: int) -> list[list]:
    """K folds of whole groups, largest groups first onto the fold with the fewest images."""
    members: dict[str, list[ManifestRow]] = {}
    for row in rows:
        members.setdefault(group_of[row.path], []).append(row)
    folds: list[list[ManifestRow]] = [[] for _ in range(k)]
    for group in sorted(members, key=lambda g: (-len(members[g]), g)):
        min(folds, key=len).extend(members[group])
    return folds


def cross_validate(params: Params, root: Path, k: int) -> None:
    images = root / "outputs/fetch/images"
    pool = [r for n in ("train", "val") for r in read_manifest(root / f"outputs/split/{n}.csv")]
    with open(root / "outputs/split/groups.csv", newline="") as handle:
        group_of = {line["path"]: line["group"] for line in csv.DictReader(handle)}
    folds = grouped_folds(pool, group_of, k)
    cache = cache_root(root)
    print(
        f"grouped {k}-fold CV over train + val: {len(pool)} images, folds of "
        f"{', '.join(str(len(f)) for f in folds)}; engine {params.train.engine}"
    )
    probe_errors = 0
    print(f"{'variant':26} {'errors per fold':>24} {'errors':>7} {'accuracy':>9}")
    for index, (name, overrides) in enumerate(VARIANTS.items()):
        variant = with_train(params, overrides)
        per_fold = []
        for f in range(k):
            val = folds[(f + 1) % k]
            train = [r for g in range(k) if g not in (f, (f + 1) % k) for r in folds[g]]
            result = train_model(variant, images, train, val, cache_dir=cache)
            calibrate_on_val(result, images, val)
            scored, features = evaluate_classifier(
                result.model, images, folds[f], cache, engine=variant.train.engine
            )
            per_fold.append(int(np.sum(scored.predictions != scored.targets)))
            if index == 0 and result.train_features is not None:
                probe = fit_probe(
                    result.train_features.numpy(), targets_of(train).numpy(), params.base.seed
                )
                guess = probe.crack_probability(features) >= 0.5
                probe_errors += int(np.sum(guess != scored.targets))
        errors = sum(per_fold)
        print(
            f"{name:26} {' '.join(map(str, per_fold)):>24} {errors:>7} "
            f"{1 - errors / len(pool):>9.4f}"
        )
    print(f"{'logistic probe':26} {'':>24} {probe_errors:>7} {1 - probe_errors / len(pool):>9.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--folds", type=int, default=0, help="grouped CV over train + val")
    parser.add_argument("--seed", type=int, help="base.seed for head init, shuffling, views")
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    args = parser.parse_args()
    if args.folds and args.folds < 3:
        parser.error("--folds: at least 3 (one fold scored, one for validation, the rest trained)")
    root = Path.cwd()
    params = load_params(args.params)
    if args.seed is not None:  # the split stays as it is on disk: only training draws change
        params = dataclasses.replace(params, base=dataclasses.replace(params.base, seed=args.seed))
    if args.only:
        chosen = args.only.split(",")
        unknown = set(chosen) - set(VARIANTS)
        if unknown:
            parser.error(f"--only: unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
        for name in list(VARIANTS):
            if name not in chosen:
                del VARIANTS[name]
    if args.folds:
        cross_validate(params, root, args.folds)
        return
    images = root / "outputs/fetch/images"
    rows = {n: read_manifest(root / f"outputs/split/{n}.csv") for n in ("train", "val", "test")}
    cache = cache_root(root)
    print(
        f"split: {len(rows['train'])} train / {len(rows['val'])} val / {len(rows['test'])} test "
        f"({params.split.strategy}), seed {params.base.seed}, engine {params.train.engine}"
    )
    print(f"{'variant':26} {'val errors':>10} {'val loss':>9} {'test errors':>11} {'test acc':>9}")
    probe_shown = False
    for name, overrides in VARIANTS.items():
        variant = with_train(params, overrides)
        result = train_model(variant, images, rows["train"], rows["val"], cache_dir=cache)
        calibrate_on_val(result, images, rows["val"])
        val, _ = evaluate_classifier(
            result.model, images, rows["val"], cache, engine=variant.train.engine
        )
        test, test_features = evaluate_classifier(
            result.model, images, rows["test"], cache, engine=variant.train.engine
        )
        val_errors = int(np.sum(val.predictions != val.targets))
        test_errors = int(np.sum(test.predictions != test.targets))
        print(
            f"{name:26} {val_errors:>10} {result.best.val_loss:>9.4f} {test_errors:>11} "
            f"{1 - test_errors / len(test.targets):>9.4f}"
        )
        if not probe_shown and result.train_features is not None:
            probe = fit_probe(
                result.train_features.numpy(), targets_of(rows["train"]).numpy(), params.base.seed
            )
            assert result.val_features is not None
            p_val = probe.crack_probability(result.val_features.numpy()) >= 0.5
            p_test = probe.crack_probability(test_features) >= 0.5
            probe_val = int(np.sum(p_val != targets_of(rows["val"]).numpy()))
            probe_test = int(np.sum(p_test != test.targets))
            probe_line = (
                f"{'logistic probe':26} {probe_val:>10} {'':>9} {probe_test:>11} "
                f"{1 - probe_test / len(test.targets):>9.4f}"
            )
            probe_shown = True
    if probe_shown:
        print(probe_line)


if __name__ == "__main__":
    main()
