"""Point metrics a clinician and a reviewer ask for, always including binary infected-vs-normal: counts and rates at a
threshold, threshold-free AUCs, multiclass and multilabel figures, calibration error. Intervals are in `intervals`,
the rules that choose thresholds in `models.calibration`."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, classification_report, f1_score, jaccard_score, roc_auc_score


def _safe(fn, *args, **kw) -> float | None:
    try:
        v = float(fn(*args, **kw))
        return v if np.isfinite(v) else None
    except ValueError:  # one class only
        return None


def _ranked(fn, y: np.ndarray, p: np.ndarray) -> float | None:
    """A ranking metric (ROC-AUC, average precision): None where `y` holds one class only (a one-class site or split),
    without asking scikit-learn, which would warn on the terminal and return nan."""
    return _safe(fn, y, p) if len(np.unique(y)) == 2 else None


def confusion_rates(y: np.ndarray, pred: np.ndarray) -> tuple[tuple[int, int, int, int], dict]:
    """((tp, tn, fp, fn), the rates they give) of labels y (1 = infected) and decisions pred (1 = infected). A rate
    whose denominator is zero is None."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    tp, tn = int(np.sum(pred & y)), int(np.sum(~pred & ~y))
    fp, fn = int(np.sum(pred & ~y)), int(np.sum(~pred & y))

    def div(a, b):
        return a / b if b else None

    return (tp, tn, fp, fn), {"accuracy": div(tp + tn, len(y)), "sensitivity": div(tp, tp + fn),
                              "specificity": div(tn, tn + fp), "precision": div(tp, tp + fp), "npv": div(tn, tn + fn)}


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    """y: 1 = infected; p: P(infected). Counts and rates at `threshold`, AUCs threshold-free."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    (tp, tn, fp, fn), rates = confusion_rates(y, pred)
    return {
        "threshold": float(threshold),
        "n": int(len(y)),
        "n_infected": int(y.sum()),
        "n_normal": int(len(y) - y.sum()),
        **rates,
        "f1_infected": _safe(f1_score, y, pred, pos_label=1, zero_division=0),
        "macro_f1": _safe(f1_score, y, pred, average="macro", zero_division=0),
        "roc_auc": _ranked(roc_auc_score, y, p),
        "pr_auc": _ranked(average_precision_score, y, p),
        "confusion_matrix": {"labels": ["normal", "infected"], "rows_true_cols_pred": [[tn, fp], [fn, tp]]},
    }


def multiclass_metrics(y_idx: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    pred = probs.argmax(axis=1)
    report = classification_report(
        y_idx, pred, labels=list(range(len(classes))), target_names=classes, output_dict=True, zero_division=0
    )
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    for t, q in zip(y_idx, pred):
        cm[t, q] += 1
    return {
        "accuracy": float((pred == y_idx).mean()) if len(y_idx) else None,
        "macro_f1": _safe(f1_score, y_idx, pred, average="macro", labels=list(range(len(classes))), zero_division=0),
        "per_class": {c: report[c] for c in classes},
        "confusion_matrix": {"labels": classes, "rows_true_cols_pred": cm.tolist()},
    }


def multilabel_metrics(y: np.ndarray, probs: np.ndarray, labels: list[str], threshold: float = 0.5) -> dict:
    """The original work's figures: sample-averaged F1 and Jaccard accuracy, plus per-label F1."""
    pred = (probs >= threshold).astype(int)
    y = y.astype(int)
    # an all-zero row (Normal) predicted all-zero is a perfect match
    both_empty = (y.sum(1) == 0) & (pred.sum(1) == 0)
    f1_rows = np.where(both_empty, 1.0, 2 * (y & pred).sum(1) / np.maximum(1, y.sum(1) + pred.sum(1)))
    jac_rows = np.where(both_empty, 1.0, (y & pred).sum(1) / np.maximum(1, (y | pred).sum(1)))
    return {
        "threshold": threshold,
        "samples_f1": float(f1_rows.mean()),
        "jaccard_accuracy": float(jac_rows.mean()),
        "exact_match": float((pred == y).all(1).mean()),
        "per_label_f1": {
            name: _safe(f1_score, y[:, j], pred[:, j], zero_division=0) for j, name in enumerate(labels)
        },
        "per_label_roc_auc": {name: _ranked(roc_auc_score, y[:, j], probs[:, j]) for j, name in enumerate(labels)},
        "jaccard_samples_sklearn": _safe(jaccard_score, y, pred, average="samples", zero_division=1),
    }


MIN_PER_CLASS = 10  # fewer images of a class than this: a per-source AUC is not reported


def too_few_note(n_infected: int, n_normal: int, minimum: int = MIN_PER_CLASS) -> str | None:
    """Why an AUC is not reported for a group this small, or None where it is."""
    few = [f"{n} {name}" for n, name in ((n_normal, "normal"), (n_infected, "infected")) if n < minimum]
    if not few:
        return None
    kinds = " and ".join(f.split(" ", 1)[1] for f in few)
    return f"n/a (too few {kinds} images: {', '.join(few)}; at least {minimum} of each needed)"


SCALAR_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1_infected", "macro_f1", "roc_auc", "pr_auc")


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict]]:
    """ECE of P(infected) with equal-width bins, and the bins (for a reliability diagram)."""
    y = np.asarray(y).astype(float)
    p = np.asarray(p, dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    ece, bins = 0.0, []
    for b in range(n_bins):
        m = which == b
        if not m.any():
            continue
        conf, acc = float(p[m].mean()), float(y[m].mean())
        ece += m.mean() * abs(conf - acc)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()), "mean_p": conf, "frac_infected": acc})
    return float(ece), bins
