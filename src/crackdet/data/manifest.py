"""Manifests: the CSV that names every image of a data set.

One row per image: ``path`` (relative to the images folder, posix: ``<source>/<label>/<file>``),
``label`` (``Positive`` or ``Negative``, the public set's folder names), ``sha256`` (of the file's
bytes), ``width``, ``height``, ``source`` (the name of the fetch source it came from) and
``group`` (the source photo it was cut from, when the source says; empty: split finds groups by
signature). Fetch writes it; split writes one per split; train and evaluate read them.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from crackdet.core.errors import CrackdetError
from crackdet.core.io import write_text
from crackdet.data.images import LABEL_INDEX

MANIFEST_FIELDS = ("path", "label", "sha256", "width", "height", "source", "group")


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    sha256: str
    width: int
    height: int
    source: str = ""
    group: str = ""  # "" when the source names no photo: split clusters signatures

    @property
    def target(self) -> int:
        return LABEL_INDEX[self.label]


def write_manifest(target: Path, rows: list[ManifestRow]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    for row in rows:
        writer.writerow(
            [row.path, row.label, row.sha256, row.width, row.height, row.source, row.group]
        )
    write_text(target, buf.getvalue())


def read_manifest(path: Path) -> list[ManifestRow]:
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
                raise CrackdetError(
                    f"{path}: not a crackdet manifest (columns: {', '.join(MANIFEST_FIELDS)})"
                )
            rows = []
            for line, rec in enumerate(reader, start=2):
                if rec["label"] not in LABEL_INDEX:
                    raise CrackdetError(f"{path}:{line}: unknown label {rec['label']!r}")
                rows.append(
                    ManifestRow(
                        rec["path"],
                        rec["label"],
                        rec["sha256"],
                        int(rec["width"]),
                        int(rec["height"]),
                        rec["source"],
                        rec["group"],
                    )
                )
            return rows
    except FileNotFoundError:
        raise CrackdetError(f"{path}: not found; run the stage that writes it first") from None


def manifest_digest(rows: list[ManifestRow]) -> str:
    """sha256 over the sorted (path, label, sha256) triples: names the exact data, order-free
    (the path holds the source)."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.path):
        digest.update(f"{row.path}\t{row.label}\t{row.sha256}\n".encode())
    return digest.hexdigest()
