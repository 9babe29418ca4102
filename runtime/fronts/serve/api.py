"""The HTTP API's work, apart from the web framework: read an upload within limits, parse the
explain fields, explain, and shape the JSON answers.

Everything here raises :class:`HTTPProblem` (a status code and a one-line message) or the
library's typed errors; ``app.py`` turns both into JSON error bodies. ``POST /v1/explain``
runs the frame engine's batch step (``FrameEngine.explain_batch``) on the decoded upload, the
step :meth:`Explainer.explain` runs, and returns exactly what that returns: the same
top-k probabilities, the same token-grid map (float32 values written as JSON numbers, which
round-trip exactly), the same heatmap and overlay (as base64 PNG on request).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import cv2
import numpy as np

from attnmap.runtime.core.errors import EncodeError, ImageError, OptionError, suggest
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import FrameEngine, Job
from attnmap.runtime.engine.explainer import resolve_class
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.fronts.serve.security import Limits
from attnmap.runtime.image.decode import decode_image
from attnmap.runtime.image.header import HeaderError, read_header
from attnmap.runtime.image.preprocess import FITS
from attnmap.runtime.methods import METHODS, check_method_use, resolve_method, runs_on
from attnmap.runtime.methods.cost import Budget, check_budget
from attnmap.runtime.model.info import describe_model

IMAGE_FIELD = "image"
PNG_KINDS = ("heatmap", "overlay")
MAX_TARGET_CHARS = 200  # a label name or an index; longer is neither (and int() refuses 4,300+ digits)
# Longest text field: every field is a name, a number or a short list. A longer one is refused
# before any other check, so no check (nor "did you mean") runs on megabytes, and no message
# echoes them back.
MAX_FIELD_BYTES = 8192
MAX_FIELDS = 32
_PLAIN_FIELDS = ("method", "fit", "topk", "target", "png", "colormap", "alpha")


class HTTPProblem(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message`` naming the input."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = int(status), message, dict(headers or {})


@dataclass(frozen=True)
class ExplainRequest:
    """The checked fields of ``POST /v1/explain``.

    Attributes:
        method: explanation method (default: the server's).
        fit: crop, squash or letterbox.
        topk: predictions returned.
        target: class index to explain (class-specific methods), or None for the prediction.
        options: the method's options, converted to their types.
        png: which images to return as base64 PNG: a subset of ``heatmap``, ``overlay``.
        style: how the overlay PNG is drawn.
        job: the engine's :class:`~attnmap.runtime.engine.job.Job` of these fields, checked
            against the model once, when the fields were parsed.
    """

    method: str = "rollout"
    fit: str = "crop"
    topk: int = 5
    target: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    png: tuple[str, ...] = ()
    style: OverlayStyle = field(default_factory=OverlayStyle)
    job: Job | None = None


# --------------------------------------------------------------------------- limits
def check_content_length(headers: Mapping[str, str], limits: Limits) -> None:
    """Refuse a declared body over the limit before reading any of it.

    Raises:
        HTTPProblem: 400 for a malformed Content-Length, 413 for one over ``max_upload_bytes``.
    """
    raw = headers.get("content-length")
    if raw is None:
        return
    try:
        length = int(raw)
    except ValueError:
        raise HTTPProblem(400, f"Content-Length must be a byte count; got {raw!r}") from None
    if length < 0:
        raise HTTPProblem(400, f"Content-Length must be a byte count; got {raw!r}")
    if length > limits.max_upload_bytes:
        raise HTTPProblem(413, f"the upload is {length:,} bytes, over the limit of {limits.max_upload_bytes:,} "
                               "(the server's max_upload_bytes)")


async def read_limited(chunks, limits: Limits, hold=None) -> bytes:
    """Collect a streamed body, stopping as soon as it passes the limit.

    Args:
        chunks: the body as an async iterator of bytes (Starlette's ``request.stream()``).
        limits: the limits.
        hold: called with each chunk's size before it is kept (it may raise to refuse it).

    Raises:
        HTTPProblem: 413 once more than ``max_upload_bytes`` arrived (whatever the headers said).
    """
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limits.max_upload_bytes:
            raise HTTPProblem(413, f"the upload is over the limit of {limits.max_upload_bytes:,} bytes "
                                   "(the server's max_upload_bytes)")
        if hold is not None:
            hold(len(chunk))
        parts.append(chunk)
    return b"".join(parts)


def decode_upload(data: bytes, name: str, limits: Limits) -> np.ndarray:
    """Decode an uploaded image after checking its header: format and declared pixel count.

    Returns:
        (H, W, 3) uint8 BGR.

    Raises:
        HTTPProblem: 400 empty, not an image or corrupt (truncated data included); 413 a header
            declaring more than ``max_pixels`` pixels (a decompression bomb is refused here,
            before any decoder allocates it).
    """
    if not data:
        raise HTTPProblem(400, f"field {IMAGE_FIELD!r} ({name}) is empty; expected an image file")
    try:
        header = read_header(data)
    except HeaderError as exc:
        raise HTTPProblem(400, f"field {IMAGE_FIELD!r} ({name}) is not an image this server reads: {exc}") from exc
    if header.pixels > limits.max_pixels:
        raise HTTPProblem(413, f"field {IMAGE_FIELD!r} ({name}): its {header.format} header declares "
                               f"{header.width} x {header.height} = {header.pixels:,} pixels, over the limit of "
                               f"{limits.max_pixels:,} (the server's max_pixels)")
    try:
        return decode_image(np.frombuffer(data, np.uint8), name, max_pixels=limits.max_pixels)
    except ImageError as exc:  # truncated or corrupt past the header
        raise HTTPProblem(400, str(exc).splitlines()[0]) from exc


# --------------------------------------------------------------------------- fields
def parse_fields(fields: Mapping[str, str], meta, default_method: str = "rollout", budget: Budget | None = None,
                 limit_names: Mapping[str, str] | None = None) -> ExplainRequest:
    """Check the text fields of an explain request against the model and the method's specs.

    Args:
        fields: field name -> text (form fields or query parameters), the image excluded.
        budget: the most work the request may ask for (the job's budget; default the library's).
        limit_names: how a refusal names the budget's limits (the server's flags).
        meta: the model's ModelMeta.
        default_method: the method when none is given.

    Raises:
        OptionError: an unknown field (close names suggested), a method this model cannot run,
            or a value out of its range or choices.
    """
    check_field_sizes(fields)
    method = resolve_method(fields.get("method", default_method), meta)
    if method not in METHODS:
        raise OptionError(f"method must be one of {', '.join(METHODS)}; got {method!r}." + suggest(method, METHODS))
    spec = METHODS[method].options
    for name in fields:
        if name not in _PLAIN_FIELDS and name not in spec:
            known = [IMAGE_FIELD, *_PLAIN_FIELDS, *spec]
            raise OptionError(f"unknown field {name!r} for method {method!r}; fields: {', '.join(known)}."
                              + suggest(name, known))
    fit = fields.get("fit", "crop")
    if fit not in FITS:
        raise OptionError(f"fit must be one of {', '.join(FITS)}; got {fit!r}." + suggest(fit, FITS))
    topk = _int_field(fields, "topk", 5, 1, meta.num_classes)
    target = None
    if fields.get("target", "").strip():
        text = fields["target"].strip()
        if len(text) > MAX_TARGET_CHARS:
            raise OptionError(f"target must be a class index or label name of at most {MAX_TARGET_CHARS} "
                              f"characters; got {len(text):,} characters")
        # ASCII digits only: str.isdigit() is also true for "²", which int() refuses.
        target = resolve_class(meta, int(text) if re.fullmatch(r"-?[0-9]+", text) else text)
    check_method_use(method, meta, class_given=target is not None)
    owner = f"method {method!r}"
    options = {}
    for name, text in fields.items():
        if name in spec:
            size = None if spec[name].axis is None else \
                meta.num_layers if spec[name].axis == "layers" else meta.output_heads
            options[name] = spec[name].parse(text, owner=owner, size=size)
    png = tuple(p.strip() for p in fields.get("png", "").split(",") if p.strip())
    for p in png:
        if p not in PNG_KINDS:
            raise OptionError(f"png must list some of {', '.join(PNG_KINDS)} (comma-separated); got {p!r}."
                              + suggest(p, PNG_KINDS))
    style_changes: dict[str, Any] = {}
    if "colormap" in fields:
        style_changes["colormap"] = fields["colormap"]
    if "alpha" in fields:
        try:
            style_changes["alpha"] = float(fields["alpha"])
        except ValueError:
            raise OptionError(f"alpha must be a number in [0, 1]; got {fields['alpha']!r}") from None
    if budget is not None:  # first, so that a refusal names the server's limits
        check_budget(method, options, meta, budget, limit_names=limit_names)
    job = Job(method=method, options=options, fit=fit, topk=topk, target=target, budget=budget).checked(meta)
    return ExplainRequest(method, fit, topk, target, job.options, tuple(dict.fromkeys(png)),
                          OverlayStyle(**style_changes), job)


def check_field_sizes(fields: Mapping[str, str]) -> None:
    """Refuse more than :data:`MAX_FIELDS` fields, or a name or value over :data:`MAX_FIELD_BYTES`.

    Raises:
        HTTPProblem: 413, naming the field (its first characters) and its length, not its value.
    """
    if len(fields) > MAX_FIELDS:
        raise HTTPProblem(413, f"the request has {len(fields):,} fields; at most {MAX_FIELDS} are read")
    for name, value in fields.items():
        size = max(len(name), len(value) if isinstance(value, str) else 0)
        if size > MAX_FIELD_BYTES:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise HTTPProblem(413, f"field {shown!r} is {size:,} characters long; text fields and their names are "
                                   f"at most {MAX_FIELD_BYTES:,}")


def _int_field(fields: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = fields.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise OptionError(f"{name} must be an integer in [{low}, {high}]; got {text!r}") from None
    if not low <= value <= high:
        raise OptionError(f"{name} must be an integer in [{low}, {high}]; got {value}")
    return value


# --------------------------------------------------------------------------- answers
def answer_json(explainer, data: bytes, name: str, req: ExplainRequest, limits: Limits) -> bytes:
    """Decode the upload, explain it and encode the answer: the whole of a request's heavy work,
    for a worker thread (the event loop only moves bytes).

    Returns:
        The JSON answer of :func:`explain_upload`, encoded as Starlette's ``JSONResponse`` does.
    """
    img = decode_upload(data, name, limits)
    answer = explain_upload(explainer, img, req)
    return json.dumps(answer, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def explain_upload(explainer, img_bgr: np.ndarray, req: ExplainRequest) -> dict[str, Any]:
    """Explain one decoded image with the engine's batch step and shape the JSON answer.

    Returns:
        ``{"method", "fit", "options", "image": {"width", "height"}, "topk": [{index, label,
        prob}], "predicted", "explained_class" (class-specific methods, else null), "grid":
        {"shape": [gh, gw], "values": rows of float32 in [0, 1]}}`` plus ``heatmap_png``
        (8-bit gray, round(255 * heatmap)) and ``overlay_png`` (base64) where asked.
    """
    job = req.job if req.job is not None else Job(req.method, req.options, req.fit, req.topk, req.target)
    item = FrameEngine(explainer, job).explain_batch([Frame(0, img_bgr, "upload", 0.0)], draw=False)[0]
    if item.error is not None:
        raise item.error
    ex = item.explanation
    topk = [{"index": t.index, "label": t.label, "prob": t.prob} for t in ex.topk]
    answer: dict[str, Any] = {
        "method": ex.method, "fit": req.fit, "options": req.options,
        "image": {"width": int(img_bgr.shape[1]), "height": int(img_bgr.shape[0])},
        "topk": topk, "predicted": topk[0],
        "explained_class": None if ex.target is None else {"index": ex.target, "label": ex.label_of_target},
        "grid": {"shape": list(ex.grid.shape), "values": ex.grid.astype(np.float32).tolist()},
    }
    if "heatmap" in req.png:
        answer["heatmap_png"] = _png(np.rint(ex.heatmap * 255.0).astype(np.uint8))
    if "overlay" in req.png:
        answer["overlay_png"] = _png(ex.overlay(req.style))
    return answer


def _png(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise EncodeError(f"OpenCV could not PNG-encode a {img.shape} image")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def model_document(explainer) -> dict[str, Any]:
    """``GET /v1/model``: the metadata, inputs and outputs (the file's name, not its server path)."""
    doc = describe_model(explainer.model)
    doc["path"] = explainer.path.name
    return doc


def methods_document(meta) -> dict[str, Any]:
    """``GET /v1/methods``: every method, whether this model runs it, and its option specs."""
    out = []
    for name, m in METHODS.items():
        opts = {o: {"kind": s.kind.__name__, "default": s.default, "help": s.help, "allowed": s.describe(),
                    "choices": list(s.choices), "low": s.low, "high": s.high, "axis": s.axis}
                for o, s in m.options.items()}
        out.append({"name": name, "kind": m.kind.name, "summary": m.summary, "class_specific": m.class_specific,
                     "runs_on_model": runs_on(name, meta), "options": opts})
    return {"methods": out}
