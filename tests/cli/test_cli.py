"""The click front: every command documented, results on stdout, one-line errors, no half-written output."""

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from extras import need
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap import Explainer

ROOT = Path(__file__).resolve().parents[2]


def run(*args, **kw):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(48, 64), (64, 40), (32, 32)]):
        cv2.imwrite(str(d / f"img{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return d


def test_every_command_has_help_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name, command in cli.main.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0, result.output
        assert command.get_short_help_str() and "Usage:" in result.output
        assert f"attnmap {name}" in readme, f"`attnmap {name}` is not documented in README.md"


def test_method_choices_and_flags_come_from_the_registry():
    from attnmap.runtime.methods import METHODS
    out = run("explain", "--help").output
    for name in METHODS:
        assert name in out
    for flag in ("--head-fusion", "--discard-ratio", "--start-layer", "--layer", "--head"):
        assert flag in out


def test_explain_writes_overlays_maps_and_json_lines(tiny_vit_onnx, photos, tmp_path):
    out = tmp_path / "out"
    result = run("explain", photos, "--model", tiny_vit_onnx, "--out", out, "--json", "--save-maps",
                 "--topk", 3, "--method", "attention", "--layer", 0)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["source"]).name for r in lines] == ["img0.png", "img1.png", "img2.png"]
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    for rec in lines:
        img = cv2.imread(rec["source"])
        ref = ex.explain(img, method="attention", layer=0, topk=3)
        assert [t["index"] for t in rec["topk"]] == [t.index for t in ref.topk]
        assert [t["label"] for t in rec["topk"]] == [t.label for t in ref.topk]
        np.testing.assert_allclose([t["prob"] for t in rec["topk"]], [t.prob for t in ref.topk], atol=1e-5)
        overlay = cv2.imread(rec["overlay"])
        assert overlay.shape == img.shape
        maps = np.load(rec["maps"])
        np.testing.assert_allclose(maps["grid"], ref.grid, atol=1e-5)
        assert maps["heatmap"].shape == img.shape[:2]
    assert not list(out.glob(".*tmp"))  # no temporary files left behind


def test_explain_continues_past_a_bad_file_and_fails_at_the_end(tiny_vit_onnx, photos, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in photos.iterdir():
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "broken.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "out"
    result = run("explain", mixed, "--model", tiny_vit_onnx, "--out", out)
    assert result.exit_code == 1
    assert "broken.jpg" in result.stderr and "1 of 4 inputs failed" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["img0_rollout.png", "img1_rollout.png",
                                                         "img2_rollout.png"]
    assert len(result.stdout.splitlines()) == 3


def test_explain_layer_and_head_tiles(tiny_vit_onnx, photos, tmp_path):
    result = run("explain", photos / "img0.png", "--model", tiny_vit_onnx, "--out", tmp_path, "--grid", "heads")
    assert result.exit_code == 0, result.output
    tiles = cv2.imread(str(tmp_path / "img0_rollout_heads.png"))
    assert tiles is not None and tiles.shape[1] > tiles.shape[0]  # two heads side by side


@pytest.mark.parametrize("args, needle", [
    (["explain", "nope.jpg"], "does not exist"),
    (["explain", "{photos}", "--colormap", "jett"], "Did you mean 'jet'"),
    (["explain", "{photos}", "--method", "rollout", "--layer", "3"], "layer"),
    (["explain", "{photos}", "--model", "missing.onnx"], "does not exist"),
    (["explain", "{photos}", "--provider", "cuda"], "cuda"),
    (["info", "missing.onnx"], "does not exist"),
])
def test_bad_input_is_a_one_line_error(args, needle, tiny_vit_onnx, photos, tmp_path):
    args = [a.format(photos=photos) for a in args]
    if "--model" not in args and args[0] == "explain":
        args += ["--model", str(tiny_vit_onnx)]
    result = run(*args, "--out", tmp_path / "o") if args[0] == "explain" else run(*args)
    if "--provider" in args and "cuda" not in __import__("onnxruntime").get_available_providers():
        assert result.exit_code == 1
    elif "--provider" in args:
        pytest.skip("CUDA is available here")
    assert result.exit_code != 0
    assert needle in result.output
    assert "Traceback" not in result.output
    # one form for every error line ("error: ..."), and the needle on exactly one of them
    assert not [line for line in result.output.splitlines() if line.lower().startswith("error") and
                not line.startswith("error: ")]
    assert len([line for line in result.output.splitlines() if line.startswith("error: ") and needle in line]) == 1
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_info_shows_metadata_io_and_providers(tiny_vit_onnx):
    result = run("info", tiny_vit_onnx)
    assert result.exit_code == 0, result.output
    assert re.search(r"tokens\s+1 prefix \(class\) \+ 4 x 4 patches of 8 x 8 px = 17", result.output)
    assert "output attentions" in result.output and "CPUExecutionProvider" in result.output
    data = json.loads(run("info", tiny_vit_onnx, "--json").output)
    assert data["meta"]["grid_size"] == [4, 4] and data["outputs"][1]["name"] == "attentions"
    assert data["outputs"][1]["shape"][1:] == [2, 2, 17, 17]


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """One ``attnmap export`` of a random-init ViT-Tiny at 32 px, 4 classes, heads fused by their
    mean, shared by the tests below (an export takes seconds): (click result, the .onnx path)."""
    need("torch", "export")
    need("timm", "export")
    out = tmp_path_factory.mktemp("cli_export") / "m.onnx"
    result = run("export", "vit_tiny_patch16_224", "-o", out, "--img-size", 32, "--num-classes", 4,
                 "--heads", "mean")
    return result, out


@pytest.mark.export
@pytest.mark.slow
def test_export_command_writes_a_checked_file_and_refuses_swin(cli_export, tmp_path):
    result, out = cli_export
    assert result.exit_code == 0, result.output
    assert "parity: logits max |d|" in result.stderr and "random" in result.stderr.lower()
    assert result.stdout.strip() == str(out)
    meta = Explainer(out, provider="cpu").meta
    assert meta.num_classes == 4 and meta.head_fusion == "mean" and meta.output_heads == 1
    bad = tmp_path / "swin.onnx"
    result = run("export", "swin_tiny_patch4_window7_224", "-o", bad)
    assert result.exit_code == 1 and "swin" in result.output.lower()
    assert not bad.exists() and list(tmp_path.iterdir()) == []


def test_export_flags_conflict_up_front(tmp_path):
    result = run("export", "vit_tiny_patch16_224", "-o", tmp_path / "x.onnx", "--checkpoint", tmp_path / "w.pth",
                 "--pretrained")
    assert result.exit_code == 2 and "Use just one of --checkpoint or --pretrained" in result.output


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 3-frame synthetic video written with cv2.VideoWriter."""
    path = tmp_path_factory.mktemp("clip") / "three.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 40))
    rng = np.random.default_rng(3)
    for _ in range(3):
        writer.write(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    writer.release()
    return path


def test_explain_video_end_to_end_keeps_frames_size_and_fps(tiny_vit_onnx, clip, tmp_path):
    result = run("explain", clip, "--model", tiny_vit_onnx, "--out", tmp_path, "--json", "--save-maps")
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout.strip())
    assert rec["frames"] == 3 and rec["size"] == [48, 40] and rec["fps"] == pytest.approx(10.0)
    cap = cv2.VideoCapture(rec["video"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (48, 40)
    cap.release()
    maps = np.load(rec["maps"])
    assert maps["grids"].shape == (3, 4, 4)


def test_explain_video_with_two_model_runs_at_once_gives_the_same_maps(tiny_vit_onnx, clip, tmp_path):
    maps = {}
    for workers in ("1", "2"):
        out = tmp_path / workers
        result = run("explain", clip, "--model", tiny_vit_onnx, "--out", out, "--json", "--save-maps",
                     "--batch-size", 1, "--workers", workers)
        assert result.exit_code == 0, result.output
        rec = json.loads(result.stdout.strip())
        assert rec["frames"] == 3
        maps[workers] = np.load(rec["maps"])
    np.testing.assert_allclose(maps["2"]["grids"], maps["1"]["grids"], atol=1e-5)
    np.testing.assert_array_equal(maps["2"]["top1"], maps["1"]["top1"])
    result = run("explain", clip, "--model", tiny_vit_onnx, "--out", tmp_path, "--workers", 0)
    assert result.exit_code == 2 and "--workers" in result.output


def test_explain_video_runs_at_the_plans_batch_size_unless_one_is_given(tiny_vit_onnx, clip, tmp_path, monkeypatch):
    import attnmap.runtime.fronts.offline as offline
    from attnmap.runtime.model.plan import throughput_plan

    real, calls = offline.explain_video, []

    def spy(engine, src, out_path, **kwargs):
        calls.append((engine.batch_size, engine.workers, engine.explainer.model.threads))
        return real(engine, src, out_path, **kwargs)

    monkeypatch.setattr(offline, "explain_video", spy)
    assert run("explain", clip, "--model", tiny_vit_onnx, "--out", tmp_path).exit_code == 0
    assert run("explain", clip, "--model", tiny_vit_onnx, "--out", tmp_path, "--batch-size", 3).exit_code == 0
    plan = throughput_plan("auto")
    assert calls == [(plan.batch_size, plan.workers, plan.threads), (3, plan.workers, plan.threads)]
    assert plan.batch_size == (8 if "CUDA" in Explainer(tiny_vit_onnx).model.provider else 4)


def test_explain_video_on_a_terminal_draws_a_bar_then_the_result_on_its_own_line(tiny_vit_onnx, clip, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setattr(cli, "_stderr_is_terminal", lambda: True)
    result = run("explain", clip, "--model", tiny_vit_onnx, "--out", tmp_path, "--batch-size", 2, color=True)
    assert result.exit_code == 0, result.output
    bars = re.findall(r"\r(\S+): (\[[#.]+\]) +(\d+)%  (\d+)/3 frames  [\d.]+ frames/s", result.stderr)
    assert [(b[0], b[2], b[3]) for b in bars] == [(str(clip), "67", "2"), (str(clip), "100", "3")]
    assert bars[-1][1] == "[" + "#" * 24 + "]"
    # The bar's line is ended before anything else is printed.
    assert re.search(r"\x1b\[K\n(note: [^\n]*web browsers[^\n]*\n)?" + f"{len(list(tmp_path.glob('*.mp4')))} input "
                     f"explained into {re.escape(str(tmp_path))}\n$", result.stderr)
    assert re.fullmatch(rf"{re.escape(str(clip))}: 3 frames explained at [\d.]+ frames/s -> \S+ \(mp4v\)\n", result.stdout)
    assert result.stderr.count("does not play in web browsers") == 1  # the codec note, once, on stderr
    assert "\x1b[K\n" + result.stdout in result.output  # stdout and stderr as they interleave on the terminal


def test_live_headless_records_the_stream(tiny_vit_onnx, clip, tmp_path):
    out = tmp_path / "live.mp4"
    result = run("live", clip, "--model", tiny_vit_onnx, "--no-show", "--out", out, "--json", "--no-pace")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["ended"] == "end" and stats["frames_processed"] >= 1 and stats["out"] == str(out)
    assert cv2.VideoCapture(str(out)).read()[0]


def test_live_without_show_needs_an_output(tiny_vit_onnx, clip):
    result = run("live", clip, "--model", tiny_vit_onnx, "--no-show")
    assert result.exit_code == 2 and "--no-show needs --out" in result.output


def test_bench_reports_every_stage_and_the_ratio(tiny_vit_onnx, photos):
    result = run("bench", photos, "--model", tiny_vit_onnx, "--runs", 3, "--warmup", 1, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["stages"]
    assert data["source"] == str(photos) and data["runs"] == 3
    assert set(data["stages"]) == {"decode", "preprocess", "inference", "explanation", "overlay", "output",
                                   "plain_inference"}
    for stage in data["stages"].values():
        assert 0 < stage["median_ms"] <= stage["p90_ms"]
    assert data["ratio"] > 0


def test_bench_takes_the_source_as_an_option_too(tiny_vit_onnx, clip):
    result = run("bench", "--source", clip, "--model", tiny_vit_onnx, "--runs", 2, "--warmup", 0, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["stages"]
    assert data["source"] == str(clip) and data["frame_size"] == [48, 40]
    both = run("bench", clip, "--source", "0", "--model", tiny_vit_onnx)
    assert both.exit_code == 2 and "two sources given" in both.output


def test_demo_writes_inputs_overlays_and_an_overview(tiny_vit_onnx, tmp_path):
    result = run("demo", "--model", tiny_vit_onnx, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "inputs").glob("*.png"))) == 6
    overlays = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert len([n for n in overlays if n.endswith(".png")]) == 6 and "shapes_demo_rollout.mp4" in overlays
    assert cv2.imread(str(tmp_path / "overview.png")) is not None
    assert f"overview: {tmp_path / 'overview.png'}" in result.stdout


# --------------------------------------------------------------------------- newcomer frictions
def test_class_given_twice_is_refused_not_silently_the_last(tiny_vit_onnx, photos, tmp_path):
    result = run("explain", photos / "img0.png", "--model", tiny_vit_onnx, "--out", tmp_path,
                 "--method", "chefer", "--class", "cat", "--class", "dog")
    assert result.exit_code == 2 and "given 2 times" in result.output and not list(tmp_path.iterdir())


def test_a_flag_the_method_does_not_take_is_refused(tiny_vit_onnx, photos, tmp_path):
    result = run("explain", photos, "--model", tiny_vit_onnx, "--out", tmp_path, "--method", "rollout", "--head", 1)
    assert result.exit_code == 2 and "--method rollout does not take it" in result.output


def test_live_and_explain_accept_the_same_colormap_spelling(tiny_vit_onnx, clip, photos, tmp_path):
    res = run("explain", photos / "img0.png", "--model", tiny_vit_onnx, "--out", tmp_path / "e", "--colormap", "Inferno")
    assert res.exit_code == 0, res.output
    res = run("live", clip, "--model", tiny_vit_onnx, "--no-show", "--out", tmp_path / "live.avi", "--no-pace",
              "--colormap", "Inferno", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["frames_processed"] == 3


def test_a_missing_input_is_one_failure_and_the_valid_inputs_are_still_written(tiny_vit_onnx, photos, tmp_path):
    result = run("explain", photos / "img0.png", tmp_path / "nope.jpg", photos / "img1.png", "--model", tiny_vit_onnx,
                 "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".attnmap-run.json", "img0_rollout.png",
                                                                    "img1_rollout.png"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "nope.jpg" in errors[0] and "does not exist" in errors[0]
    assert errors[1].startswith("error: 1 of 3 inputs failed") and "Traceback" not in result.output


def test_an_unexpected_exception_is_one_line_unless_debug(tiny_vit_onnx, photos, tmp_path, monkeypatch):
    import attnmap.runtime.frames.sources as sources

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(sources, "plan_inputs", broken)
    result = CliRunner().invoke(cli.main, ["explain", str(photos), "--model", str(tiny_vit_onnx), "--out",
                                           str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unexpected KeyError" in result.output and "attnmap --debug" in result.output
    result = CliRunner().invoke(cli.main, ["--debug", "explain", str(photos), "--model", str(tiny_vit_onnx),
                                           "--out", str(tmp_path)])
    assert isinstance(result.exception, KeyError)


@pytest.mark.export
@pytest.mark.slow
def test_heads_tiles_of_a_head_fused_file_say_so_and_head_choices_are_refused(cli_export, tmp_path, photos):
    path = cli_export[1]
    res = run("explain", photos / "img0.png", "--model", path, "--out", tmp_path / "o", "--method", "attention",
              "--head", 1)
    assert res.exit_code == 1 and "fused at export" in res.output and "--heads mean" in res.output
    res = run("explain", photos / "img0.png", "--model", path, "--out", tmp_path / "o", "--head-fusion", "max")
    assert res.exit_code == 1 and "already fused by 'mean'" in res.output
    res = run("explain", photos / "img0.png", "--model", path, "--out", tmp_path / "o", "--grid", "heads", "--json")
    assert res.exit_code == 0, res.output
    assert Path(json.loads(res.stdout)["tiles"]).is_file()
    assert "one head output" in run("info", path).output


@pytest.mark.export
@pytest.mark.slow
def test_the_random_weights_warning_speaks_the_clis_language(cli_export):
    res = cli_export[0]
    assert "pass --checkpoint FILE or --pretrained" in res.stderr and "pretrained=True" not in res.stderr
