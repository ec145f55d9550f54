"""Inference benchmark: PyTorch eager fp32, PyTorch bf16 autocast and onnxruntime on the same run and images.

    .venv/bin/python benchmarks/inference.py [--run runs/generalization/A-cxr-nih-cohen] [--images 64]
        [--latency-runs 100] [--out runs/inference.json]

The run is exported with `chestxray export` (verified) into a temporary folder unless --onnx is given.
Every engine computes the same thing: decoded uint8 images (batch, 1, S, S) in, logits, probabilities,
P(infected) and pooled features out (the exported graph; for PyTorch the same ContractGraph module).
Reported: images/s at batch 1 and batch 32, single-image latency p50/p95 (batch 1, after warm-up), and the
largest difference in P(infected) from fp32 PyTorch. Images: the run's validation split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import ROOT, default_run


def timed(fn, batches: list, repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        for b in batches:
            t = time.perf_counter()
            fn(b)
            out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--onnx", default=None, help="an exported file of the run (default: export it now)")
    ap.add_argument("--images", type=int, default=64, help="validation images used (batch 32 runs over them)")
    ap.add_argument("--latency-runs", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "runs" / "inference.json"))
    args = ap.parse_args(argv)
    args.run = str(default_run(args.run))  # the default run, trained once if missing

    import onnxruntime as ort

    import chestxray
    from chestxray.apps.export import ContractGraph, export_onnx
    from chestxray.data.sources import evaluation_samples

    predictor = chestxray.load(args.run).predictor  # the public API's model, its contract underneath
    tmp = tempfile.mkdtemp(prefix="chestxray-bench-")
    onnx_path = args.onnx or export_onnx(args.run, Path(tmp) / "model.onnx")["path"]
    samples = evaluation_samples(Path(args.run) / "split.csv", "val")[1][: args.images]
    decoded = predictor.decode(samples)
    tf = predictor.preprocessing.eval_transform()
    x = torch.stack([tf(torch.from_numpy(np.array(img))[None]) for img in decoded.images])  # (N, 1, S, S) uint8
    n = len(x)
    batches = {1: [x[i:i + 1] for i in range(n)], 32: [x[i:i + 32] for i in range(0, n - n % 32 or n, 32)]}

    graph = ContractGraph(predictor).eval()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

    def torch_fp32(b):
        with torch.inference_mode():
            return graph(b)[2].numpy()

    def torch_bf16(b):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return graph(b)[2].float().numpy()

    def onnx(b):
        return session.run(["p_infected"], {"image": b.numpy()})[0]

    engines = {"pytorch eager fp32": torch_fp32, "pytorch bf16 autocast": torch_bf16, "onnxruntime fp32": onnx}
    reference = np.concatenate([torch_fp32(b) for b in batches[32]])
    rows = []
    for name, fn in engines.items():
        try:
            got = np.concatenate([fn(b) for b in batches[32]])  # also the warm-up
        except Exception as e:  # bf16 unsupported on this CPU or build
            rows.append({"engine": name, "error": f"{type(e).__name__}: {e}"})
            continue
        fn(batches[1][0])
        t1 = timed(fn, batches[1])
        t32 = timed(fn, batches[32], repeat=2)
        lat = np.array(timed(fn, [batches[1][i % n] for i in range(args.latency_runs)])) * 1000
        rows.append({"engine": name, "images_per_s_batch1": len(t1) / sum(t1),
                     "images_per_s_batch32": 32 * len(t32) / sum(t32), "latency_ms_p50": float(np.percentile(lat, 50)),
                     "latency_ms_p95": float(np.percentile(lat, 95)),
                     "max_abs_diff_p_infected_vs_fp32": float(np.abs(got - reference).max())})
    info = {"run": args.run, "onnx": onnx_path, "images": n, "img_size": predictor.preprocessing.img_size,
            "model": predictor.meta.get("model_name"), "torch_threads": torch.get_num_threads(),
            "onnxruntime": ort.__version__, "torch": torch.__version__, "cpus": os.cpu_count(), "rows": rows}
    print(f"{info['model']} at {info['img_size']} px, {n} validation images of {args.run}; torch {torch.__version__} "
          f"({info['torch_threads']} threads), onnxruntime {ort.__version__}, {os.cpu_count()} CPUs")
    print(f"{'engine':24s} {'img/s b1':>9s} {'img/s b32':>10s} {'p50 ms':>7s} {'p95 ms':>7s} {'max |dP|':>9s}")
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:24s} not run: {r['error']}")
            continue
        print(f"{r['engine']:24s} {r['images_per_s_batch1']:9.1f} {r['images_per_s_batch32']:10.1f} {r['latency_ms_p50']:7.1f} "
              f"{r['latency_ms_p95']:7.1f} {r['max_abs_diff_p_infected_vs_fp32']:9.1e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
