"""``evaluate --timing``'s report: the cost table, the CSV's timing columns and ``cost.png``
(faithfulness against cost, the Pareto front marked), written whole or not at all."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap.runtime.evaluation import RANDOM, Evaluation
from attnmap.runtime.evaluation.curves import Curves
from attnmap.runtime.evaluation.timing import PLAIN
from attnmap.runtime.fronts.evaluate import COST_COLUMNS, COST_PLOT, format_evaluation, write_csv, write_plots
from attnmap.runtime.fronts.evaluate.cost_plot import PANEL_SIZE, cost_panel, cost_points

# made-up methods: (seconds per image, positive AUC, deletion AUC); "slow" is dominated by "good"
# on positive perturbation (dearer and worse)
MADE_UP = {PLAIN: (0.010, None, None), "cheap": (0.011, 30.0, 0.16), "good": (0.030, 8.0, 0.06),
           "slow": (0.200, 12.0, 0.05), RANDOM: (None, 56.0, 0.30)}


def _evaluation(timed: bool = True, images: int = 2) -> Evaluation:
    r = Evaluation("m", "patch", "mean", {m: {} for m in MADE_UP if m != PLAIN})
    pn, di = np.linspace(0, 0.9, 10), np.linspace(0, 1, 5)
    for i in range(images):
        scores, curves, seconds = {}, {}, {}
        for m, (t, pos, dele) in MADE_UP.items():
            if t is not None:
                seconds[m] = t * (1 + 0.1 * i)
            if m == PLAIN:
                continue
            scores[m] = {"positive_auc": pos, "negative_auc": 50.0, "deletion_auc": dele, "insertion_auc": 0.4}
            curves[m] = Curves(pn, np.ones(10), np.ones(10), di, np.linspace(1, 0, 5), np.linspace(0, 1, 5))
        r._add(f"img{i}", 3, scores, curves, seconds if timed else None)
    return r


def test_cost_points_are_each_timed_methods_cost_and_mean_score_without_random():
    r = _evaluation()
    pts = cost_points(r, "positive_auc")
    assert set(pts) == {"cheap", "good", "slow"}
    assert pts["good"] == (3.0, 8.0) and pts["cheap"] == (1.1, 30.0) and pts["slow"] == (20.0, 12.0)
    assert cost_points(_evaluation(timed=False), "positive_auc") == {}


def test_cost_plot_is_written_beside_the_curves_with_both_panels(tmp_path):
    written = write_plots(_evaluation(), tmp_path)
    assert [p.name for p in written] == ["perturbation.png", "deletion_insertion.png", COST_PLOT]
    img = cv2.imread(str(tmp_path / COST_PLOT))
    assert img is not None and img.shape == (PANEL_SIZE[0], 2 * PANEL_SIZE[1], 3)
    assert (img < 250).any(axis=2).mean() > 0.01  # drawn on, not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no partial files


def test_no_cost_plot_without_timing_and_a_failed_write_leaves_nothing(tmp_path):
    written = write_plots(_evaluation(timed=False), tmp_path)
    assert COST_PLOT not in [p.name for p in written] and not (tmp_path / COST_PLOT).exists()
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    try:
        write_plots(_evaluation(), blocked)
    except Exception:  # noqa: BLE001 - whichever OutputError; what matters is what is left behind
        pass
    assert blocked.read_text() == "a file where the folder should be"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["blocked", *(p.name for p in written)])


def test_the_front_is_drawn_filled_and_dominated_points_hollow():
    pts = {"a": (1.0, 10.0), "b": (10.0, 20.0), "c": (100.0, 5.0)}  # b is dominated by a
    img = cost_panel(pts, "score")
    front_red = (np.abs(img.astype(int) - (40, 39, 214)).sum(axis=2) < 30)
    assert front_red.sum() > 50  # the staircase and the filled front points
    blank = cost_panel({}, "score")  # nothing timed: an empty frame, no error
    assert blank.shape == (*PANEL_SIZE, 3)


def test_text_table_and_csv_carry_the_cost(tmp_path):
    r = _evaluation()
    text = format_evaluation(r)
    assert "plain inference 10.5 ms" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("good") and "x plain" not in ln and "3.00" in ln)
    assert "31.5" in line  # median of 30 and 33 ms
    rows = list(csv.DictReader(open(write_csv(r, tmp_path / "per_image.csv"))))
    assert list(rows[0])[-2:] == list(COST_COLUMNS)
    good = [row for row in rows if row["method"] == "good"]
    assert [float(row["explain_ms"]) for row in good] == [30.0, 33.0]
    assert [float(row["plain_ms"]) for row in good] == [10.0, 11.0]
    rand = next(row for row in rows if row["method"] == RANDOM)
    assert rand["explain_ms"] == "" and rand["plain_ms"] == ""
    rows = list(csv.DictReader(open(write_csv(_evaluation(timed=False), tmp_path / "untimed.csv"))))
    assert all(row["explain_ms"] == "" for row in rows)


def test_cli_timing_reports_every_method_and_writes_the_cost_plot(tmp_path, tiny_vit_onnx):
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"s{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = tmp_path / "out"
    res = CliRunner().invoke(cli.main, ["evaluate", str(tmp_path), "--model", str(tiny_vit_onnx), "--methods",
                                        "rollout,attention", "--steps", "2", "--timing", "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["plain_ms"] > 0
    for m in ("rollout", "attention"):
        assert doc["methods"][m]["explain_ms"] > 0 and doc["methods"][m]["cost_x"] > 0
    assert (out / COST_PLOT).stat().st_size > 0
    res = CliRunner().invoke(cli.main, ["evaluate", str(tmp_path), "--model", str(tiny_vit_onnx), "--timing",
                                        "--engine", "ray"])
    assert res.exit_code == 2 and "local engine" in res.output
