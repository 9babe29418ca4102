"""Local Ray instances a killed run left behind: recorded while they run, stopped by the next run.

A local instance (``ray.init()`` without an address) runs as processes of its own: the GCS and
the raylet die with the driver, but the raylet's agents (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``) and busy workers outlive a driver killed with SIGKILL (no ``finally``
runs, so ``ray.shutdown()`` never does). So a run that starts a local instance records it in
``<temp>/attnmap-ray-<uid>/<driver pid>.json`` (the driver's pid and start time, and the
instance's session folder) and removes the record when it shuts the instance down. The next
run first looks at the records: one whose driver is gone (no such process, or another one
under a reused pid) names a stale instance, whose processes are found by the session folder in
their command line or among their open files (Linux ``/proc``) and stopped, SIGTERM first.
Where ``/proc`` cannot say (another OS), the run says how to stop them instead.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["StaleInstance", "forget_instance", "record_instance", "session_processes", "sweep_stale_instances"]

PROC = Path("/proc")


@dataclass(frozen=True)
class StaleInstance:
    """What the sweep found of one instance whose driver is gone.

    Attributes:
        driver: the dead driver's pid.
        session_dir: the instance's session folder.
        stopped: pids of its processes that were stopped.
        left: pids still alive after SIGKILL (or that could not be looked for), with a hint.
    """

    driver: int
    session_dir: str
    stopped: tuple[int, ...]
    left: tuple[int, ...] = ()

    def line(self) -> str:
        """One line for the user (a note)."""
        text = (f"stopped {len(self.stopped)} Ray process{'es' if len(self.stopped) != 1 else ''} "
                f"that a killed run (pid {self.driver}) left running")
        if self.left:
            text += (f"; {len(self.left)} would not stop (pids {', '.join(map(str, self.left))}): "
                     f"kill them, or `ray stop --force` where no other Ray runs here")
        return text


def records_dir() -> Path:
    """The folder of this user's records (under the temp folder, as Ray's own)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"attnmap-ray-{uid}"


def record_instance(session_dir: str, pid: int | None = None) -> Path:
    """Record that this process (``pid``) runs a local instance with its session in ``session_dir``."""
    pid = os.getpid() if pid is None else pid
    folder = records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "started": _start_time(pid), "session_dir": session_dir}))
    os.replace(tmp, path)
    return path


def forget_instance(pid: int | None = None) -> None:
    """Remove this process's record (its instance was shut down)."""
    try:
        (records_dir() / f"{os.getpid() if pid is None else pid}.json").unlink()
    except FileNotFoundError:
        pass


def sweep_stale_instances(*, grace: float = 3.0, on_note: Callable[[str], None] | None = None) -> list[StaleInstance]:
    """Stop the processes of every recorded instance whose driver is gone; forget those records.

    Args:
        grace: seconds between SIGTERM and SIGKILL.
        on_note: called with one line per stale instance found.

    Returns:
        What was found, one :class:`StaleInstance` per stale record.
    """
    found = []
    folder = records_dir()
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        record = _read(path)
        if record is None:
            path.unlink(missing_ok=True)
            continue
        if not PROC.is_dir():  # no /proc: the driver's pid alone says whether it runs, nothing finds its processes
            if _pid_exists(record["pid"]):
                continue
            path.unlink(missing_ok=True)
            if on_note is not None:
                on_note(f"a killed run (pid {record['pid']}) may have left a local Ray instance running "
                        f"(session {record['session_dir']}); stop it with `ray stop` where no other Ray runs here")
            continue
        if _start_time(record["pid"]) == record["started"] and record["started"] is not None:
            continue  # its driver still runs
        stale = _stop(record["pid"], record["session_dir"], grace)
        path.unlink(missing_ok=True)
        if stale.stopped or stale.left:
            found.append(stale)
            if on_note is not None:
                on_note(stale.line())
    return found


def session_processes(session_dir: str) -> list[int]:
    """This user's live processes whose command line or open files name ``session_dir``."""
    if not PROC.is_dir() or not session_dir:
        return []
    me, out = os.getpid(), []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me or not _alive(int(entry.name)):
            continue
        if session_dir in _cmdline(entry) or _opens(entry, session_dir):
            out.append(int(entry.name))
    return out


def _stop(driver: int, session_dir: str, grace: float) -> StaleInstance:
    pids = session_processes(session_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
    left = tuple(p for p in pids if _alive(p))
    return StaleInstance(driver, session_dir, tuple(p for p in pids if p not in left), left)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        int(record["pid"]), str(record["session_dir"])
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart); None if gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_bytes().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(pid: int) -> bool:
    return _start_time(pid) is not None


def _cmdline(entry: Path) -> str:
    try:
        return (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _opens(entry: Path, folder: str) -> bool:
    """Whether the process holds a file under ``folder`` open (an agent whose title Ray rewrote)."""
    try:
        fds = list((entry / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(folder):
                return True
        except OSError:
            continue
    return False
