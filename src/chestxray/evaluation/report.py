"""Turn logits on a split into the full metrics dictionary and a printable summary."""

from __future__ import annotations

import numpy as np
import torch

from ..data.labels import TaskScheme
from ..data.sources import Sample
from .metrics import binary_metrics, multiclass_metrics, multilabel_metrics, per_source

SUMMARY_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1_infected", "macro_f1", "roc_auc", "pr_auc")


def evaluate_logits(scheme: TaskScheme, logits: torch.Tensor, samples: list[Sample], threshold: float) -> dict:
    labels = [s.label for s in samples]
    y = np.array([scheme.is_infected(lab) for lab in labels])
    p = scheme.p_infected(logits).numpy()
    out = {
        "task": scheme.task,
        "binary": {"at_0.5": binary_metrics(y, p, 0.5), "at_val_threshold": binary_metrics(y, p, threshold)},
    }
    probs = scheme.probabilities(logits).numpy()
    if scheme.task == "multiclass":
        y_idx = np.array([scheme.classes.index(lab) for lab in labels])
        out["multiclass"] = multiclass_metrics(y_idx, probs, list(scheme.classes))
    elif scheme.task == "multilabel":
        y_ml = torch.stack([scheme.target(lab) for lab in labels]).numpy()
        out["multilabel"] = multilabel_metrics(y_ml, probs, list(scheme.output_names))
    sources = [s.source for s in samples]
    if any(sources):
        out["per_source"] = per_source(y, p, sources, threshold)
    return out


def _fmt(v) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def summary_table(rows: dict[str, dict]) -> str:
    """rows: name -> binary metrics dict. One line per row, one column per metric."""
    head = f"{'':28s}" + "".join(f"{k[:11]:>12s}" for k in SUMMARY_KEYS)
    lines = [head]
    for name, m in rows.items():
        lines.append(f"{name[:28]:28s}" + "".join(f"{_fmt(m.get(k)):>12s}" for k in SUMMARY_KEYS))
    return "\n".join(lines)
