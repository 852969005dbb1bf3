"""Lazy package attributes (PEP 562), so a package's light registry imports without its heavy parts.

``tunelens.train.catalog`` (strategy names) and ``tunelens.explain.catalog`` (method names) are
read by the config; importing them must not run ``tunelens/train/__init__.py``'s imports of
transformers and torch. A package lists what it exports and from where; each name is imported on
first use.
"""

from __future__ import annotations

import importlib


def exports(package: str, **modules: str):
    """``(__all__, __getattr__)`` for ``package``: each keyword is a submodule (relative to the
    package) and its value the space-separated names it exports, e.g.
    ``exports(__name__, api="attribute", base="AttributionMethod Job register")``."""
    table = {name: f"{package}.{module}" for module, names in modules.items() for name in names.split()}

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(table), __getattr__
