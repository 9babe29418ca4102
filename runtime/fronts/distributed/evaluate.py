"""``attnmap evaluate --engine ray``: faithfulness and localisation scores of a collection, on Ray Data.

Each image is scored on a Ray actor by
:func:`~attnmap.runtime.evaluation.scoring.score_frames` itself under the driver's checked
:class:`~attnmap.runtime.evaluation.plan.EvaluationPlan` (one preprocess and forward pass, every
method's map, the perturbation curves, localisation where ground truth is given, the random
floor seeded by the image's position); the driver merges the per-image results in input order
with :func:`~attnmap.runtime.evaluation.result.merge_evaluations`. So the numbers are the local
path's, image for image. Reading and decoding run as Ray tasks; the model travels through the
object store as in :mod:`~attnmap.runtime.fronts.distributed.pipeline`.
"""

from __future__ import annotations

import os
import pickle
from typing import Callable

import numpy as np

from attnmap.runtime.core.errors import OptionError, SourceError
from attnmap.runtime.evaluation.plan import EvaluationInputs, EvaluationPlan
from attnmap.runtime.evaluation.result import Evaluation, merge_evaluations
from attnmap.runtime.evaluation.scoring import score_frames
from attnmap.runtime.fronts.distributed.cluster import collect, ray_cluster
from attnmap.runtime.fronts.distributed.pipeline import ModelBytes, RayOptions, frame_of, read_batch
from attnmap.runtime.fronts.distributed.table import content_hash

__all__ = ["evaluate_on_ray"]


def evaluate_on_ray(explainer, plan: EvaluationPlan, inputs: EvaluationInputs, options: RayOptions, *,
                    on_image: Callable[[str], None] | None = None) -> Evaluation:
    """Score every method's map on every image, on Ray; the same result as the local
    :func:`~attnmap.runtime.evaluation.scoring.evaluate_inputs`.

    Args:
        explainer: the driver's Explainer (its model file goes to the actors; the plan is
            checked against it here, before Ray starts).
        plan: what to score (checked here unless it already is; its engine must be ``ray``).
        inputs: the image files, from ``plan.inputs(sources)``, in order (an image's position
            seeds its random floor, as locally). Mask folders must be reachable from every node.
        options: Ray settings (``batch_size`` is not used: one image per actor call).
        on_image: called with each image's source as its result reaches the driver.

    Returns:
        The merged :class:`~attnmap.runtime.evaluation.result.Evaluation`; images that could
        not be scored are in ``failed``.

    Raises:
        OptionError, ExplainError: bad methods or scoring settings, or synthetic inputs
            (checked before Ray starts).
        SourceError: there is nothing to score.
        ClusterError: Ray is missing, cannot start, or the pipeline broke.
    """
    plan = plan.checked(explainer.meta, model=repr(explainer.path.name))
    if plan.engine != "ray" or inputs.synthetic:
        raise OptionError("the Ray engine scores image files under a plan made for it (engine='ray')")
    if not inputs.images:
        raise SourceError("no images to evaluate")
    items = [{"index": i, "path": str(p), "stem": ""} for i, p in enumerate(inputs.images)]
    with ray_cluster(options.address, num_cpus=options.num_cpus, verbose=options.verbose) as ray:
        data = explainer.path.read_bytes()
        model = ModelBytes(explainer.path.name, content_hash(data), ray.put(data))
        ds = ray.data.from_items(items)
        ds = ds.map_batches(read_batch, batch_size=1, batch_format="numpy",
                            fn_kwargs=dict(out_dir="", fingerprint="", decode=options.decode, base=os.getcwd()))
        ds = ds.map_batches(EvaluateActor, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=options.pool_size(ray.cluster_resources())),
                            num_cpus=1, num_gpus=options.gpus_per_actor or None,
                            fn_constructor_kwargs=dict(model=model, provider=options.provider, plan=plan))
        parts: list[tuple[int, Evaluation]] = []
        for out in collect(ds.iter_rows(), "evaluation", len(items)):
            parts.append((int(out["index"]), pickle.loads(out["part"])))
            if on_image is not None:
                on_image(str(out["path"]))
    return merge_evaluations([p for _, p in sorted(parts, key=lambda t: t[0])])


class EvaluateActor:
    """One model session scoring one image per call with :func:`score_frames` under the driver's plan."""

    def __init__(self, model: ModelBytes, provider: str, plan: EvaluationPlan):
        import ray

        self.explainer = model.load(ray, provider)
        self.plan = plan

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for index, path, data, shape, error in zip(batch["index"], batch["path"], batch["data"], batch["shape"],
                                                   batch["error"]):
            frame = frame_of(int(index), str(path), data, shape, error)
            parts.append(pickle.dumps(score_frames(self.explainer, [frame], self.plan)))
        return {"index": np.asarray(batch["index"], np.int64), "path": np.asarray(batch["path"]),
                "part": np.array(parts, dtype=object)}
