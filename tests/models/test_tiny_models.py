"""The committed tiny models are what ``make_tiny_models.py`` exports today (needs torch).

The runtime tests read ``tiny_vit.onnx`` and ``tiny_vit_grads.onnx`` without torch; this test
re-exports both and compares: the graph's inputs and outputs, the metadata (all of it but the
exporter's tool versions, which change with every torch upgrade without changing the model),
and the outputs on a fixed batch through onnxruntime. A change to the export, to ``TINY_VIT``
or to the seed makes it fail until the files are regenerated and committed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import TINY_LABELS, TINY_VIT, TINY_VIT_FILE, TINY_VIT_GRADS_FILE
from attnmap.runtime.core.meta import ModelMeta

pytestmark = [pytest.mark.export, pytest.mark.slow]


def _io(sess) -> list[tuple[str, str, list]]:
    return [(v.name, v.type, list(v.shape)) for v in (*sess.get_inputs(), *sess.get_outputs())]


@pytest.mark.parametrize("committed, gradients", [(TINY_VIT_FILE, False), (TINY_VIT_GRADS_FILE, True)],
                         ids=["attentions", "gradients"])
def test_the_committed_tiny_model_is_what_the_script_exports_today(tmp_path, committed, gradients):
    pytest.importorskip("torch", reason="re-exporting the tiny ViT needs torch")
    pytest.importorskip("timm", reason="re-exporting the tiny ViT needs timm")
    import onnxruntime as ort

    from make_tiny_models import export_tiny_vit

    fresh = export_tiny_vit(tmp_path / committed.name, gradients=gradients)
    old, new = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (committed, fresh))

    assert _io(old) == _io(new)
    old_meta, new_meta = (ModelMeta.from_props(s.get_modelmeta().custom_metadata_map, str(p))
                          for s, p in ((old, committed), (new, fresh)))
    assert dataclasses.replace(old_meta, exporter={}) == dataclasses.replace(new_meta, exporter={})
    # What the runtime tests rely on, read from the committed file itself.
    assert old_meta.input_size == (3, TINY_VIT["img_size"], TINY_VIT["img_size"])
    assert (old_meta.num_layers, old_meta.num_heads, old_meta.grid_size) == (2, 2, (4, 4))
    assert old_meta.label_names == TINY_LABELS and old_meta.has_gradients == gradients

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    feed = {"input": x, **({"target": np.array([-1, 3, 9], np.int64)} if gradients else {})}
    got, want = old.run(None, feed), new.run(None, feed)
    names = [o.name for o in old.get_outputs()]
    assert names == ["logits", "attentions"] + (["attention_grads", "tokens", "token_grads"] if gradients else [])
    for name, g, w in zip(names, got, want):
        # gradients: relative to the largest
        scale = float(np.abs(w).max()) if name in ("attention_grads", "token_grads") else 1.0
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * scale, err_msg=name)
    # Not vacuous: the three images get logits that differ by far more than the tolerance.
    assert np.ptp(got[0], axis=0).max() > 1e-2
