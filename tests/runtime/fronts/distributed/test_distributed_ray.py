"""`explain` and `evaluate` on Ray Data: one local Ray instance (2 CPUs) for the whole module.

The Ray path is checked against the local path on the same files (predictions, maps, file
names, evaluation scores), with a corrupt file among good ones, from a folder and from CSV and
Parquet manifests, and through an interrupted run that a rerun completes without redoing what
was finished.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from extras import need
from click.testing import CliRunner

ray = need("ray", "distributed")
pa = need("pyarrow", "distributed")
pq = need("pyarrow.parquet", "distributed")

import attnmap.cli as cli  # noqa: E402
from attnmap import Explainer  # noqa: E402
from attnmap.runtime.engine.engine import FrameEngine, Job  # noqa: E402
from attnmap.runtime.frames.sources import open_files  # noqa: E402
from attnmap.runtime.fronts.distributed import RayOptions, explain_on_ray  # noqa: E402
from attnmap.runtime.fronts.distributed.evaluate import evaluate_on_ray  # noqa: E402
from attnmap.runtime.fronts.distributed.table import TABLE_NAME, read_table, record_path  # noqa: E402
from attnmap.runtime.evaluation import EvaluationPlan, evaluate  # noqa: E402
from attnmap.runtime.fronts.offline import FolderOutput, explain_inputs  # noqa: E402
from corpus.make_corpus import FAIL, image_cases, sample_image  # noqa: E402

# Ray Data's own DataContext warns about its deprecated fields when it copies itself.
pytestmark = [pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning"), pytest.mark.slow]

SHIPPED = Path(__file__).resolve().parents[4] / "models" / "shapes_vit.onnx"
PHOTOS = ("hc_el1.jpg", "gradcam_dogs.png", "pytorchhub_dog.jpg")
CORRUPT = ("zero-byte-png.png", "noise-s0-jpg.jpg")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance with 2 CPUs; the pipeline uses it (and leaves it running)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of 3 generated images, up to 3 real photos (where ../shared is there) and 2 corrupt files."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(3):
        cv2.imwrite(str(folder / f"gen{i}.png"), sample_image(seed=i))
    shared = Path(__file__).resolve().parents[5] / "shared" / "data" / "images"
    for name in PHOTOS:
        if (shared / name).is_file():
            shutil.copyfile(shared / name, folder / name)
    cases = {c.name: c for c in image_cases()}
    for name in CORRUPT:
        assert cases[name].expect == FAIL
        cases[name].write(folder / name)
    return folder


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(SHIPPED, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def local_run(photos, explainer, tmp_path_factory):
    """The local path's records and failures on the photos folder, maps saved."""
    out = tmp_path_factory.mktemp("local")
    records, failures = [], []
    engine = FrameEngine(explainer, Job(), batch_size=4, workers=2)
    explain_inputs(engine, [str(photos)], FolderOutput(out, save_maps=True),
                   on_record=lambda r, _: records.append(r), on_fail=lambda s, r: failures.append((s, r)))
    return out, {r["source"]: r for r in records}, dict(failures)


@pytest.fixture(scope="module")
def ray_run(ray_instance, photos, explainer, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray")
    report = _explain(explainer, [str(photos)], out, RayOptions(actors=2, batch_size=2))
    return out, report


def _explain(explainer, specs, out: Path, options: RayOptions, on_record=None):
    return explain_on_ray(FrameEngine(explainer, Job()), specs, FolderOutput(out, save_maps=True), options,
                          on_record=on_record or (lambda r, line: None), on_fail=lambda s, r: None)


def _outputs(folder: Path) -> set[str]:
    # hidden files (the local path's run manifest, .attnmap-run.json) are not outputs
    return {p.name for p in folder.iterdir() if p.is_file() and p.name != TABLE_NAME and not p.name.startswith(".")}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- equality with the local path
def test_ray_writes_the_local_paths_files_with_the_same_predictions_and_maps(local_run, ray_run, photos):
    local_out, records, _ = local_run
    out, report = ray_run
    good = sorted(p for p in os.listdir(photos) if p not in CORRUPT)
    assert len(good) >= 3 and report.done == len(good) and report.skipped == 0
    assert _outputs(out) == _outputs(local_out) and len(_outputs(out)) == 2 * len(good)  # .png + .npz each
    rows = {r["source"]: r for r in read_table(out / TABLE_NAME)}
    assert rows.keys() == {str(photos / p) for p in os.listdir(photos)}
    for name in good:
        row, ref = rows[str(photos / name)], records[str(photos / name)]
        assert row["error"] is None
        assert row["topk_index"] == [t["index"] for t in ref["topk"]]
        np.testing.assert_allclose(row["topk_prob"], [t["prob"] for t in ref["topk"]], atol=2e-6)
        mine, theirs = np.load(row["maps"]), np.load(ref["maps"])
        np.testing.assert_allclose(mine["grid"], theirs["grid"], atol=1e-6)
        np.testing.assert_allclose(mine["heatmap"], theirs["heatmap"], atol=1e-6)
        a, b = cv2.imread(row["overlay"]), cv2.imread(ref["overlay"])
        assert a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1
        # the table's statistics and hash, recomputed independently from the written map and the file
        grid = theirs["grid"].astype(np.float64)
        assert row["map_mean"] == pytest.approx(grid.mean(), abs=1e-6)
        assert (row["map_peak_row"], row["map_peak_col"]) == np.unravel_index(int(grid.argmax()), grid.shape)
        assert row["sha256"] == hashlib.sha256((photos / name).read_bytes()).hexdigest()
        assert row["method"] == "rollout" and row["fit"] == "crop" and json.loads(row["options"]) == {}


def test_a_corrupt_file_is_a_row_with_its_error_and_the_others_are_written(local_run, ray_run, photos):
    _, _, local_failed = local_run
    out, report = ray_run
    rows = {r["source"]: r for r in read_table(out / TABLE_NAME)}
    for name in CORRUPT:
        row = rows[str(photos / name)]
        assert name in row["error"] and row["overlay"] is None and row["topk_index"] == []
        assert row["error"] == local_failed[str(photos / name)]  # the same message as the local path
        assert not record_path(out, row["stem"]).exists()  # a failure is tried again on a rerun
    assert sorted(s for s, _ in report.failed) == sorted(str(photos / n) for n in CORRUPT)


def test_csv_and_parquet_manifests_list_the_same_images(ray_instance, photos, explainer, ray_run, tmp_path):
    out, _ = ray_run
    names = sorted(os.listdir(photos))
    manifest = tmp_path / "list.csv"
    with open(manifest, "w", newline="") as f:  # paths relative to the manifest, an extra column
        w = csv.writer(f)
        w.writerow(["label", "path"])
        w.writerows([["x", os.path.relpath(photos / n, tmp_path)] for n in names[:4]])
    pq.write_table(pa.table({"path": [str(photos / n) for n in names[4:]]}), tmp_path / "rest.parquet")
    lines = []
    report = _explain(explainer, [str(manifest), str(tmp_path / "rest.parquet")], tmp_path / "out",
                      RayOptions(actors=1, batch_size=4), on_record=lambda r, line: lines.append(line))
    want = {(Path(r["source"]).name, r["sha256"], tuple(r["topk_index"]), r["error"])
            for r in read_table(out / TABLE_NAME)}
    got = {(Path(r["source"]).name, r["sha256"], tuple(r["topk_index"]), r["error"]) for r in report.rows}
    assert got == want and len(report.rows) == len(names)
    assert [r["index"] for r in report.rows] == list(range(len(names)))  # the manifests' order
    assert len(lines) == report.done and all(": " in line for line in lines)


# ----------------------------------------------------------------------------- resume
def test_an_interrupted_run_resumes_and_a_finished_one_writes_nothing(ray_instance, photos, explainer, ray_run,
                                                                       tmp_path):
    out = tmp_path / "out"

    def interrupt(row, line):
        raise KeyboardInterrupt  # as a Ctrl-C after the first image came back

    with pytest.raises(KeyboardInterrupt):
        _explain(explainer, [str(photos)], out, RayOptions(actors=1, batch_size=1), on_record=interrupt)
    finished = {p.stem for p in (out / ".attnmap").glob("*.json")}
    assert finished and not (out / TABLE_NAME).exists()
    assert not [p for p in out.rglob(".*.tmp")]  # whole files only

    resumed = _explain(explainer, [str(photos)], out, RayOptions(actors=2, batch_size=2))
    good = len(os.listdir(photos)) - len(CORRUPT)
    assert resumed.skipped >= len(finished) >= 1 and resumed.done + resumed.skipped == good
    full = read_table(ray_run[0] / TABLE_NAME)
    strip = [{k: v for k, v in r.items() if k not in ("overlay", "maps")} for r in full]
    assert [{k: v for k, v in r.items() if k not in ("overlay", "maps")} for r in read_table(out / TABLE_NAME)] == strip

    before = _mtimes(out)
    again = _explain(explainer, [str(photos)], out, RayOptions(actors=2, batch_size=2))
    assert again.skipped == good and again.done == 0
    assert _mtimes(out) == before  # nothing rewritten, the table included
    assert again.rows == read_table(out / TABLE_NAME)


def test_a_changed_file_or_a_deleted_output_is_redone(ray_instance, photos, explainer, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(photos, src)
    out = tmp_path / "out"
    first = {r["source"]: r for r in _explain(explainer, [str(src)], out, RayOptions(actors=1)).rows}
    changed, deleted = src / "gen0.png", Path(first[str(src / "gen1.png")]["maps"])
    cv2.imwrite(str(changed), 255 - sample_image(seed=0))
    deleted.unlink()
    report = _explain(explainer, [str(src)], out, RayOptions(actors=1))
    rows = {r["source"]: r for r in report.rows}
    assert report.done == 2 and report.skipped == len(first) - len(CORRUPT) - 2
    assert rows[str(changed)]["sha256"] == hashlib.sha256(changed.read_bytes()).hexdigest() \
        != first[str(changed)]["sha256"]
    assert deleted.is_file()


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_on_ray_scores_every_image_as_the_local_path_does(ray_instance, photos, explainer):
    paths = [str(photos / n) for n in sorted(os.listdir(photos))]
    scoring = dict(steps=4, batch_size=16, fit="crop")
    with open_files(paths, errors="yield") as frames:
        local = evaluate(explainer, frames, ["rollout", "attention"], **scoring)
    seen = []
    plan = EvaluationPlan(methods=("rollout", "attention"), engine="ray", **scoring).checked(explainer.meta)
    got = evaluate_on_ray(explainer, plan, plan.inputs(paths), RayOptions(actors=2), on_image=seen.append)
    assert got.sources == local.sources and got.targets == local.targets and len(got.sources) >= 3
    assert sorted(got.failed) == sorted(local.failed) and len(got.failed) == len(CORRUPT)
    for method in ("rollout", "attention", "random"):
        for metric, values in local.per_image[method].items():
            np.testing.assert_allclose(got.per_image[method][metric], values, atol=1e-6)
    assert sorted(seen) == sorted(paths)


# ----------------------------------------------------------------------------- the CLI
def test_cli_explain_on_ray_prints_rows_and_fails_for_the_corrupt_files(ray_instance, photos, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(photos.parent)  # relative SOURCE and --out: the workers' working directory is not ours
    res = CliRunner().invoke(cli.main, ["explain", photos.name, "--engine", "ray", "--actors", "2", "--model",
                                        str(SHIPPED), "--out", os.path.relpath(tmp_path), "--json"])
    assert res.exit_code == 1
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == len(os.listdir(photos)) - len(CORRUPT) and all(Path(r["overlay"]).is_file() for r in rows)
    assert {r["source"] for r in rows} == {f"{photos.name}/{n}" for n in os.listdir(photos) if n not in CORRUPT}
    assert f"{len(CORRUPT)} of {len(os.listdir(photos))} inputs failed" in res.stderr
    assert len(read_table(tmp_path / TABLE_NAME)) == len(os.listdir(photos))


def test_cli_evaluate_on_ray(ray_instance, photos):
    res = CliRunner().invoke(cli.main, ["evaluate", str(photos / "gen0.png"), str(photos / "gen1.png"), "--engine",
                                        "ray", "--model", str(SHIPPED), "--steps", "2", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["images"] == 2 and set(doc["methods"]) == {"rollout", "attention", "random"}


# ----------------------------------------------------------------------------- resume of evaluate, Ctrl-C, notes
def test_evaluate_on_ray_resumes_from_the_scores_kept_in_its_folder(ray_instance, photos, explainer, tmp_path):
    paths = [str(photos / n) for n in sorted(os.listdir(photos))]
    plan = EvaluationPlan(methods=("rollout",), engine="ray", steps=2, batch_size=16).checked(explainer.meta)
    keep = tmp_path / "scores"
    kept_first: list[str] = []
    first = evaluate_on_ray(explainer, plan, plan.inputs(paths), RayOptions(actors=2), keep=keep,
                            on_kept=kept_first.append)
    kept_files = sorted((keep / ".attnmap" / "evaluate").glob("*.json"))
    assert kept_first == [] and len(kept_files) == first.images == len(paths) - len(CORRUPT)
    mtimes = {p: p.stat().st_mtime_ns for p in kept_files}
    kept_again: list[str] = []
    again = evaluate_on_ray(explainer, plan, plan.inputs(paths), RayOptions(actors=1), keep=keep,
                            on_kept=kept_again.append)
    assert sorted(kept_again) == sorted(first.sources)  # every scored image taken as kept ...
    assert again.to_dict() == first.to_dict()  # ... with the same numbers, exactly
    assert sorted(again.failed) == sorted(first.failed)  # failures are tried again (and fail again)
    assert {p: p.stat().st_mtime_ns for p in kept_files} == mtimes
    # other settings score again
    other = EvaluationPlan(methods=("rollout",), engine="ray", steps=3, batch_size=16).checked(explainer.meta)
    kept_other: list[str] = []
    evaluate_on_ray(explainer, other, other.inputs(paths), RayOptions(actors=2), keep=keep, on_kept=kept_other.append)
    assert kept_other == []


def test_ctrl_c_on_a_ray_run_ends_with_the_summary(ray_instance, photos, explainer, tmp_path):
    from attnmap.runtime.fronts.interrupt import Interrupted

    def interrupt(row, line):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        _explain(explainer, [str(photos)], tmp_path / "out", RayOptions(actors=1, batch_size=1), on_record=interrupt)
    total = len(os.listdir(photos))
    summary = caught.value.summary
    out = re.escape(repr(str(tmp_path / "out")))
    assert re.fullmatch(rf"1 of {total} inputs done in {out}; \d+ not written \(the finished images' files and rows "
                        r"are kept: a rerun does the rest and skips them\)", summary), summary
    assert caught.value.exit_code == 130


def test_a_folders_videos_are_a_note_on_ray(ray_instance, photos, explainer, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(photos / "gen0.png", src / "gen0.png")
    (src / "clip.mp4").write_bytes(b"\0" * 64)
    notes = []
    report = explain_on_ray(FrameEngine(explainer, Job()), [str(src)], FolderOutput(tmp_path / "out"),
                            RayOptions(actors=1), on_record=lambda r, line: None, on_fail=lambda s, r: None,
                            on_note=notes.append)
    assert report.done == 1 and not report.failed
    assert notes == [f"{src}: skipped 1 video (1 .mp4; still images only here)"]
