"""Source kind ``mendeley``: the public set (Özgenel 2019) downloaded with resume, checked
against the published counts after indexing."""

from __future__ import annotations

from functools import partial

from crackdet.core.params import LabelledSource
from crackdet.data.sources.base import Brought, FetchContext, SourceKind, labelled_groups
from crackdet.data.sources.base import register_kind as register
from crackdet.data.sources.labelled import check_public_layout, import_public


def _fetch_mendeley(ctx: FetchContext, source: LabelledSource) -> Brought:
    imported = import_public(
        source.path, source.sha256, ctx.layout.downloads, ctx.target, ctx.work, ctx.limits
    )
    return Brought(
        imported,
        source.path,
        group_of=labelled_groups(source.group_by, ctx.key),
        check=partial(check_public_layout, origin=source.path, key=ctx.key),
    )


register(SourceKind("mendeley", LabelledSource, _fetch_mendeley))
