"""What the benchmarks share: where the data and the runs are, the default run (trained through the public API where it
is missing), reading predictions files, bootstrap AUC intervals, and the naive pipeline the speed-ups are measured
against. Run order and what each benchmark needs: benchmarks/README.md."""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CXR = SHARED / "cxr-nih-cohen" / "labels.csv"
KERMANY = SHARED / "kermany-peds-train" / "labels.csv"
RUNS = ROOT / "runs"
DEFAULT_RUN = RUNS / "generalization" / "A-cxr-nih-cohen"  # the default recipe on cxr-nih-cohen, seed 42
DEFAULT_SEED = 42


def default_run(path: str | Path | None = None) -> Path:
    """A trained run: `path` as given, or the default recipe trained on cxr-nih-cohen (seed 42) in DEFAULT_RUN, trained
    here through `chestxray.train` if no benchmark has trained it yet (benchmarks/generalization.py trains the same)."""
    if path is not None and Path(path) != DEFAULT_RUN:
        return Path(path)
    if not (DEFAULT_RUN / "checkpoints" / "best.ckpt").exists():
        import chestxray

        if not CXR.exists():
            raise SystemExit(f"the default run needs {CXR}")
        print(f"training the default run into {DEFAULT_RUN} (once; a few minutes on a CPU)", file=sys.stderr)
        chestxray.train(CXR, DEFAULT_RUN, seed=DEFAULT_SEED, overwrite=DEFAULT_RUN.exists())
    return DEFAULT_RUN


HEAD_ONLY_RUN = RUNS / "head-cxr-nih-cohen"  # the default recipe's head stage alone on cxr-nih-cohen, seed 42


def head_only_run() -> Path:
    """A head-only run of the default recipe on cxr-nih-cohen (10 head epochs on cached features, seed 42): minutes on a
    CPU where the fine-tuned default run takes about half an hour; trained here through `chestxray.train` if missing."""
    if not (HEAD_ONLY_RUN / "checkpoints" / "best.ckpt").exists():
        import chestxray

        print(f"training the head-only run into {HEAD_ONLY_RUN} (once; minutes on a CPU)", file=sys.stderr)
        chestxray.train(CXR, HEAD_ONLY_RUN, stages="head", epochs_head=10, seed=DEFAULT_SEED, overwrite=HEAD_ONLY_RUN.exists())
    return HEAD_ONLY_RUN


def flag_options(flags: list[str]) -> dict:
    """`chestxray train` flags as the keyword options of `chestxray.train`: --img-size 224 -> img_size='224',
    --calibrate -> calibrate=True, --no-calibrate -> calibrate=False (values are checked and converted by the config)."""
    out, i = {}, 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--"):
            raise SystemExit(f"{flag}: expected a --flag")
        name = flag[2:].replace("-", "_")
        if name.startswith("no_"):
            out[name[3:]] = False
        elif i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            out[name] = flags[i + 1]
            i += 1
        else:
            out[name] = True
        i += 1
    return out


def machine() -> str:
    """The machine a figure was measured on, in one line."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}; torch {torch.__version__} ({torch.get_num_threads()} threads)"


def absolute_rows(manifest: Path) -> tuple[list[str], list[dict]]:
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = list(reader.fieldnames or [])
    for r in rows:
        r["path"] = str((manifest.parent / r["path"]).resolve())
    return fields, rows


def write_rows(path: Path, fields: list[str], rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


EVALS = {"in-domain test": ("A-cxr-nih-cohen/predictions-test.csv", SHARED / "cxr-nih-cohen" / "labels.csv", None),
         "in-domain test, NIH only": ("A-cxr-nih-cohen/predictions-test.csv", SHARED / "cxr-nih-cohen" / "labels.csv", "nih"),
         "-> kermany-peds-train": ("A-on-kermany/predictions-all.csv", SHARED / "kermany-peds-train" / "labels.csv", None)}


def patients(manifest: Path) -> dict[str, str]:
    with open(manifest, newline="") as f:
        return {str((manifest.parent / r["path"]).resolve()): r.get("patient_id") or r["path"] for r in csv.DictReader(f)}


def predictions(path: Path, source: str | None) -> pd.DataFrame | None:
    """A predictions CSV indexed by resolved image path (rows of `source` only, when given); None if missing."""
    if not path.exists():
        print(f"{path}: missing (train with this version, or run `chestxray evaluate`)", file=sys.stderr)
        return None
    t = pd.read_csv(path)
    if source:
        t = t[t["source"].str.startswith(source)]
    t = t.assign(path=[str(Path(p).resolve()) for p in t["path"]])  # relative or absolute, as the data was given
    return t.set_index("path").sort_index()


def auc_ci(y: np.ndarray, p: np.ndarray, groups: list[str], n_boot: int, seed: int = 42) -> tuple[float, list]:
    from chestxray.evaluation.intervals import bootstrap_ci
    from chestxray.evaluation.metrics import binary_metrics

    auc = binary_metrics(y, p)["roc_auc"]
    ci = bootstrap_ci(y, p, {"auc": 0.5}, groups, n_boot, seed)["auc"]["roc_auc"]
    return auc, ci


def endless(loader):
    while True:
        yield from loader


def naive_loaders(root: Path, size: int, bs: int, train_aug: bool):
    import torch
    from torchvision import datasets
    from torchvision import transforms as T

    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    aug = [T.RandomResizedCrop(size, scale=(0.75, 1.0)), T.RandomRotation(7)] if train_aug else [T.Resize((size, size))]
    tf_train = T.Compose([T.Grayscale(3), *aug, T.ToTensor(), norm])
    tf_eval = T.Compose([T.Grayscale(3), T.Resize((size, size)), T.ToTensor(), norm])
    tr = datasets.ImageFolder(root / "train", tf_train)
    va = datasets.ImageFolder(root / "val", tf_eval)
    mk = lambda ds, sh: torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=sh, num_workers=0)  # noqa: E731
    return mk(tr, True), mk(va, False), tr.classes


def naive_head_epoch_seconds(model_name: str, root: Path, size: int, bs: int, epochs: int) -> float:
    """The original notebook's head stage: backbone recomputed every epoch, fp32, PIL transforms."""
    import timm
    import torch

    tr, va, classes = naive_loaders(root, size, bs, train_aug=False)
    normal = [c.lower() for c in classes].index("normal")
    model = timm.create_model(model_name, num_classes=1)
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith(model.pretrained_cfg["classifier"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in tr:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), (y != normal).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x, _ in va:
                model(x)
    return (time.perf_counter() - t0) / epochs


def naive_finetune_ips(model_name: str, root: Path, size: int, bs: int, batches: int) -> float:
    import timm
    import torch

    tr, _, classes = naive_loaders(root, size, bs, train_aug=True)
    model = timm.create_model(model_name, num_classes=1).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    it = endless(tr)
    n, t0 = 0, None
    for b in range(batches + 1):
        x, y = next(it)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if b == 0:
            t0 = time.perf_counter()  # the first batch warms up
        else:
            n += len(x)
    return n / (time.perf_counter() - t0)
