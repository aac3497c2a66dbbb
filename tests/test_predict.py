"""Sliding-window crack maps: coverage, edge alignment, RGB order, padding, limits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from crackdet.core.errors import CrackdetError
from crackdet.data.images import CLASSES
from crackdet.data.windows import window_starts
from crackdet.maps.crackmap import crack_map
from crackdet.maps.drawing import overlay_image
from crackdet.maps.photos import read_photo
from crackdet.model.classifier import build_classifier


@pytest.mark.parametrize("length", [227, 228, 300, 454, 1000, 1601])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_windows_cover_every_pixel_and_end_flush(length: int, overlap: float) -> None:
    starts = window_starts(length, 227, overlap)
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        assert 0 <= s <= length - 227
        covered[s : s + 227] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] == length - 227
    assert starts == sorted(set(starts))


def test_window_stride_follows_overlap() -> None:
    assert window_starts(1000, 200, 0.5)[:3] == [0, 100, 200]
    assert window_starts(1000, 200, 0.0)[:3] == [0, 200, 400]
    assert window_starts(100, 227, 0.5) == [0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Random weights are enough to check plumbing; a random head still has colour preferences.
    return build_classifier("efficientnet_lite0", True, 16, 0.0, 227, CLASSES).eval()


def test_map_tile_equals_classifier_on_same_rgb_crop(model) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    photo[:, :, 0] = 250  # strongly red: a BGR mix-up would change the prediction
    result = crack_map(model, photo, overlap=0.0, batch_size=4)
    with torch.inference_mode():
        for tile in result.tiles[:3]:
            y, x = tile.y, tile.x
            crop = torch.from_numpy(photo[y : y + 227, x : x + 227].copy()).permute(2, 0, 1)
            p = torch.softmax(model(crop[None].float() / 255.0), 1)[0, 1].item()
            assert tile.p == pytest.approx(p, abs=1e-5)
            swapped = crop[[2, 1, 0]]
            p_bgr = torch.softmax(model(swapped[None].float() / 255.0), 1)[0, 1].item()
            assert abs(p_bgr - p) > 1e-4, "test photo cannot tell RGB from BGR"


def test_heatmap_averages_overlapping_windows(model) -> None:
    photo = np.random.default_rng(1).integers(0, 256, size=(240, 454, 3), dtype=np.uint8)
    result = crack_map(model, photo, overlap=0.5, batch_size=16)
    assert result.heatmap.shape == (240, 454)
    xs = sorted({t.x for t in result.tiles})
    assert xs == window_starts(454, 227, 0.5)
    # A pixel covered by exactly the first window carries that window's probability.
    first = next(t for t in result.tiles if t.x == 0 and t.y == 0)
    assert result.heatmap[0, 0] == pytest.approx(first.p, abs=1e-6)
    # A pixel inside two windows carries their mean.
    second = next(t for t in result.tiles if t.x == xs[1] and t.y == 0)
    mid_x = xs[1] + 1
    covering = [t.p for t in result.tiles if t.x <= mid_x < t.x + 227 and t.y == 0]
    assert len(covering) == 2 and second.p in covering
    assert result.heatmap[0, mid_x] == pytest.approx(np.mean(covering), abs=1e-5)


def test_small_photo_is_padded_not_rejected(model) -> None:
    photo = np.full((100, 150, 3), 128, dtype=np.uint8)
    result = crack_map(model, photo, overlap=0.5, batch_size=4)
    assert result.heatmap.shape == (100, 150)
    assert len(result.tiles) == 1


def test_overlay_is_green_when_clean_and_red_when_cracked() -> None:
    photo = np.full((60, 200, 3), 128, dtype=np.uint8)
    heat = np.zeros((60, 200), dtype=np.float32)
    heat[:, 100:] = 1.0
    image = np.asarray(overlay_image(photo, heat, alpha=0.5))
    left, right = image[5, 20], image[5, 180]
    assert left[1] > left[0] and right[0] > right[1]


def test_read_photo_limits_and_errors(tmp_path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(path)
    with pytest.raises(CrackdetError, match=r"big.png: 400x300 = 120000 pixels exceeds predict"):
        read_photo(path, max_pixels=100_000)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(CrackdetError, match=r"bad.jpg: not a readable image"):
        read_photo(bad, max_pixels=10**8)
    grey = tmp_path / "grey.png"
    Image.new("L", (30, 20), 77).save(grey)
    assert read_photo(grey, 10**8).shape == (20, 30, 3)


def test_scale_maps_back_to_photo_pixels(model) -> None:
    photo = np.random.default_rng(2).integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    half = crack_map(model, photo, overlap=0.5, batch_size=16, scale=0.5)
    assert half.heatmap.shape == (600, 800)
    assert {t.size for t in half.tiles} == {454}
    assert max(t.x + t.size for t in half.tiles) == 800
    full = crack_map(model, photo, overlap=0.5, batch_size=16)
    assert len(half.tiles) < len(full.tiles)


def test_exif_orientation_is_honoured(tmp_path) -> None:
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert read_photo(path, 10**8).shape == (40, 20, 3)


def features(model: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
    """Backbone features of uint8 RGB patches."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        return model.features(batch).numpy()


def test_ood_signal_separates_concrete_from_something_else(model) -> None:
    from crackdet.data.sources.synthetic import patch_rng, render_patch, render_photo
    from crackdet.model.ood import fit_ood

    patches = [
        render_patch(patch_rng(0, label, i), label == "Positive")
        for label in ("Positive", "Negative")
        for i in range(40)
    ]
    ood = fit_ood(features(model, patches[::2]), features(model, patches[1::2]))
    concrete, _ = render_photo(np.random.default_rng(5), width=681, height=454)
    # Something clearly not concrete: saturated colour blocks and stripes.
    y, x = np.mgrid[0:454, 0:681]
    other = np.stack([(x // 40 % 2) * 255, (y // 25 % 2) * 200, ((x + y) // 60 % 3) * 120], -1)
    on_concrete = crack_map(model, concrete, 0.0, 8, ood=ood)
    on_other = crack_map(model, other.astype(np.uint8), 0.0, 8, ood=ood)
    assert on_concrete.ood_fraction is not None and on_other.ood_fraction is not None
    assert on_concrete.ood_fraction <= 0.25
    assert on_other.ood_fraction >= 0.9
    assert on_other.ood_map is not None and on_other.ood_map.shape == (454, 681)
    # Unfamiliar windows are hatched and outlined over the map, not painted over: between the
    # stripes the crack colour of the map is still there.
    from crackdet.maps.drawing import HATCH_PERIOD, HATCH_WIDTH

    shown = np.asarray(
        overlay_image(other.astype(np.uint8), on_other.heatmap, 1.0, on_other.ood_map)
    )
    plain = np.asarray(overlay_image(other.astype(np.uint8), on_other.heatmap, 1.0))
    y = 200
    stripe = next(x for x in range(100, 400) if (x + y) % HATCH_PERIOD < HATCH_WIDTH)
    gap = stripe + HATCH_WIDTH  # the next pixel between stripes
    assert tuple(shown[y, gap]) == tuple(plain[y, gap])  # the map's own colour, untouched
    assert shown[y, stripe].mean() > plain[y, stripe].mean()  # lightened by the hatch


def test_max_pixels_counts_the_pixels_that_are_mapped(tmp_path) -> None:
    """predict.max_pixels bounds the photo as it is mapped, after predict.scale: a 500x500
    photo at scale 8 would be mapped at 4000x4000."""
    path = tmp_path / "small.png"
    Image.new("RGB", (500, 500), (90, 90, 90)).save(path)
    assert read_photo(path, 250_000).shape == (500, 500, 3)
    with pytest.raises(CrackdetError) as info:
        read_photo(path, 250_000, scale=8.0)
    assert str(info.value) == (
        f"{path}: 500x500 at predict.scale 8 is mapped at 4000x4000 = 16000000 pixels, over "
        "predict.max_pixels (250000); lower predict.scale or raise the limit"
    )
    assert read_photo(path, 250_000, scale=0.5).shape == (500, 500, 3)


def test_photos_sharing_a_name_get_outputs_of_their_own(model, tmp_path, capsys) -> None:
    """``a/x.jpg``, ``a/x.png`` and ``b/x.jpg`` map to three output sets, named apart, and the
    renaming is said."""
    import json

    from crackdet.core.params import parse_params
    from crackdet.maps.mapping import map_photos
    from crackdet.maps.outputs import output_stems
    from tests.helpers import tiny_params_tree

    photos = []
    for folder, name, shade in (("a", "x.jpg", 60), ("a", "x.png", 120), ("b", "x.jpg", 180)):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.new("RGB", (240, 240), (shade, shade, shade)).save(tmp_path / folder / name)
        photos.append(tmp_path / folder / name)
    assert list(output_stems(photos).values()) == ["a-x.jpg", "x.png", "b-x.jpg"]
    assert output_stems([tmp_path / "a" / "x.jpg"]) == {tmp_path / "a" / "x.jpg": "x"}
    cfg = dataclasses.replace(parse_params(tiny_params_tree()).predict, engine="torch")
    mapped = map_photos(model, photos, tmp_path / "out", cfg, "test", command="predict")
    assert [s.outputs for s in mapped.summaries] == ["a-x.jpg", "x.png", "b-x.jpg"]
    for stem in ("a-x.jpg", "x.png", "b-x.jpg"):
        assert (tmp_path / "out" / f"{stem}_overlay.jpg").is_file()
        assert json.loads((tmp_path / "out" / f"{stem}.json").read_text())["outputs"] == stem
    assert "predict: photos share a file name; outputs named apart:" in capsys.readouterr().out


# --- mapping a folder resumes ---------------------------------------------------------------


def test_a_rerun_keeps_complete_outputs_and_remaps_what_changed(model, tmp_path) -> None:
    """Same photo bytes, model digest and settings: kept and counted. A changed photo, a
    missing output file, another model or other settings: mapped again."""
    from crackdet.core.params import parse_params
    from crackdet.maps.mapping import map_photos
    from crackdet.maps.outputs import PhotoFiles
    from tests.helpers import tiny_params_tree

    photos = []
    for name, shade in (("a.jpg", 60), ("b.jpg", 150), ("c.jpg", 220)):
        Image.new("RGB", (300, 240), (shade, shade, shade)).save(tmp_path / name)
        photos.append(tmp_path / name)
    out = tmp_path / "out"
    cfg = dataclasses.replace(parse_params(tiny_params_tree()).predict, engine="torch")

    def run(cfg=cfg, digest="model-1"):
        return map_photos(model, photos, out, cfg, "m", command="predict", model_digest=digest)

    first = run()
    assert first.skipped == [] and len(first.seconds) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run()
    assert again.skipped == ["a.jpg", "b.jpg", "c.jpg"] and again.seconds == []
    assert again.summaries == first.summaries  # read back from the JSON files
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in stamps} == {
        k: v for k, v in stamps.items() if k != "contact_sheet.png"
    } | {"contact_sheet.png": (out / "contact_sheet.png").stat().st_mtime_ns}
    Image.new("RGB", (300, 240), (10, 200, 10)).save(photos[0])  # a new photo under a known name
    PhotoFiles(out, "b").thumbnail.unlink()  # an interrupted write
    assert run().skipped == ["c.jpg"]
    assert run(digest="model-2").skipped == []
    assert run(cfg=dataclasses.replace(cfg, overlap=0.25)).skipped == []
    assert run(cfg=dataclasses.replace(cfg, auto_windows=(5.0,))).skipped == []
    assert run(digest="").skipped == []  # an unknown model is never trusted


def test_progress_bars_only_on_a_terminal_outside_ci(tmp_path) -> None:
    """A pseudo-terminal shows the bar; CI=true, or output to a pipe, shows none."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    code = (
        "from crackdet.core.progress import progress\n"
        "for _ in progress(range(3), desc='mapping', unit='photo'): pass\n"
    )

    def stderr_of(ci: str, terminal: bool) -> bytes:
        env = {**os.environ, "CI": ci}
        if not terminal:
            return subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, check=True
            ).stderr
        leader, follower = pty.openpty()
        # 24 rows, 80 columns: a new pseudo-terminal is 0 wide, and tqdm draws nothing in that.
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=follower)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        proc.wait(timeout=60)
        os.close(leader)
        return seen

    assert b"mapping" in stderr_of("", terminal=True)
    assert b"mapping" not in stderr_of("true", terminal=True)
    assert stderr_of("", terminal=False) == b""


SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "page", "text", "coins", "logo")


def test_ood_flags_images_that_are_not_concrete(model) -> None:
    """The OOD model, fitted on (randomised, rendered) concrete patches at the default quantile,
    flags windows of images scikit-image ships that are surely not concrete surfaces, and only
    a few held-out concrete patches."""
    import skimage.data

    from crackdet.data.sources.synthetic import patch_rng, render_randomised_patch
    from crackdet.model.ood import fit_ood

    patches = [
        render_randomised_patch(patch_rng(1, label, i), label == "Positive")
        for label in ("Positive", "Negative")
        for i in range(60)
    ]
    ood = fit_ood(features(model, patches[:80:2]), features(model, patches[1:80:2]))
    held_out = ood.is_ood(features(model, patches[80:])).mean()
    flagged = []
    for name in SKIMAGE_SAMPLES:
        image = getattr(skimage.data, name)()
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        flagged += [bool(t.ood) for t in crack_map(model, image, 0.0, 8, ood=ood).tiles]
    assert len(flagged) >= 30
    assert np.mean(flagged) >= 0.9, np.mean(flagged)
    assert held_out <= 0.2, held_out


def test_a_failed_trace_leaves_the_set_incomplete_and_the_window_files_whole(tmp_path) -> None:
    """The window map's files are written in a second thread while the cracks are traced: a
    tracing error still reaches the caller, after that thread is done, and no JSON marks the
    photo's set complete (a rerun maps it again)."""
    from crackdet.maps.crackmap import CrackMap
    from crackdet.maps.outputs import MadeFrom, PhotoFiles, PhotoSummary, write_outputs

    photo = np.full((64, 96, 3), 128, dtype=np.uint8)
    heat = np.linspace(0, 1, 64 * 96, dtype=np.float32).reshape(64, 96)
    result = CrackMap(heat, [], 0.0)
    summary = PhotoSummary("p.jpg", 96, 64, "m", 0.5, 0.5, [1.0], "torch", 0.5, 0, 0, None, "p")
    made_from = MadeFrom("sha", "model", 1.0, [], 0.5, 0.5, "torch", 0.5)
    files = PhotoFiles(tmp_path, "p")
    files.record.write_text("{}")  # an earlier run's record: it must not survive
    legacy = files.overlay.with_suffix(".png")
    legacy.write_bytes(b"an overlay PNG of an earlier crackdet")

    def trace():
        raise CrackdetError("p.jpg: tracing failed")

    with pytest.raises(CrackdetError, match="tracing failed"):
        write_outputs(files, photo, result, summary, made_from, 0.5, trace)
    assert not files.record.exists() and not legacy.exists()
    for path in (files.overlay, files.heatmap, files.heatmap_npy, files.mask):
        assert path.is_file(), path.name
    assert Image.open(files.overlay).format == "JPEG"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (files.overlay, files.heatmap, files.heatmap_npy, files.mask)
    )  # no temporary file left beside them
    # Traced this time: the set is complete and the summary carries the cracks' figures.
    done = write_outputs(files, photo, result, summary, made_from, 0.5)
    assert files.complete(done) and not done.traced
