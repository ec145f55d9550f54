"""Throughput benchmark: the naive pipeline of the original work against chestxray's data path.

    .venv/bin/python benchmarks/throughput.py [--datasets synthetic,real] [--models efficientnet_lite0,resnet18]
                                             [--img-size 224] [--naive-epochs 1] [--ft-batches 6]
    .venv/bin/python benchmarks/throughput.py --memory-images 12000   # the memory check alone

For each dataset and model, on the same images, model and size:
- naive: torchvision ImageFolder + PIL transforms every epoch, fp32, contiguous tensors, the frozen
  backbone recomputed in every head epoch. Head wall time for 10 epochs is measured over
  --naive-epochs epochs and scaled to 10 (said in the output); fine-tuning images/s over --ft-batches.
- chestxray: decoded cache built cold, features extracted once (channels_last, precision auto), the
  head trained 10 epochs on them with Lightning; fine-tuning from the decoded cache with tensor
  augmentation, channels_last and autocast.
- the bare model forward on random tensors (same precision and layout), the ceiling for extraction.
Then the ratios, and head-stage validation ROC-AUC with fp32 features and with the chosen precision.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import ROOT, endless, naive_finetune_ips, naive_head_epoch_seconds

REAL = ROOT.parent / "shared" / "data" / "cxr-nih-cohen"


def rss_mb() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon", "RssFile", "VmRSS")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024
    return out


def bare_forward_ips(model, size: int, bs: int, precision: str, batches: int = 4) -> float:
    from chestxray.models.features import autocast_for

    model.eval()
    x = torch.randn(bs, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_for(precision, torch.device("cpu")):
        model(x)
        t0 = time.perf_counter()
        for _ in range(batches):
            model(x)
    return batches * bs / (time.perf_counter() - t0)


def chestxray_run(model_name: str, data: Path, size: int, bs: int, batches: int, cache: Path) -> dict:
    import lightning as L
    from sklearn.metrics import roc_auc_score

    from chestxray.config import OptimConfig
    from chestxray.data.datamodule import decode_split, make_dataset, make_loader
    from chestxray.data.labels import TaskScheme
    from chestxray.data.sources import load_samples
    from chestxray.data.transforms import Preprocessing
    from chestxray.models.backbones import create_model, normalisation
    from chestxray.models.features import FeatureDataset, autocast_for, extract_features, head_split
    from chestxray.training.module import ClassifierModule
    from chestxray.training.stages import resolve_precision

    precision = resolve_precision("auto")
    splits = load_samples(data)
    scheme = TaskScheme.build("binary", {s.label for s in splits["train"]})
    out = {"precision": precision}
    t0 = time.perf_counter()
    dec = {k: decode_split(splits[k], size, False, f"decoding {k}", cache) for k in ("train", "val")}
    out["decode_s"] = time.perf_counter() - t0

    model, origin = create_model(model_name, 1, pretrained=model_name == "efficientnet_lite0", dropout=0.2)
    out["weights"] = origin  # resnet18 has no offline ImageNet weights here: its AUC is not meaningful
    model = model.to(memory_format=torch.channels_last)
    prep = Preprocessing(size, *normalisation(model))
    bare_forward_ips(model, size, 64, precision, batches=1)  # warm the kernels for both measurements
    t0 = time.perf_counter()
    feats = {k: extract_features(model, d.images, prep, precision=precision) for k, d in dec.items()}
    out["extract_s"] = time.perf_counter() - t0
    n_img = sum(len(d.images) for d in dec.values())
    out["extract_ips"] = n_img / out["extract_s"]
    out["ceiling_ips"] = bare_forward_ips(model, size, 64, precision)

    targets = {k: [scheme.target(s.label) for s in d.samples] for k, d in dec.items()}
    module = ClassifierModule(model, scheme, "head", optim=OptimConfig(lr=3e-3), head_fn=head_split(model)[1])
    trainer = L.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    t0 = time.perf_counter()
    trainer.fit(module, make_loader(FeatureDataset(feats["train"], targets["train"]), bs, True),
                make_loader(FeatureDataset(feats["val"], targets["val"]), bs, False))
    out["head10_train_s"] = time.perf_counter() - t0
    out["head10_total_s"] = out["decode_s"] + out["extract_s"] + out["head10_train_s"]
    y_val = np.array([scheme.is_infected(s.label) for s in dec["val"].samples])
    head = head_split(model)[1]
    with torch.no_grad():
        model.eval()
        out["val_auc"] = roc_auc_score(y_val, head(feats["val"][0]).squeeze(1).numpy())
        if precision != "32-true":  # the same head on fp32 features: does the precision change the metric?
            f32 = extract_features(model, dec["val"].images, prep, precision="32-true", channels_last=False)
            out["val_auc_fp32_features"] = roc_auc_score(y_val, head(f32[0]).squeeze(1).numpy())

    # fine-tuning throughput: decoded cache, tensor augmentation, channels_last, autocast
    ft = ClassifierModule(model, scheme, "finetune", preprocessing=prep)
    ft.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    loader = make_loader(make_dataset(dec["train"], scheme, prep, train=True), bs, True)
    it = endless(loader)
    n, t0 = 0, None
    for b in range(batches + 1):
        x, y, _ = next(it)
        with autocast_for(precision, torch.device("cpu")):
            logits = ft(x)
        loss = ft.criterion(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if b == 0:
            t0 = time.perf_counter()
        else:
            n += len(x)
    out["finetune_ips"] = n / (time.perf_counter() - t0)
    return out


def memory_check(n_images: int, side: int = 256) -> None:
    """Build a decoded cache of n_images phantoms and read all of it; resident memory must stay flat."""
    from PIL import Image

    from chestxray.data.cache import DecodedCache
    from chestxray.data.synthetic import phantom

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        base = [phantom(rng, lab, 320)[0] for lab in ("normal", "covid", "pneumonia", "normal")]
        paths = []
        for i in range(n_images):  # distinct files: a few phantoms with per-file noise
            img = np.clip(base[i % 4].astype(np.int16) + rng.integers(-3, 4, base[0].shape), 0, 255).astype(np.uint8)
            p = tmp / f"img_{i:05d}.png"
            Image.fromarray(img).save(p, compress_level=1)
            paths.append(str(p))
        print(f"memory check: wrote {n_images} PNGs (320 px) in {time.perf_counter() - t0:.0f} s")
        before = rss_mb()
        t0 = time.perf_counter()
        store, _, _ = DecodedCache(tmp / "cache", side).get(paths)
        build = time.perf_counter() - t0
        after_build = rss_mb()
        t0 = time.perf_counter()
        total = 0
        for i in range(len(store)):
            total += int(np.asarray(store[i], dtype=np.uint64).sum())  # every pixel of every image
        read = time.perf_counter() - t0
        after_read = rss_mb()
        # one training epoch's data path: augmented 224 px batches from the store, as fine-tuning reads them
        from chestxray.data.datamodule import DecodedDataset, make_loader
        from chestxray.data.transforms import to_model_input, train_transform

        t0 = time.perf_counter()
        loader = make_loader(DecodedDataset(store, [torch.tensor(0.0)] * len(store), train_transform(224)), 64, True)
        peak = 0.0
        for x, _, _ in loader:
            to_model_input(x, (0.5,) * 3, (0.5,) * 3)
            peak = max(peak, rss_mb()["RssAnon"])
        epoch = time.perf_counter() - t0
        size_mb = n_images * side * side / 2**20
        print(f"  cache {size_mb:.0f} MB on disk; built in {build:.0f} s, every pixel of every image read in {read:.2f} s")
        print(f"  one augmented training epoch over the store (data path only, 224 px): {epoch:.0f} s, "
              f"peak anonymous RSS {peak:.0f} MB")
        for name, r in (("before", before), ("after build", after_build), ("after reading all", after_read)):
            print(f"  {name:18s} anonymous RSS {r['RssAnon']:7.0f} MB   file-backed RSS {r['RssFile']:7.0f} MB")
        print(f"  anonymous memory grew by {after_read['RssAnon'] - before['RssAnon']:.0f} MB for a {size_mb:.0f} MB dataset"
              " (file-backed pages are the page cache of the memory map: the kernel reclaims them)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="synthetic,real")
    ap.add_argument("--models", default="efficientnet_lite0,resnet18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--naive-epochs", type=int, default=1)
    ap.add_argument("--ft-batches", type=int, default=6)
    ap.add_argument("--memory-images", type=int, default=0, help="run only the memory check with this many images")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.memory_images:
        memory_check(args.memory_images)
        return 0
    import logging
    import warnings

    import lightning as L  # noqa: F401

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        datasets = {}
        for name in args.datasets.split(","):
            if name == "synthetic":
                from chestxray.data.synthetic import make_dataset

                datasets[name] = make_dataset(tmp / "synthetic", {"covid": 100, "normal": 160, "pneumonia": 100},
                                              size=256, seed=0)
            elif name == "real":
                if not REAL.exists():
                    print(f"skipping real data: {REAL} not found")
                    continue
                datasets[name] = REAL
        for dname, root in datasets.items():
            for mname in args.models.split(","):
                print(f"\n== {dname} ({root}), {mname}, {args.img_size} px, batch {args.batch_size}")
                naive_epoch = naive_head_epoch_seconds(
                    {"efficientnet_lite0": "tf_efficientnet_lite0"}.get(mname, mname), root, args.img_size,
                    args.batch_size, args.naive_epochs)
                naive_ft = naive_finetune_ips({"efficientnet_lite0": "tf_efficientnet_lite0"}.get(mname, mname),
                                              root, args.img_size, args.batch_size, args.ft_batches)
                r = chestxray_run(mname, root, args.img_size, args.batch_size, args.ft_batches, tmp / f"cache-{dname}-{mname}")
                naive10 = 10 * naive_epoch
                print(f"  naive head, 10 epochs:      {naive10:8.1f} s  (measured {args.naive_epochs} epoch(s): {naive_epoch:.1f} s each, x10)")
                print(f"  chestxray head, 10 epochs:  {r['head10_total_s']:8.1f} s  (decode cold {r['decode_s']:.1f} s + features "
                      f"{r['extract_s']:.1f} s + 10 epochs {r['head10_train_s']:.1f} s)   speed-up {naive10 / r['head10_total_s']:.1f}x (target >= 8x)")
                print(f"  fine-tune images/s:         naive {naive_ft:6.1f}   chestxray {r['finetune_ips']:6.1f}   "
                      f"ratio {r['finetune_ips'] / naive_ft:.2f}x (target >= 1.3x)")
                print(f"  feature extraction:         {r['extract_ips']:6.1f} img/s vs bare forward {r['ceiling_ips']:6.1f} img/s "
                      f"= {100 * r['extract_ips'] / r['ceiling_ips']:.0f}% of the ceiling (target >= 80%)   [{r['precision']}, channels_last]")
                line = f"  head val ROC-AUC:           {r['val_auc']:.3f} ({r['precision']} features; weights: {r['weights'].split(':')[0]})"
                if "val_auc_fp32_features" in r:
                    line += f", {r['val_auc_fp32_features']:.3f} with fp32 features (same head)"
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
