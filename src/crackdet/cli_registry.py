"""Subcommands around the registry, lineage and CI: models, promote, promotion-log, trace,
reproduce, ci-check (registered into the ``crackdet`` parser by :func:`add_subcommands`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from crackdet.params import load_params
from crackdet.tracking import repo_root

DEFAULT_MODEL = "crack-classifier"


def _models(args: argparse.Namespace) -> int:
    from crackdet.registry import client_for, format_log, format_table, list_versions, read_log

    client = client_for()
    if args.log:
        print(format_log(read_log(client, args.name)))
        return 0
    rows = list_versions(client, args.name)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _promotion_log(args: argparse.Namespace) -> int:
    from crackdet.registry import client_for, format_log, read_log

    entries = read_log(client_for(), args.name)
    print(json.dumps(entries, indent=2) if args.json else format_log(entries))
    return 0


def _promote(args: argparse.Namespace) -> int:
    from crackdet.registry import (
        client_for,
        get_version,
        manual_promote,
        workspace_reevaluator,
    )

    root = repo_root()
    params = load_params(root / args.params)
    client = client_for(root)
    candidate = get_version(client, args.name, args.version)
    rescore = workspace_reevaluator(root, candidate, params.evaluate.batch_size)
    entry = manual_promote(
        client,
        args.name,
        args.version,
        args.alias,
        args.reason,
        params.promote,
        force=args.force,
        reevaluate=rescore,
    )
    source = f"v{entry['from']}" if entry["from"] is not None else "nobody"
    print(
        f"promote: {args.name} @{args.alias}: {source} -> v{entry['to']} "
        f"[{entry['mode']}] (log #{entry['seq']})"
    )
    return 0


def _trace(args: argparse.Namespace) -> int:
    from crackdet.lineage import format_trace, trace
    from crackdet.registry import client_for

    root = repo_root()
    info = trace(client_for(root), args.target, root)
    print(json.dumps(info, indent=2, default=str) if args.json else format_trace(info))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from crackdet.lineage import reproduce
    from crackdet.registry import client_for

    root = repo_root()
    replay = reproduce(client_for(root), args.run_id, root, keep=args.keep)
    print(replay.report())
    if replay.worktree is not None:
        print(f"reproduce: worktree kept at {replay.worktree} (git worktree remove it when done)")
    return 1 if replay.mismatches else 0


def _ci_check(args: argparse.Namespace) -> int:
    from crackdet.ci_check import ci_check, markdown, write_report

    root = repo_root()
    result = ci_check(root, args.base, rerun=args.rerun)
    report = write_report(result, root / args.report)
    print(markdown(result))
    print(f"ci-check: {'PASS' if result.ok else 'FAIL'}; report in {report}")
    return 0 if result.ok else 1


def add_subcommands(sub: Any) -> None:
    """Add the registry, lineage and CI subcommands to the ``crackdet`` parser."""
    models = sub.add_parser("models", help="registered versions, aliases and test metrics")
    models.add_argument("--name", default=DEFAULT_MODEL)
    models.add_argument("--log", action="store_true", help="print the promotion log instead")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=_models)

    log = sub.add_parser("promotion-log", help="the append-only log of alias moves")
    log.add_argument("--name", default=DEFAULT_MODEL)
    log.add_argument("--json", action="store_true")
    log.set_defaults(handler=_promotion_log)

    promote = sub.add_parser(
        "promote", help="move an alias to a version by hand (gated unless --force)"
    )
    promote.add_argument("version")
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--reason", required=True, help="why; recorded in the promotion log")
    promote.add_argument("--force", action="store_true", help="skip the promote.* gates")
    promote.add_argument("--name", default=DEFAULT_MODEL)
    promote.add_argument("--params", default="params.yaml", help="promote.* gates come from here")
    promote.set_defaults(handler=_promote)

    trace = sub.add_parser(
        "trace", help="lineage of a run id, models:/NAME@ALIAS or models:/NAME/VERSION"
    )
    trace.add_argument("target")
    trace.add_argument("--json", action="store_true")
    trace.set_defaults(handler=_trace)

    reproduce = sub.add_parser(
        "reproduce", help="replay a run at its commit, params and data; compare metrics"
    )
    reproduce.add_argument("run_id")
    reproduce.add_argument("--keep", action="store_true", help="keep the temporary worktree")
    reproduce.set_defaults(handler=_reproduce)

    ci = sub.add_parser("ci-check", help="validate params, diff params/metrics against REV")
    ci.add_argument("--base", required=True, metavar="REV")
    ci.add_argument("--report", default="outputs/ci-check.md", type=Path)
    ci.add_argument(
        "--rerun",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto: rerun the pipeline when params or code changed",
    )
    ci.set_defaults(handler=_ci_check)
