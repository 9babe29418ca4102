"""attnmap's runtime: explain exported ViTs with onnxruntime, NumPy and OpenCV only.

Never imports torch or timm (a test checks it), so it runs on edge boxes with neither. The
folders follow a frame's way through it:

* ``frames/``  where frames come from (files, folders, videos, cameras, streams) and go to
  (video files, windows); atomic files.
* ``image/``   decoding and preprocessing into the model input, and the geometry back.
* ``model/``   the ONNX session, its graph rewrites and output buffers, the shipped models.
* ``methods/`` explanation methods: attention tensors in, maps over the patch grid out.
* ``draw/``    heatmaps and captions over frames, styled by one :class:`OverlayStyle`.
* ``engine/``  the stages composed (:class:`Explainer`) and the one frame engine that drives
  them over any stream of frames (:class:`FrameEngine`).
* ``fronts/``  the applications on the engine: offline explain, live, bench.
* ``core/``    what all of them share: errors, the metadata schema, option specs, files.

Import the public API from :mod:`attnmap`.
"""
