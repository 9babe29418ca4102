"""Perturbation methods: run the model on perturbed copies of the input, no attention needed.

Both methods are model-agnostic: they only see ``forward(x_chunk) -> (b, C)`` softmax
probabilities, so they explain any attnmap file, a logits-only one included. Perturbed inputs
are built and run ``forward_batch`` at a time (never all at once: 1000 RISE inputs of
3 x 224 x 224 would be 600 MB), and the maps come out on the token grid like every other
method's, min-max normalised to [0, 1].

* **Occlusion** (Zeiler & Fergus, ECCV 2014): a ``window`` x ``window`` occluder slides over
  the input with a ``stride``; the score of one position is the drop in the explained class's
  probability, ``f(I) - f(I with the window replaced by the baseline)``. A pixel's score is the
  mean over the positions whose window covers it, and a token's is the mean over its patch's
  pixels. With the defaults (window = stride = the patch size) every patch is covered by exactly
  one occluder, so a token's score is that one drop.
* **RISE** (Petsiuk, Das & Saenko, BMVC 2018): N random masks M_i; the saliency of pixel λ is
  the probability-weighted mean of the masks,
  ``S_{I,f}(λ) = 1/(E[M]·N) Σ_i f(I ⊙ M_i) · M_i(λ)``, with E[M] = p. Mask i is an s x s binary
  grid with P(1) = p, bilinearly upsampled to ``(s+1)·C_H x (s+1)·C_W`` where
  ``C = ceil(H/s)`` is the cell size (the paper writes ``floor``; ``ceil`` keeps every crop
  inside the upsampled mask), then cropped to H x W at a uniformly random shift in
  ``[0, C_H) x [0, C_W)``. The token map is the area average of S over each patch.

Both work in the model's normalised input space, where 0 is the model's mean colour: RISE's
``I ⊙ M_i`` fades masked pixels to the mean colour, and occlusion's default ``mean`` baseline is
the same (:func:`~attnmap.runtime.methods.baselines.baseline_input`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import check_layout, normalize_maps

# NOTE OpenCV (and baselines.py, which imports it) are imported where used: the method
# registry is imported by `attnmap --help`, which must load neither OpenCV nor onnxruntime.

Forward = Callable[[np.ndarray], np.ndarray]
OCCLUSION_BASELINES = ("mean", "blur")  # "black" needs the normalisation, which a method does not see
# Perturbed inputs per model run. On a 2-core CPU, DeiT-Tiny costs about the same per input
# (16-21 ms) at 8 to 64 inputs a run and more at 1-4; a GPU gains from larger chunks. 32 keeps a
# chunk of 3 x 224 x 224 inputs at 19 MB.
FORWARD_BATCH = 32


def occlusion(x: np.ndarray, forward: Forward, classes: np.ndarray, layout: TokenLayout, *,
              window: int | None = None, stride: int | None = None, baseline: str = "mean",
              forward_batch: int = FORWARD_BATCH) -> np.ndarray:
    """Occlusion maps: the drop of the explained class's probability under a sliding occluder.

    Args:
        x: (B, 3, H, W) float32 preprocessed input; H and W are whole numbers of patches.
        forward: ``forward(x_chunk)`` -> (b, C) float32 softmax probabilities.
        classes: (B,) int64 class explained per image.
        layout: token layout (its grid gives the patch size, H / gh x W / gw).
        window: occluder side in input pixels (default: the patch size).
        stride: step between occluder positions in pixels (default: ``window``). The last
            position of a row or column is moved to touch the border, so every pixel is covered.
        baseline: what the occluder shows: ``"mean"`` (0 in the normalised input, the model's
            mean colour) or ``"blur"`` (the input under a Gaussian blur of 10 px).
        forward_batch: occluded inputs per ``forward`` call.

    Returns:
        (B, gh, gw) float32 in [0, 1]: the mean drop over the occluders covering each patch's
        pixels, min-max normalised (1 = occluding it costs the class most).
    """
    x, classes = check_perturbation_inputs(x, classes, layout, "occlusion")
    chunk_size = check_forward_batch(forward_batch)
    b, _, h, w = x.shape
    ph, pw = h // layout.grid[0], w // layout.grid[1]
    wy, wx = (ph, pw) if window is None else (int(window), int(window))
    sy, sx = (wy, wx) if stride is None else (int(stride), int(stride))
    if wy > h or wx > w:
        raise ExplainError(f"occlusion window {wy}x{wx} is larger than the {h}x{w} input")
    if sy > wy or sx > wx:
        raise ExplainError(f"occlusion stride {sy}x{sx} is larger than the window {wy}x{wx}: the pixels "
                           "between occluders would never be scored; use a stride <= window")
    if baseline not in OCCLUSION_BASELINES:
        raise ExplainError(f"occlusion baseline must be one of {OCCLUSION_BASELINES}; got {baseline!r}")
    from attnmap.runtime.methods.baselines import baseline_input

    # meta is only read by the "black" baseline, which is not offered here
    base = baseline_input(x, None, baseline)  # type: ignore[arg-type]
    ys, xs = occluder_positions(h, wy, sy), occluder_positions(w, wx, sx)
    spots = [(y, x0) for y in ys for x0 in xs]
    clean = np.concatenate([class_probs(forward, x[i:i + chunk_size], classes[i:i + chunk_size])
                            for i in range(0, b, chunk_size)])
    drops = np.empty((b, len(spots)), np.float64)
    total = b * len(spots)
    for start in range(0, total, chunk_size):
        idx = np.arange(start, min(start + chunk_size, total))
        img, spot = idx // len(spots), idx % len(spots)
        chunk = x[img]
        for j, (i, s) in enumerate(zip(img, spot)):
            y, x0 = spots[s]
            chunk[j, :, y:y + wy, x0:x0 + wx] = base[i, :, y:y + wy, x0:x0 + wx]
        drops[img, spot] = clean[img] - class_probs(forward, chunk, classes[img])
    score = np.zeros((b, h, w), np.float64)
    covered = np.zeros((h, w), np.float64)
    for s, (y, x0) in enumerate(spots):
        score[:, y:y + wy, x0:x0 + wx] += drops[:, s, None, None]
        covered[y:y + wy, x0:x0 + wx] += 1.0
    return normalize_maps(pool_to_grid(score / covered, layout.grid))


def rise(x: np.ndarray, forward: Forward, classes: np.ndarray, layout: TokenLayout, *,
         masks: int = 1000, p: float = 0.5, cells: int = 7, mask_seed: int = 0,
         forward_batch: int = FORWARD_BATCH) -> np.ndarray:
    """RISE maps (Petsiuk et al. 2018): the probability-weighted mean of random smooth masks.

    ``S_{I,f}(λ) = 1/(E[M]·N) Σ_i f(I ⊙ M_i) · M_i(λ)`` (:func:`rise_saliency`), area-averaged
    over each patch and min-max normalised. Every image of the batch sees the same N masks.

    The default s = 7 is the paper's for 224 x 224 ImageNet inputs. On a ViT with 16 px patches
    a cell is then 32 px, 2 x 2 patches: the masks vary more slowly than the tokens, so a token
    is mostly shown or mostly hidden and its neighbours move with it, and with p = 0.5 half of
    the image is visible on average, enough for the class to stay recognisable. A finer grid
    (s near the token grid) approaches single-patch occlusion; a coarser one blurs the map.

    Args:
        x: (B, 3, H, W) float32 preprocessed input; H and W are whole numbers of patches.
        forward: ``forward(x_chunk)`` -> (b, C) float32 softmax probabilities.
        classes: (B,) int64 class explained per image.
        layout: token layout (its grid).
        masks: N, the number of masks. The map's noise falls as 1/sqrt(N).
        p: probability that a cell of the low-resolution grid is kept (1).
        cells: s, the side of the low-resolution grid.
        mask_seed: seed of the masks: the same seed gives the same masks, hence the same map
            (named so that it is not taken for the seed of anything else on a command line).
        forward_batch: masked inputs per ``forward`` call (does not change the result).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    x, classes = check_perturbation_inputs(x, classes, layout, "rise")
    drawn = RiseMasks.draw(int(masks), int(cells), float(p), x.shape[2:], int(mask_seed))
    saliency = rise_saliency(x, forward, classes, drawn, forward_batch=forward_batch)
    return normalize_maps(pool_to_grid(saliency, layout.grid))


@dataclass(frozen=True)
class RiseMasks:
    """N RISE masks, kept as their low-resolution grids and shifts and rendered on demand.

    Attributes:
        grids: (N, s, s) bool, each cell kept (True) with probability p.
        shifts: (N, 2) int64 (dy, dx) of each crop, in ``[0, C_H) x [0, C_W)``.
        size: (H, W) of the rendered masks.
        cell: (C_H, C_W) = (ceil(H / s), ceil(W / s)).
        p: the keep probability, E[M].
    """

    grids: np.ndarray
    shifts: np.ndarray
    size: tuple[int, int]
    cell: tuple[int, int]
    p: float

    @classmethod
    def draw(cls, n: int, cells: int, p: float, size: tuple[int, int], seed: int) -> "RiseMasks":
        """Draw ``n`` masks of ``size`` from an s = ``cells`` grid, seeded (NumPy's PCG64)."""
        if n < 1 or cells < 1 or not 0.0 < p <= 1.0:
            raise ExplainError(f"RISE needs masks >= 1, cells >= 1 and p in (0, 1]; got masks={n}, "
                               f"cells={cells}, p={p}")
        h, w = int(size[0]), int(size[1])
        ch, cw = -(-h // cells), -(-w // cells)
        rng = np.random.default_rng(seed)
        grids = rng.random((n, cells, cells)) < p
        shifts = rng.integers(0, (ch, cw), size=(n, 2))
        return cls(grids, shifts, (h, w), (ch, cw), float(p))

    def __len__(self) -> int:
        return int(self.grids.shape[0])

    def render(self, indices: np.ndarray) -> np.ndarray:
        """The masks ``indices`` at full resolution.

        Args:
            indices: (m,) int mask indices.

        Returns:
            (m, H, W) float32 in [0, 1]: each grid bilinearly upsampled (pixel centres at
            half-pixel offsets, edges clamped: OpenCV's ``INTER_LINEAR``) to
            ``(s+1)·C_H x (s+1)·C_W``, then cropped at its shift.
        """
        import cv2

        s = self.grids.shape[1]
        (h, w), (ch, cw) = self.size, self.cell
        out = np.empty((len(indices), h, w), np.float32)
        for j, i in enumerate(indices):
            big = cv2.resize(self.grids[i].astype(np.float32), ((s + 1) * cw, (s + 1) * ch),
                             interpolation=cv2.INTER_LINEAR)
            dy, dx = self.shifts[i]
            out[j] = big[dy:dy + h, dx:dx + w]
        return out


def rise_saliency(x: np.ndarray, forward: Forward, classes: np.ndarray, masks: RiseMasks, *,
                  forward_batch: int = FORWARD_BATCH) -> np.ndarray:
    """``S_{I,f}(λ) = 1/(E[M]·N) Σ_i f(I ⊙ M_i) · M_i(λ)`` at input resolution, not normalised.

    Args:
        x: (B, 3, H, W) float32 input; (H, W) must be ``masks.size``.
        forward: ``forward(x_chunk)`` -> (b, C) float32 softmax probabilities.
        classes: (B,) int64 class explained per image (f is its probability).
        masks: the N masks, shared by every image.
        forward_batch: masked inputs per ``forward`` call.

    Returns:
        (B, H, W) float64 saliency (a probability scale: near f(I) where hiding a pixel does
        not matter).
    """
    b, n = x.shape[0], len(masks)
    chunk_size = check_forward_batch(forward_batch)
    if tuple(x.shape[2:]) != tuple(masks.size):
        raise ExplainError(f"RISE masks are {masks.size} but the input is {tuple(x.shape[2:])}")
    total = b * n
    out = np.zeros((b, *masks.size), np.float64)
    for start in range(0, total, chunk_size):
        idx = np.arange(start, min(start + chunk_size, total))
        img, which = idx // n, idx % n
        m = masks.render(which)
        probs = class_probs(forward, x[img] * m[:, None], classes[img])
        for i in np.unique(img):
            sel = img == i
            out[i] += np.tensordot(probs[sel], m[sel], axes=1)
    out /= masks.p * n
    return out


# --------------------------------------------------------------------------- shared
def check_perturbation_inputs(x: np.ndarray, classes: np.ndarray, layout: TokenLayout,
                              method: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a perturbation method's input and classes; return them as float32 and int64.

    Raises:
        ExplainError: ``x`` is not a finite (B, 3, H, W) array whose H and W are whole numbers
            of the layout's patches, or ``classes`` is not (B,) non-negative integers.
    """
    check_layout(layout)
    a = np.asarray(x)
    if a.ndim != 4 or a.shape[0] < 1 or a.shape[1] != 3:
        raise ExplainError(f"method {method!r} needs the (B, 3, H, W) model input x; got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ExplainError(f"method {method!r}: x must be real numbers; got dtype {a.dtype}")
    gh, gw = layout.grid
    if a.shape[2] % gh or a.shape[3] % gw:
        raise ExplainError(f"method {method!r}: the input {a.shape[2]}x{a.shape[3]} is not a whole number of "
                           f"the {gh}x{gw} token grid's patches")
    a = np.asarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ExplainError(f"method {method!r}: x contains NaN or inf")
    c = np.asarray(classes)
    if c.shape != (a.shape[0],) or not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
        raise ExplainError(f"method {method!r} needs one class index >= 0 per image ({a.shape[0]}); "
                           f"got {c.tolist()!r}")
    return a, c.astype(np.int64)


def check_forward_batch(value: int) -> int:
    """``value`` as an int >= 1, or ExplainError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ExplainError(f"forward_batch must be an integer >= 1; got {value!r}")
    return int(value)


def class_probs(forward: Forward, x_chunk: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(b,) float64 probability of ``classes[j]`` for input ``x_chunk[j]``, from one ``forward`` call."""
    probs = np.asarray(forward(x_chunk))
    if probs.ndim != 2 or probs.shape[0] != x_chunk.shape[0]:
        raise ExplainError(f"forward must return (b, C) probabilities for {x_chunk.shape[0]} inputs; "
                           f"got shape {probs.shape}")
    if classes.max() >= probs.shape[1]:
        raise ExplainError(f"class index {int(classes.max())} is out of range for {probs.shape[1]} classes")
    out = probs[np.arange(len(classes)), classes].astype(np.float64)
    if not np.isfinite(out).all():
        raise ExplainError("forward returned NaN or inf probabilities")
    return out


def occluder_positions(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of a ``window`` sliding by ``stride`` over ``size`` pixels; the last one is
    moved to ``size - window`` when the stride would leave the border uncovered."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def pool_to_grid(pixels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Area-average (B, H, W) per-pixel scores over each patch of a ``grid`` -> (B, gh, gw).

    H and W must be whole multiples of the grid (checked by :func:`check_perturbation_inputs`).
    """
    b, h, w = pixels.shape
    gh, gw = grid
    return pixels.reshape(b, gh, h // gh, gw, w // gw).mean(axis=(2, 4))
