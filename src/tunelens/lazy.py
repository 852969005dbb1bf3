"""Lazy package attributes (PEP 562), so a package's light registry imports without its heavy parts.

``tunelens.train.catalog`` (strategy names) and ``tunelens.explain.catalog`` (method names) are
read by the config; importing them must not run ``tunelens/train/__init__.py``'s imports of
transformers and torch. A package lists what it exports and from where; each name is imported on
first use.
"""

from __future__ import annotations

import importlib


def exports(package: str, table: dict[str, str]):
    """``__getattr__`` for ``package`` resolving each name of ``table`` from its module."""

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
