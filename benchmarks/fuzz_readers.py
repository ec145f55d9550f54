"""Bounded fuzz run of the X-ray reader: mutated PNG, JPEG, TIFF, BMP and DICOM files from valid seeds.

    .venv/bin/python benchmarks/fuzz_readers.py [--seconds 180] [--max-inputs 100000] [--per-file-s 5]
        [--memory-mb 2048] [--seed 0] [--out runs/fuzz]

Each input is read by `read_xray` in a worker process with an address-space limit (--memory-mb) and a
per-file time limit (--per-file-s; the worker is killed and restarted when it is exceeded). The outcome of
every input is one of: decoded (a 2-D uint8 image), refused (XrayReadError, the documented error), or a
finding: any other exception, a hang, or the worker dying (memory). Findings are saved under --out with
their bytes. It stops by itself after --seconds or --max-inputs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from _common import ROOT


def worker(conn, memory_mb: int, folder: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2 ** 20, memory_mb * 2 ** 20))
    import numpy as np

    from chestxray.data.io import MAX_PIXELS, XrayReadError, read_xray

    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, data = msg
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            arr = read_xray(path)
            ok = arr.ndim == 2 and arr.dtype == np.uint8 and min(arr.shape) >= 8 and arr.size <= MAX_PIXELS
            conn.send(("decoded", None) if ok else ("finding", f"bad array {arr.shape} {arr.dtype}"))
        except XrayReadError as e:
            conn.send(("refused", e.reason.split(":")[0][:60]))
        except BaseException as e:  # noqa: BLE001 - anything else is what we are looking for
            conn.send(("finding", f"{type(e).__name__}: {str(e)[:200]}\n{traceback.format_exc()[-1500:]}"))


class Worker:
    def __init__(self, memory_mb: int, folder: str):
        self.memory_mb, self.folder = memory_mb, folder
        self.start()

    def start(self):
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(target=worker, args=(child, self.memory_mb, self.folder), daemon=True)
        self.proc.start()

    def run(self, name: str, data: bytes, timeout: float):
        self.conn.send((name, data))
        if not self.conn.poll(timeout):
            self.proc.kill()
            self.proc.join()
            self.start()
            return "finding", f"hang: no answer in {timeout} s"
        try:
            return self.conn.recv()
        except EOFError:
            code = self.proc.exitcode
            self.start()
            return "finding", f"worker died (exit {code}; memory limit?)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--max-inputs", type=int, default=100_000)
    ap.add_argument("--per-file-s", type=float, default=5)
    ap.add_argument("--memory-mb", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "fuzz"))
    args = ap.parse_args(argv)

    from chestxray.data.seeds import mutate, seed_files

    seeds = seed_files()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    outcomes, by_kind, reasons, findings = Counter(), Counter(), Counter(), []
    slowest = 0.0
    with tempfile.TemporaryDirectory(prefix="chestxray-fuzz-") as folder:
        w = Worker(args.memory_mb, folder)
        t_end = time.time() + args.seconds
        n = 0
        while n < args.max_inputs and time.time() < t_end:
            name = rng.choice(sorted(seeds))
            kind, data = mutate(rng, seeds[name])
            t = time.perf_counter()
            outcome, detail = w.run(name, data, args.per_file_s)
            slowest = max(slowest, time.perf_counter() - t)
            n += 1
            outcomes[outcome] += 1
            by_kind[(name.split(".")[-1], outcome)] += 1
            if outcome == "refused":
                reasons[detail] += 1
            if outcome == "finding":
                f = out / f"finding-{len(findings):03d}-{name}"
                f.write_bytes(data)
                findings.append({"file": str(f), "seed": name, "mutation": kind, "detail": detail})
        w.conn.send(None)
    summary = {"inputs": n, "seconds": args.seconds, "outcomes": dict(outcomes), "slowest_s": slowest,
               "by_format": {f"{k[0]} {k[1]}": v for k, v in sorted(by_kind.items())},
               "top_refusal_reasons": dict(reasons.most_common(12)), "findings": findings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{n} inputs in {args.seconds:.0f} s at most: " + ", ".join(f"{k} {v}" for k, v in outcomes.items())
          + f"; slowest file {slowest:.2f} s")
    for k, v in sorted(by_kind.items()):
        print(f"  {k[0]:4s} {k[1]:8s} {v}")
    for f in findings[:10]:
        print(f"FINDING {f['seed']} ({f['mutation']}): {f['detail'].splitlines()[0]}  -> {f['file']}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
