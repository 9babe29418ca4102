"""The bad-input corpus: every bad input gets a typed error or a correct result, never a traceback.

The files come from ``tests/corpus/make_corpus.py`` (generated into tmp_path, none committed).
Images and videos go through ``attnmap explain`` in one real process (one folder of bad and good
images, the videos and two missing paths), and each case is then judged from that run's stderr
lines and JSON records; each image also goes through ``Explainer.explain`` on its own. Broken
model files go through ``Explainer(path)``, ``attnmap explain --model`` and ``attnmap info``. Bad
arrays and bad options go through the library and the CLI. The shipped torch-free model
(``models/shapes_vit.onnx``) explains everything; class-specific cases use a model with attention
gradients (conftest's ``tiny_vit_grads_onnx``, the committed ``tests/models/tiny_vit_grads.onnx``).

Regenerate the corpus by hand with ``python tests/corpus/make_corpus.py OUT_DIR``.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result

from attnmap import AttnmapError, Explainer, FrameEngine, Job, OverlayStyle
from attnmap.cli import main
from attnmap.runtime.core.errors import ExplainError, ImageError, MetadataError, ModelError, OptionError
from corpus.make_corpus import (EITHER, FAIL, OK, SHIPPED, Case, image_cases, onnx_cases, sample_image,
                                video_cases, write_cases)

IMAGES, VIDEOS, MODELS = image_cases(), video_cases(), onnx_cases()
# a reason that starts with an exception's type name ("error: OpenCV(...)", "KeyError: ...") is
# how the CLI reports an exception that is not one of attnmap's typed errors
UNTYPED = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|error)\b:")


def test_the_corpus_is_large_and_its_names_are_unique():
    for cases in (IMAGES, VIDEOS, MODELS):
        names = [c.name for c in cases]
        assert len(set(names)) == len(names)
        assert len({Path(n).stem for n in names}) == len(names)  # output stems cannot collide
    assert len(IMAGES) + len(VIDEOS) + len(MODELS) >= 150
    assert {c.expect for c in IMAGES} == {FAIL, OK, EITHER}
    assert {Path(c.name).suffix for c in IMAGES} == {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif"}


# ----------------------------------------------------------------------------- the corpus on disk
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("corpus")
    return {"images": write_cases(IMAGES, root / "images"), "videos": write_cases(VIDEOS, root / "videos"),
            "models": write_cases(MODELS, root / "models")}


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(SHIPPED, provider="cpu")


@pytest.fixture(scope="module")
def grads_model(tiny_vit_grads_onnx) -> Path:
    """The committed tiny ViT with attention gradients (conftest; torch-free)."""
    return tiny_vit_grads_onnx


@pytest.fixture(scope="module")
def good_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.png"
    cv2.imwrite(str(path), sample_image())
    return path


# ----------------------------------------------------------------------------- one real CLI run
def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``attnmap ARGS`` in a fresh process (a traceback from any thread would show on its stderr)."""
    # the timeout only keeps a hung run from hanging the suite; it is no speed requirement
    return subprocess.run([sys.executable, "-m", "attnmap.cli", *args], capture_output=True, text=True,
                          timeout=1200, check=False)


@dataclass
class CliRun:
    """One ``attnmap explain --json`` run: its exit code, stderr lines and records by source."""

    proc: subprocess.CompletedProcess
    out: Path
    records: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for line in self.proc.stdout.splitlines():
            if line.strip():
                record = json.loads(line)
                assert record["source"] not in self.records, f"two records for {record['source']}"
                self.records[record["source"]] = record

    @property
    def lines(self) -> list[str]:
        return [line for line in self.proc.stderr.splitlines() if line.strip()]

    def naming(self, path: Path) -> list[str]:
        """attnmap's ``error: ...`` messages that name ``path`` (as a whole path, not a prefix of
        another), one per stderr line.

        A native library's message printed without its newline (libpng's warnings) glues itself
        to the front of the next line; the message is then taken from the ``error: `` that
        starts it. (test_mixed_run_stderr_holds_only_error_lines_and_a_summary reports such
        noise; the verdict on each input does not depend on it.)
        """
        pattern = re.compile(r"(?<![\w/.-])" + re.escape(str(path)) + r"(?![\w.-])")
        found = []
        for line in self.lines:
            starts = [m.start() for m in re.finditer("error: ", line)]
            named = [i for i in reversed(starts) if pattern.search(line[i:])]
            if named:
                found.append(line[named[0]:])
            elif pattern.search(line):
                found.append(line)
        return found


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text
        assert "this is a bug in attnmap" not in text, text


def assert_one_typed_line(lines: list[str], path: Path) -> None:
    """Exactly one ``error: ...`` line names ``path``, and its reason is a typed error's."""
    assert len(lines) == 1, f"{path.name}: expected one error line, got {lines}"
    line = lines[0]
    assert line.startswith("error: "), line
    reason = line.removeprefix("error: ").removeprefix(f"{path}: ")
    assert not UNTYPED.match(reason), f"{path.name}: not a typed error: {line}"


@pytest.fixture(scope="module")
def mixed_run(corpus, tmp_path_factory) -> CliRun:
    """Every image case (one folder), every video and two missing paths in one ``attnmap explain``."""
    root = tmp_path_factory.mktemp("mixed")
    out = root / "out"
    images = next(iter(corpus["images"].values())).parent
    videos = [str(p) for p in corpus["videos"].values()]
    missing = [str(root / "no-such-photo.png"), str(root / "no-such-clip.mp4")]
    proc = run_cli("explain", str(images), *videos, *missing, "--model", str(SHIPPED), "--out", str(out), "--json")
    return CliRun(proc, out)


@pytest.mark.slow
def test_mixed_run_fails_with_exit_1_and_no_traceback(mixed_run):
    assert_no_traceback(mixed_run.proc.stdout, mixed_run.proc.stderr)
    assert mixed_run.proc.returncode == 1, mixed_run.proc.stderr[-2000:]


@pytest.mark.slow
def test_mixed_run_stderr_holds_only_error_lines_and_a_summary(mixed_run):
    # every error line in one form, the last one the summary; besides them only notes (the codec note)
    errors = [line for line in mixed_run.lines if line.startswith("error: ")]
    others = [line for line in mixed_run.lines if not line.startswith("error: ")]
    assert all(line.startswith("note: ") for line in others), others[:10]
    failed, total = map(int, re.search(r"^error: (\d+) of (\d+) inputs failed", errors[-1]).groups())
    assert failed == len(errors) - 1 and total == failed + len(mixed_run.records), errors[-1]


@pytest.mark.slow
def test_missing_paths_are_one_line_each(mixed_run):
    for name in ("no-such-photo.png", "no-such-clip.mp4"):
        path = mixed_run.out.parent / name
        assert_one_typed_line(mixed_run.naming(path), path)
        assert str(path) not in mixed_run.records


@pytest.mark.slow
def test_mixed_run_leaves_only_the_outputs_of_its_records(mixed_run):
    written = {p.name for p in mixed_run.out.iterdir()} - {".attnmap-run.json"}  # the folder's run manifest
    assert not [n for n in written if n.startswith(".")], written  # no temp or half-written files
    recorded = {Path(r.get("overlay") or r["video"]).name for r in mixed_run.records.values()}
    assert written == recorded


@pytest.mark.parametrize("case", IMAGES, ids=lambda c: c.name)
@pytest.mark.slow
def test_cli_image(case: Case, mixed_run, corpus, explainer):
    path = corpus["images"][case.name]
    lines, record = mixed_run.naming(path), mixed_run.records.get(str(path))
    if case.expect == FAIL or (case.expect == EITHER and record is None):
        assert record is None, f"{case.name} was explained: {record}"
        assert_one_typed_line(lines, path)
        return
    assert case.expect in (OK, EITHER) and record is not None, f"{case.name}: no record; stderr says {lines}"
    assert lines == [], lines
    overlay = cv2.imread(record["overlay"], cv2.IMREAD_UNCHANGED)
    assert overlay is not None and overlay.shape == (*case.size, 3), (record["overlay"], None if overlay is None
                                                                      else overlay.shape)
    assert Path(record["overlay"]).parent == mixed_run.out
    # the same prediction as the library gives for the file alone (batching changes nothing)
    alone = explainer.explain(path)
    assert [t["index"] for t in record["topk"]] == [t.index for t in alone.topk]
    np.testing.assert_allclose([t["prob"] for t in record["topk"]], [t.prob for t in alone.topk], atol=1e-4)


@pytest.mark.parametrize("case", VIDEOS, ids=lambda c: c.name)
@pytest.mark.slow
def test_cli_video(case: Case, mixed_run, corpus):
    path = corpus["videos"][case.name]
    lines, record = mixed_run.naming(path), mixed_run.records.get(str(path))
    if case.expect == FAIL or (case.expect == EITHER and record is None):
        assert record is None, f"{case.name} was explained: {record}"
        assert_one_typed_line(lines, path)
        return
    assert record is not None, f"{case.name}: no record; stderr says {lines}"
    assert lines == [], lines
    cap = cv2.VideoCapture(record["video"])
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame.shape)
    cap.release()
    assert frames and set(frames) == {(*case.size, 3)}, set(frames)
    assert record["frames"] == len(frames) and list(record["size"]) == [case.size[1], case.size[0]]
    # every frame that decoded was explained (none written plain because it failed)
    assert not record.get("failed_frames"), record["failed_frames"][:3]
    if case.expect == OK:
        assert len(frames) == case.frames
    else:  # a truncated video may legitimately give a shorter result, never a longer one
        assert 1 <= len(frames) <= case.frames


@pytest.mark.slow
def test_zero_good_inputs_fail_each_on_one_line(corpus, tmp_path):
    bad = [corpus["images"][n] for n in ("zero-byte-png.png", "noise-s1-jpg.jpg", "html-as-png.png",
                                          "png-declared-60000x60000.png", "jpeg-sof-7-components.jpg",
                                          "bmp-declared-60000x60000.bmp")]
    folder = tmp_path / "bad"
    folder.mkdir()
    for p in bad:
        (folder / p.name).write_bytes(p.read_bytes())
    video = corpus["videos"]["video-noise-mp4.mp4"]
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    run = CliRun(run_cli("explain", str(folder), str(video), str(missing), "--model", str(SHIPPED), "--out",
                         str(out), "--json"), out)
    assert_no_traceback(run.proc.stdout, run.proc.stderr)
    assert run.proc.returncode == 1 and run.records == {}
    for path in [folder / p.name for p in bad] + [video, missing]:
        assert_one_typed_line(run.naming(path), path)
    # nothing written but the folder's run manifest (claimed before the inputs were read)
    assert not out.exists() or [p.name for p in out.iterdir()] in ([], [".attnmap-run.json"])


# ----------------------------------------------------------------------------- images, library
@pytest.mark.parametrize("case", IMAGES, ids=lambda c: c.name)
def test_library_image(case: Case, corpus, explainer):
    path = corpus["images"][case.name]
    try:
        result = explainer.explain(path)
    except ImageError as exc:
        assert case.expect in (FAIL, EITHER), f"{case.name}: {exc}"
        assert str(path) in str(exc)
        return
    assert case.expect in (OK, EITHER), f"{case.name} was explained ({result.image.shape})"
    assert result.image.shape == (*case.size, 3) and result.image.dtype == np.uint8
    assert result.heatmap.shape == case.size
    assert result.overlay().shape == (*case.size, 3)
    if case.pixels is not None:
        where = case.where if case.where is not None else np.ones(case.size, bool)
        assert where.any()
        diff = np.abs(result.image.astype(int) - case.pixels.astype(int))[where]
        assert diff.max() <= case.tolerance, f"{case.name}: decoded pixels differ by up to {diff.max()}"


# ----------------------------------------------------------------------------- broken model files
@pytest.mark.parametrize("case", MODELS, ids=lambda c: c.name)
def test_library_model(case: Case, corpus):
    path = corpus["models"][case.name]
    with pytest.raises((ModelError, MetadataError)) as info:
        Explainer(path, provider="cpu")
    message = str(info.value)
    assert str(path) in message, message
    if case.needle:
        assert case.needle.lower() in message.lower(), message


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def assert_one_line_cli_error(result, code: int | tuple[int, ...], *needles: str) -> str:
    """A non-zero exit with one ``error:`` line containing every needle, and no traceback."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    codes = code if isinstance(code, tuple) else (code,)
    assert result.exit_code in codes, (result.exit_code, result.output)
    assert_no_traceback(result.output)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle.lower() in errors[0].lower(), errors[0]
    return errors[0]


@pytest.mark.parametrize("case", MODELS, ids=lambda c: c.name)
def test_cli_explain_with_a_broken_model(case: Case, corpus, good_png, tmp_path):
    path = corpus["models"][case.name]
    out = tmp_path / "out"
    result = cli("explain", str(good_png), "--model", str(path), "--out", str(out))
    assert_one_line_cli_error(result, 1, str(path))
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("case", MODELS, ids=lambda c: c.name)
def test_cli_info_with_a_broken_model(case: Case, corpus):
    path = corpus["models"][case.name]
    assert_one_line_cli_error(cli("info", str(path)), 1, str(path))


def test_the_good_models_load_and_explain(explainer, grads_model, good_png, tmp_path):
    # controls for the cases above and below: the same files and calls, without the damage
    assert explainer.explain(good_png).overlay().shape == (90, 120, 3)
    resaved = tmp_path / "resaved.onnx"  # loaded and saved with onnx as the tampered copies are
    onnx.save(onnx.load(str(SHIPPED)), str(resaved))
    assert Explainer(resaved, provider="cpu").explain(good_png).topk[0] == explainer.explain(good_png).topk[0]
    tiny = Explainer(grads_model, provider="cpu")
    last = tiny.meta.num_classes - 1
    r = tiny.explain(good_png, method="chefer", target=last)
    assert r.target == last and r.label_of_target == tiny.meta.label(last) and r.grid.shape == tiny.meta.grid_size
    assert cli("info", str(SHIPPED)).exit_code == 0


# ----------------------------------------------------------------------------- bad arrays and images
def _arrays() -> list[tuple[str, object]]:
    img = sample_image(32, 32)
    return [
        ("none", None), ("int", 3), ("float-scalar", 1.0), ("dict", {}), ("set", {1}),
        ("png-bytes", cv2.imencode(".png", img)[1].tobytes()),
        ("float32", img.astype(np.float32)), ("float64-unit", img / 255.0), ("float16", img.astype(np.float16)),
        ("float32-gray", np.zeros((32, 32), np.float32)), ("float32-nan", np.full((8, 8, 3), np.nan, np.float32)),
        ("uint16", img.astype(np.uint16) * 257), ("int32", img.astype(np.int32)), ("int8", img.astype(np.int8)),
        ("bool", img > 100), ("complex", img.astype(np.complex64)), ("object", img.astype(object)),
        ("str-array", np.array(["a", "b"])),
        ("empty-0x0x3", np.zeros((0, 0, 3), np.uint8)), ("empty-0x10x3", np.zeros((0, 10, 3), np.uint8)),
        ("empty-10x0x3", np.zeros((10, 0, 3), np.uint8)), ("empty-1d", np.array([], np.uint8)),
        ("1d", np.zeros(100, np.uint8)), ("2-channels", np.zeros((8, 8, 2), np.uint8)),
        ("5-channels", np.zeros((8, 8, 5), np.uint8)), ("5d", np.zeros((1, 1, 8, 8, 3), np.uint8)),
        ("4d-2-channels", np.zeros((2, 8, 8, 2), np.uint8)), ("4d-float", np.zeros((2, 8, 8, 3), np.float32)),
        ("4d-empty-batch", np.zeros((0, 8, 8, 3), np.uint8)), ("4d-empty-image", np.zeros((2, 0, 8, 3), np.uint8)),
        ("empty-list", []), ("empty-tuple", ()), ("list-with-none", [img, None]),
        ("list-with-float", [img, img.astype(np.float32)]), ("nested-list", [[img]]),
        ("missing-str", "/no/such/dir/photo.png"), ("missing-path", Path("/no/such/photo.jpg")),
        ("empty-str", ""), ("directory", Path(__file__).parent), ("list-with-missing", [img, "/no/such.png"]),
    ]


@pytest.mark.parametrize("value", [v for _, v in _arrays()], ids=[i for i, _ in _arrays()])
def test_library_bad_image_argument(explainer, value):
    with pytest.raises(AttnmapError) as info:
        explainer.explain(value)
    assert isinstance(info.value, (ImageError, ExplainError)), repr(info.value)
    assert str(info.value).strip(), "an empty message"


# ----------------------------------------------------------------------------- bad method options
NAN, INF = float("nan"), float("inf")
METHOD_OPTIONS = [  # (method, options) the shipped model (4 layers, 3 heads, no gradients) refuses
    ("nosuch", {}), ("", {}), ("Rollout", {}), (None, {}), (3, {}), ("rollout ", {}),
    ("attention", dict(layer=4)), ("attention", dict(layer=-5)), ("attention", dict(layer=99)),
    ("attention", dict(layer=1.5)), ("attention", dict(layer="0")), ("attention", dict(layer=True)),
    ("attention", dict(head=3)), ("attention", dict(head=-4)), ("attention", dict(head=7)),
    ("attention", dict(head="0")), ("attention", dict(head_fusion="median")),
    ("rollout", dict(discard_ratio=1.0)), ("rollout", dict(discard_ratio=-0.1)), ("rollout", dict(discard_ratio=NAN)),
    ("rollout", dict(discard_ratio=INF)), ("rollout", dict(discard_ratio=1.5)), ("rollout", dict(discard_ratio="0.5")),
    ("rollout", dict(discard_ratio=True)), ("rollout", dict(discard_ratio=None, residual="yes")),
    ("rollout", dict(residual=1)), ("rollout", dict(head_fusion=1)), ("rollout", dict(start_layer=4)),
    ("rollout", dict(start_layer=-5)), ("rollout", dict(start_layer=0.5)),
    ("rollout", dict(discard=0.5)), ("rollout", dict(layer=0)), ("rollout", dict(nosuch=None)),
    ("attention", dict(discard_ratio=0.5)), ("flow", dict(head=0)), ("flow", dict(start_layer=9)),
    ("chefer", {}), ("grad_rollout", {}), ("gradsam", {}), ("product", dict(eps=0.0)),
    ("rollout", dict(fit="nosuch")), ("rollout", dict(fit=None)),
    ("rollout", dict(topk=0)), ("rollout", dict(topk=-1)), ("rollout", dict(topk=1.5)), ("rollout", dict(topk="5")),
    ("rollout", dict(target=0)), ("attention", dict(target="circle")),
]


@pytest.mark.parametrize("method, options", METHOD_OPTIONS,
                         ids=[f"{m}-{'-'.join(f'{k}={v!r}' for k, v in o.items())}" for m, o in METHOD_OPTIONS])
def test_library_bad_method_option(explainer, method, options):
    img = sample_image(32, 32)
    with pytest.raises(AttnmapError) as info:
        explainer.explain(img, method=method, **options)
    assert isinstance(info.value, (OptionError, ExplainError)), repr(info.value)


def test_the_edges_of_the_option_ranges_are_accepted(explainer):
    # controls: the last valid value next to each refused one
    img = sample_image(32, 32)
    for method, options in [("attention", dict(layer=3, head=2)), ("attention", dict(layer=-4, head=-3)),
                            ("rollout", dict(discard_ratio=0.99, start_layer=3)), ("rollout", dict(discard_ratio=0.0)),
                            ("rollout", dict(topk=1, fit="letterbox"))]:
        assert explainer.explain(img, method=method, **options).grid.shape == (12, 12)


@pytest.mark.parametrize("target", ["num_classes", 99999, -1, "nosuch", 1.5, [0, 1], "topk:2"],
                         ids=["num-classes", "99999", "-1", "nosuch", "1.5", "two-for-one", "topk-text"])
def test_library_class_out_of_range_on_a_gradients_model(grads_model, target):
    tiny = Explainer(grads_model, provider="cpu")
    target = tiny.meta.num_classes if target == "num_classes" else target
    with pytest.raises((OptionError, ExplainError)):
        tiny.explain(sample_image(16, 16), method="chefer", target=target)


@pytest.mark.parametrize("k", [0, -1])
def test_library_explain_topk_needs_k_of_at_least_one(grads_model, k):
    with pytest.raises((OptionError, ExplainError)):
        Explainer(grads_model, provider="cpu").explain_topk(sample_image(16, 16), k, method="chefer")


ENGINE_CASES = [  # (job keywords, engine keywords) on the shipped model
    ({}, dict(batch_size=0)), ({}, dict(batch_size=-1)), ({}, dict(batch_size=1.5)), ({}, dict(batch_size="4")),
    ({}, dict(batch_size=True)), ({}, dict(workers=0)), ({}, dict(workers=-2)),
    (dict(method="nosuch"), {}), (dict(fit="nosuch"), {}), (dict(topk=0), {}), (dict(topk="5"), {}),
    (dict(method="attention", options={"layer": 99}), {}), (dict(options={"nosuch": 1}), {}),
    (dict(options={"discard_ratio": 1.0}), {}), (dict(style="jet"), {}), (dict(target=0), {}),
    (dict(method="chefer"), {}), (dict(top_classes=2), {}),
]


@pytest.mark.parametrize("job, kwargs", ENGINE_CASES, ids=[f"{j}-{k}" for j, k in ENGINE_CASES])
def test_engine_refuses_bad_jobs(explainer, job, kwargs):
    with pytest.raises((OptionError, ExplainError)):
        FrameEngine(explainer, Job(**job), **kwargs)


@pytest.mark.parametrize("job", [dict(method="chefer", target=99999), dict(method="chefer", target=-1),
                                 dict(method="chefer", top_classes=0), dict(method="chefer", target=1, top_classes=2),
                                 dict(method="chefer", top_classes=-1), dict(method="gradsam", options={"start_layer": 9})],
                         ids=["target-99999", "target--1", "top-0", "target-and-top", "top--1", "start-layer-9"])
def test_engine_refuses_bad_classes_on_a_gradients_model(grads_model, job):
    with pytest.raises((OptionError, ExplainError)):
        FrameEngine(Explainer(grads_model, provider="cpu"), Job(**job))


def test_engine_refuses_a_class_index_equal_to_the_class_count(grads_model):
    tiny = Explainer(grads_model, provider="cpu")
    with pytest.raises(OptionError):
        FrameEngine(tiny, Job(method="chefer", target=tiny.meta.num_classes))
    assert FrameEngine(tiny, Job(method="chefer", target=tiny.meta.num_classes - 1)).job.target is not None


STYLES = [dict(alpha=2.0), dict(alpha=-0.1), dict(alpha=NAN), dict(alpha="0.5"), dict(alpha=True), dict(alpha=None),
          dict(colormap="nosuch"), dict(colormap=""), dict(colormap=None), dict(colormap=12345), dict(colormap=-1),
          dict(colormap=1.5), dict(mode="nosuch"), dict(mode=None), dict(blur=2), dict(blur=-0.1), dict(blur=NAN),
          dict(label="yes"), dict(label=1)]


@pytest.mark.parametrize("style", STYLES, ids=[f"{k}={v!r}" for s in STYLES for k, v in s.items()])
def test_overlay_style_refuses_bad_fields(style, explainer):
    with pytest.raises(OptionError):
        OverlayStyle(**style)
    # the same values as per-call changes of an explanation's overlay
    result = explainer.explain(sample_image(32, 32))
    with pytest.raises(OptionError):
        result.overlay(**style)


def test_overlay_style_replace_refuses_unknown_fields():
    with pytest.raises(OptionError, match="nosuch"):
        OverlayStyle().replace(nosuch=1)
    assert math.isclose(OverlayStyle(alpha=1).alpha, 1.0)  # control: the edge is accepted


# ----------------------------------------------------------------------------- bad CLI options
CLI_OPTIONS = [  # (arguments, exit codes allowed, words the one Error line must contain), shipped model
    (["--method", "attention", "--layer", "99"], (1, 2), ["layer", "99"]),
    (["--method", "attention", "--layer=-5"], (1, 2), ["layer", "-5"]),
    (["--method", "attention", "--head", "7"], (1, 2), ["head", "7"]),
    (["--method", "attention", "--head", "x"], 2, ["head"]),
    (["--discard-ratio", "1.5"], 2, ["discard-ratio", "1.5"]),
    (["--discard-ratio", "1"], 2, ["discard-ratio"]),
    (["--discard-ratio=-0.1"], 2, ["discard-ratio"]),
    (["--discard-ratio", "nan"], (1, 2), ["discard"]),
    (["--start-layer", "99"], (1, 2), ["layer", "99"]),
    (["--head-fusion", "median"], 2, ["head-fusion"]),
    (["--method", "rollout", "--layer", "1"], 2, ["--layer"]),
    (["--alpha", "2"], 2, ["alpha"]),
    (["--alpha", "nan"], (1, 2), ["alpha"]),
    (["--blur", "5"], 2, ["blur"]),
    (["--colormap", "nosuch"], (1, 2), ["colormap", "nosuch"]),
    (["--mode", "nosuch"], 2, ["mode"]),
    (["--fit", "nosuch"], 2, ["fit"]),
    (["--batch-size", "0"], 2, ["batch-size"]),
    (["--workers", "0"], 2, ["workers"]),
    (["--threads", "0"], 2, ["threads"]),
    (["--topk", "0"], 2, ["topk"]),
    (["--method", "nosuch"], 2, ["method"]),
    (["--grid", "nosuch"], 2, ["grid"]),
    (["--provider", "nosuch"], 2, ["provider"]),
    (["--class", "3"], 2, ["class"]),
    (["--method", "chefer"], 1, ["gradients"]),
    (["--model", "no-such-model.onnx"], 1, ["no-such-model.onnx"]),
]
GRADS_OPTIONS = [  # the same, on the model with gradients
    (["--method", "chefer", "--class", "99999"], (1, 2), ["99999"]),
    (["--method", "chefer", "--class=-1"], (1, 2), ["-1"]),
    (["--method", "chefer", "--class", "nosuch"], (1, 2), ["nosuch"]),
    (["--method", "chefer", "--class", "topk:0"], (1, 2), ["topk"]),
    (["--method", "gradsam", "--class", "1", "--class", "2"], 2, ["class"]),
    (["--method", "product", "--eps", "0"], 2, ["eps"]),
]


@pytest.mark.parametrize("args, code, needles, grads", [(*c, False) for c in CLI_OPTIONS]
                         + [(*c, True) for c in GRADS_OPTIONS], ids=[" ".join(c[0]) for c in CLI_OPTIONS + GRADS_OPTIONS])
def test_cli_bad_option(args, code, needles, grads, good_png, grads_model, tmp_path):
    model = [] if "--model" in args else ["--model", str(grads_model if grads else SHIPPED)]
    out = tmp_path / "out"
    result = cli("explain", str(good_png), *model, *args, "--out", str(out))
    assert_one_line_cli_error(result, code, *needles)
    assert not out.exists() or list(out.iterdir()) == []  # refused before anything was written


def test_cli_out_that_is_a_file_is_a_usage_error(good_png, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    assert_one_line_cli_error(cli("explain", str(good_png), "--model", str(SHIPPED), "--out", str(blocker)),
                              2, "--out")
    assert blocker.read_text() == "not a folder"
