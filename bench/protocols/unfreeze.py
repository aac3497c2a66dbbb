"""Fine-tuning check: ``train.unfreeze`` values on the real split, with the device picked as the
train stage picks it (CUDA when there is one).

For each value of ``--unfreeze`` it trains exactly what the train stage trains with those params
(best epoch on val; for N > 0 the last N backbone blocks, on the cached trunk activations of the
augmentation views with ``--finetune cached``, or with fresh augmentation and a whole forward
pass every epoch with ``--finetune online``) and prints the wall time (nothing cached: every
forward pass is timed), the best epoch, validation accuracy and loss, and the test errors. The
test column is for the record only: choices are made on val (see bench/protocols/head_choices.py).

Run it in a checkout where the pipeline has run on real data (it reads ``outputs/fetch`` and
``outputs/split``); N = 1 with ``cached`` runs on a CPU, the rest is meant for a GPU:

    python bench/protocols/unfreeze.py [--params params.yaml] [--unfreeze 0,1,2,4]
        [--finetune cached]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from crackdet.core.layout import Layout
from crackdet.core.params import load_params
from crackdet.data.manifest import read_manifest
from crackdet.model.fitting import pick_device, train_model
from crackdet.model.metrics import score_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--unfreeze", default="0,1,2,4", help="comma-separated block counts")
    parser.add_argument("--finetune", choices=("cached", "online"), help="default: params")
    args = parser.parse_args()
    root = Path.cwd()
    params = load_params(args.params)
    layout = Layout(root)
    images = layout.fetch.images
    rows = {n: read_manifest(layout.split.manifest(n)) for n in ("train", "val", "test")}
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    train = params.train
    finetune = args.finetune or train.finetune
    print(
        f"torch {torch.__version__} on {name}; lr {train.lr}, epochs {train.epochs}, "
        f"finetune {finetune}"
    )
    for blocks in (int(b) for b in args.unfreeze.split(",")):
        # PyTorch runs the backbone here: every forward pass timed alike, no graph export.
        train = dataclasses.replace(
            params.train, unfreeze=blocks, finetune=finetune, engine="torch"
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        clock = time.perf_counter()
        result = train_model(train, params.base.seed, images, rows["train"], rows["val"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - clock
        test, _ = score_classifier(result.model, images, rows["test"], None, engine="torch")
        errors = int(np.sum(test.predictions != test.targets))
        print(
            f"unfreeze {blocks}: train {seconds:.1f} s, best epoch {result.best_epoch}, "
            f"val acc {result.best.val_acc:.4f}, val loss {result.best.val_loss:.4f}, "
            f"test errors {errors}/{len(test.targets)}"
        )


if __name__ == "__main__":
    main()
