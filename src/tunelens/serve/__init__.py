"""``tunelens serve``: trained runs behind an OpenAI-compatible HTTP API with an explain endpoint.

Names resolve on first use (PEP 562), so the settings import without torch or FastAPI.
"""

from tunelens.lazy import exports

__all__, __getattr__ = exports(__name__, app="create_app", server="build serve",
                                  settings="ServeConfig RunSpec parse_runs")
