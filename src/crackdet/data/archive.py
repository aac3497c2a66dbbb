"""Safe HTTP download (with resume) and safe archive extraction.

Both halves treat their input as untrusted: a download is only accepted once its size and
(optionally) its sha256 check out, and an archive is only unpacked entry by entry, refusing
anything that could write outside the destination (zip slip, links, device files) and bounding
how much it may write, so that a hostile or corrupt archive cannot fill the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import libarchive
import libarchive.exception
from tqdm import tqdm

from crackdet import __version__
from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import sha256_file

__all__ = ["download", "extract"]

_CHUNK = 1024 * 1024
# libarchive-c allocates and copies a buffer of this size per read call: big enough to keep
# the per-call overhead low on large members, small enough not to dominate on tiny images.
_ARCHIVE_BLOCK = 64 * 1024

_OFFLINE_HINT = "Offline? Use a local copy: a fetch source with kind: archive and path: <the copy>"

# "bytes 100-199/1000" or "bytes */1000" (the latter comes with a 416).
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)

_DRIVE = re.compile(r"^[A-Za-z]:")


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Return (first byte, total size) from a Content-Range header; None where unknown."""
    if not value:
        return None, None
    match = _CONTENT_RANGE.match(value)
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


def _content_length(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        # A garbled header is no reason to fail; we just cannot check the size.
        return None


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Send the GET (with a Range header when resuming); map failures to CrackdetError.

    An HTTPError is re-raised untouched so the caller can handle 416 on resume.
    """
    headers = {"User-Agent": f"crackdet/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        raise CrackdetError(
            f"cannot download {url}: {first_line(exc.reason)}. {_OFFLINE_HINT}"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        # Timeouts and resets during the handshake surface as bare OSError/HTTPException.
        reason = first_line(exc) or type(exc).__name__
        raise CrackdetError(f"cannot download {url}: {reason}. {_OFFLINE_HINT}") from exc


def _http_error(url: str, exc: urllib.error.HTTPError) -> CrackdetError:
    hint = (
        "check the URL (it may have moved) or use a local copy: a fetch source with kind: "
        "archive and path: <the copy>"
        if 400 <= exc.code < 500
        else "the server failed; try again later or use a local copy: a fetch source with "
        "kind: archive and path: <the copy>"
    )
    return CrackdetError(f"cannot download {url}: HTTP {exc.code} {first_line(exc.reason)}; {hint}")


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> str:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a previous partial download.

    The file only appears at ``dest`` (atomic rename) once its size matches what the server
    announced and, when ``sha256`` is given, its digest matches. Returns the sha256 hex digest.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise CrackdetError(
            f"cannot download {url}: only http:// and https:// URLs are supported; for a local "
            "file use a fetch source with kind: archive and path: <the file>"
        )
    expected_sha = sha256.strip().lower() if sha256 else None
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CrackdetError(
            f"cannot create the folder for {dest}: {first_line(exc)}; check permissions"
        ) from exc

    offset = part.stat().st_size if part.is_file() else 0
    digest = _fetch(url, part, offset, timeout, progress)

    if expected_sha is not None and digest != expected_sha:
        # A wrong file must never be resumed from, so the .part goes.
        part.unlink(missing_ok=True)
        raise CrackdetError(
            f"checksum mismatch for {url}: expected sha256 {expected_sha}, got {digest}; the "
            "partial file was deleted. Rerun to download again, or update the expected sha256 "
            "if the file changed upstream"
        )
    os.replace(part, dest)
    return digest


def _fetch(url: str, part: Path, offset: int, timeout: float, progress: bool) -> str:
    """Bring ``part`` to the full file (resuming from ``offset``); return its sha256."""
    # At most two attempts: a resume that the server cannot honour falls back to a fresh start.
    for _attempt in range(2):
        try:
            response = _open(url, offset, timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:
                # "Range not satisfiable": nothing after byte `offset`, i.e. the .part already
                # holds the whole file -- unless the server says the file is a different size.
                _start, total = _parse_content_range(exc.headers.get("Content-Range"))
                if total is None or total == offset:
                    return sha256_file(part)
                part.unlink(missing_ok=True)
                offset = 0
                continue
            raise _http_error(url, exc) from exc

        with response:
            status = response.status
            length = _content_length(response.headers.get("Content-Length"))
            if offset and status == 206:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
                if start is not None and start != offset:
                    # The server sent a different range than asked for: do not splice it in.
                    part.unlink(missing_ok=True)
                    offset = 0
                    continue
                if total is None and length is not None:
                    total = offset + length
            elif status in (200, 203):
                # Either a fresh download or a server that ignores Range: start from byte 0.
                offset = 0
                total = length
            else:
                raise CrackdetError(
                    f"cannot download {url}: unexpected HTTP {status} "
                    f"{first_line(response.reason)}; check the URL or use a local copy: a fetch "
                    "source with kind: archive and path: <the copy>"
                )
            return _stream(url, response, part, offset, total, progress)
    raise CrackdetError(
        f"cannot download {url}: the server does not answer range requests consistently; "
        f"delete {part} and rerun"
    )


def _stream(
    url: str,
    response: http.client.HTTPResponse,
    part: Path,
    offset: int,
    total: int | None,
    progress: bool,
) -> str:
    """Append the response body to ``part`` (truncating it when offset is 0); return sha256."""
    digest = hashlib.sha256()
    if offset:
        # The digest covers the whole file, so the bytes kept from last time go in first.
        with open(part, "rb") as fh:
            remaining = offset
            while remaining and (chunk := fh.read(min(_CHUNK, remaining))):
                digest.update(chunk)
                remaining -= len(chunk)
    size = offset
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name.removesuffix(".part"),
        # None: only on a terminal, so logs and captured stderr hold just the outcome.
        disable=None if progress else True,
        leave=False,
    )
    try:
        # Leaving the with-block on any path flushes what arrived, so a rerun can resume.
        with bar, open(part, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    reason = first_line(exc) or type(exc).__name__
                    raise CrackdetError(
                        f"download of {url} was interrupted after {size} bytes ({reason}); rerun "
                        f"to resume from {part}"
                    ) from exc
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    except OSError as exc:
        # Network errors were mapped above, so this is local I/O: open, write or final flush.
        raise CrackdetError(
            f"cannot write {part} while downloading {url}: {first_line(exc)}; free disk space "
            "or fix permissions, then rerun to resume"
        ) from exc
    if total is not None and size < total:
        raise CrackdetError(
            f"download of {url} stopped short: got {size} of {total} bytes; rerun to resume "
            f"from {part}"
        )
    if total is not None and size > total:
        # Cannot happen with a sane server; the bytes are not trustworthy, so drop them.
        part.unlink(missing_ok=True)
        raise CrackdetError(
            f"download of {url} returned {size} bytes but the server announced {total}; "
            "the partial file was deleted, rerun to download again"
        )
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------


def _allowed_format(name: bytes | str | None) -> bool:
    """Only zip, tar and rar are unpacked.

    libarchive's "all" reader also accepts e.g. mtree, whose entries point at files on the
    local disk; refusing everything else keeps extraction about the archive's own bytes.
    """
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    name = (name or "").lower()
    # Tar variants are named "GNU tar format", "POSIX ustar format", "POSIX pax interchange
    # format", ...; zip ones "ZIP 2.0 (deflation)", ...; rar ones "RAR" and "RAR5".
    return name.startswith(("zip", "rar")) or "tar" in name or "pax" in name


def _safe_parts(archive: Path, name: str) -> tuple[str, ...]:
    """Split an entry name into path components, refusing anything that escapes dest."""
    if "\x00" in name:
        raise CrackdetError(f"refusing to extract {archive}: entry {name!r} has a NUL byte")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise CrackdetError(
            f"refusing to extract {archive}: entry {name!r} has an absolute path (zip slip); "
            "use a trusted copy of the archive"
        )
    # Backslashes count as separators too: archives made on Windows use them.
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise CrackdetError(
            f"refusing to extract {archive}: entry {name!r} contains '..' (zip slip); "
            "use a trusted copy of the archive"
        )
    return tuple(parts)


def _entries(archive: Path) -> Iterator[libarchive.ArchiveEntry]:
    """Yield entries of an allowed format; libarchive errors are mapped by the caller."""
    with libarchive.file_reader(str(archive)) as reader:
        for entry in reader:
            # The format is known only once a header has been read, so check per entry.
            if not _allowed_format(reader.format_name):
                fmt = (reader.format_name or b"?").decode("ascii", "replace")
                raise CrackdetError(
                    f"cannot extract {archive}: it is a {fmt} archive, not zip, tar or rar; "
                    "point the fetch source's path at the dataset's zip/tar/rar file"
                )
            yield entry


def extract(
    archive: Path,
    dest: Path,
    *,
    max_files: int = 100_000,
    max_bytes: int = 4 * 1024**3,
) -> list[str]:
    """Unpack a zip, tar(.gz/.bz2/.xz) or rar ``archive`` into the new folder ``dest``.

    Entries are written one by one into a temporary sibling of ``dest`` that is renamed into
    place only once everything succeeded. Returns the sorted posix paths of the files written.
    """
    archive = Path(archive)
    dest = Path(dest)
    if not archive.is_file():
        raise CrackdetError(
            f"cannot extract {archive}: no such file; check the fetch source's path or rerun "
            "the download"
        )
    if dest.exists() or dest.is_symlink():
        raise CrackdetError(
            f"cannot extract {archive} into {dest}: it already exists; delete it first"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A sibling (same filesystem) so the final rename is atomic.
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    except OSError as exc:
        raise CrackdetError(
            f"cannot extract {archive} into {dest}: {first_line(exc)}; check permissions"
        ) from exc
    try:
        files = _extract_into(archive, tmp, max_files, max_bytes)
        if dest.exists() or dest.is_symlink():
            raise CrackdetError(
                f"cannot extract {archive} into {dest}: it appeared while extracting; "
                "delete it and rerun"
            )
        os.rename(tmp, dest)
    except BaseException:
        # Nothing half-written may survive, whatever went wrong (including Ctrl-C).
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def _extract_into(archive: Path, root: Path, max_files: int, max_bytes: int) -> list[str]:
    files: set[str] = set()
    n_entries = 0
    n_bytes = 0
    seen_entry = False
    try:
        # closing(): release libarchive's handle right away when we stop early, not at GC.
        with contextlib.closing(_entries(archive)) as entries:
            for entry in entries:
                seen_entry = True
                name = entry.pathname
                if name is None:
                    # libarchive converts names to the C locale; under LC_ALL=C non-ASCII fails.
                    raise CrackdetError(
                        f"cannot extract {archive}: an entry name cannot be converted to the "
                        "current locale; rerun with a UTF-8 locale, e.g. LC_ALL=C.UTF-8"
                    )
                if isinstance(name, bytes):
                    # libarchive-c hands back raw bytes when they are not valid UTF-8.
                    raise CrackdetError(
                        f"refusing to extract {archive}: entry {name!r} is not valid UTF-8; "
                        "repack the archive with UTF-8 names"
                    )
                parts = _safe_parts(archive, name)

                # Order matters: a hardlink entry carries no file type of its own.
                if entry.islnk or entry.issym:
                    kind = "hardlink" if entry.islnk else "symlink"
                    raise CrackdetError(
                        f"refusing to extract {archive}: entry {name!r} is a {kind}, which could "
                        "point outside the destination; use an archive of plain files"
                    )
                if not (entry.isdir or entry.isreg):
                    raise CrackdetError(
                        f"refusing to extract {archive}: entry {name!r} is a special file "
                        f"({entry.strmode!r}); use an archive of plain files and folders"
                    )
                if not parts:
                    continue  # the archive's own root, e.g. "./"

                # Directories count too: millions of empty folders exhaust inodes just as well.
                n_entries += 1
                if n_entries > max_files:
                    raise CrackdetError(
                        f"refusing to extract {archive}: more than {max_files} files/folders "
                        "(fetch.max_files); raise fetch.max_files if the archive is trusted"
                    )
                target = root.joinpath(*parts)
                if entry.isdir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue

                posix = PurePosixPath(*parts).as_posix()
                if posix in files:
                    # Two entries, one name: which one a tool keeps differs, so the data would
                    # depend on the unpacker. Refuse rather than silently overwrite.
                    raise CrackdetError(
                        f"refusing to extract {archive}: entry {name!r} appears twice; repack "
                        "the archive with unique file names"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    # Count what is actually decompressed; header sizes can lie.
                    for block in entry.get_blocks(_ARCHIVE_BLOCK):
                        n_bytes += len(block)
                        if n_bytes > max_bytes:
                            raise CrackdetError(
                                f"refusing to extract {archive}: more than {max_bytes} bytes "
                                "uncompressed (fetch.max_bytes); raise fetch.max_bytes if the "
                                "archive is trusted"
                            )
                        out.write(block)
                files.add(posix)
    except libarchive.exception.ArchiveError as exc:
        reason = first_line(getattr(exc, "msg", None) or exc)
        raise CrackdetError(
            f"cannot extract {archive}: {reason}; the file is corrupt, truncated or not a "
            "zip/tar/rar archive, so download it again or point the fetch source's path at a "
            "good copy"
        ) from exc
    except OSError as exc:
        # e.g. a file and a folder of the same name, a full disk, a name too long.
        raise CrackdetError(
            f"cannot extract {archive}: {first_line(exc)}; check free disk space and that the "
            "archive has no conflicting entry names"
        ) from exc
    if not seen_entry:
        raise CrackdetError(
            f"cannot extract {archive}: it is empty or not a zip/tar/rar archive; download it "
            "again or point the fetch source's path at a good copy"
        )
    return sorted(files)
