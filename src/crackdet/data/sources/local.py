"""Source kinds ``archive`` and ``folder``: labelled patches in the public set's layout, in a
local .zip/.tar*/.rar or a folder (a path relative to the repository root)."""

from __future__ import annotations

from crackdet.core.errors import CrackdetError
from crackdet.core.params import LabelledSource
from crackdet.data.sources.base import Brought, FetchContext, SourceKind, labelled_groups
from crackdet.data.sources.base import register_kind as register
from crackdet.data.sources.labelled import import_labelled, resolve_path


def _fetch_local(ctx: FetchContext, source: LabelledSource) -> Brought:
    path = resolve_path(ctx.layout.root, source.path, f"{ctx.key}.path")
    if source.kind == "folder" and not path.is_dir():
        raise CrackdetError(f"{ctx.key}.path: {source.path} is not a folder; use kind: archive")
    if source.kind == "archive" and path.is_dir():
        raise CrackdetError(f"{ctx.key}.path: {source.path} is a folder; use kind: folder")
    imported = import_labelled(path, ctx.target, ctx.work, ctx.limits)
    if source.sha256 and imported.archive_sha256 != source.sha256:
        raise CrackdetError(
            f"{ctx.key}.sha256: {source.path} has sha256 {imported.archive_sha256}, not the "
            f"pinned {source.sha256}; use the archive you pinned or update the pin"
        )
    return Brought(imported, source.path, group_of=labelled_groups(source.group_by, ctx.key))


register(SourceKind("archive", LabelledSource, _fetch_local, replay_archive=True))
register(SourceKind("folder", LabelledSource, _fetch_local))
