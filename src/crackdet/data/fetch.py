"""The fetch stage: bring the labelled patches into ``outputs/fetch`` with a manifest.

Sources: ``synthetic`` (rendered here, offline, the embedded default), ``archive`` (a local
.zip/.tar*/.rar or a folder in the public set's layout) and ``mendeley`` (the public archive,
downloaded with resume). Whatever the source, every image is decoded once here, so a corrupt file
is named now rather than failing half way through training, and the output folder is swapped in
only when complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.core.io import atomic_dir, file_digests, sha256_file, write_text
from crackdet.core.layout import FetchOutputs, Layout
from crackdet.core.params import FetchParams, flatten
from crackdet.data.archive import download, extract
from crackdet.data.images import CLASSES, decode_image
from crackdet.data.manifest import ManifestRow, manifest_digest, write_manifest
from crackdet.data.records import FetchSummary
from crackdet.data.signatures import dhash, duplicate_groups, save_signatures, signature
from crackdet.data.synthetic import write_patch_set

# The public set as published (Özgenel 2019, V2): checked when it is downloaded.
PUBLIC_PER_CLASS = 20_000
PUBLIC_SIZE = (227, 227)
PUBLIC_ARCHIVE = "concrete-crack-images-5y9wdsg2zt.rar"  # its name in the download cache


def find_class_root(folder: Path, origin: str) -> Path:
    """The folder holding ``Positive/`` and ``Negative/`` (at the top or up to 3 levels down)."""
    candidates = [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]
    for candidate in candidates:
        if len(candidate.relative_to(folder).parts) > 3:
            continue
        if all((candidate / name).is_dir() for name in CLASSES):
            return candidate
    found = sorted(p.name for p in folder.iterdir())[:6]
    raise CrackdetError(
        f"{origin}: expected folders Positive/ and Negative/ (the public set's layout); "
        f"found {', '.join(found) or 'nothing'}"
    )


def _class_files(class_root: Path, label: str) -> tuple[list[Path], list[str]]:
    """The files of one class folder, and what is left out of it, named: hidden entries
    (``.DS_Store``, AppleDouble ``._x.jpg``: OS litter) and anything that is not a plain file."""
    files, left_out = [], []
    for folder, dirs, names in os.walk(class_root / label):
        base = Path(folder)
        for name in sorted(dirs):
            if name.startswith("."):
                left_out.append(f"{(base / name).relative_to(class_root).as_posix()}/ (hidden)")
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = base / name
            rel = path.relative_to(class_root).as_posix()
            if name.startswith("."):
                left_out.append(f"{rel} (hidden)")
            elif not path.is_file() or path.is_symlink():
                left_out.append(f"{rel} (not a plain file)")
            else:
                files.append(path)
    return sorted(files), left_out


@dataclass
class IndexedImages:
    rows: list[ManifestRow]
    skipped: list[str]
    hashes: list[int]  # dHash per row
    signatures: list[np.ndarray]  # colour/texture signature per row
    left_out: list[str]  # entries that are not images of a class, with why


BAD_IMAGE_HINT = "; remove or replace it, or set fetch.on_bad_image: skip"


def index_images(images: Path, origin: str, on_bad_image: str, max_pixels: int) -> IndexedImages:
    """Decode every image under ``images/{Positive,Negative}`` once: manifest rows, skipped files,
    and the signatures split and the duplicate report need (so nothing is decoded twice)."""
    rows: list[ManifestRow] = []
    skipped: list[str] = []
    hashes: list[int] = []
    sigs: list[np.ndarray] = []
    left_out: list[str] = []
    for label in CLASSES:
        files, hidden = _class_files(images, label)
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
            rows.append(
                ManifestRow(rel, label, hashlib.sha256(data).hexdigest(), image.width, image.height)
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


def report_duplicates(indexed: IndexedImages, max_bits: int, out: Path) -> dict[str, int]:
    """Write duplicates.csv (group, path, label, sha256) and return counts for the summary."""
    rows = indexed.rows
    groups = duplicate_groups([r.sha256 for r in rows], np.array(indexed.hashes), max_bits)
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


def check_public_layout(rows: list[ManifestRow], origin: str) -> None:
    """The downloaded archive must be the public set: 20,000 + 20,000 images of 227x227."""
    counts = {label: sum(r.label == label for r in rows) for label in CLASSES}
    sizes = {(r.width, r.height) for r in rows}
    if any(n != PUBLIC_PER_CLASS for n in counts.values()) or sizes != {PUBLIC_SIZE}:
        found = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise CrackdetError(
            f"{origin}: not the public set as published (expected {PUBLIC_PER_CLASS} Positive + "
            f"{PUBLIC_PER_CLASS} Negative 227x227 images; found {found}, sizes "
            f"{sorted(sizes)[:3]}); pin fetch.sha256 to the archive you trust"
        )


def _copy_classes(class_root: Path, images: Path, origin: str) -> list[str]:
    """Copy the class folders of a folder source; return what was left out, named. Links to
    files are read as the files they point to; a broken link stops fetch (it names an image
    that is not there); links to folders are not followed (a link to a parent folder would
    copy the tree into itself)."""
    left_out = []
    for label in CLASSES:
        for folder, dirs, names in os.walk(class_root / label):
            base = Path(folder)
            target = images / base.relative_to(class_root)
            target.mkdir(parents=True, exist_ok=True)
            for name in sorted(dirs):
                if (base / name).is_symlink():
                    rel = (base / name).relative_to(class_root).as_posix()
                    left_out.append(f"{rel}/ (linked folder, not followed)")
            dirs[:] = sorted(d for d in dirs if not (base / d).is_symlink())
            for name in sorted(names):
                path = base / name
                if path.is_symlink() and not path.exists():
                    rel = path.relative_to(class_root).as_posix()
                    raise CrackdetError(
                        f"{origin}: {rel}: broken link to {os.readlink(path)}; remove it or "
                        "put the file it names there"
                    )
                if path.is_file():
                    shutil.copyfile(path, target / name)
    return left_out


def _from_archive_file(
    archive_path: Path, work: Path, images: Path, params: FetchParams
) -> list[str]:
    extracted = work / "extracted"
    extract(archive_path, extracted, max_files=params.max_files, max_bytes=params.max_bytes)
    class_root = find_class_root(extracted, str(archive_path))
    left_out = _beside_classes(class_root, extracted)
    images.mkdir()
    for label in CLASSES:
        (class_root / label).rename(images / label)
    shutil.rmtree(extracted)
    return left_out


def _beside_classes(class_root: Path, top: Path) -> list[str]:
    """Entries next to ``Positive/`` and ``Negative/`` (left out: they are no class), named."""
    return [
        f"{p.relative_to(top).as_posix()}{'/' if p.is_dir() else ''} (not a class folder)"
        for p in sorted(class_root.iterdir())
        if p.name not in CLASSES
    ]


@dataclass(frozen=True)
class Imported:
    """A labelled source copied into ``images/``: its archive digest (None for a folder) and
    what was left out of it, named."""

    archive_sha256: str | None
    left_out: list[str]
    archive_md5: str | None = None


def import_labelled(path: Path, images: Path, work: Path, params: FetchParams) -> Imported:
    """Copy or extract a folder/archive in the public layout into ``images/{Positive,Negative}``."""
    if path.is_dir():
        class_root = find_class_root(path, str(path))
        left_out = _beside_classes(class_root, path)
        return Imported(None, left_out + _copy_classes(class_root, images, str(path)))
    sha256, md5 = file_digests(path)
    return Imported(sha256, _from_archive_file(path, work, images, params), md5)


def resolve_archive(root: Path, archive: str) -> Path:
    path = Path(archive).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise CrackdetError(f"fetch.archive: {archive} does not exist (path relative to {root})")
    return path


def fetch(params: FetchParams, seed: int, layout: Layout) -> FetchSummary:
    """Run the fetch stage into ``outputs/fetch`` (images/, manifest.csv, summary.json)."""
    imported = Imported(None, [])
    with atomic_dir(layout.fetch.dir) as folder:
        out = FetchOutputs(folder)
        work = folder / ".work"
        work.mkdir()
        if params.source == "synthetic":
            write_patch_set(out.images, params.synthetic_per_class, seed)
            origin = "synthetic"
        elif params.source == "archive":
            origin = params.archive
            imported = import_labelled(
                resolve_archive(layout.root, params.archive), out.images, work, params
            )
        else:  # mendeley
            digest = _download_public(params, layout.downloads)
            origin = params.url
            left_out = _from_archive_file(
                layout.downloads / PUBLIC_ARCHIVE, work, out.images, params
            )
            imported = Imported(digest, left_out)
        shutil.rmtree(work)
        indexed = index_images(out.images, origin, params.on_bad_image, params.max_pixels)
        rows = indexed.rows
        if params.source == "mendeley":
            check_public_layout(rows, origin)
        write_manifest(out.manifest, rows)
        save_signatures(out.signatures, [r.path for r in rows], indexed.hashes, indexed.signatures)
        summary = FetchSummary(
            source=params.source,
            count=len(rows),
            per_class={label: sum(r.label == label for r in rows) for label in CLASSES},
            skipped=indexed.skipped,
            manifest_sha256=manifest_digest(rows),
            archive_sha256=imported.archive_sha256,
            archive_md5=imported.archive_md5,
            duplicates=report_duplicates(indexed, params.near_duplicate_bits, folder),
            left_out=imported.left_out + indexed.left_out,
            params=flatten({"base": {"seed": seed}, "fetch": asdict(params)}),
        )
        summary.write(out.summary)
    return summary


def _download_public(params: FetchParams, downloads: Path) -> str:
    """The public archive in ``downloads``: a finished earlier download is reused unless it
    contradicts the ``fetch.sha256`` pin; returns its sha256."""
    target = downloads / PUBLIC_ARCHIVE
    if target.exists():
        digest = sha256_file(target)
        if not params.sha256 or digest == params.sha256:
            return digest
        target.unlink()
    return download(params.url, target, sha256=params.sha256 or None)
