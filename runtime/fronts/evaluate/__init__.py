"""``attnmap evaluate``: faithfulness and localisation of every method's map, over images.

* :mod:`~attnmap.runtime.fronts.evaluate.run`: the scoring loop and its result object.
* :mod:`~attnmap.runtime.fronts.evaluate.truth`: labels, masks and boxes.
* :mod:`~attnmap.runtime.fronts.evaluate.report`: the text table, per-image CSV and curve plots.
"""

from attnmap.runtime.fronts.evaluate.report import format_evaluation, write_csv, write_plots
from attnmap.runtime.fronts.evaluate.run import (CURVES, LOCALISATION, METRICS, PERTURBATION, RANDOM, Evaluation,
                                                 evaluate, parse_method_spec)
from attnmap.runtime.fronts.evaluate.truth import (GroundTruth, mask_folder, read_boxes, read_labels,
                                                   synthetic_frames)

__all__ = ["CURVES", "LOCALISATION", "METRICS", "PERTURBATION", "RANDOM", "Evaluation", "GroundTruth", "evaluate",
           "format_evaluation", "mask_folder", "parse_method_spec", "read_boxes", "read_labels", "synthetic_frames", "write_csv",
           "write_plots"]
