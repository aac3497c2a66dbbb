"""The ``crackdet`` command: the pipeline stages plus tools around them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crackdet import __version__
from crackdet.errors import CrackdetError

STAGES = ("fetch", "split", "train", "evaluate", "predict_samples")


def _stage(name: str) -> int:
    import importlib

    return importlib.import_module(f"crackdet.stages.{name}").main()


def _check_params(args: argparse.Namespace) -> int:
    from crackdet.params import load_params

    params = load_params(args.params)
    print(f"{args.params}: valid ({len(params.as_flat_dict())} keys)")
    return 0


def _render_photos(args: argparse.Namespace) -> int:
    from crackdet.synthetic import write_photo_set

    paths = write_photo_set(
        Path(args.out), args.count, args.seed, args.width, args.height, quality=args.quality
    )
    for path in paths:
        print(path)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from crackdet.features import onnx_root
    from crackdet.models import load_model
    from crackdet.ood import OODModel
    from crackdet.params import load_params
    from crackdet.predict import list_photos
    from crackdet.stages.predict_samples import map_photos
    from crackdet.tracking import repo_root

    predict_params = load_params(args.params).predict
    model = load_model(args.model)
    # The OOD model lives next to a checkpoint; registry models have none.
    ood = (
        None
        if args.model.startswith(("models:/", "runs:/"))
        else OODModel.load(Path(args.model) / "ood.npz")
    )
    photos: list[Path] = []
    for item in map(Path, args.photos):
        photos.extend(list_photos(item) if item.is_dir() else [item])
    out = Path(args.out)
    # Exported graphs are cached where the pipeline keeps them (run from the repo root).
    _, errors = map_photos(
        model, photos, out, predict_params, args.model, ood, onnx_root(repo_root())
    )
    print(f"predict: {len(photos) - len(errors)} of {len(photos)} photos mapped into {out}")
    return 1 if errors else 0


def _eval(args: argparse.Namespace) -> int:
    from crackdet.eval_data import evaluate_dataset
    from crackdet.params import load_params
    from crackdet.tracking import repo_root

    params = load_params(args.params)
    out = Path(args.out) if args.out else None
    metrics = evaluate_dataset(Path(args.data), args.model, params, repo_root(), out)
    print(
        f"eval {args.data}: accuracy {metrics['accuracy']:.4f} precision "
        f"{metrics['precision']:.4f} recall {metrics['recall']:.4f} f1 {metrics['f1']:.4f} "
        f"roc_auc {metrics['roc_auc']:.4f} on {metrics['n']} images "
        f"(tn {metrics['tn']} fp {metrics['fp']} fn {metrics['fn']} tp {metrics['tp']})"
    )
    return 0


def _eval_maps(args: argparse.Namespace) -> int:
    from crackdet.maps_eval import run_eval_maps, summary_line
    from crackdet.params import load_params
    from crackdet.tracking import repo_root

    metrics = run_eval_maps(
        Path(args.data),
        args.model,
        load_params(args.params),
        repo_root(),
        scale=args.scale,
        overlap=args.overlap,
        threshold=args.threshold,
        out=Path(args.out) if args.out else None,
        progress=args.verbose,
        photos=args.photos,
    )
    print(summary_line(metrics))
    return 0


def _add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="outputs/train",
        help="checkpoint folder (model.pt + model.json) or models:/crack-classifier@champion",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crackdet",
        description="Concrete crack classifier pipeline (DVC stages, MLflow tracking).",
    )
    parser.add_argument("--version", action="version", version=f"crackdet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in STAGES:
        sub.add_parser(
            name.replace("_", "-"), help=f"run the {name} stage (as `dvc repro` does)"
        ).set_defaults(handler=lambda _args, n=name: _stage(n))
    check = sub.add_parser("check-params", help="validate params.yaml against the schema")
    check.add_argument("--params", default="params.yaml")
    check.set_defaults(handler=_check_params)
    predict = sub.add_parser("predict", help="crack maps for photos or folders of photos")
    predict.add_argument("photos", nargs="+", metavar="PHOTO")
    _add_model_option(predict)
    predict.add_argument("--out", default="predictions")
    predict.add_argument(
        "--params", default="params.yaml", help="predict.* settings come from here"
    )
    predict.set_defaults(handler=_predict)
    evaluate = sub.add_parser(
        "eval", help="evaluate a model on any labelled folder/archive (Positive/, Negative/)"
    )
    evaluate.add_argument("data", metavar="DATA", help="folder or .zip/.tar*/.rar archive")
    _add_model_option(evaluate)
    evaluate.add_argument("--out", help="also write the metrics to this JSON file")
    evaluate.add_argument("--params", default="params.yaml", help="limits and batch size")
    evaluate.set_defaults(handler=_eval)
    maps = sub.add_parser(
        "eval-maps", help="score crack maps against pixel masks (images/, masks/, masks_planking/)"
    )
    maps.add_argument("data", metavar="DIR_OR_ZIP", help="folder or .zip/.tar*/.rar archive")
    _add_model_option(maps)
    maps.add_argument("--scale", type=float, help="default: params.yaml predict.scale")
    maps.add_argument("--overlap", type=float, help="default: params.yaml predict.overlap")
    maps.add_argument("--threshold", type=float, help="default: the model's, else predict.*")
    maps.add_argument(
        "--photos",
        default="*",
        help="score only photos whose file name matches this glob (e.g. 'val_*' for a held-out "
        "part when scale/threshold were chosen on 'train_*')",
    )
    maps.add_argument("--out", help="also write the metrics to this JSON file")
    maps.add_argument("--params", default="params.yaml", help="predict.* defaults and limits")
    maps.add_argument("-v", "--verbose", action="store_true", help="one line per photo")
    maps.set_defaults(handler=_eval_maps)
    render = sub.add_parser("render-photos", help="render synthetic full-size concrete photos")
    render.add_argument("--out", default="data/photos")
    render.add_argument("--count", type=int, default=3)
    render.add_argument("--seed", type=int, default=7)
    render.add_argument("--width", type=int, default=1600)
    render.add_argument("--height", type=int, default=1200)
    render.add_argument("--quality", type=int, default=70, help="JPEG quality")
    render.set_defaults(handler=_render_photos)
    from crackdet.cli_registry import add_subcommands

    add_subcommands(sub)  # models, promote, promotion-log, trace, reproduce, ci-check
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CrackdetError as exc:
        print(f"crackdet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
