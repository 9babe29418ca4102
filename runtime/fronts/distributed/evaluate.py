"""``attnmap evaluate --engine ray``: faithfulness and localisation scores of a collection, on Ray Data.

Each image is scored on a Ray actor by :func:`~attnmap.runtime.fronts.evaluate.run.evaluate`
itself, the local path's scoring (one preprocess and forward pass, every method's map, the
perturbation curves, localisation where ground truth is given, the random floor seeded by the
image's position); the driver merges the per-image results in input order with
:func:`~attnmap.runtime.fronts.evaluate.run.merge_evaluations`. So the numbers are the local
path's, image for image. Reading and decoding run as Ray tasks; the model travels through the
object store as in :mod:`~attnmap.runtime.fronts.distributed.pipeline`.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, Sequence

import numpy as np

from attnmap.runtime.fronts.distributed.cluster import collect, ray_cluster
from attnmap.runtime.fronts.distributed.pipeline import ModelBytes, RayOptions, frame_of, read_batch
from attnmap.runtime.fronts.distributed.table import content_hash
from attnmap.runtime.fronts.evaluate.run import Evaluation, evaluate, merge_evaluations
from attnmap.runtime.fronts.evaluate.truth import GroundTruth

__all__ = ["evaluate_on_ray"]


def evaluate_on_ray(explainer, paths: Sequence[str], methods: Sequence[str], options: RayOptions, *,
                    truth: GroundTruth | None = None, on_image: Callable[[str], None] | None = None,
                    **scoring: Any) -> Evaluation:
    """Score every method's map on every image, on Ray; the same result as the local :func:`evaluate`.

    Args:
        explainer: the driver's Explainer (its model file goes to the actors; methods are
            checked against it here, before Ray starts).
        paths: image files, in order (an image's position seeds its random floor, as locally).
        methods: method specs (``rollout``, ``rollout:discard_ratio=0.9``).
        options: Ray settings (``batch_size`` is not used: one image per actor call).
        truth: labels, masks or boxes (mask folders must be reachable from every node).
        on_image: called with each image's source as its result reaches the driver.
        **scoring: ``baseline``, ``sigma``, ``steps``, ``unit``, ``fit``, ``batch_size``
            (perturbed inputs per model run), as :func:`evaluate` takes them.

    Returns:
        The merged :class:`Evaluation`; images that could not be scored are in ``failed``.

    Raises:
        OptionError, ExplainError: bad methods or scoring options (checked before Ray starts).
        ClusterError: Ray is missing, cannot start, or the pipeline broke.
    """
    # Checks every option on the driver (no image: the result is empty), so a typo fails fast.
    empty = evaluate(explainer, [], methods, truth=truth, **scoring)
    if not paths:
        return empty
    items = [{"index": i, "path": str(p), "stem": ""} for i, p in enumerate(paths)]
    with ray_cluster(options.address, num_cpus=options.num_cpus, verbose=options.verbose) as ray:
        data = explainer.path.read_bytes()
        model = ModelBytes(explainer.path.name, content_hash(data), ray.put(data))
        ds = ray.data.from_items(items)
        ds = ds.map_batches(read_batch, batch_size=1, batch_format="numpy",
                            fn_kwargs=dict(out_dir="", fingerprint="", decode=options.decode, base=os.getcwd()))
        ds = ds.map_batches(EvaluateActor, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=options.pool_size(ray.cluster_resources())),
                            num_cpus=1, num_gpus=options.gpus_per_actor or None,
                            fn_constructor_kwargs=dict(model=model, provider=options.provider, methods=list(methods),
                                                       truth=truth, scoring=scoring))
        parts: list[tuple[int, Evaluation]] = []
        for out in collect(ds.iter_rows(), "evaluation", len(items)):
            parts.append((int(out["index"]), pickle.loads(out["part"])))
            if on_image is not None:
                on_image(str(out["path"]))
    return merge_evaluations([p for _, p in sorted(parts, key=lambda t: t[0])])


class EvaluateActor:
    """One model session scoring one image per call with :func:`evaluate`."""

    def __init__(self, model: ModelBytes, provider: str, methods: list[str], truth: GroundTruth | None,
                 scoring: dict[str, Any]):
        import ray

        self.explainer = model.load(ray, provider)
        self.methods, self.truth, self.scoring = methods, truth, scoring

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for index, path, data, shape, error in zip(batch["index"], batch["path"], batch["data"], batch["shape"],
                                                   batch["error"]):
            frame = frame_of(int(index), str(path), data, shape, error)
            result = evaluate(self.explainer, [frame], self.methods, truth=self.truth, **self.scoring)
            parts.append(pickle.dumps(result))
        return {"index": np.asarray(batch["index"], np.int64), "path": np.asarray(batch["path"]),
                "part": np.array(parts, dtype=object)}
