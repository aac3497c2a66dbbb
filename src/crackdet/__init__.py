"""crackdet: reproducible, experiment-tracked concrete crack classification and crack maps.

The Python API (:mod:`crackdet.api`): ``crackdet.load_model(ref)`` and
``crackdet.map_photo(photo, model)``; it loads on first use, so ``import crackdet`` stays cheap
(the command line imports this package for its version only).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = ("load_model", "map_photo", "Model", "PhotoResult")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        # torch and the model code (seconds) load only when the API is used.
        return getattr(importlib.import_module("crackdet.api"), name)
    raise AttributeError(f"module 'crackdet' has no attribute {name!r}")
