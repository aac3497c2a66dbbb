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
from crackdet.core.params import FetchParams, LabelledSource, MasksSource
from crackdet.data.fetch import fetch
from crackdet.data.images import decode_image, to_rgb
from crackdet.data.manifest import read_manifest
from tests.helpers import OZGENEL_4K, needs_real_sample


def _params(
    tiny_params, source: str = "", archive: str = "", url: str = "", sha256: str = "", **changes
) -> FetchParams:
    """The tiny params' fetch section with one labelled source ``set`` (kind ``source``;
    a folder path makes it kind folder)."""
    fetch_params = tiny_params().fetch
    if source:
        path = url if source == "mendeley" else archive
        if source == "archive" and Path(archive).is_dir():
            source = "folder"
        labelled = LabelledSource(source, path, sha256, "test data", "signature")
        fetch_params = dataclasses.replace(fetch_params, sources={"set": labelled})
    return dataclasses.replace(fetch_params, **changes)


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
    source = summary.sources["set"]
    assert source.archive_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert source.archive_md5 == hashlib.md5(archive.read_bytes()).hexdigest()
    rows = read_manifest(chdir_tmp / "outputs/fetch/manifest.csv")
    assert (rows[0].path, rows[0].source, rows[0].group) == ("set/Negative/00000.jpg", "set", "")


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
    assert summary.skipped == ["set/Negative/00002.jpg", "set/Negative/00003.jpg"]
    assert summary.per_class == {"Negative": 2, "Positive": 3}
    assert not (chdir_tmp / "outputs/fetch/images/set/Negative/00002.jpg").exists()


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
    with pytest.raises(CrackdetError, match=r"fetch.sources.set.path: nowhere.zip does not exist"):
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
    # the fixture stands in
    monkeypatch.setattr("crackdet.data.sources.labelled.PUBLIC_PER_CLASS", 3)
    archive = served / "file_downloaded"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    params = _params(tiny_params, source="mendeley", url=f"{base}/file_downloaded", sha256=digest)
    summary = fetch(params, 1, Layout(chdir_tmp))
    assert summary.sources["set"].archive_sha256 == digest
    assert summary.count == 6
    wrong = _params(tiny_params, source="mendeley", url=f"{base}/file_downloaded", sha256="0" * 64)
    with pytest.raises(CrackdetError, match="0" * 64):
        fetch(wrong, 1, Layout(chdir_tmp))


def test_mendeley_offline_message(chdir_tmp: Path, tiny_params) -> None:
    params = _params(tiny_params, source="mendeley", url="http://127.0.0.1:9/file_downloaded")
    with pytest.raises(CrackdetError, match=r"Offline\? Use a local copy: a fetch source"):
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
    assert summary.sources["set"].archive_sha256 == (
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


def test_sources_keep_their_names_licences_and_photo_groups(chdir_tmp: Path, tiny_params) -> None:
    """Two sources in one manifest: each row names its source; a group_by pattern names the
    photo a tile was cut from; the summary holds each source's licence and digest."""
    _zip(chdir_tmp / "a.zip", _layout())
    decks = {
        f"{label}/{photo}-{tile}.jpg": _jpeg((30 * photo, 20 * tile, k * 90))
        for k, label in enumerate(("Negative", "Positive"))
        for photo in (7001, 7002)
        for tile in (1, 2)
    }
    _zip(chdir_tmp / "decks.zip", decks)
    sources = {
        "first": LabelledSource("archive", "a.zip", "", "CC BY 4.0", "signature"),
        "decks": LabelledSource("archive", "decks.zip", "", "CC BY 4.0", r"^(\d+)-"),
    }
    params = dataclasses.replace(tiny_params().fetch, sources=sources)
    summary = fetch(params, 1, Layout(chdir_tmp))
    assert list(summary.sources) == ["first", "decks"]
    assert summary.sources["decks"].licence == "CC BY 4.0"
    assert summary.count == 6 + 8
    rows = read_manifest(chdir_tmp / "outputs/fetch/manifest.csv")
    groups = {r.path: r.group for r in rows if r.source == "decks"}
    assert groups["decks/Positive/7002-1.jpg"] == "7002"
    assert {r.group for r in rows if r.source == "first"} == {""}
    unmatched = dataclasses.replace(
        params, sources={"decks": LabelledSource("archive", "a.zip", "", "x", r"^(\d+)-")}
    )
    with pytest.raises(CrackdetError) as info:
        fetch(unmatched, 1, Layout(chdir_tmp))
    assert str(info.value) == (
        "fetch.sources.decks.group_by '^(\\d+)-' names no photo in the file name 00000.jpg; fix "
        "the pattern or set it to signature"
    )


def _masks_folder(root: Path) -> Path:
    """Two 400x400 photos with one vertical 3-px crack in the first, planking in the second."""
    for name in ("images", "masks", "masks_planking"):
        (root / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, stem in enumerate(("train_a", "train_b")):
        photo = rng.integers(90, 140, (400, 400, 3), dtype=np.uint8)
        mask = np.zeros((400, 400), np.uint8)
        if k == 0:
            mask[:, 199:202] = 255
            photo[:, 199:202] = 20
        Image.fromarray(photo).save(root / "images" / f"{stem}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
        planks = np.zeros((400, 400), np.uint8)
        if k == 1:
            planks[::20] = 255
        Image.fromarray(planks).save(root / "masks_planking" / f"{stem}.png")
    (root / "images" / "notes.txt").write_text("not a photo\n")
    return root


def test_masks_source_cuts_labelled_windows_at_each_scale(chdir_tmp: Path, tiny_params) -> None:
    from crackdet.data.sources.masks import photo_of

    _masks_folder(chdir_tmp / "uav")
    source = _masks_source()
    params = dataclasses.replace(tiny_params().fetch, sources={"uav": source})
    summary = fetch(params, 3, Layout(chdir_tmp))
    windows = summary.sources["uav"].windows
    rows = read_manifest(chdir_tmp / "outputs/fetch/manifest.csv")
    positives = [r for r in rows if r.label == "Positive"]
    # Only photo a has a crack: every crack window was cut from it, grouped by it.
    assert positives and all(photo_of(r.path.rsplit("/", 1)[1]) == "train_a" for r in positives)
    assert {r.group for r in positives} == {"train_a"}
    assert windows["crack"] == len(positives) and windows["clean"] == len(rows) - len(positives)
    assert windows["planking"] > 0 and windows["ambiguous"] > 0
    assert summary.sources["uav"].left_out == ["images/notes.txt (not a photo)"]
    assert {(r.width, r.height) for r in rows} == {(227, 227)}
    # A cap on the clean windows: every crack kept, hard negatives up to half of the cap.
    params = dataclasses.replace(params, sources={"uav": dataclasses.replace(source, max_clean=4)})
    fewer = fetch(params, 3, Layout(chdir_tmp)).sources["uav"].windows
    assert fewer["crack"] == windows["crack"]
    assert fewer["clean"] == 4 and fewer["planking"] == 2
    assert fewer["sampled_out"] == windows["clean"] - 4


def test_masks_photo_size_follows_its_exif_orientation(tmp_path: Path) -> None:
    """Windows are cut from the photo as it is shown (EXIF applied): labels use that size."""
    from crackdet.data.sources.masks import ORIENTATION, read_photo_rgb, read_photo_size

    image = Image.new("RGB", (300, 200), (120, 120, 120))
    exif = image.getexif()
    exif[ORIENTATION] = 6  # a quarter turn
    image.save(tmp_path / "turned.jpg", exif=exif.tobytes())
    assert read_photo_size(tmp_path / "turned.jpg", 10**7) == (300, 200)
    assert read_photo_rgb(tmp_path / "turned.jpg", 10**7).shape[:2] == (300, 200)


def _masks_source(**changes) -> MasksSource:
    source = MasksSource(
        kind="masks",
        path="uav",
        photos="train_*",
        scales=(1.0, 2.0),
        centre=0.5,
        crack_length=0.25,
        margin=0.125,
        planking_length=0.5,
        max_clean=0,
        licence="GPL-3.0",
    )
    return dataclasses.replace(source, **changes)


def _encode_mask(truth: np.ndarray, encoding: str) -> Image.Image:
    """A bool mask written as people write masks (the crack's value, colour or transparency)."""
    on = truth.astype(np.uint8)
    if encoding == "0-255":
        return Image.fromarray(on * 255)
    if encoding == "0-1":
        return Image.fromarray(on)
    if encoding == "grey-100":
        return Image.fromarray(on * 100)
    if encoding == "red-on-black":
        return Image.fromarray(np.stack([on * 200, on * 0, on * 0], axis=2))
    if encoding == "white-on-transparent":
        alpha = on * 255
        return Image.fromarray(np.stack([np.full_like(on, 255)] * 3 + [alpha], axis=2), "RGBA")
    if encoding == "16-bit":
        return Image.fromarray(truth.astype(np.uint16) * 65535)
    if encoding == "bilevel":
        return Image.fromarray(truth).convert("1")
    if encoding == "palette":
        image = Image.fromarray(on, "P")
        image.putpalette([0, 0, 0, 0, 255, 0])
        return image
    if encoding == "soft-edges":  # 0/255 resampled: a few in-between values at the edges
        values = on * 255
        edge = np.zeros_like(truth)
        edge[:, 1:] = truth[:, :-1] & ~truth[:, 1:]
        values[edge] = 90
        return Image.fromarray(values)
    raise AssertionError(encoding)


MASK_ENCODINGS = [
    "0-255",
    "0-1",
    "grey-100",
    "red-on-black",
    "white-on-transparent",
    "16-bit",
    "bilevel",
    "palette",
    "soft-edges",
]


@pytest.mark.parametrize("encoding", MASK_ENCODINGS)
def test_masks_are_read_whatever_value_marks_the_crack(tmp_path: Path, encoding: str) -> None:
    from crackdet.data.sources.masks import read_mask

    truth = np.zeros((40, 60), bool)
    truth[5:35, 20:23] = True
    truth[30, 10:50] = True
    _encode_mask(truth, encoding).save(tmp_path / "m.png")
    assert (read_mask(tmp_path / "m.png", (40, 60)) == truth).all()


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([0, 1, 2], "levels 0, 1, 2"),  # a label map: which level is the crack?
        (list(range(0, 250, 10)), "25 levels: 0, 10, 20, 30, 40, …"),  # a photo, not a mask
    ],
    ids=["label-map", "grey-levels"],
)
def test_a_mask_of_many_levels_is_refused_in_one_line(tmp_path: Path, values, shown) -> None:
    from crackdet.data.sources.masks import read_mask

    pixels = np.resize(np.array(values, np.uint8), (40, 60))
    Image.fromarray(pixels).save(tmp_path / "m.png")
    with pytest.raises(CrackdetError) as info:
        read_mask(tmp_path / "m.png", (40, 60))
    assert str(info.value) == (
        f"{tmp_path / 'm.png'}: not a two-level mask ({shown}); save crack pixels as 255 "
        "(or any one value) and all others as 0"
    )


def test_masks_source_with_0_1_masks_cuts_the_same_windows(chdir_tmp: Path, tiny_params) -> None:
    """Defect: 0/1 masks read as "no crack" made crack windows negatives, silently."""
    _masks_folder(chdir_tmp / "uav")
    params = dataclasses.replace(tiny_params().fetch, sources={"uav": _masks_source()})
    expected = fetch(params, 3, Layout(chdir_tmp)).sources["uav"].windows
    for stem in ("train_a", "train_b"):
        mask = np.asarray(Image.open(chdir_tmp / "uav/masks" / f"{stem}.png"))
        Image.fromarray((mask > 0).astype(np.uint8)).save(chdir_tmp / "uav/masks" / f"{stem}.png")
    assert fetch(params, 3, Layout(chdir_tmp)).sources["uav"].windows == expected


def test_masks_without_their_photo_are_named(chdir_tmp: Path, tiny_params) -> None:
    from crackdet.data.sources.masks import find_photos

    root = _masks_folder(chdir_tmp / "uav")
    Image.new("L", (400, 400)).save(root / "masks" / "train_c.png")
    Image.new("L", (400, 400)).save(root / "masks_planking" / "lost.png")
    (root / "masks" / "train_a.jpg").write_bytes(b"a mask that is not a .png")
    (root / "README.md").write_text("about this set\n")
    left_out = [
        "README.md (not images/, masks/ or masks_planking/)",
        "images/notes.txt (not a photo)",
        "masks/train_a.jpg (not a .png mask)",
        "masks/train_c.png (no photo images/train_c.*)",
        "masks_planking/lost.png (no photo images/lost.*)",
    ]
    photos, named = find_photos(root, "train_*")
    assert [p.name for p in photos] == ["train_a", "train_b"] and named == left_out
    # A photo the glob leaves out is the user's choice: its masks are not "without a photo".
    assert find_photos(root, "train_a*")[1] == left_out
    params = dataclasses.replace(tiny_params().fetch, sources={"uav": _masks_source()})
    assert fetch(params, 3, Layout(chdir_tmp)).sources["uav"].left_out == left_out


@pytest.mark.parametrize("missing", ["clean", "crack"])
def test_masks_source_without_a_kind_of_window_says_what_to_change(
    chdir_tmp: Path, tiny_params, missing: str
) -> None:
    """Not the labelled sources' hint about a Negative/ folder a masks source does not have."""
    root = _masks_folder(chdir_tmp / "uav")
    for stem in ("train_a", "train_b"):
        mask = np.zeros((400, 400), np.uint8)
        if missing == "clean":
            mask[::60, :] = 255  # a crack line in every window's margin
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    params = dataclasses.replace(tiny_params().fetch, sources={"uav": _masks_source()})
    with pytest.raises(CrackdetError) as info:
        fetch(params, 3, Layout(chdir_tmp))
    key = "fetch.sources.uav"
    if missing == "clean":
        expected = (
            f"{key}: no clean windows in 2 photos (every window has crack pixels within "
            f"{key}.margin of it); add photos with crack-free areas or lower {key}.margin"
        )
    else:
        expected = (
            f"{key}: no crack windows in 2 photos (none holds {key}.crack_length x side crack "
            f"pixels at its centre); check that masks/ marks the cracks or lower "
            f"{key}.crack_length"
        )
    assert str(info.value) == expected


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_two_class_layouts_in_one_source_are_refused(chdir_tmp: Path, tiny_params, kind) -> None:
    """set1/ and set2/ each with Positive/ and Negative/: only set1 was used, nothing said."""
    files = _layout("data/set1/") | _layout("data/set2/")
    if kind == "archive":
        _zip(chdir_tmp / "sets.zip", files)
        path, shown = "sets.zip", str(chdir_tmp / "sets.zip")
    else:
        for name, data in files.items():
            (chdir_tmp / "sets" / name).parent.mkdir(parents=True, exist_ok=True)
            (chdir_tmp / "sets" / name).write_bytes(data)
        path, shown = "sets", str(chdir_tmp / "sets")
    with pytest.raises(CrackdetError) as info:
        fetch(_params(tiny_params, source="archive", archive=path), 1, Layout(chdir_tmp))
    assert str(info.value) == (
        f"{shown}: Positive/ and Negative/ in 2 places (data/set1/, data/set2/); one path "
        "holds one data set: point at one of them (for fetch: a source for each)"
    )


def test_entries_outside_the_class_folders_are_named(chdir_tmp: Path, tiny_params) -> None:
    files = _layout("concrete/") | {"README.txt": b"about\n", "concrete/labels.csv": b"a,b\n"}
    files |= {"extra/Positive/00009.jpg": _jpeg((10, 10, 10))}  # one class: not a data set
    _zip(chdir_tmp / "set.zip", files)
    summary = fetch(_params(tiny_params, source="archive", archive="set.zip"), 1, Layout(chdir_tmp))
    assert summary.sources["set"].left_out == [
        "README.txt (not a class folder)",
        "concrete/labels.csv (not a class folder)",
        "extra/ (not a class folder)",
    ]


def test_a_32_bit_mask_is_refused_not_counted_level_by_level(tmp_path: Path) -> None:
    """Levels are counted with a table as long as the value range: bounded at 16 bits."""
    from crackdet.data.sources.masks import read_mask

    pixels = np.zeros((40, 60), np.int32)
    pixels[5, 5] = 2**31 - 1
    Image.fromarray(pixels, "I").save(tmp_path / "m.png", format="TIFF")
    with pytest.raises(CrackdetError) as info:
        read_mask(tmp_path / "m.png", (40, 60))
    assert str(info.value) == (
        f"{tmp_path / 'm.png'}: not a readable mask image (pixel values outside 0..65535)"
    )


def test_a_mask_far_bigger_than_its_photo_is_refused_before_decoding(tmp_path: Path) -> None:
    import struct
    import warnings
    import zlib

    from crackdet.data.sources.masks import read_mask

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 0, 0, 0, 0)  # 144 megapixels
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    (tmp_path / "m.png").write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    with pytest.raises(CrackdetError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        read_mask(tmp_path / "m.png", (40, 60))
    assert str(info.value) == (
        f"{tmp_path / 'm.png'}: mask is 12000x12000 but its photo is 60x40; masks must match "
        "their photo pixel for pixel"
    )
