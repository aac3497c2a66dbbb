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
    from crackdet.models import load_checkpoint
    from crackdet.params import load_params
    from crackdet.predict import list_photos
    from crackdet.stages.predict_samples import map_photos

    predict_params = load_params(args.params).predict
    model_dir = Path(args.model)
    model = load_checkpoint(model_dir / "model.pt", model_dir / "model.json")
    photos: list[Path] = []
    for item in map(Path, args.photos):
        photos.extend(list_photos(item) if item.is_dir() else [item])
    out = Path(args.out)
    _, errors = map_photos(model, photos, out, predict_params)
    print(f"predict: {len(photos) - len(errors)} of {len(photos)} photos mapped into {out}")
    return 1 if errors else 0


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
    predict.add_argument(
        "--model", default="outputs/train", help="folder with model.pt and model.json"
    )
    predict.add_argument("--out", default="predictions")
    predict.add_argument(
        "--params", default="params.yaml", help="predict.* settings come from here"
    )
    predict.set_defaults(handler=_predict)
    render = sub.add_parser("render-photos", help="render synthetic full-size concrete photos")
    render.add_argument("--out", default="data/photos")
    render.add_argument("--count", type=int, default=3)
    render.add_argument("--seed", type=int, default=7)
    render.add_argument("--width", type=int, default=1600)
    render.add_argument("--height", type=int, default=1200)
    render.add_argument("--quality", type=int, default=70, help="JPEG quality")
    render.set_defaults(handler=_render_photos)
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
