"""crackdet unchanged on a team's infrastructure: ``mlflow server`` on PostgreSQL with artifacts
in an S3 bucket (served through the server), and a DVC remote in the same bucket.

Everything is real and on 127.0.0.1: the session's stack (tests/team/conftest.py), a git + DVC
repository in tmp whose tiny pipeline logs to the server, its teammate's clone, and headless
Chromium on the server's UI and on the inspection report. Tests run in file order and share the
repository (a tiny pipeline costs ~1 min on 2 cores); the outage test comes last because its
clean rerun makes a new run of the checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from crackdet.data.sources.synthetic import write_patch_set
from tests.helpers import make_repo, require, run_cmd, tiny_params_tree
from tests.helpers.browser import MLFLOW_STORAGE, browser, check_page, missing_browser, screenshot
from tests.helpers.team import add_team_remote, team_env
from tests.helpers.team_stack import TeamStack

pytestmark = [pytest.mark.team, pytest.mark.slow]

NAME = "crack-classifier"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature and graph cache for the repository, its queued experiments and the clone."""
    return tmp_path_factory.mktemp("team-cache")


@pytest.fixture(scope="module")
def repo(team_stack: TeamStack, tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """The tiny pipeline run against the team's server, its data and outputs pushed to the
    team's DVC remote, committed."""
    # Minimum gates off: 8 test images say little; the gates are tested elsewhere.
    tree = tiny_params_tree(**{"promote.min_accuracy": 0.0, "promote.min_f1": 0.0})
    path = make_repo(tmp_path_factory.mktemp("team") / "repo", tree, n_photos=2)
    prefix = add_team_remote(path, team_stack)
    (path.parent / "dvc-prefix").write_text(prefix)
    run_cmd(["git", "commit", "-qam", "DVC remote: the team's bucket"], path)
    env = env_for(team_stack, path, cache)
    run_cmd(["dvc", "push", "-q"], path, env)
    run_cmd(["dvc", "repro"], path, env)
    run_cmd(["git", "add", "-A"], path)
    run_cmd(["git", "commit", "-q", "-m", "pipeline run on the team server"], path)
    run_cmd(["dvc", "push", "-q"], path, env)
    return path


def env_for(stack: TeamStack, repo: Path, cache: Path, **extra: str) -> dict[str, str]:
    return team_env(stack, repo, CRACKDET_CACHE=str(cache), **extra)


def crackdet(stack: TeamStack, repo: Path, cache: Path, *args: str) -> str:
    return run_cmd(["crackdet", *args], repo, env_for(stack, repo, cache)).stdout


def run_id_of(repo: Path) -> str:
    return json.loads((repo / "outputs/train/run.json").read_text())["run_id"]


def experiment_id(stack: TeamStack, name: str) -> str:
    rows = stack.psql(f"select experiment_id from experiments where name = '{name}'")
    assert len(rows) == 1, rows
    return rows[0][0]


def promotion_log(stack: TeamStack) -> list[dict]:
    rows = stack.psql(
        f"select value from registered_model_tags where name = '{NAME}' "
        "and key like 'promotion_log.%'"
    )
    return sorted((json.loads(v) for (v,) in rows), key=lambda e: e["seq"])


def descriptions(stack: TeamStack) -> tuple[dict[str, str], str]:
    """The versions' descriptions by number, and the registered model's."""
    versions = stack.psql(f"select version, description from model_versions where name = '{NAME}'")
    model = stack.psql(f"select description from registered_models where name = '{NAME}'")
    return {v: d for v, d in versions}, model[0][0]


# --- the pipeline's records land in PostgreSQL and the bucket -------------------------------


def test_pipeline_lands_in_postgres_and_the_bucket(team_stack: TeamStack, repo: Path) -> None:
    run_id = run_id_of(repo)
    exp = experiment_id(team_stack, "crackdet")
    assert team_stack.psql(
        f"select status, experiment_id from runs where run_uuid = '{run_id}'"
    ) == [["FINISHED", exp]]
    kind = team_stack.psql(
        f"select value from experiment_tags where experiment_id = {exp} "
        "and key = 'mlflow.experimentKind'"
    )
    assert kind == [["custom_model_development"]]
    metrics = {
        k for (k,) in team_stack.psql(f"select key from latest_metrics where run_uuid = '{run_id}'")
    }
    assert {
        "val/acc",
        "test/accuracy",
        "test/accuracy_ci95_low",
        "predict/mean_crack_fraction",
    } <= metrics
    steps = team_stack.psql(
        f"select step from metrics where run_uuid = '{run_id}' and key = 'val/acc'"
    )
    assert sorted(int(s) for (s,) in steps) == [1, 2]
    params = dict(team_stack.psql(f"select key, value from params where run_uuid = '{run_id}'"))
    assert params["train.epochs"] == "2" and params["predict.overlap"] == "0.5"
    assert team_stack.psql("select count(*) from inputs") != [["0"]]
    # The bucket holds the run's artifacts and its pt2 model (the server put them there).
    keys = team_stack.s3_keys(f"mlflow/{exp}/")
    run_keys = {k.split(f"{run_id}/artifacts/", 1)[1] for k in keys if f"{run_id}/artifacts/" in k}
    assert {"predict_samples/photo_01_overlay.jpg", "predict_samples/index.html"} <= run_keys
    assert {"train/model.json", "evaluate/metrics.json", "promotions/000001.json"} <= run_keys
    models = [k for k in keys if "/models/m-" in k and k.endswith("/artifacts/data/model.pt2")]
    source = team_stack.psql(
        f"select source from model_versions where name = '{NAME}' and version = 1"
    )
    assert len(models) == 1 and source[0][0].startswith("models:/m-")
    assert source[0][0].removeprefix("models:/") in models[0]
    # The DVC remote holds the photos and every stage's outputs.
    prefix = (repo.parent / "dvc-prefix").read_text()
    stored = team_stack.s3_keys(f"{prefix}/files/md5/")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    model_md5 = next(
        o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"].endswith("model.pt")
    )
    assert f"{prefix}/files/md5/{model_md5[:2]}/{model_md5[2:]}" in stored


def test_a_second_and_third_clone_are_up_to_date_after_dvc_pull(
    team_stack: TeamStack, repo: Path, tmp_path: Path
) -> None:
    """What a teammate does first: clone, ``dvc pull``, ``dvc repro``. Every output is in git or
    in the remote, so nothing reruns, and the registry gets no new version; twice, as a second
    and a third teammate would."""
    versions = f"select count(*) from model_versions where name = '{NAME}'"
    before = team_stack.psql(versions)
    for teammate in ("second", "third"):
        clone = tmp_path / teammate
        run_cmd(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
        env = env_for(team_stack, clone, tmp_path / f"{teammate}-cache")
        run_cmd(["dvc", "pull", "-q"], clone, env)
        assert sorted(p.name for p in (clone / "outputs/evaluate/plots").iterdir())
        repro = run_cmd(["dvc", "repro"], clone, env)
        assert "Running stage" not in repro.stdout, repro.stdout
        assert "Data and pipelines are up to date." in repro.stdout, repro.stdout
        assert run_cmd(["git", "status", "--porcelain"], clone).stdout == ""
        assert team_stack.psql(versions) == before, teammate


def test_version_description_and_promotion_log_in_the_registry(
    team_stack: TeamStack, repo: Path, cache: Path
) -> None:
    run_id = run_id_of(repo)
    versions, model = descriptions(team_stack)
    card = versions["1"]
    figures = json.loads((repo / "outputs/evaluate/metrics.json").read_text())
    assert f"**{figures['accuracy']:.4f}** (95 % CI {figures['accuracy_ci95_low']:.4f}" in card
    summary = json.loads((repo / "outputs/fetch/summary.json").read_text())
    assert summary["manifest_sha256"] in card and "grouped" in card
    head = run_cmd(["git", "rev-parse", "HEAD~1"], repo).stdout.strip()
    assert f"`{head}`" in card
    assert f"crackdet reproduce {run_id}" in card
    assert "| 1 |" in model and "`champion`" in model and "none → v1" in model
    # A manual move appears in the table too; the JSON tags stay what tools read.
    crackdet(team_stack, repo, cache, "promote", "1", "--alias", "challenger", "--reason", "a | b")
    _, model = descriptions(team_stack)
    assert "| 2 |" in model and "a \\| b" in model
    assert [e["seq"] for e in promotion_log(team_stack)] == [1, 2]
    trace = crackdet(team_stack, repo, cache, "trace", f"models:/{NAME}@champion")
    assert run_id in trace and head in trace


def test_eval_runs_land_in_their_own_experiment(
    team_stack: TeamStack, repo: Path, cache: Path, tmp_path: Path
) -> None:
    write_patch_set(tmp_path / "other" / "set", 6, seed=5)
    archive = shutil.make_archive(str(tmp_path / "other-set"), "zip", tmp_path / "other")
    crackdet(team_stack, repo, cache, "eval", archive, "--model", "outputs/train")
    exp = experiment_id(team_stack, "crackdet-evaluations")
    rows = team_stack.psql(
        "select r.status, r.end_time - r.start_time from runs r "
        "join tags t on t.run_uuid = r.run_uuid "
        f"where r.experiment_id = {exp} and t.key = 'crackdet.stage' and t.value = 'eval'"
    )
    assert len(rows) == 1 and rows[0][0] == "FINISHED"
    assert int(rows[0][1]) > 0
    pipeline = experiment_id(team_stack, "crackdet")
    assert team_stack.psql(f"select count(*) from runs where experiment_id = {pipeline}") == [["1"]]


def test_predict_with_the_registry_model_writes_a_report(
    team_stack: TeamStack, repo: Path, cache: Path, tmp_path: Path
) -> None:
    """Only MLFLOW_TRACKING_URI: the model comes from the bucket through the server. (Resuming
    a folder is tested in tests/test_predict.py and tests/test_pipeline.py.)"""
    out = tmp_path / "maps"
    env = team_stack.client_env(env_for(team_stack, repo, cache))
    args = ["crackdet", "predict", "data/photos", "--model", f"models:/{NAME}@champion"]
    first = run_cmd([*args, "--out", str(out)], repo, env).stdout
    assert "2 of 2 photos mapped" in first
    record = json.loads((out / "photo_01.json").read_text())
    assert record["model"] == f"{NAME} v1 (@champion)"
    assert len(record["made_from"]["model"]) == 64  # the pt2 file's sha256
    require(missing_browser())
    with browser() as chrome:
        check = check_page(chrome, (out / "index.html").as_uri())
    assert check.problems == [] and check.images == 2


def test_the_ui_opens_on_training_runs_and_shows_the_registry(
    team_stack: TeamStack, repo: Path, tmp_path: Path
) -> None:
    require(missing_browser())
    exp = experiment_id(team_stack, "crackdet")
    run_name = team_stack.psql(f"select name from runs where run_uuid = '{run_id_of(repo)}'")[0][0]
    base = team_stack.mlflow_uri
    with browser() as chrome:
        # The URL form docs/team.md gives: the "Model training" view, no stored preference.
        url = screenshot(
            chrome,
            f"{base}/#/experiments/{exp}?workflowType=machine_learning",
            tmp_path / "runs.png",
            run_name,
        )
        assert f"/experiments/{exp}/runs" in url
        screenshot(
            chrome,
            f"{base}/#/models/{NAME}/versions/1",
            tmp_path / "version.png",
            "95 % CI",
            MLFLOW_STORAGE,
        )
        screenshot(
            chrome,
            f"{base}/#/models/{NAME}",
            tmp_path / "model.png",
            "Promotion log",
            MLFLOW_STORAGE,
        )
    for name in ("runs", "version", "model"):
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000


# --- parallel experiments, a teammate's clone, an outage ------------------------------------


def test_two_queued_experiments_in_parallel_lose_nothing(
    team_stack: TeamStack, repo: Path, cache: Path
) -> None:
    """Train and evaluate of two experiments at once, two workers: both runs whole, both
    versions registered and described, every alias move in the log. (predict_samples, which
    only adds artifacts to the run, is left out to save a minute.)"""
    env = env_for(team_stack, repo, cache)
    before = {
        v for (v,) in team_stack.psql(f"select version from model_versions where name = '{NAME}'")
    }
    lrs = {"0.002", "0.003"}
    for lr in sorted(lrs):
        run_cmd(["dvc", "exp", "run", "--queue", "evaluate", "-S", f"train.lr={lr}"], repo, env)
    run_cmd(["dvc", "queue", "start", "-j", "2"], repo, env)
    deadline = time.monotonic() + 900
    while True:
        table = run_cmd(["dvc", "queue", "status"], repo, env).stdout
        done = table.count("Success") + table.count("Failed")
        if done >= 2 and not any(w in table for w in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, table
        time.sleep(2)
    assert table.count("Success") == 2, table
    for lr in lrs:
        rows = team_stack.psql(
            "select r.run_uuid, r.status from runs r join params p on p.run_uuid = r.run_uuid "
            f"where p.key = 'train.lr' and p.value = '{lr}'"
        )
        assert len(rows) == 1 and rows[0][1] == "FINISHED", rows
        metrics = team_stack.psql(f"select key from latest_metrics where run_uuid = '{rows[0][0]}'")
        assert {"val/best_acc", "test/f1", "test/accuracy_ci95_high"} <= {k for (k,) in metrics}
    versions = {
        v for (v,) in team_stack.psql(f"select version from model_versions where name = '{NAME}'")
    }
    new = versions - before
    assert len(new) == 2
    described, _ = descriptions(team_stack)
    assert all("95 % CI" in described[v] for v in new)
    log = promotion_log(team_stack)
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    assert {str(e["to"]) for e in log} >= new  # each new version got its alias move
    locks = team_stack.psql("select count(*) from registered_models where name like '%lock'")
    assert locks == [["0"]]


def test_a_teammates_clone_reproduces_from_the_shared_remote_and_passes_ci_check(
    team_stack: TeamStack, repo: Path, cache: Path, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    run_cmd(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    env = env_for(team_stack, clone, cache)
    run_id = run_id_of(repo)
    # Nothing in the clone's DVC cache: reproduce pulls the run's data from the team remote.
    replay = run_cmd(["crackdet", "reproduce", run_id], clone, env)
    assert "MATCH:" in replay.stdout, replay.stdout
    run_cmd(["dvc", "pull", "-q"], clone, env)
    tree = yaml.safe_load((clone / "params.yaml").read_text())
    tree["predict"]["overlap"] = 0.25
    (clone / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    run_cmd(["git", "commit", "-qam", "finer maps"], clone)
    check = run_cmd(["crackdet", "ci-check", "--base", "HEAD~1"], clone, env)
    assert "ci-check: PASS" in check.stdout
    # predict_samples found the run of the pulled checkpoint in the server by its digest.
    tags = dict(team_stack.psql(f"select key, value from tags where run_uuid = '{run_id}'"))
    assert tags["params.predict.overlap"] == "0.25"


def test_server_killed_mid_run_is_one_line_and_a_clean_rerun(
    team_stack: TeamStack, repo: Path, cache: Path
) -> None:
    """A second server on the same database and bucket is SIGKILLed while train logs to it."""
    doomed = team_stack.start_mlflow("doomed")
    model = (repo / "outputs/train/model.pt").read_bytes()
    stage = [sys.executable, "-m", "crackdet.stages.train"]
    env = env_for(team_stack, repo, cache, MLFLOW_TRACKING_URI=doomed)
    proc = subprocess.Popen(
        stage, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not (
            running := team_stack.psql(
                "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
                f"where r.status = 'RUNNING' and t.key = 'crackdet.pid' and t.value = '{proc.pid}'"
            )
        ):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        team_stack.kill("doomed")
        killed_at = time.monotonic()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(f"crackdet train: error: MLflow server {doomed}: unreachable ("), (
        err
    )
    assert f"; run {running[0][0]} stays RUNNING there until the next run start" in lines[-1], (
        lines[-1]
    )
    assert "Traceback" not in err
    assert time.monotonic() - killed_at < 120
    assert (repo / "outputs/train/model.pt").read_bytes() == model  # nothing half-written
    lost = running[0][0]
    # The clean rerun, on the team's server: the lost run is marked KILLED, not left RUNNING.
    rerun = run_cmd(stage, repo, env_for(team_stack, repo, cache))
    assert f"MLflow run {lost} was left RUNNING by a killed process: marked KILLED" in rerun.stdout
    assert team_stack.psql(f"select status from runs where run_uuid = '{lost}'") == [["KILLED"]]
    assert team_stack.psql(f"select status from runs where run_uuid = '{run_id_of(repo)}'") == [
        ["FINISHED"]
    ]
    assert (repo / "outputs/train/model.pt").read_bytes() == model


def test_parallel_first_use_creates_one_experiment(team_stack: TeamStack, tmp_path: Path) -> None:
    """Three processes open a new experiment at once on the server: one creates it, the others
    get RESOURCE_ALREADY_EXISTS and use it; all report the same id."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    start = time.time() + 8  # after every process has imported MLflow
    code = (
        "import sys, time; from pathlib import Path; import mlflow\n"
        "from crackdet.tracking.store import init_store\n"
        f"time.sleep(max(0, {start} - time.time()))\n"
        f"print(init_store(Path('.'), {name!r}))\n"
    )
    env = team_env(team_stack)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    ids = {out.strip() for out, _ in results}
    assert ids == {experiment_id(team_stack, name)}
