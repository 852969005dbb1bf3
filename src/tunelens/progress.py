"""The one progress bar every stage and verb draws (rich, on stderr, off when asked).

rich draws the bars; what is ours is that they all look alike and that a stage never builds its
own. Two shapes cover every use:

``item_bar(enabled=True, *, transient=False, console=None, fields=())`` -> ``rich.progress.Progress``
    Work counted in items or steps: rows generated, examples explained or judged, optimizer steps,
    each rung of the model ladder (one task per rung). Columns: description, bar, done/total,
    elapsed, remaining. Use it as a context manager (or ``start()``/``stop()`` from callbacks)::

        with item_bar(progress) as bar:
            task = bar.add_task("generating", total=len(rows))
            ...; bar.advance(task, n)

    ``fields`` adds one column per named task field, shown as ``name value`` (training passes
    ``fields=("loss",)`` and updates it with ``bar.update(task, loss="0.123")``; ``add_task`` must
    then give each field a first value). ``transient=True`` erases the bar when it ends (bars
    drawn under a summary the verb prints); ``console`` draws on another console (the study's
    live view shares the console its lines are printed on).

``step_bar(total, enabled=True, *, when="start", transient=True, console=None)`` -> context manager
    A pipeline of named steps (``data prepare``'s load, clean, split..., ``compare``'s
    statistics). It yields ``on_step(name)``, the callback the stage calls: with ``when="start"``
    the stage calls it as each step begins (the name shown is the step running, the previous one
    counts done); with ``when="end"`` as each step ends (that step counts done)::

        with step_bar(6, enabled=console.is_terminal) as on_step:
            card = prepare(input, out, settings, on_step=on_step)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def item_bar(enabled: bool = True, *, transient: bool = False, console: Console | None = None,
             fields: Sequence[str] = ()) -> Progress:
    """Description, bar, done/total, elapsed and remaining time (see the module docstring)."""
    extra = [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console or Console(stderr=True), disable=not enabled, transient=transient,
    )


@contextlib.contextmanager
def step_bar(total: int, enabled: bool = True, *, when: str = "start", transient: bool = True,
             console: Console | None = None) -> Iterator[Callable[[str], None]]:
    """A bar over ``total`` named steps; yields the ``on_step(name)`` callback (module docstring)."""
    if when not in ("start", "end"):
        raise ValueError(f"step_bar: when must be 'start' or 'end', got {when!r}")
    bar = item_bar(enabled, transient=transient, console=console)
    with bar:
        task = bar.add_task("starting", total=total)
        started = False

        def on_step(name: str) -> None:
            nonlocal started
            bar.update(task, description=name, advance=1 if when == "end" or started else 0)
            started = True

        yield on_step
        if when == "start" and started:
            bar.update(task, advance=1)  # the last step ended with the block
