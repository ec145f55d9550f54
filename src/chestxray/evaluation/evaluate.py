"""Evaluate a model on a split: metrics.json and plots in one folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import RESEARCH_NOTE, SYNTHETIC_NOTE
from ..data.datamodule import decode_split
from ..data.labels import TaskScheme
from ..data.sources import DataError, Sample, evaluation_samples, is_synthetic
from ..inference.predict import load_model, predict_logits
from . import plots
from .report import evaluate_logits



def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def write_evaluation(
    outdir: Path,
    scheme: TaskScheme,
    logits: torch.Tensor,
    samples: list[Sample],
    threshold: float,
    header: dict,
    history: pd.DataFrame | None = None,
    operating_points: dict[str, float] | None = None,
    temperature: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Compute the metrics of one split, write metrics.json and plots/ under `outdir`, return the dict."""
    outdir.mkdir(parents=True, exist_ok=True)
    plot_dir = outdir / "plots"
    plot_dir.mkdir(exist_ok=True)
    note = "SYNTHETIC DATA" if header.get("synthetic") else None
    metrics = {**header, "notes": [RESEARCH_NOTE] + ([SYNTHETIC_NOTE] if note else []), **evaluate_logits(scheme, logits, samples, threshold, operating_points, temperature, n_boot, seed)}
    write_json(outdir / "metrics.json", metrics)
    y = np.array([scheme.is_infected(s.label) for s in samples])
    p = scheme.p_infected(logits / temperature).numpy()
    plots.reliability(metrics["calibration"], plot_dir / "reliability.png", note)
    plots.roc_pr(y, p, plot_dir, f"{header.get('split', '')} AUC={metrics['binary']['at_0.5']['roc_auc'] or float('nan'):.3f}", note)
    cm = metrics["binary"]["at_val_threshold"]["confusion_matrix"]
    plots.confusion(cm["rows_true_cols_pred"], cm["labels"], plot_dir / "confusion.png", f"threshold {threshold:.3f}")
    if "multiclass" in metrics:
        cm = metrics["multiclass"]["confusion_matrix"]
        plots.confusion(cm["rows_true_cols_pred"], cm["labels"], plot_dir / "confusion_multiclass.png", "argmax")
    if history is not None and len(history):
        plots.learning_curves(history, plot_dir / "learning_curves.png", note)
    return metrics


def evaluate_run(
    run: str | Path, data: str | Path, split: str | None = None, out: str | Path | None = None, skip_bad: bool = False,
    n_boot: int = 1000, seed: int = 0,
) -> tuple[dict, Path]:
    """Evaluate a trained run on `split` of `data` (the training data or another dataset).

    `split` None: the test split, or all of `data` where it has no train/val/test splits (split 'all').
    """
    loaded = load_model(run)
    split, samples = evaluation_samples(data, split)
    unknown = sorted({s.label for s in samples} - set(loaded.scheme.classes))
    if unknown:
        raise DataError(f"{data}: labels {unknown} in split '{split}' are not among the model's classes {list(loaded.scheme.classes)}")
    decoded = decode_split(samples, loaded.img_size, skip_bad, desc=f"reading {split}")
    logits = predict_logits(loaded.model, decoded.images, loaded.img_size, loaded.mean, loaded.std)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent.parent
    # the same files in another form (folder vs its manifest) still count as the training data
    trained_on = loaded.training_data
    here = Path(data).resolve()
    roots = {p if p.is_dir() else p.parent for p in (trained_on, here)}
    external = len(roots) != 1
    out = Path(out) if out else run_dir / "eval" / f"{Path(data).stem}-{split}"
    history_path = run_dir / "history.csv"
    header = {
        "data": str(data),
        "split": split,
        "external": external,
        "synthetic": is_synthetic(data),
        "model": loaded.meta.get("model_name"),
        "stage": loaded.meta.get("stage"),
        "val_threshold": loaded.threshold,
        "unreadable_skipped": [str(e) for e in decoded.errors],
    }
    history = pd.read_csv(history_path) if history_path.exists() else None
    metrics = write_evaluation(
        out, loaded.scheme, logits, decoded.samples, loaded.threshold, header, history,
        loaded.meta.get("thresholds"), loaded.temperature, n_boot, seed,
    )
    from ..inference.explain import cam_examples
    from .html import write_report

    write_report(out, metrics, loaded.meta.get("config"), cam_examples(loaded, decoded.images, decoded.samples, logits))
    return metrics, out
