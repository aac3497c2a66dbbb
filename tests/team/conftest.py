"""Fixtures of the ``team`` tests: one real PostgreSQL + S3 + ``mlflow server`` stack for all of
them (tests/helpers/team_stack.py); the environments its clients use are in tests/helpers/team.py.

On a machine without PostgreSQL or moto the tests are skipped, except under CI (``CI`` set), where
a missing tool must fail rather than pass as a skip: ``.ci/run`` installs what they need.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.project import require
from tests.helpers.team_stack import TeamStack, missing_tools

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
