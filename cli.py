"""attnmap command line: a thin click front over ``runtime`` (and, lazily, ``export``).

Library errors are typed (``runtime.core.errors``); every command turns them into a one-line
click error. Results go to stdout, progress and messages to stderr.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import click

from attnmap.runtime import __version__
from attnmap.runtime.core.errors import AttnmapError
from attnmap.runtime.methods import EXPLAINERS
from attnmap.runtime.core.meta import HEAD_FUSIONS
from attnmap.runtime.model.session import PROVIDERS, throughput_plan

FITS = ("crop", "squash", "letterbox")


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


def handle_errors(fn: Callable) -> Callable:
    """Turn attnmap's typed errors into one-line click errors (exit code 1), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AttnmapError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None

    return wrapper


# ---------------------------------------------------------------------------- shared options
def model_option(fn: Callable) -> Callable:
    """``--model`` and ``--provider``."""
    fn = click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                      help="onnxruntime execution provider; 'cuda' fails clearly where it is unavailable.")(fn)
    fn = click.option("--model", "-m", "model", default=None, metavar="MODEL",
                      help="An .onnx file from `attnmap export`, or a shipped model name "
                           "(default: the shipped demo model, or $ATTNMAP_MODEL).")(fn)
    fn = click.option("--threads", type=click.IntRange(1, 256), default=None,
                      help="CPU intra-op threads (default: physical cores).")(fn)
    return fn


def _method_option_specs() -> dict[str, dict[str, Any]]:
    """Every option any method takes, with a type and choices, built from EXPLAINERS.

    The type is the default's, or for a None default the function's annotation
    (``head: int | None = None`` is an int option).
    """
    import inspect

    specs: dict[str, dict[str, Any]] = {}
    for method in EXPLAINERS.values():
        params = inspect.signature(method.fn).parameters
        for name, default in method.options.items():
            spec = specs.setdefault(name, {"default": default, "choices": None, "methods": [], "type": None})
            spec["methods"].append(method.name)
            if default is not None and spec["default"] is None:
                spec["default"] = default
            if name in method.choices:
                spec["choices"] = tuple(method.choices[name])
            annotation = str(params[name].annotation) if name in params else ""
            for kind in (bool, int, float, str):
                if isinstance(default, kind) or re.search(rf"\b{kind.__name__}\b", annotation):
                    spec["type"] = spec["type"] or kind
                    break
    return specs


METHOD_OPTIONS = _method_option_specs()


def method_options(fn: Callable) -> Callable:
    """``--method`` plus one flag per method option (derived from EXPLAINERS, never listed twice)."""
    for name, spec in sorted(METHOD_OPTIONS.items(), reverse=True):
        flag = "--" + name.replace("_", "-")
        used_by = ", ".join(spec["methods"])
        default = spec["default"]
        if spec["type"] is bool:
            decl = f"{flag}/--no-{name.replace('_', '-')}"
            fn = click.option(decl, name, default=None, help=f"[{used_by}] default: {default}.")(fn)
            continue
        if spec["choices"]:
            ptype: Any = click.Choice([str(c) for c in spec["choices"]])
        else:
            ptype = spec["type"] or str
        fn = click.option(flag, name, type=ptype, default=None,
                          help=f"[{used_by}] default: {default}.")(fn)
    fn = click.option("--method", default="rollout", show_default=True, type=click.Choice(list(EXPLAINERS)),
                      help="Explanation method (`attnmap methods` describes each one).")(fn)
    return fn


def pop_method_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the method flags from a command's kwargs; return those the user set."""
    given = {}
    for name in METHOD_OPTIONS:
        value = kwargs.pop(name, None)
        if value is not None:
            given[name] = value
    return given


def overlay_options(fn: Callable | None = None, *, fit: str = "crop", label: bool = True) -> Callable:
    """How frames enter the model (--fit) and how overlays look: colormap, alpha, blur, mode, label."""
    if fn is None:
        return functools.partial(overlay_options, fit=fit, label=label)
    if label:
        fn = click.option("--no-label", is_flag=True, help="Do not draw the predicted label on overlays.")(fn)
    fn = click.option("--mode", type=click.Choice(["blend", "mask"]), default="blend", show_default=True,
                      help="blend: colour map over the image; mask: image multiplied by the map.")(fn)
    fn = click.option("--blur", type=click.FloatRange(0, None), default=0.0, show_default=True,
                      help="Gaussian smoothing of the heatmap (sigma as a fraction of the shorter side).")(fn)
    fn = click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                      help="Weight of the colour map in blend mode.")(fn)
    fn = click.option("--colormap", default="jet", show_default=True,
                      help="Any OpenCV colormap by name (jet, inferno, viridis, turbo, ...).")(fn)
    fn = click.option("--fit", type=click.Choice(FITS), default=fit, show_default=True,
                      help="crop: the model's eval transform; squash: whole frame resized; "
                           "letterbox: whole frame padded.")(fn)
    return fn


# ---------------------------------------------------------------------------- group
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="attnmap")
def main() -> None:
    """attnmap: see what a Vision Transformer looks at.

    Export a timm ViT to a self-describing ONNX file with attention outputs, then explain images,
    videos and camera frames with onnxruntime alone.
    """


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
              help="Also emit attention_grads = d logit[target] / d attentions, with an int64 `target` input, "
                   "for the class-specific methods (chefer, grad_rollout, gradsam, product).")
@click.option("--opset", type=click.IntRange(13, 30), default=None, help="ONNX opset (default: the exporter's).")
@handle_errors
def export(model_name: str, out: Path, checkpoint: Path | None, pretrained: bool, img_size: int | None,
           heads: str, labels: Path | None, num_classes: int | None, no_attentions: bool, gradients: bool,
           opset: int | None) -> None:
    """Export a timm ViT-family model to ONNX with attention outputs and attnmap metadata.

    MODEL_NAME is a timm model name, e.g. deit_tiny_patch16_224. The export is checked against
    torch (parity gate) before the file is written; its path is printed on stdout.
    """
    if checkpoint is not None and pretrained:
        raise click.UsageError("Use just one of --checkpoint or --pretrained.")
    if gradients and no_attentions:
        raise click.UsageError("Use just one of --gradients or --no-attentions.")
    try:
        from attnmap.export.to_onnx import export_onnx
    except ImportError as exc:
        raise click.ClickException(
            f"`attnmap export` needs the export extra (torch and timm): pip install -e '.[export]' ({exc})") from None
    report = export_onnx(model_name, out, checkpoint=checkpoint, pretrained=pretrained, img_size=img_size,
                         heads=heads, labels=labels, attentions=not no_attentions, gradients=gradients, opset=opset,
                         model_kwargs={"num_classes": num_classes} if num_classes else None, log=_err)
    click.echo(str(report.path))  # the export's own log (stderr) has the parity figures and size


# ---------------------------------------------------------------------------- info
@main.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def info(model: str | None, as_json: bool) -> None:
    """Show a model's metadata, inputs and outputs, and the available providers.

    MODEL is an .onnx file or a shipped model name (default: the shipped default).
    """
    import onnxruntime as ort

    from attnmap.runtime.model.registry import resolve_model
    from attnmap.runtime.model.session import OnnxModel

    m = OnnxModel(resolve_model(model), provider="cpu")
    io = {
        "inputs": [{"name": i.name, "shape": i.shape, "type": i.type} for i in m.session.get_inputs()],
        "outputs": m.describe_outputs(),
    }
    meta = m.meta
    if as_json:
        click.echo(json.dumps({"path": str(m.path), "size_bytes": m.path.stat().st_size,
                               "meta": json.loads(meta.to_json()), **io,
                               "available_providers": ort.get_available_providers()}))
        return
    labels = ", ".join(meta.label_names[:5]) + (", ..." if len(meta.label_names) > 5 else "")
    rows = [
        ("file", f"{m.path} ({m.path.stat().st_size / 1e6:.1f} MB)"),
        ("model", meta.model_name),
        ("input", f"{meta.input_size[0]} x {meta.input_size[1]} x {meta.input_size[2]}, mean {_fmt(meta.mean)}, "
                  f"std {_fmt(meta.std)}"),
        ("transform", f"{meta.interpolation} resize, crop_pct {meta.crop_pct:g}, crop_mode {meta.crop_mode}"),
        ("tokens", f"{meta.num_prefix_tokens} prefix ({', '.join(meta.prefix_tokens) or 'none'}) + "
                   f"{meta.grid_size[0]} x {meta.grid_size[1]} patches of {meta.patch_size[0]} x "
                   f"{meta.patch_size[1]} px = {meta.num_tokens}"),
        ("pooling", "class token" if meta.pooling == "token" else "average of patch tokens"),
        ("attention", f"{meta.num_layers} layers x {meta.num_heads} heads"
                      + (f", heads fused in graph ({meta.head_fusion})" if meta.head_fusion != "none" else "")),
        ("gradients", "yes (class-specific methods available)" if meta.has_gradients
         else "no (export with --gradients for class-specific methods)"),
        ("classes", f"{meta.num_classes}" + (f": {labels}" if labels else "")),
    ]
    rows += [(f"input {i['name']}", f"{i['type']} {i['shape']}") for i in io["inputs"]]
    rows += [(f"output {o['name']}", f"{o['type']} {o['shape']}") for o in io["outputs"]]
    rows.append(("exporter", ", ".join(f"{k} {v}" for k, v in meta.exporter.items()) or "unknown"))
    rows.append(("providers", ", ".join(ort.get_available_providers())))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


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
@click.option("--batch-size", type=click.IntRange(1, 256), default=None,
              help="Images per inference batch (default: 4 on a CPU, 8 on CUDA).")
@click.option("--workers", type=click.IntRange(1, 16), default=None,
              help="Model runs at once, each on its own batch (default: 2 on a CPU with 2+ cores, each "
                   "on half of them, where there is more than one batch; else 1).")
@click.option("--class", "target", default=None, metavar="CLASS",
              help="For class-specific methods: a class index, a label name, or topk:N for the top N "
                   "classes' maps side by side (default: the predicted class).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per input: {source, topk: [{index, label, prob}], overlay}.")
@handle_errors
def explain(sources: tuple[str, ...], model: str | None, provider: str, threads: int | None, method: str,
            fit: str, colormap: str, alpha: float, blur: float, mode: str, no_label: bool, out_dir: Path,
            topk: int, save_maps: bool, tiles: str, batch_size: int | None, workers: int | None, target: str | None,
            as_json: bool, **kwargs: Any) -> None:
    """Explain images, folders, globs and videos; write overlays to --out.

    SOURCE is an image file, a directory, a glob ("photos/*.jpg"), a video file or an image
    sequence (img_%04d.png). Bad files are reported and skipped; the exit code is then 1.
    """
    from attnmap.runtime import Explainer
    from attnmap.runtime.draw.overlay import HeatmapOverlay, colormap_id
    from attnmap.runtime.frames.sources import expand_sources

    from attnmap.runtime.engine.explainer import resolve_class
    from attnmap.runtime.fronts.offline import explain_classes, explain_images

    options = pop_method_options(kwargs)
    colormap_id(colormap)  # fail on a bad colormap before any work
    top_n = _parse_topk(target)
    if target is not None and not EXPLAINERS[method].needs_gradients:
        raise click.BadParameter(
            f"--class needs a class-specific method ({', '.join(n for n, m in EXPLAINERS.items() if m.needs_gradients)});"
            f" {method!r} is class-agnostic", param_hint="--class")
    refs = expand_sources(sources)
    live = [r.spec for r in refs if r.is_live]
    if live:
        raise click.BadParameter(f"{live[0]!r} is a camera or stream; use `attnmap live {live[0]}`",
                                 param_hint="SOURCE")
    images = [r for r in refs if r.kind == "image"]
    others = [r for r in refs if r.kind != "image"]
    plan = throughput_plan(provider, threads, workers, batch_size)
    batch_size = plan.batch_size
    if target is None and (others or len(images) > batch_size):
        threads, workers = plan.threads, plan.workers
    workers = workers or 1
    explainer = Explainer(model, provider=provider, threads=threads)
    HeatmapOverlay(colormap=colormap, alpha=alpha, blur=blur, mode=mode)  # validate style up front
    writer = _writer(out_dir, method, as_json=as_json, save_maps=save_maps, topk=topk,
                     style=dict(colormap=colormap, alpha=alpha, blur=blur, mode=mode, label=not no_label),
                     tiles=tiles, options=options)
    if target is not None:
        if others:
            raise click.BadParameter(f"--class works on images; {others[0].spec!r} is a {others[0].kind}",
                                     param_hint="--class")
        if not explainer.meta.has_gradients:
            raise click.ClickException(f"{explainer.path.name} has no attention gradients; re-export it with "
                                       "`attnmap export ... --gradients` for --class")
        fixed = None if top_n else resolve_class(explainer.meta, target)
        with _Progress(len(images), "images") as bar:
            explain_classes(explainer, images, writer, method, options, fit, fixed, top_n, bar.update)
    else:
        with _Progress(len(images), "images") as bar:
            explain_images(explainer, images, writer, method, options, fit, batch_size, topk, bar.update,
                           workers=workers)
    for ref in others:
        _explain_video(explainer, ref, writer, method, options, fit, batch_size, workers)
    if writer.failures:
        raise click.ClickException(f"{writer.failures} of {writer.failures + writer.done} inputs failed (see above)")
    _err(f"{writer.done} overlay{'s' if writer.done != 1 else ''} written to {out_dir}")


def _parse_topk(target: str | None) -> int | None:
    """N of ``topk:N``, else None."""
    if target is None or not target.lower().startswith("topk:"):
        return None
    try:
        n = int(target.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter(f"expected topk:N with N >= 1; got {target!r}", param_hint="--class")
    return n


def _stderr_is_terminal() -> bool:
    """Progress goes to stderr only where a person watches it, never into a log file."""
    return sys.stderr.isatty()


class _Progress:
    """A progress line on stderr for long runs (only where stderr is a terminal)."""

    def __init__(self, total: int, unit: str, min_total: int = 10):
        self.bar = None
        if total >= min_total and _stderr_is_terminal():
            self.bar = click.progressbar(length=total, label=f"explaining {total} {unit}", file=sys.stderr)
            self.bar.__enter__()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _writer(out_dir: Path, method: str, *, as_json: bool, **kwargs: Any):
    """A ResultWriter that prints each record to stdout (a line, or JSON) and failures to stderr."""
    from attnmap.runtime.fronts.offline import ResultWriter

    def emit(record: dict[str, Any], line: str) -> None:
        _out(json.dumps(record) if as_json else line)

    return ResultWriter(out_dir, method, emit=emit, on_fail=_err, **kwargs)


def _explain_video(explainer, ref, writer, method: str, options: dict[str, Any], fit: str, batch_size: int,
                   workers: int = 1) -> None:
    """``explain_video_into`` with a progress bar and frames/s on stderr where it is a terminal."""
    from attnmap.runtime.fronts.offline import explain_video_into

    show = _stderr_is_terminal()

    def progress(p) -> None:
        if show:
            _status.show(f"{ref.spec}: {p.bar()}")

    try:
        explain_video_into(explainer, ref, writer, method, options, fit, batch_size, progress, workers=workers)
    finally:
        _status.end()


# ---------------------------------------------------------------------------- live
def _live_epilog() -> str:
    from attnmap.runtime.fronts.live.state import KEY_HELP

    return "\b\nKeys in the window:\n  " + KEY_HELP


@main.command(epilog=_live_epilog())
@click.argument("source", required=False, default="0")
@model_option
@method_options
@overlay_options(fit="squash", label=False)
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
    from attnmap.runtime import Explainer
    from attnmap.runtime.fronts.live.loop import run_live

    if not show and out is None:
        raise click.UsageError("--no-show needs --out FILE.mp4 (otherwise nothing would be shown or saved).")
    options = pop_method_options(kwargs)
    explainer = Explainer(model, provider=provider, threads=threads)
    stats = run_live(explainer, source, method=method, options=options, show=show, out=out, fit=fit,
                     smooth=smooth, every=every, colormap=colormap, alpha=alpha, blur=blur, mode=mode,
                     hud=not no_hud, max_frames=max_frames, duration=duration, pace=False if no_pace else None,
                     snapshot_dir=snapshot_dir)
    summary = stats.to_dict()
    if as_json:
        click.echo(json.dumps(summary))
        return
    lat = summary["latency_ms"]
    click.echo(f"{stats.source}: {stats.frames_processed} frames shown at {summary['fps']:.1f} frames/s, "
               f"{stats.frames_dropped} dropped, capture-to-display latency median {lat.get('median', 0):.1f} ms"
               + (f"; wrote {stats.out}" if stats.out else ""))


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
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@handle_errors
def bench(source: str | None, source_opt: str | None, model: str | None, provider: str, threads: int | None,
          method: str, fit: str, runs: int, warmup: int, batch_size: int, targets_video: Path | None, as_json: bool,
          **kwargs: Any) -> None:
    """Time each stage (decode, preprocess, inference, explanation, overlay, encode).

    Prints median and p90 per stage and the ratio of (inference with attentions + explanation)
    to plain inference of the same model. SOURCE (or --source) is any source: image, folder,
    glob, video, camera, stream or image sequence (default: a synthetic 640x480 frame).
    """
    if source is not None and source_opt is not None and source != source_opt:
        raise click.UsageError(f"two sources given: {source!r} and --source {source_opt!r}; give one")
    source = source if source is not None else source_opt
    from attnmap.runtime import Explainer
    from attnmap.runtime.fronts.bench import format_bench, format_targets, measure_targets, run_bench, throughput_explainer

    options = pop_method_options(kwargs)
    explainer = Explainer(model, provider=provider, threads=threads)
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
    import numpy as np

    from attnmap.runtime import Explainer
    from attnmap.runtime.core.files import write_image
    from attnmap.runtime.image.preprocess import read_image
    from attnmap.runtime.frames.sources import expand_sources
    from attnmap.runtime.fronts.offline import explain_images
    from attnmap.runtime.frames.synth import write_demo_inputs

    options = pop_method_options(kwargs)
    explainer = Explainer(model, provider=provider, threads=threads)
    images, video = write_demo_inputs(out_dir / "inputs", seed=seed)
    overlays = out_dir / "overlays"
    writer = _writer(overlays, method, as_json=False, save_maps=False, topk=1,
                     style=dict(colormap="jet", alpha=0.5, blur=0.0, mode="blend", label=True),
                     tiles="none", options=options)
    refs = expand_sources([str(p) for p in images] + [str(video)])
    explain_images(explainer, [r for r in refs if r.kind == "image"], writer, method, options, "crop", 8, 1)
    for ref in (r for r in refs if r.kind != "image"):
        _explain_video(explainer, ref, writer, method, options, "squash", 8)
    if writer.failures:
        raise click.ClickException(f"{writer.failures} demo inputs failed (see above)")
    pngs = sorted(overlays.glob("*.png"))
    tiles = [read_image(p) for p in pngs]
    rows = [np.hstack(tiles[i:i + 3] + [np.zeros_like(tiles[0])] * (3 - len(tiles[i:i + 3])))
            for i in range(0, len(tiles), 3)]
    sheet = write_image(out_dir / "overview.png", np.vstack(rows))
    click.echo(f"model: {explainer.path} ({explainer.meta.model_name}, {explainer.meta.num_classes} classes)")
    click.echo(f"overlays: {overlays}/ ({len(pngs)} images and {video.stem}_{method}.mp4)")
    click.echo(f"overview: {sheet}")


# ---------------------------------------------------------------------------- methods
@main.command()
def methods() -> None:
    """List the explanation methods, their options and defaults."""
    for m in EXPLAINERS.values():
        kind = "class-specific, needs an export with --gradients" if m.needs_gradients else "class-agnostic"
        click.echo(f"{m.name} ({kind})\n  {m.summary}")
        for name, default in m.options.items():
            choices = f" (one of {', '.join(map(str, m.choices[name]))})" if name in m.choices else ""
            click.echo(f"  --{name.replace('_', '-')}: default {default}{choices}")


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
