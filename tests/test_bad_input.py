"""The bad-input catalogue: every way users' files, archives, params and folders go wrong.

One table, one row per case. Each row builds a tiny repository (dvc.yaml + params.yaml and the
offending input), runs the real stage entry point (``python -m crackdet.stages.<stage>``) and
asserts the exact one-line error on stderr, exit status 2, and that no partial output was left:
no ``outputs/<stage>`` folder and no temporary sibling. Accepted-but-unusual inputs (grayscale,
RGBA, 16-bit, CMYK, duplicate names across class folders) come after, in a second table.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from crackdet.core.params import BACKBONES, SOURCE_KINDS
from tests.helpers.file_server import FileServer, ServerState, serve_file
from tests.helpers.ood import ood_arrays
from tests.helpers.params import archive_source, tiny_params_tree
from tests.helpers.project import PROJECT
from tests.helpers.repo import tool_env

DOWNLOAD = Path(".cache/downloads/concrete-crack-images-5y9wdsg2zt.rar")


# --------------------------------------------------------------------------------------------
# fixtures: images and archives
# --------------------------------------------------------------------------------------------


def jpeg(shade: int, size: int = 64, mode: str = "RGB") -> bytes:
    """A small textured image (distinct per shade, so dHash tells them apart)."""
    rng = np.random.default_rng(shade)
    pixels = np.clip(shade + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries one tiny IDAT: a bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def layout(n: int = 3, **replace: bytes | None) -> dict[str, bytes]:
    """``Positive/`` and ``Negative/`` with n images each; ``replace`` adds or swaps (None
    removes) files by name."""
    files = {
        f"{label}/{i:03d}.jpg": jpeg(40 + 60 * k + 7 * i)
        for k, label in enumerate(("Negative", "Positive"))
        for i in range(n)
    }
    for name, data in replace.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    return files


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# the repository a case runs in
# --------------------------------------------------------------------------------------------


@dataclass
class Repo:
    root: Path
    url: str  # the local server's file (fetch.source: mendeley)
    state: ServerState
    params: dict[str, Any] = field(default_factory=tiny_params_tree)
    fsize_limit: int | None = None  # RLIMIT_FSIZE for the stage: writes beyond it fail (EFBIG)

    def set(self, dotted: str, value: Any) -> None:
        node = self.params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value

    def archive(self, name: str, files: dict[str, bytes]) -> None:
        write_zip(self.root / name, files)
        self.source(name)

    def source(self, path: str, kind: str = "archive", sha256: str = "") -> None:
        """One labelled source named ``set`` (replacing the default sources)."""
        self.params["fetch"]["sources"] = {"set": archive_source(path, kind, sha256)}

    def mendeley(self, payload: bytes, sha256: str = "") -> None:
        self.state.payload = payload
        self.source(self.url, "mendeley", sha256)


_DELETE = object()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with serve_file() as running:
        yield running


@pytest.fixture
def repo(tmp_path: Path, server: FileServer) -> Repo:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy2(PROJECT / "dvc.yaml", root / "dvc.yaml")
    return Repo(root, server.url, server.state)


def run_stage(repo: Repo, stage: str) -> subprocess.CompletedProcess[str]:
    """Write params.yaml (unless the case wrote its own) and run the stage's entry point."""
    if not (repo.root / "params.yaml").exists():
        (repo.root / "params.yaml").write_text(yaml.safe_dump(repo.params, sort_keys=False))
    limit = repo.fsize_limit

    def limit_writes() -> None:  # Python ignores SIGXFSZ, so big writes fail with EFBIG
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", f"crackdet.stages.{stage}"],
        cwd=repo.root,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_writes,
    )


# --------------------------------------------------------------------------------------------
# the catalogue
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    setup: Callable[[Repo], None]
    expected: str  # the whole stderr; {root} = the repo, {url} = the local server's file
    absent: tuple[str, ...] = ()  # outputs that must not exist afterwards (besides outputs/.*)
    prefix: bool = False  # expected is a prefix: a third-party detail (errno text, path) follows


def _params_file(text: str) -> Callable[[Repo], None]:
    return lambda r: (r.root / "params.yaml").write_text(text)


def _set(**changes: Any) -> Callable[[Repo], None]:
    def setup(r: Repo) -> None:
        for key, value in changes.items():
            r.set(key.replace("__", "."), value)

    return setup


def _archive(**replace: bytes | None) -> Callable[[Repo], None]:
    return lambda r: r.archive("set.zip", layout(**replace))


def _folder(files: dict[str, bytes], empty: tuple[str, ...] = ()) -> Callable[[Repo], None]:
    def setup(r: Repo) -> None:
        for name, data in files.items():
            (r.root / "set" / name).parent.mkdir(parents=True, exist_ok=True)
            (r.root / "set" / name).write_bytes(data)
        for name in empty:
            (r.root / "set" / name).mkdir(parents=True, exist_ok=True)
        r.source("set", "folder")

    return setup


def _raw_archive(name: str, data: bytes) -> Callable[[Repo], None]:
    def setup(r: Repo) -> None:
        (r.root / name).write_bytes(data)
        r.source(name)

    return setup


def _tar_with_symlink(r: Repo) -> None:
    write_tar(r.root / "set.tar.gz", layout(), links={"Positive/999.jpg": "/etc/passwd"})
    r.source("set.tar.gz")


def _duplicate_entry(r: Repo) -> None:
    files = layout()
    write_zip(r.root / "set.zip", files)
    with zipfile.ZipFile(r.root / "set.zip", "a") as archive, pytest.warns(UserWarning):
        archive.writestr("Positive/001.jpg", jpeg(250))  # same name again, other bytes
    r.source("set.zip")


def _limits(**limits: int) -> Callable[[Repo], None]:
    def setup(r: Repo) -> None:
        r.archive("set.zip", layout())
        for key, value in limits.items():
            r.set(f"fetch.{key}", value)

    return setup


def _truncated_zip(r: Repo) -> None:
    data = zip_bytes(layout())
    _raw_archive("set.zip", data[: len(data) // 2])(r)


def _checksum_mismatch(r: Repo) -> None:
    r.mendeley(zip_bytes(layout()), sha256="0" * 64)


def _truncated_download(r: Repo) -> None:
    r.mendeley(zip_bytes(layout()))
    r.state.cut_after = 5000


def _offline(r: Repo) -> None:
    r.mendeley(b"")
    r.source("http://127.0.0.1:9/file_downloaded", "mendeley")  # discard port: nobody listens


def _http_404(r: Repo) -> None:
    r.mendeley(b"")
    r.source(r.url.replace("data.bin", "moved.bin"), "mendeley")


def _outputs_is_a_file(r: Repo) -> None:
    (r.root / "outputs").write_text("not a folder\n")


def _disk_full(r: Repo) -> None:
    r.archive("set.zip", layout())
    r.fsize_limit = 1000  # no image fits: the first extracted file fails with EFBIG


def _pickled_checkpoint(r: Repo) -> None:
    import torch

    from crackdet.core.io import write_json
    from crackdet.data.images import CLASSES
    from crackdet.model.classifier import build_classifier

    model = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES)
    write_json(r.root / "outputs/train/model.json", model.spec.to_dict())
    torch.save({"evil": _Payload()}, r.root / "outputs/train/model.pt")


def _checkpoint(r: Repo) -> None:
    """A real (random-init) checkpoint and one photo: predict_samples gets past the model."""
    import torch

    from crackdet.core.io import write_json
    from crackdet.data.images import CLASSES
    from crackdet.model.classifier import build_classifier

    model = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES)
    write_json(r.root / "outputs/train/model.json", model.spec.to_dict())
    torch.save(model.state_dict(), r.root / "outputs/train/model.pt")
    (r.root / "data/photos").mkdir(parents=True)
    Image.open(io.BytesIO(jpeg(120, size=300))).save(r.root / "data/photos/a.jpg")


def _ood_file(
    data: bytes | None = None, pickled: bool = False, **arrays: Any
) -> Callable[[Repo], None]:
    def setup(r: Repo) -> None:
        _checkpoint(r)
        target = r.root / "outputs/train/ood.npz"
        if arrays:  # a well-formed file holding the wrong values
            with open(target, "wb") as handle:
                np.savez(handle, **ood_arrays(**arrays))
        elif pickled:  # an object array: np.load must refuse it, not unpickle it
            with open(target, "wb") as handle:
                np.savez(handle, mean=np.array([_Payload()], dtype=object))
        else:
            buf = io.BytesIO()
            np.savez(buf, mean=np.zeros(4), components=np.eye(4))
            target.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])

    return setup


def _random_checkpoint(r: Repo) -> None:
    _checkpoint(r)
    (r.root / "outputs/train/model.pt").write_bytes(np.random.default_rng(3).bytes(4096))


def _dangling_link(r: Repo) -> None:
    _folder(layout())(r)
    (r.root / "set" / "Positive" / "ghost.jpg").symlink_to("/nonexistent/ghost.jpg")


class _Payload:
    """Unpickling this would run a shell command that leaves a marker file."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED",))


_NOT_READABLE = "not a readable image"
_SET = "crackdet fetch: error: set.zip"

CATALOGUE: list[Case] = [
    # ---- images inside the data set ------------------------------------------------------
    Case(
        "truncated-jpeg",
        "fetch",
        _archive(**{"Positive/001.jpg": jpeg(200)[:400]}),
        f"{_SET}: Positive/001.jpg: {_NOT_READABLE} (Truncated File Read); remove or replace "
        "it, or set fetch.on_bad_image: skip",
    ),
    Case(
        "corrupt-jpeg",
        "fetch",
        _archive(**{"Positive/001.jpg": jpeg(200)[:200] + b"\x00garbage" * 50}),
        f"{_SET}: Positive/001.jpg: {_NOT_READABLE} (cannot load this image); remove or "
        "replace it, or set fetch.on_bad_image: skip",
    ),
    Case(
        "zero-byte-file",
        "fetch",
        _archive(**{"Negative/002.jpg": b""}),
        f"{_SET}: Negative/002.jpg: empty file (0 bytes); remove or replace it, or set "
        "fetch.on_bad_image: skip",
    ),
    Case(
        "text-file-named-jpg",
        "fetch",
        _archive(**{"Negative/000.jpg": b"<html>404 Not Found</html>\n"}),
        f"{_SET}: Negative/000.jpg: {_NOT_READABLE} (not in any image format "
        "Pillow knows); remove or replace it, or set fetch.on_bad_image: skip",
    ),
    Case(
        "decompression-bomb",
        "fetch",
        _archive(**{"Positive/bomb.png": png_header(50_000, 50_000)}),
        f"{_SET}: Positive/bomb.png: refused as a decompression bomb (too many pixels); remove "
        "or replace it, or set fetch.on_bad_image: skip",
    ),
    Case(
        "image-over-max-pixels",
        "fetch",
        _archive(**{"Positive/huge.png": png_header(3000, 3000)}),
        f"{_SET}: Positive/huge.png: 3000x3000 pixels exceeds the limit of 4000000 (raise "
        "fetch.max_pixels if this image is genuine)",
    ),
    Case(
        "class-with-only-bad-images-skipped",
        "fetch",
        lambda r: (
            r.archive("set.zip", layout(n=1, **{"Negative/000.jpg": b"junk"})),
            r.set("fetch.on_bad_image", "skip"),
        ),
        f"{_SET}: no readable images left in Negative/; add readable images or fix the "
        "skipped files",
    ),
    # ---- archive structure and safety ----------------------------------------------------
    Case(
        "zip-slip-dotdot",
        "fetch",
        _archive(**{"../evil.jpg": jpeg(9)}),
        "crackdet fetch: error: refusing to extract {root}/set.zip: entry '../evil.jpg' "
        "contains '..' (zip slip); use a trusted copy of the archive",
    ),
    Case(
        "zip-slip-absolute",
        "fetch",
        _archive(**{"/tmp/evil.jpg": jpeg(9)}),
        "crackdet fetch: error: refusing to extract {root}/set.zip: entry '/tmp/evil.jpg' has "
        "an absolute path (zip slip); use a trusted copy of the archive",
    ),
    Case(
        "symlink-in-archive",
        "fetch",
        _tar_with_symlink,
        "crackdet fetch: error: refusing to extract {root}/set.tar.gz: entry 'Positive/999.jpg' "
        "is a symlink, which could point outside the destination; use an archive of plain files",
    ),
    Case(
        "duplicate-entry-in-archive",
        "fetch",
        _duplicate_entry,
        "crackdet fetch: error: refusing to extract {root}/set.zip: entry 'Positive/001.jpg' "
        "appears twice; repack the archive with unique file names",
    ),
    Case(
        "wrong-layout",
        "fetch",
        lambda r: r.archive("set.zip", {"cracks/a.jpg": jpeg(1), "clean/b.jpg": jpeg(2)}),
        "crackdet fetch: error: {root}/set.zip: expected folders Positive/ and Negative/ (the "
        "public set's layout); found clean, cracks",
    ),
    Case(
        "empty-class-folder",
        "fetch",
        _folder({k: v for k, v in layout().items() if k.startswith("Positive")}, ("Negative",)),
        "crackdet fetch: error: set: class folder Negative/ holds no images; put the class's "
        "images in Negative/",
    ),
    Case(
        "archive-not-found",
        "fetch",
        lambda r: r.source("nowhere.zip"),
        "crackdet fetch: error: fetch.sources.set.path: nowhere.zip does not exist (path "
        "relative to {root})",
    ),
    Case(
        "corrupt-archive",
        "fetch",
        _raw_archive("set.zip", b"PK\x03\x04" + b"\xff" * 300),
        "crackdet fetch: error: cannot extract {root}/set.zip: ",
        prefix=True,
    ),
    Case(
        "truncated-archive",
        "fetch",
        _truncated_zip,
        "crackdet fetch: error: cannot extract {root}/set.zip: ",
        prefix=True,
    ),
    Case(
        "too-many-files",
        "fetch",
        _limits(max_files=4),
        "crackdet fetch: error: refusing to extract {root}/set.zip: more than 4 files/folders "
        "(fetch.max_files); raise fetch.max_files if the archive is trusted",
    ),
    Case(
        "too-many-bytes",
        "fetch",
        _limits(max_bytes=5000),
        "crackdet fetch: error: refusing to extract {root}/set.zip: more than 5000 bytes "
        "uncompressed (fetch.max_bytes); raise fetch.max_bytes if the archive is trusted",
    ),
    # ---- downloads (a local HTTP server on 127.0.0.1) --------------------------------------
    Case(
        "download-checksum-mismatch",
        "fetch",
        _checksum_mismatch,
        "crackdet fetch: error: checksum mismatch for {url}: expected sha256 "
        + "0" * 64
        + ", got {sha}; the partial file was deleted. Rerun to download again, or update the "
        "expected sha256 if the file changed upstream",
        absent=(f"{DOWNLOAD}.part", str(DOWNLOAD)),
    ),
    Case(
        "download-truncated",
        "fetch",
        _truncated_download,
        "crackdet fetch: error: download of {url} stopped short: got 5000 of {size} bytes; "
        "rerun to resume from {root}/" + f"{DOWNLOAD}.part",
        absent=(str(DOWNLOAD),),
    ),
    Case(
        "network-unreachable",
        "fetch",
        _offline,
        "crackdet fetch: error: cannot download http://127.0.0.1:9/file_downloaded: [Errno 111] "
        "Connection refused. Offline? Use a local copy: a fetch source with kind: archive and "
        "path: <the copy>",
    ),
    Case(
        "download-http-404",
        "fetch",
        _http_404,
        "crackdet fetch: error: cannot download {url404}: HTTP 404 Not Found; check the URL (it "
        "may have moved) or use a local copy: a fetch source with kind: archive and path: <the "
        "copy>",
    ),
    # ---- params.yaml ------------------------------------------------------------------------
    Case(
        "params-missing-key",
        "fetch",
        _set(fetch__max_pixels=_DELETE),
        "crackdet fetch: error: params.yaml: missing key fetch.max_pixels",
    ),
    Case(
        "params-wrong-type",
        "train",
        _set(train__epochs="six"),
        "crackdet train: error: params.yaml: train.epochs must be an integer, got 'six' (str)",
    ),
    Case(
        "params-out-of-range",
        "fetch",
        _set(train__lr=0),
        "crackdet fetch: error: params.yaml: train.lr must be > 0.0; got 0.0",
    ),
    Case(
        "params-unknown-backbone",
        "fetch",
        _set(train__backbone="vgg16"),
        "crackdet fetch: error: params.yaml: train.backbone must be one of "
        f"{', '.join(BACKBONES)}; got 'vgg16'",
    ),
    Case(
        "params-unknown-source",
        "fetch",
        lambda r: r.source("set.zip", "s3"),
        "crackdet fetch: error: params.yaml: fetch.sources.set.kind must be one of "
        f"{', '.join(SOURCE_KINDS)}; got 's3'",
    ),
    Case(
        "params-unknown-key",
        "split",
        _set(split__seed=3),
        "crackdet split: error: params.yaml: unknown key split.seed (known keys in split: "
        "strategy, groups, train, val, test)",
    ),
    Case(
        "params-not-yaml",
        "fetch",
        _params_file("base:\n  seed: [1\n"),
        "crackdet fetch: error: params.yaml: not valid YAML at line 3",
    ),
    Case(
        "params-archive-source-without-archive",
        "fetch",
        lambda r: r.source(""),
        "crackdet fetch: error: params.yaml: fetch.sources.set.path must name the local archive "
        "or folder",
    ),
    # ---- output folders and the disk -------------------------------------------------------
    Case(
        "output-folder-blocked-by-a-file",
        "fetch",
        _outputs_is_a_file,
        "crackdet fetch: error: {root}/outputs/fetch: cannot write ([Errno 17] File exists: "
        "'{root}/outputs'); free disk space or make {root}/outputs writable, then rerun",
        absent=(),
    ),
    Case(
        "disk-full-while-writing",
        "fetch",
        _disk_full,
        "crackdet fetch: error: cannot extract {root}/set.zip: [Errno 27] File too large; check "
        "free disk space and that the archive has no conflicting entry names",
    ),
    # ---- stages run out of order, and hostile checkpoints -----------------------------------
    Case(
        "split-before-fetch",
        "split",
        lambda r: None,
        "crackdet split: error: {root}/outputs/fetch/manifest.csv: not found; run the stage "
        "that writes it first",
        absent=("outputs/split",),
    ),
    Case(
        "params-seed-beyond-2-to-the-32",
        "split",
        _set(base__seed=2**32),
        "crackdet split: error: params.yaml: base.seed must be <= 4294967295; got 4294967296",
    ),
    Case(
        "params-duplicate-key",
        "fetch",
        _params_file("base:\n  seed: 1\ntrain:\n  epochs: 6\n  epochs: 60\n"),
        "crackdet fetch: error: params.yaml: duplicate key train.epochs at lines 4 and 5; keep one",
    ),
    Case(
        "folder-with-a-broken-link",
        "fetch",
        _dangling_link,
        "crackdet fetch: error: {root}/set: Positive/ghost.jpg: broken link to "
        "/nonexistent/ghost.jpg; remove it or put the file it names there",
    ),
    Case(
        "truncated-ood-model",
        "predict_samples",
        _ood_file(),
        "crackdet predict_samples: error: {root}/outputs/train/ood.npz: damaged or not a "
        "plain-array .npz (",
        prefix=True,
    ),
    Case(
        "ood-model-holding-a-pickle",
        "predict_samples",
        _ood_file(pickled=True),
        "crackdet predict_samples: error: {root}/outputs/train/ood.npz: damaged or not a "
        "plain-array .npz (Object arrays cannot be loaded when allow_pickle=False); rerun train "
        "and the stages after it (dvc repro --force --downstream train)",
        absent=("PWNED",),
    ),
    Case(
        "ood-model-with-a-nan-threshold",
        "predict_samples",
        _ood_file(threshold=np.array(float("nan"))),
        "crackdet predict_samples: error: {root}/outputs/train/ood.npz: not a valid OOD model "
        "(threshold is not finite); rerun train (dvc repro --force --downstream train)",
    ),
    Case(
        "ood-model-with-text-arrays",
        "predict_samples",
        _ood_file(components=np.array([["a", "b"]])),
        "crackdet predict_samples: error: {root}/outputs/train/ood.npz: not a valid OOD model "
        "(components is not numeric); rerun train (dvc repro --force --downstream train)",
    ),
    Case(
        "ood-model-with-mismatched-shapes",
        "predict_samples",
        _ood_file(components=np.eye(5)[:3]),
        "crackdet predict_samples: error: {root}/outputs/train/ood.npz: not a valid OOD model "
        "(components is 3x5, expected 3x8); rerun train (dvc repro --force --downstream train)",
    ),
    Case(
        "checkpoint-of-random-bytes",
        "predict_samples",
        _random_checkpoint,
        "crackdet predict_samples: error: {root}/outputs/train/model.pt: not a checkpoint (not "
        "the zip archive torch.save writes); rerun the train stage, or point --model at a "
        "folder holding model.pt and model.json",
    ),
    Case(
        "checkpoint-with-pickled-code",
        "predict_samples",
        _pickled_checkpoint,
        "crackdet predict_samples: error: {root}/outputs/train/model.pt: not a valid crackdet "
        "checkpoint (it holds pickled objects other than tensors, which are never executed: "
        "loaded with weights_only=True)",
        absent=("PWNED", "outputs/predict"),
    ),
]


def _expected(case: Case, repo: Repo) -> str:
    payload = repo.state.payload
    import hashlib

    return (
        case.expected.replace("{root}", str(repo.root))
        .replace("{url404}", repo.url.replace("data.bin", "moved.bin"))
        .replace("{url}", repo.url)
        .replace("{sha}", hashlib.sha256(payload).hexdigest())
        .replace("{size}", str(len(payload)))
    )


def _leftovers(root: Path) -> list[str]:
    """Temporary or half-written files a failed stage must not leave under outputs/."""
    outputs = root / "outputs"
    if not outputs.is_dir():
        return []
    return sorted(
        p.relative_to(root).as_posix() for p in outputs.rglob(".*") if p.name != ".gitignore"
    )


def test_catalogue_has_at_least_25_cases() -> None:
    assert len(CATALOGUE) >= 25
    assert len({c.id for c in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_bad_input(case: Case, repo: Repo) -> None:
    case.setup(repo)
    result = run_stage(repo, case.stage)
    expected = _expected(case, repo)
    assert result.returncode == 2, result.stdout + result.stderr
    # The whole of stderr is the one line: no traceback, warning or progress bar around it.
    if case.prefix:
        assert result.stderr.startswith(expected), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    else:
        assert result.stderr == expected + "\n"
    stage_out = {"predict_samples": "outputs/predict"}.get(case.stage, f"outputs/{case.stage}")
    for rel in (stage_out, *case.absent):
        assert not (repo.root / rel).exists(), f"{rel} left behind"
    assert _leftovers(repo.root) == []


def test_truncated_download_resumes(repo: Repo) -> None:
    """After a cut connection the rerun asks for the rest (Range) and completes the archive."""
    _truncated_download(repo)
    assert run_stage(repo, "fetch").returncode == 2
    part = repo.root / f"{DOWNLOAD}.part"
    assert part.stat().st_size == 5000
    repo.state.cut_after = None
    result = run_stage(repo, "fetch")
    # The fixture is not the 20,000 + 20,000 public set, so fetch stops after the download.
    assert "not the public set as published" in result.stderr
    assert (repo.root / DOWNLOAD).read_bytes() == repo.state.payload
    assert repo.state.requests[-1].get("Range") == "bytes=5000-"
    assert not part.exists()
    assert not (repo.root / "outputs/fetch").exists()


# --------------------------------------------------------------------------------------------
# unusual but valid inputs: converted, not refused
# --------------------------------------------------------------------------------------------


def _png(mode: str) -> bytes:
    rgb = Image.fromarray(
        np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB"
    )
    image = (
        Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        if mode == "I;16"
        else rgb.convert(mode)
    )
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


ACCEPTED = {
    "grayscale-jpeg": {"Positive/gray.jpg": jpeg(90, mode="L")},
    "cmyk-jpeg": {"Positive/cmyk.jpg": jpeg(90, mode="CMYK")},
    "rgba-png": {"Positive/alpha.png": _png("RGBA")},
    "16-bit-png": {"Positive/deep.png": _png("I;16")},
    "palette-png": {"Negative/palette.png": _png("P")},
    "same-name-in-both-classes": {"Positive/000.jpg": jpeg(40)},  # = Negative/000.jpg's bytes
}


@pytest.mark.parametrize("extra", ACCEPTED.values(), ids=list(ACCEPTED))
def test_unusual_images_are_accepted(extra: dict[str, bytes], repo: Repo) -> None:
    from crackdet.data.images import load_rgb
    from crackdet.data.manifest import read_manifest

    repo.archive("set.zip", {**layout(), **extra})
    result = run_stage(repo, "fetch")
    assert result.returncode == 0, result.stderr
    out = repo.root / "outputs/fetch"
    rows = {r.path: r for r in read_manifest(out / "manifest.csv")}
    for name in extra:  # images of a source are kept under its name
        assert f"set/{name}" in rows
        assert load_rgb(out / "images" / "set" / name).shape == (227, 227, 3)
    if "Positive/000.jpg" in extra:  # one picture under both labels: reported, not hidden
        report = (out / "duplicates.csv").read_text()
        assert "Positive/000.jpg" in report and "Negative/000.jpg" in report


def test_links_and_litter_in_a_folder_source_are_left_out_and_named(repo: Repo) -> None:
    """Nothing is skipped silently: a link to a parent folder is not followed (no tree copied
    into itself), OS litter and files beside the class folders are left out, and each is named
    in the stage's output and in summary.json; a link to an image is read as that image."""
    import json

    _folder(layout())(repo)
    source = repo.root / "set"
    (source / "Positive" / "loop").symlink_to("..")
    (source / "Positive" / "alias.jpg").symlink_to(source / "Positive" / "000.jpg")
    (source / "Negative" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (source / "README.txt").write_text("where these came from\n")
    result = run_stage(repo, "fetch")
    assert result.returncode == 0, result.stderr
    left_out = [
        "README.txt (not a class folder)",
        "Positive/loop/ (linked folder, not followed)",
        "Negative/.DS_Store (hidden)",
    ]
    summary = json.loads((repo.root / "outputs/fetch/summary.json").read_text())
    assert summary["sources"]["set"]["left_out"] == left_out
    named = "; ".join(f"set/{entry}" for entry in left_out)  # each under its source's name
    assert f"fetch: left out 3: {named}" in result.stdout
    paths = [line.split(",")[0] for line in (repo.root / "outputs/fetch/manifest.csv").open()]
    assert "set/Positive/alias.jpg" in paths
    assert not any("loop" in p for p in paths)
