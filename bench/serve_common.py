"""What the serve benchmarks share (bench/serve_load.py, bench/serve_abuse.py): starting
``attnmap serve`` in a process of its own on a free loopback port and stopping it, its resident
memory and frame counter, and a normal MJPEG viewer that counts the frames it receives."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

__all__ = ["Server", "frames_total", "free_port", "rss_mib", "serving", "viewer"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """The process's resident memory (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def frames_total(client: httpx.Client) -> float:
    """The stream loop's frame counter (``attnmap_frames_total`` of ``/metrics``)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("attnmap_frames_total "):
            return float(line.split()[1])
    raise RuntimeError("no attnmap_frames_total in /metrics")


class Server:
    """A running ``attnmap serve``: its process, URL and port; ``log`` once stopped (its stderr)."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port, self.url, self.log = proc, port, f"http://127.0.0.1:{port}", ""

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextmanager
def serving(model: str, source: str, *extra: str, env: dict[str, str] | None = None,
            timeout: float = 120.0) -> Iterator[Server]:
    """``attnmap serve SOURCE --model MODEL`` on a free loopback port, without a token, until
    its stream has drawn a frame; stopped with SIGINT (SIGKILL after 30 s) when the block ends."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "attnmap.cli", "serve", source, "--model", model,
                             "--port", str(port), *extra], env={**os.environ, "ATTNMAP_TOKEN": "", **(env or {})},
                            stderr=subprocess.PIPE)
    server = Server(proc, port)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(server.url + "/v1/stream/state", timeout=5).json()["status"]["frames"] > 0:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not start within {timeout:g} s")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.log = proc.stderr.read().decode(errors="replace")


async def viewer(url: str, stop: asyncio.Event, stats: dict) -> None:
    """Watch ``/v1/stream.mjpg`` until ``stop``; count in ``stats`` the frames received (each
    ``X-Frame`` version once), the versions skipped between them, and the bytes."""
    async with httpx.AsyncClient(timeout=None) as client:
        async with client.stream("GET", url + "/v1/stream.mjpg") as r:
            last, tail = None, b""
            async for chunk in r.aiter_raw():
                data = tail + chunk
                pos = 0
                while True:
                    i = data.find(b"X-Frame: ", pos)
                    j = data.find(b"\r\n", i) if i >= 0 else -1
                    if j < 0:
                        break
                    version = int(data[i + 9:j])
                    pos = j
                    if last is not None and version <= last:
                        continue  # seen in the previous chunk's tail
                    stats["frames"] += 1
                    if last is not None and version > last + 1:
                        stats["skipped"] += version - last - 1
                    last = version
                tail = data[-64:]
                stats["bytes"] += len(chunk)
                if stop.is_set():
                    return
