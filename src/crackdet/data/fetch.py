"""The fetch stage: bring every named source's labelled patches into ``outputs/fetch``.

Sources (``fetch.sources``, each named): ``archive`` / ``folder`` (a local .zip/.tar*/.rar or a
folder in the public set's layout), ``mendeley`` (the public archive, downloaded with resume),
``synthetic`` (rendered here, offline) and ``masks`` (photos with pixel masks, cut into labelled
windows at several scales). Each lands in ``images/<source>/{Positive,Negative}``; every image is
decoded once here, so a corrupt file is named now rather than failing half way through training.
The manifest records each image's source and, where the source says, the photo it was cut from;
the summary records each source's licence and digests. The output folder is swapped in only when
complete.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.core.io import atomic_dir, write_text
from crackdet.core.layout import FetchOutputs, Layout
from crackdet.core.params import FetchParams, Source, flatten
from crackdet.data.images import CLASSES, decode_image
from crackdet.data.manifest import ManifestRow, manifest_digest, write_manifest
from crackdet.data.records import FetchSummary, SourceSummary
from crackdet.data.signatures import dhash, duplicate_groups, save_signatures, signature
from crackdet.data.sources import KINDS
from crackdet.data.sources.base import FetchContext, GroupOf
from crackdet.data.sources.labelled import ExtractLimits, Imported, class_files

BAD_IMAGE_HINT = "; remove or replace it, or set fetch.on_bad_image: skip"


@dataclass
class IndexedImages:
    rows: list[ManifestRow]
    skipped: list[str]
    hashes: list[int]  # dHash per row
    signatures: list[np.ndarray]  # colour/texture signature per row
    left_out: list[str]  # entries that are not images of a class, with why


def index_images(
    images: Path,
    origin: str,
    on_bad_image: str,
    max_pixels: int,
    source: str = "",
    group_of: GroupOf | None = None,
) -> IndexedImages:
    """Decode every image under ``images/{Positive,Negative}`` once: manifest rows (paths
    relative to ``images``' parent when ``source`` names the subfolder), skipped files, and the
    signatures split and the duplicate report need (so nothing is decoded twice)."""
    rows: list[ManifestRow] = []
    skipped: list[str] = []
    hashes: list[int] = []
    sigs: list[np.ndarray] = []
    left_out: list[str] = []
    prefix = f"{source}/" if source else ""
    for label in CLASSES:
        files, hidden = class_files(images, label)
        left_out += hidden
        if not files:
            raise CrackdetError(
                f"{origin}: class folder {label}/ holds no images; put the class's images in "
                f"{label}/"
            )
        for path in files:
            rel = path.relative_to(images).as_posix()
            data = path.read_bytes()
            try:
                image = decode_image(data, f"{origin}: {rel}", max_pixels)
            except CrackdetError as exc:
                if on_bad_image == "error":
                    # Say what to do, unless the message already names the params key to change.
                    hint = "" if "fetch." in str(exc) else BAD_IMAGE_HINT
                    raise CrackdetError(f"{exc}{hint}") from None
                skipped.append(rel)
                path.unlink()
                continue
            digest = hashlib.sha256(data).hexdigest()
            group = group_of(path.name) if group_of else ""
            rows.append(
                ManifestRow(prefix + rel, label, digest, image.width, image.height, source, group)
            )
            hashes.append(dhash(image))
            sigs.append(signature(image))
    for label in CLASSES:
        if not any(r.label == label for r in rows):
            raise CrackdetError(
                f"{origin}: no readable images left in {label}/; add readable images or fix the "
                "skipped files"
            )
    return IndexedImages(rows, skipped, hashes, sigs, left_out)


def report_duplicates(
    rows: list[ManifestRow], hashes: list[int], max_bits: int, out: Path
) -> dict[str, int]:
    """Write duplicates.csv (group, path, label, sha256) and return counts for the summary."""
    groups = duplicate_groups([r.sha256 for r in rows], np.array(hashes), max_bits)
    lines = ["group,path,label,sha256"]
    exact = conflicts = 0
    for number, members in enumerate(groups, start=1):
        lines += [f"{number},{rows[i].path},{rows[i].label},{rows[i].sha256}" for i in members]
        exact += len({rows[i].sha256 for i in members}) < len(members)
        conflicts += len({rows[i].label for i in members}) > 1
    write_text(out / "duplicates.csv", "\n".join(lines) + "\n")
    return {
        "groups": len(groups),
        "groups_with_identical_bytes": exact,
        "images_in_groups": sum(len(m) for m in groups),
        "groups_with_both_labels": conflicts,
    }


@dataclass(frozen=True)
class _Fetched:
    """One source brought into ``images/<name>``, indexed."""

    indexed: IndexedImages
    imported: Imported
    origin: str
    extra: dict[str, int]  # what a masks source cut, per kind of window


def _fetch_source(
    name: str, source: Source, out: FetchOutputs, params: FetchParams, seed: int, layout: Layout
) -> _Fetched:
    key = f"fetch.sources.{name}"
    target = out.images / name
    work = out.dir / ".work" / name
    work.mkdir(parents=True)
    limits = ExtractLimits(params.max_files, params.max_bytes)
    kept = out.masks / name
    context = FetchContext(key, target, work, limits, params.max_pixels, seed, layout, kept)
    brought = KINDS[source.kind].fetch(context, source)
    shutil.rmtree(work)
    indexed = index_images(
        target, brought.origin, params.on_bad_image, params.max_pixels, name, brought.group_of
    )
    if brought.check is not None:
        brought.check(indexed.rows)
    return _Fetched(indexed, brought.imported, brought.origin, brought.extra)


def fetch(params: FetchParams, seed: int, layout: Layout) -> FetchSummary:
    """Run the fetch stage into ``outputs/fetch`` (images/, manifest.csv, summary.json)."""
    with atomic_dir(layout.fetch.dir) as folder:
        out = FetchOutputs(folder)
        rows: list[ManifestRow] = []
        hashes: list[int] = []
        sigs: list[np.ndarray] = []
        sources: dict[str, SourceSummary] = {}
        for name, source in params.sources.items():
            fetched = _fetch_source(name, source, out, params, seed, layout)
            indexed = fetched.indexed
            rows += indexed.rows
            hashes += indexed.hashes
            sigs += indexed.signatures
            sources[name] = SourceSummary(
                kind=source.kind,
                licence=source.licence,
                origin=fetched.origin,
                count=len(indexed.rows),
                per_class={c: sum(r.label == c for r in indexed.rows) for c in CLASSES},
                archive_sha256=fetched.imported.archive_sha256,
                archive_md5=fetched.imported.archive_md5,
                skipped=indexed.skipped,
                left_out=fetched.imported.left_out + indexed.left_out,
                windows=fetched.extra,
            )
        shutil.rmtree(out.dir / ".work", ignore_errors=True)
        write_manifest(out.manifest, rows)
        save_signatures(out.signatures, [r.path for r in rows], hashes, sigs)
        summary = FetchSummary(
            sources=sources,
            count=len(rows),
            per_class={c: sum(r.label == c for r in rows) for c in CLASSES},
            manifest_sha256=manifest_digest(rows),
            duplicates=report_duplicates(rows, hashes, params.near_duplicate_bits, folder),
            params=flatten({"base": {"seed": seed}, "fetch": asdict(params)}),
        )
        summary.write(out.summary)
    return summary
