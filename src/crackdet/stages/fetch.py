"""DVC stage ``fetch``: ``python -m crackdet.stages.fetch`` (params: base, fetch)."""

from __future__ import annotations

import sys

from crackdet.core.layout import Layout
from crackdet.data.fetch import fetch
from crackdet.stages._common import run_stage, stage_params


def run(layout: Layout) -> None:
    params = stage_params(layout)
    summary = fetch(params.fetch, params.base.seed, layout)
    for name, source in summary.sources.items():
        classes = ", ".join(f"{k} {v}" for k, v in source.per_class.items())
        skipped = f", {len(source.skipped)} unreadable left out" if source.skipped else ""
        print(f"fetch: {name} ({source.kind}, {source.licence}): {classes}{skipped}")
    print(f"fetch: {summary.count} images; manifest sha256 {summary.manifest_sha256[:12]}")
    if summary.left_out:
        print(f"fetch: left out {len(summary.left_out)}: {'; '.join(summary.left_out)}")


def main() -> int:
    return run_stage("fetch", run)


if __name__ == "__main__":
    sys.exit(main())
