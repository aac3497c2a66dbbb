"""params.yaml schema: the shipped file is valid; every kind of mistake is named by its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crackdet.core.errors import CrackdetError
from crackdet.core.params import BACKBONES, SOURCE_KINDS, load_params, parse_params
from tests.helpers import PROJECT, default_params_tree


def test_shipped_params_are_valid() -> None:
    params = load_params(PROJECT / "params.yaml")
    assert {s.kind for s in params.fetch.sources.values()} <= {"archive", "synthetic"}
    assert params.train.backbone == "efficientnet_lite0"
    assert params.predict.scale == "auto"
    flat = params.as_flat_dict()
    assert flat["train.augment.rotation"] == params.train.augment.rotation
    assert all("." in key for key in flat)


def _error_for(mutate) -> str:
    tree = default_params_tree()
    mutate(tree)
    with pytest.raises(CrackdetError) as info:
        parse_params(tree)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda t: t["train"].pop("epochs"), "missing key train.epochs"),
        (
            lambda t: t["train"]["augment"].update(zoom=[0.5]),
            "train.augment.zoom must be a range [low, high] with low <= high; got [0.5]",
        ),
        (
            lambda t: t["train"]["augment"].update(jpeg_quality=[95, 30]),
            "train.augment.jpeg_quality must be a range [low, high] with low <= high; got [95, 30]",
        ),
        (lambda t: t["train"]["augment"].pop("vflip"), "missing key train.augment.vflip"),
        (lambda t: t.pop("split"), "missing key split"),
        (lambda t: t["train"].update(epoch=3), "unknown key train.epoch"),
        (lambda t: t.update(extra={}), "unknown key extra"),
        (lambda t: t["train"].update(epochs="six"), "train.epochs must be an integer"),
        (lambda t: t["train"].update(epochs=True), "train.epochs must be an integer"),
        (lambda t: t["train"].update(epochs=2.5), "train.epochs must be an integer"),
        (lambda t: t["train"].update(pretrained="yes"), "train.pretrained must be true or false"),
        (lambda t: t["train"].update(lr="fast"), "train.lr must be a number"),
        (lambda t: t["train"].update(epochs=0), "train.epochs must be >= 1"),
        (lambda t: t["train"].update(dropout=1.5), "train.dropout must be <= 0.99"),
        (lambda t: t["train"].update(lr=0), "train.lr must be > 0"),
        (lambda t: t["predict"].update(overlap=-0.1), "predict.overlap must be >= 0"),
        (
            lambda t: t["fetch"]["sources"]["sdnet"].update(kind="s3"),
            f"fetch.sources.sdnet.kind must be one of {', '.join(SOURCE_KINDS)}; got 's3'",
        ),
        (lambda t: t["fetch"].update(sources={}), "fetch.sources must name at least one source"),
        (
            lambda t: t["fetch"]["sources"].update({"Bad Name": {}}),
            "source name 'Bad Name' must be lower-case letters",
        ),
        (
            lambda t: t["fetch"]["sources"]["sdnet"].update(group_by="(unclosed"),
            "fetch.sources.sdnet.group_by is not a valid regular expression",
        ),
        (
            lambda t: t["fetch"]["sources"]["sdnet"].update(group_by="-"),
            "fetch.sources.sdnet.group_by must be signature or a regular expression with a group",
        ),
        (lambda t: t["predict"].update(scale="big"), "predict.scale must be a number or auto"),
        (lambda t: t["predict"].update(scale=9), "predict.scale must be <= 8.0"),
        (lambda t: t["train"]["augment"].update(zoom=[]), "train.augment.zoom must be a non-empty"),
        (
            lambda t: t["train"].update(backbone="vgg99"),
            f"train.backbone must be one of {', '.join(BACKBONES)}; got 'vgg99'",
        ),
        (lambda t: t["train"].update(augment=5), "train.augment must be a mapping"),
        (lambda t: t["split"].update(train=0.8), "must sum to 1"),
        (
            lambda t: t["fetch"]["sources"]["sdnet"].update(path=""),
            "fetch.sources.sdnet.path must name the local archive or folder",
        ),
        (
            lambda t: t["fetch"]["sources"]["sdnet"].update(sha256="abc"),
            "fetch.sources.sdnet.sha256 must be 64 hex digits",
        ),
        (
            lambda t: t["train"].update(source_weights={"decks": 2.0}),
            "train.source_weights.decks names no source in fetch.sources (ozgenel, sdnet,",
        ),
        (
            lambda t: t["train"].update(source_weights={"sdnet": 0}),
            "train.source_weights.sdnet must be > 0",
        ),
        (
            lambda t: t["train"].update(source_weights=[2.0]),
            "train.source_weights must be a mapping of source names to numbers",
        ),
    ],
)
def test_invalid_params_name_the_key(mutate, expected: str) -> None:
    assert expected in _error_for(mutate)


def test_load_params_names_the_file(tmp_path: Path) -> None:
    tree = default_params_tree()
    tree["base"]["seed"] = -1
    path = tmp_path / "my-params.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(CrackdetError, match=r"my-params.yaml: base.seed must be >= 0"):
        load_params(path)
    path.write_text("base: [unclosed\n")
    with pytest.raises(CrackdetError, match=r"my-params.yaml: not valid YAML at line"):
        load_params(path)
    with pytest.raises(CrackdetError, match=r"not found"):
        load_params(tmp_path / "absent.yaml")


def test_stage_refuses_bad_params_before_any_work(tmp_path: Path) -> None:
    tree = default_params_tree()
    tree["train"]["epochs"] = "many"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    result = subprocess.run(
        [sys.executable, "-m", "crackdet.stages.fetch"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "crackdet fetch: error: params.yaml: train.epochs must be an integer, got 'many' (str)"
    ]
    assert not (tmp_path / "outputs").exists()


def test_a_float_written_the_way_people_write_it_is_a_float(tmp_path: Path) -> None:
    """``lr: 1e-4`` is a string to YAML 1.1 (PyYAML) and a number to DVC's YAML 1.2: both mean
    0.0001 here, while words stay refused."""
    text = (PROJECT / "params.yaml").read_text().replace("lr: 0.001", "lr: 1e-4")
    assert "lr: 1e-4" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path).train.lr == pytest.approx(1e-4)
    path.write_text(text.replace("lr: 1e-4", "lr: 1e-4x"))
    with pytest.raises(CrackdetError, match=r"train.lr must be a number, got '1e-4x'"):
        load_params(path)


def test_check_params_refuses_a_duplicate_key_that_dvc_would_refuse(tmp_path: Path) -> None:
    text = (PROJECT / "params.yaml").read_text().replace("  epochs: 6", "  epochs: 6\n  epochs: 60")
    (tmp_path / "params.yaml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "crackdet.cli.main", "check-params"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.startswith("  epochs: 60"))
    assert result.stderr == (
        f"crackdet check-params: error: params.yaml: duplicate key train.epochs at lines "
        f"{line - 1} and {line}; keep one\n"
    )


def test_seeds_numpy_and_scikit_learn_cannot_take_are_refused() -> None:
    assert "base.seed must be <= 4294967295" in _error_for(lambda t: t["base"].update(seed=2**32))
    tree = default_params_tree()
    tree["base"]["seed"] = 2**32 - 1
    assert parse_params(tree).base.seed == 2**32 - 1


def test_every_problem_is_reported_at_once_one_line_each(tmp_path: Path) -> None:
    tree = default_params_tree()
    tree["train"]["epochs"] = "many"
    tree["train"]["augment"]["zoom"] = [2.0, 1.0]
    tree["train"]["lr"] = 0
    tree["split"]["seed"] = 3
    tree["fetch"]["sources"]["sdnet"]["sha256"] = "abc"
    tree["predict"].pop("alpha")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    result = subprocess.run(
        [sys.executable, "-m", "crackdet.cli.main", "check-params"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    prefix = "crackdet check-params: error: params.yaml: "
    assert result.stderr.splitlines() == [
        prefix + "fetch.sources.sdnet.sha256 must be 64 hex digits or empty",
        prefix + "unknown key split.seed (known keys in split: strategy, groups, train, val, test)",
        prefix + "train.epochs must be an integer, got 'many' (str)",
        prefix + "train.lr must be > 0.0; got 0.0",
        prefix + "train.augment.zoom must be a range [low, high] with low <= high; got [2.0, 1.0]",
        prefix + "missing key predict.alpha",
    ]


def test_a_python_tag_is_named_not_called_invalid_yaml(tmp_path: Path) -> None:
    """``!!python/…`` tags are valid YAML that safe_load refuses: the message names the tag and
    its line, so the user knows what to remove."""
    text = (PROJECT / "params.yaml").read_text()
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.startswith("  epochs:"))
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("  epochs: 6", "  epochs: !!python/object/apply:os.getpid []"))
    with pytest.raises(CrackdetError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"{path}: tag !!python/object/apply:os.getpid at line {line} is not allowed"
    )
