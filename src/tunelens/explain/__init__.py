"""Token attribution: which parts of the prompt a (fine-tuned) model relies on for its output.

``attribute`` is the engine's entry point; ``explain_run`` (in :mod:`tunelens.explain.run`) applies
it to a trained run and a data file. Methods register themselves by name (see
:mod:`tunelens.explain.base`), so gradient methods and views plug in as one class each.
"""

from tunelens.explain.api import attribute
from tunelens.explain.base import AttributionMethod, Job, register
from tunelens.explain.result import Attribution
from tunelens.explain.run import explain_run

__all__ = ["Attribution", "AttributionMethod", "Job", "attribute", "explain_run", "register"]
