"""DVC's run-cache race between two queue workers, reproduced without the queue.

A second `dvc queue` worker looks a stage up in the run cache (`StageCache._load`) before running
it, while the first worker may be saving that stage's first entry (`StageCache.save`: a `.tmp`
file in the stage's folder, then a rename). `_load` takes the newest file in the folder: the
other worker's half-written `.tmp` (judged corrupt and deleted, so the saver fails with
`No such file or directory: …/.….tmp`) or nothing yet (`join() argument must be … not
'NoneType'`). treeverse/dvc#10673. This runs one saver and one looker-up process on a throwaway
repo, `cold` (every save is a stage's first) and `warm` (the entry exists already, as after
`dvc repro` + committed `dvc.lock`), and prints how many calls failed.

    python bench/infra/dvc_run_cache_race.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path


def _make_repo(root: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    (root / "in.txt").write_text("x\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: cp in.txt out.txt\n    deps: [in.txt]\n    outs: [out.txt]\n"
    )
    subprocess.run(["dvc", "repro", "-q"], cwd=root, check=True)


def _stage(root: Path):  # -> (dvc Repo, Stage), imported in the child process
    os.chdir(root)
    from dvc.repo import Repo

    repo = Repo(str(root))
    return repo, repo.stage.collect("s")[0]


def _saver(root: Path, rounds: int, cold: bool, go: mp.Queue, failures: mp.Queue) -> None:
    repo, stage = _stage(root)
    failed = Counter()
    for _ in range(rounds):
        if cold:  # the stage has never been cached: its folder is created by this save
            shutil.rmtree(repo.stage_cache.cache_dir, ignore_errors=True)
        go.put(True)
        try:
            repo.stage_cache.save(stage)
        except Exception as exc:  # counting DVC's failures is the point
            failed[f"save: {type(exc).__name__}"] += 1
    failures.put(failed)


def _looker(root: Path, rounds: int, go: mp.Queue, failures: mp.Queue) -> None:
    import logging

    logging.getLogger("dvc").setLevel(logging.ERROR)  # one 'corrupted cache file' line per round
    repo, stage = _stage(root)
    failed = Counter()
    for _ in range(rounds):
        go.get()
        for _ in range(20):
            try:
                repo.stage_cache._load(stage)
            except Exception as exc:
                failed[f"lookup: {type(exc).__name__}"] += 1
    failures.put(failed)


def race(rounds: int, cold: bool) -> Counter:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _make_repo(root)
        go, failures = mp.Queue(), mp.Queue()
        procs = [
            mp.Process(target=_saver, args=(root, rounds, cold, go, failures)),
            mp.Process(target=_looker, args=(root, rounds, go, failures)),
        ]
        for proc in procs:
            proc.start()
        total = failures.get() + failures.get()
        for proc in procs:
            proc.join()
        return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    for mode in ("cold", "warm"):
        failed = race(args.rounds, cold=mode == "cold")
        saves = failed.get("save: FileNotFoundError", 0)
        print(
            f"{mode}: {args.rounds} saves, {saves} failed; "
            f"{args.rounds * 20} lookups, {sum(failed.values()) - saves} failed  {dict(failed)}"
        )


if __name__ == "__main__":
    main()
