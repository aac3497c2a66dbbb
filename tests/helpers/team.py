"""A crackdet user's view of the team stack (tests/helpers/team_stack.py): the environment its
processes run with and a DVC remote on its bucket."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.helpers.repo import run_cmd, tool_env
from tests.helpers.team_stack import TeamStack

# A dead or hung server fails a client in seconds instead of MLflow's default ~4 minutes.
FAST_FAILURE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def team_env(stack: TeamStack, repo: Path | None = None, **extra: str) -> dict[str, str]:
    """A crackdet user's environment on the team stack: the tracking URI for MLflow (no bucket
    credentials: artifacts go through the server) and the bucket's credentials for DVC."""
    env = stack.client_env(tool_env())
    env.update(FAST_FAILURE)
    env.update(stack.dvc_env())
    if repo is not None:
        # The repository's own src/: the code its commits record is the code that runs.
        env["PYTHONPATH"] = str(repo / "src")
    env.update(extra)
    return env


def add_team_remote(repo: Path, stack: TeamStack) -> str:
    """Point the repository's DVC at a prefix of the stack's bucket, as a team's ``.dvc/config``
    names its MinIO (the endpoint is committed; credentials stay in the environment). Returns
    the prefix."""
    prefix = f"dvc-{uuid.uuid4().hex[:8]}"
    env = team_env(stack)
    run_cmd(["dvc", "remote", "add", "-d", "-f", "team", stack.s3_url(prefix)], repo, env)
    run_cmd(["dvc", "remote", "modify", "team", "endpointurl", stack.s3_endpoint], repo, env)
    return prefix
