"""Where `chestxray predict` spends its time, phase by phase, on the PyTorch path (and onnxruntime beside it).

    .venv/bin/python benchmarks/predict_profile.py [--run RUN] [--data ../shared/data/kermany-peds-train/normal]
        [--images 618] [--img-size 224]

Without --run, a predictor is built from the offline ImageNet EfficientNet-Lite0 with an untrained head and an
out-of-distribution density fitted on the images themselves: the same work as a trained run's. Phases: process
start-up (import of the CLI), model load, decoding (cold cache, then warm), the eval transform and loader, the
bare fp32 forward of the backbone (contiguous and channels_last memory), Predictor.forward (the contract path
predict runs), the OOD score and the table; then `chestxray predict` end to end on one image and on all of them,
and the exported ONNX file end to end. Prints images/s for each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT

CLI = [sys.executable, "-c", "from chestxray.cli import main; main()"]


def clock(label: str, n: int, fn):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    rate = f"{n / dt:8.1f} images/s" if n else ""
    print(f"{label:58s} {dt:8.2f} s {rate}", flush=True)
    return out, dt


def shell(label: str, n: int, args: list[str], env=None) -> float:
    t = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})})
    dt = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{label}: {res.stderr[-2000:]}")
    print(f"{label:58s} {dt:8.2f} s {f'{n / dt:8.1f} images/s' if n else ''}", flush=True)
    return dt


def fresh_run(images, img_size: int, out: Path) -> Path:
    """A run directory holding an untrained-head Lite0 predictor with an OOD density (timing only)."""
    import torch

    from chestxray.data.labels import TaskScheme
    from chestxray.data.transforms import Preprocessing
    from chestxray.models.backbones import create_model, normalisation
    from chestxray.models.ood import FeatureDensity
    from chestxray.models.predictor import Predictor

    model, origin = create_model("efficientnet_lite0", 1, None, True, 0.2)
    scheme = TaskScheme.build("binary", ["normal", "pneumonia"])
    p = Predictor(model=model, scheme=scheme, preprocessing=Preprocessing(img_size, *normalisation(model)))
    feats = p.forward(images[:256])[1].numpy()
    p.ood = FeatureDensity.fit(feats, feats[:64], 0.95)
    p.meta = {"model_name": "efficientnet_lite0", "timm_name": "tf_efficientnet_lite0", "stage": "head",
              "weights_origin": origin, "config": {"data": {"data": ""}}}
    p.save(out / "checkpoints" / "best.ckpt")
    torch.manual_seed(0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kermany-peds-train" / "normal"))
    ap.add_argument("--images", type=int, default=618)
    ap.add_argument("--img-size", type=int, default=224)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from chestxray.data.io import list_images
    from chestxray.data.sources import Sample

    paths = [str(p) for p in list_images(args.data)][: args.images]
    n = len(paths)
    tmp = Path(tempfile.mkdtemp(prefix="chestxray-profile-"))
    os.environ["CHESTXRAY_CACHE"] = str(tmp / "cache")
    print(f"{n} images from {args.data}; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    shell("start-up: python -c 'import chestxray.cli'", 0, [sys.executable, "-c", "import chestxray.cli"])
    shell("start-up: chestxray --help", 0, [*CLI, "--help"])

    from chestxray.data.datamodule import DecodedDataset, make_loader
    from chestxray.models.predictor import CPU_BATCH, Predictor

    if args.run is None:
        from chestxray.data.datamodule import decode_split

        warm = decode_split([Sample(p, None) for p in paths], args.img_size, False, "decoding", str(tmp / "fit-cache"))
        args.run = str(fresh_run(warm.images, args.img_size, tmp / "run"))
    predictor, _ = clock("model load (Predictor.load)", 0, lambda: Predictor.load(args.run))
    samples = [Sample(p, None) for p in paths]
    split, _ = clock("decode, cold cache (read, resize, store)", n, lambda: predictor.decode(samples))
    split, _ = clock("decode, warm cache", n, lambda: predictor.decode(samples))
    prep = predictor.preprocessing
    ds = DecodedDataset(split.images, None, prep.eval_transform())
    batches, _ = clock("eval transform + loader (uint8 batches)", n, lambda: [x for x, _, _ in make_loader(ds, CPU_BATCH, train=False)])
    model = predictor.model.eval()
    for fmt, name in ((torch.contiguous_format, "contiguous"), (torch.channels_last, "channels_last")):
        model.to(memory_format=fmt)
        inputs = [prep.model_input(x).contiguous(memory_format=fmt) for x in batches]
        with torch.inference_mode():
            model(inputs[0][:8])
            clock(f"bare fp32 forward, {name}", n, lambda: [model(x) for x in inputs])
    folded = predictor.inference_model()  # the contract's network: batch-norm folded, channels_last
    with torch.inference_mode():
        folded(inputs[0][:8])
        clock("bare fp32 forward, batch-norm folded, channels_last", n, lambda: [folded(x) for x in inputs])
    (logits, feats), _ = clock("Predictor.forward (transform + contract forward)", n, lambda: predictor.forward(split.images))
    clock("OOD score", n, lambda: predictor.ood_scores(feats))
    # onnxruntime's forward on the same decoded images
    from chestxray.apps.export import export_onnx
    from chestxray.models.onnx_model import OnnxPredictor

    onnx_file = tmp / "forward.onnx"
    export_onnx(args.run, onnx_file, paths[:32])
    onnx_predictor = OnnxPredictor.load(onnx_file)
    onnx_predictor.forward(split.images[:64])
    clock("onnxruntime forward (OnnxPredictor.forward)", n, lambda: onnx_predictor.forward(split.images))
    clock("table (outputs, quality, OOD flag)", n, lambda: predictor.table(split, logits, feats))
    with tempfile.TemporaryDirectory() as out:
        shell("chestxray predict RUN one.png (cold process)", 1, [*CLI, "predict", args.run, paths[0], "--out", f"{out}/one.csv"])
        listing = Path(out) / "list.csv"
        listing.write_text("path,label\n" + "".join(f"{p},\n" for p in paths))
        shell(f"chestxray predict RUN --csv ({n} images, warm cache)", n, [*CLI, "predict", args.run, "--csv", str(listing),
                                                                            "--out", f"{out}/all.csv"])
        shell("chestxray export RUN (verified on 32 images)", 0, [*CLI, "export", args.run, "--out", f"{out}/m.onnx", *paths[:32]])
        shell(f"chestxray predict m.onnx --csv ({n} images, warm cache)", n, [*CLI, "predict", f"{out}/m.onnx", "--csv",
                                                                               str(listing), "--out", f"{out}/onnx.csv"])
        import shutil

        shutil.copy(f"{out}/m.onnx", Path(args.run) / "checkpoints" / "best.onnx")  # the export --engine onnx makes once
        shell(f"chestxray predict RUN --engine onnx --csv ({n} images)", n, [*CLI, "predict", args.run, "--engine", "onnx",
                                                                        "--csv", str(listing), "--out", f"{out}/engine.csv"])
        a, b = (np.loadtxt(f"{out}/{f}.csv", delimiter=",", skiprows=1, usecols=1) for f in ("all", "onnx"))
        print(f"largest difference in P(infected), PyTorch vs ONNX: {np.abs(a - b).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
