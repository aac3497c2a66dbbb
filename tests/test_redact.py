"""What is logged to MLflow holds no local folders and no credentials (crackdet.tracking)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crackdet.tracking.redact import redact, safe_params, source_name

ROOT = Path("/srv/work/crackdet")


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("/srv/work/crackdet/data/set.zip", "data/set.zip"),
        (str(Path.home() / "Downloads/set.zip"), "~/Downloads/set.zip"),
        ("../shared/data/ozgenel-4k.zip", "../shared/data/ozgenel-4k.zip"),
        ("https://alice:s3cret@example.org/set.zip", "https://***@example.org/set.zip"),
        ("https://example.org/f?token=abc&name=x", "https://example.org/f?token=***&name=x"),
        (
            "https://example.org/f?X-Amz-Signature=ff&a=1",
            "https://example.org/f?X-Amz-Signature=***&a=1",
        ),
        ("synthetic", "synthetic"),
        (0.001, 0.001),
        (True, True),
    ],
)
def test_redact(value: object, logged: object) -> None:
    assert redact(value, ROOT) == logged


def test_safe_params_keeps_keys_and_numbers() -> None:
    flat = {"fetch.archive": "/srv/work/crackdet/a.zip", "train.lr": 0.1}
    assert safe_params(flat, ROOT) == {"fetch.archive": "a.zip", "train.lr": 0.1}


def test_source_name_is_repo_relative() -> None:
    assert not source_name(ROOT).startswith("/")
