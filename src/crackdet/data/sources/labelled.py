"""Sources of labelled patches in the public set's layout: a local archive or folder holding
``Positive/`` and ``Negative/`` (at the top or up to 3 levels down), or the public set downloaded
from Mendeley. Each is copied or extracted into ``<images>/{Positive,Negative}``; whatever is
left out of it is named, never skipped silently."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from crackdet.core.errors import CrackdetError
from crackdet.core.io import file_digests
from crackdet.data.archive import download, extract
from crackdet.data.images import CLASSES
from crackdet.data.manifest import ManifestRow

# The public set as published (Özgenel 2019, V2): checked when it is downloaded.
PUBLIC_PER_CLASS = 20_000
PUBLIC_SIZE = (227, 227)
PUBLIC_ARCHIVE = "concrete-crack-images-5y9wdsg2zt.rar"  # its name in the download cache


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what an archive may unpack (``fetch.max_files``, ``fetch.max_bytes``)."""

    max_files: int = 100_000
    max_bytes: int = 4 * 1024**3


@dataclass(frozen=True)
class Imported:
    """A labelled source copied into ``images/``: its archive's digests (None for a folder)
    and what was left out of it, named."""

    archive_sha256: str | None
    archive_md5: str | None
    left_out: list[str]


def find_class_root(folder: Path, origin: str) -> Path:
    """The folder holding ``Positive/`` and ``Negative/`` (at the top or up to 3 levels down).
    Two such folders (``set1/``, ``set2/``) are refused: using one would drop the other
    unsaid, and merging them could mix two data sets' file names."""
    found: list[Path] = []
    for candidate in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if len(candidate.relative_to(folder).parts) > 3:
            continue
        if any(candidate.is_relative_to(root) for root in found):
            continue  # inside a class folder already found: its images
        if all((candidate / name).is_dir() for name in CLASSES):
            found.append(candidate)
    if len(found) > 1:
        places = ", ".join(f"{p.relative_to(folder).as_posix()}/" for p in found[:4])
        raise CrackdetError(
            f"{origin}: Positive/ and Negative/ in {len(found)} places ({places}); one path "
            "holds one data set: point at one of them (for fetch: a source for each)"
        )
    if found:
        return found[0]
    listed = sorted(p.name for p in folder.iterdir())[:6]
    raise CrackdetError(
        f"{origin}: expected folders Positive/ and Negative/ (the public set's layout); "
        f"found {', '.join(listed) or 'nothing'}"
    )


def class_files(class_root: Path, label: str) -> tuple[list[Path], list[str]]:
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


def _beside_classes(class_root: Path, top: Path) -> list[str]:
    """Entries next to ``Positive/`` and ``Negative/``, and next to every folder above them up
    to ``top`` (left out: they are no class), named."""
    left_out = []
    folder = class_root
    keep = set(CLASSES)
    while True:
        left_out += [
            f"{p.relative_to(top).as_posix()}{'/' if p.is_dir() else ''} (not a class folder)"
            for p in sorted(folder.iterdir())
            if p.name not in keep
        ]
        if folder == top:
            return sorted(left_out)
        keep, folder = {folder.name}, folder.parent


def _from_archive_file(
    archive_path: Path, work: Path, images: Path, limits: ExtractLimits
) -> list[str]:
    extracted = work / "extracted"
    extract(archive_path, extracted, max_files=limits.max_files, max_bytes=limits.max_bytes)
    class_root = find_class_root(extracted, str(archive_path))
    left_out = _beside_classes(class_root, extracted)
    images.mkdir(parents=True)
    for label in CLASSES:
        (class_root / label).rename(images / label)
    shutil.rmtree(extracted)
    return left_out


def import_labelled(path: Path, images: Path, work: Path, limits: ExtractLimits) -> Imported:
    """Copy or extract a folder/archive in the public layout into ``images/{Positive,Negative}``."""
    if path.is_dir():
        class_root = find_class_root(path, str(path))
        left_out = _beside_classes(class_root, path)
        return Imported(None, None, left_out + _copy_classes(class_root, images, str(path)))
    sha256, md5 = file_digests(path)
    return Imported(sha256, md5, _from_archive_file(path, work, images, limits))


def import_public(
    url: str, pin: str, downloads: Path, images: Path, work: Path, limits: ExtractLimits
) -> Imported:
    """The public archive, downloaded into ``downloads`` with resume (a finished earlier download
    is reused unless it contradicts the sha256 ``pin``), extracted into ``images``."""
    target = downloads / PUBLIC_ARCHIVE
    if target.exists() and pin and file_digests(target)[0] != pin:
        target.unlink()
    if not target.exists():
        download(url, target, sha256=pin or None)
    sha256, md5 = file_digests(target)
    return Imported(sha256, md5, _from_archive_file(target, work, images, limits))


def check_public_layout(rows: list[ManifestRow], origin: str, key: str) -> None:
    """The downloaded archive must be the public set: 20,000 + 20,000 images of 227x227."""
    counts = {label: sum(r.label == label for r in rows) for label in CLASSES}
    sizes = {(r.width, r.height) for r in rows}
    if any(n != PUBLIC_PER_CLASS for n in counts.values()) or sizes != {PUBLIC_SIZE}:
        found = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise CrackdetError(
            f"{origin}: not the public set as published (expected {PUBLIC_PER_CLASS} Positive + "
            f"{PUBLIC_PER_CLASS} Negative 227x227 images; found {found}, sizes "
            f"{sorted(sizes)[:3]}); pin {key}.sha256 to the archive you trust"
        )


def resolve_path(root: Path, value: str, key: str) -> Path:
    """A source's path: ``~`` expanded, relative to the repository root."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise CrackdetError(f"{key}: {value} does not exist (path relative to {root})")
    return path
