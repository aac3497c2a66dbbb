"""Crack pixels on UAV75: the pixel decoder against the photos' own masks, at full resolution.

Two runs, each training the decoder exactly as the train stage does (params.yaml's
``train.decoder``, over the frozen pretrained backbone the default classifier keeps; ``--set``
changes a decoder key):

- ``uav75``: UAV75's 50 ``train_*`` photos as a masks source (at scale 1, their own pixels)
  plus the synthetic photos. The best epoch and the threshold are chosen on a held-out part of
  ``train_*`` (``val_share`` of its photos), never on ``val_*``; the 10 ``val_*`` photos are
  scored once at the end.
- ``heldout``: the synthetic photos only; UAV75 never seen. Scored on ``val_*`` and on all 60.

Figures: crack-pixel precision, recall and F1 with a 2-px tolerance
(:func:`crackdet.model.pixel_metrics.count_pixels`, counts added over photos), the share of
planking pixels called crack, and the median per-photo length error (skeleton length of the
predicted mask against the true mask's).

    python bench/protocols/pixel_decoder.py [--shared ../shared/data] [--work .cache/bench]
        [--only uav75,heldout] [--set epochs=12 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml
from skimage.morphology import skeletonize

from crackdet.core.params import DecoderParams
from crackdet.maps.cracks import crack_mask, skeleton_length
from crackdet.model.backbones import build_backbone
from crackdet.model.decoder import PixelDecoder
from crackdet.model.decoder_training import (
    PixelPhoto,
    masks_photos,
    split_photos,
    synthetic_photos,
    train_decoder,
)
from crackdet.model.dense import STRIDE, DenseTrunk
from crackdet.model.pixel_metrics import PixelCounts, count_pixels, length_error

REPO = Path(__file__).resolve().parents[2]
UAV_ZIP = "uav75/uav75-trainval.zip"


HYSTERESIS = (1.0, 0.7, 0.5, 0.3)  # predict.pixel_hysteresis values tried (1: off)


def predict(trunk: DenseTrunk, decoder: PixelDecoder, image: np.ndarray) -> np.ndarray:
    """P(crack pixel) of a whole photo: padded to multiples of 32 by edge replication."""
    height, width = image.shape[:2]
    pad = ((0, -height % STRIDE), (0, -width % STRIDE), (0, 0))
    x = torch.from_numpy(np.pad(image, pad, mode="edge")).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        logits = decoder(trunk(x), x)
    return torch.sigmoid(logits)[0, 0, :height, :width].numpy()


def score(
    trunk: DenseTrunk,
    decoder: PixelDecoder,
    threshold: float,
    photos: list[PixelPhoto],
    hysteresis: float = 1.0,
) -> dict[str, float | int | None]:
    total, errors = PixelCounts(), []
    for photo in photos:
        called = crack_mask(predict(trunk, decoder, photo.image), threshold, hysteresis)
        total = total + count_pixels(called, photo.crack, photo.planking)
        error = length_error(
            skeleton_length(skeletonize(called)), skeleton_length(skeletonize(photo.crack))
        )
        if error is not None:
            errors.append(error)
    return {
        "photos": len(photos),
        "precision": total.precision,
        "recall": total.recall,
        "f1": total.f1,
        "planking_called": total.planking_called_share,
        "median_length_error": float(np.median(errors)) if errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--only", default="uav75,heldout")
    parser.add_argument("--set", nargs="*", default=[], help="train.decoder keys: key=value")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    seed = int(params["base"]["seed"])
    tree = params["train"]["decoder"]
    for item in args.set:
        key, value = item.split("=", 1)
        tree[key] = yaml.safe_load(value)
    cfg = DecoderParams(**tree)
    torch.manual_seed(seed)

    folder = args.work / "uav75-pixels"
    if not (folder / "images").is_dir():
        with zipfile.ZipFile(args.shared / UAV_ZIP) as archive:
            archive.extractall(folder)  # outside the repository: GPL data is never copied in
    uav = masks_photos(folder, "uav75", (1.0,), 10**8)
    train_uav = [p for p in uav if p.name.startswith("uav75/train_")]
    val_uav = [p for p in uav if p.name.startswith("uav75/val_")]

    net, _, _, mean, std = build_backbone(params["train"]["backbone"], pretrained=True)
    trunk = DenseTrunk(params["train"]["backbone"], net.eval(), mean, std).eval()
    synthetic = synthetic_photos(seed, cfg.synthetic_photos, cfg.crop)
    runs = {
        "uav75": (train_uav + synthetic, {"val_*": val_uav}),
        "heldout": (synthetic, {"val_*": val_uav, "all 60": uav}),
    }
    for name in args.only.split(","):
        photos, scored = runs[name]
        started = time.perf_counter()
        fit, choose = split_photos(photos, cfg.val_share, seed)
        result = train_decoder(trunk, fit, choose, cfg, seed, on_epoch=_say)
        # predict.pixel_hysteresis, chosen on the same held-out training photos as the
        # threshold (never on the scored ones): the fewest length error there, then F1.
        on_choice = {
            h: score(trunk, result.decoder, result.spec.threshold, choose, h) for h in HYSTERESIS
        }
        hysteresis = min(
            HYSTERESIS,
            key=lambda h: (on_choice[h]["median_length_error"] or 0.0, -(on_choice[h]["f1"] or 0)),
        )
        line = {
            "run": name,
            "decoder": dataclasses.asdict(cfg),
            "best_epoch": result.best_epoch,
            "threshold": result.spec.threshold,
            "choice_f1": result.counts.f1,
            "train_photos": len(fit),
            "choice_photos": len(choose),
            "hysteresis_on_choice": {str(h): figures for h, figures in on_choice.items()},
            "hysteresis": hysteresis,
            **{
                where: score(trunk, result.decoder, result.spec.threshold, those, hysteresis)
                for where, those in scored.items()
            },
            **{
                f"{where}, hysteresis off": score(
                    trunk, result.decoder, result.spec.threshold, those
                )
                for where, those in scored.items()
                if hysteresis != 1.0
            },
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(line))
        args.work.mkdir(parents=True, exist_ok=True)
        with (args.work / "pixel_decoder.jsonl").open("a") as out:
            out.write(json.dumps(line) + "\n")


def _say(record: object) -> None:
    print(record, flush=True)


if __name__ == "__main__":
    main()
