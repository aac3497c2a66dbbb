"""Tests for crackdet.data.archive: resumable download from a local HTTP server, safe extraction."""

from __future__ import annotations

import io
import random
import socket
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from crackdet.core.errors import CrackdetError
from crackdet.core.io import sha256_file
from crackdet.data.archive import download, extract
from tests.helpers.file_server import PAYLOAD, PAYLOAD_SHA, FileServer, serve_file

# --------------------------------------------------------------------------------------------
# local HTTP server (tests/helpers/file_server.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FileServer]:
    with serve_file() as running:
        yield running


def _free_port() -> int:
    """A port nobody listens on: bind, read the number, close."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_line(exc: pytest.ExceptionInfo[CrackdetError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------


def test_download_full_file_and_sha(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "data.bin"
    digest = download(server.url, dest, sha256=PAYLOAD_SHA.upper(), progress=False)
    assert digest == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert sha256_file(dest) == PAYLOAD_SHA
    assert not dest.with_name("data.bin.part").exists()
    assert "Range" not in server.state.requests[0]


def test_download_resumes_after_truncation(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    cut = 700_001
    server.state.cut_after = cut
    with pytest.raises(CrackdetError, match="rerun to resume") as exc:
        download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.url in _one_line(exc)
    assert not dest.exists()
    assert part.read_bytes() == PAYLOAD[:cut]

    server.state.cut_after = None
    # progress=True exercises the tqdm bar starting at the resumed offset.
    digest = download(server.url, dest, sha256=PAYLOAD_SHA, progress=True)
    assert server.state.requests[-1].get("Range") == f"bytes={cut}-"
    assert digest == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_download_restarts_when_server_ignores_range(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    # Bytes that do not match the payload: appending to them would corrupt the result.
    part.write_bytes(b"x" * 5000)
    server.state.ignore_range = True
    digest = download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.state.requests[-1].get("Range") == "bytes=5000-"
    assert digest == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD


def test_download_416_means_part_is_complete(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    digest = download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.state.requests[-1].get("Range") == f"bytes={len(PAYLOAD)}-"
    assert digest == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD


def test_download_checksum_mismatch(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(CrackdetError, match="checksum mismatch") as exc:
        download(server.url, dest, sha256=wrong, progress=False)
    message = _one_line(exc)
    assert wrong in message and PAYLOAD_SHA in message and server.url in message
    assert not dest.exists()
    assert not (tmp_path / "data.bin.part").exists()


def test_download_unreachable_host_says_offline(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/data.bin"
    with pytest.raises(CrackdetError, match="Offline") as exc:
        download(url, tmp_path / "data.bin", progress=False, timeout=5)
    message = _one_line(exc)
    assert message.startswith(f"cannot download {url}: ")
    assert message.endswith(
        "Offline? Use a local copy: a fetch source with kind: archive and path: <the copy>"
    )
    assert not (tmp_path / "data.bin").exists()


def test_download_timeout_says_offline(server: FileServer, tmp_path: Path) -> None:
    server.state.delay = 1.0
    with pytest.raises(CrackdetError, match="Offline") as exc:
        download(server.url, tmp_path / "data.bin", progress=False, timeout=0.2)
    assert server.url in _one_line(exc)


def test_download_http_404(server: FileServer, tmp_path: Path) -> None:
    url = f"{server.base}/missing.bin"
    with pytest.raises(CrackdetError, match="HTTP 404") as exc:
        download(url, tmp_path / "data.bin", progress=False)
    assert url in _one_line(exc)
    assert not (tmp_path / "data.bin").exists()


def test_download_refuses_non_http_url(tmp_path: Path) -> None:
    with pytest.raises(CrackdetError, match="only http"):
        download(f"file://{tmp_path}/x", tmp_path / "data.bin", progress=False)


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------

FILES = {
    "a.txt": b"hello\n",
    "images/pos/001.jpg": random.Random(1).randbytes(30_000),
    "images/neg/002.jpg": random.Random(2).randbytes(20_000),
}


def _make_zip(path: Path, members: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in dirs:
            zf.writestr(name.rstrip("/") + "/", b"")
        for name, data in members.items():
            # A bare ZipInfo keeps the name verbatim, absolute paths and ".." included.
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _rar_block(head_type: int, flags: int, body: bytes) -> bytes:
    header = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header


def _make_rar(path: Path, members: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    """Write a minimal RAR 4 archive with stored (uncompressed) entries.

    No rar writer is available offline, and the format is simple enough for store-only:
    marker, main header, one file header (+ data) per entry, end-of-archive block.
    """
    out = b"Rar!\x1a\x07\x00" + _rar_block(0x73, 0, bytes(6))
    entries = [(d, b"", True) for d in dirs] + [(n, d, False) for n, d in members.items()]
    for name, data, is_dir in entries:
        raw = name.encode()
        flags = 0x8000 | (0x00E0 if is_dir else 0)  # 0xE0 in the dictionary bits = folder
        mode = 0o040755 if is_dir else 0o100644
        body = struct.pack(
            "<IIBIIBBHI",
            len(data),  # packed size
            len(data),  # unpacked size
            3,  # host OS: Unix, so the attributes are a st_mode
            zlib.crc32(data),
            0x00210000,  # DOS timestamp 1980-01-01
            20,  # version needed to extract
            0x30,  # method: store
            len(raw),
            mode,
        )
        out += _rar_block(0x74, flags, body + raw) + data
    path.write_bytes(out + _rar_block(0x7B, 0x4000, b""))
    return path


def _assert_nothing_left(parent: Path, *expected: str) -> None:
    """Only the listed names may remain in ``parent``: no dest, no temp folder."""
    assert sorted(p.name for p in parent.iterdir()) == sorted(expected)


def test_extract_zip_round_trip(tmp_path: Path) -> None:
    archive = _make_zip(tmp_path / "data.zip", FILES, dirs=("empty",))
    dest = tmp_path / "out" / "raw"
    names = extract(archive, dest)
    assert names == sorted(FILES)
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert (dest / "empty").is_dir()
    _assert_nothing_left(dest.parent, "raw")


@pytest.mark.parametrize(
    "mode,suffix", [("w:gz", "tar.gz"), ("w:bz2", "tar.bz2"), ("w:xz", "tar.xz")]
)
def test_extract_tar_round_trip(tmp_path: Path, mode: str, suffix: str) -> None:
    # "./" prefixes are what `tar -C dir .` produces; they must not leak into the names.
    members = {("./" + k if k.startswith("images") else k): v for k, v in FILES.items()}
    # A non-ASCII name makes tarfile write a pax header, which libarchive reports as its own
    # "POSIX pax interchange format" -- the format check must accept it.
    expected = {**FILES, "images/pos/fissure_é.jpg": b"\xff\xd8"}
    members["images/pos/fissure_é.jpg"] = expected["images/pos/fissure_é.jpg"]
    archive = _make_tar(tmp_path / f"data.{suffix}", members, mode)
    dest = tmp_path / "raw"
    assert extract(archive, dest) == sorted(expected)
    for name, data in expected.items():
        assert (dest / name).read_bytes() == data


EVIL_NAMES = ["../evil.txt", "good/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt", "..\\evil.txt"]


@pytest.mark.parametrize("evil", EVIL_NAMES)
@pytest.mark.parametrize("kind", ["zip", "tar", "rar"])
def test_extract_refuses_zip_slip(tmp_path: Path, kind: str, evil: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # A good member first, so the refusal happens after something was already written.
    members = {"ok.txt": b"fine", evil: b"pwned"}
    if kind == "zip":
        archive = _make_zip(tmp_path / "evil.zip", members)
    elif kind == "rar":
        archive = _make_rar(tmp_path / "evil.rar", members)
    else:
        archive = _make_tar(tmp_path / "evil.tar.gz", members)
    with pytest.raises(CrackdetError, match="refusing to extract") as exc:
        extract(archive, work / "raw")
    message = _one_line(exc)
    assert str(archive) in message
    assert "evil.txt" in message
    _assert_nothing_left(work)
    assert not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil.txt").exists() or Path("/tmp/evil.txt").read_bytes() != b"pwned"


@pytest.mark.parametrize("linktype", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_extract_refuses_links(tmp_path: Path, linktype: bytes) -> None:
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("ok.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
        link = tarfile.TarInfo("passwd")
        link.type = linktype
        link.linkname = "/etc/passwd" if linktype == tarfile.SYMTYPE else "ok.txt"
        tf.addfile(link)
    work = tmp_path / "work"
    work.mkdir()
    kind = "symlink" if linktype == tarfile.SYMTYPE else "hardlink"
    with pytest.raises(CrackdetError, match=kind) as exc:
        extract(archive, work / "raw")
    assert str(archive) in _one_line(exc) and "passwd" in _one_line(exc)
    _assert_nothing_left(work)


def test_extract_refuses_non_utf8_names(tmp_path: Path) -> None:
    archive = tmp_path / "latin1.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("fissure_\xe9.jpg")  # stored as the single byte 0xE9
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(CrackdetError, match="UTF-8") as exc:
        extract(archive, tmp_path / "raw")
    assert str(archive) in _one_line(exc)
    _assert_nothing_left(tmp_path, "latin1.tar")


def test_extract_refuses_special_files(tmp_path: Path) -> None:
    archive = tmp_path / "fifo.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("pipe")
        info.type = tarfile.FIFOTYPE
        tf.addfile(info)
    with pytest.raises(CrackdetError, match="special file"):
        extract(archive, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_extract_max_files(tmp_path: Path) -> None:
    members = {f"f{i}.txt": b"x" for i in range(5)}
    archive = _make_zip(tmp_path / "many.zip", members)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(CrackdetError, match="fetch.max_files") as exc:
        extract(archive, work / "raw", max_files=3)
    assert "3" in _one_line(exc) and str(archive) in _one_line(exc)
    _assert_nothing_left(work)
    # Exactly at the limit is fine.
    assert len(extract(archive, work / "raw", max_files=5)) == 5


def test_extract_max_bytes(tmp_path: Path) -> None:
    # Highly compressible: 10 MB of zeros packs into a few KB -- a small zip bomb.
    archive = _make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(10_000_000)})
    assert archive.stat().st_size < 100_000
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(CrackdetError, match="fetch.max_bytes") as exc:
        extract(archive, work / "raw", max_bytes=1_000_000)
    assert "1000000" in _one_line(exc)
    _assert_nothing_left(work)
    assert extract(archive, work / "raw", max_bytes=10_000_000) == ["zeros.bin"]


def test_extract_corrupt_archive(tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(random.Random(7).randbytes(10_000))
    with pytest.raises(CrackdetError, match="cannot extract") as exc:
        extract(archive, tmp_path / "raw")
    assert str(archive) in _one_line(exc)
    _assert_nothing_left(tmp_path, "broken.zip")


def test_extract_truncated_archive(tmp_path: Path) -> None:
    good = _make_tar(tmp_path / "good.tar.gz", FILES)
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CrackdetError, match="cannot extract") as exc:
        extract(archive, tmp_path / "raw")
    assert str(archive) in _one_line(exc)
    assert not (tmp_path / "raw").exists()


def test_extract_empty_file(tmp_path: Path) -> None:
    archive = tmp_path / "empty.zip"
    archive.write_bytes(b"")
    with pytest.raises(CrackdetError, match="empty or not a zip/tar/rar"):
        extract(archive, tmp_path / "raw")


def test_extract_refuses_other_formats(tmp_path: Path) -> None:
    # An mtree "archive" names files on the local disk; it must not be read as a dataset.
    archive = tmp_path / "sneaky.tar"
    archive.write_text("#mtree\nhostname type=file contents=/etc/hostname\n")
    with pytest.raises(CrackdetError, match="not zip, tar or rar"):
        extract(archive, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_extract_refuses_existing_dest(tmp_path: Path) -> None:
    archive = _make_zip(tmp_path / "data.zip", FILES)
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(CrackdetError, match="already exists") as exc:
        extract(archive, dest)
    assert str(dest) in _one_line(exc)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]


def test_extract_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(CrackdetError, match="no such file"):
        extract(tmp_path / "nope.zip", tmp_path / "raw")
