"""Explain and evaluate image collections past one machine, on a Ray cluster (Ray Data).

* :mod:`~attnmap.runtime.fronts.distributed.cluster`: a local Ray instance or an existing cluster.
* :mod:`~attnmap.runtime.fronts.distributed.pipeline`: ``attnmap explain --engine ray``.
* :mod:`~attnmap.runtime.fronts.distributed.evaluate`: ``attnmap evaluate --engine ray``.
* :mod:`~attnmap.runtime.fronts.distributed.table`: the run table and resuming by content hash.

SOURCE arguments and manifests become image paths in :mod:`attnmap.runtime.frames.manifest`.

Ray (the ``distributed`` extra) is imported only when a run starts; importing this package
needs NumPy and OpenCV alone.
"""

from attnmap.runtime.fronts.distributed.cluster import ClusterError
from attnmap.runtime.fronts.distributed.pipeline import RayOptions, RayReport, explain_on_ray

__all__ = ["ClusterError", "RayOptions", "RayReport", "explain_on_ray"]
