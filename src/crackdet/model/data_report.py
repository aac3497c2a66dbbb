"""Data report for label audit: counts, duplicates, image statistics per class, hardest examples.

Written by evaluate into ``outputs/evaluate/report/`` (``data.md`` + ``hardest.png``) and logged
to the MLflow run. The hardest examples are the test images with the highest loss under the
trained model: the first place to look for label errors or for what the model cannot do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from crackdet.core.io import write_text, write_with
from crackdet.core.layout import Layout
from crackdet.data.images import CLASSES
from crackdet.data.manifest import ManifestRow
from crackdet.data.records import FetchSummary, SplitSummary
from crackdet.data.signatures import load_signatures


def hardest(
    rows: list[ManifestRow], targets: np.ndarray, probabilities: np.ndarray, count: int
) -> list[tuple[ManifestRow, float, float]]:
    """(row, crack probability, loss) of the ``count`` highest-loss images, worst first."""
    p_true = np.where(targets == 1, probabilities, 1.0 - probabilities)
    loss = -np.log(np.clip(p_true, 1e-7, 1.0))
    order = np.argsort(-loss, kind="stable")[:count]
    return [(rows[i], float(probabilities[i]), float(loss[i])) for i in order]


def contact_sheet(
    images_dir: Path, worst: list[tuple[ManifestRow, float, float]], columns: int = 4
) -> Image.Image:
    tile, label_h = 160, 28
    rows_n = max(1, -(-len(worst) // columns))
    sheet = Image.new("RGB", (columns * tile, rows_n * (tile + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (row, prob, loss) in enumerate(worst):
        x, y = (k % columns) * tile, (k // columns) * (tile + label_h)
        with Image.open(images_dir / row.path) as image:
            sheet.paste(image.convert("RGB").resize((tile, tile)), (x, y))
        draw.text((x + 3, y + tile + 1), f"{row.path[:24]}", fill=(0, 0, 0))
        draw.text(
            (x + 3, y + tile + 13), f"{row.label} p={prob:.3f} loss={loss:.2f}", fill=(0, 0, 0)
        )
    return sheet


def write_data_report(
    layout: Layout,
    test_rows: list[ManifestRow],
    targets: np.ndarray,
    probabilities: np.ndarray,
    out: Path,
    count: int = 16,
) -> list[Path]:
    """Write data.md and hardest.png into ``out``; return their paths."""
    fetched = FetchSummary.read(layout.fetch.summary)
    split = SplitSummary.read(layout.split.summary)
    lines = [
        "# Data report",
        "",
        f"{fetched.count} images "
        f"({', '.join(f'{k} {v}' for k, v in fetched.per_class.items())}); "
        f"manifest sha256 `{fetched.manifest_sha256}`",
        "",
        "| source | kind | licence | images | Negative | Positive | archive sha256 |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {s.kind} | {s.licence} | {s.count} | {s.per_class.get(CLASSES[0], 0)} | "
            f"{s.per_class.get(CLASSES[1], 0)} | {s.archive_sha256 or '–'} |"
            for name, s in fetched.sources.items()
        ],
        "",
        f"Unreadable images left out: {len(fetched.skipped)}"
        + "".join(f"\n- {path}" for path in fetched.skipped),
        f"Other entries left out: {len(fetched.left_out)}"
        + "".join(f"\n- {entry}" for entry in fetched.left_out),
        "",
        "## Duplicates (fetch: identical bytes or near-identical dHash)",
        "",
        *[f"- {key.replace('_', ' ')}: {value}" for key, value in fetched.duplicates.items()],
        "",
        f"## Split: {split.strategy}, {split.groups} groups, "
        f"fingerprint `{split.fingerprint[:16]}`",
        "",
        "| split | " + " | ".join(CLASSES) + " |",
        "|---|" + "---|" * len(CLASSES),
        *[
            f"| {name} | " + " | ".join(str(counts[c]) for c in CLASSES) + " |"
            for name, counts in split.counts.items()
        ],
    ]
    signatures_file = layout.fetch.signatures
    if signatures_file.exists():
        paths, _, sigs = load_signatures(signatures_file)
        labels = np.array([p.split("/", 1)[0] for p in paths])
        lines += [
            "",
            "## Image statistics per class (16x16 thumbnails, RGB in [0, 1])",
            "",
            "| class | mean R | mean G | mean B | std R | std G | std B |",
            "|---|---|---|---|---|---|---|",
        ]
        for label in CLASSES:
            chosen = sigs[labels == label]
            if len(chosen):
                values = chosen[:, :6].mean(0)
                lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    worst = hardest(test_rows, targets, probabilities, count)
    lines += [
        "",
        f"## Hardest {len(worst)} test images (highest loss): hardest.png",
        "",
        "| path | label | p(crack) | loss |",
        "|---|---|---|---|",
        *[f"| {r.path} | {r.label} | {p:.4f} | {loss:.3f} |" for r, p, loss in worst],
    ]
    write_text(out / "data.md", "\n".join(lines) + "\n")
    sheet = contact_sheet(layout.fetch.images, worst)
    write_with(out / "hardest.png", lambda tmp: sheet.save(tmp, format="PNG"))
    return [out / "data.md", out / "hardest.png"]
