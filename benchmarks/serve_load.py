"""Bounded load test of `chestxray serve` on 127.0.0.1, micro-batching on and off in the same run.

    .venv/bin/python benchmarks/serve_load.py [--model runs/generalization/A-cxr-nih-cohen] [--requests 2000]
        [--clients 1,4,16] [--time-limit 90] [--out runs/serve_load.json]

For each setting (batching on: --max-batch 16, the default; off: --max-batch 1) a server is started as
a subprocess on a free loopback port, and for each client count that many concurrent clients send
single-image POST /predict requests (real validation images of the run, round robin) until --requests
are done or --time-limit seconds pass. Reported: throughput, latency p50/p95/p99, errors (non-200 or
failed), and the batch sizes the server ran (from its /metrics). The server and the clients share the
machine's cores. The test stops by itself; every server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, default_run

SETTINGS = {"batching on": ["--max-batch", "16"], "batching off": ["--max-batch", "1"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, flags: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [str(ROOT / ".venv" / "bin" / "chestxray"), "serve", model, "--host", "127.0.0.1", "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready in 120 s")


def batch_sizes(url: str) -> dict:
    import httpx

    text = httpx.get(url + "/metrics").text
    buckets = {float(le): float(v) for le, v in re.findall(r'chestxray_batch_size_bucket\{le="([0-9.]+)"\} ([0-9.e+]+)', text)}
    total = float(re.search(r"chestxray_batch_size_sum ([0-9.e+]+)", text).group(1))
    count = float(re.search(r"chestxray_batch_size_count ([0-9.e+]+)", text).group(1))
    return {"batches": count, "images": total, "cumulative_buckets": buckets}


async def load(url: str, blobs: list[bytes], clients: int, requests: int, time_limit: float) -> dict:
    import httpx

    latencies, errors = [], []
    issued = 0
    t_end = time.perf_counter() + time_limit

    async def client(c: httpx.AsyncClient):
        nonlocal issued
        while issued < requests and time.perf_counter() < t_end:
            i = issued
            issued += 1
            t = time.perf_counter()
            try:
                r = await c.post(url + "/predict", files=[("files", (f"{i}.png", blobs[i % len(blobs)], "image/png"))])
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        await asyncio.gather(*[client(c) for _ in range(clients)])
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "wall_s": wall, "throughput_rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": len(errors), "error_examples": errors[:3],
            "stopped_by_time": len(latencies) < requests}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="the run (its validation images are sent)")
    ap.add_argument("--serve", default=None, help="what the server loads, if not the run itself (e.g. the run exported to .onnx)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per client count and setting")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--time-limit", type=float, default=90.0, help="seconds per client count and setting, at most")
    ap.add_argument("--images", type=int, default=64, help="validation images of the run sent round robin")
    ap.add_argument("--out", default=str(ROOT / "runs" / "serve_load.json"))
    args = ap.parse_args(argv)
    args.model = str(default_run(args.model))  # the default run, trained once if missing

    from chestxray.data.sources import evaluation_samples

    run_dir = Path(args.model) if Path(args.model).is_dir() else None
    if run_dir is None or not (run_dir / "split.csv").exists():
        raise SystemExit("--model must be a run directory (its validation images are the requests)")
    samples = evaluation_samples(run_dir / "split.csv", "val")[1][: args.images]
    blobs = [Path(s.path).read_bytes() for s in samples]
    rows = []
    for setting, flags in SETTINGS.items():
        proc, url = start_server(args.serve or args.model, flags)
        try:
            for clients in (int(c) for c in args.clients.split(",")):
                before = batch_sizes(url)
                r = asyncio.run(load(url, blobs, clients, args.requests, args.time_limit))
                after = batch_sizes(url)
                n_batches = after["batches"] - before["batches"]
                r.update(setting=setting, mean_batch=(after["images"] - before["images"]) / max(1, n_batches),
                         batches=n_batches,
                         batch_size_buckets={le: after["cumulative_buckets"].get(le, 0) - before["cumulative_buckets"].get(le, 0)
                                             for le in after["cumulative_buckets"]})
                rows.append(r)
                print(f"{setting:13s} {clients:3d} clients: {r['requests']:5d} requests in {r['wall_s']:6.1f} s, "
                      f"{r['throughput_rps']:6.1f} req/s, p50 {r['p50_ms']:6.1f} ms, p95 {r['p95_ms']:6.1f} ms, "
                      f"p99 {r['p99_ms']:6.1f} ms, errors {r['errors']}, mean batch {r['mean_batch']:.2f}", flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("\nthroughput with batching / without, by client count:")
    for c in (int(c) for c in args.clients.split(",")):
        on = next(r for r in rows if r["setting"] == "batching on" and r["clients"] == c)
        off = next(r for r in rows if r["setting"] == "batching off" and r["clients"] == c)
        print(f"  {c:3d} clients: {on['throughput_rps'] / off['throughput_rps']:.2f}x")
    info = {"model": args.model, "served": args.serve or args.model, "images": len(blobs), "cpus": os.cpu_count(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
