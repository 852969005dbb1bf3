"""The ``tunelens`` command: each verb parses its flags, calls one public function, prints a summary.

One module per group of verbs, imported in pipeline order (the order ``--help`` lists them);
``app.py`` holds the Typer app, the error handling and ``main``.
"""
# ruff: noqa: I001, F401

from tunelens.cli import data
from tunelens.cli import models
from tunelens.cli import outputs
from tunelens.cli import explain
from tunelens.cli import faithfulness
from tunelens.cli import probe
from tunelens.cli import study
from tunelens.cli import tune
from tunelens.cli import serve
from tunelens.cli.app import app, console, entry, err_console, main

__all__ = ["app", "console", "entry", "err_console", "main"]
