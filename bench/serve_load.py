"""Load benchmark of ``attnmap serve``: many stream viewers and API clients against one loop.

Usage (from the project root)::

    .venv/bin/python bench/serve_load.py [--model PATH] [--source VIDEO] [--duration 60]
        [--viewers 20] [--api-clients 4] [--image PATH] [--fps 30] [--json OUT.json]

The server runs as ``attnmap serve`` in a process of its own (so the clients' work is not on
its GIL), on a free loopback port, explaining ``--source`` (default: a generated 224 x 224
shapes video at ``--fps``, played in a loop at its frame rate, like a camera). Two phases, back
to back, ``--duration`` seconds each after a few seconds of warm-up:

1. ``baseline``: one stream viewer;
2. ``load``: ``--viewers`` stream viewers plus ``--api-clients`` clients posting ``--image`` to
   ``/v1/explain`` one request after another.

For each phase it prints the loop's frames/s (``attnmap_frames_total`` from ``/metrics`` over the
phase), frames the viewers received, their skipped frames, API requests with p50/p99 latency
and status counts (5xx in particular), and the server's resident memory (VmRSS) sampled every
5 s. Then the load phase's frames/s as a fraction of the baseline's. This is a measurement on
a shared machine: the figures depend on what else runs, and are printed with ``os.getloadavg()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve_common import frames_total, rss_mib, serving, viewer  # noqa: E402


async def _api_client(url: str, image: bytes, stop: asyncio.Event, latencies: list, statuses: dict) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/explain", files={"image": ("img.png", image, "image/png")},
                                      data={"method": "rollout"})
                code = r.status_code
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            latencies.append(time.perf_counter() - t0)
            statuses[code] = statuses.get(code, 0) + 1


async def _phase(url: str, pid: int, seconds: float, viewers: int, api_clients: int, image: bytes) -> dict:
    stop = asyncio.Event()
    vstats = [{"frames": 0, "skipped": 0, "bytes": 0} for _ in range(viewers)]
    latencies: list[float] = []
    statuses: dict = {}
    tasks = [asyncio.create_task(viewer(url, stop, s)) for s in vstats]
    tasks += [asyncio.create_task(_api_client(url, image, stop, latencies, statuses)) for _ in range(api_clients)]
    with httpx.Client(base_url=url, timeout=30) as sync:
        await asyncio.sleep(3.0)  # every client connected and warm
        f0, t0 = frames_total(sync), time.perf_counter()
        lat_start = len(latencies)
        rss = []
        while time.perf_counter() - t0 < seconds:
            rss.append(round(rss_mib(pid), 1))
            await asyncio.sleep(min(5.0, seconds - (time.perf_counter() - t0)) if seconds > 0 else 0)
        f1, t1 = frames_total(sync), time.perf_counter()
        rss.append(round(rss_mib(pid), 1))
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    for t in tasks:
        t.cancel()
    lat = np.array(latencies[lat_start:]) * 1e3
    return {
        "viewers": viewers, "api_clients": api_clients, "seconds": round(t1 - t0, 2),
        "loop_fps": round((f1 - f0) / (t1 - t0), 2),
        "viewer_frames_per_s": round(sum(s["frames"] for s in vstats) / max(viewers, 1) / (t1 - t0 + 3), 2),
        "viewer_skipped": sum(s["skipped"] for s in vstats),
        "viewer_mb_per_s": round(sum(s["bytes"] for s in vstats) / 1e6 / (t1 - t0 + 3), 2),
        "api_requests": int(lat.size),
        "api_p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "api_p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "api_statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "api_5xx": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
        "rss_mib": rss,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "shapes_vit.onnx"))
    ap.add_argument("--source", default=None, help="video to serve (default: a generated 224 x 224 clip)")
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate of the generated clip")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    ap.add_argument("--viewers", type=int, default=20)
    ap.add_argument("--api-clients", type=int, default=4)
    ap.add_argument("--image", default=None, help="image the API clients post (default: a generated PNG)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    from attnmap.runtime.frames.synth import write_demo_inputs

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        images, video = write_demo_inputs(tmp, seed=0, n_images=1, video_frames=120, size=224, fps=args.fps)
        source = args.source or str(video)
        image = Path(args.image or images[0]).read_bytes()
        with serving(args.model, source) as server:
            url = server.url
            print(f"server pid {server.pid} on {url}, model {Path(args.model).name}, source {source}; "
                  f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
            results = {}
            for name, viewers, clients in (("baseline", 1, 0), ("load", args.viewers, args.api_clients)):
                results[name] = asyncio.run(_phase(url, server.pid, args.duration, viewers, clients, image))
                print(name, json.dumps(results[name]), flush=True)
    ratio = results["load"]["loop_fps"] / results["baseline"]["loop_fps"] if results["baseline"]["loop_fps"] else 0
    results["load_fps_ratio"] = round(ratio, 3)
    print(f"loop frames/s under load: {ratio:.1%} of the one-viewer baseline; "
          f"API p50 {results['load']['api_p50_ms']} ms, p99 {results['load']['api_p99_ms']} ms, "
          f"5xx {results['load']['api_5xx']}; server RSS {results['load']['rss_mib'][0]} -> "
          f"{results['load']['rss_mib'][-1]} MiB")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
