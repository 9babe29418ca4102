"""Soak benchmark: memory and leftovers of long runs of the live loop and the offline video path.

Usage (from the project root)::

    .venv/bin/python bench/soak.py [--frames 10000] [--size 128] [--model PATH]
        [--warmup 500] [--paths offline,live,live-record] [--no-label] [--no-hud] [--out-dir DIR]

Each path runs over ``--frames`` frames of a generated source (:class:`GeneratedSource`: the
shapes dataset's scenes, scrolled a few pixels per frame, ``--size`` pixels square) in this one
process, one path after another:

* ``offline``: :func:`~attnmap.runtime.fronts.video.explain_video` (batch 4, two model runs at
  once) into an ``.mp4`` in the output folder;
* ``live``: :func:`~attnmap.runtime.fronts.live.loop.run_live` headless and unpaced (the source
  is read as fast as the loop takes frames), until ``--frames`` frames are processed;
* ``live-record``: the same with ``out=`` an ``.mp4`` (the real-time recorder).

For each it prints the resident memory (VmRSS from ``/proc/self/status``) after the first
``--warmup`` frames and at the last frame, the growth ``(end - warm) / warm`` in %, the min and
max of the samples taken every ``--every`` frames, frames processed and frames/s, and the
files the run left behind: new entries in the output folder other than the video it was
asked for, new entries in the private temp folder the run's ``tempfile`` use is pointed at,
and new ``attnmap-*`` / ``.*.partial*`` entries in the system temp folder (``$SOAK_SYSTEM_TMP``
if set; other attnmap processes running at the same time can put those there: soak on a quiet
machine). Threads
named ``attnmap-*`` still alive after a run are reported too.

Each path ends with a ``PASS`` or ``FAIL`` line; the exit code is 1 when any path grew by 5 %
or more (``--max-growth``), left files or left threads, or (offline) wrote frames it could not
explain or draw, else 0. This is a measurement, not a
test: the frames/s depend on what else the machine runs and are not judged.

Where the growth is not a leak: a live run keeps the timings of its last 20,000 frames
(``LiveStats.records`` and the stage clock's per-stage deques, each bounded at 20,000), so a
run shorter than that grows by those records by design: about 0.4 KiB per frame (0.22 KiB per
``FrameRecord``, 0.16 KiB for five stage durations), 7.4 MiB at the cap. The offline path keeps
about 0.1 KiB of stage durations per frame, also capped.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

if __name__ == "__main__":
    # Before NumPy loads, as the CLI does: OpenBLAS threads only fight onnxruntime's (see bench_frames.py).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from attnmap.runtime.frames.frame import Frame, Source, SourceRef  # noqa: E402

PATHS = ("offline", "live", "live-record")
MAX_GROWTH = 0.05  # growth of the resident set from warm-up to the end that fails a path


# --------------------------------------------------------------------------- process figures
def rss_kb() -> int:
    """Resident set size of this process in KiB (``VmRSS`` of ``/proc/self/status``).

    Raises:
        RuntimeError: ``/proc/self/status`` is missing or has no VmRSS line (not Linux).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError as exc:
        raise RuntimeError(f"cannot read /proc/self/status for the resident set size: {exc}") from exc
    raise RuntimeError("/proc/self/status has no VmRSS line; expected a Linux /proc")


def attnmap_threads() -> list[str]:
    """Names of the live threads the runtime starts (all are named ``attnmap-*``)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("attnmap-"))


def _system_temp_entries() -> set[str]:
    """``attnmap-*`` and hidden ``.*.partial*`` entries of the system temp folder."""
    tmp = Path(os.environ.get("SOAK_SYSTEM_TMP") or tempfile.gettempdir())
    try:
        return {str(p) for p in tmp.iterdir()
                if p.name.startswith("attnmap-") or (p.name.startswith(".") and ".partial" in p.name)}
    except OSError:
        return set()


def _tree(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")} if folder.is_dir() else set()


@contextmanager
def _private_tempdir(folder: Path) -> Iterator[None]:
    """Point this process's ``tempfile`` (and child processes' ``TMPDIR``) at ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(folder), str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env


# --------------------------------------------------------------------------- the generated source
class GeneratedSource(Source):
    """A non-live "video" of generated frames: a few shapes-dataset scenes, scrolling.

    Every frame is a new (size, size, 3) BGR uint8 array: one of ``scenes`` generated scenes
    (:func:`~attnmap.runtime.frames.synth.make_sample`, switched every ``hold`` frames), rolled
    by ``(i, 2 i)`` pixels so that consecutive frames differ.

    Args:
        size: frame side in pixels (>= 32).
        frame_count: frames to yield; None yields until closed (the live loop stops it).
        fps: the frame rate the source claims (a live run with ``pace=False`` ignores it).
        seed: seed of the scenes.
        scenes: scenes generated up front.
        hold: frames per scene.
    """

    def __init__(self, size: int = 128, frame_count: int | None = None, fps: float = 30.0, seed: int = 0,
                 scenes: int = 8, hold: int = 60):
        from attnmap.runtime.frames.synth import make_sample

        super().__init__(SourceRef("video", "generated", "generated"))
        self.fps, self.frame_count, self.size = float(fps), frame_count, (int(size), int(size))
        rng = np.random.default_rng(seed)
        self._scenes = [make_sample(rng, int(size)).image_bgr for _ in range(max(1, scenes))]
        self._hold = max(1, int(hold))
        self.yielded = 0

    def __iter__(self) -> Iterator[Frame]:
        side = self.size[0]
        i = 0
        while not self.closed and (self.frame_count is None or i < self.frame_count):
            scene = self._scenes[(i // self._hold) % len(self._scenes)]
            img = np.roll(scene, (i % side, (2 * i) % side), axis=(0, 1))
            self.yielded = i + 1
            yield Frame(i, img, self.spec, time.perf_counter())
            i += 1


# --------------------------------------------------------------------------- sampling
class RssSampler:
    """Samples the resident set every ``every`` frames; the first sample at or past ``warmup``
    frames is the warm figure, the latest one the end figure.

    Args:
        warmup: frames after which memory is expected to be flat.
        every: frames between samples.
    """

    def __init__(self, warmup: int, every: int):
        self.warmup, self.every = int(warmup), max(1, int(every))
        self.samples: list[tuple[int, int]] = []  # (frames done, RSS KiB)
        self.warm: tuple[int, int] | None = None
        self._next = self.every

    def at(self, done: int) -> None:
        """Record a sample if ``done`` frames reach the next sampling point (or the warm-up)."""
        if done < self._next and not (self.warm is None and done >= self.warmup):
            return
        sample = (int(done), rss_kb())
        self.samples.append(sample)
        if self.warm is None and done >= self.warmup:
            self.warm = sample
        while self._next <= done:
            self._next += self.every

    def last(self, done: int) -> None:
        """Record the end sample at ``done`` frames (unless one was just taken there)."""
        if not self.samples or self.samples[-1][0] != done:
            self.samples.append((int(done), rss_kb()))


@dataclass
class SoakResult:
    """What one soak path measured.

    Attributes:
        path: ``"offline"``, ``"live"`` or ``"live-record"``.
        frames: frames processed (offline: explained and written; live: drawn).
        seconds: wall time of the run.
        warm_kb: resident set (KiB) at the first sample past the warm-up, None when the run
            was shorter than the warm-up.
        warm_at: frames done at that sample (None likewise).
        end_kb: resident set (KiB) at the last frame.
        after_kb: resident set (KiB) after the run returned and a ``gc.collect()``.
        samples: ``(frames done, RSS KiB)`` taken during the run.
        leftovers: files the run left (output folder, private temp folder).
        system_tmp: new ``attnmap-*`` / ``.*.partial*`` entries in the system temp folder.
        threads: ``attnmap-*`` threads alive after the run.
        extra: path-specific counts (frames written, dropped, failed ...).
    """

    path: str
    frames: int
    seconds: float
    warm_kb: int | None
    warm_at: int | None
    end_kb: int
    after_kb: int
    samples: list[tuple[int, int]]
    leftovers: list[str] = field(default_factory=list)
    system_tmp: list[str] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        """Frames processed per second."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def growth(self) -> float | None:
        """``(end - warm) / warm`` of the resident set (None without a warm figure)."""
        if not self.warm_kb:
            return None
        return (self.end_kb - self.warm_kb) / self.warm_kb

    @property
    def min_kb(self) -> int:
        """Smallest sample past the warm-up (all samples when there was no warm figure)."""
        return min(self._steady())

    @property
    def max_kb(self) -> int:
        """Largest sample past the warm-up (all samples when there was no warm figure)."""
        return max(self._steady())

    def _steady(self) -> list[int]:
        return [kb for done, kb in self.samples if self.warm_at is None or done >= self.warm_at] or [self.end_kb]

    def failures(self, max_growth: float = MAX_GROWTH) -> list[str]:
        """Why this path fails (empty when it passes)."""
        why = []
        if self.growth is None:
            why.append("no warm figure (run shorter than the warm-up)")
        elif self.growth >= max_growth:
            why.append(f"RSS grew {100 * self.growth:.2f} % >= {100 * max_growth:.0f} %")
        if self.extra.get("failed"):
            why.append(f"{self.extra['failed']} frames could not be explained or drawn (written plain), "
                       "so the drawing path was not soaked")
        if self.leftovers:
            why.append(f"left {len(self.leftovers)} file(s): {', '.join(self.leftovers)}")
        if self.system_tmp:
            why.append(f"{len(self.system_tmp)} new entries in the system temp folder: {', '.join(self.system_tmp)}")
        if self.threads:
            why.append(f"threads still alive: {', '.join(self.threads)}")
        return why


# --------------------------------------------------------------------------- the paths
def _offline(explainer, frames: int, size: int, out: Path, sampler: RssSampler, style) -> tuple[int, dict]:
    from attnmap import FrameEngine, Job
    from attnmap.runtime.fronts.video import explain_video

    engine = FrameEngine(explainer, Job(method="rollout", fit="squash", style=style),
                         batch_size=4, workers=2)
    report = explain_video(engine, GeneratedSource(size, frame_count=frames), out,
                           progress=lambda p: sampler.at(p.done))
    return report.frames, {"frames_written": report.frames, "failed": len(report.failed),
                           "out_bytes": out.stat().st_size if out.is_file() else 0}


def _live(explainer, frames: int, size: int, out: Path | None, sampler: RssSampler, style,
          hud: bool) -> tuple[int, dict]:
    from attnmap import Job
    from attnmap.runtime.fronts.live.loop import LiveConfig, run_live

    source = GeneratedSource(size, frame_count=None)
    stats = run_live(explainer, source, Job(method="rollout", fit="squash", style=style),
                     LiveConfig(show=False, out=out, max_frames=frames, pace=False, hud=hud),
                     on_frame=lambda lf: sampler.at(lf.stats.frames_processed))
    return stats.frames_processed, {
        "ended": stats.ended, "frames_captured": stats.frames_captured, "frames_dropped": stats.frames_dropped,
        "frames_explained": stats.frames_explained, "frames_written": stats.frames_written,
        "records_kept": len(stats.records), "source_closed": source.closed}


def soak(explainer, path: str, frames: int = 10_000, size: int = 128, *, warmup: int = 500, every: int = 100,
         out_dir: str | Path, label: bool = True, hud: bool = True) -> SoakResult:
    """Run one soak path and measure it.

    Args:
        explainer: an :class:`~attnmap.Explainer`.
        path: one of :data:`PATHS`.
        frames: frames to process (>= 1).
        size: side of the generated frames in pixels (>= 32).
        warmup: frames before the warm memory figure.
        every: frames between memory samples.
        out_dir: folder for the output videos and the private temp folder; files there
            other than the output video count as leftovers.
        label: draw the caption on each frame (``OverlayStyle(label=...)``).
        hud: draw the live view's text lines (live paths).

    Returns:
        :class:`SoakResult`.

    Raises:
        ValueError: an unknown path, or ``frames`` < 1.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1; got {frames}")
    from attnmap import OverlayStyle

    style = OverlayStyle(label=label)
    out_dir = Path(out_dir)
    tmp = out_dir / "tmp"
    out = None if path == "live" else out_dir / f"soak-{path}.mp4"
    tmp.mkdir(parents=True, exist_ok=True)
    before = _tree(out_dir)
    system_before = _system_temp_entries()
    gc.collect()
    sampler = RssSampler(warmup, every)
    t0 = time.perf_counter()
    with _private_tempdir(tmp):
        if path == "offline":
            done, extra = _offline(explainer, frames, size, out, sampler, style)
        else:
            done, extra = _live(explainer, frames, size, out, sampler, style, hud)
    seconds = time.perf_counter() - t0
    sampler.last(done)
    gc.collect()
    after_kb = rss_kb()
    threads = attnmap_threads()
    for _ in range(20):  # a stopping thread may need a poll interval to notice
        if not threads:
            break
        time.sleep(0.05)
        threads = attnmap_threads()
    expected = {str(out)} if out is not None else set()
    left = sorted(_tree(out_dir) - before - expected)
    system_left = sorted(_system_temp_entries() - system_before)
    warm_at, warm = sampler.warm if sampler.warm is not None else (None, None)
    return SoakResult(path, done, seconds, warm, warm_at, sampler.samples[-1][1], after_kb, list(sampler.samples),
                      left, system_left, threads, extra)


# --------------------------------------------------------------------------- report
def _mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MiB"


def format_result(r: SoakResult, max_growth: float = MAX_GROWTH) -> str:
    """The lines printed for one path, ending with its PASS or FAIL line."""
    growth = "-" if r.growth is None else f"{100 * r.growth:+.2f} %"
    lines = [f"== {r.path}",
             f"frames processed   {r.frames}  in {r.seconds:.1f} s  ({r.fps:.1f} frames/s)",
             f"RSS warm           {_mib(r.warm_kb)}  (at frame {r.warm_at})",
             f"RSS end            {_mib(r.end_kb)}  (at the last frame)",
             f"RSS growth         {growth}",
             f"RSS min / max      {_mib(r.min_kb)} / {_mib(r.max_kb)}  ({len(r.samples)} samples)",
             f"RSS after the run  {_mib(r.after_kb)}",
             "counts             " + ", ".join(f"{k} {v}" for k, v in r.extra.items()),
             f"leftovers          {len(r.leftovers)} in the output folder, {len(r.system_tmp)} in the system temp "
             f"folder, {len(r.threads)} attnmap threads alive"]
    why = r.failures(max_growth)
    lines.append(f"FAIL {r.path}: " + "; ".join(why) if why else f"PASS {r.path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=10_000, help="frames per path (default 10000)")
    p.add_argument("--size", type=int, default=128, help="side of the generated frames in pixels (default 128)")
    p.add_argument("--model", default=None, help="attnmap .onnx file (default: the shipped shapes model)")
    p.add_argument("--warmup", type=int, default=500, help="frames before the warm memory figure (default 500)")
    p.add_argument("--every", type=int, default=100, help="frames between memory samples (default 100)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)} (default all)")
    p.add_argument("--no-label", dest="label", action="store_false", help="draw frames without the caption")
    p.add_argument("--no-hud", dest="hud", action="store_false", help="live paths without the text lines")
    p.add_argument("--max-growth", type=float, default=100 * MAX_GROWTH, help="growth in %% that fails (default 5)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="keep the output videos here (default: a temp folder, removed at the end)")
    args = p.parse_args(argv)
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = [s for s in paths if s not in PATHS]
    if unknown or not paths:
        p.error(f"--paths takes {', '.join(PATHS)}; got {args.paths!r}")
    if args.frames < 1 or args.size < 32:
        p.error("--frames must be >= 1 and --size >= 32")
    from attnmap import Explainer

    explainer = Explainer(args.model, provider="cpu")
    print(f"model {explainer.path.name}  frames {args.frames}  size {args.size}x{args.size}  warm-up {args.warmup}  "
          f"RSS at start {_mib(rss_kb())}")
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    failed = False
    first_warm = None
    try:
        for path in paths:
            r = soak(explainer, path, args.frames, args.size, warmup=args.warmup, every=args.every,
                     out_dir=out_dir / path, label=args.label, hud=args.hud)
            first_warm = first_warm or r.warm_kb
            print(format_result(r, args.max_growth / 100))
            print(flush=True)
            failed = failed or bool(r.failures(args.max_growth / 100))
    finally:
        if args.out_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    end = rss_kb()
    if first_warm:
        print(f"process: RSS {_mib(first_warm)} after the first warm-up, {_mib(end)} after all paths "
              f"({100 * (end - first_warm) / first_warm:+.2f} %; informational)")
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
