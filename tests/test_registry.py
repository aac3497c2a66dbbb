"""Promotion through a real MLflow registry (SQLite store in tmp): gates, aliases, the log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crackdet.cli.main import main
from crackdet.core.errors import CrackdetError
from crackdet.core.params import PromoteParams
from crackdet.tracking.promotion import auto_promote, judge, manual_promote
from crackdet.tracking.registry import CHALLENGER, CHAMPION, alias_holder, read_log

NAME = "crack-classifier"
GATES = PromoteParams(min_accuracy=0.9, min_f1=0.9, max_regression=0.01)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CRACKDET_ACTOR", "tester")
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    client.create_experiment("crackdet", artifact_location=(tmp_path / "artifacts").as_uri())
    return client


def register(client: Any, acc: float, f1: float, auc: float = 1.0, split: str = "fpA") -> str:
    """A version as evaluate registers it: from a run, with lineage and test-metric tags."""
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    experiment = client.get_experiment_by_name("crackdet")
    run = client.create_run(experiment.experiment_id)
    tags = {
        "git.commit": "0" * 40,
        "data.manifest_sha256": "d" * 64,
        "data.split_fingerprint": split,
        "test_accuracy": f"{acc:.6f}",
        "test_f1": f"{f1:.6f}",
        "test_roc_auc": f"{auc:.6f}",
    }
    version = client.create_model_version(
        NAME, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags
    )
    return version.version


def champion(client: Any) -> str | None:
    holder = alias_holder(client, NAME, CHAMPION)
    return None if holder is None else holder.version


def test_judge_gates_and_ties() -> None:
    base = {"accuracy": 0.95, "f1": 0.95, "roc_auc": 0.99}
    assert judge(base, None, GATES).alias == CHAMPION
    assert judge(dict(base), base, GATES).alias == CHAMPION  # a tie promotes
    worse = {**base, "f1": 0.945}
    decision = judge(worse, base, GATES)
    assert decision.passed and not decision.beats and decision.alias == CHALLENGER
    low = {**base, "accuracy": 0.85}
    decision = judge(low, None, GATES)
    assert not decision.passed and "promote.min_accuracy" in decision.reasons[0]
    regressed = {**base, "roc_auc": 0.97}
    decision = judge(regressed, base, GATES)
    assert not decision.passed and "roc_auc" in decision.reasons[0]


def test_better_becomes_champion_worse_challenger_and_the_log(client: Any) -> None:
    v1 = register(client, 0.95, 0.95)
    decision, _ = auto_promote(client, NAME, v1, GATES)
    assert decision.alias == CHAMPION and champion(client) == v1
    v2 = register(client, 0.97, 0.97)
    decision, entry = auto_promote(client, NAME, v2, GATES)
    assert decision.alias == CHAMPION and champion(client) == v2
    assert (entry["from"], entry["to"]) == (int(v1), int(v2))
    v3 = register(client, 0.965, 0.965)  # within max_regression, but below the champion
    decision, _ = auto_promote(client, NAME, v3, GATES)
    assert decision.alias == CHALLENGER and decision.passed
    assert champion(client) == v2 and alias_holder(client, NAME, CHALLENGER).version == v3
    assert client.get_model_version(NAME, v3).tags["validation_status"] == "passed"

    log = read_log(client, NAME)
    assert [(e["seq"], e["alias"], e["from"], e["to"]) for e in log] == [
        (1, CHAMPION, None, 1),
        (2, CHAMPION, 1, 2),
        (3, CHALLENGER, None, 3),
    ]
    assert all(e["who"] == "tester" and e["mode"] == "auto" and e["when"] for e in log)
    assert log[1]["metrics"]["candidate"]["f1"] == 0.97
    assert log[1]["metrics"]["champion"]["f1"] == 0.95
    # The trail is also an artifact of the run that produced the version.
    run_id = client.get_model_version(NAME, v2).run_id
    artifact = client.download_artifacts(run_id, "promotions/000002.json")
    assert json.loads(Path(artifact).read_text())["to"] == 2


def test_gate_failure_blocks_champion(client: Any) -> None:
    v1 = register(client, 0.95, 0.95)
    auto_promote(client, NAME, v1, GATES)
    v2 = register(client, 0.80, 0.99)  # better F1 but accuracy below promote.min_accuracy
    decision, entry = auto_promote(client, NAME, v2, GATES)
    assert not decision.passed and decision.alias == CHALLENGER
    assert champion(client) == v1
    tags = client.get_model_version(NAME, v2).tags
    assert tags["validation_status"] == "failed"
    assert "promote.min_accuracy" in tags["validation_detail"]
    assert "promote.min_accuracy" in entry["why"]


def test_other_split_rescores_the_champion(client: Any) -> None:
    v1 = register(client, 0.99, 0.99, split="fpA")
    auto_promote(client, NAME, v1, GATES)
    v2 = register(client, 0.96, 0.96, split="fpB")
    seen = []

    def rescore(version: Any) -> dict[str, float]:
        seen.append(version.version)
        return {"accuracy": 0.94, "f1": 0.94, "roc_auc": 1.0}  # v1 on the new split

    with pytest.raises(CrackdetError, match="split fingerprints differ"):
        auto_promote(client, NAME, v2, GATES)
    decision, entry = auto_promote(client, NAME, v2, GATES, rescore)
    assert seen == [v1]
    assert decision.alias == CHAMPION and champion(client) == v2
    assert "split fingerprints differ" in entry["metrics"]["compared"]
    assert entry["metrics"]["champion"]["f1"] == 0.94


def test_manual_promote_is_gated_unless_forced(client: Any) -> None:
    v1 = register(client, 0.97, 0.97)
    auto_promote(client, NAME, v1, GATES)
    v2 = register(client, 0.93, 0.93)
    auto_promote(client, NAME, v2, GATES)
    with pytest.raises(CrackdetError, match=r"v2 fails the promotion gates.*--force"):
        manual_promote(client, NAME, v2, CHAMPION, "looks fine", GATES)
    with pytest.raises(CrackdetError, match="--reason"):
        manual_promote(client, NAME, v2, CHAMPION, "  ", GATES, force=True)
    entry = manual_promote(client, NAME, v2, CHAMPION, "rollback drill", GATES, force=True)
    assert champion(client) == v2 and entry["mode"] == "forced"
    entry = manual_promote(client, NAME, v1, CHAMPION, "back to v1", GATES)  # passes the gates
    assert champion(client) == v1 and entry["mode"] == "manual" and entry["from"] == 2
    assert [e["why"] for e in read_log(client, NAME)][-2:] == ["rollback drill", "back to v1"]


def test_cli_models_promote_and_log(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import yaml

    from tests.helpers import default_params_tree

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params_tree()))
    v1 = register(client, 0.95, 0.95)
    auto_promote(client, NAME, v1, GATES)
    v2 = register(client, 0.95, 0.94)
    auto_promote(client, NAME, v2, GATES)
    capsys.readouterr()
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["version", "aliases", "accuracy"]
    assert lines[1].split()[:2] == ["2", "challenger"] and lines[2].split()[:2] == ["1", "champion"]
    assert main(["promote", "2", "--reason", "f1 within tolerance, newer data"]) == 0
    assert "@champion: v1 -> v2 [manual]" in capsys.readouterr().out
    assert main(["promote", "9", "--reason", "x"]) == 2
    assert "v9: not in the registry" in capsys.readouterr().err
    assert main(["promotion-log"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "champion: v1 -> v2 [manual]" in out[2]
    assert "tester" in out[2] and "f1 within tolerance" in out[2]


# --- what the registry shows: the promotion log as the model's description --------------------


def test_promotion_log_is_the_registered_models_description(client: Any) -> None:
    v1 = register(client, 0.95, 0.95)
    auto_promote(client, NAME, v1, GATES)
    v2 = register(client, 0.96, 0.96)
    auto_promote(client, NAME, v2, GATES)
    manual_promote(client, NAME, v1, CHALLENGER, "keep | compare", GATES, force=True)
    description = client.get_registered_model(NAME).description
    rows = [
        line for line in description.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| 3", "| 2", "| 1"]  # newest first
    assert "v1 → v2" in rows[2] and "`champion`" in rows[2] and "0.9600" in rows[2]
    assert "keep \\| compare" in rows[1] and "forced" in rows[1]
    assert "none → v1" in rows[3]
    tags = client.get_registered_model(NAME).tags  # the JSON record is unchanged
    assert json.loads(tags["promotion_log.000003"])["why"] == "keep | compare"


def test_a_long_promotion_log_is_cut_to_fit_the_store() -> None:
    from crackdet.tracking.descriptions import DESCRIPTION_LIMIT, promotion_table

    entries = [
        {
            "seq": n,
            "when": "2026-01-01T00:00:00+00:00",
            "alias": CHAMPION,
            "from": n - 1,
            "to": n,
            "mode": "auto",
            "who": "ci@runner",
            "why": "x" * 500,
            "metrics": {"candidate": {"f1": 0.99, "accuracy": 0.99}},
        }
        for n in range(1, 301)
    ]
    table = promotion_table(NAME, entries)
    assert len(table) <= DESCRIPTION_LIMIT
    assert "| 300 |" in table and "| 1 |" not in table
    assert table.splitlines()[-1].endswith("older moves not shown: `crackdet promotion-log`*")


# --- one promotion at a time ----------------------------------------------------------------


def test_promotions_wait_for_the_lock_and_break_a_dead_owners(
    client: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import os
    import socket

    from crackdet.tracking import registry

    v1 = register(client, 0.95, 0.95)
    lock = f"{NAME}{registry.LOCK_SUFFIX}"
    # Held by this (live) process: another promotion waits, then says who holds it.
    client.create_registered_model(
        lock, tags={"crackdet.pid": str(os.getpid()), "crackdet.host": socket.gethostname()}
    )
    monkeypatch.setattr(registry, "LOCK_WAIT_SECONDS", 1.0)
    with pytest.raises(CrackdetError, match=rf"another promotion \(pid {os.getpid()} on "):
        auto_promote(client, NAME, v1, GATES)
    assert alias_holder(client, NAME, CHAMPION) is None
    # Its owner died (a pid that is not running): the lock is broken and the promotion runs.
    client.set_registered_model_tag(lock, "crackdet.pid", str(2**22 + 12345))
    decision, _ = auto_promote(client, NAME, v1, GATES)
    assert decision.alias == CHAMPION
    assert "breaking the promotion lock" in capsys.readouterr().out
    assert not client.search_registered_models(f"name='{lock}'")  # released


@pytest.mark.slow
def test_the_promotion_lock_admits_one_process_at_a_time(tmp_path: Path, client: Any) -> None:
    """Two processes take the lock three times each, starting at the same moment, and hold it
    half a second: their entries and exits never interleave."""
    import subprocess
    import sys
    import time

    trail = tmp_path / "trail.txt"
    start = time.time() + 6  # after both have imported MLflow
    code = (
        "import os, time, mlflow\n"
        "from crackdet.tracking.registry import promotion_lock\n"
        "client = mlflow.MlflowClient()\n"
        f"time.sleep(max(0, {start} - time.time()))\n"
        "for _ in range(3):\n"
        f"    with promotion_lock(client, {NAME!r}):\n"
        f"        open({str(trail)!r}, 'a').write(f'in {{os.getpid()}}\\n')\n"
        "        time.sleep(0.5)\n"
        f"        open({str(trail)!r}, 'a').write(f'out {{os.getpid()}}\\n')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    lines = trail.read_text().split()
    pairs = list(zip(lines[0::2], lines[1::2], strict=True))
    assert len(pairs) == 12
    for enter, leave in zip(pairs[0::2], pairs[1::2], strict=True):
        assert enter[0] == "in" and leave[0] == "out" and enter[1] == leave[1], lines


def test_a_version_description_says_figures_data_commit_and_replay() -> None:
    from crackdet.data.records import SplitSummary
    from crackdet.tracking.descriptions import (
        DESCRIPTION_LIMIT,
        BaselineFigures,
        SplitFigures,
        VersionCard,
        version_description,
    )

    metrics = {
        "accuracy": 0.9967, "accuracy_ci95_low": 0.988, "accuracy_ci95_high": 0.999,
        "precision": 0.99, "recall": 1.0, "f1": 0.995, "roc_auc": 1.0, "n": 600,
        "threshold": 0.368,
        "probe": {"accuracy": 1.0, "only_model_wrong": 2, "only_baseline_wrong": 0,
                  "mcnemar_p": 0.5},
    }  # fmt: skip
    split = SplitSummary(
        strategy="grouped",
        fingerprint="f" * 64,
        test_fingerprint="t" * 64,
        groups=458,
        counts={"train": {"Negative": 1400, "Positive": 1400}, "val": {"Negative": 300,
                "Positive": 300}, "test": {"Negative": 300, "Positive": 300}},
        seed=42,
        params={},
    )  # fmt: skip
    card = VersionCard(
        name=NAME,
        version=7,
        run_id="r" * 32,
        figures=SplitFigures.from_metrics(metrics),
        baseline=BaselineFigures.from_metrics(metrics),
        data_source="archive",
        manifest_sha256="d" * 64,
        split=split,
        commit="c" * 40,
        dirty="false",
        experiment="",
    )
    text = version_description(card)
    assert text.splitlines()[0] == (  # what MLflow's list of versions shows
        "Test accuracy 0.9967 (95 % CI 0.9880–0.9990), F1 0.9950, ROC AUC 1.0000 on 600 "
        "images; commit `cccccccccc`."
    )
    assert "| accuracy | **0.9967** (95 % CI 0.9880–0.9990) |" in text
    assert "600 images" in text and "threshold 0.368" in text
    assert "wrong only by the model 2, only by the probe 0 (exact McNemar p 0.500)" in text
    assert f"manifest sha256 `{'d' * 64}`" in text
    assert "grouped (458 groups), seed 42: train 2800, val 600, test 600 images" in text
    assert f"`{'c' * 40}` (clean)" in text
    assert f"crackdet reproduce {'r' * 32}" in text
    assert "crackdet trace models:/crack-classifier/7" in text
    assert "DVC experiment" not in text  # none: not shown empty
    assert len(text) <= DESCRIPTION_LIMIT


def _logged_model(client: Any) -> tuple[str, str]:
    """A run and a model logged from it (what train leaves): its run id and ``models:/`` URI."""
    experiment = client.get_experiment_by_name("crackdet")
    run = client.create_run(experiment.experiment_id)
    model = client.create_logged_model(
        experiment.experiment_id, name="model", source_run_id=run.info.run_id
    )
    return run.info.run_id, f"models:/{model.model_id}"


def test_a_checkpoint_is_registered_once(client: Any) -> None:
    from crackdet.tracking.registry import register_once
    from crackdet.tracking.runs import MODEL_SHA_TAG

    run_id, uri = _logged_model(client)
    tags = {"run_id": run_id, "git.commit": "0" * 40}
    assert register_once(client, uri, NAME, tags, "a" * 64) == (1, True)
    # A second (and third) clone re-evaluating the pulled checkpoint: the same version.
    assert register_once(client, uri, NAME, tags, "a" * 64) == (1, False)
    assert register_once(client, uri, NAME, tags, "a" * 64) == (1, False)
    version = client.get_model_version(NAME, "1")
    assert version.tags[MODEL_SHA_TAG] == "a" * 64 and version.run_id == run_id
    # Other weights logged into the same run, or another run: new versions.
    assert register_once(client, uri, NAME, tags, "b" * 64) == (2, True)
    other_run, other_uri = _logged_model(client)
    assert register_once(client, other_uri, NAME, {**tags, "run_id": other_run}, "a" * 64) == (
        3,
        True,
    )
    assert len(client.search_model_versions(f"name='{NAME}'")) == 3


def test_a_version_registered_without_the_digest_tag_is_found_by_its_model(client: Any) -> None:
    from crackdet.tracking.registry import register_once, version_standing

    run_id, uri = _logged_model(client)
    client.create_registered_model(NAME)
    client.create_model_version(NAME, uri, run_id=run_id, tags={"validation_status": "passed"})
    client.set_registered_model_alias(NAME, CHAMPION, "1")
    assert register_once(client, uri, NAME, {"run_id": run_id}, "a" * 64) == (1, False)
    assert version_standing(client, NAME, 1) == {"alias": CHAMPION, "validation_status": "passed"}


def test_a_version_card_names_the_runs_data_sources(client: Any) -> None:
    from crackdet.data.records import SplitSummary
    from crackdet.tracking.descriptions import version_card, version_description
    from crackdet.tracking.provenance import DATA_SOURCES_TAG

    experiment = client.get_experiment_by_name("crackdet")
    run = client.create_run(experiment.experiment_id, tags={DATA_SOURCES_TAG: "ozgenel,uav75"})
    metrics = {
        "accuracy": 0.9, "accuracy_ci95_low": 0.8, "accuracy_ci95_high": 0.95, "precision": 0.9,
        "recall": 0.9, "f1": 0.9, "roc_auc": 0.95, "n": 40, "threshold": 0.5,
    }  # fmt: skip
    split = SplitSummary("grouped", "f" * 64, "t" * 64, 9, {"test": {"Negative": 20}}, 1, {})
    tags = {"data.manifest_sha256": "d" * 64, "git.commit": "c" * 40, "git.dirty": "false"}
    card = version_card(NAME, 1, client.get_run(run.info.run_id), metrics, tags, split)
    text = version_description(card)
    assert f"| data | ozgenel, uav75, manifest sha256 `{'d' * 64}` |" in text
