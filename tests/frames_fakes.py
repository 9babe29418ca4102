"""Stand-ins for the frame tests: cameras, a failing source, a model with a known delay, a fake clock.

Tests of timing behaviour run on a :class:`FakeClock`: the model's delay moves it
(``FakeExplainer(clock=...)``) and a :class:`FakeCamera` exposes frame i at fake time
t0 + i / fps, so counts, ages and latencies are exact and the machine's load cannot change them.

``FakeExplainer`` has the methods of :class:`attnmap.Explainer` that the frame pipelines call
(``meta``, ``preprocess``, ``infer``, ``infer_plain``, ``maps``, ``package``). Preprocessing,
the explanation methods and packaging are the real ones; only the forward pass is replaced by
a function whose delay the test controls and whose answer is known: in head 0 the class token
attends to the patches in proportion to exp(8 (l + 1) * their mean brightness), in head 1
(weaker) to the dark ones, so the fused map peaks on the brightest quadrant of the frame while
single heads and layers differ; the class is 0 for mostly dark frames, 1 for bright ones.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

import numpy as np

from attnmap.runtime.engine.explainer import Explainer
from attnmap.runtime.core.errors import SourceError
from attnmap.runtime.methods import attention_maps as run_method
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.image.preprocess import preprocess
from attnmap.runtime.model.session import Outputs
from attnmap.runtime.frames.sources import Frame, Source, SourceRef

FAKE_META = ModelMeta(
    model_name="fake_vit", input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    interpolation="bilinear", crop_pct=1.0, crop_mode="center", patch_size=(16, 16), grid_size=(2, 2),
    prefix_tokens=("class",), pooling="token", num_layers=2, num_heads=2, head_fusion="none",
    num_classes=3, label_names=("dark", "bright", "other"))


class FakeExplainer:
    """A model whose forward pass takes ``delay`` seconds and whose maps are predictable.

    Args:
        delay: seconds each ``infer`` call takes (``infer_plain`` takes ``plain_delay``).
        plain_delay: seconds each ``infer_plain`` call takes.
        clock: a :class:`FakeClock` that each call advances by its delay; None sleeps in real time.
    """

    def __init__(self, delay: float = 0.0, plain_delay: float | None = None, clock: "FakeClock | None" = None):
        self.meta = FAKE_META
        self.delay = delay
        self.plain_delay = delay if plain_delay is None else plain_delay
        self.clock = clock
        self.infer_calls = 0
        self.infer_frames = 0
        self.raw_maps: list[np.ndarray] = []
        self._lock = threading.Lock()

    def preprocess(self, images_bgr, fit: str = "crop", out=None):
        return preprocess(images_bgr, self.meta, fit=fit, out=out)

    def infer(self, x_nchw: np.ndarray, target=None) -> Outputs:
        t_end = time.perf_counter() + self.delay
        out = self._forward(x_nchw)
        with self._lock:
            self.infer_calls += 1
            self.infer_frames += x_nchw.shape[0]
        self._take(self.delay, t_end)
        return out

    def infer_plain(self, x_nchw: np.ndarray) -> np.ndarray:
        t_end = time.perf_counter() + self.plain_delay
        logits = self._forward(x_nchw).logits
        self._take(self.plain_delay, t_end)
        return logits

    def _take(self, seconds: float, t_end: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            _sleep_until(t_end)

    @staticmethod
    def _forward(x_nchw: np.ndarray) -> Outputs:
        b = x_nchw.shape[0]
        bright = x_nchw.mean(axis=1).reshape(b, 2, 16, 2, 16).mean(axis=(2, 4)).reshape(b, 4)  # in [-1, 1]
        n = 5
        att = np.full((b, 2, 2, n, n), 1.0 / n, np.float32)
        for layer in range(2):
            for head, gain in enumerate((8.0 * (layer + 1), -2.0 * (layer + 1))):
                # Head 0 looks at bright patches, head 1 (weaker) at dark ones; deeper is sharper.
                row = np.concatenate([np.zeros((b, 1)), gain * bright], axis=1)
                row = np.exp(row - row.max(axis=1, keepdims=True))
                att[:, layer, head, 0, :] = row / row.sum(axis=1, keepdims=True)
        level = bright.mean(axis=1)
        logits = np.stack([-4 * level, 4 * level, np.zeros(b)], axis=1).astype(np.float32)
        return Outputs(logits, att)

    def maps(self, outputs: Outputs, method: str = "rollout", **options) -> np.ndarray:
        maps = run_method(method, outputs.attentions, self.meta.layout, grads=outputs.grads, **options)
        self.raw_maps.extend(maps)
        return maps

    def forward(self, x_nchw: np.ndarray, m, targets=None) -> Outputs:
        return m.kind.forward(self.infer, x_nchw, targets, self.meta)

    def method_maps(self, outputs: Outputs, m, options, *, x=None, classes=None) -> np.ndarray:
        return self.maps(outputs, m.name, **options)

    def package(self, images, outputs, grids, geoms, method, topk=5):
        return Explainer.package(self, images, outputs, grids, geoms, method, topk)


def _sleep_until(t_end: float) -> None:
    while (left := t_end - time.perf_counter()) > 0:
        time.sleep(min(left, 0.005))


def quadrant_frame(index: int, size=(64, 48)) -> np.ndarray:
    """A dark (H, W, 3) frame with the quadrant ``index % 4`` bright (0 TL, 1 TR, 2 BL, 3 BR)."""
    w, h = size
    img = np.full((h, w, 3), 30, np.uint8)
    q = index % 4
    ys = slice(0, h // 2) if q < 2 else slice(h // 2, h)
    xs = slice(0, w // 2) if q % 2 == 0 else slice(w // 2, w)
    img[ys, xs] = 220
    return img


class PacedSource(Source):
    """A live source that produces frames at ``fps`` in real time, like a camera.

    Frames are made on the reading thread at their due times (t0 + i / fps); the frame's
    timestamp is when it was "exposed". ``fail_after`` raises an error after that many frames.
    """

    def __init__(self, fps: float = 100.0, count: int | None = None, fail_after: int | None = None,
                 size=(64, 48), error: BaseException | None = None):
        super().__init__(SourceRef("camera", f"paced:{fps:g}fps", "paced"))
        self.fps, self.count, self.fail_after = float(fps), count, fail_after
        self.size = size
        self.error = error or RuntimeError("sensor unplugged")
        self.produced = 0
        self.close_calls = 0

    def __iter__(self) -> Iterator[Frame]:
        t0 = time.perf_counter()
        i = 0
        while not self.closed and (self.count is None or i < self.count):
            if self.fail_after is not None and i >= self.fail_after:
                raise self.error
            _sleep_until(t0 + i / self.fps)
            self.produced += 1
            yield Frame(i, quadrant_frame(i, self.size), self.spec, time.perf_counter())
            i += 1

    def close(self) -> None:
        self.close_calls += 1
        super().close()


class FakeClock:
    """A clock that moves only when told to; thread-safe.

    ``now`` is a time source for ``StageClock(now=...)``; ``perf_counter`` is the same, so the
    clock can stand in for a module's ``time``. Threads may wait for it to reach a time.
    """

    def __init__(self, start: float = 0.0):
        self._t = float(start)
        self._cond = threading.Condition()

    def now(self) -> float:
        with self._cond:
            return self._t

    perf_counter = now

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._t += seconds
            self._cond.notify_all()

    def advance_to(self, t: float) -> None:
        """Move to ``t`` (never backwards)."""
        with self._cond:
            self._t = max(self._t, t)
            self._cond.notify_all()

    def wait_until(self, t: float, timeout: float = 10.0) -> None:
        """Block until the clock reads ``t`` or later; TimeoutError after ``timeout`` real seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._t >= t, timeout):
                raise TimeoutError(f"the fake clock stayed at {self._t} s and never reached {t} s")

    def event(self) -> threading.Event:
        """An Event whose timed ``wait`` moves this clock on by the timeout instead of sleeping."""
        clock = self

        class _Event(threading.Event):
            def wait(self, timeout=None):
                if timeout is not None and not self.is_set():
                    clock.advance(timeout)
                    return self.is_set()
                return super().wait(timeout)

        return _Event()


class FakeCamera(Source):
    """A live camera on a :class:`FakeClock`: frame i is exposed at fake time t0 + i / fps.

    t0 is the clock's time when reading starts; each frame's timestamp is its exposure time.
    Reading blocks until the clock reaches a frame's time, so something must move the clock:
    the model (``FakeExplainer(clock=...)``) or :meth:`tick`. The stream ends after ``count``
    frames, or fails with ``error`` after ``fail_after``; give one of them, so that the reader
    never waits on fake time that no one will bring when the run stops.

    Attributes:
        delivered: frames the reader has handed on (it has come back for the next one).
    """

    def __init__(self, clock: FakeClock, fps: float, count: int | None = None, fail_after: int | None = None,
                 size=(64, 48), error: BaseException | None = None):
        if count is None and fail_after is None:
            raise ValueError("FakeCamera needs count or fail_after: a stop must never wait on fake time")
        super().__init__(SourceRef("camera", f"fake:{fps:g}fps", "fake"))
        self.clock, self.fps, self.size = clock, float(fps), size
        self.limit = min(n for n in (count, fail_after) if n is not None)
        self.fail_after = fail_after
        self.error = error or RuntimeError("sensor unplugged")
        self.t0: float | None = None
        self.delivered = 0
        self._cond = threading.Condition()

    def due(self, i: int) -> float:
        """Fake time at which frame ``i`` is exposed."""
        return self.t0 + i / self.fps

    def __iter__(self) -> Iterator[Frame]:
        with self._cond:
            self.t0 = self.clock.now()
            self._cond.notify_all()
        for i in range(self.limit):
            self.clock.wait_until(self.due(i))
            yield Frame(i, quadrant_frame(i, self.size), self.spec, self.due(i))
            with self._cond:
                self.delivered = i + 1
                self._cond.notify_all()
        if self.fail_after is not None:
            raise self.error

    def tick(self, view, timeout: float = 10.0) -> None:
        """Hand over every frame due now, or, when none is newer than ``view``'s, let time run to the next one.

        Use as ``on_frame``: after a frame is drawn the loop asks for the newest one. If the
        camera has exposed nothing newer since, the loop would wait for the next exposure, so
        the clock moves to it. Returns (None, i.e. no key) when the reader has handed on every
        frame due, so that the next ``get`` sees exactly them.

        Args:
            view: the frame just drawn: a ``LiveFrame`` or the :class:`Frame` itself.
            timeout: real seconds to wait for the reader (a hang guard).
        """
        last = getattr(view, "frame", view).index
        with self._cond:
            if self._count_due() <= last + 1 < self.limit:
                self.clock.advance_to(self.due(last + 1))
            n = self._count_due()
            if not self._cond.wait_for(lambda: self.delivered >= n, timeout):
                raise TimeoutError(f"the reader handed on {self.delivered} frames, not the {n} due")

    def _count_due(self) -> int:
        now, n = self.clock.now(), 0
        while n < self.limit and self.due(n) <= now:
            n += 1
        return n


class ListSource(Source):
    """A non-live source over given images, optionally failing after ``fail_after`` frames."""

    def __init__(self, images, fps: float | None = 25.0, fail_after: int | None = None, kind: str = "video"):
        super().__init__(SourceRef(kind, f"list:{len(images)}", "list"))
        self.images = list(images)
        self.fps = fps
        self.frame_count = len(self.images)
        h, w = self.images[0].shape[:2]
        self.size = (w, h)
        self.fail_after = fail_after
        self.close_calls = 0

    def __iter__(self) -> Iterator[Frame]:
        for i, img in enumerate(self.images):
            if self.closed:
                return
            if self.fail_after is not None and i >= self.fail_after:
                raise SourceError(f"video {self.spec!r}: decoding failed at frame {i}")
            yield Frame(i, img, self.spec, time.perf_counter())

    def close(self) -> None:
        self.close_calls += 1
        super().close()


def run_with_timeout(fn, seconds: float):
    """Run ``fn()`` in a thread; fail the test if it has not returned within ``seconds``."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise AssertionError(f"did not finish within {seconds} s (a hang)")
    if "error" in result:
        raise result["error"]
    return result["value"]


def attnmap_threads() -> list[str]:
    """Names of live threads started by attnmap's pipelines."""
    return [t.name for t in threading.enumerate() if t.name.startswith("attnmap-")]
