"""Bring dvc.yaml's code deps in line with the code each stage runs.

Each stage's ``src/…`` deps are rewritten to exactly the crackdet files its entry point
(``crackdet.stages.<stage>``) imports, packages included, followed through the package; data
deps, params and everything else stay as written. Run it after moving or adding a module a
stage imports; tests/test_architecture.py fails until dvc.yaml matches.

    python scripts/sync_dvc_deps.py           # rewrite dvc.yaml, print the stages that changed
    python scripts/sync_dvc_deps.py --check   # change nothing; exit 1 if a stage is out of line
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))  # run as `python scripts/sync_dvc_deps.py` from anywhere

from tests.helpers.import_graph import stage_code  # noqa: E402

# A stage whose command runs a crackdet stage module; its deps list follows the command.
STAGE_BLOCK = re.compile(
    r"\n  (?P<stage>\w+):\n    cmd: python -m crackdet\.stages\.(?P=stage)\n    deps:\n"
    r"(?P<deps>(?:      - [^\n]+\n)+)"
)


def synced(text: str) -> tuple[str, list[str]]:
    """dvc.yaml's text with the ``src/`` deps of every stage that lists other code than it runs
    replaced by that code (listed first, sorted), and the stages that changed. A stage that
    lists the right files keeps its order (the test compares sets too)."""
    changed = []
    out, last = [], 0
    for block in STAGE_BLOCK.finditer(text):
        lines = block.group("deps").splitlines(keepends=True)
        data = [line for line in lines if not line.strip().startswith("- src/")]
        listed = {line.strip()[2:] for line in lines if line.strip().startswith("- src/")}
        code = stage_code(block.group("stage"))
        new = block.group("deps")
        if listed != set(code):
            changed.append(block.group("stage"))
            new = "".join(f"      - {p}\n" for p in code) + "".join(data)
        out += [text[last : block.start("deps")], new]
        last = block.end("deps")
    out.append(text[last:])
    return "".join(out), changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dvc-yaml", type=Path, default=PROJECT / "dvc.yaml")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args()
    text, changed = synced(args.dvc_yaml.read_text())
    if args.check:
        print(f"{args.dvc_yaml}: out of line: {', '.join(changed)}" if changed else "in line")
        return 1 if changed else 0
    if changed:
        args.dvc_yaml.write_text(text)
    print("dvc.yaml deps updated for:", ", ".join(changed) or "nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
