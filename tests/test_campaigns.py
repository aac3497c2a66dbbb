"""Campaigns on a real two-node Ray cluster (``ray start`` on 127.0.0.1, one CPU per node) with
photos and outputs in a real S3 server (moto): the same bytes as a local ``crackdet predict``,
a failing photo named while the others complete, a killed campaign resumed, a lost worker node
costing time and no photo. Each campaign runs as its own ``crackdet predict`` process (the Ray
driver), so killing it is killing a campaign."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crackdet.cli.main import main
from crackdet.data.images import CLASSES
from crackdet.model.classifier import build_classifier
from crackdet.model.decoder import DecoderSpec, build_decoder, save_decoder
from tests.helpers.ray_cluster import RayCluster, ray_missing
from tests.helpers.team_stack import QUIET_ENV, TeamStack

pytestmark = pytest.mark.slow

MISSING = ray_missing()
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must run the campaign tests: {MISSING}")
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

GOOD = 6
MANY = 12
SETTINGS = ["--scale", "1", "--threshold", "0.4"]
WAIT_S = 240  # any campaign here takes ~15-30 s on 2 cores


@pytest.fixture(scope="module")
def cluster():
    started = RayCluster(nodes=2).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def s3():
    stack = TeamStack()
    try:
        stack.start_s3()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny checkpoint, photos (six good, one unreadable, twelve for the long campaigns) and
    the outputs a local ``crackdet predict`` makes of them (the reference bytes)."""
    root = tmp_path_factory.mktemp("campaign")
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES)
    (root / "ckpt").mkdir()
    torch.save(model.state_dict(), root / "ckpt" / "model.pt")
    (root / "ckpt" / "model.json").write_text(json.dumps(model.spec.to_dict()))
    rng = np.random.default_rng(0)
    for folder, count, shape in (("photos", GOOD, (240, 300, 3)), ("many", MANY, (454, 681, 3))):
        (root / folder).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{folder[0]}{i:02d}.png")
    (root / "photos" / "bad.png").write_bytes(b"not a png")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for folder in ("photos", "many"):
            main(["predict", folder, "--model", "ckpt", *SETTINGS, "--out", f"local-{folder}"])
    finally:
        os.chdir(cwd)
    return root


def _env(s3: TeamStack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "AWS_"))}
    env.update(QUIET_ENV)
    env.update(s3.s3_credentials)
    env.update({"AWS_ENDPOINT_URL": s3.s3_endpoint, "CRACKDET_OFFLINE": "1"})
    env.pop("RAY_ADDRESS", None)
    src = str(Path(__file__).parents[1] / "src")  # this checkout's crackdet, as in the workers
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def _predict(work: Path, env: dict[str, str], *args: str, model: str = "ckpt") -> subprocess.Popen:
    argv = [sys.executable, "-m", "crackdet.cli.main", "predict", *args, "--model", model]
    return subprocess.Popen(
        [*argv, *SETTINGS],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = process.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"campaign still running after {WAIT_S} s:\n{out[-3000:]}")
    return process.returncode, out


def _wait_for(ready, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            out = process.communicate()[0] if process.poll() is not None else ""
            pytest.fail(f"{what} never came:\n{out[-3000:]}")
        time.sleep(0.05)


def _photo_files(folder: Path) -> dict[str, bytes]:
    """Every photo's output files (not the report, which lists the run's own folder)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.name not in ("index.html", "contact_sheet.png") and not p.name.startswith(".")
    }


def _campaign_runs(work: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crackdet-campaigns")
    assert experiment is not None
    return client, client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])


def test_campaign_from_and_to_s3_on_two_nodes_matches_a_local_run(cluster, s3, work) -> None:
    client = s3.s3_client()
    for photo in sorted((work / "photos").iterdir()):
        client.upload_file(str(photo), s3.bucket, f"in/{photo.name}")
    env = _env(s3)
    source, out = f"s3://{s3.bucket}/in/", f"s3://{s3.bucket}/out/"
    code, printed = _finish(_predict(work, env, source, "--out", out, "--ray", cluster.address))
    # The unreadable photo is named, by its URI; the six others are mapped.
    assert code == 1, printed
    assert f"6 mapped, 0 already done, 1 failed of 7 photos into {out}" in printed
    assert f"predict: failed: s3://{s3.bucket}/in/bad.png: not a readable image" in printed

    local = _photo_files(work / "local-photos")
    assert len(local) == GOOD * 6

    def bucket() -> dict[str, bytes]:
        keys = sorted(s3.s3_keys("out/"))
        return {
            k.removeprefix("out/"): client.get_object(Bucket=s3.bucket, Key=k)["Body"].read()
            for k in keys
        }

    assert bucket() == local  # byte for byte, and nothing more (no probe, no temp object)

    # A partial set (its JSON gone, as an interrupted upload leaves it) is redone; the rest
    # is reused, and the bytes stay the same.
    client.delete_object(Bucket=s3.bucket, Key="out/p03.json")
    code, printed = _finish(_predict(work, env, source, "--out", out, "--ray", cluster.address))
    assert "1 mapped, 5 already done, 1 failed of 7 photos" in printed, printed
    assert bucket() == local

    tracking, runs = _campaign_runs(work)
    assert len(runs) == 2
    first = runs[0]
    assert first.data.metrics["mapped"] == 6 and first.data.metrics["failed"] == 1
    assert first.data.metrics["skipped"] == 0 and first.data.metrics["photos_per_hour"] > 0
    assert runs[1].data.metrics["mapped"] == 1 and runs[1].data.metrics["skipped"] == 5
    record = json.loads(local["p00.json"])
    assert first.data.tags["campaign.model_digest"] == record["made_from"]["model"]
    assert first.data.tags["campaign.input"] == source
    assert first.data.tags["campaign.output"] == out
    assert first.data.params["predict.scale"] == "1.0"
    report = json.loads(
        Path(tracking.download_artifacts(first.info.run_id, "campaign/report.json")).read_text()
    )
    assert report["failed"] == [
        f"s3://{s3.bucket}/in/bad.png: not a readable image "
        f"(cannot identify image file 's3://{s3.bucket}/in/bad.png')"
    ]
    table = Path(tracking.download_artifacts(first.info.run_id, "campaign/photos.csv"))
    rows = table.read_text().splitlines()
    assert len(rows) == GOOD + 1 and rows[0].startswith("photo,width,height,model")
    assert rows[0].endswith(",reused") and all(r.endswith(",false") for r in rows[1:])
    rerun = Path(tracking.download_artifacts(runs[1].info.run_id, "campaign/photos.csv"))
    with rerun.open(newline="") as handle:
        reused = {row["photo"]: row["reused"] for row in csv.DictReader(handle)}
    assert reused == {f"p{i:02d}.png": "false" if i == 3 else "true" for i in range(GOOD)}


def test_s3_campaign_writes_the_crack_table_a_local_folder_gets(s3, work, tmp_path) -> None:
    """With a pixel decoder, photos are traced: the campaign's crack table (all photos, worst
    first, streamed photo by photo) lands in the bucket as the cracks.csv a local predict
    writes, byte for byte, and in the run (the local executor: the table is the driver's)."""
    model = work / "ckpt-pixels"
    if not model.is_dir():
        shutil.copytree(work / "ckpt", model)
        # Threshold 0: every pixel a crack pixel, so each photo is one crack as wide as the
        # photo allows (a random decoder on noise finds none at 0.5).
        spec = DecoderSpec("efficientnet_lite0", (16, 24, 40, 112, 1280), threshold=0.0)
        torch.manual_seed(1)
        save_decoder(model, build_decoder(spec), spec)
    # Sizes whose worst-first order (the widest crack first) is not the names' order.
    rng = np.random.default_rng(1)
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    for name, shape in (("s00", (200, 240)), ("s01", (300, 360)), ("s02", (250, 300))):
        pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sizes / f"{name}.png")
    env = _env(s3)
    local = tmp_path / "local"
    code, printed = _finish(_predict(work, env, str(sizes), "--out", str(local), model=str(model)))
    assert code == 0, printed
    expected = (local / "cracks.csv").read_bytes()
    rows = expected.decode().splitlines()
    assert rows[0].startswith("photo,crack,length,")
    assert [r.split(",")[0] for r in rows[1:]] == ["s01.png", "s02.png", "s00.png"]

    client = s3.s3_client()
    for photo in sorted(sizes.iterdir()):
        client.upload_file(str(photo), s3.bucket, f"traced-in/{photo.name}")
    source, out = f"s3://{s3.bucket}/traced-in/", f"s3://{s3.bucket}/traced-out/"
    code, printed = _finish(_predict(work, env, source, "--out", out, model=str(model)))
    assert code == 0 and "3 mapped, 0 already done, 0 failed of 3 photos" in printed, printed
    got = client.get_object(Bucket=s3.bucket, Key="traced-out/cracks.csv")["Body"].read()
    assert got == expected
    tracking, runs = _campaign_runs(work)
    logged = Path(tracking.download_artifacts(runs[-1].info.run_id, "campaign/cracks.csv"))
    assert logged.read_bytes() == expected
    # A rerun keeps every photo and still writes the whole table (from the bucket's tables);
    # a photo whose table is gone is left out and named, the rest stands.
    client.delete_object(Bucket=s3.bucket, Key="traced-out/cracks.csv")
    code, printed = _finish(_predict(work, env, source, "--out", out, model=str(model)))
    assert "0 mapped, 3 already done, 0 failed of 3 photos" in printed, printed
    got = client.get_object(Bucket=s3.bucket, Key="traced-out/cracks.csv")["Body"].read()
    assert got == expected
    client.delete_object(Bucket=s3.bucket, Key="traced-out/s02_cracks.csv")
    client.delete_object(Bucket=s3.bucket, Key="traced-out/s02.json")  # so s02 is mapped again
    client.put_object(Bucket=s3.bucket, Key="traced-out/s00_cracks.csv", Body=b"\xff\xfe")
    code, printed = _finish(_predict(work, env, source, "--out", out, model=str(model)))
    assert code == 0 and "1 mapped, 2 already done, 0 failed of 3 photos" in printed, printed
    assert "1 photos' crack tables could not be read" in printed and "s00.png: " in printed
    got = client.get_object(Bucket=s3.bucket, Key="traced-out/cracks.csv")["Body"].read()
    assert got.decode().splitlines() == [r for r in rows if not r.startswith("s00.png,")]
    report = json.loads(
        Path(
            tracking.download_artifacts(
                _campaign_runs(work)[1][-1].info.run_id, "campaign/report.json"
            )
        ).read_text()
    )
    assert [line.split(":")[0] for line in report["crack_tables_missing"]] == ["s00.png"]


def _start_and_wait_for_outputs(work: Path, env, out: str, address: str) -> subprocess.Popen:
    process = _predict(work, env, "many", "--out", out, "--ray", address)
    _wait_for(lambda: any((work / out).glob("*.json")), f"a first photo in {out}", process)
    return process


def test_killed_campaign_resumes_with_the_same_bytes(cluster, s3, work) -> None:
    env = _env(s3)
    process = _start_and_wait_for_outputs(work, env, "killed", cluster.address)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    done = len(list((work / "killed").glob("*.json")))
    assert 0 < done < MANY, "the campaign was not caught in the middle"
    code, printed = _finish(
        _predict(work, env, "many", "--out", "killed", "--ray", cluster.address)
    )
    assert code == 0, printed
    mapped = int(printed.split("campaign (ray ")[1].split(") ")[1].split(" mapped")[0])
    assert 0 < mapped <= MANY - done + 1, printed  # one photo may have been mid-write
    assert _photo_files(work / "killed") == _photo_files(work / "local-many")


def test_lost_worker_node_costs_no_photo(cluster, s3, work) -> None:
    """Last in this module: the cluster has one node left after it."""
    env = _env(s3)
    process = _start_and_wait_for_outputs(work, env, "lost", cluster.address)
    cluster.kill_worker()
    code, printed = _finish(process)
    assert code == 0, printed
    counts = re.search(r"(\d+) mapped, (\d+) already done, (\d+) failed of (\d+) photos", printed)
    assert counts, printed
    mapped, done, failed, total = map(int, counts.groups())
    # A photo whose actor died after writing its outputs is retried and found complete: it
    # counts as already done, not lost.
    assert (mapped + done, failed, total) == (MANY, 0, MANY), printed
    assert _photo_files(work / "lost") == _photo_files(work / "local-many")


def test_unreachable_cluster_and_store_are_one_line_before_any_photo(s3, work) -> None:
    env = _env(s3)
    cases = [
        (["photos", "--out", "x", "--ray", "127.0.0.1:9"], "--ray 127.0.0.1:9: no Ray cluster"),
        ([f"s3://{s3.bucket}-missing/in/", "--out", "x"], f"{s3.bucket}-missing/in/: no such"),
        (["photos", "--out", f"s3://{s3.bucket}-missing/o/"], "-missing/o/: no such bucket"),
        (["photos", "--out", "ckpt/model.pt"], "ckpt/model.pt: exists and is not a folder"),
    ]
    for args, line in cases:
        code, printed = _finish(_predict(work, env, *args))
        errors = [x for x in printed.splitlines() if x.startswith("crackdet predict: error:")]
        assert code == 2 and len(errors) == 1 and line in errors[0], printed
    dead = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    code, printed = _finish(_predict(work, dead, f"s3://{s3.bucket}/in/", "--out", "x"))
    assert code == 2 and "S3 endpoint unreachable" in printed, printed
    assert not (work / "x").exists() or not any((work / "x").iterdir())
