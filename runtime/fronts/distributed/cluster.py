"""Connecting to Ray: a local instance on this machine's cores, or an existing cluster.

``ray`` is an optional dependency (the ``distributed`` extra) and is imported only here, only
when a distributed run starts. Ray's own logs stay off stdout (which carries results): the
driver logs warnings only, to stderr, and workers' output is not forwarded to the driver
unless asked (it stays in Ray's session logs, ``/tmp/ray/session_latest/logs``).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

from attnmap.runtime.core.errors import AttnmapError, ClusterError
from attnmap.runtime.model.graph import first_line

INSTALL_HINT = "pip install 'attnmap[distributed]'"

__all__ = ["ClusterError", "collect", "import_ray", "ray_cluster"]


def import_ray() -> Any:
    """``ray`` (with ``ray.data``), or ClusterError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ClusterError(f"the Ray engine needs Ray Data ({exc}); install it with {INSTALL_HINT}") from exc
    return ray


@contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = False) -> Iterator[Any]:
    """Connect to Ray for the length of a run; yield the ``ray`` module.

    Args:
        address: None starts a local Ray instance on this machine (shut down at the end);
            ``"auto"`` joins the cluster this machine is part of (``ray start`` ran here);
            ``"ray://host:10001"`` connects through Ray Client. Where Ray is already
            initialised in this process (a test session), that instance is used and left running.
        num_cpus: CPUs of the local instance (default: all of this machine's).
        log_to_driver: forward workers' stdout/stderr to this process's stderr.

    Raises:
        ClusterError: Ray is missing, or the cluster cannot be reached or started.
    """
    ray = import_ray()
    if ray.is_initialized():
        quiet_data_context(ray)
        yield ray
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=log_to_driver,
                                  logging_level=logging.WARNING, ignore_reinit_error=True)
    if address is None:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise ClusterError(f"cannot connect to {where}: {first_line(exc)} (start a cluster with `ray start --head`, "
                           "or leave out --address for a local instance)") from exc
    quiet_data_context(ray)
    try:
        yield ray
    finally:
        ray.shutdown()


def quiet_data_context(ray: Any) -> None:
    """No progress bars and no per-run INFO lines on the terminal: stderr carries attnmap's own
    progress and errors (Ray Data still writes its full logs under the session's log folder)."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False


def collect(rows: Iterator[dict[str, Any]], what: str, total: int) -> Iterator[dict[str, Any]]:
    """A Ray Dataset's rows; a failure of the pipeline itself (an actor that cannot start, a
    lost node; Ray wraps them in its own errors) becomes ClusterError saying how far it got.
    Per-image failures never get here: they are rows."""
    n = 0
    try:
        for row in rows:
            n += 1
            yield row
    except AttnmapError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray's RayTaskError, RayActorError, ObjectLostError ...
        raise ClusterError(f"the Ray {what} failed after {n} of {total} images: {type(exc).__name__}: "
                           f"{first_line(exc)}") from exc
