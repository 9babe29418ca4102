"""The one batching and threading policy for throughput work (folders and videos).

One onnxruntime run leaves the cores idle at each of its synchronisation points, and without
spinning its threads sleep there. Two runs at once, each on its own batch and half the cores,
fill those gaps, and each single-threaded run then does best on small batches (likely because
its activations fit in the core's own L2 cache). The figures behind the defaults are in the
README's performance section; larger machines and GPUs were not measured, and CUDA keeps one
run at batch 8.
"""

from __future__ import annotations

from typing import NamedTuple

from attnmap.runtime.model import providers as _providers, session as _session


class ThroughputPlan(NamedTuple):
    """How to run throughput work: see :func:`throughput_plan`."""

    threads: int | None  # intra-op threads per run (None: one per physical core)
    workers: int  # model runs at once, each on its own batch
    batch_size: int  # frames per model run


def throughput_plan(provider: str, threads: int | None = None, workers: int | None = None,
                    batch_size: int | None = None) -> ThroughputPlan:
    """Threads, model runs at once and batch size for throughput work: videos and folders.

    Args:
        provider: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        threads: intra-op threads asked for (None: decided here).
        workers: runs at once asked for (None: decided here).
        batch_size: frames per run asked for (None: decided here).

    Returns:
        On a CPU with 2 or more physical cores and neither threads nor workers given:
        ``(cores // 2, 2)``. With ``workers`` given on a CPU: ``(threads or cores // workers
        (at least 1), workers)``. Otherwise (CUDA, one core, or only ``threads`` given):
        ``(threads, workers or 1)``. The batch size is ``batch_size`` if given, else 4 on a
        CPU and 8 on CUDA.
    """
    cpu = _providers.resolve_providers(provider)[0] == "CPUExecutionProvider"
    batch = batch_size or (4 if cpu else 8)
    if not cpu:
        return ThroughputPlan(threads, workers or 1, batch)
    cores = _session.physical_cores()
    if workers is None:
        if threads is not None or cores < 2:
            return ThroughputPlan(threads, 1, batch)
        workers = 2
    return ThroughputPlan(threads or max(1, cores // workers), workers, batch)


def plan_for_inputs(provider: str, *, images: int, videos: int, threads: int | None = None,
                    workers: int | None = None, batch_size: int | None = None,
                    per_image: bool = False) -> ThroughputPlan:
    """The plan ``attnmap explain`` uses for a given set of inputs.

    Concurrent runs pay only where there is more than one batch to run: any video or image
    sequence, or more images than one batch. For a single batch (and for work done image by
    image, ``per_image``) one run on all the cores is faster.

    Args:
        provider: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        images: still images to explain.
        videos: videos and image sequences to explain.
        threads: intra-op threads asked for.
        workers: runs at once asked for.
        batch_size: frames per run asked for.
        per_image: the work goes one image at a time (class-specific top classes).
    """
    plan = throughput_plan(provider, threads, workers, batch_size)
    if not per_image and (videos or images > plan.batch_size):
        return plan
    return ThroughputPlan(threads, workers or 1, plan.batch_size)
