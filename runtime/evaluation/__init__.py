"""Evaluation of explanation maps: how faithful each method's map is and how well it localises.

A floor above the engine and below the fronts; ``attnmap evaluate`` (:mod:`attnmap.runtime.fronts.evaluate`)
and its Ray engine (:mod:`attnmap.runtime.fronts.distributed.evaluate`) are thin callers.

* :mod:`~attnmap.runtime.evaluation.curves`: the perturbation curves of one image's maps
  (positive / negative perturbation, deletion / insertion) and their AUCs.
* :mod:`~attnmap.runtime.evaluation.localisation`: pointing game, mass ratio and segmentation
  agreement against boxes or masks.
* :mod:`~attnmap.runtime.evaluation.truth`: labels, masks and boxes, and the synthetic set.
* :mod:`~attnmap.runtime.evaluation.plan`: :class:`EvaluationPlan`, one evaluation's settings
  checked once against the model, and the inputs it scores.
* :mod:`~attnmap.runtime.evaluation.scoring`: the loop (:func:`evaluate`, :func:`score_frames`).
* :mod:`~attnmap.runtime.evaluation.result`: :class:`Evaluation`, what was measured, and merging.

    >>> plan = EvaluationPlan(methods=("rollout", "attention"), masks="masks/").checked(ex.meta)
    >>> result = evaluate_inputs(ex, plan, plan.inputs(["photos/"]))
    >>> result.summary()["rollout"]["deletion_auc"]
"""

from attnmap.runtime.evaluation.plan import ALL, ENGINES, EvaluationInputs, EvaluationPlan, parse_method_spec
from attnmap.runtime.evaluation.result import (CURVES, LOCALISATION, METRICS, PERTURBATION, RANDOM, Evaluation,
                                               merge_evaluations)
from attnmap.runtime.evaluation.scoring import evaluate, evaluate_inputs, score_frames
from attnmap.runtime.evaluation.truth import GroundTruth, mask_folder, read_boxes, read_labels, synthetic_frames

__all__ = ["ALL", "CURVES", "ENGINES", "LOCALISATION", "METRICS", "PERTURBATION", "RANDOM", "Evaluation",
           "EvaluationInputs", "EvaluationPlan", "GroundTruth", "evaluate", "evaluate_inputs", "mask_folder",
           "merge_evaluations", "parse_method_spec", "read_boxes", "read_labels", "score_frames", "synthetic_frames"]
