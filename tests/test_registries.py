"""Each extension point's registry against the names the params schema accepts.

``crackdet.core`` keeps the torch-free names the schema needs; the implementations register
themselves beside their code (source kinds in ``crackdet.data.sources``, backbones in
``crackdet.model.backbones``, engines in ``crackdet.model.engines``). Adding one is its module
(or decorated function) plus its name in ``crackdet.core.params``: these tests name whichever of
the two was forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch

from crackdet.core import params as core
from crackdet.core.errors import CrackdetError
from crackdet.data import sources
from crackdet.model import backbones, decoder, engines


def differences(what: str, schema: Iterable[str], registry: Iterable[str], where: str) -> list[str]:
    """One line per name that one side has and the other lacks."""
    schema, registry = list(schema), list(registry)
    return [
        f"{what} {name}: accepted by crackdet.core.params but not registered in {where}"
        for name in schema
        if name not in registry
    ] + [
        f"{what} {name}: registered in {where} but not accepted by crackdet.core.params"
        for name in registry
        if name not in schema
    ]


def test_every_source_kind_has_a_fetch_and_every_fetch_a_schema_record() -> None:
    assert (
        differences("source kind", core.SOURCE_KINDS, sources.KINDS, "crackdet.data.sources") == []
    )
    for name, kind in sources.KINDS.items():
        assert kind.params is core.SOURCE_KINDS[name], f"source kind {name}: params record"


def test_every_backbone_name_is_registered_and_every_registered_backbone_named() -> None:
    found = differences("backbone", core.BACKBONES, backbones.BACKBONES, "crackdet.model.backbones")
    assert found == []


def test_every_decoder_name_is_registered_and_every_registered_decoder_named() -> None:
    assert differences("decoder", core.DECODERS, decoder.DECODERS, "crackdet.model.decoder") == []
    assert list(core.DECODERS) == list(decoder.DECODERS)  # the same order in messages


def test_every_engine_name_is_registered_and_every_registered_engine_named() -> None:
    assert differences("engine", core.ENGINES, engines.ENGINES, "crackdet.model.engines") == []
    assert list(core.ENGINES) == list(engines.ENGINES)  # the same order in messages
    assert engines.GRAPH_ENGINES[0] == "onnxruntime"  # training's graph engine


def test_the_check_names_the_side_that_was_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worked example of docs/architecture.md: a backbone registered in the model layer but
    not added to the schema's names is named, and so is the reverse."""

    @backbones.register_backbone(units=lambda net: [net])
    def tiny_convnet(pretrained: bool) -> backbones.Built:
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()), 4, "random"

    try:
        found = differences("backbone", core.BACKBONES, backbones.BACKBONES, "the registry")
        assert found == [
            "backbone tiny_convnet: registered in the registry but not accepted by "
            "crackdet.core.params"
        ]
        monkeypatch.setattr(core, "BACKBONES", (*core.BACKBONES, "tiny_convnet", "vgg16"))
        found = differences("backbone", core.BACKBONES, backbones.BACKBONES, "the registry")
        assert found == [
            "backbone vgg16: accepted by crackdet.core.params but not registered in the registry"
        ]
    finally:
        del backbones.BACKBONES["tiny_convnet"]


def test_an_unknown_backbone_is_refused_with_the_registered_names() -> None:
    with pytest.raises(CrackdetError) as info:
        backbones.build_backbone("vgg16", pretrained=False)
    assert str(info.value) == (
        f"train.backbone 'vgg16': crackdet builds {', '.join(backbones.BACKBONES)}; "
        "pick one of them"
    )


def test_the_example_backbone_builds_counts_its_blocks_and_asks_for_online_tuning() -> None:
    """mobilenet_v3_small, added as docs/architecture.md shows: one decorated function in
    crackdet.model.backbones plus its name in crackdet.core.params.BACKBONES."""
    net, width, source, mean, std = backbones.build_backbone("mobilenet_v3_small", False)
    assert (source, mean, std) == ("random-init", backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 3, 227, 227)).shape == (2, width)
    assert len(backbones.backbone_units("mobilenet_v3_small", net)) == len(net.features)
    with pytest.raises(CrackdetError, match="set train.finetune: online"):
        backbones.split_backbone("mobilenet_v3_small", net, 1)


def test_an_unknown_engine_is_refused_with_the_registered_names() -> None:
    with pytest.raises(CrackdetError) as info:
        engines.engine_label("tensorrt")
    assert str(info.value) == f"engine 'tensorrt': expected one of {', '.join(engines.ENGINES)}"


def test_training_asks_the_kind_which_sources_it_leaves_unaugmented() -> None:
    from crackdet.data.records import FetchSummary, SourceSummary
    from crackdet.workflows.train import plain_sources

    def source(kind: str) -> SourceSummary:
        return SourceSummary(kind, "x", "x", 2, {}, None, None, [], [], {})

    kinds = {f"s-{kind}": source(kind) for kind in sources.KINDS}
    summary = FetchSummary(kinds, 0, {}, "", {}, {})
    expected = {f"s-{k}" for k, kind in sources.KINDS.items() if not kind.augmented}
    assert plain_sources(summary) == expected == {"s-masks"}
