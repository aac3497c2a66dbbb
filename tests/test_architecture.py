"""The package's shape, checked: imports flow one way (import-linter, in ``make test``), no
crackdet module imports another inside a function, stages stay thin and declare in dvc.yaml
exactly the code and params sections they use (``scripts/sync_dvc_deps.py`` fixes the code
deps), and ``bench/``, ``scripts/`` and the CLI never reach into stages."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT
from tests.helpers.import_graph import SRC, imported_modules, module_file, stage_code

PACKAGE = SRC / "crackdet"
STAGES = ("fetch", "split", "train", "evaluate", "predict_samples")
MAX_STAGE_LINES = 60


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_declares_exactly_the_code_a_stage_runs(stage: str) -> None:
    declared = {d for d in dvc_stages()[stage]["deps"] if d.startswith("src/")}
    used = set(stage_code(stage))
    fix = "run `python scripts/sync_dvc_deps.py`"
    assert sorted(used - declared) == [], f"dvc.yaml {stage}: code it runs, undeclared; {fix}"
    assert sorted(declared - used) == [], f"dvc.yaml {stage}: declared code it does not run; {fix}"


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_declares_exactly_the_params_sections_a_stage_reads(stage: str) -> None:
    """A stage reads params only in its own module (``params.<section>``); the library gets
    typed sections, so what the stage module touches is all the stage depends on."""
    tree = ast.parse((PACKAGE / "stages" / f"{stage}.py").read_text())
    read = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "params"
    }
    assert read, f"stages/{stage}.py reads no params section"
    assert sorted(read) == sorted(dvc_stages()[stage]["params"])


@pytest.mark.parametrize("stage", STAGES)
def test_stage_modules_are_thin(stage: str) -> None:
    lines = (PACKAGE / "stages" / f"{stage}.py").read_text().splitlines()
    assert len(lines) <= MAX_STAGE_LINES, f"stages/{stage}.py: {len(lines)} lines"


def _deferred_import_runs(path: Path) -> list[tuple[int, int, list[str]]]:
    """Runs of consecutive import statements inside function bodies:
    (first line, last line, modules)."""
    runs = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for body in (n.body for n in ast.walk(node) if hasattr(n, "body")):
            if not isinstance(body, list):
                continue
            run: list[ast.stmt] = []
            for statement in [*body, None]:
                if isinstance(statement, ast.Import | ast.ImportFrom):
                    run.append(statement)
                    continue
                if run:
                    modules = [
                        alias.name for n in run if isinstance(n, ast.Import) for alias in n.names
                    ] + [
                        "." * n.level + (n.module or "")
                        for n in run
                        if isinstance(n, ast.ImportFrom)
                    ]
                    runs.append((run[0].lineno, run[-1].end_lineno or run[-1].lineno, modules))
                run = []
    return runs


def test_no_crackdet_import_inside_a_function_and_every_deferred_import_says_why() -> None:
    """Imports inside functions hide cycles; only heavy optional third-party modules may be
    deferred, each run of them with a comment (above it or on its lines) saying why."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for first, last, modules in _deferred_import_runs(path):
            where = f"{path.relative_to(SRC)}:{first} {', '.join(modules)}"
            if any(m.startswith(("crackdet", ".")) for m in modules):
                problems.append(f"{where}: crackdet module imported inside a function")
            elif not any("#" in line for line in lines[first - 2 : last]):
                problems.append(f"{where}: deferred import without a comment saying why")
    assert problems == []


def test_bench_scripts_and_cli_import_nothing_from_stages() -> None:
    """They call workflows; the CLI's stage commands run ``python -m crackdet.stages.<name>`` as
    a process, exactly as dvc.yaml does."""
    offenders = []
    for path in [
        *sorted((PROJECT / "bench").rglob("*.py")),
        *sorted((PROJECT / "scripts").glob("*.py")),
        *sorted((PACKAGE / "cli").glob("*.py")),
    ]:
        text = path.read_text()
        dynamic = set(re.findall(r"import_module\([^)]*(crackdet\.stages)", text))
        for module in imported_modules(path) | dynamic:
            if module.startswith("crackdet.stages"):
                offenders.append(f"{path.relative_to(PROJECT)}: {module}")
    assert offenders == []


# Commands that run no workflow: a stage by its module (as DVC does), the params schema alone.
WORKFLOW_FREE_COMMANDS = {"pipeline:run_stage", "pipeline:check_params"}


def test_every_cli_command_resolves_and_calls_a_workflow() -> None:
    handlers = re.findall(r'handler="(\w+):(\w+)"', (PACKAGE / "cli" / "main.py").read_text())
    assert len(handlers) >= 12
    for module, function in handlers:
        path = PACKAGE / "cli" / f"{module}.py"
        assert path.is_file(), f"handler {module}:{function}: no cli/{module}.py"
        tree = ast.parse(path.read_text())
        defined = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert function in defined, f"handler {module}:{function}: no such function"
        if f"{module}:{function}" in WORKFLOW_FREE_COMMANDS:
            continue
        workflows = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("crackdet.workflows.")
            for alias in node.names
        }
        called = {
            node.func.id
            for node in ast.walk(defined[function])
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert called & workflows, (
            f"cli/{module}.py {function}: calls no crackdet.workflows function"
        )


def test_no_output_path_is_spelled_outside_the_layout_module() -> None:
    """``outputs/…`` paths live in crackdet.core.layout (dvc.yaml's twin), nowhere else."""
    offenders = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "layout.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"[\"']outputs/", line)
    ]
    assert offenders == []


def test_layout_paths_are_the_outputs_dvc_yaml_declares() -> None:
    from crackdet.core.layout import Layout

    layout = Layout(PROJECT)
    expected = {
        "fetch": [layout.fetch.dir],
        "split": [layout.split.dir],
        "train": [
            layout.train.model,
            layout.train.spec,
            layout.train.probe,
            layout.train.ood,
            layout.train.decoder,
            layout.train.decoder_spec,
        ],
        "predict_samples": [layout.predict],
    }
    for stage, paths in expected.items():
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in dvc_stages()[stage]["outs"]]
        for path in paths:
            assert path.relative_to(PROJECT).as_posix() in outs, (stage, path)


def test_sync_script_puts_back_a_dropped_dep_and_keeps_the_rest(tmp_path: Path) -> None:
    """``scripts/sync_dvc_deps.py``, the fix the dvc.yaml tests name, on a copy missing one
    file of the train stage and listing one file train does not run."""
    original = (PROJECT / "dvc.yaml").read_text()
    dropped = "      - src/crackdet/model/ood.py\n"
    block = original.index("\n  train:\n")
    assert original.index(dropped, block) > block
    broken = original[:block] + original[block:].replace(
        dropped, "      - src/crackdet/cli/main.py\n", 1
    )
    path = tmp_path / "dvc.yaml"
    path.write_text(broken)
    script = [
        sys.executable,
        str(PROJECT / "scripts" / "sync_dvc_deps.py"),
        "--dvc-yaml",
        str(path),
    ]
    check = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert (check.returncode, check.stdout.strip()) == (1, f"{path}: out of line: train")
    assert path.read_text() == broken
    subprocess.run(script, check=True, capture_output=True)
    synced, expected = yaml.safe_load(path.read_text())["stages"], dvc_stages()
    # train's list is rewritten sorted; every other line stays as written.
    assert sorted(synced["train"].pop("deps")) == sorted(expected["train"].pop("deps"))
    assert synced == expected


def test_every_cli_command_names_a_function_that_exists() -> None:
    """A command's handler is ``"<module of crackdet.cli>:<function>"``, imported only when the
    command runs: a renamed module breaks it silently unless checked here."""
    from crackdet.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    broken = []
    for name, parser in commands.items():
        module, function = parser.get_default("handler").split(":")
        path = module_file(f"crackdet.cli.{module}")
        defined = path is not None and any(
            isinstance(node, ast.FunctionDef) and node.name == function
            for node in ast.parse(path.read_text()).body
        )
        if not defined:
            broken.append(f"{name}: crackdet.cli.{module}.{function}")
    assert "models" in commands
    assert broken == []


def test_every_stage_output_is_in_git_or_in_dvcs_cache() -> None:
    """An output DVC does not cache (``cache: false``) must be committed, or no clone ever has
    it and ``dvc pull && dvc repro`` reruns its stage (and evaluate registers again)."""
    import subprocess

    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    uncached = [
        (name, path)
        for name, stage in stages.items()
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind, [])
        if isinstance(entry, dict)
        for path, opts in entry.items()
        if (opts or {}).get("cache", True) is False
    ]
    assert uncached, "dvc.yaml: expected the metric and plot-data files to be uncached"
    for name, path in uncached:
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", path], cwd=PROJECT, capture_output=True
        )
        assert tracked.returncode == 0, f"dvc.yaml {name}: {path} is cache: false but not in git"
