"""The GPU check: training, prediction and export on one CUDA GPU, as one short script for a lent machine.

    python benchmarks/gpu.py --out DIR [--budget 330] [--n 1600] [--size 256]

On synthetic phantoms (chestxray.data.synthetic: not chest X-rays; speed and parity need no real films), each step
timed and its figures written to DIR/gpu.json as it ends, so a step that fails or a budget that runs out loses nothing
measured before it:

1. the contract's network (EfficientNet-Lite0, batch-norm folded, channels_last), bare forward on random tensors:
   images/s at batch 64 and 256 in fp32 (TF32 off, as the contract runs), fp32 with TF32, and bf16 autocast; and the
   largest difference in P(infected) of each against fp32 on the CPU, on the same inputs;
2. `chestxray.train` on the GPU, head and fine-tune stages, bf16-mixed and 32-true (the wall time of each, the
   fine-tune epochs' images/s from Lightning's log), then the same run under `--strategy ddp` on the one GPU;
3. `chestxray.load(run, device=...)`.predict on the test images, on the GPU and on the CPU: images/s, and the largest
   difference in P(infected) and the decisions that differ between the two and against the run's own test
   predictions (scored on the GPU at the end of training);
4. `chestxray.export` (ONNX, verified against PyTorch), onnxruntime's providers, and its images/s on the CPU.

Where no GPU is visible it runs the same steps on the CPU at a tenth of the size (to check the script itself).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

STEPS: dict[str, dict] = {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=330.0, help="seconds; steps not started by then are skipped")
    ap.add_argument("--n", type=int, default=1600, help="synthetic images in all (train/val/test 60/20/20)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--finetune-matrix", action="store_true",
                    help="only the fine-tune stage's speed: each of --workers-list, bf16-mixed and 32-true (no audit, no lung check)")
    ap.add_argument("--workers-list", default="0,8", help="with --finetune-matrix: the --workers values, comma-separated")
    args = ap.parse_args()
    t0 = time.perf_counter()
    gpu = torch.cuda.is_available()
    n = args.n if gpu else max(args.n // 10, 90)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"environment": environment(), "n_images": n, "img_size": args.size, "steps": STEPS,
              "synthetic": "chestxray.data.synthetic phantoms: not chest X-rays"}

    def save():
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        (args.out / "gpu.json").write_text(json.dumps(result, indent=2, default=str))

    def step(name, fn):
        if time.perf_counter() - t0 > args.budget:
            STEPS[name] = {"skipped": f"budget of {args.budget:.0f} s spent"}
            print(f"== {name}: skipped (budget)", flush=True)
            return None
        print(f"== {name}", flush=True)
        s = time.perf_counter()
        try:
            out = fn()
            STEPS[name] = {**(out or {}), "wall_s": round(time.perf_counter() - s, 1)}
        except Exception as e:  # a step that fails is recorded, and the others still run
            STEPS[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:],
                           "wall_s": round(time.perf_counter() - s, 1)}
        print(json.dumps({k: v for k, v in STEPS[name].items() if k != "traceback"}, default=str), flush=True)
        if "traceback" in STEPS[name]:
            print(STEPS[name]["traceback"], flush=True)
        save()
        return STEPS[name]

    from chestxray.data.synthetic import make_dataset

    data = args.out / "data"
    per = {"covid": n // 4, "normal": n // 2, "pneumonia": n - n // 4 - n // 2}
    step("data", lambda: {"root": str(make_dataset(data, per, size=args.size, seed=0)), "per_class": per})
    device = "cuda" if gpu else "cpu"
    accel = "gpu" if gpu else "cpu"
    if args.finetune_matrix:
        base = dict(img_size=224, stages="head,finetune", epochs_head=1, epochs_finetune=3, seed=0, accelerator=accel,
                    devices="1", progress=False, audit=False, lung_check=False)
        step("warm-up", lambda: train_figures(data, args.out / "warm", precision="32-true", **{**base, "epochs_finetune": 1}))
        for workers in args.workers_list.split(","):
            for prec in ("32-true", "bf16-mixed"):
                step(f"finetune {prec} workers {workers}", lambda prec=prec, workers=workers: finetune_speed(
                    train_figures(data, args.out / f"ft-{prec}-{workers}", precision=prec, workers=workers, **base),
                    3 * round(n * 0.6)))
        save()
        return
    step("forward", lambda: forward_figures(gpu))
    common = dict(img_size=224, stages="head,finetune", epochs_head=5, epochs_finetune=3, seed=0, accelerator=accel,
                  devices="1", progress=False)
    runs = {}
    for prec in ("bf16-mixed", "32-true"):
        out = args.out / f"run-{prec}"
        if step(f"train {prec}", lambda out=out, prec=prec: train_figures(data, out, precision=prec, **common)):
            runs[prec] = out
    step("train ddp (1 GPU)", lambda: train_figures(data, args.out / "run-ddp", precision="bf16-mixed",
                                                     strategy="ddp", **{**common, "epochs_head": 2, "epochs_finetune": 1}))
    run = runs.get("bf16-mixed") or runs.get("32-true")
    if run is not None and (run / "checkpoints" / "best.ckpt").exists():
        step("predict", lambda: predict_figures(run, data, device))
        step("export", lambda: export_figures(run, args.out / "model.onnx", data))
    save()
    print(f"wrote {args.out / 'gpu.json'} in {time.perf_counter() - t0:.0f} s")


def environment() -> dict:
    import onnxruntime as ort

    env = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    return env


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def forward_figures(gpu: bool) -> dict:
    from chestxray.models.backbones import create_model
    from chestxray.models.folding import folded_copy
    from chestxray.models.predictor import no_tf32

    model, origin = create_model("efficientnet_lite0", 2)
    torch.nn.init.normal_(model.get_classifier().weight, std=0.05)  # a head that is not all zeros
    model.eval()
    example = torch.zeros(1, 3, 224, 224)
    cpu_model = folded_copy(model, example).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 224, 224, generator=g)
    with torch.inference_mode():
        ref = torch.softmax(cpu_model(x.contiguous(memory_format=torch.channels_last)).float(), 1)[:, 1]
    out = {"weights": origin}
    if not gpu:
        return out
    dev = torch.device("cuda")
    m = folded_copy(model.to(dev), example.to(dev)).to(memory_format=torch.channels_last)
    modes = {"fp32 (TF32 off, the contract)": (no_tf32, None), "fp32 with TF32": (tf32, None),
             "bf16 autocast": (no_tf32, torch.bfloat16)}
    for label, (ctx, dtype) in modes.items():
        row = {}
        with torch.inference_mode(), ctx():
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                p = torch.softmax(m(x.to(dev).contiguous(memory_format=torch.channels_last)).float(), 1)[:, 1].cpu()
            row["max_abs_diff_p_vs_cpu_fp32"] = float((p - ref).abs().max())
            for bs in (64, 256):
                xb = torch.randn(bs, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    for _ in range(3):
                        m(xb)
                    _sync()
                    s = time.perf_counter()
                    reps = 20
                    for _ in range(reps):
                        m(xb)
                    _sync()
                row[f"images_per_s_batch_{bs}"] = round(reps * bs / (time.perf_counter() - s))
        out[label] = row
    return out


class tf32:
    def __enter__(self):
        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True

    def __exit__(self, *a):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def train_figures(data: Path, out: Path, **options) -> dict:
    import pandas as pd

    import chestxray

    s = time.perf_counter()
    lines = []

    class Stamp(logging.Handler):  # the run's own log lines, stamped: where the time goes
        def emit(self, record):
            lines.append(f"{time.perf_counter() - s:7.1f} s | {record.getMessage()[:200]}")

    handler = Stamp(logging.INFO)
    logging.getLogger("chestxray").addHandler(handler)
    logging.getLogger("chestxray").setLevel(logging.INFO)
    try:
        metrics = chestxray.train(data, out, overwrite=True, **options)
    finally:
        logging.getLogger("chestxray").removeHandler(handler)
    wall = time.perf_counter() - s
    row = {"wall_s": round(wall, 1), "options": {k: v for k, v in options.items() if k != "progress"}}
    row["test_roc_auc_at_val_threshold"] = (metrics.get("binary") or {}).get("at_val_threshold", {}).get("roc_auc")
    row["summary"] = metrics.get("summary", "").splitlines()
    row["log"] = lines[-80:]
    hist = out / "history.csv"
    if hist.exists():
        h = pd.read_csv(hist)
        row["history_columns"] = list(h.columns)[:30]
        row["epochs"] = len(h)
    # Lightning's CSV logger: the fine-tune stage's train steps have a time we can read per epoch
    for stage in ("head", "finetune"):
        f = out / "logs" / stage / "version_0" / "metrics.csv"
        if f.exists():
            row[f"{stage}_log_rows"] = len(pd.read_csv(f))
    return row


def finetune_speed(row: dict, train_images: int) -> dict:
    """The fine-tune stage's wall time, read off the stamped log: from the head stage's scoring to the fine-tune
    stage's (its epochs over the training images, and each epoch's validation pass)."""
    stamps = {}
    for line in row["log"]:
        t, msg = line.split(" s | ", 1)
        if msg.startswith("scoring val and test with the best head epoch"):
            stamps["start"] = float(t)
        elif msg.startswith("scoring val with the best finetune epoch"):
            stamps["end"] = float(t)
    if len(stamps) == 2:
        span = stamps["end"] - stamps["start"]
        row["finetune_stage_s"] = round(span, 1)
        row["finetune_train_images_per_s_incl_val"] = round(train_images / span, 1)
    return row


def predict_figures(run: Path, data: Path, device: str) -> dict:
    import pandas as pd

    import chestxray

    images = sorted((data / "test").rglob("*.png"))
    out = {"n_images": len(images)}
    tables = {}
    for dev in dict.fromkeys([device, "cpu"]):
        model = chestxray.load(run, device=dev)
        model.predict(images[:8])  # warm-up: the network's copy, the segmenter, kernels
        s = time.perf_counter()
        tables[dev] = model.predict(images).set_index("path")
        dt = time.perf_counter() - s
        out[f"{dev}_images_per_s"] = round(len(images) / dt, 1)
        out[f"{dev}_wall_s"] = round(dt, 2)
    cpu = tables["cpu"]
    if device != "cpu":
        g = tables[device].loc[cpu.index]
        out["max_abs_diff_p_gpu_vs_cpu"] = float((g["p_infected"] - cpu["p_infected"]).abs().max())
        out["decisions_differ_gpu_vs_cpu"] = int((g["predicted"].fillna("") != cpu["predicted"].fillna("")).sum())
    stored = run / "predictions-test.csv"
    if stored.exists():
        st = pd.read_csv(stored)
        st["path"] = st["path"].map(lambda p: str(Path(p).resolve()))
        st = st.set_index("path")
        common = cpu.index.map(lambda p: str(Path(p).resolve()))
        c = cpu.copy()
        c.index = common
        both = st.index.intersection(c.index)
        out["stored_test_rows_matched"] = len(both)
        if len(both):
            out["max_abs_diff_p_cpu_vs_stored"] = float((c.loc[both, "p_infected"] - st.loc[both, "p_infected"]).abs().max())
            out["decisions_differ_cpu_vs_stored"] = int(
                (c.loc[both, "predicted"].fillna("").astype(str) != st.loc[both, "predicted"].fillna("").astype(str)).sum())
    return out


def export_figures(run: Path, onnx: Path, data: Path) -> dict:
    import chestxray

    report = chestxray.export(run, onnx)
    model = chestxray.load(onnx)
    images = sorted((data / "test").rglob("*.png"))
    model.predict(images[:8])
    s = time.perf_counter()
    model.predict(images)
    dt = time.perf_counter() - s
    return {"verification": report, "onnxruntime_cpu_images_per_s": round(len(images) / dt, 1)}


if __name__ == "__main__":
    sys.exit(main())
