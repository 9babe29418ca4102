"""Resuming a distributed evaluation: each image's scores kept in the output folder.

As :mod:`~attnmap.runtime.fronts.distributed.table` keeps an explained image's row, an image
scored on Ray keeps its part of the evaluation (its per-image metrics and curves) as
``.attnmap/evaluate/<position>-<hash>.json`` in the output folder, written atomically once
scored. A rerun into the same folder takes an image's kept part instead of scoring it again
when the part was made from the same bytes (SHA-256), at the same position (the position seeds
the random floor) and under the same settings (the model file's hash and the plan: methods and
their options, baseline, steps, unit, fit, ground truth); anything else is scored again.
Images that could not be scored keep nothing: a rerun tries them again. Floats travel as JSON
numbers (Python writes the shortest text that reads back to the same float64), so a resumed
run's numbers are the first run's exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from attnmap.runtime.core.files import write_bytes
from attnmap.runtime.evaluation.result import Evaluation

SCORES_DIR = Path(".attnmap") / "evaluate"

__all__ = ["SCORES_DIR", "evaluation_fingerprint", "kept_part", "keep_part", "part_from_json", "part_to_json",
           "score_path"]


def evaluation_fingerprint(model_sha256: str, plan) -> str:
    """16 hex digits naming what changes an image's scores (the model file and the checked plan).

    Args:
        model_sha256: the model file's SHA-256.
        plan: a checked :class:`~attnmap.runtime.evaluation.plan.EvaluationPlan`.
    """
    truth = plan.truth
    settings = {"model": model_sha256, "methods": {spec: [name, dict(opts)] for spec, (name, opts)
                                                   in plan.checked_methods.items()},
                "baseline": plan.baseline, "sigma": plan.sigma, "steps": plan.steps, "unit": plan.unit,
                "fit": plan.fit, "labels": truth.labels, "boxes": truth.boxes,
                "mask_dir": str(truth.mask_dir) if truth.mask_dir is not None else None}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def score_path(out_dir: str | Path, index: int, sha256: str) -> Path:
    """Where the scores of the image at ``index`` with content hash ``sha256`` are kept."""
    return Path(out_dir) / SCORES_DIR / f"{int(index):06d}-{sha256[:16]}.json"


def keep_part(out_dir: str | Path, index: int, sha256: str, fingerprint: str, part: Evaluation) -> Path:
    """Keep a scored image's part (atomically).

    Raises:
        OutputError: the file cannot be written.
    """
    doc = {"fingerprint": fingerprint, "sha256": sha256, "index": int(index), "part": part_to_json(part)}
    return write_bytes(score_path(out_dir, index, sha256), json.dumps(doc).encode("utf-8"))


def kept_part(out_dir: str | Path, index: int, sha256: str, fingerprint: str) -> Evaluation | None:
    """The kept part of an image already scored under these settings, or None to score it."""
    try:
        doc = json.loads(score_path(out_dir, index, sha256).read_text(encoding="utf-8"))
        if doc["fingerprint"] != fingerprint or doc["sha256"] != sha256 or doc["index"] != int(index):
            return None
        part = part_from_json(doc["part"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return part if part.sources and not part.failed else None


def part_to_json(part: Evaluation) -> dict[str, Any]:
    """An :class:`Evaluation` as JSON-able lists (float64 values exactly)."""
    return {"model": part.model, "unit": part.unit, "baseline": part.baseline, "per_image": part.per_image,
            "curves": {m: {k: [np.asarray(c, np.float64).tolist() for c in v] for k, v in curves.items()}
                       for m, curves in part.curves.items()},
            "fractions": {k: np.asarray(v, np.float64).tolist() for k, v in part.fractions.items()},
            "sources": list(part.sources), "targets": [int(t) for t in part.targets],
            "failed": [list(f) for f in part.failed]}


def part_from_json(doc: dict[str, Any]) -> Evaluation:
    """The :class:`Evaluation` :func:`part_to_json` wrote."""
    return Evaluation(
        str(doc["model"]), str(doc["unit"]), str(doc["baseline"]),
        per_image={m: {k: [float(x) for x in v] for k, v in metrics.items()} for m, metrics in doc["per_image"].items()},
        curves={m: {k: [np.asarray(c, np.float64) for c in v] for k, v in curves.items()}
                for m, curves in doc["curves"].items()},
        fractions={k: np.asarray(v, np.float64) for k, v in doc["fractions"].items()},
        sources=[str(s) for s in doc["sources"]], targets=[int(t) for t in doc["targets"]],
        failed=[(str(s), str(r)) for s, r in doc["failed"]])
