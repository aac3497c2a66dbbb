"""The fetch stage's work: every source of ``fetch.sources`` into ``outputs/fetch`` (images,
manifest, signatures, duplicates, summary), then one line per source and the totals."""

from __future__ import annotations

from crackdet.core.layout import Layout
from crackdet.core.params import BaseParams, FetchParams
from crackdet.data.fetch import fetch as fetch_sources
from crackdet.data.records import FetchSummary


def fetch(layout: Layout, base: BaseParams, cfg: FetchParams) -> FetchSummary:
    summary = fetch_sources(cfg, base.seed, layout)
    for name, source in summary.sources.items():
        classes = ", ".join(f"{k} {v}" for k, v in source.per_class.items())
        skipped = f", {len(source.skipped)} unreadable left out" if source.skipped else ""
        print(f"fetch: {name} ({source.kind}, {source.licence}): {classes}{skipped}")
    print(f"fetch: {summary.count} images; manifest sha256 {summary.manifest_sha256[:12]}")
    if summary.left_out:
        print(f"fetch: left out {len(summary.left_out)}: {'; '.join(summary.left_out)}")
    return summary
