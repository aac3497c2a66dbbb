"""What a user hands ``crackdet predict`` and ``eval-maps`` is checked before anything is
written, and nothing is skipped unnamed (issue 20's defects 1, 4, 5, 10 and 11, each of which
failed on the code before the fix)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from crackdet.cli.main import main
from crackdet.core.params import parse_params
from crackdet.data.images import CLASSES
from crackdet.maps.mapping import PhotoFiles, map_photos  # PhotoFiles: as before the fix
from crackdet.maps.photos import list_photos
from crackdet.model.classifier import build_classifier
from tests.helpers import tiny_params_tree

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init checkpoint folder without ood.npz."""
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES)
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(model.spec.to_dict()))
    return folder


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with params.yaml at scale 1 and the torch engine (fast, no export)."""
    tree = tiny_params_tree(**{"predict.engine": "torch"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def photo(path: Path, shade: int = 120, size: tuple[int, int] = (240, 240)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, shade, shade)).save(path, format="JPEG")
    return path


def predict(*args: str) -> int:
    return main(["predict", *args])


# --- 1: nothing to map ------------------------------------------------------------------------


@pytest.mark.parametrize("content", [[], ["notes.txt"]])
def test_a_folder_without_photos_is_one_line_and_exit_2(repo, ckpt, capsys, content) -> None:
    folder = repo / "empty"
    folder.mkdir()
    for name in content:
        (folder / name).write_text("not a photo")
    assert predict(str(folder), "--model", str(ckpt), "--out", "maps") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"crackdet predict: error: {folder}: no photos to map (files ending ")
    assert err.count("\n") == 1
    assert not (repo / "maps").exists()


# --- 4: a long but legal photo name -----------------------------------------------------------


def test_a_240_character_photo_name_maps_and_later_photos_too(repo, ckpt, capsys) -> None:
    folder = repo / "photos"
    long = photo(folder / ("a" * 236 + ".jpg"))
    assert len(long.name) == 240
    photo(folder / "b.jpg", 200)
    assert predict(str(folder), "--model", str(ckpt), "--out", "maps") == 0
    assert "2 of 2 photos mapped" in capsys.readouterr().out
    for stem in ("a" * 236, "b"):
        assert all(p.is_file() for p in PhotoFiles(repo / "maps", stem).all())
    assert not list((repo / "maps").glob(".*.tmp"))


# --- 5: a re-map killed half-way --------------------------------------------------------------

KILLED_REMAP = """
import os, signal, sys, torch, dataclasses
from pathlib import Path
from PIL import Image
from crackdet.core.params import parse_params
from crackdet.maps.mapping import map_photos
from crackdet.model.classifier import load_checkpoint
import yaml

ckpt, photo, out = map(Path, sys.argv[1:4])
cfg = parse_params(yaml.safe_load(Path("params.yaml").read_text())).predict
model = load_checkpoint(ckpt / "model.pt", ckpt / "model.json", "torch", None)
save = Image.Image.save

def dying_save(self, fp, *args, **kwargs):
    if "_heatmap.png" in str(fp):  # after the overlay was replaced, within the heatmap's write
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, fp, *args, **kwargs)

Image.Image.save = dying_save
map_photos(model, [photo], out, dataclasses.replace(cfg, alpha=0.9), "m", model_digest="m1")
"""


def test_a_killed_remap_is_redone_not_taken_for_done(repo, ckpt) -> None:
    from crackdet.model.classifier import load_checkpoint

    image = photo(repo / "a.jpg", size=(300, 240))
    out = repo / "maps"
    cfg = parse_params(yaml.safe_load((repo / "params.yaml").read_text())).predict
    model = load_checkpoint(ckpt / "model.pt", ckpt / "model.json", "torch", None)

    def run():
        return map_photos(model, [image], out, cfg, "m", model_digest="m1")

    first = run()
    files = PhotoFiles(out, "a")
    overlay = files.overlay.read_bytes()
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_REMAP, str(ckpt), str(image), str(out)],
        env={"PYTHONPATH": str(SRC), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    assert files.overlay.read_bytes() != overlay  # the killed run replaced the overlay
    assert list(out.glob(".*.tmp"))  # and left its heatmap's temporary file
    again = run()
    assert again.skipped == [] and again.summaries == first.summaries
    assert files.overlay.read_bytes() == overlay
    assert not list(out.glob(".*.tmp"))
    assert run().skipped == ["a.jpg"]


# --- 10: eval-maps names what it leaves out ---------------------------------------------------


def test_eval_maps_counts_and_names_left_out_entries(repo, ckpt, capsys) -> None:
    data = repo / "set"
    photo(data / "images" / "p.jpg")
    (data / "masks").mkdir()
    Image.new("L", (240, 240)).save(data / "masks" / "p.png")
    (data / "images" / "notes.txt").write_text("who took these")
    (data / "images" / "old").mkdir()
    args = ["eval-maps", str(data), "--model", str(ckpt), "--threshold", "0.5", "--out", "m.json"]
    assert main(args) == 0
    left_out = ["images/notes.txt (not a photo)", "images/old (not a photo)"]
    assert json.loads((repo / "m.json").read_text())["left_out"] == left_out
    assert capsys.readouterr().out.endswith(
        f"; left out 2 entries of images/: {', '.join(left_out)}\n"
    )


# --- 11: the map area's rough edges -----------------------------------------------------------


def test_jfif_and_mpo_files_in_a_folder_are_photos(tmp_path) -> None:
    for name in ("a.jfif", "b.MPO", "c.jpg"):
        photo(tmp_path / name)
    (tmp_path / "d.txt").write_text("")
    folder = list_photos(tmp_path)
    assert [p.name for p in folder.photos] == ["a.jfif", "b.MPO", "c.jpg"]
    assert [p.name for p in folder.left_out] == ["d.txt"]


def test_a_model_without_ood_says_so(repo, ckpt, capsys) -> None:
    photo(repo / "a.jpg")
    assert predict("a.jpg", "--model", str(ckpt), "--out", "maps") == 0
    assert (
        f"predict: {ckpt} has no OOD model (ood.npz): surfaces unlike the training data are "
        "not hatched\n"
    ) in capsys.readouterr().out


def test_folders_mapped_one_after_another_share_one_report(repo, ckpt) -> None:
    photo(repo / "site-a" / "a1.jpg", 60)
    photo(repo / "site-b" / "b1.jpg", 200)
    assert predict("site-a", "--model", str(ckpt), "--out", "maps") == 0
    assert predict("site-b", "--model", str(ckpt), "--out", "maps") == 0
    report = (repo / "maps" / "index.html").read_text()
    assert "a1.jpg" in report and "b1.jpg" in report
    assert predict("site-b", "--model", str(ckpt), "--out", "maps") == 0  # b1 reused: once
    assert (repo / "maps" / "index.html").read_text().count("b1_overlay.jpg") == report.count(
        "b1_overlay.jpg"
    )


def test_an_out_that_is_a_file_is_refused_before_mapping(repo, ckpt, capsys) -> None:
    photo(repo / "a.jpg")
    (repo / "maps").write_text("keep me")
    assert predict("a.jpg", "--model", str(ckpt), "--out", "maps") == 2
    assert capsys.readouterr().err == (
        "crackdet predict: error: maps: exists and is not a folder; name a folder for --out\n"
    )
    assert (repo / "maps").read_text() == "keep me"
    assert sorted(p.name for p in repo.iterdir()) == ["a.jpg", "dvc.yaml", "maps", "params.yaml"]


def test_a_missing_photo_is_one_line_exit_2_and_nothing_written(repo, ckpt, capsys) -> None:
    photo(repo / "a.jpg")
    assert predict("a.jpg", "nope.jpg", "--model", str(ckpt), "--out", "maps") == 2
    assert capsys.readouterr().err == (
        "crackdet predict: error: nope.jpg: no such photo or folder; check the path\n"
    )
    assert not (repo / "maps").exists()
