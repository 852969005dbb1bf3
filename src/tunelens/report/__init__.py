"""report: one self-contained HTML file of a study, with the PNG figures beside it."""

from tunelens.report.api import write_report

__all__ = ["write_report"]
