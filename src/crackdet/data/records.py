"""What fetch and split record about the data they made (``summary.json``), typed, for the
stages and reports downstream that cite it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import write_json


@dataclass(frozen=True)
class FetchSummary:
    """``outputs/fetch/summary.json``: what was fetched, what was left out, and its digests."""

    source: str
    count: int
    per_class: dict[str, int]
    skipped: list[str]
    manifest_sha256: str
    archive_sha256: str | None
    archive_md5: str | None  # the name DVC's cache would store the archive under
    duplicates: dict[str, int]
    params: dict[str, object]  # the base and fetch params that made it (logged by train)
    left_out: list[str]  # entries of the source that are not images of a class, with why

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> FetchSummary:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CrackdetError(
                f"{path}: missing or unreadable ({first_line(exc)}); rerun the fetch stage"
            ) from None


@dataclass(frozen=True)
class SplitSummary:
    """``outputs/split/summary.json``: what train tags its run with and reports cite."""

    strategy: str
    fingerprint: str  # sha256 over the three sorted manifests
    test_fingerprint: str
    groups: int
    counts: dict[str, dict[str, int]]
    seed: int
    params: dict[str, object]  # the base and split params that made it (logged by train)

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> SplitSummary:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CrackdetError(
                f"{path}: missing or unreadable ({first_line(exc)}); rerun the split stage"
            ) from None
