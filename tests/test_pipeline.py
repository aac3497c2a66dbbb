"""The whole pipeline in a real git + DVC repository with a real MLflow SQLite store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import tiny_params_tree
from tests.helpers.repo import make_repo, run_cmd, stop_process, tool_env

pytestmark = pytest.mark.slow

STAGES = ("fetch", "split", "train", "evaluate", "predict_samples")
NAME = "crack-classifier"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny pipeline run, shared by the checks below (a run costs ~40 s on 2 cores)."""
    path = make_repo(tmp_path_factory.mktemp("pipeline") / "repo", tiny_params_tree())
    result = run_cmd(["dvc", "repro"], path)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in result.stdout
    return path


def predicted_threshold(repo: Path) -> float:
    return json.loads((repo / "outputs/predict/photo_01.json").read_text())["threshold"]


def _client(repo: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    return mlflow.MlflowClient()


def _runs(repo: Path):
    client = _client(repo)
    experiment = client.get_experiment_by_name("crackdet")
    assert experiment is not None
    return client, client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])


def assert_probe_comparison_adds_up(metrics: dict) -> None:
    """Images only the model gets wrong minus those only the probe gets wrong is the difference
    of their error counts, and the McNemar p-value is that of those counts."""
    from crackdet.model.metrics import mcnemar_exact

    probe = metrics["probe"]
    model_wrong = metrics["fp"] + metrics["fn"]
    probe_wrong = round(metrics["n"] * (1 - probe["accuracy"]))
    only_model, only_probe = probe["only_model_wrong"], probe["only_baseline_wrong"]
    assert only_model - only_probe == model_wrong - probe_wrong
    assert only_model <= model_wrong and only_probe <= probe_wrong
    assert probe["mcnemar_p"] == mcnemar_exact(only_model, only_probe)


def test_second_repro_is_up_to_date_and_status_clean(repo: Path) -> None:
    again = run_cmd(["dvc", "repro"], repo)
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout
    status = run_cmd(["dvc", "status"], repo)
    assert "Data and pipelines are up to date" in status.stdout


def test_outputs_metrics_and_plots(repo: Path) -> None:
    metrics = json.loads((repo / "outputs/evaluate/metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix"}
    assert metrics["n"] == metrics["tn"] + metrics["fp"] + metrics["fn"] + metrics["tp"] > 0
    shown = json.loads(run_cmd(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert "outputs/evaluate/metrics.json" in json.dumps(shown)
    history = (repo / "outputs/train/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss") and len(history) == 3
    for name in ("roc.png", "pr.png", "confusion.png"):
        assert (repo / "outputs/evaluate/plots" / name).stat().st_size > 1000
    spec = json.loads((repo / "outputs/train/model.json").read_text())
    assert metrics["threshold"] == spec["threshold"]  # chosen on val, reused by evaluate…
    assert predicted_threshold(repo) == spec["threshold"]  # …and by predict
    assert spec["temperature"] > 0 and 0.0 <= metrics["ece"] <= 1.0
    report = (repo / "outputs/evaluate/report/data.md").read_text()
    assert "## Duplicates" in report and "## Hardest" in report
    assert (repo / "outputs/evaluate/report/hardest.png").stat().st_size > 1000
    assert metrics["probe"]["accuracy"] >= 0.0  # the baseline is scored on the same test set
    assert metrics["accuracy_ci95_low"] <= metrics["accuracy"] <= metrics["accuracy_ci95_high"]
    assert_probe_comparison_adds_up(metrics)
    predicted = json.loads((repo / "outputs/predict/photo_01.json").read_text())
    assert predicted["tiles_total"] == len(predicted["tiles"]) > 0
    for suffix in ("_overlay.jpg", "_heatmap.png", "_heatmap.npy", "_mask.png"):
        assert (repo / f"outputs/predict/photo_01{suffix}").exists(), suffix
    assert (repo / "outputs/predict/contact_sheet.png").exists()
    assert (repo / "outputs/predict/photo_01_thumb.jpg").exists()
    assert 'src="photo_01_thumb.jpg"' in (repo / "outputs/predict/index.html").read_text()
    assert 0.0 <= predicted["crack_area_fraction"] <= 1.0


def test_one_mlflow_run_carries_lineage_params_metrics_and_model(repo: Path) -> None:
    client, runs = _runs(repo)
    assert len(runs) == 1
    run = runs[0]
    run_id = json.loads((repo / "outputs/train/run.json").read_text())["run_id"]
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["train.augment.rotation"] == "10.0"
    history = client.get_metric_history(run_id, "val/acc")
    assert [m.step for m in history] == [1, 2]
    assert "test/accuracy" in run.data.metrics and "predict/mean_crack_fraction" in run.data.metrics
    # MLflow's UI makes a chart section of each prefix: no flat name is left.
    assert all("/" in key for key in run.data.metrics), sorted(run.data.metrics)
    head = run_cmd(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert run.data.tags["git.commit"] == head
    assert run.data.tags["git.dirty"] in ("true", "false")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    fetch_md5 = lock["stages"]["fetch"]["outs"][0]["md5"]
    assert run.data.tags["dvc.fetch.outputs/fetch"] == fetch_md5
    summary = json.loads((repo / "outputs/fetch/summary.json").read_text())
    assert run.data.tags["data.manifest_sha256"] == summary["manifest_sha256"]
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == summary["manifest_sha256"][:32]
    artifacts = {a.path for a in client.list_artifacts(run_id, "predict_samples")}
    assert "predict_samples/photo_01_overlay.jpg" in artifacts
    version = client.get_model_version("crack-classifier", "1")
    assert version.run_id == run_id
    assert version.tags["data.split_fingerprint"] == run.data.tags["data.split_fingerprint"]
    store = repo / "mlruns"
    assert (store / "mlflow.db").exists() and (store / "artifacts").is_dir()


def test_registered_model_loads_and_predicts(repo: Path) -> None:
    import mlflow.pytorch
    import torch

    from crackdet.model.classifier import load_checkpoint

    _client(repo)
    model = mlflow.pytorch.load_model("models:/crack-classifier/1")
    images = torch.rand(3, 3, 227, 227)  # any batch size, not only the example's
    checkpoint = load_checkpoint(repo / "outputs/train/model.pt", repo / "outputs/train/model.json")
    with torch.inference_mode():
        logits, expected = model(images), checkpoint(images)
    assert logits.shape == (3, 2)
    assert torch.allclose(logits, expected, atol=1e-4)  # the registry holds the trained weights
    # Its environment: the runtime's direct pins, constrained by the lock file's lines they
    # need; the test, lint and docs tools are not the model's (they warned on every load).
    folder = Path(mlflow.artifacts.download_artifacts("models:/crack-classifier/1"))
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert "torch==2.14.1" in requirements and "-c constraints.txt" in requirements
    assert not any(r.startswith(("pytest", "ruff", "mkdocs")) for r in requirements)
    constraints = (folder / "constraints.txt").read_text().splitlines()
    lock = (repo / "requirements.lock").read_text().splitlines()
    assert set(constraints) < set(lock)
    names = {line.split("==")[0].lower() for line in constraints}
    assert {"torch", "onnxruntime", "mlflow", "numpy", "pillow", "flask"} <= names
    assert not names & {"pytest", "ruff", "import-linter", "mkdocs"}


def test_evaluate_again_reuses_the_registered_version(repo: Path) -> None:
    first = json.loads((repo / "outputs/evaluate/registered.json").read_text())
    result = run_cmd(["dvc", "repro", "--force", "--single-item", "evaluate"], repo)
    assert "crack-classifier v1 already holds this run's checkpoint: not registered again" in (
        result.stdout
    )
    versions = _client(repo).search_model_versions("name='crack-classifier'")
    assert [int(v.version) for v in versions] == [1]
    registered = json.loads((repo / "outputs/evaluate/registered.json").read_text())
    assert registered == first and registered["version"] == 1 and registered["alias"]


def _alias_uri(repo: Path) -> str:
    """``models:/crack-classifier@<alias>`` of the version evaluate registered (the tiny
    pipeline's may miss the gates: challenger)."""
    alias = json.loads((repo / "outputs/evaluate/registered.json").read_text())["alias"]
    return f"models:/{NAME}@{alias}"


def test_the_registered_model_maps_exactly_as_its_folder(repo: Path, tmp_path: Path) -> None:
    env = tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    maps = {}
    for name, model in (("folder", "outputs/train"), ("registry", _alias_uri(repo))):
        out = tmp_path / name
        result = run_cmd(
            ["crackdet", "predict", "data/photos", "--model", model, "--out", str(out)], repo, env
        )
        assert "1 of 1 photos mapped" in result.stdout
        assert "Downloading artifacts" not in result.stdout + result.stderr
        maps[name] = out
    for suffix in ("_overlay.jpg", "_heatmap.png", "_heatmap.npy", "_mask.png"):
        folder = (maps["folder"] / f"photo_01{suffix}").read_bytes()
        assert folder == (maps["registry"] / f"photo_01{suffix}").read_bytes(), suffix
    folder, registry = (json.loads((maps[n] / "photo_01.json").read_text()) for n in maps)
    # The same "unfamiliar" hatching (none on dense maps: crackdet.maps.mapping.prepare_mapper);
    # that the OOD model and the heads travelled with the version is in made_from, whose model
    # digest covers ood.npz and the heads' files.
    assert registry["ood_fraction"] == folder["ood_fraction"]
    assert registry["made_from"] == folder["made_from"]
    assert registry["model"] == f"{NAME} v1 (@{_alias_uri(repo).split('@')[1]})"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_models_serve_answers_an_image_with_p_crack(repo: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from crackdet.model.classifier import load_checkpoint
    from crackdet.model.ood import OODModel
    from crackdet.tracking.serving import ModelBundle, classify

    port = _free_port()
    env = tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    command = ["mlflow", "models", "serve", "-m", _alias_uri(repo)]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    patch = repo / "outputs/fetch/images/synthetic/Positive/00001.jpg"
    photo = np.asarray(Image.open(repo / "data/photos/photo_01.jpg").convert("RGB"))
    images = [np.asarray(Image.open(patch).convert("RGB")), photo[:150, :310]]  # any size
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "serve.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        answers = []
        for image in images:  # one image a request: uint8 H x W x 3 as JSON numbers
            body = json.dumps({"inputs": [image.tolist()]}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                answers += json.loads(response.read())["predictions"]
    finally:
        stop_process(server)
        log.close()
    # What the checkpoint says with the pipeline's own graph, one image at a time as served.
    train = repo / "outputs/train"
    graphs = repo / ".cache/onnx"
    model = load_checkpoint(train / "model.pt", train / "model.json", "onnxruntime", graphs)
    bundle = ModelBundle(model, OODModel.load(train / "ood.npz"))
    assert model.graph_engine == "onnxruntime" and bundle.ood is not None
    assert len(answers) == len(images)
    for answer, image in zip(answers, images, strict=True):
        expected = classify(bundle, [image])
        p = float(expected["p_crack"][0])
        assert answer["p_crack"] == pytest.approx(p, abs=1e-7)
        assert answer["label"] == ("Positive" if p >= model.spec.threshold else "Negative")
        assert answer["unfamiliar"] == bool(expected["unfamiliar"][0])


def test_predict_cli_maps_a_photo(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    result = run_cmd(
        ["crackdet", "predict", "data/photos", "--model", "outputs/train", "--out", str(out)], repo
    )
    assert "1 of 1 photos mapped" in result.stdout
    assert (out / "photo_01_overlay.jpg").exists()
    assert f"report {out / 'index.html'}" in result.stdout
    record = json.loads((out / "photo_01.json").read_text())
    assert record["model"].startswith("outputs/train (") and record["made_from"]["model"]
    again = run_cmd(
        ["crackdet", "predict", "data/photos", "--model", "outputs/train", "--out", str(out)], repo
    )
    assert "1 of 1 photos mapped" in again.stdout and "1 already done" in again.stdout


def test_exp_run_creates_a_comparable_second_run(repo: Path) -> None:
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-q", "-m", "pipeline run"], repo)
    run_cmd(["dvc", "exp", "run", "-S", "train.epochs=1"], repo)
    client, runs = _runs(repo)
    assert len(runs) == 2
    first, second = runs
    assert second.data.params["train.epochs"] == "1"
    assert set(first.data.params) == set(second.data.params)
    assert set(first.data.metrics) == set(second.data.metrics)
    assert second.data.tags.get("dvc.dvc_exp_name")
    # Named after what made them: `dvc repro` or the experiment, at the commit each ran on.
    assert first.info.run_name == f"repro @ {first.data.tags['git.commit'][:7]}"
    exp_name = second.data.tags["dvc.dvc_exp_name"]
    assert second.info.run_name == f"{exp_name} @ {second.data.tags['git.commit'][:7]}"
    assert [m.step for m in client.get_metric_history(second.info.run_id, "val/acc")] == [1]
    versions = client.search_model_versions("name='crack-classifier'")
    assert sorted(int(v.version) for v in versions) == [1, 2]


def test_changing_only_predict_params_reruns_only_predict_samples(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["predict"]["overlap"] = 0.25
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run_cmd(["dvc", "repro"], repo)
    ran = [stage for stage in STAGES if f"Running stage '{stage}'" in result.stdout]
    assert ran == ["predict_samples"]
    run_id = json.loads((repo / "outputs/train/run.json").read_text())["run_id"]
    run = _client(repo).get_run(run_id)
    # MLflow params are immutable: the new value is recorded next to the one train logged.
    assert run.data.params["predict.overlap"] == "0.5"
    assert run.data.tags["params.predict.overlap"] == "0.25"


def test_eval_command_scores_a_model_on_another_data_set(repo: Path, tmp_path: Path) -> None:
    import shutil

    from crackdet.data.sources.synthetic import write_patch_set

    write_patch_set(tmp_path / "other" / "set", 10, seed=99)
    archive = shutil.make_archive(str(tmp_path / "other-set"), "zip", tmp_path / "other")
    out = tmp_path / "eval.json"
    result = run_cmd(
        ["crackdet", "eval", archive, "--model", "outputs/train", "--out", str(out)], repo
    )
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 20
    # Scored at the checkpoint's own operating threshold, as the evaluate stage does.
    spec = json.loads((repo / "outputs/train/model.json").read_text())
    assert metrics["threshold"] == spec["threshold"]
    assert f"accuracy {metrics['accuracy']:.4f}" in result.stdout
    client, pipeline_runs = _runs(repo)
    assert all(r.data.tags["crackdet.stage"] == "pipeline" for r in pipeline_runs)
    # Evaluations have an experiment of their own, and runs that span the work they record.
    experiment = client.get_experiment_by_name("crackdet-evaluations")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    evals = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`crackdet.stage` = 'eval'"
    )
    assert len(evals) == 1
    assert evals[0].data.metrics["test/accuracy"] == metrics["accuracy"]
    assert evals[0].data.tags["eval.model"] == "outputs/train"


def test_an_eval_run_spans_the_evaluation(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run starts before the model is loaded and ends after the metrics are written, so
    its duration in MLflow is the evaluation's (it used to start once the work was done)."""
    import shutil
    import time

    from crackdet.core.layout import Layout
    from crackdet.core.params import load_params
    from crackdet.data.sources.synthetic import write_patch_set
    from crackdet.tracking.store import EVALUATIONS, init_store
    from crackdet.workflows.eval_data import score_dataset

    for var in [v for v in os.environ if v.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(repo)
    write_patch_set(tmp_path / "set" / "patches", 8, seed=7)
    archive = Path(shutil.make_archive(str(tmp_path / "patches"), "zip", tmp_path / "set"))
    params = load_params(repo / "params.yaml")
    client = _client(repo)
    init_store(repo, EVALUATIONS)  # the store opened: what is left before the run is small
    began = time.time()
    score_dataset(archive, "outputs/train", params.evaluate, params.fetch, Layout(repo))
    done = time.time()
    experiment = client.get_experiment_by_name(EVALUATIONS)
    run = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.run_name = 'eval patches.zip'"
    )[0]
    start, end = run.info.start_time / 1000, run.info.end_time / 1000
    slack = max(1.5, 0.2 * (done - began))
    assert start - began < slack and done - end < slack, (began, start, end, done)


def test_logged_model_holds_no_absolute_paths_of_this_machine(repo: Path) -> None:
    import zipfile

    archives = list((repo / "mlruns" / "artifacts").rglob("model.pt2"))
    assert archives
    machine_paths = [str(repo).encode(), str(Path(__file__).resolve().parents[1]).encode()]
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                data = zf.read(name)
                assert not any(p in data for p in machine_paths), f"{archive}: {name}"


def test_a_forced_rerun_records_the_same_bytes(repo: Path) -> None:
    """Same code, params and data give byte-identical DVC outputs: a forced rerun of every stage
    (new MLflow run ids, new timings) leaves dvc.lock exactly as it was."""
    before = (repo / "dvc.lock").read_text()
    run_cmd(["dvc", "repro", "--force"], repo)
    assert (repo / "dvc.lock").read_text() == before


def test_a_bad_param_leaves_the_last_good_outputs(repo: Path) -> None:
    """DVC runs the stage (and would have deleted its outputs) before the stage can refuse its
    params: outputs persist, so a typo costs nothing."""
    kept = {
        name: (repo / name).read_bytes()
        for name in (
            "outputs/train/model.pt",
            "outputs/train/metrics.json",
            "outputs/train/ood.npz",
        )
    }
    params = (repo / "params.yaml").read_text()
    result = run_cmd(["dvc", "exp", "run", "-S", "train.epochs=0"], repo, check=False)
    try:
        assert result.returncode != 0
        assert "crackdet train: error: params.yaml: train.epochs must be >= 1; got 0" in (
            result.stdout + result.stderr
        )
        assert {name: (repo / name).read_bytes() for name in kept} == kept
    finally:
        (repo / "params.yaml").write_text(params)
    assert "Data and pipelines are up to date" in run_cmd(["dvc", "status"], repo).stdout


def test_fine_tuned_run_keeps_the_probe_baseline_and_an_ood_model(repo: Path) -> None:
    """train.unfreeze with the cached trunk: evaluate rebuilds the pretrained backbone so the
    probe scored next to the tuned model is the very one a frozen run scores."""
    from crackdet.model.ood import OODModel

    _, before = _runs(repo)
    frozen = before[0]
    run_cmd(["dvc", "exp", "run", "-S", "train.unfreeze=1"], repo)
    spec = json.loads((repo / "outputs/train/model.json").read_text())
    assert spec["unfrozen_blocks"] == 1
    metrics = json.loads((repo / "outputs/evaluate/metrics.json").read_text())
    for key in ("accuracy", "f1", "roc_auc"):
        assert metrics["probe"][key] == frozen.data.metrics[f"baseline/{key}"], key
    assert_probe_comparison_adds_up(metrics)
    ood = OODModel.load(repo / "outputs/train/ood.npz")
    assert ood is not None and ood.threshold > 0
    _, after = _runs(repo)
    tuned = after[-1]
    assert tuned.data.params["train.unfreeze"] == "1"
    assert tuned.data.metrics["calibration/ood_threshold"] == pytest.approx(ood.threshold)
