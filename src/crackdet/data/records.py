"""What fetch and split record about the data they made (``summary.json``), typed, for the
stages and reports downstream that cite it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import write_json


@dataclass(frozen=True)
class SourceSummary:
    """What one fetch source brought: its licence and digests, and what was left out of it."""

    kind: str
    licence: str
    origin: str  # where it came from, as params name it (path or URL)
    count: int
    per_class: dict[str, int]
    archive_sha256: str | None
    archive_md5: str | None  # the name DVC's cache would store the archive under
    skipped: list[str]  # unreadable images left out under fetch.on_bad_image: skip
    left_out: list[str]  # entries that are not images of a class, with why
    windows: dict[str, int]  # a masks source: windows cut, per kind (else empty)


@dataclass(frozen=True)
class FetchSummary:
    """``outputs/fetch/summary.json``: what was fetched from each source, and its digests."""

    sources: dict[str, SourceSummary]
    count: int
    per_class: dict[str, int]
    manifest_sha256: str
    duplicates: dict[str, int]
    params: dict[str, object]  # the base and fetch params that made it (logged by train)

    @property
    def skipped(self) -> list[str]:
        return [f"{name}/{path}" for name, s in self.sources.items() for path in s.skipped]

    @property
    def left_out(self) -> list[str]:
        return [f"{name}/{entry}" for name, s in self.sources.items() for entry in s.left_out]

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> FetchSummary:
        try:
            data = json.loads(path.read_text())
            data["sources"] = {k: SourceSummary(**v) for k, v in data["sources"].items()}
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
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
