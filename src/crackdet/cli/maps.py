"""``crackdet predict``, ``crackdet eval`` and ``crackdet eval-maps``: a model on data of yours."""

from __future__ import annotations

import argparse
from pathlib import Path

from crackdet.core.layout import Layout, repo_root
from crackdet.core.overrides import params_or_defaults, predict_settings
from crackdet.core.params import load_params
from crackdet.maps.html_report import REPORT
from crackdet.workflows.campaign import run_campaign
from crackdet.workflows.eval_data import score_dataset
from crackdet.workflows.eval_maps import run_eval_maps, summary_line
from crackdet.workflows.predict import predict as predict_photos


def predict(args: argparse.Namespace) -> int:
    layout = Layout(repo_root())
    cfg = predict_settings(
        params_or_defaults(args.params, layout.root),
        scale=args.scale,
        overlap=args.overlap,
        threshold=args.threshold,
        mm_per_pixel=args.mm_per_pixel,
    )
    if args.ray or any(s.startswith("s3://") for s in [args.out, *args.photos]):
        return _campaign(args, cfg, layout)
    out = Path(args.out)
    photos = [Path(p) for p in args.photos]
    mapped = predict_photos(photos, args.model, out, cfg, layout)
    total = len(mapped.summaries) + len(mapped.errors)
    reused = f", {len(mapped.skipped)} already done" if mapped.skipped else ""
    print(
        f"predict: {len(mapped.summaries)} of {total} photos mapped into {out}{reused}; "
        f"report {out / REPORT}"
    )
    return 1 if mapped.errors else 0


def _campaign(args: argparse.Namespace, cfg, layout: Layout) -> int:
    done = run_campaign(args.photos, args.model, args.out, cfg, layout, args.ray, args.workers)
    print(
        f"predict: campaign ({done.executor}) {done.mapped} mapped, {done.skipped} already "
        f"done, {len(done.failed)} failed of {done.photos} photos into {done.out} in "
        f"{done.seconds:.1f} s; MLflow run {done.run_id}"
    )
    for error in done.failed:
        print(f"predict: failed: {error}")
    return 1 if done.failed else 0


def eval_data(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    out = Path(args.out) if args.out else None
    metrics = score_dataset(
        Path(args.data), args.model, params.evaluate, params.fetch, Layout(repo_root()), out
    )
    print(
        f"eval {args.data}: accuracy {metrics['accuracy']:.4f} precision "
        f"{metrics['precision']:.4f} recall {metrics['recall']:.4f} f1 {metrics['f1']:.4f} "
        f"roc_auc {metrics['roc_auc']:.4f} on {metrics['n']} images "
        f"(tn {metrics['tn']} fp {metrics['fp']} fn {metrics['fn']} tp {metrics['tp']})"
        + (
            f"; unfamiliar {metrics['coverage']['ood_share']:.1%}, accuracy on the rest "
            f"{metrics['coverage']['accepted_accuracy']:.4f}"
            if "coverage" in metrics
            else ""
        )
    )
    return 0


def eval_maps(args: argparse.Namespace) -> int:
    layout = Layout(repo_root())
    metrics = run_eval_maps(
        Path(args.data),
        args.model,
        params_or_defaults(args.params, layout.root),
        layout,
        scale=args.scale,
        overlap=args.overlap,
        threshold=args.threshold,
        out=Path(args.out) if args.out else None,
        progress=args.verbose,
        photos=args.photos,
        pixel_threshold=args.pixel_threshold,
    )
    print(summary_line(metrics))
    return 0
