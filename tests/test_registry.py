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

    from tests.conftest import default_params_tree

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
