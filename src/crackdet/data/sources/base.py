"""The source-kind registry: what fetch needs to know about one kind of ``fetch.sources`` entry.

A kind is one module in this package that calls :func:`register_kind` with its name (as the
schema spells it in ``crackdet.core.params``), its params record and its fetch function; the
package imports every module in it, so a new kind is its module plus its params record in core
(``tests/test_registries.py`` names whichever side is missing).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crackdet.core.errors import CrackdetError
from crackdet.core.layout import Layout
from crackdet.data.manifest import ManifestRow
from crackdet.data.sources.labelled import ExtractLimits, Imported

GroupOf = Callable[[str], str]  # file name -> the photo it was cut from ("" if unknown)


@dataclass(frozen=True)
class FetchContext:
    """Where and under which bounds one named source is fetched."""

    key: str  # its params key, fetch.sources.<name>
    target: Path  # images/<name>: the kind writes {Positive,Negative}/ here
    work: Path  # scratch space, removed after the kind's fetch
    limits: ExtractLimits
    max_pixels: int
    seed: int
    layout: Layout
    kept: Path  # masks/<name>: where a masks source keeps its photos and masks (the decoder's)


@dataclass(frozen=True)
class Brought:
    """What a kind's fetch hands back, before fetch indexes ``target``."""

    imported: Imported
    origin: str  # how messages and the summary name the source
    extra: dict[str, int] = field(default_factory=dict)  # counts the summary records
    group_of: GroupOf | None = None  # the photo an image was cut from, by its file name
    check: Callable[[list[ManifestRow]], None] | None = None  # on the indexed rows


@dataclass(frozen=True)
class SourceKind:
    name: str
    params: type  # its record in crackdet.core.params
    fetch: Callable[[FetchContext, Any], Brought]
    # Training augments the source's images; False where they already are the views the maps
    # score (masks windows, cut at the maps' scales).
    augmented: bool = True
    # The source is one archive file whose sha256 the run records: a replay finds it by that.
    replay_archive: bool = False


KINDS: dict[str, SourceKind] = {}


def register_kind(kind: SourceKind) -> SourceKind:
    if kind.name in KINDS:
        raise ValueError(f"source kind {kind.name} registered twice")
    KINDS[kind.name] = kind
    return kind


def filename_groups(pattern: str, key: str) -> GroupOf:
    """Photo of a file by a regular expression's first group (``group_by``); a file the
    pattern does not match stops fetch, naming it and the params key."""
    compiled = re.compile(pattern)

    def group(name: str) -> str:
        match = compiled.search(name)
        if match is None or not match.group(1):
            raise CrackdetError(
                f"{key}.group_by '{pattern}' names no photo in the file name {name}; fix the "
                "pattern or set it to signature"
            )
        return match.group(1)

    return group


def labelled_groups(group_by: str, key: str) -> GroupOf | None:
    """``group_by`` of a labelled source: None for signature (split clusters signatures)."""
    return None if group_by == "signature" else filename_groups(group_by, key)
