"""Which of crackdet's files a module runs: its imports followed through the package, read from
the syntax trees (nothing is imported). tests/test_architecture.py checks dvc.yaml's code deps
against it; ``scripts/sync_dvc_deps.py`` rewrites them from it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.project import PROJECT

SRC = PROJECT / "src"


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
    if path.name == "__init__.py" and "pkgutil.iter_modules(__path__)" in path.read_text():
        # A registry package (crackdet.data.sources) imports every module in it by this loop.
        package = ".".join(path.relative_to(SRC).parent.parts)
        found.update(f"{package}.{m.stem}" for m in path.parent.glob("*.py") if m != path)
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
    files = {module_file(name) for name in seen}
    # Package data the code reads (the report's Jinja templates) is part of what a stage runs.
    packages = {path.parent for path in files if path is not None and path.name == "__init__.py"}
    data = {p for package in packages for p in (package / "templates").glob("*") if p.is_file()}
    return files | data  # type: ignore[return-value]


def stage_code(stage: str) -> list[str]:
    """What dvc.yaml should list as ``stage``'s code deps: ``src/…`` paths, sorted."""
    return sorted(
        p.relative_to(PROJECT).as_posix() for p in transitive_sources(f"crackdet.stages.{stage}")
    )
