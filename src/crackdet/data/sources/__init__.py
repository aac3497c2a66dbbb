"""Source kinds: one module per kind of ``fetch.sources`` entry, and the helpers they share.

Importing the package imports every module in it, so each kind registers itself
(:func:`crackdet.data.sources.base.register_kind`) and :data:`KINDS` holds them all: a new kind
is a new module here, with no list to extend (``tests/test_architecture.py`` reads this loop as
an import of every module in the package).
"""

from __future__ import annotations

import importlib
import pkgutil

from crackdet.data.sources.base import KINDS, SourceKind

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["KINDS", "SourceKind"]
