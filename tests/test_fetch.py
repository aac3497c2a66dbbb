"""fetch: every source produces images + manifest; bad input is named; nothing half-written."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crackdet.core.errors import CrackdetError
from crackdet.core.layout import Layout
from crackdet.core.params import FetchParams
from crackdet.data.fetch import fetch
from crackdet.data.images import decode_image, to_rgb
from crackdet.data.manifest import read_manifest
from tests.conftest import OZGENEL_4K, needs_real_sample


def _params(tiny_params, **changes) -> FetchParams:
    return dataclasses.replace(tiny_params().fetch, **changes)


def _jpeg(colour: tuple[int, int, int], size: int = 227) -> bytes:
    """A textured JPEG (noise around ``colour``), so distinct fixtures hash differently."""
    rng = np.random.default_rng(list(colour))
    texture = rng.normal(0, 40, size=(size // 8, size // 8, 1))
    coarse = np.kron(texture, np.ones((8, 8, 1)))[:size, :size]
    coarse = np.pad(coarse, ((0, size - coarse.shape[0]), (0, size - coarse.shape[1]), (0, 0)))
    pixels = np.clip(np.array(colour)[None, None, :] + coarse, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _layout(prefix: str = "", n: int = 3) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        files[f"{prefix}Positive/{i:05d}.jpg"] = _jpeg((90 + i, 90, 90))
        files[f"{prefix}Negative/{i:05d}.jpg"] = _jpeg((180, 180 - i, 180))
    return files


def test_synthetic_fetch_writes_images_and_manifest(chdir_tmp: Path, tiny_params) -> None:
    summary = fetch(tiny_params().fetch, seed=1, layout=Layout(chdir_tmp))
    out = chdir_tmp / "outputs/fetch"
    rows = read_manifest(out / "manifest.csv")
    assert summary.count == len(rows) == 48
    assert summary.per_class == {"Negative": 24, "Positive": 24}
    for row in rows[:5]:
        data = (out / "images" / row.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert (row.width, row.height) == (227, 227)
    assert json.loads((out / "summary.json").read_text())["manifest_sha256"] == (
        summary.manifest_sha256
    )
    assert not list(chdir_tmp.glob("outputs/.*")), "temporary folders left behind"


def test_synthetic_fetch_is_deterministic(chdir_tmp: Path, tiny_params) -> None:
    first = fetch(tiny_params().fetch, seed=5, layout=Layout(chdir_tmp)).manifest_sha256
    again = fetch(tiny_params().fetch, seed=5, layout=Layout(chdir_tmp)).manifest_sha256
    other = fetch(tiny_params().fetch, seed=6, layout=Layout(chdir_tmp)).manifest_sha256
    assert first == again != other


def test_archive_fetch_finds_nested_layout(chdir_tmp: Path, tiny_params) -> None:
    archive = _zip(chdir_tmp / "set.zip", _layout("concrete/"))
    summary = fetch(_params(tiny_params, source="archive", archive="set.zip"), 1, Layout(chdir_tmp))
    assert summary.per_class == {"Negative": 3, "Positive": 3}
    assert summary.archive_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    paths = [r.path for r in read_manifest(chdir_tmp / "outputs/fetch/manifest.csv")]
    assert paths[0] == "Negative/00000.jpg"


def test_folder_fetch(chdir_tmp: Path, tiny_params) -> None:
    for name, data in _layout().items():
        (chdir_tmp / "src-folder" / name).parent.mkdir(parents=True, exist_ok=True)
        (chdir_tmp / "src-folder" / name).write_bytes(data)
    (chdir_tmp / "src-folder/Positive/.DS_Store").write_bytes(b"junk")
    summary = fetch(
        _params(tiny_params, source="archive", archive="src-folder"), 1, Layout(chdir_tmp)
    )
    assert summary.count == 6


def test_corrupt_image_stops_fetch_and_keeps_previous_output(chdir_tmp: Path, tiny_params) -> None:
    fetch(tiny_params().fetch, seed=1, layout=Layout(chdir_tmp))
    manifest = chdir_tmp / "outputs/fetch/manifest.csv"
    before = manifest.read_bytes()
    files = _layout()
    files["Positive/00001.jpg"] = files["Positive/00001.jpg"][:300]  # truncated JPEG
    _zip(chdir_tmp / "bad.zip", files)
    with pytest.raises(CrackdetError, match=r"bad.zip: Positive/00001.jpg: not a readable image"):
        fetch(_params(tiny_params, source="archive", archive="bad.zip"), 1, Layout(chdir_tmp))
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in (chdir_tmp / "outputs").iterdir()) == ["fetch"]


def test_corrupt_image_skipped_when_asked(chdir_tmp: Path, tiny_params) -> None:
    files = _layout()
    files["Negative/00002.jpg"] = b"this is not a jpeg"
    files["Negative/00003.jpg"] = b""
    _zip(chdir_tmp / "bad.zip", files)
    params = _params(tiny_params, source="archive", archive="bad.zip", on_bad_image="skip")
    summary = fetch(params, 1, Layout(chdir_tmp))
    assert summary.skipped == ["Negative/00002.jpg", "Negative/00003.jpg"]
    assert summary.per_class == {"Negative": 2, "Positive": 3}
    assert not (chdir_tmp / "outputs/fetch/images/Negative/00002.jpg").exists()


def test_wrong_layout_is_named(chdir_tmp: Path, tiny_params) -> None:
    _zip(chdir_tmp / "flat.zip", {"cracks/a.jpg": _jpeg((1, 2, 3))})
    with pytest.raises(CrackdetError, match=r"flat.zip: expected folders Positive/ and Negative/"):
        fetch(_params(tiny_params, source="archive", archive="flat.zip"), 1, Layout(chdir_tmp))
    files = {k: v for k, v in _layout().items() if k.startswith("Positive")}
    files["Negative/readme.txt"] = b"x"
    _zip(chdir_tmp / "empty-class.zip", files)
    with pytest.raises(CrackdetError, match=r"Negative/readme.txt: not a readable image"):
        fetch(
            _params(tiny_params, source="archive", archive="empty-class.zip"), 1, Layout(chdir_tmp)
        )


def test_missing_archive_is_named(chdir_tmp: Path, tiny_params) -> None:
    with pytest.raises(CrackdetError, match=r"fetch.archive: nowhere.zip does not exist"):
        fetch(_params(tiny_params, source="archive", archive="nowhere.zip"), 1, Layout(chdir_tmp))


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def test_mendeley_source_downloads_pins_and_records(
    chdir_tmp: Path, tiny_params, http_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = http_server
    url = f"{base}/file_downloaded"
    _zip(served / "file_downloaded", _layout("Concrete Crack Images/"))
    # The real check: a 3+3 fixture is not the 20,000 + 20,000 public set.
    with pytest.raises(CrackdetError, match=r"not the public set as published"):
        fetch(_params(tiny_params, source="mendeley", url=url), 1, Layout(chdir_tmp))
    monkeypatch.setattr("crackdet.data.fetch.PUBLIC_PER_CLASS", 3)  # the fixture stands in for it
    archive = served / "file_downloaded"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    params = _params(tiny_params, source="mendeley", url=f"{base}/file_downloaded", sha256=digest)
    summary = fetch(params, 1, Layout(chdir_tmp))
    assert summary.archive_sha256 == digest
    assert summary.count == 6
    wrong = _params(tiny_params, source="mendeley", url=f"{base}/file_downloaded", sha256="0" * 64)
    with pytest.raises(CrackdetError, match="0" * 64):
        fetch(wrong, 1, Layout(chdir_tmp))


def test_mendeley_offline_message(chdir_tmp: Path, tiny_params) -> None:
    params = _params(tiny_params, source="mendeley", url="http://127.0.0.1:9/file_downloaded")
    with pytest.raises(CrackdetError, match=r"Offline\? Set fetch.source: synthetic"):
        fetch(params, 1, Layout(chdir_tmp))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("L", (120, 120, 120)),
        ("RGBA", (120, 60, 30)),
        ("P", (120, 60, 30)),
        ("CMYK", None),
        ("I;16", (120, 120, 120)),
    ],
)
def test_to_rgb_converts_every_mode(mode: str, expected: tuple[int, int, int] | None) -> None:
    rgb = Image.new("RGB", (8, 8), (120, 60, 30))
    if mode == "L":
        image = Image.new("L", (8, 8), 120)
    elif mode == "I;16":
        image = Image.fromarray(np.full((8, 8), 120 * 257, dtype=np.uint16))
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = rgb.convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (8, 8)
    pixel = out.getpixel((3, 3))
    if expected is not None:
        assert pixel == expected
    else:  # CMYK round trip is lossy but must stay close to the source colour
        assert np.abs(np.subtract(pixel, (120, 60, 30))).max() <= 3


def test_decode_refuses_oversize_and_empty() -> None:
    with pytest.raises(CrackdetError, match=r"big.jpg: 227x227 pixels exceeds the limit of 1000"):
        decode_image(_jpeg((1, 1, 1)), "big.jpg", max_pixels=1000)
    with pytest.raises(CrackdetError, match=r"zero.jpg: empty file"):
        decode_image(b"", "zero.jpg", max_pixels=10**6)


@needs_real_sample()
def test_real_sample_fetches_in_public_layout(chdir_tmp: Path, tiny_params) -> None:
    params = _params(tiny_params, source="archive", archive=str(OZGENEL_4K))
    summary = fetch(params, 1, Layout(chdir_tmp))
    assert summary.per_class == {"Negative": 2000, "Positive": 2000}
    assert summary.archive_sha256 == (
        "a45923238134f260a5c2ee79a66f58c69b471e32c71bc5a6b5fcfe28a93031fb"
    )
    rows = read_manifest(chdir_tmp / "outputs/fetch/manifest.csv")
    assert {(r.width, r.height) for r in rows} == {(227, 227)}


def test_duplicates_are_found_and_reported(chdir_tmp: Path, tiny_params) -> None:
    files = _layout(n=4)
    files["Positive/00009.jpg"] = files["Positive/00001.jpg"]  # byte-identical copy
    buf = io.BytesIO()
    Image.open(io.BytesIO(files["Negative/00002.jpg"])).save(buf, format="JPEG", quality=70)
    files["Negative/00008.jpg"] = buf.getvalue()  # re-encoded: same picture, other bytes
    _zip(chdir_tmp / "dups.zip", files)
    summary = fetch(
        _params(tiny_params, source="archive", archive="dups.zip"), 1, Layout(chdir_tmp)
    )
    assert summary.duplicates["groups_with_identical_bytes"] >= 1
    report = (chdir_tmp / "outputs/fetch/duplicates.csv").read_text()
    assert "Positive/00001.jpg" in report and "Positive/00009.jpg" in report
    assert "Negative/00008.jpg" in report and "Negative/00002.jpg" in report
    assert "Negative/00003.jpg" not in report  # distinct images are not flagged
    assert summary.duplicates["groups"] == 2
