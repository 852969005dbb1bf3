"""Token attribution: which parts of the prompt a (fine-tuned) model relies on for its output.

``attribute`` is the engine's entry point; ``explain_run`` (in :mod:`tunelens.explain.run`) applies
it to a trained run and a data file. Methods register themselves by name (see
:mod:`tunelens.explain.base` and the name registry :mod:`tunelens.explain.catalog`), so gradient
methods and views plug in as one class each. Names are resolved on first use (PEP 562), so the
catalog imports without torch.
"""

from tunelens.lazy import exports

__all__, __getattr__ = exports(__name__, api="attribute", base="AttributionMethod Job register",
                                  result="Attribution", run="explain_run")
