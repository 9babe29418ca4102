"""``attnmap tune``: measure provider x precision x threads x batch here, keep the faithful, pick the fastest.

1. The fp32 model is converted to each precision asked for (the runtime's own conversions, in a
   temp folder; bf16 only where :func:`~attnmap.runtime.precision.bf16.bf16_support` finds a
   provider that computes it, else a row saying why not).
2. Each (provider, precision) file is measured once against the fp32 file on the CPU provider,
   on the check photos: the fidelity gate's figures (top-1 agreement, max |dp|, per-method map
   correlation and top-10% IoU). It passes when the gate passes
   (:func:`~attnmap.runtime.precision.fidelity.fidelity_failures`) and the tuned method's maps
   correlate at least ``min_rollout_corr`` too.
3. Every (provider, precision, threads, batch) is timed: infer with the explanation outputs plus
   the method's maps, per image. Rounds alternate every set-up with plain fp32 inference (the
   logits-only graph on the CPU provider at the default threads), in a rotating order, so load
   on a shared machine falls on all alike; each set-up's ratio to plain inference is the median
   of its per-round ratios.
4. The fastest set-up that passed (by its ratio to plain inference) is written beside the model (:mod:`attnmap.runtime.model.tuned`).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from attnmap.runtime.core.errors import ModelError, OptionError
from attnmap.runtime.core.files import commit, discard, temp_path
from attnmap.runtime.model.providers import ORT_NAMES
from attnmap.runtime.model.tuned import TunedSetup, file_sha256, tuned_file_path, write_tuned
from attnmap.runtime.precision.fidelity import Fidelity, Thresholds, fidelity_failures

TUNE_PRECISIONS = ("fp32", "fp16", "int8", "int8-static", "bf16")  # int8-static: QDQ, needs calibration
TUNE_PROVIDERS = ("cpu", "openvino", "cuda", "coreml")  # TensorRT: an engine build per shape, not tried


@dataclass(frozen=True)
class TunePlan:
    """What ``tune`` tries and how long.

    Attributes:
        check: image source of the fidelity gate (photos like the model's own).
        providers: provider names to try (default: every one of :data:`TUNE_PROVIDERS` onnxruntime offers).
        precisions: of :data:`TUNE_PRECISIONS` (``int8`` is dynamic; ``int8-static`` needs ``calibration``).
        threads: intra-op thread counts to try.
        batches: batch sizes to try.
        method: the explanation method timed and gated (its maps must correlate too).
        rounds: timed rounds (each runs every set-up once); warmup: untimed rounds first.
        thresholds: the fidelity gate.
        calibration: image source of static int8's calibration (other photos than ``check``: a
            static quantisation fits its ranges to them, and a gate on them would flatter it).
    """

    check: str
    providers: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "bf16")
    threads: tuple[int, ...] = ()
    batches: tuple[int, ...] = (1,)
    method: str = "rollout"
    rounds: int = 5
    warmup: int = 1
    thresholds: Thresholds = field(default_factory=Thresholds)
    calibration: str | None = None

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in TUNE_PRECISIONS]
        if bad or not self.precisions:
            raise OptionError(f"precisions must be among {TUNE_PRECISIONS}; got {list(self.precisions)}")
        if "int8-static" in self.precisions and not self.calibration:
            raise OptionError("precision int8-static needs calibration images: give calibration (a folder or glob)")
        bad = [p for p in self.providers if p not in TUNE_PROVIDERS]
        if bad:
            raise OptionError(f"providers must be among {TUNE_PROVIDERS}; got {bad[0]!r}")
        for name in ("threads", "batches"):
            if any(int(v) < 1 for v in getattr(self, name)):
                raise OptionError(f"{name} must all be >= 1; got {list(getattr(self, name))}")
        if self.rounds < 1 or self.warmup < 0:
            raise OptionError(f"rounds must be >= 1 and warmup >= 0; got {self.rounds}, {self.warmup}")

    def resolved(self) -> "TunePlan":
        """Defaults filled in: the providers onnxruntime offers, threads 1 and the physical cores.

        Raises:
            ProviderError: a provider asked for that onnxruntime does not offer (names what it does).
        """
        import onnxruntime as ort

        from attnmap.runtime.model.providers import resolve_providers
        from attnmap.runtime.model.session import physical_cores

        for name in self.providers:
            resolve_providers(name)
        offered = ort.get_available_providers()
        providers = self.providers or tuple(p for p in TUNE_PROVIDERS if ORT_NAMES[p] in offered)
        threads = self.threads or tuple(sorted({1, physical_cores()}))
        return replace(self, providers=providers, threads=tuple(int(t) for t in threads))


@dataclass
class TuneRow:
    """One set-up: what it is, how fast, how faithful (a row of the printed table)."""

    provider: str
    precision: str
    threads: int | None
    batch: int | None
    ms: float | None = None          # median ms per image
    x_plain: float | None = None     # median per-round ratio to plain fp32 inference
    fidelity: Fidelity | None = None
    failures: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.fidelity is not None and not self.failures and self.ms is not None

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "precision": self.precision, "threads": self.threads, "batch": self.batch,
                "ms_per_image": self.ms, "x_plain": self.x_plain, "passed": self.passed,
                "fidelity": None if self.fidelity is None else self.fidelity.to_dict(), "failures": self.failures,
                "note": self.note}


@dataclass
class TuneResult:
    """All rows measured, plain inference's median, the winner and what was written."""

    model: Path
    method: str
    rows: list[TuneRow]
    plain_ms: float
    load: str
    winner: TuneRow | None = None
    written: list[Path] = field(default_factory=list)
    workdir: Path | None = None  # the converted files, until write_winner (or discard) removes it

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "method": self.method, "plain_ms": self.plain_ms, "load": self.load,
                "rows": [r.to_dict() for r in self.rows],
                "winner": None if self.winner is None else self.winner.to_dict(),
                "written": [str(p) for p in self.written]}


def choose(rows: Sequence[TuneRow]) -> TuneRow | None:
    """The fastest row that passed the gate (never one that failed), or None.

    Fastest by the median of its per-round ratios to plain inference (each ratio taken within
    one round, so a load that comes and goes between rounds cancels), then by median ms.
    """
    passing = [r for r in rows if r.passed]
    key = lambda r: (r.x_plain if r.x_plain is not None else float("inf"), r.ms)  # noqa: E731
    return min(passing, key=key) if passing else None


def gate(fidelity: Fidelity, thresholds: Thresholds, method: str) -> list[str]:
    """Why a set-up fails: the fidelity gate's failures, and the tuned method's map correlation."""
    failures = fidelity_failures(fidelity, thresholds)
    m = fidelity.maps.get(method)
    if method != "rollout" and m is not None and not m.pearson_mean >= thresholds.min_rollout_corr:
        failures.append(f"mean {method} correlation {m.pearson_mean:.4f} < {thresholds.min_rollout_corr:g}")
    return failures


def machine_load() -> str:
    """``/proc/loadavg``'s three averages and the CPU count, as ``uptime`` says them."""
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load unknown"


def run_tune(model: str | Path, plan: TunePlan, *, log: Callable[[str], None] = print,
             clock: Callable[[], float] = time.perf_counter) -> TuneResult:
    """Measure every set-up of ``plan`` on ``model`` and pick the fastest that passes the gate.

    Args:
        model: the fp32 ``.onnx`` file.
        plan: what to try (:meth:`TunePlan.resolved` is applied here).
        log: receives progress lines.
        clock: seconds, monotonic (a test passes a fake one).

    Returns:
        :class:`TuneResult` (nothing written yet: :func:`write_winner`).

    Raises:
        ModelError: the model is not an fp32 attnmap file with attentions.
        SourceError: the check images cannot be read.
        OptionError: the method does not run on this model.
    """
    from attnmap.runtime.engine.explainer import Explainer
    from attnmap.runtime.methods import METHODS, runs_on
    from attnmap.runtime.precision.bf16 import bf16_support
    from attnmap.runtime.precision.convert import ConvertOptions, convert_file, load_images, MAX_CHECK_IMAGES

    plan, model = plan.resolved(), Path(model)
    reference = Explainer(model, provider="cpu", threads=max(plan.threads))
    meta = reference.meta
    if meta.precision != "fp32":
        raise ModelError(f"{str(model)!r} is {meta.precision}; tune the fp32 file it came from")
    if plan.method not in METHODS or METHODS[plan.method].reruns_model or not runs_on(plan.method, meta):
        raise OptionError(f"method {plan.method!r} cannot be tuned on {model.name!r} (it needs a one-pass method "
                          "the file supports: rollout, attention ... or, with gradients, chefer, gradcam ...)")
    x_check = load_images(plan.check, meta, MAX_CHECK_IMAGES)
    rows: list[TuneRow] = []
    files: dict[str, Path] = {"fp32": model} if "fp32" in plan.precisions else {}
    workdir = Path(tempfile.mkdtemp(prefix="attnmap-tune-"))
    try:
        for precision in plan.precisions:
            if precision == "fp32":
                continue
            if precision == "bf16" and not bf16_support().runners:
                rows.append(TuneRow("-", "bf16", None, None, note=bf16_support().line(hint=False)))
                continue
            log(f"converting to {precision}")
            loose = Thresholds(0.0, -1.0, 1.0)  # gated below, per provider, on the check images
            try:
                options = (ConvertOptions("int8", mode="static", calibration=plan.calibration, check=plan.check,
                                          thresholds=loose) if precision == "int8-static" else
                           ConvertOptions(precision, check=plan.check, thresholds=loose))
                files[precision] = convert_file(model, workdir / f"{model.stem}.{precision}.onnx", options,
                                                log=lambda line: None, threads=max(plan.threads)).path
            except (ModelError, AssertionError, RuntimeError, ValueError) as exc:
                # one precision that does not convert (onnxruntime 1.24's quantiser asserts on a
                # gradient file's per-channel scales) is a row of the table, not the end of the run
                text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                rows.append(TuneRow("-", precision, None, None, note=f"cannot convert: {type(exc).__name__}"
                                                                      + (f": {text}" if text else "")))
        rows += _measure(reference, files, x_check, plan, log, clock)
        plain = [r for r in rows if r.note == "plain"]
        rows = [r for r in rows if r.note != "plain"]
        result = TuneResult(model, plan.method, rows, plain[0].ms if plain else float("nan"), machine_load(),
                            workdir=workdir)
        result.winner = choose(rows)
        return result
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _measure(reference, files: dict[str, Path], x_check: np.ndarray, plan: TunePlan,
             log: Callable[[str], None], clock: Callable[[], float]) -> list[TuneRow]:
    """Gate every (provider, precision), then time every set-up interleaved with plain inference."""
    from attnmap.runtime.core.errors import ProviderError
    from attnmap.runtime.engine.explainer import Explainer
    from attnmap.runtime.precision.fidelity import measure_fidelity

    rows, runners = [], []
    for provider in plan.providers:
        for precision, path in files.items():
            try:
                probe = Explainer(path, provider=provider, threads=max(plan.threads))
            except (ModelError, ProviderError) as exc:
                rows.append(TuneRow(provider, precision, None, None, note=f"cannot load: {exc}"))
                continue
            fidelity = measure_fidelity(reference, probe, x_check, source=plan.check, thresholds=plan.thresholds)
            failures = gate(fidelity, plan.thresholds, plan.method)
            log(f"{provider} {precision}: {'passes' if not failures else 'FAILS'} the gate: {fidelity.summary()}")
            del probe
            # onnxruntime's intra-op threads steer only its CPU provider's kernels; an accelerator
            # (OpenVINO) picks its own, so it is timed once, at the most threads asked for
            for threads in plan.threads if provider == "cpu" else (max(plan.threads),):
                explainer = Explainer(path, provider=provider, threads=threads)
                for batch in plan.batches:
                    row = TuneRow(provider, precision, threads, batch, fidelity=fidelity, failures=list(failures))
                    rows.append(row)
                    runners.append((row, _explain_step(explainer, x_check, batch, plan.method)))
    plain_row = TuneRow("cpu", "fp32", None, 1, note="plain")
    xb = x_check[:1]
    runners.append((plain_row, (lambda: reference.infer_plain(xb), 1)))
    times: dict[int, list[float]] = {id(r): [] for r, _ in runners}
    log(f"timing {len(runners) - 1} set-ups against plain fp32 inference, {plan.rounds} rounds")
    for k in range(plan.warmup + plan.rounds):
        # rotate the order each round: no set-up always runs right after the same neighbour
        for row, (step, batch) in runners[k % len(runners):] + runners[:k % len(runners)]:
            started = clock()
            step()
            if k >= plan.warmup:
                times[id(row)].append((clock() - started) * 1000.0 / batch)
    base = times[id(plain_row)]
    for row, _ in runners:
        t = times[id(row)]
        row.ms = round(statistics.median(t), 3)
        row.x_plain = round(statistics.median(a / b for a, b in zip(t, base)), 3) if all(base) else None
    return rows + [plain_row]


def _explain_step(explainer, x_check: np.ndarray, batch: int, method: str):
    """(a call that runs one batch through infer + maps, its batch size)."""
    reps = -(-batch // len(x_check))
    xb = np.ascontiguousarray(np.concatenate([x_check] * reps)[:batch])

    def step() -> None:
        explainer.maps(explainer.infer(xb), method)

    return step, batch


def discard_work(result: TuneResult) -> None:
    """Remove the converted files of a tune run (what :func:`write_winner` does not keep)."""
    if result.workdir is not None:
        shutil.rmtree(result.workdir, ignore_errors=True)
        result.workdir = None


def write_winner(result: TuneResult) -> list[Path]:
    """Write the winner beside the model, each file whole or not at all: its converted file
    (``deit.tuned-int8.onnx``) first, then the sidecar that names it (``deit.tuned.json``).

    Args:
        result: from :func:`run_tune`; its converted files are removed here.

    Returns:
        The paths written (empty where no set-up passed).
    """
    workdir = result.workdir
    written: list[Path] = []
    try:
        w = result.winner
        if w is None:
            return written
        src = result.model
        target = result.model
        if w.precision != "fp32":
            src = workdir / f"{result.model.stem}.{w.precision}.onnx"
            target = tuned_file_path(result.model, w.precision)
            tmp = temp_path(target, ".onnx")
            try:
                shutil.copyfile(src, tmp)
                commit(tmp, target)
            finally:
                discard(tmp)
            written.append(target)
        setup = TunedSetup(w.provider, int(w.threads), int(w.batch), w.precision.split("-")[0], target.name,
                           file_sha256(result.model), file_sha256(target),
                           {"ms_per_image": w.ms, "x_plain": w.x_plain, "plain_ms": result.plain_ms,
                            "method": result.method, "load": result.load,
                            "fidelity": w.fidelity.to_dict() if w.fidelity else None})
        written.append(write_tuned(setup, result.model))
        return written
    finally:
        discard_work(result)
        result.written = written


def format_table(result: TuneResult) -> str:
    """The measured table: speed beside fidelity, the winner marked with ``*``."""
    lines = [f"{result.model.name}: {result.method}, ms per image (median), x plain = median per-round ratio to "
             f"plain fp32 inference ({result.plain_ms:.2f} ms/image, cpu, logits only); {result.load}",
             f"  {'provider':<9}{'precision':<12}{'threads':>8}{'batch':>6}{'ms':>9}{'x plain':>9}{'top1':>7}"
             f"{'max|dp|':>9}{'r ' + result.method[:8]:>12}{'IoU10':>7}  gate"]
    for r in result.rows:
        mark = "*" if r is result.winner else " "
        if r.fidelity is None:
            lines.append(f"{mark} {r.provider:<9}{r.precision:<12}  {r.note}")
            continue
        m = r.fidelity.maps.get(result.method)
        lines.append(f"{mark} {r.provider:<9}{r.precision:<12}{r.threads:>8}{r.batch:>6}{r.ms:>9.2f}"
                     f"{r.x_plain if r.x_plain is not None else float('nan'):>9.2f}"
                     f"{r.fidelity.top1_agreement:>7.3f}{r.fidelity.max_prob_diff:>9.4f}"
                     f"{m.pearson_mean if m else float('nan'):>12.4f}{m.iou_top10_mean if m else float('nan'):>7.3f}  "
                     + ("pass" if not r.failures else "FAIL: " + "; ".join(r.failures)))
    lines.append(f"fastest passing: {result.winner.provider} {result.winner.precision}, {result.winner.threads} "
                 f"threads, batch {result.winner.batch}" if result.winner else "no set-up passed the gate")
    return "\n".join(lines)
