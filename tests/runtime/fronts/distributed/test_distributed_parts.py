"""The parts of the distributed front that need no Ray: manifests, the run table, resume checks,
options, merging evaluations, and the local path reading a manifest."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from extras import need
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap import Explainer
from attnmap.runtime.core.errors import OptionError, SourceError
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import Job
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.frames.manifest import list_images, plan_with_manifests, read_manifest
from attnmap.runtime.frames.synth import make_sample
from attnmap.runtime.fronts.distributed import ClusterError, RayOptions
from attnmap.runtime.fronts.distributed.cluster import import_ray
from attnmap.runtime.fronts.distributed.pipeline import frame_of, read_batch
from attnmap.runtime.fronts.distributed.table import (COLUMNS, failed_row, finished_row, read_table,
                                                      settings_fingerprint, write_record, write_table)
from attnmap.runtime.evaluation import evaluate, merge_evaluations

SHIPPED = Path(__file__).resolve().parents[4] / "models" / "shapes_vit.onnx"


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i}.png")
        cv2.imwrite(str(paths[-1]), make_sample(np.random.default_rng(i), 64).image_bgr)
    return paths


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------- manifests
def test_a_csv_manifest_lists_paths_relative_to_itself_and_skips_blank_cells(tmp_path):
    imgs = _images(tmp_path / "a", 2)
    m = _csv(tmp_path / "m.csv", ["id", "path"], [["1", "a/img1.png"], ["2", ""], ["3", str(imgs[0])]])
    assert read_manifest(m) == [str(tmp_path / "a" / "img1.png"), str(imgs[0])]


@pytest.mark.parametrize("header, rows, needle", [(["file"], [["x.png"]], "no 'path' column; it has 'file'"),
                                                  (["path"], [[""]], "lists no image paths")])
def test_a_manifest_without_paths_is_a_source_error_naming_it(tmp_path, header, rows, needle):
    m = _csv(tmp_path / "m.csv", header, rows)
    with pytest.raises(SourceError, match=needle) as info:
        read_manifest(m)
    assert str(m) in str(info.value)


def test_listing_keeps_order_drops_repeats_and_reports_what_is_not_a_still_image(tmp_path):
    imgs = _images(tmp_path / "a", 3)
    m = _csv(tmp_path / "m.csv", ["path"], [[str(imgs[2])], ["missing.png"], ["clip.mp4"]])
    paths, failures = list_images([str(imgs[0]), str(m), str(tmp_path / "a"), str(tmp_path / "nothing")])
    # a manifest's missing file is not looked at on the driver: it fails when a worker reads it
    assert paths == [str(imgs[0]), str(imgs[2]), str(tmp_path / "missing.png"), str(imgs[1])]
    reasons = dict(failures)
    assert "is a video" in str(reasons[str(tmp_path / "clip.mp4")]) and "does not exist" in str(reasons[str(tmp_path / "nothing")])


def test_the_local_path_plans_a_manifests_rows_like_typed_paths(tmp_path):
    imgs = _images(tmp_path / "a", 2)
    m = _csv(tmp_path / "m.csv", ["path"], [["a/img0.png"], ["a/gone.png"]])
    refs, failures = plan_with_manifests([str(m), str(imgs[1]), str(tmp_path / "bad.csv")])
    assert [r.target for r in refs] == [str(imgs[0]), str(imgs[1])]
    # a missing .csv is not a manifest, just a SOURCE that names nothing
    assert [Path(s).name for s, _ in failures] == ["gone.png", "bad.csv"]
    refs2, failures2 = plan_with_manifests([str(_csv(tmp_path / "empty.csv", ["x"], []))])
    assert refs2 == [] and "no 'path' column" in str(failures2[0][1])


def test_cli_explain_reads_a_manifest_on_the_local_engine(tmp_path):
    _images(tmp_path / "a", 2)
    m = _csv(tmp_path / "m.csv", ["path"], [["a/img1.png"], ["a/img0.png"]])
    res = CliRunner().invoke(cli.main, ["explain", str(m), "--model", str(SHIPPED), "--out", str(tmp_path / "o"),
                                        "--json"])
    assert res.exit_code == 0, res.output
    assert [Path(json.loads(line)["source"]).name for line in res.stdout.splitlines()] == ["img1.png", "img0.png"]


# ----------------------------------------------------------------------------- the run table and resume
def test_the_fingerprint_is_stable_and_changes_with_anything_that_changes_the_outputs():
    job = Job(style=OverlayStyle())
    fp = settings_fingerprint("m" * 64, job, save_maps=True)
    assert fp == settings_fingerprint("m" * 64, Job(style=OverlayStyle()), save_maps=True) and len(fp) == 16
    others = [settings_fingerprint("n" * 64, job, save_maps=True), settings_fingerprint("m" * 64, job, save_maps=False),
              settings_fingerprint("m" * 64, Job(style=OverlayStyle(alpha=0.3)), save_maps=True),
              settings_fingerprint("m" * 64, Job(method="attention", style=OverlayStyle()), save_maps=True),
              settings_fingerprint("m" * 64, Job(fit="squash", style=OverlayStyle()), save_maps=True)]
    assert len({fp, *others}) == 6


def test_a_kept_row_counts_as_done_only_with_the_same_hash_fingerprint_and_files(tmp_path):
    overlay = tmp_path / "x_rollout.png"
    overlay.write_bytes(b"png")
    row = failed_row("x.png", "", index=0, sha256="a" * 64, stem="x_rollout", job=Job())
    row.update(error=None, overlay=str(overlay))
    write_record(tmp_path, row, "fp")
    assert finished_row(tmp_path, "x_rollout", "a" * 64, "fp") == row
    assert finished_row(tmp_path, "x_rollout", "b" * 64, "fp") is None  # the file changed
    assert finished_row(tmp_path, "x_rollout", "a" * 64, "other") is None  # other settings
    assert finished_row(tmp_path, "y_rollout", "a" * 64, "fp") is None  # never finished
    overlay.unlink()
    assert finished_row(tmp_path, "x_rollout", "a" * 64, "fp") is None  # an output is gone


def test_read_batch_hashes_checks_resume_and_decodes_where_asked(tmp_path):
    imgs = _images(tmp_path, 1)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    batch = {"index": np.array([0, 1, 2]), "path": np.array([str(imgs[0]), str(tmp_path / "bad.png"),
                                                             str(tmp_path / "gone.png")]),
             "stem": np.array(["a", "b", "c"])}
    got = read_batch(batch, out_dir=str(tmp_path), fingerprint="fp", decode="task")
    assert got["sha256"][0] == hashlib.sha256(imgs[0].read_bytes()).hexdigest()
    want = cv2.imread(str(imgs[0]))
    frame = frame_of(0, str(imgs[0]), got["data"][0], got["shape"][0])
    np.testing.assert_array_equal(frame.image_bgr, want)
    assert "bad.png" in got["error"][1] and got["data"][1] == b""
    assert "does not exist" in got["error"][2] and frame_of(2, "gone.png", b"", "", got["error"][2]).error is not None
    raw = read_batch(batch, out_dir=str(tmp_path), fingerprint="", decode="actor")
    assert raw["data"][0] == imgs[0].read_bytes() and raw["error"][1] == ""  # decoding left to the actor
    assert "bad.png" in str(frame_of(1, str(tmp_path / "bad.png"), raw["data"][1], "").error)


def test_the_table_is_written_in_input_order_once_and_not_again_unchanged(tmp_path):
    need("pyarrow", "distributed")
    rows = [failed_row(f"{i}.png", f"broken {i}", index=i, sha256=None, stem=f"s{i}", job=Job()) for i in (2, 0, 1)]
    path = tmp_path / "run.parquet"
    assert write_table(rows, path) is True
    mtime = path.stat().st_mtime_ns
    assert write_table(list(reversed(rows)), path) is False and path.stat().st_mtime_ns == mtime
    got = read_table(path)
    assert [r["source"] for r in got] == ["0.png", "1.png", "2.png"] and list(got[0]) == list(COLUMNS)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_row_gives_the_local_record_and_line():
    from attnmap.runtime.engine.record import RECORD_SCHEMA_VERSION, record_line
    from attnmap.runtime.fronts.distributed.table import record_from_row

    row = {"source": "a.png", "topk_index": [3, 1], "topk_label": ["cat", "dog"], "topk_prob": [0.75, 0.125],
           "classes": [3], "class_labels": ["cat"], "class_probs": [0.75], "overlay": "o/a.png", "maps": None,
           "tiles": None}
    record = record_from_row(row, Job())
    assert record == {"schema_version": RECORD_SCHEMA_VERSION, "source": "a.png",
                      "topk": [{"index": 3, "label": "cat", "prob": 0.75}, {"index": 1, "label": "dog", "prob": 0.125}],
                      "target": {"index": 3, "label": "cat"}, "overlay": "o/a.png"}
    assert record_line(record) == "a.png: cat 0.750, dog 0.125  [map: cat]"
    side_by_side = record_from_row(row, Job(top_classes=1))
    assert side_by_side["classes"] == [{"index": 3, "label": "cat", "prob": 0.75}] and "target" not in side_by_side
    assert record_line(side_by_side) == "a.png: cat 0.750, dog 0.125  [maps: cat]"
    bare = record_from_row({**row, "classes": [], "class_labels": [], "class_probs": []}, Job())
    assert "target" not in bare and record_line(bare) == "a.png: cat 0.750, dog 0.125"


# ----------------------------------------------------------------------------- options and set-up
@pytest.mark.parametrize("kwargs, needle", [(dict(actors=0), "actors"), (dict(batch_size=0), "batch_size"),
                                            (dict(gpus_per_actor=-1), "gpus_per_actor"),
                                            (dict(decode="gpu"), "decode"), (dict(provider="cuda"), "gpus_per_actor")])
def test_bad_ray_options_are_option_errors(kwargs, needle):
    with pytest.raises(OptionError, match=needle):
        RayOptions(**kwargs)


def test_the_provider_follows_the_actors_resources_and_the_pool_the_cluster():
    assert RayOptions().provider == "cpu" and RayOptions(gpus_per_actor=0.5).provider == "cuda"
    assert RayOptions().pool_size({"CPU": 6.0}) == 6 and RayOptions(actors=3).pool_size({"CPU": 6.0}) == 3
    assert RayOptions(gpus_per_actor=0.5).pool_size({"CPU": 8.0, "GPU": 2.0}) == 4


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ClusterError, match=r"pip install 'attnmap\[distributed\]'"):
        import_ray()


def test_cli_without_ray_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    _images(tmp_path, 1)
    monkeypatch.setitem(sys.modules, "ray", None)
    res = CliRunner().invoke(cli.main, ["explain", str(tmp_path), "--engine", "ray", "--model", str(SHIPPED),
                                        "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "attnmap[distributed]" in res.stderr and "Traceback" not in res.output


# ----------------------------------------------------------------------------- merging evaluations
def test_merging_per_image_evaluations_gives_the_evaluation_of_all_images():
    ex = Explainer(SHIPPED, provider="cpu", threads=1)
    frames = [Frame(i, make_sample(np.random.default_rng(70 + i), 96).image_bgr, f"img{i}", 0.0) for i in range(3)]
    frames.insert(1, Frame(3, None, "broken.png", 0.0, error=OSError("unreadable")))
    whole = evaluate(ex, frames, ["rollout"], steps=3)
    merged = merge_evaluations([evaluate(ex, [f], ["rollout"], steps=3) for f in frames])
    assert merged.to_dict() == whole.to_dict() and merged.sources == whole.sources and merged.failed == whole.failed
    for name in ("positive", "deletion"):
        np.testing.assert_array_equal(merged.curves["rollout"][name], whole.curves["rollout"][name])
    with pytest.raises(OptionError, match="different runs"):
        merge_evaluations([whole, evaluate(ex, frames[:1], ["attention"], steps=3)])
    with pytest.raises(OptionError):
        merge_evaluations([])


@pytest.mark.parametrize("args, needle", [(["--engine", "ray", "--workers", "2"], "--workers applies to --engine local only"),
                                          (["--actors", "2"], "--actors applies to --engine ray only"),
                                          (["--address", "auto", "--gpus-per-actor", "1"],
                                           "--address, --gpus-per-actor apply to --engine ray only")])
def test_cli_refuses_flags_of_the_other_engine(tmp_path, args, needle):
    _images(tmp_path, 1)
    res = CliRunner().invoke(cli.main, ["explain", str(tmp_path), "--model", str(SHIPPED), "--out",
                                        str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and needle in res.stderr and not (tmp_path / "o").exists()
