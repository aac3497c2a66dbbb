"""The package's shape, checked: imports flow one way (import-linter, in ``make test``), no
crackdet module imports another inside a function, stages stay thin and declare in dvc.yaml
exactly the code and params sections they use, and ``bench/`` and the CLI never reach into
stages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
SRC = PROJECT / "src"
PACKAGE = SRC / "crackdet"
STAGES = ("fetch", "split", "train", "evaluate", "predict_samples")
MAX_STAGE_LINES = 60


def module_file(name: str) -> Path | None:
    """The source file of a dotted crackdet module name (None: not a module, e.g. a function)."""
    base = SRC.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """Every crackdet module ``path`` imports, at any depth of its syntax tree."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from crackdet.x import y``: y is a submodule or a name defined in crackdet.x.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "crackdet" and module_file(n))
    return found


def with_packages(module: str) -> set[str]:
    """A module and the packages Python initialises to import it."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def transitive_sources(module: str) -> set[Path]:
    """The files Python executes to import ``module`` (crackdet's own, packages included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        for part in with_packages(name) - seen:
            seen.add(part)
            path = module_file(part)
            assert path is not None, part
            todo.extend(imported_modules(path) - seen)
    return {module_file(name) for name in seen}  # type: ignore[misc]


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_declares_exactly_the_code_a_stage_runs(stage: str) -> None:
    declared = {d for d in dvc_stages()[stage]["deps"] if d.startswith("src/")}
    used = {
        p.relative_to(PROJECT).as_posix() for p in transitive_sources(f"crackdet.stages.{stage}")
    }
    assert sorted(used - declared) == [], f"dvc.yaml {stage}: code it runs but does not declare"
    assert sorted(declared - used) == [], f"dvc.yaml {stage}: declared code it does not run"


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


def test_bench_and_cli_import_nothing_from_stages() -> None:
    """They call workflows; the CLI's stage commands run ``python -m crackdet.stages.<name>`` as
    a process, exactly as dvc.yaml does."""
    offenders = []
    for path in [
        *sorted((PROJECT / "bench").glob("*.py")),
        *sorted((PACKAGE / "cli").glob("*.py")),
    ]:
        text = path.read_text()
        dynamic = set(re.findall(r"import_module\([^)]*(crackdet\.stages)", text))
        for module in imported_modules(path) | dynamic:
            if module.startswith("crackdet.stages"):
                offenders.append(f"{path.relative_to(PROJECT)}: {module}")
    assert offenders == []


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
        "train": [layout.train.model, layout.train.spec, layout.train.probe, layout.train.ood],
        "predict_samples": [layout.predict],
    }
    for stage, paths in expected.items():
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in dvc_stages()[stage]["outs"]]
        for path in paths:
            assert path.relative_to(PROJECT).as_posix() in outs, (stage, path)


def sync_dvc_yaml() -> list[str]:
    """Rewrite each stage's ``src/`` deps in dvc.yaml to exactly the files it imports (the data
    deps and everything else stay as written); return the stages that changed."""
    path = PROJECT / "dvc.yaml"
    text = path.read_text()
    changed = []
    for stage in STAGES:
        block = re.search(
            rf"\n  {stage}:\n    cmd: [^\n]+\n    deps:\n((?:      - [^\n]+\n)+)", text
        )
        assert block, f"dvc.yaml: stage {stage} has no deps list"
        lines = block.group(1).splitlines(keepends=True)
        data = [line for line in lines if not line.strip().startswith("- src/")]
        used = sorted(
            p.relative_to(PROJECT).as_posix()
            for p in transitive_sources(f"crackdet.stages.{stage}")
        )
        new = "".join(f"      - {p}\n" for p in used) + "".join(data)
        if new != block.group(1):
            changed.append(stage)
            text = text[: block.start(1)] + new + text[block.end(1) :]
    path.write_text(text)
    return changed


if __name__ == "__main__":  # python tests/test_architecture.py: bring dvc.yaml's deps in line
    print("dvc.yaml deps updated for:", ", ".join(sync_dvc_yaml()) or "nothing")


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
