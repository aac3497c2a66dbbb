"""Fixtures of the ``team`` tests: one real PostgreSQL + S3 + ``mlflow server`` stack for all of
them (tests/team/servers.py), and environments for the processes that use it.

On a machine without PostgreSQL or moto the tests are skipped, except under CI (``CI`` set), where
a missing tool must fail rather than pass as a skip: ``.ci/run`` installs what they need.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require, run_cmd, tool_env
from tests.team.servers import TeamStack, missing_tools

# A dead or hung server fails a client in seconds instead of MLflow's default ~4 minutes.
FAST_FAILURE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


_STACK: list[TeamStack] = []


@pytest.fixture(scope="package")
def team_stack() -> Iterator[TeamStack]:
    """PostgreSQL, an S3 server and ``mlflow server`` on 127.0.0.1, shared by the team tests and
    stopped after them (not left idle, holding ~750 MB, while the rest of the suite runs)."""
    require(missing_tools())
    stack = TeamStack().start()
    _STACK.append(stack)
    print(f"team stack up in {stack.timings['total']:.1f} s: {stack.timings}")
    try:
        yield stack
    finally:
        _STACK.remove(stack)
        stack.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed team test's report ends with the servers' logs."""
    report = yield
    if report.failed and _STACK:
        report.sections.append(("team stack logs", _STACK[0].logs()))
    return report


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
