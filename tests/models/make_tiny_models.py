"""Regenerate the committed tiny test models: ``.venv/bin/python tests/models/make_tiny_models.py``.

Writes, beside this script:

- ``tiny_vit.onnx``: conftest's ``TINY_VIT`` (32 x 32 input, 8 px patches, 2 blocks, 2 heads,
  width 32, the ten ``TINY_LABELS``), random weights drawn after ``torch.manual_seed(0)``, with
  the ``logits`` and ``attentions`` outputs.
- ``tiny_vit_grads.onnx``: the same model and weights exported with ``gradients=True`` (a
  ``target`` input; ``attention_grads``, ``tokens`` and ``token_grads`` outputs), for the
  gradient methods and Grad-CAM.

Needs torch and timm (the export side); the files it writes let the runtime tests run without
them. The export is deterministic: run twice, it writes the same bytes.
``tests/models/test_tiny_models.py`` re-exports with :func:`export_tiny_vit` and fails when the
committed files no longer match what this script produces; run this script on purpose after a
change to the export or to ``TINY_VIT``, and commit the new files.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, conftest (TINY_VIT and the seeded export: the one definition of the tiny
# model) sits one folder up; under pytest that folder is on sys.path already.
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from conftest import TINY_VIT_FILE, TINY_VIT_GRADS_FILE, export_tiny_vit_as_written  # noqa: E402


def export_tiny_vit(out: str | Path, *, gradients: bool = False) -> Path:
    """Export the seeded tiny ViT (conftest's ``TINY_VIT``) to ``out``, as committed.

    The exporter's per-node debug records (``pkg.torch.onnx.stack_trace`` and the like: absolute
    paths of this checkout, close to half the file) are dropped. They change nothing the graph
    computes, and without them the file is the same on every machine.

    Args:
        out: the ``.onnx`` file to write (replaced atomically).
        gradients: also export ``attention_grads`` (float32, (B, L, H, N, N)), ``tokens`` and
            ``token_grads`` (float32, (B, N, D)) for a ``target`` input (int64, (B,)).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: the export or its parity check failed.
    """
    import onnx

    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = export_tiny_vit_as_written(Path(tmp) / out.name, gradients=gradients)
        proto = onnx.load(str(raw))
        _strip_debug_records(proto)
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(raw))
        os.chmod(raw, 0o644)
        os.replace(raw, out)
    return out


def _strip_debug_records(proto) -> None:
    """Empty the doc string and metadata of every node, in the graph, its subgraphs and functions."""
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    while nodes:
        node = nodes.pop()
        del node.metadata_props[:]
        node.doc_string = ""
        for attr in node.attribute:
            for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                nodes.extend(graph.node)


def main() -> None:
    for path, gradients in ((TINY_VIT_FILE, False), (TINY_VIT_GRADS_FILE, True)):
        export_tiny_vit(path, gradients=gradients)
        data = path.read_bytes()
        print(f"wrote {path} ({len(data) / 1024:.0f} KiB, sha256 {hashlib.sha256(data).hexdigest()[:16]})")


if __name__ == "__main__":
    main()
