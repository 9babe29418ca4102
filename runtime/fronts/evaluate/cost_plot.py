"""``cost.png``: faithfulness against cost, one point per method, the Pareto front marked.

Two panels side by side, drawn with OpenCV like the curve plots: positive-perturbation AUC
(left) and deletion AUC (right), each against the method's cost in x plain inference on a log
axis. Lower is better on both axes, so the good corner is bottom left. The Pareto front
(:func:`~attnmap.runtime.evaluation.timing.pareto_front`: methods that no other method beats on
both cost and that score) is joined by a staircase and its points filled and named in black; a
dominated method is a hollow circle named in grey. The random map costs nothing to compare, so
it is the dashed floor line, not a point.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from attnmap.runtime.core.files import write_image
from attnmap.runtime.evaluation.result import RANDOM, Evaluation
from attnmap.runtime.evaluation.timing import PLAIN, pareto_front

COST_PLOT = "cost.png"
# (metric, title) of each panel, left to right
COST_PANELS = (("positive_auc", "positive AUC (lower is better)"), ("deletion_auc", "deletion AUC (lower is better)"))
PANEL_SIZE = (440, 560)  # (H, W) of one panel
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def cost_points(result: Evaluation, metric: str) -> dict[str, tuple[float, float]]:
    """method -> (cost in x plain inference, mean ``metric``) for every timed method (not random)."""
    cost, summary = result.cost(), result.summary()
    out = {}
    for method in result.per_image:
        stat = summary[method].get(metric)
        if method in (RANDOM, PLAIN) or method not in cost or stat is None or cost[method]["cost_x"] is None:
            continue
        out[method] = (float(cost[method]["cost_x"]), float(stat["mean"]))
    return out


def _ticks(lo: float, hi: float) -> list[float]:
    """Log-axis ticks between ``lo`` and ``hi``: 1, 2, 5 x powers of ten."""
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [m * 10.0 ** e for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    return out or [lo, hi]


def cost_panel(points: dict[str, tuple[float, float]], title: str, floor: float | None = None,
               size: tuple[int, int] = PANEL_SIZE) -> np.ndarray:
    """One panel (H, W, 3) BGR uint8: each method's (cost, score) with the Pareto front marked.

    Args:
        points: method -> (cost x plain inference > 0, score), lower better on both.
        title: the y axis' name, drawn on top.
        floor: the random map's score, drawn as a dashed line (None: no line).
        size: (H, W) of the panel.
    """
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, 24, 34, 48
    pw, ph = w - left - right, h - top - bottom
    names = list(points)
    costs = [max(points[m][0], 1e-3) for m in names]
    scores = [points[m][1] for m in names] + ([floor] if floor is not None else [])
    x_lo, x_hi = min(costs + [1.0]) / 1.5, max(costs + [1.0]) * 1.5
    y_lo, y_hi = min(scores + [0.0]), (max(scores) if scores else 1.0)
    pad = 0.08 * (y_hi - y_lo or 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def at(cost: float, score: float) -> tuple[int, int]:
        fx = (math.log10(max(cost, 1e-3)) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo))
        return int(round(left + fx * pw)), int(round(top + (1.0 - (score - y_lo) / (y_hi - y_lo)) * ph))

    grid, ink = (230, 230, 230), (60, 60, 60)
    for t in _ticks(x_lo, x_hi):
        x = at(t, y_lo)[0]
        cv2.line(img, (x, top), (x, top + ph), grid, 1)
        cv2.putText(img, f"{t:g}x", (x - 10, h - bottom + 18), _FONT, 0.4, ink, 1, cv2.LINE_AA)
    for t in np.linspace(y_lo, y_hi, 5):
        y = at(x_lo, t)[1]
        cv2.line(img, (left, y), (left + pw, y), grid, 1)
        cv2.putText(img, f"{t:.3g}", (4, y + 4), _FONT, 0.4, ink, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (80, 80, 80), 1)
    cv2.putText(img, title, (left, 22), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "cost: x plain inference (log)", (left + pw // 2 - 110, h - 10), _FONT, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    if floor is not None:
        y = at(x_lo, floor)[1]
        for x in range(left, left + pw, 12):
            cv2.line(img, (x, y), (min(x + 6, left + pw), y), (150, 150, 150), 1)
        cv2.putText(img, RANDOM, (left + 4, y - 5), _FONT, 0.4, (150, 150, 150), 1, cv2.LINE_AA)
    front = pareto_front([(c, points[m][1]) for c, m in zip(costs, names)])
    # the front as a staircase: each step holds its score until the next, cheaper-is-left point
    stairs = []
    for k, i in enumerate(front):
        p = at(costs[i], points[names[i]][1])
        if stairs:
            stairs.append((p[0], stairs[-1][1]))
        stairs.append(p)
    if len(stairs) > 1:
        cv2.polylines(img, [np.array(stairs, np.int32)], False, (40, 39, 214), 2, cv2.LINE_AA)
    on_front = set(front)
    for i, m in enumerate(names):
        p = at(costs[i], points[m][1])
        if i in on_front:
            cv2.circle(img, p, 5, (40, 39, 214), -1, cv2.LINE_AA)
        else:
            cv2.circle(img, p, 5, (120, 120, 120), 1, cv2.LINE_AA)
        colour = (0, 0, 0) if i in on_front else (130, 130, 130)
        tw = cv2.getTextSize(m, _FONT, 0.4, 1)[0][0]
        x = p[0] + 8 if p[0] + 8 + tw < w - 2 else p[0] - 8 - tw
        cv2.putText(img, m, (x, p[1] - 6), _FONT, 0.4, colour, 1, cv2.LINE_AA)
    cv2.putText(img, "filled, joined: Pareto front", (left + 6, top + ph - 8), _FONT, 0.4, (40, 39, 214), 1,
                cv2.LINE_AA)
    return img


def write_cost_plot(result: Evaluation, out_dir: str | Path) -> Path | None:
    """``cost.png`` in ``out_dir`` (both panels side by side), or None when nothing was timed.

    Written atomically: the file is there complete or not at all.
    """
    if not result.cost():
        return None
    summary = result.summary().get(RANDOM, {})
    panels = []
    for metric, title in COST_PANELS:
        floor = summary.get(metric)
        panels.append(cost_panel(cost_points(result, metric), title, None if floor is None else floor["mean"]))
    return write_image(Path(out_dir) / COST_PLOT, np.hstack(panels))


__all__ = ["COST_PANELS", "COST_PLOT", "PANEL_SIZE", "cost_panel", "cost_points", "write_cost_plot"]
