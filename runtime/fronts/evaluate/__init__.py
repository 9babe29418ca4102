"""``attnmap evaluate``'s report: the text table, per-image CSV, curve plots and the
faithfulness-against-cost plot.

The evaluation itself (plan, scoring loop, curves, metrics, ground truth) is the library's
:mod:`attnmap.runtime.evaluation`; this front only shows what it measured.
"""

from attnmap.runtime.fronts.evaluate.cost_plot import COST_PLOT, write_cost_plot
from attnmap.runtime.fronts.evaluate.report import COST_COLUMNS, PLOTS, format_evaluation, write_csv, write_plots

__all__ = ["COST_COLUMNS", "COST_PLOT", "PLOTS", "format_evaluation", "write_cost_plot", "write_csv", "write_plots"]
