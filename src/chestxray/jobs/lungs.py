"""The lung segmenter's jobs: train it on a lung-masks folder, evaluate it per source with intervals, and predict masks
and overlays for images a user can look at."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import BOOTSTRAP_RESAMPLES
from ..data.io import read_xray
from ..data.lung_masks import LungDataError, read_lung_masks, select
from ..evaluation.intervals import resamples
from ..files import write_text
from ..models.lungs import LUNG_SIZE, LungFields, LungModel, dice_iou
from ..training.lungs import fit_lungs

log = logging.getLogger("chestxray")

V7_LICENCE = ("Trained on V7 Labs' lung annotations (CC BY 4.0) of images from Cohen's COVID-19 image data collection "
              "(each image's own licence; see ../shared/data/lung-masks/labels.csv). No JSRT/SCR mask was used.")


def train_lungs(data: str | Path, out: str | Path, sources: tuple[str, ...] = ("cohen-v7",), epochs: int = 40,
                batch_size: int = 8, lr: float = 1e-3, seed: int = 0, progress: bool = True, size: int = LUNG_SIZE) -> dict:
    """Train on DATA's train split of `sources` (validation: their val split) into OUT/lungs.pt, on images of `size` px
    a side; evaluate it on the val and test splits of every source; return the figures (also OUT/metrics.json)."""
    out = Path(out)
    if size < 32 or size % 32:
        raise LungDataError(f"the segmenter's side must be a multiple of 32 px (its encoder halves it five times); got {size}")
    samples = read_lung_masks(data)
    train, val = select(samples, "train", sources), select(samples, "val", sources)
    if not train or not val:
        raise LungDataError(f"{data}: no train or val images of {', '.join(sources)} (sources there: "
                            f"{sorted({s.source for s in samples})})")
    log.info("training the lung segmenter on %d images (%s), validating on %d", len(train), ", ".join(sources), len(val))
    t0 = time.time()
    net, history = fit_lungs(train, val, out, epochs, batch_size, lr, seed, progress=progress, size=size)
    model = LungModel(net, img_size=size, meta={
        "command": "chestxray lungs " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if "lungs" in sys.argv else "chestxray.jobs.lungs.train_lungs",
        "data": str(Path(data).resolve()), "trained_on": list(sources), "n_train": len(train), "n_val": len(val),
        "epochs": epochs, "seed": seed, "licence": V7_LICENCE if tuple(sources) == ("cohen-v7",) else "see the data's terms",
        "train_seconds": round(time.time() - t0, 1), **history})
    model.save(out / "lungs.pt")
    saved = LungModel.load(out / "lungs.pt")  # evaluated as written (fp16), as every user gets it
    figures = {split: evaluate_lungs(saved, data, split, n_boot=BOOTSTRAP_RESAMPLES) for split in ("val", "test")}
    result = {"model": str(out / "lungs.pt"), **model.meta, "figures": figures}
    write_text(out / "metrics.json", json.dumps(result, indent=2))
    return result


def mean_ci(values: np.ndarray, groups: list[str], n_boot: int, seed: int = 0) -> list[float | None]:
    """95% patient-level bootstrap interval of a mean."""
    if n_boot <= 0 or len(values) < 2:
        return [None, None]
    means = [float(values[idx].mean()) for idx in resamples(len(values), groups, n_boot, seed)]
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def evaluate_lungs(model: LungModel, data: str | Path, split: str = "test", out: str | Path | None = None,
                   n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Dice and IoU of the segmenter's masks (at 0.5, at each image's own size, ignore regions left out) per source of
    `split`, with 95% patient-level bootstrap intervals; also written to OUT as JSON where given."""
    from ..data.lung_masks import load_sample

    samples = select(read_lung_masks(data), split)
    if not samples:
        raise LungDataError(f"{data}: no images in split '{split}'")
    rows = []
    for s in samples:
        image, mask, ignore = load_sample(s)
        d, j = dice_iou(model.masks([image])[0], mask, ignore)
        rows.append({"image": str(s.image), "source": s.source, "patient_id": s.patient_id, "dice": d, "iou": j})
    result = {"data": str(data), "split": split, "model": str(model.path), "trained_on": model.meta.get("trained_on"),
              "threshold": 0.5, "bootstrap": {"resamples": n_boot, "unit": "patient", "seed": seed}, "sources": {}}
    for source in sorted({r["source"] for r in rows}):
        part = [r for r in rows if r["source"] == source]
        groups = [r["patient_id"] for r in part]
        dice, iou = np.array([r["dice"] for r in part]), np.array([r["iou"] for r in part])
        result["sources"][source] = {
            "n": len(part), "dice": float(dice.mean()), "dice_ci95": mean_ci(dice, groups, n_boot, seed),
            "iou": float(iou.mean()), "iou_ci95": mean_ci(iou, groups, n_boot, seed),
            "dice_min": float(dice.min()), "trained_on": source in (model.meta.get("trained_on") or [])}
    result["images"] = rows
    if out:
        write_text(Path(out), json.dumps(result, indent=2))
    return result


def predict_lungs(model: LungModel, paths: list[str], out: str | Path | None = None) -> list[dict]:
    """Per image: the lung area as a fraction of the image, `lungs_found` and `lung_fields` (the lung check), from one
    pass of the segmenter. With OUT: OUT/<stem>-mask.png (0/255), OUT/<stem>-overlay.png (the lungs tinted on the
    image) and OUT/lungs.csv (these rows, with each mask's file)."""
    import pandas as pd

    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        image = read_xray(path)
        found = LungFields.of(model.probabilities([image])[0])
        mask = found.mask
        row = {"path": str(path), "lung_fraction": float(mask.mean()), "lung_fields": found.reason,
               "lungs_found": found.found}
        if out is not None:
            stem = Path(path).stem
            Image.fromarray((mask * 255).astype(np.uint8)).save(out / f"{stem}-mask.png")
            rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
            rgb[mask] = 0.6 * rgb[mask] + 0.4 * np.array([0, 200, 255], np.float32)
            Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(out / f"{stem}-overlay.png")
            row["mask"] = str(out / f"{stem}-mask.png")
        rows.append(row)
    if out is not None:
        pd.DataFrame(rows).to_csv(out / "lungs.csv", index=False)
    return rows


def package_lungs(run_dir: str | Path, name: str = "lungs-v7") -> Path:
    """Copy RUN/lungs.pt (and its checksum record) into the package as its default segmenter, with NAME.json beside it:
    the SHA-256, the command and data that made it, its licence terms and its figures. `make lungs-weights` runs this."""
    import datetime
    import shutil

    from ..files import checksum_path, sha256
    from ..models.lungs import PACKAGED

    run_dir = Path(run_dir)
    result = json.loads((run_dir / "metrics.json").read_text())
    target = PACKAGED.with_name(f"{name}.pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "lungs.pt", target)
    shutil.copyfile(checksum_path(run_dir / "lungs.pt"), checksum_path(target))
    figures = {split: {s: {k: f[k] for k in ("n", "dice", "dice_ci95", "iou", "iou_ci95", "trained_on")}
                       for s, f in fig["sources"].items()} for split, fig in result["figures"].items()}
    record = {"file": target.name, "sha256": sha256(target), "bytes": target.stat().st_size,
              "command": result["command"], "data": "../shared/data/lung-masks (labels.csv; images of the cohen-v7 rows "
              "in ../shared/data/cxr-nih-cohen)", "trained_on": result["trained_on"], "n_train": result["n_train"],
              "n_val": result["n_val"], "epochs": result["epochs"], "best_val_dice": result["best_val_dice"],
              "seed": result["seed"], "licence": result["licence"], "train_seconds": result["train_seconds"],
              "figures": figures, "packaged": datetime.date.today().isoformat()}
    write_text(target.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return target


if __name__ == "__main__":  # python -m chestxray.jobs.lungs package RUN_DIR
    if len(sys.argv) != 3 or sys.argv[1] != "package":
        raise SystemExit("usage: python -m chestxray.jobs.lungs package RUN_DIR")
    print(f"packaged: {package_lungs(sys.argv[2])}")
