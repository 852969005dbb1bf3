"""The one progress bar: items with optional fields, named steps counted at their start or end."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tunelens.progress import item_bar, step_bar


def _console():
    buf = io.StringIO()
    return Console(file=buf, width=120), buf


def test_item_bar_shows_counts_and_named_fields():
    console, buf = _console()
    with item_bar(console=console, fields=("loss",)) as bar:
        task = bar.add_task("training", total=4, loss="-")
        bar.update(task, completed=4, loss="0.123")
    assert "training" in buf.getvalue() and "4/4" in buf.getvalue() and "loss 0.123" in buf.getvalue()


def test_disabled_bar_draws_nothing():
    console, buf = _console()
    with item_bar(False, console=console) as bar:
        bar.advance(bar.add_task("x", total=2), 2)
    assert buf.getvalue() == ""


@pytest.mark.parametrize("when, calls, shown", [
    ("start", ["load", "clean", "split"], "split 3/3"),  # the block's end finishes the last step
    ("start", ["load", "clean"], "clean 2/3"),
    ("end", ["load", "clean"], "clean 2/3"),
])
def test_step_bar_counts_steps(when, calls, shown):
    console, buf = _console()
    with step_bar(3, console=console, transient=False, when=when) as on_step:
        for name in calls:
            on_step(name)
    name, count = shown.split()
    assert name in buf.getvalue() and count in buf.getvalue()


def test_step_bar_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="when"), step_bar(2, when="middle"):
        pass
