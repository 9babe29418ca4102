"""A collection of inputs explained on the engine of choice: this machine, or Ray.

What ``attnmap explain`` runs, as one library call: the engine choice and the checks that go
with it (a Ray parameter on the local engine, a local one on Ray), the throughput plan
(threads, model runs at once, batch size) for the inputs at hand, the class to explain, and
the run itself, through :func:`~attnmap.runtime.fronts.offline.explain_inputs` or
:func:`~attnmap.runtime.fronts.distributed.explain_on_ray`. Both report each input through the
same callbacks, with the same record (:mod:`attnmap.runtime.engine.record`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from attnmap.runtime.core.errors import OptionConflict, OptionError
from attnmap.runtime.engine.engine import FrameEngine, Job
from attnmap.runtime.engine.explainer import Explainer, parse_class_spec
from attnmap.runtime.fronts.offline import FolderOutput, OfflineReport, count_inputs, explain_inputs
from attnmap.runtime.methods import AUTO, METHODS

ENGINES = ("local", "ray")
# what the local engine takes and Ray does not: each Ray actor is one session on one CPU thread
LOCAL_ONLY_HINT = "on Ray, {actors} sets how many model sessions run, each on one CPU thread or on its GPU"

__all__ = ["ENGINES", "EngineChoice", "explain_collection"]


@dataclass(frozen=True)
class EngineChoice:
    """Where a collection is explained.

    Attributes:
        engine: ``"local"`` (this machine) or ``"ray"`` (Ray Data, a local instance or a cluster).
        address: Ray only: None for a local instance, ``"auto"`` or ``"ray://host:10001"``.
        actors: Ray only: model actors (None: one per CPU of the cluster).
        gpus_per_actor: Ray only: GPUs each actor takes (0: a CPU core each).
        verbose: Ray only: its own logs and progress bars on the terminal.

    Raises:
        OptionError: an unknown engine.
        OptionConflict: a Ray parameter given for the local engine.
    """

    engine: str = "local"
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise OptionError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        if self.engine == "local":
            given = [(name, None) for name in ("address", "actors", "gpus_per_actor") if getattr(self, name)]
            if given:
                raise OptionConflict(given, ("engine", "ray"))

    @property
    def on_ray(self) -> bool:
        return self.engine == "ray"

    def ray_options(self, provider: str = "auto", batch_size: int | None = None, **local_only: Any):
        """The :class:`~attnmap.runtime.fronts.distributed.RayOptions` of this choice.

        Args:
            provider: the actors' onnxruntime provider.
            batch_size: images per model run in an actor (None: Ray's default).
            local_only: parameters of the local engine (``threads``, ``workers``) as given; any
                that is set is refused.

        Raises:
            OptionConflict: a local-engine parameter is set.
        """
        given = [(name, None) for name, value in local_only.items() if value]
        if given:
            raise OptionConflict(given, ("engine", "local"), hint=LOCAL_ONLY_HINT)
        from attnmap.runtime.fronts.distributed import RayOptions

        return RayOptions(address=self.address, actors=self.actors, gpus_per_actor=self.gpus_per_actor,
                          provider=provider, verbose=self.verbose, **({"batch_size": batch_size} if batch_size else {}))


def explain_collection(model: str | Path | None, sources: Sequence[str], job: Job, output: FolderOutput,
                       engine: EngineChoice = EngineChoice(), *, class_spec: str | None = None,
                       provider: str = "auto", threads: int | None = None, workers: int | None = None,
                       batch_size: int | None = None,
                       on_record: Callable[[dict[str, Any], str], None],
                       on_fail: Callable[[str, str], None],
                       on_video: Callable[[str, Any], None] | None = None,
                       on_note: Callable[[str], None] | None = None) -> OfflineReport:
    """Explain every input of ``sources`` into ``output`` on the chosen engine.

    Args:
        model: an .onnx file or a shipped model name (None: the shipped default).
        sources: image files, folders, globs, videos, image sequences, manifests (Ray: still
            images only).
        job: method, options, fit, top-k and overlay style; its class comes from ``class_spec``.
        output: the folder and what to write per input.
        engine: where to run.
        class_spec: the class to explain: an index, a label name, or ``topk:N`` for the N
            most probable classes side by side (class-specific methods); None: the predicted one.
        provider: onnxruntime provider.
        threads, workers, batch_size: the throughput plan's settings as asked for (None: the
            plan's choice for these inputs); Ray takes ``batch_size`` only.
        on_record: ``on_record(record, line)`` per input written (or resumed, on Ray).
        on_fail: ``on_fail(source, reason)`` per input that failed.
        on_video: ``on_video(source, progress)`` as a video advances (local engine).
        on_note: ``on_note(line)`` for what the user should know and is no failure: files a
            folder's listing left out, the codec note, partial videos swept (local engine), Ray
            processes a killed run left and this one stopped (Ray).

    Returns:
        :class:`~attnmap.runtime.fronts.offline.OfflineReport`: inputs done, skipped (Ray:
        already complete from an earlier run) and failed.

    Raises:
        OptionConflict: a parameter of the other engine, or a class for a class-agnostic method.
        RunConflictError: ``output.out_dir`` holds a run with other settings and
            ``output.overwrite`` is off.
        AttnmapError: the model cannot be loaded, the job does not fit it, Ray cannot start.
    """
    # auto picks a class-agnostic live map (LIVE_DEFAULTS), so a class goes with a named method only
    if class_spec is not None and (job.method == AUTO or not METHODS[job.method].class_specific):
        takes = [name for name, m in METHODS.items() if m.class_specific]
        raise OptionConflict([("class", None)], ("method", ", ".join(takes[:-1]) + f" or {takes[-1]}"),
                             hint=f"{job.method!r} is class-agnostic")
    if engine.on_ray:
        options = engine.ray_options(provider, batch_size, threads=threads, workers=workers)
        explainer = Explainer(model, provider="cpu", threads=1)  # checks the job; the actors load their own
    else:
        from attnmap.runtime.frames.manifest import plan_with_manifests
        from attnmap.runtime.model.plan import plan_for_inputs

        skip = {} if on_note is None else {"on_skip": lambda spec, why: on_note(f"{spec}: {why}")}
        planned = plan_with_manifests(sources, videos=True, **skip)
        images, videos = count_inputs(planned)
        plan = plan_for_inputs(provider, images=images, videos=videos, threads=threads, workers=workers,
                               batch_size=batch_size)
        explainer = Explainer(model, provider=provider, threads=plan.threads)
    if class_spec is not None:
        target, top_classes = parse_class_spec(explainer.meta, class_spec)
        job = dataclasses.replace(job, target=target, top_classes=top_classes)
    if engine.on_ray:
        from attnmap.runtime.fronts.distributed import explain_on_ray
        from attnmap.runtime.fronts.out_folder import claim_folder, run_settings

        claim_folder(output.out_dir, run_settings(FrameEngine(explainer, job)), overwrite=output.overwrite)
        ray = explain_on_ray(FrameEngine(explainer, job), sources, output, options, on_record=on_record,
                             on_fail=on_fail, on_note=on_note)
        return OfflineReport(done=ray.done, failed=ray.failed, skipped=ray.skipped)
    engine_ = FrameEngine(explainer, job, batch_size=plan.batch_size, workers=plan.workers)
    return explain_inputs(engine_, planned, output, on_record=on_record, on_fail=on_fail, on_video=on_video,
                          on_note=on_note)
