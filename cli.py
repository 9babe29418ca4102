"""attnmap command line: a thin click front over ``runtime`` (and, lazily, ``export``).

Each command parses, calls the library and prints. What the commands take is in
:mod:`attnmap.cli_options` (option groups that build the library's option objects once, here:
a Job with its OverlayStyle, an EngineChoice, a FolderOutput, ConvertOptions, an EvaluationPlan
...); how they report is in :mod:`attnmap.cli_output` (results on stdout, progress and one
``error: ...`` line per error on stderr, typed library errors that speak of parameters turned
into click errors that speak of flags, a closed stdout ending the run quietly).
"""

from __future__ import annotations

import os

# onnxruntime owns the cores; NumPy's work here (resampling matrices, rollout's vector-matrix
# products) is small, and on a busy 2-core box OpenBLAS's worker threads fighting onnxruntime's
# turned a 0.6 ms resize into 80-180 ms. So the CLI, the entry point, asks for one BLAS thread
# (unless the user chose otherwise) before anything imports NumPy. The library itself changes
# no process-wide state.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import click  # noqa: E402

from attnmap import __version__  # noqa: E402
# Light on purpose: `attnmap --help` and `attnmap export` must not load onnxruntime or OpenCV,
# so the method registry (pure NumPy) is the only runtime part the options import.
from attnmap.cli_options import (FITS, METHOD_FLAGS, PROVIDERS, engine_options, evaluation_options,  # noqa: E402
                                 export_options, fit_option, flag, folder_options, job_options, json_option,
                                 live_options, method_options, model_options, precision_options, serve_options,
                                 throughput_options, tune_options, tuned_option)
from attnmap.cli_output import (Group, LineUsageError, err as _err, fail as _fail, out as _out,  # noqa: E402
                                status as _status)
from attnmap.runtime.methods import LIVE_DEFAULTS, METHODS  # noqa: E402

__all__ = ["FITS", "METHOD_FLAGS", "PROVIDERS", "main"]


def _stderr_is_terminal() -> bool:
    """Progress goes to stderr only where a person watches it, never into a log file."""
    return sys.stderr.isatty()


def _model_note(model: str | None) -> None:
    """Results of a model nobody named: say which one they are (stderr)."""
    from attnmap.runtime.model.registry import default_choice

    chosen = default_choice(model)
    if chosen is not None:
        _err(f"model: {chosen}; --model to choose another")


def _explainer(model: str | None, provider: str, threads: int | None):
    from attnmap import Explainer

    _model_note(model)
    return Explainer(model, provider=provider, threads=threads)


def _setup(model: str | None, provider: str, threads: int | None, precision: str | None,
           batch_size: int | None = None):
    """The run's set-up: the flags given explicitly, else the model's tuned sidecar (`attnmap tune`)."""
    from click.core import ParameterSource

    from attnmap.runtime.model.registry import resolve_model
    from attnmap.runtime.model.tuned import resolve_setup

    given = click.get_current_context().get_parameter_source("provider") not in (ParameterSource.DEFAULT, None)
    setup = resolve_setup(resolve_model(model), provider=provider if given else None, threads=threads,
                          precision=precision, batch_size=batch_size)
    if setup.note:
        _err(f"note: {setup.note}")
    return setup


def _tuned_explainer(model: str | None, provider: str, threads: int | None, precision: str | None):
    """The Explainer of the run's set-up (:func:`_setup`), and a JSON-able record of it."""
    from attnmap import Explainer

    _model_note(model)
    setup = _setup(model, provider, threads, precision)
    explainer = Explainer(setup.path, provider=setup.provider, threads=setup.threads)
    return explainer, {"model": str(setup.path), "provider": explainer.model.provider_short,
                       "threads": setup.threads, "precision": explainer.meta.precision,
                       "tuned": None if setup.tuned is None else str(setup.tuned)}


# ---------------------------------------------------------------------------- group
@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="attnmap")
@click.option("--debug", is_flag=True, help="Show tracebacks (of any error, with its causes), Ray's own logs and "
                                            "OpenCV's own warnings.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """attnmap: see what a Vision Transformer looks at.

    Export a timm ViT to a self-describing ONNX file with attention outputs, then explain images,
    videos and camera frames with onnxruntime alone.
    """
    ctx.obj = {"debug": debug}
    if ctx.invoked_subcommand not in (None, "export", "methods"):
        from attnmap.runtime.core.logs import quiet_opencv

        quiet_opencv(debug=debug)


# ---------------------------------------------------------------------------- export, quantize, info
@main.command()
@click.argument("model_name")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the .onnx file.")
@export_options
@precision_options(("fp32", "fp16", "int8", "bf16"), "fp32", "fp16, int8 or bf16: export fp32 (parity-checked), "
                   "convert, and write only if the fidelity gate passes (see `attnmap quantize`).")
def export(model_name: str, out: Path, export: dict[str, Any], convert: Any) -> None:
    """Export a timm or Hugging Face ViT to ONNX with attention outputs and attnmap metadata.

    MODEL_NAME is a timm model name (e.g. deit_tiny_patch16_224), a transformers model folder
    written by save_pretrained (config.json, model.safetensors or pytorch_model.bin,
    preprocessor_config.json), or hf:ORG/NAME on the Hugging Face hub. Transformers classes:
    ViT, DeiT (with or without teacher), BEiT, DINOv2 (with or without registers); their
    weights, input size, preprocessing and labels come from their own files. The export is
    checked against torch (against transformers itself for those) before the file is written;
    its path is printed on stdout.
    """
    if convert is not None and not export["attentions"]:
        raise click.UsageError("--precision fp16/int8/bf16 needs the attentions (the fidelity gate compares maps); "
                               "drop --no-attentions")
    try:
        from attnmap.export.to_onnx import export_onnx
    except ImportError as exc:
        raise click.ClickException(
            f"`attnmap export` needs the export extra (torch and timm): pip install -e '.[export]' ({exc})") from exc
    if convert is None:
        report = export_onnx(model_name, out, log=_err, **export)
    else:
        from attnmap.export.precision import export_with_precision

        report = export_with_precision(model_name, out, convert, log=_err, **export)
    click.echo(str(report.path))  # the export's own log (stderr) has the parity figures and size


@main.command()
@click.argument("model")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the converted .onnx file.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="CPU threads of the fidelity check (default: physical cores).")
@precision_options(("fp16", "int8", "bf16"), "int8", "int8: onnxruntime's quantiser (dynamic, or static QDQ with "
                   "--calibration); fp16: half compute with float32 at the graph boundary; bf16: bfloat16 compute "
                   "with float32 softmax, LayerNorm and outputs, only where a provider here computes in bf16 "
                   "(a CPU with avx512_bf16 or amx_bf16 and OpenVINO, or CUDA).")
def quantize(model: str, out: Path, threads: int | None, convert: Any) -> None:
    """Convert an fp32 attnmap file to int8, fp16 or bf16, torch-free, behind a fidelity gate.

    MODEL is an .onnx file from `attnmap export` (or a shipped model name). The converted
    file is compared with MODEL on the --check images, else on 64 synthetic images (plus the
    --calibration images): top-1 agreement, max probability difference, and per map method the
    correlation and top-10% patch IoU of the maps. Below the thresholds it fails with a
    non-zero exit and writes nothing; else the figures go into the file's metadata (`attnmap
    info` shows them) and its path is printed on stdout.
    """
    from attnmap.runtime.model.registry import resolve_model
    from attnmap.runtime.precision.convert import convert_file

    click.echo(str(convert_file(resolve_model(model), out, convert, log=_err, threads=threads).path))


@main.command()
@click.argument("model")
@tune_options
@click.option("--no-write", is_flag=True, help="Measure and print only; write nothing.")
@json_option("Print the measured table as one JSON object.")
def tune(model: str, plan: Any, no_write: bool, as_json: bool) -> None:
    """Find the fastest faithful set-up of MODEL on this machine and make it the default.

    Tries provider x precision x threads x batch, times each (the method's maps included) in
    rounds alternated with plain fp32 inference, gates each against fp32 on the --check photos
    (top-1 agreement, max |dp|, map correlation, top-10% IoU), prints the table, and writes the
    fastest that passed as MODEL.tuned.json beside MODEL (with its converted file, e.g.
    MODEL.tuned-int8.onnx). explain, live and serve then use it unless --provider, --threads,
    --precision or --batch-size say otherwise.
    """
    from attnmap.runtime.fronts import tune as t
    from attnmap.runtime.model.registry import resolve_model

    result = t.run_tune(resolve_model(model), plan, log=_err)
    try:
        written = [] if no_write else t.write_winner(result)
    finally:
        t.discard_work(result)
    click.echo(json.dumps(result.to_dict()) if as_json else t.format_table(result))
    if written:
        _err("wrote " + ", ".join(str(p) for p in written))
    if result.winner is None:
        raise click.ClickException("no set-up passed the fidelity gate; nothing written")


@main.command()
@click.argument("model", required=False)
@json_option("Print one JSON object.")
def info(model: str | None, as_json: bool) -> None:
    """Show a model's metadata, inputs and outputs, and the available providers.

    MODEL is an .onnx file or a shipped model name (default: the shipped default).
    """
    from attnmap.runtime.model.info import describe_model, format_rows, info_rows
    from attnmap.runtime.model.registry import resolve_model
    from attnmap.runtime.model.session import OnnxModel

    m = OnnxModel(resolve_model(model), provider="cpu")
    click.echo(json.dumps(describe_model(m)) if as_json else format_rows(info_rows(m)))


# ---------------------------------------------------------------------------- explain
@main.command()
@click.argument("sources", nargs=-1, required=True)
@model_options
@job_options(topk=True, budget=True)
@folder_options
@throughput_options
@click.option("--class", "target", default=None, metavar="CLASS", multiple=True,
              help="For class-specific methods (gradient methods, gradcam, occlusion, rise): a class index, a "
                   "label name, or topk:N for the top N classes' maps side by side (default: the predicted "
                   "class). Give it once.")
@json_option("Print one JSON object per input: {schema_version, source, topk: [{index, label, prob}], target or "
             "classes, overlay, ...}, the same on every engine.")
@engine_options
@tuned_option
def explain(sources: tuple[str, ...], model: str | None, provider: str, threads: int | None, job: Any, output: Any,
            batch_size: int | None, workers: int | None, target: tuple[str, ...], as_json: bool, engine: Any,
            precision: str | None) -> None:
    """Explain images, folders, globs and videos; write overlays to --out.

    SOURCE is an image file, a directory, a glob ("photos/*.jpg"), a video file, an image
    sequence (img_%04d.png) or a manifest (.csv / .parquet with a `path` column). A bad or
    missing input is reported on its own line and skipped; the exit code is then 1. With
    --engine ray (still images only) the run also writes run.parquet, and a rerun skips images
    whose outputs are complete.
    """
    from attnmap.runtime.fronts.collection import explain_collection
    from attnmap.runtime.fronts.interrupt import terminate_as_interrupt

    if len(target) > 1:
        raise click.BadParameter(f"given {len(target)} times ({', '.join(map(repr, target))}); give one class, "
                                 "or topk:N for several side by side", param_hint="--class")
    show = _stderr_is_terminal()
    _model_note(model)
    setup = _setup(model, provider, threads, precision, batch_size)
    with contextlib.nullcontext() if engine.on_ray else terminate_as_interrupt():
        report = explain_collection(
            setup.path, sources, job, output, engine,
            class_spec=target[0] if target else None, provider=setup.provider, threads=setup.threads,
            workers=workers, batch_size=setup.batch_size, on_record=lambda record, line: _out(json.dumps(record) if as_json else line),
            on_fail=_fail, on_video=lambda spec, p: _status.show(f"{spec}: {p.bar()}") if show else None,
            on_note=lambda line: _err(f"note: {line}"))
    _status.end()
    out_dir = output.out_dir
    if report.skipped:
        _err(f"{report.skipped} images already done in {out_dir} (same content and settings): skipped")
    if report.failed:
        raise click.ClickException(f"{len(report.failed)} of {len(report.failed) + report.done} inputs failed "
                                   f"(see above); {report.done} written to {out_dir}")
    _err(f"{report.done} input{'s' if report.done != 1 else ''} explained into {out_dir}")


# ---------------------------------------------------------------------------- live, serve
def _live_epilog() -> str:
    from attnmap.runtime.fronts.live import KEY_HELP

    return "\b\nKeys in the window:\n  " + KEY_HELP


@main.command(epilog=_live_epilog())
@click.argument("source", required=False, default="0")
@model_options
@job_options(label_flag=False)
@live_options
@json_option("Print the run's statistics as one JSON object.")
@tuned_option
def live(source: str, model: str | None, provider: str, threads: int | None, job: Any, config: Any,
         as_json: bool, precision: str | None) -> None:
    """Explain a camera, stream or video live, in a window or recorded headless.

    SOURCE is a camera index (0, cam:1), a stream URL (rtsp://, http://) or a video file played at
    its own frame rate (default: camera 0). A capture thread keeps only the newest frame, so a slow
    model drops frames instead of falling behind.
    """
    from attnmap.runtime.fronts.live.loop import run_live

    explainer, used = _tuned_explainer(model, provider, threads, precision)
    stats = run_live(explainer, source, job, config)
    summary = stats.to_dict()
    if as_json:
        click.echo(json.dumps({**summary, "setup": used}))
        return
    click.echo(f"{stats.source}: {stats.frames_processed} frames shown at {summary['fps']:.1f} frames/s, "
               f"{stats.frames_dropped} dropped, capture-to-display latency median "
               f"{summary['latency_ms'].get('median', 0):.1f} ms" + (f"; wrote {stats.out}" if stats.out else ""))


@main.command()
@click.argument("source", required=False, default=None)
@model_options
@job_options(label=False, label_flag=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything beyond loopback needs a token (--token-file or $ATTNMAP_TOKEN).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@serve_options
@tuned_option
def serve(source: str | None, model: str | None, provider: str, threads: int | None, job: Any, host: str, port: int,
          config: Any, settings: Any, launch: dict[str, Any], precision: str | None) -> None:
    """Serve the live overlay to a browser and explanations over HTTP (extra 'serve').

    SOURCE is as in `attnmap live` (camera index, stream URL, video file; a file plays in a loop);
    without one only the API runs. Binds to 127.0.0.1 unless --host says otherwise.
    """
    from attnmap.runtime.fronts.serve.runner import serve as run_serve

    run_serve(_tuned_explainer(model, provider, threads, precision)[0], source, job, config, settings, host=host, port=port, log=_err,
              **launch)


# ---------------------------------------------------------------------------- bench
@main.command()
@click.argument("source", required=False)
@click.option("--source", "-s", "source_opt", default=None, metavar="SOURCE",
              help="The frames to time, as the SOURCE argument (give one or the other).")
@model_options
@method_options
@fit_option()
@click.option("--runs", type=click.IntRange(1, None), default=20, show_default=True, help="Timed runs.")
@click.option("--warmup", type=click.IntRange(0, None), default=3, show_default=True, help="Untimed runs first.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=1, show_default=True, help="Frames per run.")
@click.option("--targets", "targets_video", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Also measure live fps, offline fps and latency on this video against "
                                 "the real-time targets.")
@click.option("--compare", "compare", multiple=True, metavar="FILE[,FILE...]",
              help="Time these model files side by side on the same frames (give it again or comma-separate; "
                   "--model, if given, comes first and is the reference): per-stage medians, explains/s, "
                   "speedup over the first, sizes, top-1 and map agreement, and the stored fidelity figures.")
@json_option("Print the figures as one JSON object.")
def bench(source: str | None, source_opt: str | None, model: str | None, provider: str, threads: int | None,
          method: str, options: dict[str, Any], fit: str, runs: int, warmup: int, batch_size: int,
          targets_video: Path | None, compare: tuple[str, ...], as_json: bool) -> None:
    """Time each stage (decode, preprocess, inference, explanation, overlay, output).

    Prints median and p90 per stage and the ratio of (inference with attentions + explanation)
    to plain inference of the same model. SOURCE (or --source) is any source: image, folder,
    glob, video, camera, stream or image sequence (default: a synthetic 640x480 frame).
    """
    if source is not None and source_opt is not None and source != source_opt:
        raise click.UsageError(f"two sources given: {source!r} and --source {source_opt!r}; give one")
    if compare and targets_video is not None:
        raise click.UsageError("Use just one of --compare or --targets.")
    from attnmap.runtime.fronts import bench as b
    from attnmap.runtime.fronts import goals as t

    source = source if source is not None else source_opt
    run = dict(runs=runs, warmup=warmup, batch_size=batch_size, method=method, options=options, fit=fit)
    if compare:
        files = ([model] if model else []) + [f.strip() for spec in compare for f in spec.split(",") if f.strip()]
        result = b.run_compare([_explainer(f, provider, threads) for f in files], source, **run)
        click.echo(json.dumps(result) if as_json else b.format_compare(result))
        return
    explainer = _explainer(model, provider, threads)
    result, targets = b.run_bench(explainer, source, **run), None
    if targets_video is not None:
        # At --batch-size when one was given, else at the batch `attnmap explain` would use.
        offline, plan = t.throughput_explainer(explainer, batch_size if batch_size > 1 else None)
        targets = t.measure_goals(explainer, targets_video, batch_size=plan.batch_size, method=method,
                                  offline_explainer=offline, workers=plan.workers)
    if as_json:
        click.echo(json.dumps({"stages": result, "targets": targets}))
        return
    click.echo(b.format_bench(result) + ("" if targets is None else "\n" + t.format_goals(targets)))


# ---------------------------------------------------------------------------- evaluate
@main.command()
@click.argument("sources", nargs=-1)
@model_options
@evaluation_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for per_image.csv and the curve plots (perturbation.png, deletion_insertion.png; "
                   "with --timing also cost.png).")
@json_option("Print one JSON object (schema in the README).")
def evaluate(sources: tuple[str, ...], model: str | None, provider: str, threads: int | None, plan: Any,
             engine: Any, out_dir: Path | None, as_json: bool) -> None:
    """Score how faithful each method's map is, and where ground truth is given, how well it localises.

    SOURCE is an image file, a directory, a glob or a manifest (.csv / .parquet with a `path`
    column); with --engine ray each image is scored on a Ray actor, and with --out a rerun into the same folder
    skips the images already scored there (their scores kept). Each map's units are removed, most (or least)
    relevant first, and the model is run again: positive / negative perturbation (Chefer et al.
    2021) and deletion / insertion (Petsiuk et al. 2018). With --masks, --boxes or --synthetic:
    pointing game, mass ratio, and segmentation pixel accuracy, mIoU and AP. A random map is the floor.
    """
    from attnmap.runtime.core.errors import MethodOptionError, OptionError
    from attnmap.runtime.evaluation import evaluate_inputs
    from attnmap.runtime.fronts import evaluate as report

    if not sources and plan.synthetic is None:
        raise click.UsageError("give images to evaluate (SOURCE...) or --synthetic N")
    # with Ray the driver's model only checks the plan; the actors load their own copies
    explainer = _explainer(model, "cpu", 1) if engine.on_ray else _explainer(model, provider, threads)
    try:
        plan = plan.checked(explainer.meta, model=repr(explainer.path.name))
    except MethodOptionError as exc:
        raise LineUsageError(f"--methods: {exc}") from exc
    except OptionError as exc:  # settings that do not go together (synthetic images on Ray)
        raise click.UsageError(str(exc)) from exc
    inputs = plan.inputs(sources, on_skip=lambda spec, why: _err(f"note: {spec}: {why}"))
    for spec, reason in inputs.failures:
        _fail(spec, reason)
    with click.progressbar(length=inputs.total, label="evaluating", file=sys.stderr) as bar:
        if engine.on_ray:
            from attnmap.runtime.fronts.distributed.evaluate import evaluate_on_ray

            kept: list[str] = []
            result = evaluate_on_ray(explainer, plan, inputs, engine.ray_options(provider, threads=threads),
                                     on_image=lambda _: bar.update(1), keep=out_dir, on_kept=kept.append,
                                     on_note=lambda line: _err(f"note: {line}"))
        else:
            result = evaluate_inputs(explainer, plan, inputs, on_image=lambda _: bar.update(1))
    if engine.on_ray and kept:
        _err(f"{len(kept)} images already scored in {out_dir} (same content and settings): their scores kept")
    for source, reason in result.failed:
        _fail(source, reason)
    click.echo(json.dumps(result.to_dict()) if as_json else report.format_evaluation(result))
    if out_dir is not None and result.images:
        written = [report.write_csv(result, out_dir / "per_image.csv"), *report.write_plots(result, out_dir)]
        _err("wrote " + ", ".join(str(p) for p in written))
    failed = len(result.failed) + len(inputs.failures)
    if failed:
        raise click.ClickException(f"{failed} input{'s' if failed != 1 else ''} could not be evaluated (see above)")


# ---------------------------------------------------------------------------- demo, methods, models
@main.command()
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Folder for the generated inputs and the overlays.")
@model_options
@method_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
def demo(out_dir: Path, model: str | None, provider: str, threads: int | None, method: str, options: dict[str, Any],
         seed: int) -> None:
    """Generate a few images and a short video, explain them, and say where the overlays are.

    Uses the shipped default model unless --model is given: no download, no extra files.
    """
    from attnmap.runtime.draw.style import OverlayStyle
    from attnmap.runtime.engine.engine import FrameEngine, Job
    from attnmap.runtime.fronts.demo import run_demo

    explainer = _explainer(model, provider, threads)
    engine = FrameEngine(explainer, Job(method=method, options=options, topk=1, style=OverlayStyle()), batch_size=8)
    r = run_demo(engine, out_dir, seed=seed, on_record=lambda record, line: _out(line))
    click.echo(f"model: {explainer.path} ({explainer.meta.model_name}, {explainer.meta.num_classes} classes)")
    click.echo(f"overlays: {r.overlays}/ ({len(r.images)} images and {r.video.name})")
    click.echo(f"overview: {r.sheet}")


@main.command()
def methods() -> None:
    """List the explanation methods, their options, allowed values and defaults."""
    click.echo(f"--method auto (the default of explain, video, live and serve): the first of "
               f"{', '.join(LIVE_DEFAULTS)} that the model's file can run")
    for m in METHODS.values():
        kind = ("class-specific, needs an export with --gradients" if m.needs_gradients else
                "class-specific, needs an export with --decompositions" if m.kind.name == "contribution" else
                "class-agnostic, needs an export with --decompositions" if m.kind.name == "decomposition" else
                "class-agnostic, needs an export with --norms (or --decompositions)" if m.kind.name == "norms" else
                "class-specific, reruns the last block on masked tokens; needs an export with --tail"
                if getattr(m.kind, "reruns_tail", False) else
                "class-specific, runs the model on perturbed inputs" if m.reruns_model else "class-agnostic")
        click.echo(f"{m.name} ({kind})\n  {m.summary}")
        for name, spec in m.options.items():
            click.echo(f"  {flag(name)}: {spec.help} {spec.describe()}; default {spec.default}")


@main.command()
@json_option("Print the registry as JSON.")
def models(as_json: bool) -> None:
    """List the models shipped in models/ (the default is marked with *)."""
    from attnmap.runtime.model.registry import MODELS_DIR, shipped_models

    entries = shipped_models()
    if as_json:
        click.echo(json.dumps(entries))
        return
    if not entries:
        click.echo(f"no shipped models in {MODELS_DIR}")
    for e in entries:
        acc = e.get("accuracy")
        extra = f", held-out accuracy {acc:.1%}" if isinstance(acc, (int, float)) else ""
        click.echo(f"{'*' if e.get('default') else ' '} {e['name']}: {MODELS_DIR / e['file']}{extra}")


if __name__ == "__main__":
    main()
