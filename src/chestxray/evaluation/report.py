"""Turn logits on a split into the full metrics dictionary and a printable summary."""

from __future__ import annotations

import numpy as np
import torch

from ..data.labels import TaskScheme
from ..data.sources import Sample
from .metrics import (
    binary_metrics,
    bootstrap_ci,
    expected_calibration_error,
    multiclass_metrics,
    multilabel_metrics,
    per_source,
)

SUMMARY_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1_infected", "macro_f1", "roc_auc", "pr_auc")


def evaluate_logits(
    scheme: TaskScheme,
    logits: torch.Tensor,
    samples: list[Sample],
    threshold: float,
    operating_points: dict[str, float] | None = None,
    temperature: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """All metrics of one split. `logits` are raw; `temperature` (fitted on validation) is applied here.

    Every binary metric comes with a 95% bootstrap interval (patient-level where patient ids exist).
    """
    labels = [s.label for s in samples]
    y = np.array([scheme.is_infected(lab) for lab in labels])
    raw_p = scheme.p_infected(logits).numpy()
    logits = logits / temperature
    p = scheme.p_infected(logits).numpy()
    points = {"0.5": 0.5, "val_threshold": threshold, **(operating_points or {})}
    patients = [s.patient_id for s in samples]
    groups = [pid or f"__image{i}" for i, pid in enumerate(patients)] if any(patients) else None
    cis = bootstrap_ci(y, p, points, groups, n_boot, seed) if n_boot > 0 else {}
    binary = {}
    for name, t in points.items():
        binary[f"at_{name}"] = {**binary_metrics(y, p, t), "ci95": cis.get(name, {})}
    ece, bins = expected_calibration_error(y, p)
    calibration = {"temperature": temperature, "ece": ece, "bins": bins}
    if temperature != 1.0:
        calibration["ece_uncalibrated"], calibration["bins_uncalibrated"] = expected_calibration_error(y, raw_p)
    out = {
        "task": scheme.task,
        "binary": binary,
        "operating_points": points,
        "bootstrap": {"resamples": n_boot, "seed": seed, "unit": "patient" if groups else "image", "level": 0.95},
        "calibration": calibration,
    }
    probs = scheme.probabilities(logits).numpy()
    if scheme.task == "multiclass":
        y_idx = np.array([scheme.class_index(lab) for lab in labels])
        out["multiclass"] = multiclass_metrics(y_idx, probs, list(scheme.classes))
    elif scheme.task == "multilabel":
        y_ml = torch.stack([scheme.target(lab) for lab in labels]).numpy()
        out["multilabel"] = multilabel_metrics(y_ml, probs, list(scheme.output_names))
    sources = [s.source for s in samples]
    if any(sources):
        out["per_source"] = per_source(y, p, sources, threshold, groups, n_boot, seed)
    return out


def ci_line(metrics: dict, name: str = "at_val_threshold") -> str:
    """One line of 95% intervals for the main metrics of one operating point."""
    b = metrics.get("bootstrap", {})
    ci = metrics["binary"][name].get("ci95") or {}
    if not ci:
        return ""
    parts = [f"{k} [{_fmt(ci[k][0]).strip()}, {_fmt(ci[k][1]).strip()}]"
             for k in ("roc_auc", "accuracy", "sensitivity", "specificity", "f1_infected") if k in ci]
    return f"95% CI ({b.get('resamples')} {b.get('unit')}-level bootstrap resamples, seed {b.get('seed')}): " + ", ".join(parts)


def _fmt(v) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def summary_table(rows: dict[str, dict]) -> str:
    """rows: name -> binary metrics dict. One line per row, one column per metric."""
    head = f"{'':28s}" + "".join(f"{k[:11]:>12s}" for k in SUMMARY_KEYS)
    lines = [head]
    for name, m in rows.items():
        lines.append(f"{name[:28]:28s}" + "".join(f"{_fmt(m.get(k)):>12s}" for k in SUMMARY_KEYS))
    lines += [f"{name.strip()}: ROC-AUC and PR-AUC {m['auc_note']}" for name, m in rows.items() if m.get("auc_note")]
    return "\n".join(lines)
