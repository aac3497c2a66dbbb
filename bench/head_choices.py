"""Head choices against the probe, on validation and on test, with the split held fixed.

For a few head variants (``train.*`` overrides of params.yaml) this trains exactly what the train
stage trains (cached frozen features, best epoch on val, temperature and threshold fitted on val),
then prints its errors on val (where choices may be made) and on test (where they may not), next
to the logistic-regression probe on the same features. It shows whether a variant's test figure
could have been foreseen on val: picking the variant by its test column would repeat the blog's
flaw.

Run it in a checkout where the pipeline has run on real data (it reads ``outputs/fetch``,
``outputs/split`` and the feature cache; cold features are computed and cached):

    python bench/head_choices.py [--params params.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from crackdet.data import read_manifest
from crackdet.evaluate import evaluate_classifier
from crackdet.features import cache_root
from crackdet.params import Params, load_params
from crackdet.probe import fit_probe
from crackdet.stages.train import calibrate_on_val
from crackdet.train import targets_of, train_model

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "blog lr 1e-3": {"lr": 1e-3},
    "12 epochs, step 6": {"epochs": 12, "lr_step_epochs": 6},
    "plain view only": {"augment.views": 1},
    "hidden 256, dropout 0.2": {"hidden": 256, "dropout": 0.2},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    root = Path.cwd()
    params = load_params(args.params)
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
