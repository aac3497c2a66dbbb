"""A team's stack on 127.0.0.1 for tests: PostgreSQL + an S3-protocol server + ``mlflow server``.

    stack = TeamStack().start()   # ~20-30 s on 2 cores, most of it ``mlflow server`` importing
    stack.mlflow_uri              # http://127.0.0.1:P: all an MLflow client needs
    stack.s3_endpoint             # http://127.0.0.1:P: the bucket, for DVC and boto3
    stack.psql("select …")        # query the tracking database
    stack.s3_keys("mlflow/")      # list the bucket
    stack.stop()                  # every process tree killed, temp folder removed

- PostgreSQL is Debian's (``/usr/lib/postgresql/*/bin``): ``initdb`` into a temp folder, the
  postmaster in the foreground on a free port (``pg_ctl start`` would daemonise it out of reach).
  As root both refuse to run, so they run as the ``postgres`` system user the package creates.
- S3 is moto's server (``moto_server``, a subprocess): clients speak real S3 over HTTP to it.
  With ``CRACKDET_TEAM_S3_ENDPOINT`` and ``CRACKDET_TEAM_S3_BUCKET`` set (and the usual
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), the stack uses that store instead: a real
  MinIO or AWS S3 bucket, written only under a prefix of this session, deleted at stop.
- ``mlflow server`` stores runs in PostgreSQL (psycopg 3: SQLAlchemy 2.1's default driver for
  ``postgresql://``) and serves artifacts itself (``--artifacts-destination s3://…``), so only
  the server holds bucket credentials. One worker and no job runner: the defaults (4 workers and
  huey consumers) take 1.2 GB and 15 s more to start on 2 cores.
- Every server runs in its own session; stop kills the whole process tree (PostgreSQL backends
  call ``setsid()``, so the process group alone misses them), and children get
  ``PR_SET_PDEATHSIG`` so a killed test runner does not leave them behind.

Standard library and boto3 only: no crackdet import (``scripts/screenshots.py`` uses it too).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

MOTO_BUCKET = "crackdet-team"
# moto accepts any credentials; only the mlflow server and DVC get them, never MLflow clients.
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# A real S3-compatible store instead of moto (see the module docstring).
EXTERNAL_ENDPOINT = "CRACKDET_TEAM_S3_ENDPOINT"
EXTERNAL_BUCKET = "CRACKDET_TEAM_S3_BUCKET"
# Closed network: MLflow's telemetry and DVC's analytics would otherwise try to phone home.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
}
BIN = Path(sys.executable).parent


# A throwaway cluster's passwords (it listens on 127.0.0.1 only and is deleted afterwards).
PG_SUPERUSER_PASSWORD = "crackdet-test-superuser"
PG_PASSWORD = "crackdet-test-mlflow"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL server's binaries (Debian layout), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


def missing_tools() -> list[str]:
    """What this machine lacks to run the stack (empty: it can)."""
    missing = []
    if pg_bindir() is None:
        missing.append("PostgreSQL server (apt-get install postgresql)")
    if not (BIN / "moto_server").exists() and not os.environ.get(EXTERNAL_ENDPOINT):
        missing.append("moto_server (pip install '.[team]')")
    if importlib.util.find_spec("psycopg") is None:
        missing.append("psycopg (pip install '.[team]')")
    return missing


def _die_with_parent() -> None:
    """Runs in the child before exec (after the uid switch, which would clear it)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live, non-zombie process."""
    table = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        state, ppid, pgid = text[text.rfind(")") + 2 :].split()[:3]
        if state != "Z":
            table[int(stat.split("/")[2])] = (int(ppid), int(pgid))
    return table


def process_tree(leader: int) -> set[int]:
    """The process group of ``leader`` and every descendant of it."""
    table = _processes()
    found = {pid for pid, (_, pgid) in table.items() if pgid == leader}
    grew = True
    while grew:
        new = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= new
        grew = bool(new)
    return found


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path.name}: no log)"


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Server:
    """A server process in a session of its own, logging to a file."""

    def __init__(self, argv: list[str], log: Path, **popen: Any) -> None:
        self.log = log
        with open(log, "ab") as handle:
            self.process = subprocess.Popen(
                argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **popen,
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, ready: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{tail(self.log)}")
            time.sleep(0.1)

    def stop(self, first: signal.Signals = signal.SIGTERM, grace: float = 10.0) -> None:
        """Signal the group, then SIGKILL whatever of the tree is left after ``grace`` s."""
        leader = self.process.pid
        tracked = process_tree(leader) | {leader}
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, first)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.process.poll()
            tracked |= process_tree(leader)
            if not tracked & set(_processes()):
                break
            time.sleep(0.05)
        for pid in tracked & set(_processes()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


class TeamStack:
    """PostgreSQL, S3 and ``mlflow server`` in one temp folder (see the module docstring)."""

    def __init__(self) -> None:
        # Not under pytest's tmp folder: its 0700 parents would keep the postgres user out.
        self.base = Path(tempfile.mkdtemp(prefix="crackdet-team-"))
        self.servers: dict[str, Server] = {}
        self.timings: dict[str, float] = {}
        self.external = bool(os.environ.get(EXTERNAL_ENDPOINT))
        # Everything this session writes to the bucket is under this prefix.
        self.prefix = f"{self.base.name}/" if self.external else ""

    # PostgreSQL ----------------------------------------------------------------------------

    def start_postgres(self) -> None:
        started = time.monotonic()
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server: apt-get install postgresql")
        self.pg_port = free_port()
        folder = self.base / "pg"
        folder.mkdir()
        log = self.base / "postgres.log"
        log.touch()
        user = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            user = "postgres"
            owner = pwd.getpwnam(user)
            os.chmod(self.base, 0o711)
            os.chown(folder, owner.pw_uid, owner.pw_gid)
            os.chown(log, owner.pw_uid, -1)
        data = folder / "data"
        # Passwords over TCP, as on a team's server: the URI's role and password must be right.
        pwfile = folder / "superuser-password"
        pwfile.write_text(PG_SUPERUSER_PASSWORD)
        if user is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}"]
        initdb += ["--auth-local=trust", "--auth-host=scram-sha-256"]
        initdb += ["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        subprocess.run(initdb, check=True, capture_output=True, user=user, cwd=folder)
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(folder),
            # A throwaway test cluster: durability off makes it several times faster.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(self.pg_port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self.servers["postgres"] = server = Server(argv, log, user=user, cwd=folder)
        ready = [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.pg_port)]
        server.wait_until(lambda: subprocess.run(ready).returncode == 0, "postgres", 60)
        # docs/team.md's step 1: the role the server's URI names, and its database.
        host = ["-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres"]
        env = {**os.environ, "PGPASSWORD": PG_SUPERUSER_PASSWORD}
        role = f"CREATE ROLE mlflow LOGIN PASSWORD '{PG_PASSWORD}'"
        subprocess.run([str(bindir / "psql"), *host, "-q", "-c", role], check=True, env=env)
        createdb = [str(bindir / "createdb"), *host, "--owner", "mlflow", "mlflow"]
        subprocess.run(createdb, check=True, env=env)
        self.timings["postgres"] = time.monotonic() - started

    @property
    def pg_uri(self) -> str:
        return f"postgresql://mlflow:{PG_PASSWORD}@127.0.0.1:{self.pg_port}/mlflow"

    def psql(self, sql: str) -> list[list[str]]:
        """Rows of a query on the tracking database, as lists of strings (values may hold
        newlines: records and fields are split on ASCII's record and unit separators)."""
        bindir = pg_bindir()
        assert bindir is not None
        argv = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres"]
        argv += ["-d", "mlflow", "-At", "-F", "\x1f", "-R", "\x1e", "-c", sql]
        env = {**os.environ, "PGPASSWORD": PG_SUPERUSER_PASSWORD}
        out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
        out = out.removesuffix("\n")
        return [record.split("\x1f") for record in out.split("\x1e")] if out else []

    # S3 ------------------------------------------------------------------------------------

    def start_s3(self) -> None:
        started = time.monotonic()
        if self.external:
            self.bucket = os.environ[EXTERNAL_BUCKET]
            self.s3_endpoint = os.environ[EXTERNAL_ENDPOINT]
            self.s3_credentials = {
                key: os.environ[key]
                for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
                if key in os.environ
            }
            self.s3_keys()  # fails here, not in a test, when the bucket cannot be listed
        else:
            self.bucket, self.s3_credentials = MOTO_BUCKET, dict(MOTO_CREDENTIALS)
            port = free_port()
            self.s3_endpoint = f"http://127.0.0.1:{port}"
            argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
            self.servers["s3"] = server = Server(argv, self.base / "s3.log")
            ready = f"{self.s3_endpoint}/moto-api/"
            server.wait_until(lambda: http_ok(ready), "moto_server", 60)
            self.s3_client().create_bucket(Bucket=self.bucket)
        self.timings["s3"] = time.monotonic() - started

    def s3_url(self, path: str) -> str:
        """``s3://BUCKET/<this session's prefix><path>``."""
        return f"s3://{self.bucket}/{self.prefix}{path}"

    def s3_client(self) -> Any:
        import boto3  # ~0.5 s: only where the bucket is listed

        keys = self.s3_credentials
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"),
            region_name=keys.get("AWS_DEFAULT_REGION", "us-east-1"),
        )

    def s3_keys(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` (relative to this session's prefix), as given."""
        keys = []
        pages = self.s3_client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys += [item["Key"].removeprefix(self.prefix) for item in page.get("Contents", [])]
        return keys

    def _delete_session_objects(self) -> None:
        client = self.s3_client()
        for key in self.s3_keys():
            client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    # mlflow server -------------------------------------------------------------------------

    def start_mlflow(self, name: str = "mlflow", port: int | None = None) -> str:
        """Start an ``mlflow server`` on the database and bucket; return its URI. A second one
        (another ``name``) shares both: tests kill it without touching the first."""
        started = time.monotonic()
        port = port or free_port()
        argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", self.pg_uri]
        argv += ["--artifacts-destination", self.s3_url("mlflow"), "--serve-artifacts"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env.update(self.s3_credentials)
        env.update(QUIET_ENV)
        env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        self.servers[name] = server = Server(argv, self.base / f"{name}.log", env=env)
        uri = f"http://127.0.0.1:{port}"
        server.wait_until(lambda: http_ok(f"{uri}/health"), "mlflow server", 240)
        self.timings[name] = time.monotonic() - started
        if name == "mlflow":
            self.mlflow_uri = uri
        return uri

    def kill(self, name: str) -> None:
        """SIGKILL a server's whole tree at once, as a crash or an OOM kill would."""
        self.servers.pop(name).stop(first=signal.SIGKILL, grace=5)

    # all -----------------------------------------------------------------------------------

    def start(self) -> TeamStack:
        started = time.monotonic()
        try:
            self.start_postgres()
            self.start_s3()
            self.start_mlflow()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        # mlflow first (it holds database connections); postgres's fast shutdown is SIGINT.
        for name in [n for n in self.servers if n not in ("s3", "postgres")] + ["s3", "postgres"]:
            server = self.servers.pop(name, None)
            if server is not None:
                server.stop(signal.SIGINT if name == "postgres" else signal.SIGTERM)
        if self.external and hasattr(self, "bucket"):
            with contextlib.suppress(Exception):  # best effort: the store may be unreachable
                self._delete_session_objects()
        shutil.rmtree(self.base, ignore_errors=True)

    def logs(self) -> str:
        """The tail of every server's log (for a failure report)."""
        return "\n".join(f"--- {log.name}\n{tail(log)}" for log in sorted(self.base.glob("*.log")))

    def dvc_env(self) -> dict[str, str]:
        """What DVC needs besides the remote's URL and endpoint: the bucket's credentials."""
        return dict(self.s3_credentials)

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A client's environment: the tracking URI, no bucket credentials for MLflow."""
        env = {
            k: v
            for k, v in (base if base is not None else os.environ).items()
            if not k.startswith(("MLFLOW_", "AWS_"))
        }
        env.update(QUIET_ENV)
        env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        return env
