"""Explain and evaluate image collections past one machine, on a Ray cluster (Ray Data).

* :mod:`~attnmap.runtime.fronts.distributed.manifest`: SOURCE arguments and manifests -> image paths.
* :mod:`~attnmap.runtime.fronts.distributed.cluster`: a local Ray instance or an existing cluster.
* :mod:`~attnmap.runtime.fronts.distributed.pipeline`: ``attnmap explain --engine ray``.
* :mod:`~attnmap.runtime.fronts.distributed.evaluate`: ``attnmap evaluate --engine ray``.
* :mod:`~attnmap.runtime.fronts.distributed.table`: the run table and resuming by content hash.

Ray (the ``distributed`` extra) is imported only when a run starts; importing this package
needs NumPy and OpenCV alone.
"""

from attnmap.runtime.fronts.distributed.cluster import ClusterError
from attnmap.runtime.fronts.distributed.manifest import expand_manifests, list_images, read_manifest
from attnmap.runtime.fronts.distributed.pipeline import RayOptions, RayReport, explain_on_ray

__all__ = ["ClusterError", "RayOptions", "RayReport", "expand_manifests", "explain_on_ray", "list_images",
           "read_manifest"]
