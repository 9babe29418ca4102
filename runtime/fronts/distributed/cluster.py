"""Connecting to Ray: a local instance on this machine's cores, or an existing cluster.

``ray`` is an optional dependency (the ``distributed`` extra) and is imported only here, only
when a distributed run starts. Ray's own logs stay off the terminal (stdout carries results,
stderr attnmap's progress and errors) unless a run is ``verbose``: the driver logs errors only,
its C++ core fatal ones only, Ray Data shows no progress bars, and workers' output is not
forwarded to the driver (it stays in Ray's session logs, ``/tmp/ray/session_latest/logs``).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from attnmap.runtime.core.errors import AttnmapError, ClusterError
from attnmap.runtime.fronts.distributed.instances import forget_instance, record_instance, sweep_stale_instances
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
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None, verbose: bool = False,
                on_note: Callable[[str], None] | None = None) -> Iterator[Any]:
    """Connect to Ray for the length of a run; yield the ``ray`` module.

    Args:
        address: None starts a local Ray instance on this machine (shut down at the end);
            ``"auto"`` joins the cluster this machine is part of (``ray start`` ran here);
            ``"ray://host:10001"`` connects through Ray Client. Where Ray is already
            initialised in this process (a test session), that instance is used and left running.
        num_cpus: CPUs of the local instance (default: all of this machine's).
        verbose: Ray's own logs, progress bars and the workers' output on this process's
            stderr, at Ray's default levels; else only its errors (see the module's doc).
        on_note: called with one line per local instance a killed run left behind and this
            one stopped (see :mod:`~attnmap.runtime.fronts.distributed.instances`).

    Raises:
        ClusterError: Ray is missing, or the cluster cannot be reached or started.
    """
    ray = import_ray()
    _raylet_errors_to_stderr()
    if ray.is_initialized():
        data_context(ray, verbose)
        yield ray
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=verbose,
                                  logging_level=logging.INFO if verbose else logging.ERROR, ignore_reinit_error=True)
    if address is None:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
    sweep_stale_instances(on_note=on_note)
    try:
        with _core_logs(verbose):
            ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise ClusterError(f"cannot connect to {where}: {first_line(exc)} (start a cluster with `ray start --head`, "
                           "or leave out the address for a local instance)") from exc
    data_context(ray, verbose)
    if address is None:
        _record(ray)
    try:
        yield ray
    finally:
        ray.shutdown()
        if address is None:
            forget_instance()


def _raylet_errors_to_stderr() -> None:
    """Ray prints the raylet's error messages ("A worker died or was killed ...", as after an
    actor or node fault it recovers from) on the driver's stdout, where ``--json`` records go;
    they go to stderr instead. Ray offers no switch for it: its printing function, a module
    global its error listener looks up on each message, is wrapped once per process."""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "attnmap_wrapped", False):
        return

    def print_to_stdstream(data, ignore_prefix):  # noqa: ANN001 - Ray's signature
        if isinstance(data, dict) and data.get("pid") == "raylet":
            data = {**data, "is_err": True}
        return original(data, ignore_prefix)

    print_to_stdstream.attnmap_wrapped = True
    worker.print_to_stdstream = print_to_stdstream


def _record(ray: Any) -> None:
    """Record the local instance this process started, so that the next run can stop what a
    SIGKILL of this one leaves (Ray's session folder names its processes)."""
    try:
        from ray._private import worker  # Ray keeps the session folder on its private node object

        session = worker._global_node.get_session_dir_path()
    except (ImportError, AttributeError):
        return
    if session:
        try:
            record_instance(str(session))
        except OSError:
            pass  # a read-only temp folder: the run goes on without the safety net


def data_context(ray: Any, verbose: bool = False) -> None:
    """Unless ``verbose``: no progress bars and no INFO or WARNING lines of Ray's Python side on
    the terminal (Ray Data still writes its full logs under the session's log folder)."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose


@contextmanager
def _core_logs(verbose: bool) -> Iterator[None]:
    """Around ``ray.init``: unless ``verbose``, Ray's C++ core in this process logs fatal errors only.

    Its error lines (one per actor pool of Ray Data, about restarts) go straight to file
    descriptor 2; ``RAY_BACKEND_LOG_LEVEL``, read as the core starts, is the one switch, and
    the core announces the switch itself on descriptor 2, so that stays closed while it starts.
    A level the user set is left alone; the processes a local instance starts inherit it.
    """
    if verbose or "RAY_BACKEND_LOG_LEVEL" in os.environ:
        yield
        return
    os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        del os.environ["RAY_BACKEND_LOG_LEVEL"]


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
