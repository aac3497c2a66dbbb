"""Atomic writes (every output appears whole or not at all) and file digests.

Files are written to a temporary sibling and renamed over the target (rename is atomic on one
file system), so a killed stage never leaves a half-written file that a later stage would trust.
Temporary names carry the writer's pid (``.<name>.<pid>-<random>.tmp``): a stage killed with
SIGKILL cannot clean up, so the next writer of the same target removes siblings whose pid is gone.
A long name is shortened in the temporary one (its head and a digest of the whole), so a target
whose name is legal always gets a legal temporary name (255 bytes on common file systems).
A write that fails for lack of space or permission becomes a one-line CrackdetError.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from crackdet.core.errors import CrackdetError, first_line


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete temporary siblings of ``target`` left by writers that no longer run."""
    removed = []
    stem = _temp_stem(target.name)
    try:
        siblings = list(target.parent.glob(f".{glob.escape(stem)}.*-*.tmp"))
    except OSError:
        return removed
    for path in siblings:
        pid = path.name[len(stem) + 2 :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# Out of space, over quota, over the file size limit, read-only file system.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _write_error(target: Path, exc: OSError) -> CrackdetError:
    return CrackdetError(
        f"{target}: cannot write ({first_line(exc)}); free disk space or make "
        f"{target.parent} writable, then rerun"
    )


_T = TypeVar("_T")  # what a tempfile maker returns

# Target names up to this many bytes are kept whole in temporary names; the pid, random part
# and ``.tmp`` add at most about 30.
_TEMP_STEM_BYTES = 120


def _temp_stem(name: str) -> str:
    """``name``, or for a long one its head and a digest of the whole (distinct per name)."""
    raw = name.encode()
    if len(raw) <= _TEMP_STEM_BYTES:
        return name
    head = raw[:80].decode(errors="ignore")
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:16]}"


def _prefix(target: Path) -> str:
    return f".{_temp_stem(target.name)}.{os.getpid()}-"


def _temp_beside(target: Path, make: Callable[..., _T]) -> _T:
    """``make`` (``tempfile.mkstemp`` or ``mkdtemp``) called for a temporary next to ``target``,
    once its folder exists and the temporaries a dead writer left for it are gone."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        return make(prefix=_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _write_error(target, exc) from None


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    fd, tmp = _temp_beside(target, tempfile.mkstemp)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, 0o644)
            os.replace(tmp_path, target)
        except OSError as exc:
            # Disk full, read-only or vanished folder: say so in one line, keep the old target.
            raise _write_error(target, exc) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode())


def write_json(target: Path, obj: Any, *, compact: bool = False) -> None:
    """Sorted keys, indented; ``compact``: on one line, for records of thousands of rows (the
    indented form goes through json's pure-Python encoder: ~10x slower on a 12 MP photo's
    cells)."""
    if compact:
        text = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    else:
        text = json.dumps(obj, indent=2, sort_keys=True)
    write_text(target, text + "\n")


def write_with(target: Path, writer: Callable[[Path], None]) -> None:
    """Atomic write through any library function that takes a path (torch.save, PIL save…)."""
    with atomic_path(target) as tmp:
        writer(tmp)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``target``; swap it in for ``target`` on success."""
    target = Path(target)
    tmp = Path(_temp_beside(target, tempfile.mkdtemp))
    try:
        try:
            yield tmp
        except OSError as exc:
            # The body may read inputs too: only storage failures are reported as ours.
            if exc.errno in STORAGE_ERRNOS:
                raise _write_error(target, exc) from None
            raise
        try:
            os.chmod(tmp, 0o755)
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except OSError as exc:
            raise _write_error(target, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_npy(array: np.ndarray, path: Path) -> None:
    """``np.save`` through a handle: given a path, numpy appends ``.npy`` to a temporary name."""
    with open(path, "wb") as handle:
        np.save(handle, array)


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    return file_digests(path)[0]


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file in one read: sha256 names data in crackdet's records, md5 is the
    name DVC's cache and remotes store a file under."""
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


# Every entry stamped 1980-01-01 (the zip epoch): equal arrays give equal bytes, so DVC records
# the same md5 for the same result on every run and machine.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` of plain arrays (no pickles), byte-identical for equal arrays, written
    atomically."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for name in sorted(arrays):
                entry = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                with archive.open(entry, "w", force_zip64=True) as handle:
                    np.lib.format.write_array(handle, np.asarray(arrays[name]), allow_pickle=False)

    write_with(target, write)


def read_npz(path: Path, shown: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``; a truncated, foreign or pickle-holding file is one
    CrackdetError line naming it (``shown``: how to name it, default the path)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CrackdetError(
            f"{shown or path}: damaged or not a plain-array .npz ({first_line(exc)})"
        ) from None
