"""``crackdet models|promotion-log|promote|trace|reproduce|ci-check``: the registry, lineage and
the CI gate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crackdet.cli.format import format_log, format_table
from crackdet.core.errors import CrackdetError
from crackdet.core.layout import Layout, repo_root
from crackdet.core.params import load_params
from crackdet.tracking.lineage import format_trace
from crackdet.workflows.ci_check import ci_check as run_ci_check
from crackdet.workflows.ci_check import markdown, write_report
from crackdet.workflows.models import list_models
from crackdet.workflows.models import promotion_log as read_log
from crackdet.workflows.promote import promote as promote_version
from crackdet.workflows.reproduce import reproduce as replay_run
from crackdet.workflows.trace import trace as trace_run


def models(args: argparse.Namespace) -> int:
    if args.log:
        print(format_log(read_log(repo_root(), args.name)))
        return 0
    rows = list_models(repo_root(), args.name)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def promotion_log(args: argparse.Namespace) -> int:
    entries = read_log(repo_root(), args.name)
    print(json.dumps(entries, indent=2) if args.json else format_log(entries))
    return 0


def promote(args: argparse.Namespace) -> int:
    layout = Layout(repo_root())
    params = load_params(layout.root / args.params)
    entry = promote_version(
        layout,
        params.evaluate,
        params.promote,
        args.name,
        args.version,
        args.alias,
        args.reason,
        force=args.force,
    )
    source = f"v{entry['from']}" if entry["from"] is not None else "nobody"
    print(
        f"promote: {args.name} @{args.alias}: {source} -> v{entry['to']} "
        f"[{entry['mode']}] (log #{entry['seq']})"
    )
    return 0


def trace(args: argparse.Namespace) -> int:
    root = repo_root()
    info = trace_run(root, args.target)
    print(json.dumps(info, indent=2, default=str) if args.json else format_trace(info))
    return 0


def reproduce(args: argparse.Namespace) -> int:
    root = repo_root()
    data = dict(_source_path(item) for item in args.data)
    if not args.tolerance >= 0:  # NaN too
        raise CrackdetError(f"--tolerance {args.tolerance}: give a number >= 0 (0: identical)")
    replay = replay_run(root, args.run_id, keep=args.keep, data=data, tolerance=args.tolerance)
    print(replay.report())
    if replay.worktree is not None:
        print(f"reproduce: worktree kept at {replay.worktree} (git worktree remove it when done)")
    return 1 if replay.mismatches else 0


def _source_path(item: str) -> tuple[str, Path]:
    """``--data SOURCE=PATH`` (or a bare PATH: the run's only archive source, named "")."""
    name, sep, path = item.partition("=")
    if not sep or "/" in name or not name:  # a path that holds "=" is still a path
        return "", Path(item)
    return name, Path(path)


def ci_check(args: argparse.Namespace) -> int:
    root = repo_root()
    result = run_ci_check(root, args.base, rerun=args.rerun)
    report = write_report(result, root / args.report)
    print(markdown(result))
    print(f"ci-check: {'PASS' if result.ok else 'FAIL'}; report in {report}")
    return 0 if result.ok else 1
