"""Faults in a Ray run of ``attnmap explain`` (issue 27 part 4): a killed actor, a node that
leaves, a killed driver; each run checked for whole outputs, one row per image and a rerun
that skips everything.

Usage (from the project root)::

    .venv/bin/python bench/ray_faults.py [--images 80] [--method occlusion] [--faults actor,node,driver]

* ``actor``: ``attnmap explain --engine ray`` on a local instance (2 actors); once a few images
  are done, one actor's process is killed with SIGKILL.
* ``node``: a two-node cluster on this machine (``ray start --head`` with 1 CPU, then a
  second ``ray start --address`` node with 1 CPU and its own temp folder); the run joins it
  (``--address``) with one actor per node; once a few images are done the second node's
  raylet is killed with SIGKILL (its workers die with it), as a machine that leaves.
* ``driver``: the driver of a local-instance run is killed with SIGKILL mid-run; the Ray
  processes it started are counted right after, and again after the next run (same folder).

Each prints: seconds of the faulted run, its exit code, rows in ``run.parquet``, distinct
sources among them, duplicate rows, overlays written per image, what the rerun skipped and
redid, and the Ray processes left over. The machine is shared: the load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE, RECORDS = "run.parquet", ".attnmap"


# --------------------------------------------------------------------------- processes
def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def descendants(root: int) -> list[int]:
    """Live processes below ``root`` (children, their children ...)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = _ppid(int(name))
            if parent is not None:
                children.setdefault(parent, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return [p for p in out if _alive(p)]


def ray_processes(marker: str) -> list[int]:
    """Live processes whose command line or open files name ``marker`` (a Ray temp folder):
    Ray rewrites its agents' titles (``ray::DashboardAgent``), but they keep their logs open."""
    from attnmap.runtime.fronts.distributed.instances import session_processes

    return session_processes(marker)


def actor_pids(root: int) -> list[int]:
    """The explain actors' processes below ``root`` (Ray names them ``ray::MapWorker(...)``)."""
    return [p for p in descendants(root) if _cmdline(p).startswith("ray::MapWorker")]


# --------------------------------------------------------------------------- runs
@dataclass
class FaultRun:
    fault: str
    images: int
    seconds: float = 0.0
    exit_code: int | None = None
    killed: list[int] = field(default_factory=list)
    killed_after_rows: int = 0
    rows: int = 0
    sources: int = 0
    duplicates: int = 0
    errors: int = 0
    printed: int = 0
    printed_sources: int = 0
    overlays_per_image: float = 0.0
    rerun_exit_code: int | None = None
    rerun_skipped: int = 0
    rerun_done: int = 0
    left_over: int = 0
    left_over_after_next: int = 0
    rerun_notes: list[str] = field(default_factory=list)
    note: str = ""


def make_images(folder: Path, n: int, size: int = 96) -> list[Path]:
    import cv2
    import numpy as np

    from attnmap.runtime.frames.synth import make_sample

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i:04d}.png")
        if not paths[-1].is_file():
            cv2.imwrite(str(paths[-1]), make_sample(np.random.default_rng(i), size).image_bgr)
    return paths


def explain_cmd(images: Path, out: Path, *extra: str, method: str = "occlusion") -> list[str]:
    return [sys.executable, "-m", "attnmap.cli", "explain", str(images), "--engine", "ray", "--batch-size", "1",
            "--method", method, "--out", str(out), "--json", *extra]


def _env(**more: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(ROOT.parent))
    env.update(more)
    return env


def _done_rows(out: Path) -> int:
    folder = out / RECORDS
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def wait_rows(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        done = _done_rows(out)
        if done >= n:
            return done
        time.sleep(0.1)
    raise RuntimeError(f"the run ended or stalled before {n} images were done (exit {proc.poll()})")


def check_table(run: FaultRun, out: Path, images: int) -> None:
    import pyarrow.parquet as pq

    rows = pq.read_table(out / TABLE).to_pylist() if (out / TABLE).is_file() else []
    sources = [r["source"] for r in rows]
    run.rows, run.sources = len(rows), len(set(sources))
    run.duplicates = len(sources) - len(set(sources))
    run.errors = sum(1 for r in rows if r["error"])
    overlays = [p for p in out.iterdir() if p.suffix == ".png"]
    run.overlays_per_image = len(overlays) / max(1, images)


def count_printed(run: FaultRun, stdout: str) -> None:
    """The JSON lines the faulted run printed (one per image explained, none twice)."""
    sources = [json.loads(line)["source"] for line in stdout.splitlines() if line.startswith("{")]
    run.printed, run.printed_sources = len(sources), len(set(sources))


def rerun(run: FaultRun, cmd: list[str], out: Path, env: dict[str, str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    run.rerun_exit_code = done.returncode
    run.rerun_done = len([line for line in done.stdout.splitlines() if line.startswith("{")])
    skipped = [line for line in done.stderr.splitlines() if "already done" in line]
    run.rerun_skipped = int(skipped[0].split()[0]) if skipped else 0
    run.rerun_done -= run.rerun_skipped  # resumed images are printed as well
    run.rerun_notes = [line for line in done.stderr.splitlines() if line.startswith("note: stopped")]


def actor_fault(work: Path, images: int, method: str, after: int = 6) -> FaultRun:
    """Kill one of two actors of a local-instance run with SIGKILL once ``after`` images are done."""
    src, out = work / "images", work / "out-actor"
    make_images(src, images)
    shutil.rmtree(out, ignore_errors=True)
    run = FaultRun("actor", images)
    cmd = explain_cmd(src, out, "--actors", "2", method=method)
    env = _env()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        run.killed_after_rows = wait_rows(out, after, proc)
        actors = actor_pids(proc.pid)
        if not actors:
            raise RuntimeError("no actor process found under the driver")
        os.kill(actors[0], signal.SIGKILL)
        run.killed = [actors[0]]
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        _stop(proc)
    return _finish(run, proc, t0, stdout, stderr, src, out, cmd, env)


def _finish(run: FaultRun, proc: subprocess.Popen, t0: float, stdout: str, stderr: str, src: Path, out: Path,
            cmd: list[str], env: dict[str, str]) -> FaultRun:
    """After a faulted run: its time and exit, then the table checked, the printed records counted
    and the rerun that must skip every image."""
    run.seconds, run.exit_code = round(time.perf_counter() - t0, 1), proc.returncode
    if proc.returncode:
        run.note = stderr.strip().splitlines()[-1][:300] if stderr.strip() else ""
    check_table(run, out, len(list(src.glob("*.png"))))
    count_printed(run, stdout)
    rerun(run, cmd, out, env)
    return run


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# --------------------------------------------------------------------------- a two-node cluster
class TwoNodes:
    """A head node and a worker node on this machine, each with 1 CPU and its own temp folder.

    Started with ``ray start``; :meth:`stop` kills every process of both (by the temp folders
    named in their command lines), also when a test failed midway.
    """

    def __init__(self, work: Path):
        # Unix socket paths must stay short: a short temp folder of our own
        self.temp = Path(tempfile.mkdtemp(prefix="amrf", dir="/tmp"))
        self.head_dir, self.worker_dir = self.temp / "h", self.temp / "w"
        self.address = ""
        # `ray start --head` of Ray 2.5x+ authenticates with a token where ~/.ray/auth_token exists
        # (generated once per machine); every node and the driver then present it
        self.env = _env(RAY_BACKEND_LOG_LEVEL="error", **({"RAY_AUTH_MODE": "token"} if _has_token() else {}))

    def start(self) -> "TwoNodes":
        port = _free_port()
        ray = str(Path(sys.executable).with_name("ray"))
        subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                        f"--temp-dir={self.head_dir}", "--disable-usage-stats", '--resources={"head": 1}'],
                       check=True, capture_output=True, env=self.env, timeout=120)
        self.address = f"127.0.0.1:{port}"
        subprocess.run([ray, "start", f"--address={self.address}", "--num-cpus=1", f"--temp-dir={self.worker_dir}",
                        "--disable-usage-stats", '--resources={"leaver": 1}'],
                       check=True, capture_output=True, env=self.env, timeout=120)
        return self

    def worker_raylet(self) -> int:
        for pid in ray_processes(str(self.worker_dir)):
            if "raylet" in _cmdline(pid).split(" ", 1)[0]:
                return pid
        raise RuntimeError("the worker node's raylet is not running")

    def stop(self) -> int:
        """Kill both nodes' processes; returns how many there were."""
        pids = ray_processes(str(self.temp))
        pids += [child for pid in pids for child in descendants(pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ray_processes(str(self.temp)):
            time.sleep(0.1)
        shutil.rmtree(self.temp, ignore_errors=True)
        return len(pids)

    def __enter__(self) -> "TwoNodes":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _has_token() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_fault(work: Path, images: int, method: str, after: int = 6) -> FaultRun:
    """Run on a two-node cluster, one actor per node; SIGKILL the second node's raylet mid-run."""
    src, out = work / "images", work / "out-node"
    make_images(src, images)
    shutil.rmtree(out, ignore_errors=True)
    run = FaultRun("node", images)
    with TwoNodes(work) as nodes:
        cmd = explain_cmd(src, out, "--address", nodes.address, "--actors", "2", method=method)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=nodes.env,
                                start_new_session=True)
        try:
            run.killed_after_rows = wait_rows(out, after, proc)
            raylet = nodes.worker_raylet()
            doomed = [raylet, *descendants(raylet)]
            for pid in doomed:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            run.killed = doomed
            stdout, stderr = proc.communicate(timeout=600)
        finally:
            _stop(proc)
        _finish(run, proc, t0, stdout, stderr, src, out, cmd, nodes.env)
    return run


# --------------------------------------------------------------------------- the driver
def driver_fault(work: Path, images: int, method: str, after: int = 4) -> FaultRun:
    """SIGKILL the driver of a local-instance run; count the Ray processes it leaves, run again."""
    src, out = work / "images", work / "out-driver"
    make_images(src, images)
    shutil.rmtree(out, ignore_errors=True)
    run = FaultRun("driver", images)
    # its own Ray temp folder: the processes it leaves are found by that name, and no one else's
    temp = Path(tempfile.mkdtemp(prefix="amrd", dir="/tmp"))
    env = _env(RAY_TMPDIR=str(temp))
    cmd = explain_cmd(src, out, "--actors", "2", method=method)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        run.killed_after_rows = wait_rows(out, after, proc)
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: what it started stays
        run.killed = [proc.pid]
        proc.wait()
        time.sleep(3)  # what dies with the driver has had time to go
        run.left_over = len(ray_processes(str(temp)))
        run.seconds = round(time.perf_counter() - t0, 1)
        rerun(run, cmd, out, env)
        deadline = time.monotonic() + 10  # the next run's own instance takes a moment to go down
        while time.monotonic() < deadline and ray_processes(str(temp)):
            time.sleep(0.2)
        left = ray_processes(str(temp))
        run.left_over_after_next = len(left)
        if left:
            run.note = "left after the next run: " + "; ".join(_cmdline(p)[:80] for p in left)
        check_table(run, out, len(list(src.glob("*.png"))))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group, whatever the checks above found
        except ProcessLookupError:
            pass
        proc.wait()
        for pid in ray_processes(str(temp)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
    return run


FAULTS = {"actor": actor_fault, "node": node_fault, "driver": driver_fault}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=80)
    p.add_argument("--method", default="occlusion", help="a slow method makes the run long enough to fault")
    p.add_argument("--faults", default="actor,node,driver")
    p.add_argument("--work", type=Path, default=None, help="folder for the images and outputs (default: a temp one)")
    p.add_argument("--json", dest="json_out", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="attnmap-ray-faults-"))
    results = []
    for name in args.faults.split(","):
        run = FAULTS[name](work, args.images, args.method)
        results.append(run)
        load = os.getloadavg()
        print(f"{name:6s} {run.seconds:6.1f} s  exit {run.exit_code}  rows {run.rows} ({run.sources} sources, "
              f"{run.duplicates} duplicates, {run.errors} errors)  printed {run.printed} ({run.printed_sources} sources)  overlays/image {run.overlays_per_image:.2f}  "
              f"rerun: exit {run.rerun_exit_code}, {run.rerun_skipped} skipped, {run.rerun_done} redone  "
              f"left over {run.left_over} -> {run.left_over_after_next} after the next run  "
              f"load {load[0]:.1f}" + (f"\n       note: {run.note}" if run.note else "")
              + "".join(f"\n       rerun {line}" for line in run.rerun_notes), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps([asdict(r) for r in results], indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
