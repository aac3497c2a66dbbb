"""A two-node Ray cluster on 127.0.0.1 for tests and benches: a head and a worker node, one CPU
each, in a temp folder of their own.

    cluster = RayCluster(nodes=2).start()   # ~8 s on 2 cores
    cluster.address                          # 127.0.0.1:P, for --ray / RAY_ADDRESS
    cluster.kill_worker()                    # SIGKILL the worker node's raylet (a lost node)
    cluster.stop()                           # every process of this cluster killed, folder gone

``ray start`` daemonises its processes, so they are found by this cluster's temp folder in
their command lines (and their children: the worker processes), never by name: other Ray
clusters on the machine are left alone. Health checks are fast (0.5 s, 4 misses) so a lost
node is noticed in seconds, not the default ~15 s. Standard library only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers.team_stack import _processes, free_port

BIN = Path(sys.executable).parent
SRC = Path(__file__).resolve().parents[2] / "src"
FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4"}


def ray_missing() -> str | None:
    """Why a Ray cluster cannot run here (None: it can). Under CI=true a missing Ray is a
    failure of the set-up, not a reason to skip."""
    if importlib.util.find_spec("ray") is None or not (BIN / "ray").exists():
        return "ray is not installed (pip install '.[ray]'; make install does)"
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class RayCluster:
    def __init__(self, nodes: int = 2, fast_health: bool = True) -> None:
        """``fast_health``: a lost node noticed in ~2 s (tests that stop one); a bench that
        loads both cores for minutes keeps Ray's defaults, which a starved raylet cannot miss."""
        # Short: Ray's unix socket paths live under it (108 bytes at most).
        self.base = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))
        self.nodes = nodes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.worker_raylets: list[int] = []
        health = FAST_HEALTH if fast_health else {}
        self.env = {**os.environ, **health, "RAY_USAGE_STATS_ENABLED": "0"}
        # The workers import this checkout's crackdet, as the driver does.
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p
        )

    def _ray(self, *args: str) -> None:
        log = self.base / "start.log"
        with open(log, "ab") as handle:
            done = subprocess.run(
                [str(BIN / "ray"), "start", *args, "--disable-usage-stats"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
                timeout=120,
                check=False,
            )
        if done.returncode:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{log.read_text()[-3000:]}")

    def raylets(self) -> set[int]:
        return {pid for pid in self.pids() if "/raylet/raylet " in _cmdline(pid)}

    def pids(self) -> set[int]:
        """This cluster's processes: those naming its folder, and their descendants."""
        table = _processes()
        found = {pid for pid in table if str(self.base) in _cmdline(pid)}
        grew = True
        while grew:
            new = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
            found |= new
            grew = bool(new)
        return found - {os.getpid()}

    def start(self) -> RayCluster:
        try:
            self._ray(
                "--head",
                "--port",
                str(self.port),
                "--num-cpus",
                "1",
                "--temp-dir",
                str(self.base),
                "--include-dashboard=false",
                "--dashboard-port",
                str(free_port()),
            )
            head = self.raylets()
            for _ in range(self.nodes - 1):
                self._ray("--address", self.address, "--num-cpus", "1")
            self.worker_raylets = sorted(self.raylets() - head)
        except BaseException:
            self.stop()
            raise
        return self

    def kill_worker(self) -> None:
        """SIGKILL a worker node's raylet, as a lost machine would go."""
        os.kill(self.worker_raylets.pop(), signal.SIGKILL)

    def stop(self) -> None:
        for _ in range(3):  # processes started while killing are caught by the next pass
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        subprocess.run(["rm", "-rf", str(self.base)], check=False, timeout=60)
