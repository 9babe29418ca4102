"""What ``attnmap evaluate`` writes: the text table, the per-image CSV and the curve plots of an
:class:`~attnmap.runtime.evaluation.result.Evaluation`.

The plots are drawn with OpenCV (no plotting library in the runtime): one PNG per pair of
curves, each a panel with one line per method (the curve averaged over images), axes from 0
to 1 and a legend.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np

from attnmap.runtime.core.files import write_bytes, write_image
from attnmap.runtime.evaluation.result import LOCALISATION, METRICS, PERTURBATION, Evaluation
from attnmap.runtime.evaluation.timing import PLAIN
from attnmap.runtime.fronts.evaluate.cost_plot import write_cost_plot

# Line colours (BGR), one per method in order; the random floor is always grey.
_PALETTE = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
            (194, 119, 227), (34, 189, 188), (207, 190, 23), (0, 0, 0)]
_GREY = (150, 150, 150)
PLOTS = {"perturbation.png": (("positive", "negative"), "pn_fractions", "fraction removed", "top-1 = class"),
         "deletion_insertion.png": (("deletion", "insertion"), "di_fractions", "fraction removed / restored",
                                    "p(class)")}
COST_COLUMNS = ("explain_ms", "plain_ms")  # per_image.csv's timing columns (blank without timing)


def format_evaluation(result: Evaluation) -> str:
    """Methods x metrics text tables, mean [95% interval]: perturbation, then localisation if measured."""
    s = result.summary()
    head = (f"{result.model}  {result.images} images  unit {result.unit}  baseline {result.baseline}\n"
            "positive, deletion: lower is better; negative, insertion and localisation: higher is better")
    lines = [head]
    width = max([len("method"), *map(len, s)]) + 2
    for names in (PERTURBATION, LOCALISATION):
        if all(s[m][n] is None for m in s for n in names):
            continue
        lines.append("method".ljust(width) + "".join(f"{n:>26}" for n in names))
        for method, metrics in s.items():
            cells = []
            for n in names:
                v = metrics[n]
                cells.append("-".rjust(26) if v is None else
                             f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]".rjust(26))
            lines.append(method.ljust(width) + "".join(cells))
    cost = result.cost()
    if cost:
        lines.append(f"cost per image (median over {result.images}; plain inference "
                     f"{cost[PLAIN]['explain_ms']:.1f} ms)")
        lines.append("method".ljust(width) + f"{'explain ms':>14}{'x plain':>10}")
        for method in s:
            if method in cost:
                lines.append(method.ljust(width) + f"{cost[method]['explain_ms']:>14.1f}{cost[method]['cost_x']:>10.2f}")
    return "\n".join(lines)


def write_csv(result: Evaluation, path: str | Path) -> Path:
    """One row per image and method: source, explained class, method, every metric, and with
    timing that image's explain time and plain inference's, in ms (blank where not measured).
    Written atomically."""
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["source", "class", "method", *METRICS, *COST_COLUMNS])
    times = result.timings
    for i, (source, target) in enumerate(zip(result.sources, result.targets)):
        plain = f"{times[PLAIN][i] * 1e3:.4g}" if PLAIN in times else ""
        for method, metrics in result.per_image.items():
            row = []
            for name in METRICS:
                values = metrics.get(name)
                row.append("" if not values else f"{values[i]:.6g}")
            ms = f"{times[method][i] * 1e3:.4g}" if method in times else ""
            out.writerow([source, target, method, *row, ms, plain if ms else ""])
    return write_bytes(path, buf.getvalue().encode("utf-8"))


def _panel(curves: dict[str, dict], key: str, fractions: str, xlabel: str, ylabel: str,
           size: tuple[int, int] = (420, 520)) -> np.ndarray:
    """One plot panel (H, W, 3) BGR: each method's mean ``key`` curve over ``fractions``."""
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 56, 16, 34, 48
    pw, ph = w - left - right, h - top - bottom
    font = cv2.FONT_HERSHEY_SIMPLEX

    def at(fx: float, fy: float) -> tuple[int, int]:
        return int(round(left + fx * pw)), int(round(top + (1.0 - fy) * ph))

    for t in np.linspace(0.0, 1.0, 5):
        cv2.line(img, at(t, 0), at(t, 1), (230, 230, 230), 1)
        cv2.line(img, at(0, t), at(1, t), (230, 230, 230), 1)
        cv2.putText(img, f"{t:.2g}", (at(t, 0)[0] - 10, h - bottom + 18), font, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(img, f"{t:.2g}", (6, at(0, t)[1] + 4), font, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(img, at(0, 1), at(1, 0), (80, 80, 80), 1)
    cv2.putText(img, f"{key}: {ylabel}", (left, 22), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (left + pw // 2 - 60, h - 10), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    legend = max(cv2.getTextSize(m, font, 0.4, 1)[0][0] for m in curves) + 34
    for i, (method, c) in enumerate(curves.items()):
        colour = _GREY if method == "random" else _PALETTE[i % len(_PALETTE)]
        pts = np.array([at(f, min(max(v, 0.0), 1.0)) for f, v in zip(c[fractions], c[key])], np.int32)
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        y = top + 16 + 16 * i
        x0 = w - right - legend
        cv2.line(img, (x0, y - 4), (x0 + 20, y - 4), colour, 2)
        cv2.putText(img, method, (x0 + 26, y), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def write_plots(result: Evaluation, out_dir: str | Path) -> list[Path]:
    """``perturbation.png`` and ``deletion_insertion.png`` in ``out_dir``, and with timing
    ``cost.png`` (:mod:`~attnmap.runtime.fronts.evaluate.cost_plot`); none without images."""
    curves = result.mean_curves()
    if not curves:
        return []
    written = []
    for name, (keys, fractions, xlabel, ylabel) in PLOTS.items():
        panels = [_panel(curves, k, fractions, xlabel, ylabel) for k in keys]
        written.append(write_image(Path(out_dir) / name, np.hstack(panels)))
    cost = write_cost_plot(result, out_dir)
    return written if cost is None else [*written, cost]


__all__ = ["COST_COLUMNS", "PLOTS", "format_evaluation", "write_csv", "write_plots"]
