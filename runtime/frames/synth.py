"""Procedural "shapes" dataset: one class shape per image on a cluttered, textured background.

This is the data the shipped default model (``models/``) was trained on, and what ``attnmap
demo`` draws its inputs from, so it lives in the runtime (NumPy + OpenCV only). Every image
holds exactly ONE object of one of :data:`CLASSES`, drawn last (never occluded), at a random
position, scale, rotation, aspect jitter and colour. Behind it: a mix of gradients, stripes,
checkers and smooth colour noise, random thin lines, and distractors that are *not* class
shapes (long bars, elongated ellipses, open arcs, zigzags, dot clusters), so that the label is
never ambiguous while "the most colourful blob" is not a shortcut to the answer. Pixel noise is
added over everything, object included.

The generator is seeded and unlimited: :func:`make_batch` with the same seed gives the same
arrays. Change :data:`DATASET_VERSION` whenever the images a seed yields change.

Boxes are ``(x0, y0, x1, y1)`` in pixels, half-open like slices: the object's pixels satisfy
``x0 <= x < x1`` and ``y0 <= y < y1``; the box is the tight box of the mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from attnmap.runtime.core.errors import SourceError
from attnmap.runtime.core.files import atomic_path, write_image

# A heart was tried as an eighth class and dropped: at 20-30 px under noise it reads as a
# rounded triangle or square, and it cost more accuracy than every other class together.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "crescent")
DATASET_VERSION = "shapes-v1"

# Object radius (centre to farthest vertex) as a fraction of the image side. Objects below
# ~15 % were where a small ViT made most of its mistakes; 16 % keeps them >= 20 px across at 96 px.
_RADIUS_RANGE = (0.16, 0.26)
# Sub-pixel precision of cv2 polygon drawing: coordinates are multiplied by 2**_SHIFT.
_SHIFT = 4


@dataclass
class Sample:
    """One generated image with its ground truth.

    Attributes:
        image_bgr: (H, W, 3) uint8 BGR image.
        label: index into :data:`CLASSES`.
        mask: (H, W) bool, True on the object's pixels.
        box: ``(x0, y0, x1, y1)`` int pixels, half-open, the tight box of ``mask``.
    """

    image_bgr: np.ndarray
    label: int
    mask: np.ndarray
    box: tuple[int, int, int, int]


# ----------------------------------------------------------------------------- shape outlines
def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * (2 * np.pi / n)
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius


def _star() -> np.ndarray:
    pts = _regular(10, 1.0, -np.pi / 2)
    pts[1::2] *= 0.45
    return pts


def _cross() -> np.ndarray:
    w = 0.32  # half-width of an arm: thick enough to survive noise at the smallest scale
    half = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1),
            (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]
    return np.asarray(half, dtype=np.float64)


_CIRCLE = _regular(64, 0.9)
# Each class is a list of (unit-scale polygon, fill value) layers painted in order; a 0 layer cuts
# a hole (ring) or a bite (crescent) out of the layers below it.
_LAYERS: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_CIRCLE, 255)],
    "square": [(_regular(4, 1.0, np.pi / 4), 255)],
    "triangle": [(_regular(3, 1.0, -np.pi / 2) + [0.0, 0.2], 255)],
    "star": [(_star(), 255)],
    "cross": [(_cross(), 255)],
    "ring": [(_regular(64, 0.95), 255), (_regular(64, 0.55), 0)],
    "crescent": [(_regular(64, 0.95), 255), (_regular(64, 0.78) + [0.5, -0.05], 0)],
}


def _place(pts: np.ndarray, center: np.ndarray, radius: float, angle: float,
           aspect: float) -> np.ndarray:
    """Scale (with aspect jitter), rotate and translate unit points into fixed-point pixels."""
    scaled = pts * np.array([radius * aspect, radius / aspect])
    c, s = np.cos(angle), np.sin(angle)
    rotated = scaled @ np.array([[c, s], [-s, c]])
    return np.round((rotated + center) * (1 << _SHIFT)).astype(np.int32)


def _object_alpha(label: int, size: int, center: np.ndarray, radius: float, angle: float,
                  aspect: float) -> np.ndarray:
    """Anti-aliased coverage (H, W) uint8 of class ``label``'s shape."""
    alpha = np.zeros((size, size), np.uint8)
    for pts, value in _LAYERS[CLASSES[label]]:
        cv2.fillPoly(alpha, [_place(pts, center, radius, angle, aspect)], int(value),
                     lineType=cv2.LINE_AA, shift=_SHIFT)
    return alpha


# ----------------------------------------------------------------------------- background
def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _background(rng: np.random.Generator, size: int, clutter: float = 1.0) -> np.ndarray:
    """A textured background (H, W, 3) float32 in [0, 255]: 1-2 blended texture layers + lines.

    ``clutter`` < 1 shrinks the texture's contrast toward its mean colour and drops lines.
    """
    yy, xx = _coords(size)
    layers = []
    for kind in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
        c0, c1 = _colour(rng), _colour(rng)
        theta = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        if kind == 0:  # linear gradient
            t = (u - u.min()) / max(float(np.ptp(u)), 1e-6)
        elif kind == 1:  # stripes, period 5..24 px
            period = rng.uniform(5, 24) / size
            t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        elif kind == 2:  # rotated checker, period 8..28 px
            period = rng.uniform(8, 28) / size
            v = -xx * np.sin(theta) + yy * np.cos(theta)
            t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
        else:  # smooth colour noise: a coarse random grid upsampled
            cells = int(rng.integers(3, 9))
            coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
            layers.append(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC))
            continue
        layers.append(c0 + (c1 - c0) * t[..., None])
    weights = rng.dirichlet(np.ones(len(layers)))
    bg = sum(w * layer for w, layer in zip(weights, layers))
    if clutter < 1.0:
        flat = bg.mean(axis=(0, 1))
        bg = flat + clutter * (bg - flat)
    bg = np.ascontiguousarray(np.clip(bg, 0, 255), dtype=np.float32)
    thick = max(1, round(size / 96))
    for _ in range(round(int(rng.integers(0, 7)) * clutter)):
        p0, p1 = rng.uniform(-0.1, 1.1, (2, 2)) * size
        cv2.line(bg, tuple(int(v) for v in p0), tuple(int(v) for v in p1),
                 _colour(rng).tolist(), int(rng.integers(1, thick + 2)), cv2.LINE_AA)
    return bg


def _distractor(img: np.ndarray, rng: np.random.Generator, colour: np.ndarray) -> None:
    """Draw one non-class thing in place: a long bar, a thin ellipse, an open arc, a zigzag or dots.

    Each is chosen to be clearly none of the classes: bars and ellipses are at least 3.5:1 and
    2.5:1 long, arcs span at most 160 degrees, zigzags and dots are open strokes.
    """
    size = img.shape[0]
    col = colour.tolist()
    center = rng.uniform(0.05, 0.95, 2) * size
    kind = int(rng.integers(5))
    if kind == 0:
        length = rng.uniform(0.25, 0.6) * size
        width = length / rng.uniform(3.5, 7.0)
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * [length / 2, width / 2]
        cv2.fillPoly(img, [_place(pts, center, 1.0, rng.uniform(0, np.pi), 1.0)], col,
                     cv2.LINE_AA, _SHIFT)
    elif kind == 1:
        a = rng.uniform(0.1, 0.25) * size
        b = a / rng.uniform(2.5, 4.0)
        cv2.ellipse(img, (tuple(float(v) for v in center), (2 * a, 2 * b), rng.uniform(0, 180)),
                    col, -1, cv2.LINE_AA)
    elif kind == 2:
        r = rng.uniform(0.08, 0.22) * size
        start = rng.uniform(0, 360)
        cv2.ellipse(img, tuple(int(v) for v in center), (int(r), int(r)), 0, start,
                    start + rng.uniform(40, 160), col, int(rng.integers(2, max(3, size // 24))),
                    cv2.LINE_AA)
    elif kind == 3:
        n = int(rng.integers(3, 7))
        pts = center + np.cumsum(rng.normal(0, 0.12 * size, (n, 2)), axis=0)
        cv2.polylines(img, [pts.astype(np.int32)], False, col,
                      int(rng.integers(1, max(2, size // 32))), cv2.LINE_AA)
    else:
        for p in center + rng.normal(0, 0.06 * size, (int(rng.integers(5, 16)), 2)):
            cv2.circle(img, tuple(int(v) for v in p), int(rng.integers(1, max(2, size // 48) + 1)),
                       col, -1, cv2.LINE_AA)


def _pick_colour(rng: np.random.Generator, around: np.ndarray,
                 avoid: Sequence[np.ndarray]) -> np.ndarray:
    """Pick, of 12 random colours, the one that stands out most against ``around`` (K, 3) pixels.

    The score is the 5th percentile of the RGB distance to the surrounding pixels, capped by the
    distance to each distractor's colour, so the object never melts into its surroundings or
    into a touching distractor of the same colour.
    """
    cands = rng.integers(0, 256, (12, 3)).astype(np.float32)
    dist = np.linalg.norm(cands[:, None, :] - around[None, :, :], axis=2)
    score = np.percentile(dist, 5, axis=1)
    for c in avoid:
        score = np.minimum(score, np.linalg.norm(cands - c, axis=1))
    return cands[int(np.argmax(score))]


# ----------------------------------------------------------------------------- public API
def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an int >= 32 (pixels); got {size!r}")
    return int(size)


def _scene(rng: np.random.Generator, size: int,
           clutter: float = 1.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Background with distractors (H, W, 3) float32, and the distractors' colours."""
    img = _background(rng, size, clutter)
    colours = [_colour(rng) for _ in range(round(int(rng.integers(2, 5)) * clutter))]
    for col in colours:
        _distractor(img, rng, col)
    return img, colours


def _draw_object(img: np.ndarray, rng: np.random.Generator, label: int, center: np.ndarray,
                 radius: float, angle: float, aspect: float,
                 avoid: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Blend the object into ``img`` (float32, in place); return its bool mask and colour."""
    size = img.shape[0]
    alpha = _object_alpha(label, size, center, radius, angle, aspect)
    mask = alpha >= 128
    ys, xs = np.nonzero(mask)
    pad = max(2, size // 32)
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, size)
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, size)
    around = img[y0:y1:2, x0:x1:2].reshape(-1, 3)
    colour = _pick_colour(rng, around, avoid)
    a = alpha.astype(np.float32)[..., None] / 255.0
    img *= 1.0 - a
    img += a * colour
    return mask, colour


def _finish(img: np.ndarray, rng: np.random.Generator, clutter: float = 1.0) -> np.ndarray:
    """Add pixel noise over everything and convert to uint8."""
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= rng.uniform(2.0, 14.0) * max(clutter, 0.15)
    noise += img
    noise += 0.5
    return np.clip(noise, 0, 255).astype(np.uint8)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def make_sample(rng: np.random.Generator, size: int = 96, clutter: float = 1.0) -> Sample:
    """Generate one sample.

    Args:
        rng: NumPy generator; the sample is a pure function of its state.
        size: image side in pixels (the image is square), >= 32.
        clutter: in [0, 1]; 1 is the dataset proper. Lower values flatten the background's
            texture, drop lines and distractors and lower the noise (a training curriculum).

    Returns:
        A :class:`Sample`: ``image_bgr`` (size, size, 3) uint8, ``label`` int in
        ``[0, len(CLASSES))``, ``mask`` (size, size) bool, ``box`` (x0, y0, x1, y1) half-open.
    """
    size = _check_size(size)
    if not 0.0 <= clutter <= 1.0:
        raise ValueError(f"clutter must be in [0, 1]; got {clutter}")
    img, colours = _scene(rng, size, clutter)
    label = int(rng.integers(len(CLASSES)))
    radius = rng.uniform(*_RADIUS_RANGE) * size
    center = rng.uniform(radius + 1, size - radius - 1, 2)
    mask, _ = _draw_object(img, rng, label, center, radius, rng.uniform(0, 2 * np.pi),
                           rng.uniform(0.9, 1.1), colours)
    return Sample(_finish(img, rng, clutter), label, mask, _mask_box(mask))


def make_batch(seed: int | Sequence[int], n: int, size: int = 96, clutter: float = 1.0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` samples deterministically from ``seed``.

    Args:
        seed: an int, or a sequence of ints (e.g. ``(run_seed, step)`` for training batches);
            anything ``np.random.default_rng`` accepts as entropy.
        n: number of samples, >= 1.
        size: image side in pixels, >= 32.
        clutter: in [0, 1], see :func:`make_sample`.

    Returns:
        ``images`` (n, size, size, 3) uint8 BGR, ``labels`` (n,) int64, ``masks``
        (n, size, size) bool, ``boxes`` (n, 4) int32 ``(x0, y0, x1, y1)`` half-open.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 samples; got {n}")
    size = _check_size(size)
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    masks = np.empty((n, size, size), bool)
    boxes = np.empty((n, 4), np.int32)
    for i in range(n):
        s = make_sample(rng, size, clutter)
        images[i], labels[i], masks[i], boxes[i] = s.image_bgr, s.label, s.mask, s.box
    return images, labels, masks, boxes


def write_demo_inputs(out_dir: str | Path, seed: int = 0, n_images: int = 6,
                      video_frames: int = 48, size: int = 192, fps: float = 12.0
                      ) -> tuple[list[Path], Path]:
    """Write generated demo images (PNG) and a short video (MP4) for ``attnmap demo``.

    Images are :func:`make_sample` outputs, one class after another so a handful shows several
    classes. The video keeps one cluttered background while one object glides across it on a
    straight line and turns; background noise is re-drawn every frame.

    Args:
        out_dir: folder to write into (created if missing).
        seed: generator seed.
        n_images: number of PNG images, >= 0.
        video_frames: number of video frames, >= 2.
        size: side of images and video frames in pixels (square).
        fps: video frame rate.

    Returns:
        ``(image_paths, video_path)``: ``shapes_00.png`` ... and ``shapes_demo.mp4``.

    Raises:
        SourceError: when OpenCV cannot write or read back the video.
    """
    if n_images < 0 or video_frames < 2:
        raise ValueError(f"need n_images >= 0 and video_frames >= 2; got {n_images}, {video_frames}")
    size = _check_size(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_images):
        while True:  # rejection keeps the image set cycling through the classes
            sample = make_sample(rng, size)
            if sample.label == i % len(CLASSES):
                break
        path = out / f"shapes_{i:02d}.png"
        write_image(path, sample.image_bgr)
        paths.append(path)

    video = out / "shapes_demo.mp4"
    with atomic_path(video, suffix=video.suffix) as tmp:  # the extension picks the container
        _write_video(str(tmp), rng, size, video_frames, fps)
    return paths, video


def _write_video(path: str, rng: np.random.Generator, size: int, frames: int, fps: float) -> None:
    scene, colours = _scene(rng, size)
    label = int(rng.integers(len(CLASSES)))
    radius = 0.2 * size
    lo, hi = radius + 2, size - radius - 2
    start = np.array([lo, rng.uniform(lo, hi)])
    end = np.array([hi, rng.uniform(lo, hi)])
    angle0, aspect = rng.uniform(0, 2 * np.pi), 1.0
    colour = None
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise SourceError(f"cannot open an mp4v VideoWriter for {path}; OpenCV lacks the codec")
    try:
        for k in range(frames):
            t = k / (frames - 1)
            img = scene.copy()
            center = start + (end - start) * t
            angle = angle0 + t * np.pi / 2
            if colour is None:
                _, colour = _draw_object(img, rng, label, center, radius, angle, aspect, colours)
            else:  # keep the object's colour fixed across frames
                alpha = _object_alpha(label, size, center, radius, angle, aspect)
                a = alpha.astype(np.float32)[..., None] / 255.0
                img = img * (1.0 - a) + a * colour
            writer.write(_finish(img, rng))
    finally:
        writer.release()
    cap = cv2.VideoCapture(path)
    try:
        count = 0
        while cap.read()[0]:
            count += 1
    finally:
        cap.release()
    if count != frames:
        raise SourceError(f"video {path}: wrote {frames} frames but read back {count}")
