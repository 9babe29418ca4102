"""``attnmap evaluate``'s report: the text table, per-image CSV and curve plots.

The evaluation itself (plan, scoring loop, curves, metrics, ground truth) is the library's
:mod:`attnmap.runtime.evaluation`; this front only shows what it measured.
"""

from attnmap.runtime.fronts.evaluate.report import PLOTS, format_evaluation, write_csv, write_plots

__all__ = ["PLOTS", "format_evaluation", "write_csv", "write_plots"]
