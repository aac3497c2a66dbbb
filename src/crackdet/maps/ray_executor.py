"""A Ray Data executor for the photo loop (:class:`crackdet.maps.mapping.Executor`).

Photos flow through Ray Data: the items (small: a path or URI and an output stem) are split
into blocks, mapped in an ``ActorPoolStrategy`` pool whose actors each hold one copy of the
per-photo work (a :class:`~crackdet.maps.mapping.PhotoWork` prepares its model once per actor),
and each actor writes the photo's outputs itself. Only the small per-photo outcomes come back
to the driver, as the streaming executor produces them: its backpressure keeps the blocks in
flight, and so memory, bounded whatever the number of photos.

It lives in the maps layer beside :class:`~crackdet.maps.mapping.Sequential` because it is the
same seam: it knows nothing of models, stores or tracking, only how to run a picklable
per-photo function. Ray is an optional extra (``pip install '.[ray]'``), imported only here
and only when a cluster is asked for.

Fault tolerance is Ray's: the pool's actors restart and their tasks are retried when a worker
process or node dies (Ray Data's defaults for actor pools), so a lost node costs time, not
photos; outputs are written atomically and a photo's JSON last, so a retried photo's
half-written outputs are redone.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from crackdet.core.errors import CrackdetError

Item = TypeVar("Item")
Result = TypeVar("Result")

# Blocks per worker at most: a block is the unit a lost worker redoes, and each one costs the
# scheduler a little; a few thousand blocks keep both small for any campaign size.
BLOCKS_PER_WORKER = 64
CONNECT_TIMEOUT_S = 5.0


def ray_available() -> bool:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def connect(address: str, env: dict[str, str] | None = None) -> None:
    """Join the Ray cluster at ``address`` (``host:port`` of its head, ``ray://…``, ``auto``
    for the one running on this machine, ``local`` to start one in this process); one line
    when Ray is missing or the cluster cannot be reached. ``env``: variables the workers get
    (the store's endpoint and credentials, as the driver has them)."""
    if not ray_available():
        raise CrackdetError(
            f"--ray {address}: Ray is not installed; pip install 'crackdet[ray]' "
            "(ray[data]) or leave out --ray"
        )
    import ray  # the optional extra, ~2 s to import: only when a cluster is asked for

    if ray.is_initialized():
        return
    if address not in ("auto", "local") and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), CONNECT_TIMEOUT_S):
                pass
        except (OSError, ValueError) as exc:
            raise CrackdetError(
                f"--ray {address}: no Ray cluster answers there ({exc}); start one "
                "(ray start --head) or check the address (host:port of the head's GCS)"
            ) from None
    try:
        ray.init(
            address=None if address == "local" else address,
            log_to_driver=False,
            configure_logging=False,
            include_dashboard=False,
            runtime_env={"env_vars": env} if env else None,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CrackdetError(f"--ray {address}: cannot join the Ray cluster: {line}") from None


def cluster_cpus() -> int:
    import ray  # the optional extra: only when a cluster is asked for

    return int(ray.cluster_resources().get("CPU", 1))


class _Worker:
    """One actor of the pool: holds the per-photo work (and so its prepared model)."""

    def __init__(self, work: bytes) -> None:
        self.work = pickle.loads(work)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        item = pickle.loads(row["item"])
        return {"index": row["index"], "result": pickle.dumps(self.work(item))}


class RayData:
    """Runs the per-photo work in a pool of ``workers`` Ray actors (default: one per CPU of
    the cluster), ``cpus`` CPUs each; yields the results in the items' order."""

    def __init__(self, workers: int | None = None, cpus: float = 1.0) -> None:
        self.workers = workers
        self.cpus = cpus

    def map(self, work: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        import ray.data  # the optional extra: only when a cluster is asked for

        items = list(items)
        if not items:
            return
        workers = self.workers or max(1, int(cluster_cpus() // self.cpus))
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        rows = [{"index": i, "item": pickle.dumps(item)} for i, item in enumerate(items)]
        blocks = min(len(rows), workers * BLOCKS_PER_WORKER)
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map(
            _Worker,
            fn_constructor_args=(pickle.dumps(work),),
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(rows))),
            num_cpus=self.cpus,
        )
        for row in dataset.iter_rows():
            yield pickle.loads(row["result"])
