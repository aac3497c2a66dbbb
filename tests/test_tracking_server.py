"""A tracking server that does not answer: one line naming it, fast, and no run left ending
silently; experiments created once and tagged with their kind. The outage of a real server
mid-run is in tests/team/test_team.py; here the "server" is a closed port on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from crackdet.cli.main import main
from crackdet.core.errors import CrackdetError
from crackdet.tracking.runs import ending, start_evaluation_run, start_pipeline_run
from crackdet.tracking.store import (
    EVALUATIONS,
    EXPERIMENT_NAME,
    KIND,
    KIND_TAG,
    init_store,
    server_unreachable,
)

# MLflow's messages when urllib3 gives up, as a dead, reset and hung server produce them.
REFUSED = (
    "API request to http://127.0.0.1:57679/api/2.0/mlflow/runs/log-metric failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=57679): Max retries exceeded with url: "
    '/api/2.0/mlflow/runs/log-metric (Caused by NewConnectionError("HTTPConnection(host='
    "'127.0.0.1', port=57679): Failed to establish a new connection: [Errno 111] Connection "
    'refused"))'
)
RESET = REFUSED.replace(
    "NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=57679): Failed to establish a "
    'new connection: [Errno 111] Connection refused")',
    "ProtocolError('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))",
)
HUNG = REFUSED.split(" (Caused by ")[0] + (
    " (Caused by ReadTimeoutError(\"HTTPConnectionPool(host='127.0.0.1', port=57679): Read timed "
    'out. (read timeout=3)"))'
)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (REFUSED, "connection refused"),
        (RESET, "connection reset"),
        (HUNG, "no answer within MLFLOW_HTTP_REQUEST_TIMEOUT"),
    ],
)
def test_unreachable_server_is_one_line_naming_it(message: str, reason: str) -> None:
    error = server_unreachable(Exception(message), "logging run 3f2a")
    assert error is not None
    text = str(error)
    assert text.startswith(f"MLflow server http://127.0.0.1:57679: unreachable ({reason})")
    assert "while logging run 3f2a; start the server or fix MLFLOW_TRACKING_URI" in text
    assert "\n" not in text


def test_other_errors_are_not_taken_for_an_outage() -> None:
    assert server_unreachable(Exception("RESOURCE_DOES_NOT_EXIST: Run 'x' not found")) is None
    assert server_unreachable(ValueError("Max retry count")) is None


def test_credentials_in_the_uri_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cret@mlflow.example:8443/")
    error = server_unreachable(Exception("Max retries exceeded with url: /api (Caused by x)"))
    assert "MLflow server https://mlflow.example:8443: unreachable" in str(error)
    assert "s3cret" not in str(error) and "alice" not in str(error)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: nobody listens


def test_a_command_against_a_dead_server_fails_in_one_line_at_once(
    chdir_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    port = closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (chdir_tmp / "dvc.yaml").write_text("stages: {}\n")
    started = time.monotonic()
    assert main(["models"]) == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"crackdet models: error: MLflow server http://127.0.0.1:{port}: unreachable "
        "(connection refused)"
    )
    with pytest.raises(CrackdetError, match=rf"127.0.0.1:{port}: unreachable.*while opening"):
        start_pipeline_run(chdir_tmp)


@pytest.mark.parametrize("target", ["0123456789abcdef", "models:/crack-classifier@champion"])
def test_trace_against_a_dead_server_says_unreachable_not_missing(
    chdir_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, target: str
) -> None:
    """A run that cannot be looked up because nobody answers is not "not found"."""
    port = closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (chdir_tmp / "dvc.yaml").write_text("stages: {}\n")
    assert main(["trace", target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"crackdet trace: error: MLflow server http://127.0.0.1:{port}: unreachable "
        f"(connection refused) while looking up {target}"
    )
    assert "not found" not in err[0]


def test_a_run_whose_server_vanishes_ends_failed_in_one_line(chdir_tmp: Path) -> None:
    """``ending``: MLflow's error for a lost server becomes the one line; the run is ended
    (here the store still answers, so it is marked FAILED) and no run is left active."""
    import mlflow

    run = start_evaluation_run(chdir_tmp, "eval", "lost")
    lost = rf"unreachable \(connection refused\) while logging run {run.info.run_id}; run "
    with pytest.raises(CrackdetError, match=lost + r"\w+ is marked FAILED; start the"), ending(run):
        raise mlflow.exceptions.MlflowException(REFUSED)
    assert mlflow.active_run() is None
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"


def test_a_lost_server_line_made_inside_the_run_says_what_became_of_it(chdir_tmp: Path) -> None:
    run = start_evaluation_run(chdir_tmp, "eval", "lost inside")
    inner = server_unreachable(Exception(REFUSED), "opening experiment x")
    assert inner is not None
    with pytest.raises(CrackdetError) as raised, ending(run):
        raise inner
    text = str(raised.value)
    assert f"while opening experiment x; run {run.info.run_id} is marked FAILED; start the" in text
    assert "\n" not in text


@pytest.mark.parametrize("inside", [None, ValueError("not the server")])
def test_a_server_lost_when_the_run_is_ended_is_one_line(
    chdir_tmp: Path, monkeypatch: pytest.MonkeyPatch, inside: Exception | None
) -> None:
    """The work (or another error) is done when the server goes: ending the run is the call
    that finds it gone, and the line says the run stays RUNNING there."""
    import mlflow

    run = start_evaluation_run(chdir_tmp, "eval", "lost at the end")

    def refused(*_: object, **__: object) -> None:
        raise mlflow.exceptions.MlflowException(REFUSED)

    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", refused)
    stays = rf"while logging run {run.info.run_id}; run \w+ stays RUNNING there until the next"
    with pytest.raises(CrackdetError, match=stays), ending(run):
        if inside is not None:
            raise inside
    assert mlflow.active_run() is None


def test_experiments_are_created_once_with_their_kind(chdir_tmp: Path) -> None:
    import mlflow

    first = init_store(chdir_tmp)
    evaluations = init_store(chdir_tmp, EVALUATIONS)
    assert init_store(chdir_tmp) == first != evaluations
    client = mlflow.MlflowClient()
    for name in (EXPERIMENT_NAME, EVALUATIONS):
        assert client.get_experiment_by_name(name).tags[KIND_TAG] == KIND
    # An experiment made before crackdet tagged them gets the tag when next opened.
    client.delete_experiment_tag(first, KIND_TAG)
    init_store(chdir_tmp)
    assert client.get_experiment(first).tags[KIND_TAG] == KIND


DOWNLOAD = """
import sys, tempfile
from pathlib import Path
import crackdet.tracking.store  # what every crackdet command and stage imports before MLflow
import mlflow
tmp = Path(tempfile.mkdtemp(dir=sys.argv[1]))
mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
exp = mlflow.create_experiment("x", artifact_location=str(tmp / "artifacts"))
with mlflow.start_run(experiment_id=exp) as run:
    for i in range(3):
        (tmp / f"f{i}.txt").write_text("x" * 1000)
        mlflow.log_artifact(str(tmp / f"f{i}.txt"), "d")
print("-- download --", file=sys.stderr, flush=True)
mlflow.artifacts.download_artifacts(
    run_id=run.info.run_id, artifact_path="d", dst_path=str(tmp / "o")
)
"""


def test_no_mlflow_download_bar_in_logs(tmp_path: Path) -> None:
    """MLflow's tqdm bar ("Downloading artifacts: 33%|███▎ …") stays out of crackdet's logs."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    done = subprocess.run(
        [sys.executable, "-c", DOWNLOAD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    after = done.stderr.split("-- download --", 1)[1]
    assert "Downloading artifacts" not in after and "%|" not in after, after
    assert len(list(tmp_path.glob("*/o/d/f*.txt"))) == 3
