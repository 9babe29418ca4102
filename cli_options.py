"""What the ``attnmap`` commands take: click option groups that build the library's option objects.

A group is one decorator; where it has a ``build``, the command receives the object built
from the group's values (``job``: a Job with its OverlayStyle, ``engine``: an EngineChoice,
``output``: a FolderOutput, ``config``: a LiveConfig ...) instead of the flags one by one, so
each object is made (and checked) once, at the edge. Method flags are derived from the methods' option
specs. Importing this module loads neither onnxruntime nor OpenCV (``attnmap --help`` stays light).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import click

from attnmap.runtime.core.meta import EXPORT_HEAD_FUSIONS
from attnmap.runtime.core.options import OptionSpec
from attnmap.runtime.methods import AUTO, LIVE_DEFAULTS, METHODS

FITS = ("crop", "squash", "letterbox")
# runtime.model.session.PROVIDERS, written out so that --help does not import onnxruntime
# (tests/test_providers.py checks that the two agree).
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt", "openvino", "coreml")


def flag(name: str, value: Any = None) -> str:
    """A library parameter (and value) as the flag that sets it: ``gpus_per_actor`` -> ``--gpus-per-actor``."""
    return "--" + name.replace("_", "-") + ("" if value is None else f" {value}")


def debug() -> bool:
    """Whether ``attnmap --debug`` was given (False outside a command)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and (root.obj or {}).get("debug"))


def options(*opts: Callable, build: Callable[..., dict[str, Any]] | None = None) -> Callable:
    """Click options as one decorator; with ``build``, the command gets ``build(**their values)``
    (keyword arguments: an option object) in their place."""

    def decorate(fn: Callable) -> Callable:
        target = fn
        if build is not None:
            @functools.wraps(fn)
            def target(*args, **kwargs):
                built = build(**{name: kwargs.pop(name) for name in names})
                return fn(*args, **kwargs, **built)
        before = len(getattr(target, "__click_params__", []))
        for option in reversed(opts):
            target = option(target)
        names = [p.name for p in target.__click_params__[before:]]
        return target

    return decorate


def json_option(text: str) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=text)


# ---------------------------------------------------------------------------- model and method
model_options = options(
    click.option("--model", "-m", "model", default=None, metavar="MODEL",
                 help="An .onnx file from `attnmap export`, or a shipped model name "
                      "(default: the shipped demo model, or $ATTNMAP_MODEL)."),
    click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                 help="onnxruntime execution provider; auto takes CUDA, TensorRT, OpenVINO or CoreML where "
                      "onnxruntime offers one, else the CPU; an unavailable one is an error, never a silent "
                      "fallback. TensorRT caches engines in $ATTNMAP_TRT_CACHE (default ~/.cache/attnmap/tensorrt)."),
    click.option("--threads", type=click.IntRange(1, 256), default=None,
                 help="CPU intra-op threads (default: physical cores)."))


def _method_flags() -> dict[str, tuple[OptionSpec, list[str]]]:
    """Every option of any method: its spec (shared by the methods that take it) and users."""
    flags: dict[str, tuple[OptionSpec, list[str]]] = {}
    for m in METHODS.values():
        for name, spec in m.options.items():
            flags.setdefault(name, (spec, []))[1].append(m.name)
    return flags


METHOD_FLAGS = _method_flags()


def _method_flag(name: str, spec: OptionSpec, users: list[str]) -> Callable:
    """The flag of one method option, derived from its spec."""
    defaults = sorted({str(METHODS[u].options[name].default) for u in users})
    text = f"{spec.help} [{', '.join(users)}; default {' / '.join(defaults)}]"
    if spec.kind is bool:
        return click.option(f"{flag(name)}/--no-{name.replace('_', '-')}", name, default=None, help=text)
    kind = (click.Choice([str(c) for c in spec.choices]) if spec.choices else
            click.FloatRange(spec.low, spec.high, min_open=spec.low_open, max_open=spec.high_open)
            if spec.kind is float and (spec.low is not None or spec.high is not None) else spec.kind)
    return click.option(flag(name), name, type=kind, default=None, help=text)


def _method(method: str, **flags: Any) -> dict[str, Any]:
    """``method`` and the method options the user set; a flag the method does not take is refused."""
    given = {name: value for name, value in flags.items() if value is not None}
    for name in given if method != AUTO else ():  # auto's method is known with the model (Job.checked)
        if name not in METHODS[method].options:
            takes = ", ".join(flag(o) for o in METHODS[method].options) or "no options"
            raise click.BadParameter(f"--method {method} does not take it; it takes {takes}", param_hint=flag(name))
    if "head_fusion" in given:
        given["head_fusion"] = str(given["head_fusion"])
    return {"method": method, "options": given}


class MethodChoice(click.Choice):
    """``--method``: a registered method; a typo is one line that suggests the close names."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from attnmap.cli_output import LineUsageError
        from attnmap.runtime.core.errors import MethodOptionError
        from attnmap.runtime.methods import get_method

        if value == AUTO:
            return value
        try:
            return get_method(value).name
        except MethodOptionError as exc:
            raise LineUsageError(f"--method: {exc}") from exc


_METHOD_OPTIONS = (
    click.option("--method", default=AUTO, show_default=True, type=MethodChoice([AUTO, *METHODS]),
                 help="Explanation method (`attnmap methods` describes each one); auto: the most faithful one-pass "
                      f"method the model's file carries, the first of {', '.join(LIVE_DEFAULTS)}."),
    *[_method_flag(name, spec, users) for name, (spec, users) in sorted(METHOD_FLAGS.items())])
# the command gets ``method`` and ``options`` (the method options the user set)
method_options = options(*_METHOD_OPTIONS, build=_method)


def fit_option(text: str = "Preprocessing fit mode.") -> Callable:
    return click.option("--fit", type=click.Choice(FITS), default="crop", show_default=True, help=text)


def _budget(max_forward_passes: int, max_batch_mb: float):
    from attnmap.runtime.methods.cost import Budget

    return Budget(max_forward_passes=max_forward_passes, max_batch_bytes=int(max_batch_mb * 1024 * 1024))


def _budget_flags(passes: int, batch_mb: float, what: str) -> list[Callable]:
    return [click.option("--max-forward-passes", type=click.IntRange(1, None), default=passes, show_default=True,
                         help=f"Most model runs {what} may ask for (RISE: masks + 1); checked before any work."),
            click.option("--max-batch-mb", type=click.FloatRange(0, None, min_open=True), default=batch_mb,
                         show_default=True,
                         help=f"Most memory {what} may hold at once (estimated from forward_batch and the model).")]


def job_options(label: bool = True, label_flag: bool = True, topk: bool = False, budget: bool = False) -> Callable:
    """``--method`` with the method flags, ``--fit``, the overlay style flags (and ``--topk``, and the
    work budget); the command gets ``job``: the engine's Job, its overlay style an OverlayStyle
    built here once."""

    def build(method: str, fit: str, colormap: str, alpha: float, blur: float, mode: str, no_label: bool = False,
              **more: Any) -> dict[str, Any]:
        from attnmap.runtime.draw.style import OverlayStyle
        from attnmap.runtime.engine.job import Job

        style = OverlayStyle(colormap=colormap, alpha=alpha, blur=blur, mode=mode, label=label and not no_label)
        counts = {"topk": more.pop("topk")} if topk else {}
        if budget:
            counts["budget"] = _budget(more.pop("max_forward_passes"), more.pop("max_batch_mb"))
        return {"job": Job(**_method(method, **more), fit=fit, style=style, **counts)}

    return options(
        *_METHOD_OPTIONS,
        fit_option("crop: the model's eval transform (the same in every command); squash: whole frame resized; "
                   "letterbox: whole frame padded."),
        click.option("--colormap", default="jet", show_default=True,
                     help="Any OpenCV colormap by name, any case (jet, inferno, viridis, turbo, ...)."),
        click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                     help="Weight of the colour map in blend mode."),
        click.option("--blur", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                     help="Gaussian smoothing of the heatmap (sigma as a fraction of the shorter side)."),
        click.option("--mode", type=click.Choice(["blend", "mask"]), default="blend", show_default=True,
                     help="blend: colour map over the image; mask: image multiplied by the map."),
        *([click.option("--no-label", is_flag=True, help="Do not draw the caption (label, method) on overlays.")]
          if label_flag else []),
        *([click.option("--topk", type=click.IntRange(1, 1000), default=5, show_default=True,
                        help="Predictions to print.")] if topk else []),
        *(_budget_flags(200_000, 4096.0, "a method's options for one image") if budget else []),
        build=build)


# ---------------------------------------------------------------------------- export and quantize
def _export(checkpoint: Path | None, pretrained: bool, img_size: int | None, heads: str, labels: Path | None,
            num_classes: int | None, no_attentions: bool, gradients: bool, decompositions: bool, tail: bool,
            norms: bool, contributions: bool, opset: int | None) -> dict[str, Any]:
    if checkpoint is not None and pretrained:
        raise click.UsageError("Use just one of --checkpoint or --pretrained.")
    if gradients and no_attentions:
        raise click.UsageError("Use just one of --gradients or --no-attentions.")
    if decompositions and (gradients or no_attentions):
        raise click.UsageError("Use just one of --decompositions, --gradients or --no-attentions.")
    if tail and (gradients or decompositions):
        raise click.UsageError("Use just one of --tail, --gradients or --decompositions (reciprocam needs no "
                               "gradients).")
    if norms and (decompositions or gradients or no_attentions or tail):
        raise click.UsageError("Use just one of --norms, --decompositions, --gradients, --no-attentions or --tail.")
    if contributions and (decompositions or gradients or no_attentions or tail):
        raise click.UsageError("Use just one of --contributions, --decompositions (which emits them too), "
                               "--gradients, --no-attentions or --tail.")
    return {"export": dict(checkpoint=checkpoint, pretrained=pretrained, img_size=img_size, heads=heads,
                           labels=labels, attentions=not no_attentions, gradients=gradients,
                           decompositions=decompositions, tail=tail, norms=norms,
                           contributions=contributions, opset=opset,
                           model_kwargs={"num_classes": num_classes} if num_classes else None,
                           random_weights_hint="pass --checkpoint FILE or --pretrained")}


# what ``export`` builds; the command gets ``export``: the keyword arguments of ``export_onnx``
export_options = options(
    click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Local weights: .safetensors, .pth/.pt (loaded with weights_only) or timm's .npz."),
    click.option("--pretrained", is_flag=True, help="Download timm's pretrained weights (needs a model hub)."),
    click.option("--img-size", type=click.IntRange(8, 4096), default=None, help="Override the input size (square)."),
    click.option("--heads", type=click.Choice(EXPORT_HEAD_FUSIONS), default="none", show_default=True,
                 help="Fuse attention heads inside the graph (H becomes 1), shrinking the output H times."),
    click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Class names: a .txt with one per line or a class-index .json "
                      "(default: ImageNet-1k names for 1000-class heads)."),
    click.option("--num-classes", type=click.IntRange(1, None), default=None, help="Override the head's class count."),
    click.option("--no-attentions", is_flag=True,
                 help="Export logits only (a plain-inference baseline for benchmarks)."),
    click.option("--gradients", is_flag=True,
                 help="Also emit attention_grads = d logit[target] / d attentions, and the last block's normed "
                      "tokens with their gradients (tokens, token_grads), with an int64 `target` input, for the "
                      "class-specific methods (chefer, grad_rollout, gradsam, product, gradcam)."),
    click.option("--decompositions", is_flag=True,
                 help="Also emit the small per-token Grams (mix_grams, mix_grams_ln) and the class token's "
                      "decomposition (class_contributions) for the forward-only methods attn-norm, globenc and "
                      "decompx (timm models)."),
    click.option("--tail", is_flag=True,
                 help="Also emit the tokens entering the last block (tail_input) and store the last block, final "
                      "norm and head as a second graph in the file's metadata, for the reciprocam method."),
    click.option("--norms", is_flag=True,
                 help="Also emit head_norms (per block and token the norm of each head's value-output vector and "
                      "of the block input) for the forward-only head-norm map; one extra product of N x D^2 / H "
                      "multiply-adds per block."),
    click.option("--contributions", is_flag=True,
                 help="Also emit the class token's decomposition (class_contributions: each token's part of every "
                      "logit through the last block) for the forward-only decompx map, without the Grams of "
                      "--decompositions; combines with --norms (timm models)."),
    click.option("--opset", type=click.IntRange(13, 30), default=None, help="ONNX opset (default: the exporter's)."),
    build=_export)


def _convert(**given: Any) -> dict[str, Any]:
    from attnmap.runtime.precision.convert import convert_options

    return {"convert": convert_options(**given)}


def precision_options(choices: tuple[str, ...], default: str, text: str) -> Callable:
    """``--precision`` and the conversion and fidelity-gate flags (export, quantize); the command
    gets ``convert``: the ConvertOptions, or None for fp32."""
    return options(
        click.option("--precision", type=click.Choice(choices), default=default, show_default=True, help=text),
        click.option("--calibration", default=None, metavar="SOURCE",
                     help="int8: static QDQ quantisation calibrated on these images (folder, glob, video); "
                          "without it, dynamic int8 (weights only), which measured faster and closer on ViTs."),
        click.option("--calibration-images", type=click.IntRange(1, 10000), default=32, show_default=True,
                     help="Calibration images read from --calibration at most."),
        click.option("--check", default=None, metavar="SOURCE",
                     help="Images for the fidelity gate (default: 64 synthetic images, plus the calibration images)."),
        click.option("--min-top1", type=click.FloatRange(0, 1), default=0.98, show_default=True,
                     help="Fidelity gate: lowest top-1 agreement with the fp32 file."),
        click.option("--min-rollout-corr", type=click.FloatRange(-1, 1), default=0.98, show_default=True,
                     help="Fidelity gate: lowest mean Pearson correlation of rollout maps with fp32's."),
        click.option("--attn-dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
                     help="fp16 files: dtype of the attentions output (fp16 halves the transfer off a GPU; "
                          "maps are computed in float32 either way)."),
        build=_convert)


# ---------------------------------------------------------------------------- explain and evaluate
def _engine(engine_name: str, address: str | None, actors: int | None, gpus_per_actor: float) -> dict[str, Any]:
    from attnmap.runtime.fronts.collection import EngineChoice

    return {"engine": EngineChoice(engine_name, address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                                   verbose=debug())}


_ENGINE_FLAGS = (
    click.option("--engine", "engine_name", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="local: this machine; ray: Ray Data, on a local instance or a cluster "
                      "(pip install 'attnmap[distributed]'). Still images only."),
    click.option("--address", default=None, metavar="ADDR",
                 help="Ray engine: 'auto' for the cluster this machine joined (`ray start`), or "
                      "ray://HOST:10001; default: a local Ray instance on this machine's cores."),
    click.option("--actors", type=click.IntRange(1, 4096), default=None,
                 help="Ray engine: model actors, each one onnxruntime session (default: one per CPU of "
                      "the cluster, or per --gpus-per-actor of its GPUs)."),
    click.option("--gpus-per-actor", type=click.FloatRange(0, 64), default=0.0, show_default=True,
                 help="Ray engine: GPUs each model actor takes (0: one CPU core each; 0.5 shares a GPU)."))
# the command gets ``engine``: an EngineChoice
engine_options = options(*_ENGINE_FLAGS, build=_engine)


def _evaluation(methods_: str, unit: str, baseline: str, sigma: float, steps: int, labels: str | None,
                masks_dir: str | None, boxes: str | None, synthetic: int | None, batch_size: int, fit: str,
                timing: bool = False, **engine_flags: Any) -> dict[str, Any]:
    from attnmap.runtime.evaluation import EvaluationPlan

    engine = _engine(**engine_flags)["engine"]
    return {"engine": engine, "plan": EvaluationPlan(
        methods=tuple(methods_.split(",")), baseline=baseline, sigma=sigma, steps=steps, unit=unit, fit=fit,
        batch_size=batch_size, labels=labels, masks=masks_dir, boxes=boxes, synthetic=synthetic, engine=engine.engine,
        timing=timing)}


# what ``evaluate`` scores and where; the command gets ``plan`` (an EvaluationPlan) and ``engine``
evaluation_options = options(
    click.option("--methods", "methods_", default="rollout,attention", show_default=True,
                 help="Comma-separated method specs to score, each a name or name:option=value:... "
                      "(rollout:discard_ratio=0.9); 'all' for every method the model can run. A random map "
                      "is always scored beside them."),
    click.option("--unit", type=click.Choice(["patch", "pixel"]), default="patch", show_default=True,
                 help="What is removed: the token grid's patches, or pixels ranked by the map resized to the input."),
    click.option("--baseline", type=click.Choice(["mean", "black", "blur"]), default="mean", show_default=True,
                 help="What a removed unit takes: the model's mean colour, black, or the blurred image."),
    click.option("--sigma", type=click.FloatRange(0, None, min_open=True), default=10.0, show_default=True,
                 help="Sigma of the blur baseline, in input pixels."),
    click.option("--steps", type=click.IntRange(1, 1000), default=16, show_default=True,
                 help="Deletion / insertion steps."),
    click.option("--labels", type=click.Path(dir_okay=False), default=None,
                 help="CSV of source,class (index or label): explain each image's listed class, not its top-1."),
    click.option("--masks", "masks_dir", type=click.Path(file_okay=False), default=None,
                 help="Folder of binary object masks named like the images (non-zero = object): localisation metrics."),
    click.option("--boxes", type=click.Path(dir_okay=False), default=None,
                 help="CSV of source,x0,y0,x1,y1 object boxes in image pixels: localisation metrics."),
    click.option("--synthetic", type=click.IntRange(1, 100000), default=None,
                 help="Also score N images of the shapes dataset, with their exact object masks."),
    click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True,
                 help="Perturbed inputs per model run."),
    click.option("--timing", is_flag=True, default=False,
                 help="Also time each method's explanation per image beside plain inference, interleaved on "
                      "this machine (median ms and x plain inference; with --out, cost.png). Local engine only."),
    fit_option(),
    *_ENGINE_FLAGS,
    build=_evaluation)


def _folder(out_dir: Path, save_maps: bool, tiles: str, video_format: str, overwrite: bool) -> dict[str, Any]:
    from attnmap.runtime.fronts.offline import FolderOutput

    return {"output": FolderOutput(out_dir, save_maps=save_maps, tiles=tiles, video_format=video_format,
                                   overwrite=overwrite)}


folder_options = options(
    click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                 default=Path("runs/explain"), show_default=True, help="Folder for overlays (and maps)."),
    click.option("--save-maps", is_flag=True, help="Also write an .npz per image with `grid` and `heatmap`."),
    click.option("--grid", "tiles", type=click.Choice(["none", "layers", "heads"]), default="none", show_default=True,
                 help="Also write a tiled image of raw attention for every layer, or every head of --layer."),
    click.option("--video-format", type=click.Choice(["mp4", "webm", "avi"]), default="mp4", show_default=True,
                 help="Container of annotated videos: mp4 (H.264 where this OpenCV has it, else MPEG-4 Part 2: "
                      "fast, not played by browsers), webm (VP8: plays in browsers, slower to encode), avi (MJPEG)."),
    click.option("--overwrite", is_flag=True,
                 help="Write into an --out folder that holds a run with other settings (model, method, options, "
                      "class, fit), replacing its files of the same name (without it such a run is refused)."),
    build=_folder)

throughput_options = options(
    click.option("--batch-size", type=click.IntRange(1, 256), default=None,
                 help="Images per inference batch (default: 4 on a CPU, 8 on CUDA)."),
    click.option("--workers", type=click.IntRange(1, 16), default=None,
                 help="Model runs at once, each on its own batch (default: 2 on a CPU with 2+ cores, each "
                      "on half of them, where there is more than one batch; else 1)."))


# ---------------------------------------------------------------------------- live and serve
def _stream_flags(hud: str) -> list[Callable]:
    return [click.option("--smooth", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                         help="Temporal smoothing: EMA weight of the previous heatmap (0 = off)."),
            click.option("--every", type=click.IntRange(1, None), default=1, show_default=True,
                         help="Explain every k-th frame and reuse the last heatmap in between."),
            click.option("--no-hud", is_flag=True, help=hud)]


def _live(show: bool, out: Path | None, smooth: float, every: int, no_hud: bool, max_frames: int | None,
          duration: float | None, no_pace: bool, snapshot_dir: Path) -> dict[str, Any]:
    if not show and out is None:
        raise click.UsageError("--no-show needs --out FILE.mp4 (otherwise nothing would be shown or saved).")
    from attnmap.runtime.fronts.live.loop import LiveConfig

    return {"config": LiveConfig(show=show, out=out, smooth=smooth, every=every, hud=not no_hud,
                                 max_frames=max_frames, duration=duration, pace=False if no_pace else None,
                                 snapshot_dir=snapshot_dir)}


live_options = options(
    click.option("--show/--no-show", default=True, show_default=True,
                 help="Show a window; --no-show with --out records the annotated stream headless."),
    click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Also write the annotated stream to this video file (e.g. live.mp4)."),
    *_stream_flags("Do not draw the fps, latency and stage timings (the HUD)."),
    click.option("--max-frames", type=click.IntRange(1, None), default=None, help="Stop after this many frames."),
    click.option("--duration", type=click.FloatRange(0, None, min_open=True), default=None,
                 help="Stop after this many seconds."),
    click.option("--no-pace", is_flag=True, help="Read a video file as fast as possible instead of at its fps."),
    click.option("--snapshot-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/snapshots"),
                 show_default=True, help="Where the s key saves snapshots."),
    build=_live)


def _serve(token: str | None, token_file: str | None, tls_cert: str | None, tls_key: str | None, smooth: float,
           every: int, no_hud: bool, no_loop: bool, max_upload_mb: float, max_pixels: int,
           cors_origins: tuple[str, ...], max_forward_passes: int, max_batch_mb: float, api_queue: int,
           upload_memory_mb: float, body_timeout: float, header_timeout: float,
           max_connections: int) -> dict[str, Any]:
    from attnmap.runtime.fronts.serve import require_extra

    require_extra()
    from attnmap.runtime.fronts.serve.app import ServerSettings
    from attnmap.runtime.fronts.serve.runner import TLSFiles
    from attnmap.runtime.fronts.serve.security import Limits
    from attnmap.runtime.fronts.serve.stream import StreamConfig

    limits = Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels)
    return {"config": StreamConfig(smooth=smooth, every=every, hud=not no_hud, loop_file=not no_loop),
            "settings": ServerSettings(token=token, cors_origins=tuple(cors_origins), limits=limits,
                                       budget=_budget(max_forward_passes, max_batch_mb), api_queue=api_queue,
                                       upload_memory=int(upload_memory_mb * 1024 * 1024),
                                       body_timeout=body_timeout, header_timeout=header_timeout,
                                       max_connections=max_connections),
            "launch": dict(token_file=token_file, tls=TLSFiles.from_options(tls_cert, tls_key),
                           token_in_argv=token is not None)}


serve_options = options(
    click.option("--token", default=None, metavar="TOKEN",
                 help="Bearer token for every path but /healthz. Prefer --token-file or $ATTNMAP_TOKEN: a token "
                      "on the command line is visible to every user in ps. Open the page once as /?token=TOKEN."),
    click.option("--token-file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                 help="Read the bearer token from FILE (one line; default: $ATTNMAP_TOKEN)."),
    click.option("--tls-cert", type=click.Path(dir_okay=False), default=None, metavar="PEM",
                 help="Serve HTTPS with this certificate (chain); needs --tls-key."),
    click.option("--tls-key", type=click.Path(dir_okay=False), default=None, metavar="PEM",
                 help="The unencrypted private key of --tls-cert."),
    *_stream_flags("Do not draw label, fps and stage timings on the stream."),
    click.option("--no-loop", is_flag=True, help="Play a video file once instead of in a loop."),
    click.option("--max-upload-mb", type=click.FloatRange(0, None, min_open=True), default=20.0, show_default=True,
                 help="Largest upload /v1/explain accepts."),
    click.option("--max-pixels", type=click.IntRange(1, None), default=40_000_000, show_default=True,
                 help="Largest width x height an uploaded image may declare (checked before decoding)."),
    click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
                 help="Allow browser pages from this origin to call the API (repeatable; default: CORS off)."),
    *_budget_flags(4000, 512.0, "one /v1/explain request"),
    click.option("--api-queue", type=click.IntRange(0, None), default=4, show_default=True,
                 help="Explain requests that may wait for the worker; past them a 429 with Retry-After."),
    click.option("--upload-memory-mb", type=click.FloatRange(0, None, min_open=True), default=256.0,
                 show_default=True, help="Upload bytes all explain requests may hold at once; past it a 429."),
    click.option("--body-timeout", type=click.FloatRange(0, None, min_open=True), default=30.0, show_default=True,
                 help="Seconds a client has to send a request body (408 past it)."),
    click.option("--header-timeout", type=click.FloatRange(0, None, min_open=True), default=10.0,
                 show_default=True, help="Seconds a connection has to send its request headers (closed past it)."),
    click.option("--max-connections", type=click.IntRange(1, None), default=512, show_default=True,
                 help="Open connections at most (lowered to fit ulimit -n); more are closed on accept."),
    build=_serve)  # the command gets ``config`` (StreamConfig), ``settings`` (ServerSettings), ``launch``


# ---------------------------------------------------------------------------- tune
tuned_option = click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "int8", "bf16"]), default=None,
    help="Which file of a tuned model to run: fp32 runs MODEL itself, the tuned precision its converted file "
         "(default: what `attnmap tune` chose, where MODEL has a MODEL.tuned.json; --provider, --threads and "
         "--batch-size given explicitly also win over it).")


def _csv(kind: Callable[[str], Any], text: str, what: str, choices: tuple | None = None) -> tuple:
    try:
        values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated {what}; got {text!r}") from exc
    bad = [v for v in values if choices is not None and v not in choices]
    if bad or not values:
        raise click.BadParameter(f"expected comma-separated {what}" + (f" among {', '.join(choices)}" if choices
                                                                         else "") + f"; got {text!r}")
    return values


def _tune(check: str, calibration: str | None, providers: str | None, precisions: str, threads_list: str | None,
          batch_sizes: str, method: str, rounds: int, warmup: int, min_top1: float,
          min_rollout_corr: float) -> dict[str, Any]:
    from attnmap.runtime.fronts.tune import TUNE_PRECISIONS, TUNE_PROVIDERS, TunePlan
    from attnmap.runtime.precision.fidelity import Thresholds

    def ints(text: str, what: str) -> tuple[int, ...]:
        values = _csv(int, text, what)
        if any(v < 1 for v in values):
            raise click.BadParameter(f"expected comma-separated {what} >= 1; got {text!r}")
        return values

    if "int8-static" in precisions and not calibration:
        raise click.BadParameter("int8-static needs calibration images: give --calibration SOURCE",
                                 param_hint="--precisions")
    return {"plan": TunePlan(
        check=check, providers=_csv(str, providers, "providers", TUNE_PROVIDERS) if providers else (),
        precisions=_csv(str, precisions, "precisions", TUNE_PRECISIONS),
        threads=ints(threads_list, "thread counts") if threads_list else (),
        batches=ints(batch_sizes, "batch sizes"), method=method, rounds=rounds, warmup=warmup,
        thresholds=Thresholds(min_top1=min_top1, min_rollout_corr=min_rollout_corr), calibration=calibration)}


# the command gets ``plan``: a TunePlan
tune_options = options(
    click.option("--check", required=True, metavar="SOURCE",
                 help="Photos like the model's own (folder, glob, video) for the fidelity gate."),
    click.option("--calibration", default=None, metavar="SOURCE",
                 help="Calibration images of static int8 (--precisions ...,int8-static); other photos than --check."),
    click.option("--providers", default=None, metavar="LIST",
                 help="Comma-separated providers to try (default: every one onnxruntime offers of cpu, openvino, "
                      "cuda, coreml)."),
    click.option("--precisions", default="fp32,fp16,int8,bf16", show_default=True, metavar="LIST",
                 help="Comma-separated precisions to try: fp32, fp16, int8 (dynamic), int8-static (needs "
                      "--calibration), bf16 (only where a provider here computes it; the table says why not elsewhere)."),
    click.option("--threads", "threads_list", default=None, metavar="LIST",
                 help="Comma-separated thread counts (default: 1 and the physical cores)."),
    click.option("--batch-sizes", default="1", show_default=True, metavar="LIST",
                 help="Comma-separated batch sizes."),
    click.option("--method", default="rollout", show_default=True, type=MethodChoice(list(METHODS)),
                 help="The method timed and gated (a one-pass method; its maps must correlate too)."),
    click.option("--rounds", type=click.IntRange(1, 10000), default=5, show_default=True,
                 help="Timed rounds, each running every set-up once beside plain fp32 inference."),
    click.option("--warmup", type=click.IntRange(0, 1000), default=1, show_default=True, help="Untimed rounds first."),
    click.option("--min-top1", type=click.FloatRange(0, 1), default=0.98, show_default=True,
                 help="Fidelity gate: lowest top-1 agreement with fp32 on the --check photos."),
    click.option("--min-rollout-corr", type=click.FloatRange(-1, 1), default=0.98, show_default=True,
                 help="Fidelity gate: lowest mean map correlation with fp32 (rollout's, and --method's)."),
    build=_tune)
