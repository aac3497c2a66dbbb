"""Lineage, replay, CI gate and the MLflow server view, on one real tiny pipeline repository.

One ``mlflow server`` process on 127.0.0.1 (SQLite store and artifacts in tmp) serves the whole
module; the repository logs to it through ``MLFLOW_TRACKING_URI``. Two pipeline executions with
different params are made: the fixture's ``dvc repro`` and the regressing one that
``crackdet ci-check`` reruns. Tests run in file order and share that state (a tiny pipeline costs
~45-75 s on 2 cores); each test restores what it changed in the workspace.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import BIN, default_params_tree, make_repo, run_cmd, tiny_params_tree, tool_env
from tests.helpers.repo import stop_process

pytestmark = pytest.mark.slow

NAME = "crack-classifier"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 against a temp store; always killed afterwards."""
    store = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (store / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--default-artifact-root",
            str(store / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=tool_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start:\n{_read(store)}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(proc, grace=20)
        log.close()


def _read(store: Path) -> str:
    return (store / "server.log").read_text()[-3000:]


def env_for(url: str, repo: Path) -> dict[str, str]:
    # The repo's own src/ (not this checkout's editable install): the code the commit records is
    # the code that runs, as in a replay, even while this checkout is being edited.
    return tool_env(MLFLOW_TRACKING_URI=url, PYTHONPATH=str(repo / "src"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, server: str) -> Path:
    """A tiny pipeline run logged to the server, committed (with dvc.lock and metrics)."""
    # Minimum gates off: 8 test images say little; the gates themselves are tested elsewhere.
    tree = tiny_params_tree(**{"promote.min_accuracy": 0.0, "promote.min_f1": 0.0})
    path = make_repo(tmp_path_factory.mktemp("lineage") / "repo", tree)
    run_cmd(["dvc", "repro"], path, env_for(server, path))
    run_cmd(["git", "add", "-A"], path)
    run_cmd(["git", "commit", "-q", "-m", "pipeline run"], path)
    return path


def client(url: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=url, registry_uri=url)


@pytest.fixture(scope="module")
def run_id(repo: Path) -> str:
    return json.loads((repo / "outputs/train/run.json").read_text())["run_id"]


def crackdet(repo: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cmd(["crackdet", *args], repo, env_for(url, repo), check=False)


def edit_params(repo: Path, **changes: Any) -> None:
    tree = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


# --- trace -----------------------------------------------------------------------------------


def test_first_version_is_champion_and_listed(repo: Path, server: str) -> None:
    result = crackdet(repo, server, "models")
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[1].split()
    assert row[:2] == ["1", "champion"] and row[5] == "passed"
    registered = json.loads((repo / "outputs/evaluate/registered.json").read_text())
    assert registered["alias"] == "champion" and registered["validation_status"] == "passed"


def test_trace_run_and_alias(repo: Path, server: str, run_id: str) -> None:
    head_before = run_cmd(["git", "rev-parse", "HEAD~1"], repo).stdout.strip()
    edit_params(repo, **{"predict.threshold": 0.7})
    try:
        by_alias = crackdet(repo, server, "trace", f"models:/{NAME}@champion")
        by_run = crackdet(repo, server, "trace", run_id, "--json")
    finally:
        run_cmd(["git", "checkout", "params.yaml"], repo)
    assert by_alias.returncode == 0, by_alias.stderr
    text = by_alias.stdout
    assert f"run        {run_id}" in text
    # The pipeline ran before the commit that recorded its outputs: its commit is the first one.
    assert f"git        {head_before} dirty=false" in text
    assert "predict.threshold  0.5 -> 0.7" in text
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert f"dvc.fetch.outputs/fetch: {lock['stages']['fetch']['outs'][0]['md5']}" in text
    summary = json.loads((repo / "outputs/split/summary.json").read_text())
    assert f"data.split_fingerprint: {summary['fingerprint']}" in text
    assert "test/accuracy: " in text and f"models:/{NAME}/1 @champion: " in text
    info = json.loads(by_run.stdout)
    assert info["run_id"] == run_id and info["versions"] == [f"{NAME}/1"]
    assert ["predict.threshold", "0.5", "0.7"] in info["params_diff"]
    assert (
        info["metrics"]["test/accuracy"]
        == json.loads((repo / "outputs/evaluate/metrics.json").read_text())["accuracy"]
    )
    missing = crackdet(repo, server, "trace", f"models:/{NAME}/7")
    assert missing.returncode == 2 and f"models:/{NAME}/7: not found" in missing.stderr


def test_trace_campaign_run(
    repo: Path, server: str, run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign's run answers ``crackdet trace``: the model version and, through it, the
    pipeline run that trained it (commit, data, params), the settings, where photos came from
    and outputs went, the counts. The campaign is the local executor's (the run it records is
    the one a Ray campaign records: tests/test_campaigns.py)."""
    from dataclasses import replace

    from crackdet.core.layout import Layout
    from crackdet.core.params import load_params
    from crackdet.workflows.campaign import run_campaign

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    cfg = replace(load_params(repo / "params.yaml").predict, threshold=0.7)
    cfg = replace(cfg, use_model_threshold=False)
    photos, out = repo / "data" / "photos", tmp_path / "maps"
    model = f"models:/{NAME}@champion"
    done = run_campaign([str(photos)], model, str(out), cfg, Layout(repo))
    assert (done.mapped, done.skipped, done.failed) == (1, 0, [])
    # The registered model carries its pixel decoder: the campaign traced the photo, and its
    # run holds the crack table (a header alone where the tiny decoder found none).
    import mlflow

    logged = mlflow.artifacts.download_artifacts(
        run_id=done.run_id,
        artifact_path="campaign/cracks.csv",
        dst_path=str(tmp_path / "got"),
        tracking_uri=server,
    )
    table = (out / "cracks.csv").read_text()
    assert Path(logged).read_text() == table and table.startswith("photo,crack,length,")

    result = crackdet(repo, server, "trace", done.run_id)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    made_from = json.loads((out / "photo_01.json").read_text())["made_from"]
    assert f"campaign   {done.run_id} (" in text
    assert f"model      {NAME} v1 (@champion), registered as {NAME}/1" in text
    assert f"  digest   {made_from['model']} " in text
    assert f"photos     {photos}" in text and f"outputs    {out}" in text
    assert "counts     photos 1, mapped 1, skipped 0, failed 0" in text
    assert "  predict.threshold: 0.7" in text, text
    assert re.search(r"\n    predict\.threshold +0\.7 -> 0\.5\n", text), text
    # The training run's own trace, nested: its run, commit, data and metrics.
    head_before = run_cmd(["git", "rev-parse", "HEAD~1"], repo).stdout.strip()
    assert f"trained by run {run_id}:\n  run        {run_id}" in text
    assert f"  git        {head_before} dirty=false" in text
    summary = json.loads((repo / "outputs/split/summary.json").read_text())
    assert f"    data.split_fingerprint: {summary['fingerprint']}" in text

    # A checkpoint folder by path: its run.json names the run that trained it.
    again = run_campaign([str(photos)], str(repo / "outputs/train"), str(out), cfg, Layout(repo))
    assert (again.mapped, again.skipped) == (0, 1)  # same weights, same digest: reused
    info = json.loads(crackdet(repo, server, "trace", again.run_id, "--json").stdout)
    assert info["kind"] == "campaign" and info["counts"]["skipped"] == 1
    assert info["campaign"]["model_version"] == "" and info["campaign"]["model_run"] == run_id
    assert info["trained_by"]["run_id"] == run_id and info["trained_by"]["versions"] == [
        f"{NAME}/1"
    ]


def test_champion_rescored_on_the_split_and_predicts(
    repo: Path, server: str, tmp_path: Path
) -> None:
    import mlflow

    from crackdet.core.layout import Layout
    from crackdet.workflows.evaluate import split_reevaluator

    mlflow.set_tracking_uri(server)
    version = client(server).get_model_version(NAME, "1")
    scored = split_reevaluator(Layout(repo), NAME, 8)(version)
    assert {k: f"{v:.6f}" for k, v in scored.items()} == {
        k: version.tags[f"test_{k}"] for k in scored
    }
    out = tmp_path / "maps"
    result = crackdet(
        repo,
        server,
        "predict",
        "data/photos",
        "--model",
        f"models:/{NAME}@champion",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "1 of 1 photos mapped" in result.stdout and (out / "photo_01_overlay.jpg").exists()


# --- reproduce -------------------------------------------------------------------------------


def test_reproduce_matches_exactly(repo: Path, server: str, run_id: str) -> None:
    result = crackdet(repo, server, "reproduce", run_id)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "MATCH: " in result.stdout and f"identical to run {run_id}" in result.stdout
    # The replay logged into its own throwaway store: the server still has one run, one version.
    runs = client(server).search_runs(
        [client(server).get_experiment_by_name("crackdet").experiment_id]
    )
    assert len(runs) == 1
    assert "worktree" not in run_cmd(["git", "worktree", "list"], repo).stdout.split("\n", 1)[-1]


def test_reproduce_reports_a_forced_mismatch(repo: Path, server: str, run_id: str) -> None:
    c = client(server)
    recorded = c.get_run(run_id).data.metrics["val/best_loss"]
    c.log_metric(run_id, "val/best_loss", recorded + 0.125)  # as if the record were altered
    try:
        result = crackdet(repo, server, "reproduce", run_id)
    finally:
        c.log_metric(run_id, "val/best_loss", recorded)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    assert "MISMATCH: 1 of" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("val/best_loss"))
    assert row.split()[1:] == [f"{recorded + 0.125:.10g}", f"{recorded:.10g}"]


@pytest.fixture(scope="module")
def archive_store(repo: Path) -> str:
    """A store of its own for the archive run, so the server's runs stay the two below."""
    return f"sqlite:///{repo.parent / 'archive-store' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def archive_run(repo: Path, archive_store: str) -> tuple[str, Path, Path]:
    """A run on an archive outside the repository, named relative to it, as the docs show
    (a source ``path: ../elsewhere/set.zip``): real patches when the shared sample is here.
    It runs in a clone (sharing the repo's DVC cache), so the workspace the other tests use is
    left as it is. Returns the run id, the archive and the clone."""
    clone = repo.parent / "clone"
    run_cmd(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    run_cmd(["dvc", "cache", "dir", "--local", str(repo / ".dvc" / "cache")], clone)
    run_cmd(["dvc", "checkout", "data.dvc"], clone)
    archive = repo.parent / "elsewhere" / "set.zip"
    archive.parent.mkdir()
    (repo.parent / "archive-store").mkdir()
    _sample_archive(archive)
    source = {"kind": "archive", "path": "../elsewhere/set.zip", "sha256": ""}
    edit_params(
        clone,
        **{
            "fetch.sources": {
                "elsewhere": source | {"licence": "CC BY 4.0", "group_by": "signature"}
            }
        },
    )
    run_cmd(["git", "commit", "-q", "-am", "a source outside the repository"], clone)
    result = run_cmd(["dvc", "exp", "run"], clone, env_for(archive_store, clone))
    assert "Running stage 'train'" in result.stdout
    run = json.loads((clone / "outputs/train/run.json").read_text())["run_id"]
    return run, archive, clone


def _sample_archive(path: Path, per_class: int = 24) -> None:
    import zipfile

    from tests.helpers import OZGENEL_4K

    with zipfile.ZipFile(path, "w") as out:
        if OZGENEL_4K.exists():
            with zipfile.ZipFile(OZGENEL_4K) as sample:
                for label in ("Negative", "Positive"):
                    names = sorted(n for n in sample.namelist() if n.startswith(f"{label}/"))
                    for name in names[1 : per_class + 1]:
                        out.writestr(name, sample.read(name))
        else:  # the rendered stand-in, when the shared sample is not on this machine
            from crackdet.data.sources.synthetic import write_patch_set

            folder = path.parent / "rendered"
            write_patch_set(folder, per_class, seed=5)
            for image in sorted(folder.rglob("*.jpg")):
                out.write(image, image.relative_to(folder).as_posix())


def test_reproduce_finds_an_archive_outside_the_repo_and_checks_it(
    archive_store: str, archive_run: tuple[str, Path, Path]
) -> None:
    run_id, archive, repo = archive_run
    expected = client(archive_store).get_run(run_id).data.tags["data.elsewhere.archive_sha256"]
    result = crackdet(repo, archive_store, "reproduce", run_id)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert f"identical to run {run_id}" in result.stdout
    moved = archive.with_name("moved.zip")
    archive.rename(moved)
    try:
        result = crackdet(repo, archive_store, "reproduce", run_id)
        assert result.returncode == 2
        assert result.stderr == (
            f"crackdet reproduce: error: fetch.sources.elsewhere.path ../elsewhere/set.zip: not "
            f"found relative to {repo} nor in DVC's cache or remote (run {run_id} used sha256 "
            f"{expected}); pass a copy with --data elsewhere=PATH\n"
        )
        archive.write_bytes(moved.read_bytes()[:-100] + b"x" * 100)  # same name, other bytes
        result = crackdet(repo, archive_store, "reproduce", run_id)
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert result.stderr.startswith(
            "crackdet reproduce: error: fetch.sources.elsewhere.path ../elsewhere/"
        )
        assert f"the run's is {expected}); pass the original with --data elsewhere=PATH" in (
            result.stderr
        )
        # --data names a copy: a bare PATH is the run's only archive source, checked by sha256
        # before any work (SOURCE=PATH is parsed in test_cli_data_names_a_source_or_the_only_one).
        result = crackdet(repo, archive_store, "reproduce", run_id, "--data", str(archive))
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert result.stderr.startswith(
            f"crackdet reproduce: error: --data elsewhere={archive}: not the archive run {run_id}"
        )
        result = crackdet(repo, archive_store, "reproduce", run_id, "--data", f"other={moved}")
        assert result.returncode == 2
        assert result.stderr == (
            f"crackdet reproduce: error: --data other=…: run {run_id} has no archive source of "
            "that name (its archive sources: elsewhere)\n"
        )
    finally:
        archive.unlink(missing_ok=True)
        moved.rename(archive)


def test_cli_data_names_a_source_or_the_only_one() -> None:
    from crackdet.cli.tracking import _source_path

    assert _source_path("ozgenel=../copies/oz.zip") == ("ozgenel", Path("../copies/oz.zip"))
    assert _source_path("../copies/oz.zip") == ("", Path("../copies/oz.zip"))
    assert _source_path("/data/a=b.zip") == ("", Path("/data/a=b.zip"))  # a path holding "="


# --- ci-check --------------------------------------------------------------------------------


def test_ci_check_fails_on_invalid_params(repo: Path, server: str) -> None:
    edit_params(repo, **{"train.epochs": 0})
    try:
        result = crackdet(repo, server, "ci-check", "--base", "HEAD", "--report", "ci.md")
    finally:
        run_cmd(["git", "checkout", "params.yaml"], repo)
    assert result.returncode == 1, result.stderr
    report = (repo / "ci.md").read_text()
    assert report.startswith("## crackdet ci-check: FAIL")
    assert "train.epochs must be >= 1" in report
    assert "| params.yaml | `train.epochs` | 2 | 0 |" in report
    assert "Pipeline rerun: no" in report


def test_ci_check_passes_on_a_harmless_change(repo: Path, server: str) -> None:
    edit_params(repo, **{"predict.overlap": 0.25})
    try:
        result = crackdet(repo, server, "ci-check", "--base", "HEAD", "--report", "ci.md")
    finally:
        run_cmd(["git", "checkout", "params.yaml"], repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Running stage 'predict_samples'" in result.stdout
    assert "Running stage 'train'" not in result.stdout
    report = (repo / "ci.md").read_text()
    assert report.startswith("## crackdet ci-check: PASS")
    assert "| params.yaml | `predict.overlap` | 0.5 | 0.25 |" in report
    assert "| outputs/evaluate/metrics.json | `accuracy` |" in report
    assert "REGRESSED" not in report and "Pipeline rerun: yes" in report
    bad = crackdet(repo, server, "ci-check", "--base", "no-such-rev")
    assert bad.returncode == 2 and "--base no-such-rev: not a commit" in bad.stderr


def test_ci_check_fails_on_a_regressed_metric(repo: Path, server: str) -> None:
    """The second pipeline execution: a learning rate too small to learn anything in 1 epoch."""
    edit_params(repo, **{"train.lr": 1e-6, "train.epochs": 1})
    result = crackdet(repo, server, "ci-check", "--base", "HEAD", "--report", "ci.md")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    assert "Running stage 'train'" in result.stdout
    report = (repo / "ci.md").read_text()
    assert report.startswith("## crackdet ci-check: FAIL")
    assert "| outputs/train/metrics.json | `val_loss` |" in report
    assert "REGRESSED" in report and "(> ci.max_metric_regression 0.01)" in report


# --- what `mlflow ui` shows, through the server's REST API -----------------------------------


def rest(url: str, path: str, body: dict[str, Any] | None = None, **query: str) -> Any:
    target = f"{url}/api/2.0/mlflow/{path}"
    if query:
        target += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        target, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_server_shows_both_runs_params_history_versions_and_aliases(
    repo: Path, server: str, run_id: str
) -> None:
    experiment = rest(server, "experiments/get-by-name", experiment_name="crackdet")["experiment"]
    runs = rest(
        server,
        "runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "order_by": ["start_time ASC"]},
    )["runs"]
    assert len(runs) == 2 and runs[0]["info"]["run_id"] == run_id
    params = [{p["key"]: p["value"] for p in r["data"]["params"]} for r in runs]
    default_lr = str(float(default_params_tree()["train"]["lr"]))
    assert (params[0]["train.lr"], params[1]["train.lr"]) == (default_lr, "1e-06")
    assert (params[0]["train.epochs"], params[1]["train.epochs"]) == ("2", "1")
    assert set(params[0]) == set(params[1])
    for run, steps in zip(runs, ([1, 2], [1]), strict=True):
        history = rest(
            server, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="val/loss"
        )["metrics"]
        assert sorted(m["step"] for m in history) == steps
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"test/accuracy", "test/f1", "val/best_acc", "train/loss"} <= metrics
    model = rest(server, "registered-models/get", name=NAME)["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert aliases == {"champion": "1", "challenger": "2"}
    versions = rest(server, "model-versions/search", filter=f"name='{NAME}'")["model_versions"]
    by_number = {v["version"]: v for v in versions}
    assert set(by_number) == {"1", "2"}
    assert by_number["2"]["run_id"] == runs[1]["info"]["run_id"]
    tags = {t["key"]: t["value"] for t in by_number["2"]["tags"]}
    assert {"git.commit", "data.manifest_sha256", "data.split_fingerprint", "test_f1"} <= set(tags)
    assert tags["validation_status"] in ("passed", "failed")
    champion = rest(server, "registered-models/alias", name=NAME, alias="champion")
    assert champion["model_version"]["version"] == "1"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_dirty_means_an_input_changed_not_an_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline rewrites dvc.lock and its tracked metric files: that is not "uncommitted
    changes"; code, params, dvc.yaml, pins and data pointers are."""
    from crackdet.tracking.provenance import git_state

    files = {
        "src/pkg/a.py": "x = 1\n",
        "params.yaml": "a: 1\n",
        "dvc.yaml": "stages: {}\n",
        "data.dvc": "outs: []\n",
        "dvc.lock": "schema: '2.0'\n",
        "outputs/train/metrics.json": "{}\n",
        "README.md": "hi\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    assert git_state(tmp_path)["git.dirty"] == "false"

    # What a run writes, and files no stage reads.
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (tmp_path / "outputs/train/metrics.json").write_text('{"val_loss": 0.1}\n')
    (tmp_path / "README.md").write_text("changed\n")
    (tmp_path / "notes.txt").write_text("new\n")
    state = git_state(tmp_path)
    assert state["git.dirty"] == "false" and "git.dirty_inputs" not in state

    for name, text in [
        ("params.yaml", "a: 2\n"),
        ("src/pkg/new.py", "y = 2\n"),  # untracked code counts
        ("dvc.yaml", "stages: {x: {cmd: y}}\n"),
        ("data.dvc", "outs: [1]\n"),
    ]:
        before = (tmp_path / name).read_text() if (tmp_path / name).exists() else None
        (tmp_path / name).write_text(text)
        state = git_state(tmp_path)
        assert state["git.dirty"] == "true", name
        assert state["git.dirty_inputs"] == name
        if before is None:
            (tmp_path / name).unlink()
        else:
            (tmp_path / name).write_text(before)
    # An experiment's -S params are written into params.yaml and committed to its ref by DVC.
    (tmp_path / "params.yaml").write_text("a: 3\n")
    monkeypatch.setenv("DVC_EXP_NAME", "lusty-rand")
    assert git_state(tmp_path)["git.dirty"] == "false"
    monkeypatch.delenv("DVC_EXP_NAME")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    _git(tmp_path, "mv", "src/pkg/a.py", "src/pkg/b.py")
    assert git_state(tmp_path)["git.dirty_inputs"] == "src/pkg/a.py, src/pkg/b.py"


# train's figures from the committed dvc.lock (an AVX2-only CPU) and from the same commit rerun
# on an AVX-512 CPU (outputs/train/metrics.json of both).
AVX2 = {"val/best_loss": 0.11300048232078552, "calibration/temperature": 0.5659451484680176}
AVX512 = {"val/best_loss": 0.1130005419254303, "calibration/temperature": 0.5659452676773071}


def _replay(recorded: dict[str, float], replayed: dict[str, float], tolerance: float = 1e-3):
    from crackdet.tracking.replay import Replay

    rows = [(k, recorded[k], replayed.get(k)) for k in sorted(recorded)]
    return Replay("r1", "abc", rows, None, tolerance)


def test_replay_matches_another_cpus_last_digits_and_names_the_largest() -> None:
    same = _replay(AVX2, AVX2)
    assert same.report() == "MATCH: 2 metrics identical to run r1" and not same.mismatches
    other = _replay(AVX2, AVX512)
    assert not other.mismatches
    assert other.report().startswith(
        "MATCH within 0.001: 2 metrics of run r1, 2 not identical; largest difference "
        "calibration/temperature 0.5659451485 -> 0.5659452677 (1.19e-07)"
    )
    exact = _replay(AVX2, AVX512, tolerance=0.0)
    assert len(exact.mismatches) == 2 and exact.report().startswith("MISMATCH: 2 of 2")


def test_replay_mismatch_beyond_tolerance_missing_or_nan() -> None:
    flipped = _replay({"test/accuracy": 0.9598}, {"test/accuracy": 0.9598 + 1 / 224})
    assert flipped.report().splitlines()[0] == (
        "MISMATCH: 1 of 1 metrics differ by more than 0.001"
    )
    assert _replay({"test/f1": 0.9}, {}).report().splitlines()[-1].split() == [
        "test/f1",
        "0.9",
        "missing",
    ]
    nan = float("nan")
    assert _replay({"maps/precision": nan}, {"maps/precision": nan}).report().startswith("MATCH:")
    assert _replay({"maps/precision": nan}, {"maps/precision": 0.5}).mismatches


def test_replay_skips_time_figures_of_both_namings() -> None:
    from crackdet.tracking.replay import comparable_metrics

    logged = {"time/epoch_s": 1.0, "time/forward_passes": 3.0, "epoch_seconds": 1.0, "val/acc": 1.0}
    assert comparable_metrics(logged) == {"val/acc": 1.0}
