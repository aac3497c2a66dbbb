"""What tests (and the doc tooling in ``scripts/``) import; ``tests/conftest.py`` holds fixtures
only.

The everyday names are re-exported here (``from tests.helpers import make_repo, tiny_params_tree``):

- ``project``: ``PROJECT``, ``SHARED_DATA``, ``OZGENEL_4K``, ``BIN``, ``needs_real_sample``,
  ``in_ci``, ``require`` (skip here, fail under CI);
- ``params``: ``default_params_tree``, ``tiny_params_tree``, ``synthetic_source``,
  ``archive_source``;
- ``repo``: ``run_cmd``, ``tool_env``, ``make_repo`` (a real git + DVC repository in tmp).

The rest is imported from its module: ``file_server`` (a local HTTP server that misbehaves on
demand), ``browser`` (headless Chromium via Playwright), ``team_stack`` (PostgreSQL + S3 +
``mlflow server`` on 127.0.0.1) and ``team`` (a client's environment on that stack).
"""

from tests.helpers.params import (
    archive_source,
    default_params_tree,
    synthetic_source,
    tiny_params_tree,
)
from tests.helpers.project import (
    BIN,
    OZGENEL_4K,
    PROJECT,
    SHARED_DATA,
    in_ci,
    needs_real_sample,
    require,
)
from tests.helpers.repo import make_repo, run_cmd, tool_env

__all__ = [
    "BIN",
    "OZGENEL_4K",
    "PROJECT",
    "SHARED_DATA",
    "archive_source",
    "default_params_tree",
    "in_ci",
    "make_repo",
    "needs_real_sample",
    "require",
    "run_cmd",
    "synthetic_source",
    "tiny_params_tree",
    "tool_env",
]
