"""Leave-one-source-out: how crackdet's defaults do on a source they never trained on.

For each real source the model is trained (params.yaml's train section, exactly as the train
stage trains) on the other default sources and scored on every image of the held-out one:

- ``uav75`` held out: the default sources (Özgenel, SDNET decks, synthetic) only; crack maps of
  all 60 UAV75 photos at ``predict.scale: auto`` scored against their pixel masks (window ROC
  AUC, as ``crackdet eval-maps``). The same model gives the OOD shares: UAV75 map windows,
  Özgenel test patches, and scikit-image's non-concrete sample images.
- ``sdnet`` / ``ozgenel`` held out: patch ROC AUC and accuracy at the model's own threshold,
  with a 95 % Wilson interval.
- ``uav75+train``: UAV75's 50 ``train_*`` photos join as a masks source; maps of its 10
  ``val_*`` photos (window ROC AUC, planking false-positive rate), and Özgenel's test split.

    python bench/protocols/loso.py [--shared ../shared/data] [--work .cache/bench]
        [--only uav75,...] [--set train.backbone=efficientnet_lite1 ...]

Prints one line per run and appends it to ``WORK/loso.jsonl``. Takes about an hour on 2 cores
the first time (features of every source and its augmented views, then ~30,000 map windows).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import (
    UAV_ZIP,
    Workspace,
    not_concrete_ood,
    prepare,
    score_maps,
    score_patches,
    train_on,
    write_result,
)

DEFAULT = {"ozgenel", "sdnet", "synthetic"}  # params.yaml's sources (UAV75 is GPL: never one)


def holdout(ws: Workspace, shared: Path, name: str) -> dict[str, object]:
    """Train without ``name`` and score it."""
    # uav75+train: UAV75's train_* photos join the sources, its val_* photos are scored.
    used = DEFAULT | {"uav75"} if name == "uav75+train" else DEFAULT - {name}
    trained = train_on(ws, ws.of("train", used), ws.of("val", used))
    record: dict[str, object] = {"held_out": name, "trained_on": sorted(used)}
    record["threshold"] = trained.result.model.spec.threshold
    if name == "uav75":
        record["uav75"] = score_maps(ws, trained, shared / UAV_ZIP, "*")
        record["in_domain_test"] = {
            source: score_patches(ws, trained, ws.of("test", {source}))
            for source in ("ozgenel", "sdnet")
        }
        record["not_concrete"] = not_concrete_ood(ws, trained)
    elif name == "uav75+train":
        record["uav75_val"] = score_maps(ws, trained, shared / UAV_ZIP, "val_*")
        record["ozgenel_test"] = score_patches(ws, trained, ws.of("test", {"ozgenel"}))
    else:
        record[name] = score_patches(ws, trained, ws.every(name))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--only", default="uav75,sdnet,ozgenel,uav75+train")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    ws = prepare(args.work, args.shared, args.set)
    for name in args.only.split(","):
        clock = time.perf_counter()
        record = holdout(ws, args.shared, name)
        record["seconds"] = round(time.perf_counter() - clock, 1)
        record["set"] = args.set
        print(record, flush=True)
        write_result(args.work / "loso.jsonl", record)


if __name__ == "__main__":
    main()
