"""attnmap command line: a thin click front over ``runtime`` (and, lazily, ``export``).

Library errors are typed (``runtime.core.errors``); every command turns them into a one-line
click error. Results go to stdout, progress and messages to stderr.
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
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import click  # noqa: E402

from attnmap import __version__  # noqa: E402
from attnmap.runtime.core.errors import AttnmapError, RunConflictError  # noqa: E402
from attnmap.runtime.core.meta import HEAD_FUSIONS  # noqa: E402
from attnmap.runtime.core.options import OptionSpec  # noqa: E402

# Light on purpose: `attnmap --help` and `attnmap export` must not load onnxruntime or OpenCV,
# so the method registry (pure NumPy) is the only runtime part imported here.
from attnmap.runtime.methods import METHODS  # noqa: E402

FITS = ("crop", "squash", "letterbox")
# runtime.model.session.PROVIDERS, written out so that --help does not import onnxruntime
# (tests/test_providers.py checks that the two agree).
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt", "openvino", "coreml")


class _StatusLine:
    """One line on stderr that rewrites itself (a progress bar); other output ends it first."""

    def __init__(self) -> None:
        self.open = False  # the line is on stderr without its newline yet

    def show(self, text: str) -> None:
        # \x1b[K clears what a longer previous line left on the right (stderr is a terminal here)
        click.echo(f"\r{text}\x1b[K", err=True, nl=False)
        self.open = True

    def end(self) -> None:
        if self.open:
            click.echo("", err=True)
            self.open = False


_status = _StatusLine()


def _out(msg: str) -> None:
    _status.end()
    click.echo(msg)


def _err(msg: str) -> None:
    _status.end()
    click.echo(msg, err=True)


class LineUsageError(click.ClickException):
    """A bad value as one line with its suggestion (click's UsageError adds two lines of usage); exit 2."""

    exit_code = 2


class MethodChoice(click.Choice):
    """``--method``: a registered method; a typo is one line that suggests the close names."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from attnmap.runtime.core.errors import MethodOptionError
        from attnmap.runtime.methods import get_method

        try:
            return get_method(value).name
        except MethodOptionError as exc:
            raise LineUsageError(f"--method: {exc}") from None


def handle_errors(fn: Callable) -> Callable:
    """Turn attnmap's typed errors into one-line click errors (exit code 1), never a traceback.

    An unexpected exception (a bug) is one line too, saying how to see its traceback
    (``attnmap --debug ...``), which re-raises it.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RunConflictError as exc:
            raise click.ClickException(f"{exc.conflict}; add --overwrite to replace them, or choose another --out") \
                from None
        except AttnmapError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:
            # Ctrl-C or SIGTERM: one line on what was written, and the shell's exit code for the signal
            _status.end()
            summary = getattr(exc, "summary", "")
            click.echo(f"interrupted ({getattr(exc, 'signal_name', 'SIGINT')})" + (f": {summary}" if summary else ""),
                       err=True)
            raise click.exceptions.Exit(getattr(exc, "exit_code", 130)) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: one line unless --debug
            if _debug():
                raise
            raise click.ClickException(f"unexpected {type(exc).__name__}: {exc} (this is a bug in attnmap; "
                                       "run with `attnmap --debug ...` for the traceback)") from None

    return wrapper


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and (root.obj or {}).get("debug"))


# ---------------------------------------------------------------------------- shared options
def model_option(fn: Callable) -> Callable:
    """``--model``, ``--provider`` and ``--threads``."""
    fn = click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                      help="onnxruntime execution provider; auto takes CUDA, TensorRT, OpenVINO or CoreML "
                           "where onnxruntime offers one, else the CPU; an unavailable one is an error, never "
                           "a silent fallback. TensorRT caches engines in $ATTNMAP_TRT_CACHE "
                           "(default ~/.cache/attnmap/tensorrt).")(fn)
    fn = click.option("--model", "-m", "model", default=None, metavar="MODEL",
                      help="An .onnx file from `attnmap export`, or a shipped model name "
                           "(default: the shipped demo model, or $ATTNMAP_MODEL).")(fn)
    fn = click.option("--threads", type=click.IntRange(1, 256), default=None,
                      help="CPU intra-op threads (default: physical cores).")(fn)
    return fn


def _method_flags() -> dict[str, tuple[OptionSpec, list[str]]]:
    """Every option of any method: its spec (shared by the methods that take it) and users."""
    flags: dict[str, tuple[OptionSpec, list[str]]] = {}
    for m in METHODS.values():
        for name, spec in m.options.items():
            flags.setdefault(name, (spec, []))[1].append(m.name)
    return flags


METHOD_FLAGS = _method_flags()


def _click_type(spec: OptionSpec) -> Any:
    if spec.choices:
        return click.Choice([str(c) for c in spec.choices])
    if spec.kind is float and (spec.low is not None or spec.high is not None):
        return click.FloatRange(spec.low, spec.high, min_open=spec.low_open, max_open=spec.high_open)
    return spec.kind


def method_options(fn: Callable) -> Callable:
    """``--method`` plus one flag per method option, all derived from the methods' option specs."""
    for name, (spec, users) in sorted(METHOD_FLAGS.items(), reverse=True):
        flag = "--" + name.replace("_", "-")
        defaults = sorted({str(METHODS[u].options[name].default) for u in users})
        text = f"{spec.help} [{', '.join(users)}; default {' / '.join(defaults)}]"
        if spec.kind is bool:
            fn = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=text)(fn)
        else:
            fn = click.option(flag, name, type=_click_type(spec), default=None, help=text)(fn)
    fn = click.option("--method", default="rollout", show_default=True, type=MethodChoice(list(METHODS)),
                      help="Explanation method (`attnmap methods` describes each one).")(fn)
    return fn


def pop_method_options(kwargs: dict[str, Any], method: str) -> dict[str, Any]:
    """Remove the method flags from a command's kwargs; return those the user set.

    Raises:
        click.BadParameter: a flag the chosen method does not take.
    """
    given = {name: kwargs.pop(name) for name in list(METHOD_FLAGS) if kwargs.get(name) is not None}
    for name in METHOD_FLAGS:
        kwargs.pop(name, None)
    for name in given:
        if name not in METHODS[method].options:
            takes = ", ".join("--" + o.replace("_", "-") for o in METHODS[method].options) or "no options"
            raise click.BadParameter(f"--method {method} does not take it; it takes {takes}",
                                     param_hint="--" + name.replace("_", "-"))
    if "head_fusion" in given:
        given["head_fusion"] = str(given["head_fusion"])
    return given


def overlay_options(fn: Callable | None = None, *, label: bool = True) -> Callable:
    """How frames enter the model (--fit) and how overlays look: colormap, alpha, blur, mode, label."""
    if fn is None:
        return functools.partial(overlay_options, label=label)
    if label:
        fn = click.option("--no-label", is_flag=True, help="Do not draw the caption (label, method) on overlays.")(fn)
    fn = click.option("--mode", type=click.Choice(["blend", "mask"]), default="blend", show_default=True,
                      help="blend: colour map over the image; mask: image multiplied by the map.")(fn)
    fn = click.option("--blur", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                      help="Gaussian smoothing of the heatmap (sigma as a fraction of the shorter side).")(fn)
    fn = click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                      help="Weight of the colour map in blend mode.")(fn)
    fn = click.option("--colormap", default="jet", show_default=True,
                      help="Any OpenCV colormap by name, any case (jet, inferno, viridis, turbo, ...).")(fn)
    fn = click.option("--fit", type=click.Choice(FITS), default="crop", show_default=True,
                      help="crop: the model's eval transform (the same in every command); squash: whole "
                           "frame resized; letterbox: whole frame padded.")(fn)
    return fn


def _style(colormap: str, alpha: float, blur: float, mode: str, label: bool):
    """The one OverlayStyle object every front takes (checked here, once)."""
    from attnmap.runtime.draw.style import OverlayStyle

    return OverlayStyle(colormap=colormap, alpha=alpha, blur=blur, mode=mode, label=label)


def precision_options(fn: Callable) -> Callable:
    """The conversion and fidelity-gate options of ``export --precision`` and ``quantize``."""
    fn = click.option("--attn-dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
                      help="fp16 files: dtype of the attentions output (fp16 halves the transfer off a GPU; "
                           "maps are computed in float32 either way).")(fn)
    fn = click.option("--min-rollout-corr", type=click.FloatRange(-1, 1), default=0.98, show_default=True,
                      help="Fidelity gate: lowest mean Pearson correlation of rollout maps with fp32's.")(fn)
    fn = click.option("--min-top1", type=click.FloatRange(0, 1), default=0.98, show_default=True,
                      help="Fidelity gate: lowest top-1 agreement with the fp32 file.")(fn)
    fn = click.option("--check", default=None, metavar="SOURCE",
                      help="Images for the fidelity gate (default: 64 synthetic images, plus the calibration "
                           "images).")(fn)
    fn = click.option("--calibration-images", type=click.IntRange(1, 10000), default=32, show_default=True,
                      help="Calibration images read from --calibration at most.")(fn)
    fn = click.option("--calibration", default=None, metavar="SOURCE",
                      help="int8: static QDQ quantisation calibrated on these images (folder, glob, video); "
                           "without it, dynamic int8 (weights only), which measured faster and closer on ViTs.")(fn)
    return fn


def _convert_options(precision: str, *, calibration: str | None, calibration_images: int, check: str | None,
                     min_top1: float, min_rollout_corr: float, attn_dtype: str):
    """The ConvertOptions of the precision flags; None for fp32 (which takes none of them)."""
    if precision == "fp32":
        given = [flag for flag, v in (("--calibration", calibration), ("--check", check),
                                      ("--attn-dtype fp16", attn_dtype == "fp16")) if v]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to --precision fp16 or int8 only")
        return None
    if attn_dtype == "fp16" and precision != "fp16":
        raise click.UsageError("--attn-dtype fp16 applies to --precision fp16 only")
    if calibration and precision != "int8":
        raise click.UsageError("--calibration applies to --precision int8 only (use --check for the gate's images)")
    from attnmap.runtime.precision.convert import ConvertOptions
    from attnmap.runtime.precision.fidelity import Thresholds

    return ConvertOptions(precision, mode="static" if calibration else "dynamic", calibration=calibration,
                          calibration_images=calibration_images, check=check, attn_dtype=attn_dtype,
                          thresholds=Thresholds(min_top1=min_top1, min_rollout_corr=min_rollout_corr))


def _explainer(model: str | None, provider: str, threads: int | None):
    from attnmap import Explainer
    from attnmap.runtime.model.registry import default_choice

    chosen = default_choice(model)
    if chosen is not None:  # results of a model nobody named: say which one they are
        _err(f"model: {chosen}; --model to choose another")
    return Explainer(model, provider=provider, threads=threads)


def engine_options(fn: Callable) -> Callable:
    """``--engine``, ``--address``, ``--actors`` and ``--gpus-per-actor`` (explain, evaluate)."""
    fn = click.option("--gpus-per-actor", type=click.FloatRange(0, 64), default=0.0, show_default=True,
                      help="Ray engine: GPUs each model actor takes (0: one CPU core each; 0.5 shares a GPU).")(fn)
    fn = click.option("--actors", type=click.IntRange(1, 4096), default=None,
                      help="Ray engine: model actors, each one onnxruntime session (default: one per CPU of "
                           "the cluster, or per --gpus-per-actor of its GPUs).")(fn)
    fn = click.option("--address", default=None, metavar="ADDR",
                      help="Ray engine: 'auto' for the cluster this machine joined (`ray start`), or "
                           "ray://HOST:10001; default: a local Ray instance on this machine's cores.")(fn)
    fn = click.option("--engine", "engine_name", type=click.Choice(["local", "ray"]), default="local",
                      show_default=True, help="local: this machine; ray: Ray Data, on a local instance or a "
                                              "cluster (pip install 'attnmap[distributed]'). Still images only.")(fn)
    return fn


def _ray_options(address: str | None, actors: int | None, gpus_per_actor: float, provider: str,
                 batch_size: int | None, **local_only: Any):
    """The RayOptions of the engine flags; UsageError where a local-engine flag was given too."""
    from attnmap.runtime.fronts.distributed import RayOptions

    given = [f"--{name.replace('_', '-')}" for name, value in local_only.items() if value]
    if given:
        raise click.UsageError(f"{', '.join(given)} apply to --engine local; on Ray use --actors "
                               "(each actor runs one model session on one CPU thread, or on its GPU)")
    return RayOptions(address=address, actors=actors, gpus_per_actor=gpus_per_actor, provider=provider,
                      **({"batch_size": batch_size} if batch_size else {}))


def _check_local_engine(address: str | None, actors: int | None, gpus_per_actor: float) -> None:
    """UsageError where a Ray flag was given to the local engine."""
    given = [flag for flag, v in (("--address", address), ("--actors", actors), ("--gpus-per-actor", gpus_per_actor))
             if v]
    if given:
        raise click.UsageError(f"{', '.join(given)} apply to --engine ray")


# ---------------------------------------------------------------------------- group
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="attnmap")
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors and OpenCV's own warnings.")
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


# ---------------------------------------------------------------------------- export
@main.command()
@click.argument("model_name")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the .onnx file.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Local weights: .safetensors, .pth/.pt (loaded with weights_only) or timm's .npz.")
@click.option("--pretrained", is_flag=True, help="Download timm's pretrained weights (needs a model hub).")
@click.option("--img-size", type=click.IntRange(8, 4096), default=None, help="Override the input size (square).")
@click.option("--heads", type=click.Choice(HEAD_FUSIONS), default="none", show_default=True,
              help="Fuse attention heads inside the graph (H becomes 1), shrinking the output H times.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Class names: a .txt with one per line or a class-index .json "
                   "(default: ImageNet-1k names for 1000-class heads).")
@click.option("--num-classes", type=click.IntRange(1, None), default=None, help="Override the head's class count.")
@click.option("--no-attentions", is_flag=True,
              help="Export logits only (a plain-inference baseline for benchmarks).")
@click.option("--gradients", is_flag=True,
              help="Also emit attention_grads = d logit[target] / d attentions, and the last block's normed "
                   "tokens with their gradients (tokens, token_grads), with an int64 `target` input, for the "
                   "class-specific methods (chefer, grad_rollout, gradsam, product, gradcam).")
@click.option("--opset", type=click.IntRange(13, 30), default=None, help="ONNX opset (default: the exporter's).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp16 or int8: export fp32 (parity-checked), convert, and write only if the fidelity gate "
                   "passes (see `attnmap quantize`).")
@precision_options
@handle_errors
def export(model_name: str, out: Path, checkpoint: Path | None, pretrained: bool, img_size: int | None,
           heads: str, labels: Path | None, num_classes: int | None, no_attentions: bool, gradients: bool,
           opset: int | None, precision: str, **gate: Any) -> None:
    """Export a timm or Hugging Face ViT to ONNX with attention outputs and attnmap metadata.

    MODEL_NAME is a timm model name (e.g. deit_tiny_patch16_224), a transformers model folder
    written by save_pretrained (config.json, model.safetensors or pytorch_model.bin,
    preprocessor_config.json), or hf:ORG/NAME on the Hugging Face hub. Transformers classes:
    ViT, DeiT (with or without teacher), BEiT, DINOv2 (with or without registers); their
    weights, input size, preprocessing and labels come from their own files. The export is
    checked against torch (against transformers itself for those) before the file is written;
    its path is printed on stdout.
    """
    if checkpoint is not None and pretrained:
        raise click.UsageError("Use just one of --checkpoint or --pretrained.")
    if gradients and no_attentions:
        raise click.UsageError("Use just one of --gradients or --no-attentions.")
    options = _convert_options(precision, **gate)
    if options is not None and no_attentions:
        raise click.UsageError("--precision fp16/int8 needs the attentions (the fidelity gate compares maps); "
                               "drop --no-attentions")
    try:
        from attnmap.export.to_onnx import export_onnx
    except ImportError as exc:
        raise click.ClickException(
            f"`attnmap export` needs the export extra (torch and timm): pip install -e '.[export]' ({exc})") from None
    kwargs = dict(checkpoint=checkpoint, pretrained=pretrained, img_size=img_size, heads=heads, labels=labels,
                  attentions=not no_attentions, gradients=gradients, opset=opset,
                  model_kwargs={"num_classes": num_classes} if num_classes else None, log=_err,
                  random_weights_hint="pass --checkpoint FILE or --pretrained")
    if options is None:
        report = export_onnx(model_name, out, **kwargs)
    else:
        from attnmap.export.precision import export_with_precision

        report = export_with_precision(model_name, out, options, **kwargs)
    click.echo(str(report.path))  # the export's own log (stderr) has the parity figures and size


# ---------------------------------------------------------------------------- quantize
@main.command()
@click.argument("model")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the converted .onnx file.")
@click.option("--precision", type=click.Choice(["fp16", "int8"]), default="int8", show_default=True,
              help="int8: onnxruntime's quantiser (dynamic, or static QDQ with --calibration); fp16: half "
                   "compute with float32 at the graph boundary.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="CPU threads of the fidelity check (default: physical cores).")
@precision_options
@handle_errors
def quantize(model: str, out: Path, precision: str, threads: int | None, **gate: Any) -> None:
    """Convert an fp32 attnmap file to int8 or fp16, torch-free, behind a fidelity gate.

    MODEL is an .onnx file from `attnmap export` (or a shipped model name). The converted
    file is compared with MODEL on the --check images, else on 64 synthetic images (plus the
    --calibration images): top-1 agreement, max probability difference, and per map method the
    correlation and top-10% patch IoU of the maps. Below the thresholds it fails with a
    non-zero exit and writes nothing; else the figures go into the file's metadata (`attnmap
    info` shows them) and its path is printed on stdout.
    """
    from attnmap.runtime.model.registry import resolve_model
    from attnmap.runtime.precision.convert import convert_file

    report = convert_file(resolve_model(model), out, _convert_options(precision, **gate), log=_err, threads=threads)
    click.echo(str(report.path))


# ---------------------------------------------------------------------------- info
@main.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
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
@model_option
@method_options
@overlay_options
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/explain"), show_default=True, help="Folder for overlays (and maps).")
@click.option("--topk", type=click.IntRange(1, 1000), default=5, show_default=True, help="Predictions to print.")
@click.option("--save-maps", is_flag=True, help="Also write an .npz per image with `grid` and `heatmap`.")
@click.option("--grid", "tiles", type=click.Choice(["none", "layers", "heads"]), default="none", show_default=True,
              help="Also write a tiled image of raw attention for every layer, or every head of --layer.")
@click.option("--video-format", type=click.Choice(["mp4", "webm", "avi"]), default="mp4", show_default=True,
              help="Container of annotated videos: mp4 (H.264 where this OpenCV has it, else MPEG-4 Part 2: "
                   "fast, not played by browsers), webm (VP8: plays in browsers, slower to encode), avi (MJPEG).")
@click.option("--batch-size", type=click.IntRange(1, 256), default=None,
              help="Images per inference batch (default: 4 on a CPU, 8 on CUDA).")
@click.option("--workers", type=click.IntRange(1, 16), default=None,
              help="Model runs at once, each on its own batch (default: 2 on a CPU with 2+ cores, each "
                   "on half of them, where there is more than one batch; else 1).")
@click.option("--class", "target", default=None, metavar="CLASS", multiple=True,
              help="For class-specific methods (gradient methods, gradcam, occlusion, rise): a class index, a "
                   "label name, or topk:N for the top N "
                   "classes' maps side by side (default: the predicted class). Give it once.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per input: {source, topk: [{index, label, prob}], overlay}.")
@click.option("--overwrite", is_flag=True,
              help="Write into an --out folder that holds a run with other settings (model, method, options, "
                   "class, fit), replacing its files of the same name (without it such a run is refused).")
@engine_options
@handle_errors
def explain(sources: tuple[str, ...], model: str | None, provider: str, threads: int | None, method: str,
            fit: str, colormap: str, alpha: float, blur: float, mode: str, no_label: bool, out_dir: Path,
            topk: int, save_maps: bool, tiles: str, video_format: str, batch_size: int | None,
            workers: int | None, target: tuple[str, ...], as_json: bool, overwrite: bool, engine_name: str,
            address: str | None, actors: int | None, gpus_per_actor: float, **kwargs: Any) -> None:
    """Explain images, folders, globs and videos; write overlays to --out.

    SOURCE is an image file, a directory, a glob ("photos/*.jpg"), a video file, an image
    sequence (img_%04d.png) or a manifest (.csv / .parquet with a `path` column). A bad or
    missing input is reported on its own line and skipped; the exit code is then 1. With
    --engine ray (still images only) the run also writes run.parquet, and a rerun skips images
    whose outputs are complete.
    """
    from attnmap.runtime.engine.engine import FrameEngine, Job
    from attnmap.runtime.engine.explainer import parse_class_spec
    from attnmap.runtime.fronts.distributed.manifest import plan_with_manifests
    from attnmap.runtime.fronts.offline import FolderOutput, count_inputs, explain_inputs
    from attnmap.runtime.model.plan import plan_for_inputs

    options = pop_method_options(kwargs, method)
    if len(target) > 1:
        raise click.BadParameter(f"given {len(target)} times ({', '.join(map(repr, target))}); give one class, "
                                 "or topk:N for several side by side", param_hint="--class")
    if target and not METHODS[method].class_specific:
        raise click.BadParameter(
            f"--class needs a class-specific method ({', '.join(n for n, m in METHODS.items() if m.class_specific)});"
            f" {method!r} is class-agnostic", param_hint="--class")
    style = _style(colormap, alpha, blur, mode, not no_label)
    if engine_name == "ray":
        ray_options = _ray_options(address, actors, gpus_per_actor, provider, batch_size, threads=threads,
                                   workers=workers)
        explainer = _explainer(model, "cpu", 1)  # only checks the job here; the actors load their own copies
    else:
        _check_local_engine(address, actors, gpus_per_actor)
        planned = plan_with_manifests(sources, videos=True, on_skip=lambda spec, why: _err(f"note: {spec}: {why}"))
        images, videos = count_inputs(planned)
        plan = plan_for_inputs(provider, images=images, videos=videos, threads=threads, workers=workers,
                               batch_size=batch_size)
        explainer = _explainer(model, provider, plan.threads)
    fixed, top_n = parse_class_spec(explainer.meta, target[0]) if target else (None, None)
    job = Job(method=method, options=options, fit=fit, topk=topk, target=fixed, top_classes=top_n, style=style)
    show = _stderr_is_terminal()

    def on_record(record: dict[str, Any], line: str) -> None:
        _out(json.dumps(record) if as_json else line)

    def on_fail(source: str, reason: str) -> None:
        _err(f"error: {source}: {reason}" if source not in reason else f"error: {reason}")

    def on_video(spec: str, p) -> None:
        if show:
            _status.show(f"{spec}: {p.bar()}")

    output = FolderOutput(out_dir, save_maps=save_maps, tiles=tiles, video_format=video_format, overwrite=overwrite)
    if engine_name == "ray":
        from attnmap.runtime.fronts.distributed import explain_on_ray
        from attnmap.runtime.fronts.out_folder import claim_folder, run_settings

        claim_folder(out_dir, run_settings(FrameEngine(explainer, job)), overwrite=overwrite)
        report = explain_on_ray(FrameEngine(explainer, job), sources, output, ray_options,
                                on_record=on_record, on_fail=on_fail)
        if report.skipped:
            _err(f"{report.skipped} images already done in {out_dir} (same content and settings): skipped")
    else:
        from attnmap.runtime.fronts.interrupt import terminate_as_interrupt

        engine = FrameEngine(explainer, job, batch_size=plan.batch_size, workers=plan.workers)
        with terminate_as_interrupt():
            report = explain_inputs(engine, planned, output, on_record=on_record, on_fail=on_fail, on_video=on_video,
                                    on_note=lambda line: _err(f"note: {line}"))
    _status.end()
    if report.failed:
        raise click.ClickException(f"{len(report.failed)} of {len(report.failed) + report.done} inputs failed "
                                   f"(see above); {report.done} written to {out_dir}")
    _err(f"{report.done} input{'s' if report.done != 1 else ''} explained into {out_dir}")


def _stderr_is_terminal() -> bool:
    """Progress goes to stderr only where a person watches it, never into a log file."""
    return sys.stderr.isatty()


# ---------------------------------------------------------------------------- live
def _live_epilog() -> str:
    from attnmap.runtime.fronts.live import KEY_HELP

    return "\b\nKeys in the window:\n  " + KEY_HELP


@main.command(epilog=_live_epilog())
@click.argument("source", required=False, default="0")
@model_option
@method_options
@overlay_options(label=False)
@click.option("--show/--no-show", default=True, show_default=True,
              help="Show a window; --no-show with --out records the annotated stream headless.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the annotated stream to this video file (e.g. live.mp4).")
@click.option("--smooth", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Temporal smoothing: EMA weight of the previous heatmap (0 = off).")
@click.option("--every", type=click.IntRange(1, None), default=1, show_default=True,
              help="Explain every k-th frame and reuse the last heatmap in between.")
@click.option("--max-frames", type=click.IntRange(1, None), default=None, help="Stop after this many frames.")
@click.option("--duration", type=click.FloatRange(0, None, min_open=True), default=None,
              help="Stop after this many seconds.")
@click.option("--no-pace", is_flag=True, help="Read a video file as fast as possible instead of at its fps.")
@click.option("--snapshot-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/snapshots"),
              show_default=True, help="Where the s key saves snapshots.")
@click.option("--no-hud", is_flag=True, help="Do not draw label, fps and stage timings.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's statistics as one JSON object.")
@handle_errors
def live(source: str, model: str | None, provider: str, threads: int | None, method: str, fit: str, colormap: str,
         alpha: float, blur: float, mode: str, show: bool, out: Path | None, smooth: float, every: int,
         max_frames: int | None, duration: float | None, no_pace: bool, snapshot_dir: Path, no_hud: bool,
         as_json: bool, **kwargs: Any) -> None:
    """Explain a camera, stream or video live, in a window or recorded headless.

    SOURCE is a camera index (0, cam:1), a stream URL (rtsp://, http://) or a video file played at
    its own frame rate (default: camera 0). A capture thread keeps only the newest frame, so a slow
    model drops frames instead of falling behind.
    """
    from attnmap.runtime.engine.engine import Job
    from attnmap.runtime.fronts.live.loop import LiveConfig, run_live

    if not show and out is None:
        raise click.UsageError("--no-show needs --out FILE.mp4 (otherwise nothing would be shown or saved).")
    options = pop_method_options(kwargs, method)
    style = _style(colormap, alpha, blur, mode, True)
    config = LiveConfig(show=show, out=out, smooth=smooth, every=every, hud=not no_hud, max_frames=max_frames,
                        duration=duration, pace=False if no_pace else None, snapshot_dir=snapshot_dir)
    explainer = _explainer(model, provider, threads)
    stats = run_live(explainer, source, Job(method=method, options=options, fit=fit, style=style), config)
    summary = stats.to_dict()
    if as_json:
        click.echo(json.dumps(summary))
        return
    lat = summary["latency_ms"]
    click.echo(f"{stats.source}: {stats.frames_processed} frames shown at {summary['fps']:.1f} frames/s, "
               f"{stats.frames_dropped} dropped, capture-to-display latency median {lat.get('median', 0):.1f} ms"
               + (f"; wrote {stats.out}" if stats.out else ""))


# ---------------------------------------------------------------------------- serve
@main.command()
@click.argument("source", required=False, default=None)
@model_option
@method_options
@overlay_options(label=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything beyond loopback needs --token.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--token", default=None, metavar="TOKEN",
              help="Bearer token for every path but /healthz (default: $ATTNMAP_TOKEN). Open the page once "
                   "as /?token=TOKEN.")
@click.option("--smooth", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Temporal smoothing: EMA weight of the previous heatmap (0 = off).")
@click.option("--every", type=click.IntRange(1, None), default=1, show_default=True,
              help="Explain every k-th frame and reuse the last heatmap in between.")
@click.option("--no-hud", is_flag=True, help="Do not draw label, fps and stage timings on the stream.")
@click.option("--no-loop", is_flag=True, help="Play a video file once instead of in a loop.")
@click.option("--max-upload-mb", type=click.FloatRange(0, None, min_open=True), default=20.0, show_default=True,
              help="Largest upload /v1/explain accepts.")
@click.option("--max-pixels", type=click.IntRange(1, None), default=40_000_000, show_default=True,
              help="Largest width x height an uploaded image may declare (checked before decoding).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow browser pages from this origin to call the API (repeatable; default: CORS off).")
@handle_errors
def serve(source: str | None, model: str | None, provider: str, threads: int | None, method: str, fit: str,
          colormap: str, alpha: float, blur: float, mode: str, host: str, port: int, token: str | None,
          smooth: float, every: int, no_hud: bool, no_loop: bool, max_upload_mb: float, max_pixels: int,
          cors_origins: tuple[str, ...], **kwargs: Any) -> None:
    """Serve the live overlay to a browser and explanations over HTTP (extra 'serve').

    SOURCE is as in `attnmap live` (camera index, stream URL, video file; a file plays in a loop);
    without one only the API runs. Binds to 127.0.0.1 unless --host says otherwise.
    """
    from attnmap.runtime.fronts.serve import require_extra

    require_extra()
    from attnmap.runtime.engine.engine import Job
    from attnmap.runtime.fronts.serve.app import ServerSettings
    from attnmap.runtime.fronts.serve.runner import serve as run_serve
    from attnmap.runtime.fronts.serve.security import Limits
    from attnmap.runtime.fronts.serve.stream import StreamConfig

    options = pop_method_options(kwargs, method)
    job = Job(method=method, options=options, fit=fit, style=_style(colormap, alpha, blur, mode, False))
    config = StreamConfig(smooth=smooth, every=every, hud=not no_hud, loop_file=not no_loop)
    settings = ServerSettings(token=token, cors_origins=tuple(cors_origins),
                              limits=Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels))
    run_serve(_explainer(model, provider, threads), source, job, config, settings, host=host, port=port, log=_err)


# ---------------------------------------------------------------------------- bench
@main.command()
@click.argument("source", required=False)
@click.option("--source", "-s", "source_opt", default=None, metavar="SOURCE",
              help="The frames to time, as the SOURCE argument (give one or the other).")
@model_option
@method_options
@click.option("--fit", type=click.Choice(FITS), default="crop", show_default=True, help="Preprocessing fit mode.")
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
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@handle_errors
def bench(source: str | None, source_opt: str | None, model: str | None, provider: str, threads: int | None,
          method: str, fit: str, runs: int, warmup: int, batch_size: int, targets_video: Path | None,
          compare: tuple[str, ...], as_json: bool, **kwargs: Any) -> None:
    """Time each stage (decode, preprocess, inference, explanation, overlay, output).

    Prints median and p90 per stage and the ratio of (inference with attentions + explanation)
    to plain inference of the same model. SOURCE (or --source) is any source: image, folder,
    glob, video, camera, stream or image sequence (default: a synthetic 640x480 frame).
    """
    if source is not None and source_opt is not None and source != source_opt:
        raise click.UsageError(f"two sources given: {source!r} and --source {source_opt!r}; give one")
    source = source if source is not None else source_opt
    from attnmap.runtime.fronts.bench import format_bench, run_bench
    from attnmap.runtime.fronts.targets import format_targets, measure_targets, throughput_explainer

    options = pop_method_options(kwargs, method)
    if compare:
        if targets_video is not None:
            raise click.UsageError("Use just one of --compare or --targets.")
        from attnmap.runtime.fronts.bench import format_compare, run_compare

        files = ([model] if model else []) + [f.strip() for spec in compare for f in spec.split(",") if f.strip()]
        result = run_compare([_explainer(f, provider, threads) for f in files], source, runs=runs, warmup=warmup,
                             batch_size=batch_size, method=method, options=options, fit=fit)
        click.echo(json.dumps(result) if as_json else format_compare(result))
        return
    explainer = _explainer(model, provider, threads)
    result = run_bench(explainer, source, runs=runs, warmup=warmup, batch_size=batch_size, method=method,
                       options=options, fit=fit)
    targets = None
    if targets_video is not None:
        # At --batch-size when one was given, else at the batch `attnmap explain` would use.
        offline, plan = throughput_explainer(explainer, batch_size if batch_size > 1 else None)
        targets = measure_targets(explainer, targets_video, batch_size=plan.batch_size, method=method,
                                  offline_explainer=offline, workers=plan.workers)
    if as_json:
        click.echo(json.dumps({"stages": result, "targets": targets}))
        return
    click.echo(format_bench(result))
    if targets is not None:
        click.echo(format_targets(targets))


# ---------------------------------------------------------------------------- evaluate
@main.command()
@click.argument("sources", nargs=-1)
@model_option
@click.option("--methods", "methods_", default="rollout,attention", show_default=True,
              help="Comma-separated method specs to score, each a name or name:option=value:... "
                   "(rollout:discard_ratio=0.9); 'all' for every method the model can run. A random map "
                   "is always scored beside them.")
@click.option("--unit", type=click.Choice(["patch", "pixel"]), default="patch", show_default=True,
              help="What is removed: the token grid's patches, or pixels ranked by the map resized to the input.")
@click.option("--baseline", type=click.Choice(["mean", "black", "blur"]), default="mean", show_default=True,
              help="What a removed unit takes: the model's mean colour, black, or the blurred image.")
@click.option("--sigma", type=click.FloatRange(0, None, min_open=True), default=10.0, show_default=True,
              help="Sigma of the blur baseline, in input pixels.")
@click.option("--steps", type=click.IntRange(1, 1000), default=16, show_default=True,
              help="Deletion / insertion steps.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="CSV of source,class (index or label): explain each image's listed class, not its top-1.")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of binary object masks named like the images (non-zero = object): localisation metrics.")
@click.option("--boxes", type=click.Path(dir_okay=False), default=None,
              help="CSV of source,x0,y0,x1,y1 object boxes in image pixels: localisation metrics.")
@click.option("--synthetic", type=click.IntRange(1, 100000), default=None,
              help="Also score N images of the shapes dataset, with their exact object masks.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for per_image.csv and the curve plots (perturbation.png, deletion_insertion.png).")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Perturbed inputs per model run.")
@click.option("--fit", type=click.Choice(FITS), default="crop", show_default=True, help="Preprocessing fit mode.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (schema in the README).")
@engine_options
@handle_errors
def evaluate(sources: tuple[str, ...], model: str | None, provider: str, threads: int | None, methods_: str,
             unit: str, baseline: str, sigma: float, steps: int, labels: str | None, masks_dir: str | None,
             boxes: str | None, synthetic: int | None, out_dir: Path | None, batch_size: int, fit: str,
             as_json: bool, engine_name: str, address: str | None, actors: int | None,
             gpus_per_actor: float) -> None:
    """Score how faithful each method's map is, and where ground truth is given, how well it localises.

    SOURCE is an image file, a directory, a glob or a manifest (.csv / .parquet with a `path`
    column); with --engine ray each image is scored on a Ray actor. Each map's units are removed, most (or least)
    relevant first, and the model is run again: positive / negative perturbation (Chefer et al.
    2021) and deletion / insertion (Petsiuk et al. 2018). With --masks, --boxes or --synthetic:
    pointing game, mass ratio, and segmentation pixel accuracy, mIoU and AP. A random map is the floor.
    """
    import itertools

    from attnmap.runtime.core.errors import MethodOptionError
    from attnmap.runtime.frames.sources import open_files
    from attnmap.runtime.fronts import evaluate as ev
    from attnmap.runtime.fronts.distributed.manifest import list_images, plan_with_manifests
    from attnmap.runtime.methods import runs_on

    if not sources and synthetic is None:
        raise click.UsageError("give images to evaluate (SOURCE...) or --synthetic N")
    if engine_name == "ray" and synthetic is not None:
        raise click.UsageError("--synthetic runs on the local engine; leave out --engine ray, or give image files")
    # with Ray the driver's model only checks the methods; the actors load their own copies
    explainer = _explainer(model, "cpu", 1) if engine_name == "ray" else _explainer(model, provider, threads)
    meta = explainer.meta
    specs = [m.strip() for m in methods_.split(",") if m.strip()]
    if specs == ["all"]:
        specs = [n for n in METHODS if runs_on(n, meta)]
    for spec in specs:
        try:
            ev.parse_method_spec(spec)
        except MethodOptionError as exc:
            raise LineUsageError(f"--methods: {exc}") from exc
    truth = ev.GroundTruth(labels=ev.read_labels(labels, meta) if labels else {},
                           boxes=ev.read_boxes(boxes) if boxes else {},
                           mask_dir=ev.mask_folder(masks_dir) if masks_dir else None)
    if engine_name == "ray":
        (images, missing), refs = list_images(sources), []
    else:
        _check_local_engine(address, actors, gpus_per_actor)
        refs, missing = plan_with_manifests(sources, on_skip=lambda spec, why: _err(f"note: {spec}: {why}")) \
            if sources else ([], [])
        images = [r.target for r in refs if r.kind == "image"]
    for spec, exc in missing:
        _err(f"error: {spec}: {exc}")
    for r in refs:
        if r.kind != "image":
            _err(f"error: {r.spec}: evaluate takes still images; {r.spec!r} is a {r.kind}")
    synth: list = []
    if synthetic is not None:
        synth, truth.masks = ev.synthetic_frames(synthetic, max(meta.input_size[1:]))
    if not images and not synth:
        raise click.ClickException("no images to evaluate")
    total = len(images) + len(synth)
    local = bool(images) and engine_name == "local"
    with open_files(images, errors="yield") if local else contextlib.nullcontext(()) as frames, \
            click.progressbar(length=total, label="evaluating", file=sys.stderr) as bar:
        scoring = dict(baseline=baseline, sigma=sigma, steps=steps, unit=unit, fit=fit, batch_size=batch_size)
        if engine_name == "ray":
            from attnmap.runtime.fronts.distributed.evaluate import evaluate_on_ray

            result = evaluate_on_ray(explainer, images, specs, _ray_options(address, actors, gpus_per_actor,
                                                                            provider, None, threads=threads),
                                     truth=truth, on_image=lambda _: bar.update(1), **scoring)
        else:
            result = ev.evaluate(explainer, itertools.chain(frames, synth), specs, truth=truth,
                                 on_image=lambda _: bar.update(1), **scoring)
    for source, reason in result.failed:
        _err(f"error: {source}: {reason}")
    click.echo(json.dumps(result.to_dict()) if as_json else ev.format_evaluation(result))
    if out_dir is not None and result.images:
        written = [ev.write_csv(result, out_dir / "per_image.csv"), *ev.write_plots(result, out_dir)]
        _err("wrote " + ", ".join(str(p) for p in written))
    failed = len(result.failed) + len(missing) + sum(r.kind != "image" for r in refs)
    if failed:
        raise click.ClickException(f"{failed} input{'s' if failed != 1 else ''} could not be evaluated (see above)")


# ---------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Folder for the generated inputs and the overlays.")
@model_option
@method_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@handle_errors
def demo(out_dir: Path, model: str | None, provider: str, threads: int | None, method: str, seed: int,
         **kwargs: Any) -> None:
    """Generate a few images and a short video, explain them, and say where the overlays are.

    Uses the shipped default model unless --model is given: no download, no extra files.
    """
    from attnmap.runtime.draw.style import OverlayStyle
    from attnmap.runtime.engine.engine import FrameEngine, Job
    from attnmap.runtime.fronts.demo import run_demo

    options = pop_method_options(kwargs, method)
    explainer = _explainer(model, provider, threads)
    engine = FrameEngine(explainer, Job(method=method, options=options, topk=1, style=OverlayStyle()), batch_size=8)
    r = run_demo(engine, out_dir, seed=seed, on_record=lambda record, line: _out(line))
    click.echo(f"model: {explainer.path} ({explainer.meta.model_name}, {explainer.meta.num_classes} classes)")
    click.echo(f"overlays: {r.overlays}/ ({len(r.images)} images and {r.video.name})")
    click.echo(f"overview: {r.sheet}")


# ---------------------------------------------------------------------------- methods
@main.command()
def methods() -> None:
    """List the explanation methods, their options, allowed values and defaults."""
    for m in METHODS.values():
        kind = ("class-specific, needs an export with --gradients" if m.needs_gradients else
                "class-specific, runs the model on perturbed inputs" if m.kind == "perturbation" else "class-agnostic")
        click.echo(f"{m.name} ({kind})\n  {m.summary}")
        for name, spec in m.options.items():
            click.echo(f"  --{name.replace('_', '-')}: {spec.help} {spec.describe()}; default {spec.default}")


# ---------------------------------------------------------------------------- models
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@handle_errors
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
