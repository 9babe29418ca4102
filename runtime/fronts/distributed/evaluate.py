"""``attnmap evaluate --engine ray``: faithfulness and localisation scores of a collection, on Ray Data.

Each image is scored on a Ray actor by
:func:`~attnmap.runtime.evaluation.scoring.score_frames` itself under the driver's checked
:class:`~attnmap.runtime.evaluation.plan.EvaluationPlan` (one preprocess and forward pass, every
method's map, the perturbation curves, localisation where ground truth is given, the random
floor seeded by the image's position); the driver merges the per-image results in input order
with :func:`~attnmap.runtime.evaluation.result.merge_evaluations`. So the numbers are the local
path's, image for image. Reading and decoding run as Ray tasks; the model travels through the
object store as in :mod:`~attnmap.runtime.fronts.distributed.pipeline`.

With an output folder (``keep``), each scored image's part is kept there and a rerun takes it
instead of scoring the image again (:mod:`~attnmap.runtime.fronts.distributed.scores`), as
``explain`` resumes from its rows.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np

from attnmap.runtime.core.errors import AttnmapError, OptionError, SourceError
from attnmap.runtime.core.text import plural
from attnmap.runtime.evaluation.plan import EvaluationInputs, EvaluationPlan
from attnmap.runtime.evaluation.result import Evaluation, merge_evaluations
from attnmap.runtime.evaluation.scoring import score_frames
from attnmap.runtime.fronts.distributed.cluster import collect, ray_cluster
from attnmap.runtime.fronts.distributed.pipeline import ModelBytes, RayOptions, frame_of, read_batch
from attnmap.runtime.fronts.distributed.scores import evaluation_fingerprint, keep_part, kept_part
from attnmap.runtime.fronts.distributed.table import content_hash
from attnmap.runtime.fronts.interrupt import Interrupted

__all__ = ["evaluate_on_ray"]


def evaluate_on_ray(explainer, plan: EvaluationPlan, inputs: EvaluationInputs, options: RayOptions, *,
                    on_image: Callable[[str], None] | None = None, keep: str | Path | None = None,
                    on_kept: Callable[[str], None] | None = None,
                    on_note: Callable[[str], None] | None = None) -> Evaluation:
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
        keep: an output folder (reachable from every node) where each scored image's part is
            kept; a rerun into it takes the parts of images already scored under the same
            settings instead of scoring them again. None keeps nothing.
        on_kept: called with the source of each image whose kept part was taken (after ``on_image``).
        on_note: called with one line per Ray process a killed run left and this one stopped.

    Returns:
        The merged :class:`~attnmap.runtime.evaluation.result.Evaluation`; images that could
        not be scored are in ``failed``.

    Raises:
        OptionError, ExplainError: bad methods or scoring settings, or synthetic inputs
            (checked before Ray starts).
        SourceError: there is nothing to score.
        ClusterError: Ray is missing, cannot start, or the pipeline broke.
        Interrupted: Ctrl-C; with ``keep`` the images scored so far are kept (``summary`` says so).
    """
    plan = plan.checked(explainer.meta, model=repr(explainer.path.name))
    if plan.engine != "ray" or inputs.synthetic:
        raise OptionError("the Ray engine scores image files under a plan made for it (engine='ray')")
    if not inputs.images:
        raise SourceError("no images to evaluate")
    items = [{"index": i, "path": str(p), "stem": ""} for i, p in enumerate(inputs.images)]
    keep_dir = str(Path(keep).resolve()) if keep is not None else ""
    data = explainer.path.read_bytes()
    model_sha = content_hash(data)
    fingerprint = evaluation_fingerprint(model_sha, plan) if keep_dir else ""
    parts: list[tuple[int, Evaluation]] = []
    kept = 0
    try:
        with ray_cluster(options.address, num_cpus=options.num_cpus, verbose=options.verbose, on_note=on_note) as ray:
            model = ModelBytes(explainer.path.name, model_sha, ray.put(data))
            ds = ray.data.from_items(items)
            ds = ds.map_batches(read_batch, batch_size=1, batch_format="numpy",
                                fn_kwargs=dict(out_dir="", fingerprint="", decode=options.decode, base=os.getcwd()))
            ds = ds.map_batches(EvaluateActor, batch_size=1, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=options.pool_size(ray.cluster_resources())),
                                num_cpus=1, num_gpus=options.gpus_per_actor or None,
                                fn_constructor_kwargs=dict(model=model, provider=options.provider, plan=plan,
                                                           keep=keep_dir, fingerprint=fingerprint))
            seen: set[int] = set()
            for out in collect(ds.iter_rows(), "evaluation", len(items)):
                index = int(out["index"])
                if index in seen:  # an image Ray scored again after a fault: its first part stands
                    continue
                seen.add(index)
                parts.append((index, pickle.loads(out["part"])))
                if on_image is not None:
                    on_image(str(out["path"]))
                if out["kept"]:
                    kept += 1
                    if on_kept is not None:
                        on_kept(str(out["path"]))
    except KeyboardInterrupt as exc:
        text = f"{len(parts)} of {plural(len(items), 'image')} scored"
        if kept:
            text += f" ({kept} kept from an earlier run)"
        text += (f"; their scores are kept in {str(keep)!r}: a rerun into it scores the rest" if keep_dir
                 else "; nothing was kept (give an output folder to keep the scores of a run that stops)")
        raise Interrupted(text, cause=exc) from exc
    return merge_evaluations([p for _, p in sorted(parts, key=lambda t: t[0])])


class EvaluateActor:
    """One model session scoring one image per call with :func:`score_frames` under the driver's plan.

    With ``keep`` (an output folder) and ``fingerprint``: an image's part kept there by an
    earlier run is taken as it is; a newly scored one is kept there.
    """

    def __init__(self, model: ModelBytes, provider: str, plan: EvaluationPlan, keep: str = "", fingerprint: str = ""):
        import ray

        self.explainer = model.load(ray, provider)
        self.plan = plan
        self.keep, self.fingerprint = keep, fingerprint

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts, kept = [], []
        for index, path, sha, data, shape, error in zip(batch["index"], batch["path"], batch["sha256"],
                                                        batch["data"], batch["shape"], batch["error"]):
            index, path, sha = int(index), str(path), str(sha)
            part = kept_part(self.keep, index, sha, self.fingerprint) if self.keep and sha else None
            kept.append(part is not None)
            if part is None:
                part = score_frames(self.explainer, [frame_of(index, path, data, shape, error)], self.plan)
                if self.keep and sha and part.sources and not part.failed:
                    try:
                        keep_part(self.keep, index, sha, self.fingerprint, part)
                    except AttnmapError:
                        pass  # not kept: a rerun scores it again
            parts.append(pickle.dumps(part))
        return {"index": np.asarray(batch["index"], np.int64), "path": np.asarray(batch["path"]),
                "part": np.array(parts, dtype=object), "kept": np.array(kept, dtype=bool)}
