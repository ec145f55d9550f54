"""A head-only training run end to end against the naive pipeline, on the same CPU and data.

    .venv/bin/python benchmarks/head_run.py [--data ../shared/data/cxr-nih-cohen] [--epochs 10]
        [--naive-epochs 1] [--skip-naive] [-- extra train flags]

chestxray: `chestxray train --data DATA --stages head --epochs-head 10` in a fresh process with an empty cache
(decoding, features, the 10 epochs, scoring, the OOD density, evaluation with intervals, plots, audit, report and
card: everything up to the printed summary). Each line the run logs is stamped with the seconds since start, so
the phases can be read off; the phase table below is built from those stamps.

naive: the original work's pipeline (benchmarks/throughput.py): ImageFolder of PNGs, PIL transforms, the frozen
backbone recomputed every epoch in fp32 (--naive-epochs measured, scaled to --epochs), then one fp32 pass over
the test split to report on it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, naive_head_epoch_seconds

PHASES = [  # (text of the log line that starts a phase, its name)
    ("decoding", "decode images (cold cache)"),
    ("backbone features", "backbone features (once per image)"),
    ("head epoch 1/", "head epochs"),
    ("scoring", "score validation and test"),
    ("out-of-distribution", "OOD density"),
    ("bootstrap resamples", "metrics with intervals"),
    ("shortcut audit", "shortcut audit (3 masked passes over test)"),
    ("plots, Grad-CAM", "plots, Grad-CAM, report, card"),
]


def chestxray_run(data: Path, epochs: int, extra: list[str]) -> tuple[float, list[tuple[float, str]]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CHESTXRAY_CACHE": f"{tmp}/cache", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-c", "from chestxray.cli import main; main()", "train", "--data", str(data),
               "--out", f"{tmp}/run", "--stages", "head", "--epochs-head", str(epochs), *extra]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines = []
        for line in proc.stdout:
            stamp = time.perf_counter() - t0
            lines.append((stamp, line.rstrip()))
            print(f"{stamp:7.1f} s | {line.rstrip()}", flush=True)
        if proc.wait():
            raise SystemExit(f"train failed (exit {proc.returncode})")
        return time.perf_counter() - t0, lines


def phase_table(total: float, lines: list[tuple[float, str]]) -> None:
    starts = []
    for text, name in PHASES:
        hit = next((t for t, line in lines if re.search(text, line, re.I)), None)
        if hit is not None:
            starts.append((hit, name))
    starts.sort()
    print("\nphase (from the log's first line naming it)          seconds")
    first = starts[0][0] if starts else total
    print(f"  {'start-up, data check, splits':48s} {first:7.1f}")
    for (t, name), nxt in zip(starts, [s[0] for s in starts[1:]] + [total]):
        print(f"  {name:48s} {nxt - t:7.1f}")


def naive(data: Path, size: int, bs: int, epochs: int, measured: int) -> float:
    import timm
    import torch
    from torchvision import datasets
    from torchvision import transforms as T


    epoch = naive_head_epoch_seconds("tf_efficientnet_lite0", data, size, bs, measured)
    t0 = time.perf_counter()
    tf = T.Compose([T.Grayscale(3), T.Resize((size, size)), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    test = torch.utils.data.DataLoader(datasets.ImageFolder(data / "test", tf), batch_size=bs)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1).eval()
    with torch.no_grad():
        for x, _ in test:
            model(x)
    evaluation = time.perf_counter() - t0
    print(f"naive: one head epoch {epoch:.1f} s (measured {measured}, scaled to {epochs}); test pass {evaluation:.1f} s")
    return epochs * epoch + evaluation


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cxr-nih-cohen")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--naive-epochs", type=int, default=1)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("extra", nargs="*", help="more `chestxray train` flags (after --)")
    args = ap.parse_args(argv)
    import torch

    print(f"{args.data}; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    total, lines = chestxray_run(args.data, args.epochs, args.extra)
    phase_table(total, lines)
    print(f"\nchestxray head-only run, end to end: {total:.1f} s")
    if not args.skip_naive:
        slow = naive(args.data, 224, 32, args.epochs, args.naive_epochs)
        print(f"naive pipeline, end to end: {slow:.1f} s; speed-up {slow / total:.1f}x (target >= 12x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
