"""The screenshots in docs/: MLflow's UI on a store crackdet filled, and an inspection report.

Builds a throwaway git + DVC repository (a small synthetic pipeline: the default params with
fewer patches and epochs, four rendered 1200x900 photos), runs what a user runs (``dvc repro``,
an experiment with another learning rate, ``crackdet eval``, ``crackdet predict`` with the
registry's champion), starts ``mlflow ui`` on that repository's store (SQLite, the default
set-up) and photographs it in headless Chromium, with the URLs docs/team.md gives:

    docs/mlflow-runs.png      the experiment, opened on its training runs
    docs/mlflow-version.png   a registered version's description
    docs/mlflow-model.png     the registered model: the promotion log as a table
    docs/report.png           crackdet predict's index.html

    python scripts/screenshots.py --out docs        # make screenshots; ~8 min on 2 busy cores

Needs the ``team`` extras (Playwright) and Debian's ``chromium`` (as .ci/run installs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))  # run as `python scripts/screenshots.py` from the root

from crackdet.data.sources.synthetic import write_patch_set  # noqa: E402
from tests.helpers import BIN, make_repo, run_cmd, tiny_params_tree, tool_env  # noqa: E402
from tests.helpers.browser import MLFLOW_STORAGE, browser, missing_browser, screenshot  # noqa: E402
from tests.helpers.team_stack import Server, free_port, http_ok  # noqa: E402

NAME = "crack-classifier"


def build(root: Path) -> Path:
    """The repository, its pipeline, an experiment, an evaluation and a report; returns the
    report's folder."""
    tree = tiny_params_tree(**{"fetch.sources.synthetic.per_class": 120, "train.epochs": 4})
    repo = make_repo(root / "repo", tree)
    env = tool_env(PYTHONPATH=str(repo / "src"))
    shutil.rmtree(repo / "data" / "photos")
    run_cmd(["crackdet", "render-photos", "--out", "data/photos", "--count", "4", "--seed", "11",
             "--width", "1200", "--height", "900"], repo, env)  # fmt: skip
    run_cmd(["dvc", "add", "-q", "data"], repo, env)
    run_cmd(["git", "commit", "-qam", "photos"], repo, env)
    step("pipeline", ["dvc", "repro"], repo, env)
    run_cmd(["git", "add", "-A"], repo, env)
    run_cmd(["git", "commit", "-qm", "pipeline run"], repo, env)
    step("experiment", ["dvc", "exp", "run", "-S", "train.lr=0.003"], repo, env)
    write_patch_set(root / "inspection-2024" / "patches", 30, seed=21)
    archive = shutil.make_archive(str(root / "inspection-2024"), "zip", root / "inspection-2024")
    step("eval", ["crackdet", "eval", archive, "--model", "outputs/train"], repo, env)
    report = root / "report"
    command = ["crackdet", "predict", "data/photos", "--model", f"models:/{NAME}@champion"]
    step("predict", [*command, "--out", str(report)], repo, env)
    return repo


def step(what: str, args: list[str], cwd: Path, env: dict[str, str]) -> None:
    started = time.monotonic()
    run_cmd(args, cwd, env)
    print(f"screenshots: {what}: {time.monotonic() - started:.0f} s", flush=True)


def ids(repo: Path) -> tuple[dict[str, str], str, str]:
    """Experiment ids by name, the newest pipeline run's name and the champion's version."""
    db = sqlite3.connect(f"file:{repo / 'mlruns' / 'mlflow.db'}?mode=ro", uri=True)
    experiments = dict(db.execute("select name, experiment_id from experiments"))
    (run,) = db.execute(
        "select name from runs where experiment_id = ? order by start_time desc limit 1",
        (experiments["crackdet"],),
    ).fetchone()
    (champion,) = db.execute(
        "select version from registered_model_aliases where name = ? and alias = 'champion'",
        (NAME,),
    ).fetchone()
    return {k: str(v) for k, v in experiments.items()}, run, str(champion)


def photograph(repo: Path, report: Path, out: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    store = repo / "mlruns"
    argv = [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
    argv += ["--default-artifact-root", str(store / "artifacts"), "--port", str(port)]
    env = tool_env(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    ui = Server([*argv, "--host", "127.0.0.1", "--workers", "1"], out / "ui.log", env=env)
    try:
        ui.wait_until(lambda: http_ok(f"{base}/health"), "mlflow ui", 240)
        experiments, run, champion = ids(repo)
        pages = [
            # The URL form docs/team.md gives: the "Model training" view of the experiment.
            (
                "mlflow-runs.png",
                f"{base}/#/experiments/{experiments['crackdet']}?workflowType=machine_learning",
                run,
            ),
            ("mlflow-version.png", f"{base}/#/models/{NAME}/versions/{champion}", "95 % CI"),
            ("mlflow-model.png", f"{base}/#/models/{NAME}", "Promotion log"),
        ]
        with browser() as chrome:
            for name, url, text in pages:
                final = screenshot(chrome, url, out / name, text, MLFLOW_STORAGE)
                print(f"screenshots: {name}: {final.replace(base, '')}")
            screenshot(chrome, (report / "index.html").as_uri(), out / "report.png", "cracks")
    finally:
        ui.stop()
        (out / "ui.log").unlink(missing_ok=True)
    for name in ("mlflow-runs.png", "mlflow-version.png", "mlflow-model.png", "report.png"):
        shrink(out / name)


def shrink(path: Path) -> None:
    """256 colours: UI screenshots stay sharp at a third of the bytes in the repository."""
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=0)
    small.save(path, optimize=True)
    print(f"screenshots: {path} ({path.stat().st_size // 1024} KB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PROJECT / "docs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository")
    args = parser.parse_args()
    missing = missing_browser()
    if missing:
        print(f"screenshots: missing {'; '.join(missing)}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="crackdet-screenshots-"))
    try:
        repo = build(root)
        photograph(repo, root / "report", args.out.resolve())
        summary = json.loads((repo / "outputs/evaluate/metrics.json").read_text())
        print(f"screenshots: done (last test accuracy {summary['accuracy']:.4f})")
    finally:
        if args.keep:
            print(f"screenshots: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
