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
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.core.io import atomic_dir, file_digests, write_text
from crackdet.core.layout import FetchOutputs, Layout
from crackdet.core.params import (
    FetchParams,
    LabelledSource,
    MasksSource,
    Source,
    SyntheticSource,
    flatten,
)
from crackdet.data.archive import extract
from crackdet.data.images import CLASSES, decode_image
from crackdet.data.manifest import ManifestRow, manifest_digest, write_manifest
from crackdet.data.records import FetchSummary, SourceSummary
from crackdet.data.signatures import dhash, duplicate_groups, save_signatures, signature
from crackdet.data.sources.labelled import (
    ExtractLimits,
    Imported,
    check_public_layout,
    class_files,
    import_labelled,
    import_public,
    resolve_path,
)
from crackdet.data.sources.masks import cut_windows, photo_of
from crackdet.data.sources.synthetic import write_patch_set

BAD_IMAGE_HINT = "; remove or replace it, or set fetch.on_bad_image: skip"
GroupOf = Callable[[str], str]  # file name -> the photo it was cut from ("" if unknown)


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


def filename_groups(pattern: str, key: str) -> GroupOf:
    """Photo of a file by a regular expression's first group (``group_by``); a file the
    pattern does not match stops fetch, naming it and the params key."""
    compiled = re.compile(pattern)

    def group(name: str) -> str:
        match = compiled.search(name)
        if match is None or not match.group(1):
            raise CrackdetError(
                f"{key}.group_by '{pattern}' names no photo in the file name {name}; fix the "
                "pattern or set it to signature"
            )
        return match.group(1)

    return group


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
    extra: dict[str, int] = {}
    group_of: GroupOf | None = None
    if isinstance(source, SyntheticSource):
        write_patch_set(target, source.per_class, seed, style=source.style)
        origin, imported = f"{key} (synthetic)", Imported(None, None, [])
    elif isinstance(source, MasksSource):
        path = resolve_path(layout.root, source.path, f"{key}.path")
        origin = source.path
        masks = import_masks(path, work, limits)
        cut, left_out = cut_windows(masks.folder, source, target, seed, params.max_pixels)
        imported = Imported(masks.archive_sha256, masks.archive_md5, left_out)
        extra = asdict(cut)
        group_of = photo_of
    elif source.kind == "mendeley":
        origin = source.path
        imported = import_public(source.path, source.sha256, layout.downloads, target, work, limits)
    else:
        path = resolve_path(layout.root, source.path, f"{key}.path")
        origin = source.path
        if source.kind == "folder" and not path.is_dir():
            raise CrackdetError(f"{key}.path: {source.path} is not a folder; use kind: archive")
        if source.kind == "archive" and path.is_dir():
            raise CrackdetError(f"{key}.path: {source.path} is a folder; use kind: folder")
        imported = import_labelled(path, target, work, limits)
        if source.sha256 and imported.archive_sha256 != source.sha256:
            raise CrackdetError(
                f"{key}.sha256: {source.path} has sha256 {imported.archive_sha256}, not the "
                f"pinned {source.sha256}; use the archive you pinned or update the pin"
            )
    if isinstance(source, LabelledSource) and source.group_by != "signature":
        group_of = filename_groups(source.group_by, key)
    shutil.rmtree(work)
    indexed = index_images(target, origin, params.on_bad_image, params.max_pixels, name, group_of)
    if isinstance(source, LabelledSource) and source.kind == "mendeley":
        check_public_layout(indexed.rows, origin, key)
    return _Fetched(indexed, imported, origin, extra)


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


@dataclass(frozen=True)
class MasksFolder:
    """A masks source made readable: its folder (extracted from an archive into ``work``)."""

    folder: Path
    archive_sha256: str | None
    archive_md5: str | None


def import_masks(path: Path, work: Path, limits: ExtractLimits) -> MasksFolder:
    """A masks source's folder: read in place, or an archive extracted into ``work``."""
    if path.is_dir():
        return MasksFolder(path, None, None)
    sha256, md5 = file_digests(path)
    folder = work / "extracted"
    extract(path, folder, max_files=limits.max_files, max_bytes=limits.max_bytes)
    return MasksFolder(folder, sha256, md5)
