"""Params as a command line or a Python caller adjusts them: the packaged defaults outside a
repository, and overrides (``--scale 2``) checked by the schema's own rules
(:func:`crackdet.core.params.parse_params`), with errors naming the option."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from crackdet.core.errors import CrackdetError
from crackdet.core.params import Params, PredictParams, load_params, parse_params

# The repository's params.yaml as the package ships it: its sections are the defaults of
# `crackdet predict` and the Python API where no params.yaml is at hand
# (tests/test_api.py checks its predict section against the repository's).
PACKAGED_PARAMS = Path(__file__).with_name("default_params.yaml")


def params_or_defaults(path: Path | str | None, root: Path) -> Params:
    """``path`` when given; else ``root``'s params.yaml when there is one; else the packaged
    defaults."""
    if path is not None:
        return load_params(path)
    here = root / "params.yaml"
    return load_params(here if here.is_file() else PACKAGED_PARAMS)


def as_tree(value: Any) -> Any:
    """Typed params back as the YAML tree they were parsed from (tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_tree(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: as_tree(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_tree(item) for item in value]
    return value


def with_overrides(
    params: Params, section: str, values: dict[str, Any], options: dict[str, str]
) -> Params:
    """``params`` with ``section.<key>`` set to each value, validated as params.yaml is; an
    error about an overridden key names its option (``options``: key → ``--option``)."""
    tree = as_tree(params)
    tree[section].update(values)
    try:
        return parse_params(tree)
    except CrackdetError as exc:
        message = str(exc)
        for key, option in options.items():
            prefix = f"params.yaml: {section}.{key} "
            if key in values and message.startswith(prefix):
                raise CrackdetError(f"{option} {message[len(prefix) :]}") from None
        raise


def predict_settings(
    params: Params,
    *,
    scale: float | str | None = None,
    overlap: float | None = None,
    threshold: float | None = None,
    mm_per_pixel: float | None = None,
) -> PredictParams:
    """``params.predict`` with the options given (None: as params say); a threshold given
    replaces the model's own."""
    values: dict[str, Any] = {
        "scale": scale,
        "overlap": overlap,
        "threshold": threshold,
        "mm_per_pixel": mm_per_pixel,
    }
    values = {key: value for key, value in values.items() if value is not None}
    if not values:
        return params.predict  # already checked with the rest of params
    if threshold is not None:
        values["use_model_threshold"] = False
    options = {
        "scale": "--scale",
        "overlap": "--overlap",
        "threshold": "--threshold",
        "mm_per_pixel": "--mm-per-pixel",
    }
    return with_overrides(params, "predict", values, options).predict
