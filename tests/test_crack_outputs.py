"""Measured cracks as files (crackdet.maps.crack_outputs): each file checked against the crack
mask it came from (drawn, so its cracks' lengths and widths are known), the photo's scale from
params or a scale CSV, EXIF place and time in the GeoJSON, and resuming a mapped folder."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from crackdet.core.errors import CrackdetError
from crackdet.core.params import PredictParams, WidthBand, parse_params
from crackdet.maps.crack_outputs import (
    BAND_COLOURS,
    CSV_COLUMNS,
    FOLDER_CRACKS,
    UNGRADED_COLOUR,
    CrackFiles,
    PhotoPlace,
    check_scale_csvs,
    photo_mm_per_pixel,
    photo_place,
    pixel_threshold,
    trace_photo,
    write_crack_files,
)
from tests.helpers import tiny_params_tree
from tests.helpers.project import SHARED_DATA


def settings(**values) -> PredictParams:
    return dataclasses.replace(parse_params(tiny_params_tree()).predict, **values)


def drawn(shape=(300, 400)) -> np.ndarray:
    """Two cracks: a bar 5 px wide and 300 px long, a diagonal 3 px wide over 150 rows."""
    mask = np.zeros(shape, dtype=bool)
    mask[50:55, 40:340] = True
    for i in range(150):
        mask[120 + i, 100 + i - 1 : 100 + i + 2] = True
    return mask


def write(tmp_path: Path, mask: np.ndarray, mm: float | None, place: PhotoPlace | None = None):
    photo = np.full((*mask.shape, 3), 128, dtype=np.uint8)
    traced = trace_photo(mask.astype(np.float32) * 0.8, None, mm, settings())
    files = CrackFiles(tmp_path, "wall")
    write_crack_files(files, photo, traced, "wall.jpg", place or PhotoPlace())
    return traced, files


def test_each_file_matches_the_drawn_mask(tmp_path: Path) -> None:
    mask = drawn()
    traced, files = write(tmp_path, mask, mm=0.1)
    on_bar = round(traced.cracks[0].polylines[0][0][1])  # the row the bar's line is drawn on
    # The mask file is the crack pixels, full size.
    with Image.open(files.mask) as image:
        assert image.size == (400, 300) and image.mode == "1"
        assert np.array_equal(np.asarray(image.convert("L")) == 255, mask)
    # The table: the bar (longest) first, then the diagonal; in mm, graded by width.
    with files.table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == 2
    bar, diagonal = rows
    assert 300 - 6 <= float(bar["length_px"]) <= 300
    assert float(bar["length"]) == pytest.approx(float(bar["length_px"]) * 0.1, abs=0.01)
    assert float(bar["max_width_px"]) == pytest.approx(5.0)
    assert float(bar["max_width"]) == pytest.approx(0.5) and bar["unit"] == "mm"
    assert bar["severity"] == "moderate"  # 0.5 mm: 0.3 to 1.27 (DEFAULT_BANDS)
    assert 51 <= int(bar["y0"]) <= int(bar["y1"]) <= 53  # the bar's skeleton: its middle rows
    assert 149 * math.sqrt(2) - 6 <= float(diagonal["length_px"]) <= 149 * math.sqrt(2) + 3
    assert float(diagonal["max_width_px"]) <= 3.0 and diagonal["severity"] == "insignificant"
    # The GeoJSON: one LineString per crack, in pixel coordinates, with its row as properties.
    data = json.loads(files.geojson.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    first = data["features"][0]
    assert first["geometry"]["type"] == "LineString"
    xs = [x for x, _ in first["geometry"]["coordinates"]]
    assert min(xs) >= 40 and max(xs) <= 339 and max(xs) - min(xs) > 290
    assert (
        first["properties"]["severity"] == "moderate" and first["properties"]["photo"] == "wall.jpg"
    )
    assert "photo_latitude" not in first["properties"]  # no EXIF: no position
    assert data["photo"] == {"name": "wall.jpg", "width": 400, "height": 300, "mm_per_pixel": 0.1}
    # The traced overlay: the photo, each crack in its band's colour.
    with Image.open(files.traced) as image:
        overlay = np.asarray(image.convert("RGB"))
    assert overlay.shape == (300, 400, 3)
    # JPEG: colours within a few levels (4:4:4, quality 90).
    assert np.abs(overlay[on_bar, 200].astype(int) - BAND_COLOURS[1]).max() <= 30  # moderate
    assert np.abs(overlay[120 + 70, 100 + 70].astype(int) - BAND_COLOURS[0]).max() <= 30
    assert np.abs(overlay[250, 50].astype(int) - 96).max() <= 3  # the photo, dimmed


def test_without_a_scale_cracks_are_in_pixels_and_ungraded(tmp_path: Path) -> None:
    traced, files = write(tmp_path, drawn(), mm=None)
    on_bar = round(traced.cracks[0].polylines[0][0][1])
    assert traced.unit == "px" and traced.severity == "" and traced.severity_rank == -1
    with files.table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["unit"] for r in rows] == ["px", "px"] and [r["severity"] for r in rows] == ["", ""]
    assert float(rows[0]["length"]) == pytest.approx(float(rows[0]["length_px"]), abs=0.01)
    with Image.open(files.traced) as image:
        colour = np.asarray(image.convert("RGB"))[on_bar, 200].astype(int)
        assert np.abs(colour - UNGRADED_COLOUR).max() <= 30


def test_branched_crack_is_a_multilinestring(tmp_path: Path) -> None:
    mask = np.zeros((200, 200), dtype=bool)
    mask[100, 10:100] = True
    for i in range(60):
        mask[100 - i, 100 + i] = mask[100 + i, 100 + i] = True
    _, files = write(tmp_path, mask, mm=None)
    (feature,) = json.loads(files.geojson.read_text())["features"]
    assert feature["geometry"]["type"] == "MultiLineString"
    assert len(feature["geometry"]["coordinates"]) == 3 == feature["properties"]["branches"]


def gps_photo(path: Path) -> None:
    rational = TiffImagePlugin.IFDRational
    exif = Image.Exif()
    exif[0x8825] = {
        1: "N",
        2: (rational(52), rational(30), rational(36)),
        3: "W",
        4: (rational(1), rational(15), rational(0)),
        5: b"\x00",
        6: rational(25, 2),
    }
    exif[0x8769] = {0x9003: "2024:05:06 07:08:09", 0x9011: "+02:00"}
    Image.new("RGB", (400, 300), (128, 128, 128)).save(path, "JPEG", exif=exif)


def test_geojson_carries_the_photos_exif_position_and_time(tmp_path: Path) -> None:
    gps_photo(tmp_path / "wall.jpg")
    place = photo_place(tmp_path / "wall.jpg")
    assert place == PhotoPlace(52.51, -1.25, 12.5, "2024-05-06T07:08:09+02:00")
    _, files = write(tmp_path, drawn(), mm=0.1, place=place)
    data = json.loads(files.geojson.read_text())
    for feature in data["features"]:
        assert feature["properties"]["photo_latitude"] == pytest.approx(52.51)
        assert feature["properties"]["photo_longitude"] == pytest.approx(-1.25)
        assert feature["properties"]["photo_altitude_m"] == pytest.approx(12.5)
        assert feature["properties"]["photo_captured"] == "2024-05-06T07:08:09+02:00"
    assert data["photo"]["photo_latitude"] == pytest.approx(52.51)
    Image.new("RGB", (40, 30)).save(tmp_path / "plain.png")
    assert photo_place(tmp_path / "plain.png") == PhotoPlace()
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    assert photo_place(tmp_path / "broken.jpg") == PhotoPlace()


# --- the photo's scale ------------------------------------------------------------------------


def photos_in(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (64, 48)).save(folder / name)
    return [folder / name for name in names]


def test_scale_csv_gives_each_photo_its_scale_over_the_default(tmp_path: Path) -> None:
    photos = photos_in(tmp_path / "site", "a.jpg", "b.jpg")
    (tmp_path / "site" / "scale.csv").write_text("photo,mm_per_pixel\na.jpg,0.2\nb.jpg,0.05\n")
    cfg = settings(mm_per_pixel=0.5, scale_csv="scale.csv")
    check_scale_csvs(photos, cfg)
    assert [photo_mm_per_pixel(p, cfg) for p in photos] == [0.2, 0.05]
    assert photo_mm_per_pixel(photos[0], settings(mm_per_pixel=0.5)) == 0.5
    assert photo_mm_per_pixel(photos[0], settings(mm_per_pixel=None)) is None


def test_scale_csv_problems_are_one_line_per_file_naming_the_photos(tmp_path: Path) -> None:
    one = photos_in(tmp_path / "one", "a.jpg", "b.jpg", "c.jpg")
    two = photos_in(tmp_path / "two", "d.jpg")
    (tmp_path / "one" / "scale.csv").write_text("photo,mm_per_pixel\na.jpg,0.2\nz.jpg,0.1\n")
    (tmp_path / "two" / "scale.csv").write_text("photo,mm_per_pixel\nd.jpg,0.2\n")
    cfg = settings(scale_csv="scale.csv")
    with pytest.raises(CrackdetError) as caught:
        check_scale_csvs(one + two, cfg)
    (line,) = str(caught.value).splitlines()
    assert line.startswith(str(tmp_path / "one" / "scale.csv"))
    assert "misses b.jpg, c.jpg" in line and "not there: z.jpg" in line
    check_scale_csvs(two, cfg)  # a good CSV passes
    three = photos_in(tmp_path / "three", "e.jpg")
    with pytest.raises(CrackdetError) as caught:
        check_scale_csvs(one + three, cfg)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and "three/scale.csv: not found" in lines[1]
    with pytest.raises(CrackdetError, match=r"misses b\.jpg; add its row"):
        photo_mm_per_pixel(one[1], cfg)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("photo,mm\nd.jpg,0.2\n", "columns must be photo,mm_per_pixel"),
        ("photo,mm_per_pixel\nd.jpg,-0.2\n", r"line 2 \(d.jpg\): mm_per_pixel must be a positive"),
        ("photo,mm_per_pixel\nd.jpg,wide\n", "must be a positive number"),
        ("photo,mm_per_pixel\nd.jpg,0.2\nd.jpg,0.3\n", "line 3: d.jpg is listed twice"),
    ],
)
def test_bad_scale_csv_is_one_line(tmp_path: Path, text: str, words: str) -> None:
    photos = photos_in(tmp_path, "d.jpg")
    (tmp_path / "scale.csv").write_text(text)
    with pytest.raises(CrackdetError, match=words) as caught:
        check_scale_csvs(photos, settings(scale_csv="scale.csv"))
    assert len(str(caught.value).splitlines()) == 1 and "scale.csv" in str(caught.value)


def test_pixel_threshold_is_the_decoders_or_the_number_given() -> None:
    assert pixel_threshold("model", 0.37) == 0.37
    assert pixel_threshold("model", None) == 0.5
    assert pixel_threshold(0.6, 0.37) == 0.6


# --- params -----------------------------------------------------------------------------------


def parse_with(**predict) -> PredictParams:
    tree = tiny_params_tree()
    tree["predict"].update(predict)
    return parse_params(tree).predict


def test_crack_params_are_typed_and_each_problem_names_its_key() -> None:
    good = parse_with(mm_per_pixel=0.25, pixel_threshold=0.4, scale_csv="scale.csv")
    assert good.mm_per_pixel == 0.25 and good.pixel_threshold == 0.4
    assert parse_with(mm_per_pixel=None).mm_per_pixel is None
    assert parse_with().width_bands[0] == WidthBand("insignificant", 0.3)
    with pytest.raises(CrackdetError) as caught:
        parse_with(
            mm_per_pixel=0,
            pixel_threshold="best",
            scale_csv="../scale.csv",
            min_crack_length_px=-1,
            width_bands=[
                {"name": "a", "below_mm": 1.0},
                {"name": "b", "below_mm": 0.5},
                {"name": "c", "below_mm": None},
            ],
        )
    lines = str(caught.value).splitlines()
    assert any(line.startswith("params.yaml: predict.mm_per_pixel must be > 0") for line in lines)
    assert any("predict.pixel_threshold must be a number or model" in line for line in lines)
    assert any("predict.min_crack_length_px must be >= 0" in line for line in lines)
    assert len(lines) == 3  # the record's own checks wait until its fields are sound
    with pytest.raises(CrackdetError) as caught:
        parse_with(
            scale_csv="../scale.csv",
            width_bands=[
                {"name": "a", "below_mm": 1.0},
                {"name": "b", "below_mm": 0.5},
                {"name": "c", "below_mm": None},
            ],
        )
    lines = str(caught.value).splitlines()
    assert lines == [
        "params.yaml: predict.width_bands: band limits out of order (1, 0.5); list them from "
        "the narrowest up",
        "params.yaml: predict.scale_csv must be a file name (looked up beside the photos)",
    ]
    with pytest.raises(CrackdetError, match=r"predict.mm_per_pixel must be > 0.0; got -0.1"):
        parse_with(mm_per_pixel=-0.1)
    with pytest.raises(CrackdetError, match=r"predict.width_bands\[1\].below_mm must be"):
        parse_with(width_bands=[{"name": "a", "below_mm": None}, {"name": "b", "below_mm": "x"}])


def test_default_bands_are_the_params_defaults() -> None:
    from crackdet.maps.cracks import DEFAULT_BANDS

    assert parse_with().width_bands == DEFAULT_BANDS


# --- mapping a folder: crack outputs beside the maps, resumed like them ------------------------


@pytest.fixture(scope="module")
def model():
    import torch

    from crackdet.data.images import CLASSES
    from crackdet.model.classifier import build_classifier

    torch.manual_seed(0)
    return build_classifier("efficientnet_lite0", True, 16, 0.0, 227, CLASSES).eval()


def test_mapped_folder_gets_crack_outputs_and_resumes(model, tmp_path, monkeypatch) -> None:
    """A model with crack pixels: each photo gets its crack files and figures, the report and
    cracks.csv list them worst first; a rerun keeps complete sets, redoes a photo whose crack
    file is missing or whose scale changed; a model without crack pixels leaves none."""
    from crackdet.maps import mapping
    from crackdet.maps.html_report import write_report
    from crackdet.maps.outputs import PhotoFiles

    site = tmp_path / "site"
    site.mkdir()
    gps_photo(site / "wide.jpg")
    Image.new("RGB", (400, 300), (120, 120, 120)).save(site / "thin.jpg")
    masks = {"wide.jpg": np.zeros((300, 400), dtype=bool), "thin.jpg": drawn()}
    masks["wide.jpg"][100:115, 50:350] = True  # 15 px: 1.5 mm at 0.1 mm/px, "wide"
    (site / "scale.csv").write_text("photo,mm_per_pixel\nwide.jpg,0.1\nthin.jpg,0.05\n")
    photos = [site / "thin.jpg", site / "wide.jpg"]
    real = mapping.map_photo

    # The pixel decoder is another module's; its output here is the drawn masks.
    def with_pixels(mapper, photo):
        mapped = real(mapper, photo)
        pixels = masks[photo.name].astype(np.float32) * 0.7
        return dataclasses.replace(mapped, pixels=pixels, pixel_threshold=0.6)

    monkeypatch.setattr(mapping, "map_photo", with_pixels)
    out = tmp_path / "out"
    # Scale 0.5: one window per photo (the window map is not what is tested here).
    cfg = settings(engine="torch", scale_csv="scale.csv", scale=0.5)

    def run(cfg=cfg):
        result = mapping.map_photos(model, photos, out, cfg, "m", model_digest="d")
        write_report(out, result, "site")
        return result

    first = run()
    thin, wide = first.summaries
    assert (wide.crack_count, wide.crack_severity, wide.crack_unit) == (1, "wide", "mm")
    assert wide.crack_max_width == pytest.approx(1.5)
    assert 28.0 <= wide.crack_length <= 30.0  # 300 px less about a width, at 0.1 mm
    assert (thin.crack_count, thin.crack_severity) == (2, "insignificant")  # 5 px: 0.25 mm
    for summary in first.summaries:
        assert all(path.is_file() for path in PhotoFiles(out, summary.outputs).cracks.all())
    record = json.loads((out / "wide.json").read_text())
    assert record["crack_count"] == 1 and record["made_from"]["mm_per_pixel"] == 0.1
    feature = json.loads(PhotoFiles(out, "wide").cracks.geojson.read_text())["features"][0]
    assert feature["properties"]["photo_latitude"] == pytest.approx(52.51)
    with (out / FOLDER_CRACKS).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["photo"] for r in rows] == ["wide.jpg", "thin.jpg", "thin.jpg"]  # worst first
    html = (out / "index.html").read_text()
    assert html.index("<h2>wide.jpg") < html.index("<h2>thin.jpg") and "crack area" not in html

    assert run().skipped == ["thin.jpg", "wide.jpg"]  # complete: reused
    PhotoFiles(out, "thin").cracks.geojson.unlink()
    assert run().skipped == ["wide.jpg"]  # a crack file missing: mapped again
    assert PhotoFiles(out, "thin").cracks.geojson.is_file()
    (site / "scale.csv").write_text("photo,mm_per_pixel\nwide.jpg,0.1\nthin.jpg,0.1\n")
    assert run().skipped == ["wide.jpg"]  # its scale changed
    assert run(dataclasses.replace(cfg, pixel_threshold=0.3)).skipped == []

    monkeypatch.setattr(mapping, "map_photo", real)  # no crack pixels: no crack files
    plain = mapping.map_photos(model, photos, out, cfg, "m", model_digest="other")
    assert all(not s.traced for s in plain.summaries)
    assert not any(PhotoFiles(out, "wide").cracks.mask.parent.glob("wide_cracks*"))
    assert not any(out.glob("*_traced.jpg"))


def test_a_scale_csv_problem_stops_the_folder_before_anything_is_written(model, tmp_path):
    from crackdet.maps import mapping

    photos = photos_in(tmp_path / "site", "a.jpg", "b.jpg")
    (tmp_path / "site" / "scale.csv").write_text("photo,mm_per_pixel\na.jpg,0.1\n")
    cfg = settings(engine="torch", scale_csv="scale.csv")
    with pytest.raises(CrackdetError, match=r"scale.csv: misses b\.jpg"):
        mapping.map_photos(model, photos, tmp_path / "out", cfg, "m", model_digest="d")
    assert not (tmp_path / "out").exists()


def test_mm_per_pixel_option_is_checked_as_params_are(tmp_path, capsys) -> None:
    from crackdet.cli.main import main
    from crackdet.core.overrides import PACKAGED_PARAMS, predict_settings
    from crackdet.core.params import load_params

    params = load_params(PACKAGED_PARAMS)
    assert predict_settings(params, mm_per_pixel=0.2).mm_per_pixel == 0.2
    with pytest.raises(CrackdetError, match=r"^--mm-per-pixel must be > 0.0; got 0.0$"):
        predict_settings(params, mm_per_pixel=0.0)
    (photo,) = photos_in(tmp_path, "wall.jpg")
    out = tmp_path / "out"
    assert main(["predict", str(photo), "--mm-per-pixel", "-1", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "crackdet predict: error: --mm-per-pixel must be > 0.0; got -1.0\n"
    )
    assert not out.exists()


UAV75 = SHARED_DATA / "uav75" / "uav75-trainval.zip"


@pytest.mark.skipif(not UAV75.exists(), reason=f"UAV75 masks not present at {UAV75}")
def test_real_crack_masks_trace_to_files_that_agree_with_them(tmp_path: Path) -> None:
    """UAV75's hand-drawn crack masks (drone photos of concrete) as P(crack pixel): the files
    hold exactly the mask, the table's total length is the skeleton's (less the dropped
    specks), and the tiled distances equal the whole-mask transform."""
    import io
    import zipfile

    from scipy import ndimage
    from skimage.morphology import skeletonize

    from crackdet.maps.cracks import skeleton_distances, skeleton_length

    with zipfile.ZipFile(UAV75) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("masks/val_"))[:4]
        masks = {
            n: np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("L")) > 127 for n in names
        }
    assert len(masks) == 4
    for name, mask in masks.items():
        skeleton = skeletonize(mask)
        whole = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        assert np.array_equal(skeleton_distances(mask, skeleton)[skeleton], whole[skeleton])
        traced, files = write(tmp_path, mask, mm=0.5)
        with Image.open(files.mask) as image:
            assert np.array_equal(np.asarray(image.convert("L")) == 255, mask), name
        with files.table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == len(traced.cracks) > 0
        total = sum(float(r["length_px"]) for r in rows)
        assert total <= skeleton_length(skeleton) + 0.01 * len(rows)
        assert total >= 0.9 * skeleton_length(skeleton), name  # specks < 10 px: a sliver
        assert all(float(r["max_width_px"]) >= float(r["mean_width_px"]) >= 1.0 for r in rows)
        features = json.loads(files.geojson.read_text())["features"]
        assert [f["properties"]["crack"] for f in features] == [int(r["crack"]) for r in rows]
