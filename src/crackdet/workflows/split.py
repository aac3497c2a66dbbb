"""The split stage's work: fetch's manifest, signatures and duplicate groups in; three
manifests, the group of every image and the summary out (``outputs/split``); one line."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from crackdet.core.io import atomic_dir, write_text
from crackdet.core.layout import Layout
from crackdet.core.params import BaseParams, SplitParams, flatten
from crackdet.data.manifest import manifest_digest, read_manifest, write_manifest
from crackdet.data.records import SplitSummary
from crackdet.data.signatures import load_signatures
from crackdet.data.splitting import SplitResult, read_duplicate_groups, split_rows


def split(layout: Layout, base: BaseParams, cfg: SplitParams) -> tuple[SplitResult, SplitSummary]:
    """Split fetch's manifest into ``outputs/split`` (three manifests, groups, summary)."""
    fetched = layout.fetch
    rows = read_manifest(fetched.manifest)
    signatures = None
    if fetched.signatures.exists():
        paths, _, sigs = load_signatures(fetched.signatures)
        by_path = dict(zip(paths, sigs, strict=True))
        signatures = np.stack([by_path[r.path] for r in rows])
    duplicates = read_duplicate_groups(fetched.duplicates)
    result = split_rows(rows, cfg, base.seed, duplicates, signatures)
    split_of = {r.path: name for name, members in result.splits.items() for r in members}
    summary = SplitSummary(
        strategy=cfg.strategy,
        fingerprint=result.fingerprint,
        test_fingerprint=manifest_digest(result.splits["test"]),
        groups=len(set(result.group_of.values())),
        counts=result.counts(),
        seed=base.seed,
        params=flatten({"base": {"seed": base.seed}, "split": asdict(cfg)}),
    )
    with atomic_dir(layout.split.dir) as out:
        written = type(layout.split)(out)
        for name, members in result.splits.items():
            write_manifest(written.manifest(name), members)
        write_text(
            written.groups,
            "path,group,split\n"
            + "".join(f"{p},{g},{split_of[p]}\n" for p, g in sorted(result.group_of.items())),
        )
        summary.write(written.summary)
    sizes = ", ".join(f"{name} {len(members)}" for name, members in result.splits.items())
    print(f"split: {sizes}; fingerprint {summary.fingerprint[:12]}")
    return result, summary
