"""``crackdet``'s argument parser and dispatch."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from crackdet import __version__
from crackdet.core.errors import CrackdetError, error_lines
from crackdet.core.layout import Layout
from crackdet.tracking.store import server_unreachable

STAGES = ("fetch", "split", "train", "evaluate", "predict_samples")
DEFAULT_MODEL = "crack-classifier"
HERE = Layout(Path())  # defaults as the user types them: relative to the repo root


def _scale(text: str) -> float | str:
    """``--scale``: a number, or auto."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number or auto") from None


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=str(HERE.train.dir),
        help="checkpoint folder (model.pt + model.json) or models:/crack-classifier@champion",
    )


def _map_options(parser: argparse.ArgumentParser) -> None:
    """How photos are mapped, overriding params.yaml predict.* (checked by the same rules)."""
    parser.add_argument(
        "--scale", type=_scale, help="a number or auto (default: params.yaml predict.scale)"
    )
    parser.add_argument("--overlap", type=float, help="default: params.yaml predict.overlap")
    parser.add_argument(
        "--threshold", type=float, help="default: the model's, else predict.threshold"
    )


def _pipeline_commands(sub: argparse._SubParsersAction) -> None:
    for name in STAGES:
        stage = sub.add_parser(
            name.replace("_", "-"), help=f"run the {name} stage (as `dvc repro` does)"
        )
        stage.set_defaults(handler="pipeline:run_stage", stage=name)
    check = sub.add_parser("check-params", help="validate params.yaml against the schema")
    check.add_argument("--params", default="params.yaml")
    check.set_defaults(handler="pipeline:check_params")
    render = sub.add_parser("render-photos", help="render synthetic full-size concrete photos")
    render.add_argument("--out", default="data/photos")
    render.add_argument("--count", type=int, default=3)
    render.add_argument("--seed", type=int, default=7)
    render.add_argument("--width", type=int, default=1600)
    render.add_argument("--height", type=int, default=1200)
    render.add_argument("--quality", type=int, default=70, help="JPEG quality")
    render.set_defaults(handler="synthetic:render_photos")


def _maps_commands(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser("predict", help="crack maps for photos or folders of photos")
    predict.add_argument("photos", nargs="+", metavar="PHOTO")
    _model_option(predict)
    predict.add_argument(
        "--out", default="predictions", help="a folder or s3://bucket/prefix/ (a campaign)"
    )
    _map_options(predict)
    predict.add_argument(
        "--mm-per-pixel",
        type=float,
        help="the photos' scale for crack lengths and widths (default: predict.mm_per_pixel; "
        "per photo: predict.scale_csv)",
    )
    predict.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=os.environ.get("RAY_ADDRESS") or None,
        help="map on this Ray cluster (host:port of its head, ray://…, auto, or local to start "
        "one here; default: RAY_ADDRESS): a campaign, tracked in MLflow (docs/campaigns.md)",
    )
    predict.add_argument(
        "--workers", type=int, help="Ray actors mapping photos (default: one per cluster CPU)"
    )
    predict.add_argument(
        "--params",
        help="predict.* settings come from here (default: params.yaml of the repository, "
        "else the packaged defaults)",
    )
    predict.set_defaults(handler="maps:predict")
    evaluate = sub.add_parser(
        "eval", help="evaluate a model on any labelled folder/archive (Positive/, Negative/)"
    )
    evaluate.add_argument("data", metavar="DATA", help="folder or .zip/.tar*/.rar archive")
    _model_option(evaluate)
    evaluate.add_argument("--out", help="also write the metrics to this JSON file")
    evaluate.add_argument("--params", default="params.yaml", help="limits and batch size")
    evaluate.set_defaults(handler="maps:eval_data")
    maps = sub.add_parser(
        "eval-maps", help="score crack maps against pixel masks (images/, masks/, masks_planking/)"
    )
    maps.add_argument("data", metavar="DIR_OR_ZIP", help="folder or .zip/.tar*/.rar archive")
    _model_option(maps)
    _map_options(maps)
    maps.add_argument(
        "--photos",
        default="*",
        help="score only photos whose file name matches this glob (e.g. 'val_*' for a held-out "
        "part when scale/threshold were chosen on 'train_*')",
    )
    maps.add_argument(
        "--pixel-threshold",
        type=float,
        help="P(crack pixel) that makes a crack pixel in the pixel figures (default: the pixel "
        "decoder's own)",
    )
    maps.add_argument("--out", help="also write the metrics to this JSON file")
    maps.add_argument(
        "--params",
        help="predict.* defaults and limits (default: params.yaml of the repository, else the "
        "packaged defaults)",
    )
    maps.add_argument("-v", "--verbose", action="store_true", help="one line per photo")
    maps.set_defaults(handler="maps:eval_maps")


def _registry_commands(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="registered versions, aliases and test metrics")
    models.add_argument("--name", default=DEFAULT_MODEL)
    models.add_argument("--log", action="store_true", help="print the promotion log instead")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler="tracking:models")
    log = sub.add_parser("promotion-log", help="the append-only log of alias moves")
    log.add_argument("--name", default=DEFAULT_MODEL)
    log.add_argument("--json", action="store_true")
    log.set_defaults(handler="tracking:promotion_log")
    promote = sub.add_parser(
        "promote", help="move an alias to a version by hand (gated unless --force)"
    )
    promote.add_argument("version")
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--reason", required=True, help="why; recorded in the promotion log")
    promote.add_argument("--force", action="store_true", help="skip the promote.* gates")
    promote.add_argument("--name", default=DEFAULT_MODEL)
    promote.add_argument("--params", default="params.yaml", help="promote.* gates come from here")
    promote.set_defaults(handler="tracking:promote")
    trace = sub.add_parser(
        "trace", help="lineage of a run id, models:/NAME@ALIAS or models:/NAME/VERSION"
    )
    trace.add_argument("target")
    trace.add_argument("--json", action="store_true")
    trace.set_defaults(handler="tracking:trace")
    reproduce = sub.add_parser(
        "reproduce", help="replay a run at its commit, params and data; compare metrics"
    )
    reproduce.add_argument("run_id")
    reproduce.add_argument("--keep", action="store_true", help="keep the temporary worktree")
    reproduce.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[SOURCE=]PATH",
        help="where a source's archive is now, if it moved (checked by sha256); SOURCE may be "
        "left out when the run had one archive source; repeat for several",
    )
    reproduce.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        metavar="ABS",
        help="largest |recorded - replayed| that still matches (default 1e-3: another CPU's "
        "last digits; 0: identical figures only)",
    )
    reproduce.set_defaults(handler="tracking:reproduce")
    ci = sub.add_parser("ci-check", help="validate params, diff params/metrics against REV")
    ci.add_argument("--base", required=True, metavar="REV")
    ci.add_argument("--report", default=HERE.ci_report, type=Path)
    ci.add_argument(
        "--rerun",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto: rerun the pipeline when params or code changed",
    )
    ci.set_defaults(handler="tracking:ci_check")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crackdet",
        description="Concrete crack classifier pipeline (DVC stages, MLflow tracking).",
    )
    parser.add_argument("--version", action="version", version=f"crackdet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _pipeline_commands(sub)
    _maps_commands(sub)
    _registry_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, function = args.handler.split(":")
    try:
        # The subcommand's module only: torch and MLflow load for the commands that use them.
        handler = getattr(importlib.import_module(f"crackdet.cli.{module}"), function)
        return handler(args)
    except CrackdetError as exc:
        print(error_lines(args.command, exc), file=sys.stderr)
        return 2
    except Exception as exc:
        # A tracking server that stops answering, wherever a command meets it: one line.
        error = server_unreachable(exc)
        if error is None:
            raise
        print(f"crackdet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
