"""The demo job: synthetic phantoms (or given data), both stages, evaluation, predictions of the unlabelled images."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import Config
from ..data.sources import load_samples
from ..data.synthetic import make_dataset
from ..models.predictor import Predictor
from .train import train_run

log = logging.getLogger("chestxray")


def demo_run(out: str | Path, data: str | None = None, img_size: int = 128, images: int = 300, progress: bool = True) -> dict:
    """Train a small run in OUT/run on `data` (default: synthetic phantoms generated in OUT/synthetic-data) and predict
    its unlabelled images (or its test split) into OUT/run/predictions.csv. The run is a scratch folder: replaced."""
    out = Path(out)
    if data is None:
        data_dir = out / "synthetic-data"
        if not (data_dir / "manifest.csv").exists():
            log.info("generating SYNTHETIC chest phantoms (not X-rays) in %s ...", data_dir)
            n = max(30, images)
            counts = {"covid": n * 4 // 15, "normal": n - 2 * (n * 4 // 15), "pneumonia": n * 4 // 15}
            make_dataset(data_dir, counts, n_unlabelled=12, seed=0)
        data = str(data_dir / "manifest.csv")
    cfg = Config()
    cfg.update({"data": data, "img_size": img_size, "epochs_head": 6, "epochs_finetune": 3, "lr": 3e-3, "lr_finetune": 1e-3})
    run = out / "run"
    metrics = train_run(cfg, run, progress=progress, overwrite=True)
    splits = load_samples(data)
    name = "unlabelled" if splits.get("unlabelled") else "test"
    predicted = 0
    if splits.get(name):
        df, _ = Predictor.load(run).predict(splits[name])
        df.to_csv(run / "predictions.csv", index=False)
        predicted = len(df)
    return {"metrics": metrics, "run": run, "predicted": predicted, "predicted_split": name}
