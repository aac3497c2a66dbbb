"""The team stack's costs: start-up of PostgreSQL, S3 (moto) and ``mlflow server``, the server's
memory, and how long an MLflow client takes to give up on a dead server.

    python bench/infra/team_stack.py                   # timings, memory, give-up with fast retries
    python bench/infra/team_stack.py --default-retries # also MLflow's default retry budget (~4 min)

Uses tests/helpers/team_stack.py, as the team tests do (docs/team.md quotes these figures).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))  # run as `python bench/infra/team_stack.py` from the root

from tests.helpers.team_stack import TeamStack, free_port, process_tree  # noqa: E402

# A client that asks a server for something once: how long until it gives up.
CLIENT = (
    "import sys, time, mlflow\n"
    "client = mlflow.MlflowClient(sys.argv[1])\n"
    "started = time.monotonic()\n"
    "try:\n"
    "    client.search_experiments()\n"
    "except Exception:\n"
    "    print(f'{time.monotonic() - started:.1f}')\n"
)


def rss_mb(leader: int) -> float:
    """Resident memory of a process tree, in MB (shared pages counted once per process)."""
    total = 0
    for pid in process_tree(leader) | {leader}:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def give_up_seconds(env: dict[str, str]) -> str:
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, dead], env=env, capture_output=True, text=True, timeout=900
    )
    return result.stdout.strip() or f"no failure? {result.stderr[-200:]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--default-retries", action="store_true", help="also wait ~4 minutes")
    args = parser.parse_args()
    stack = TeamStack()
    started = time.monotonic()
    stack.start()
    print(f"stack up in {time.monotonic() - started:.1f} s: " + ", ".join(
        f"{k} {v:.1f} s" for k, v in stack.timings.items()
    ))  # fmt: skip
    for name, server in stack.servers.items():
        print(f"{name}: {rss_mb(server.process.pid):.0f} MB resident")
    restarted = time.monotonic()
    stack.servers.pop("mlflow").stop()
    stack.start_mlflow()
    print(f"mlflow server restart on the migrated database: {time.monotonic() - restarted:.1f} s")
    stopped = time.monotonic()
    env = stack.client_env()
    stack.stop()
    print(f"stack down in {time.monotonic() - stopped:.1f} s")
    fast = {
        **env,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    print(f"dead server, MAX_RETRIES=2 BACKOFF_FACTOR=1: gave up after {give_up_seconds(fast)} s")
    if args.default_retries:
        print(f"dead server, MLflow's defaults: gave up after {give_up_seconds(env)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
