"""Uncertainty of the figures: percentile bootstrap intervals (whole patients resampled where ids are known),
per-source figures with their intervals, and DeLong's test for two correlated ROC-AUCs."""

from __future__ import annotations

import numpy as np

from ..config import BOOTSTRAP_RESAMPLES
from ..errors import ChestXrayError
from .metrics import SCALAR_KEYS, binary_metrics, confusion_rates, too_few_note


def per_source(
    y: np.ndarray, p: np.ndarray, sources: list[str | None], threshold: float,
    groups: list | None = None, n_boot: int = 0, seed: int = 0,
) -> dict:
    """Binary metrics per source, each with its own bootstrap interval when n_boot > 0.

    A source with fewer than MIN_PER_CLASS images of either class gets no ROC-AUC or PR-AUC
    (None, with `auc_note` saying why): a figure from one or two images of a class is noise.
    """
    out = {}
    for src in sorted({s for s in sources if s}):
        m = np.array([s == src for s in sources])
        row = binary_metrics(y[m], p[m], threshold)
        if n_boot:
            g = [groups[i] for i in np.nonzero(m)[0]] if groups is not None else None
            row["ci95"] = bootstrap_ci(y[m], p[m], {"t": threshold}, g, n_boot, seed)["t"]
        note = too_few_note(row["n_infected"], row["n_normal"])
        if note:
            row.update(roc_auc=None, pr_auc=None, auc_note=note)
            for k in ("roc_auc", "pr_auc"):
                if "ci95" in row:
                    row["ci95"][k] = [None, None]
        out[src] = row
    return out


def _fast_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from scipy.stats import rankdata

    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return None
    r = rankdata(p)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _fast_ap(y: np.ndarray, p: np.ndarray) -> float | None:
    """Average precision, the same step-wise formula as sklearn's average_precision_score."""
    if y.sum() == 0:
        return None
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1]  # the last index of each distinct score
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _threshold_metrics(y: np.ndarray, p: np.ndarray, t: float) -> dict:
    """`binary_metrics`' rates at t without scikit-learn's overhead (F1 from the counts), for each resample."""
    (tp, tn, fp, fn), rates = confusion_rates(y, p >= t)
    f1_pos = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    f1_neg = 2 * tn / (2 * tn + fn + fp) if tn + fn + fp else 0.0
    return {**rates, "f1_infected": f1_pos, "macro_f1": (f1_pos + f1_neg) / 2}


def resamples(n: int, groups: list | None, n_boot: int, seed: int):
    """The bootstrap's resampled index arrays, one per resample: whole patients where `groups` are given, else images.
    The same (n, groups, seed) give the same sequence, whatever is computed on it."""
    rng = np.random.default_rng(seed)
    members = None
    if groups is not None:
        _, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        members = [np.nonzero(inverse == g)[0] for g in range(inverse.max() + 1)]
    for _ in range(n_boot):
        if members is not None:
            pick = rng.integers(0, len(members), len(members))
            yield np.concatenate([members[g] for g in pick])
        else:
            yield rng.integers(0, n, n)


def bootstrap_auc_ci(y: np.ndarray, p: np.ndarray, groups: list | None = None, n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> list[float | None]:
    """The ROC-AUC interval of `bootstrap_ci` (the same resamples, so the same interval), computing nothing else."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    aucs = [a for a in (_fast_auc(y[idx], p[idx]) for idx in resamples(len(y), groups, n_boot, seed)) if a is not None]
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return [float(np.percentile(aucs, lo)), float(np.percentile(aucs, hi))] if len(aucs) >= 10 else [None, None]


def bootstrap_ci(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: dict[str, float],
    groups: list | None = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, list[float | None]]]:
    """Percentile bootstrap intervals of every scalar metric at each threshold.

    With `groups` (patient ids), whole patients are resampled, so images of one patient stay together.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    samples: dict[str, dict[str, list[float]]] = {name: {k: [] for k in SCALAR_KEYS} for name in thresholds}
    for idx in resamples(len(y), groups, n_boot, seed):
        yb, pb = y[idx], p[idx]
        auc, ap = _fast_auc(yb, pb), _fast_ap(yb, pb)
        for name, t in thresholds.items():
            m = _threshold_metrics(yb, pb, t)
            m["roc_auc"], m["pr_auc"] = auc, ap
            for k in SCALAR_KEYS:
                if m[k] is not None:
                    samples[name][k].append(m[k])
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {
        name: {k: ([float(np.percentile(v, lo)), float(np.percentile(v, hi))] if len(v) >= 10 else [None, None])
               for k, v in per.items()}
        for name, per in samples.items()
    }


def _midrank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    z = x[order]
    n = len(x)
    t = np.zeros(n)
    i = 0
    while i < n:
        j = i
        while j < n and z[j] == z[i]:
            j += 1
        t[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n)
    out[order] = t
    return out


def delong_test(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> dict:
    """DeLong's test for two correlated ROC-AUCs on the same cases (fast algorithm of Sun & Xu 2014)."""
    from scipy.stats import norm

    y = np.asarray(y).astype(int)
    preds = np.vstack([p1, p2]).astype(float)
    pos, neg = preds[:, y == 1], preds[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ChestXrayError("DeLong's test needs at least two infected and two normal cases")
    tx = np.array([_midrank(r) for r in pos])
    ty = np.array([_midrank(r) for r in neg])
    tz = np.array([_midrank(r) for r in np.hstack([pos, neg])])
    aucs = tz[:, :m].sum(1) / (m * n) - (m + 1) / (2 * n)
    v01 = (tz[:, :m] - tx) / n
    v10 = 1 - (tz[:, m:] - ty) / m
    s = np.cov(v01) / m + np.cov(v10) / n
    diff = float(aucs[0] - aucs[1])
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    se = np.sqrt(max(var, 0.0))
    z = diff / se if se > 0 else 0.0
    p = float(2 * norm.sf(abs(z))) if se > 0 else 1.0
    return {"auc_1": float(aucs[0]), "auc_2": float(aucs[1]), "difference": diff, "se": float(se),
            "ci95": [diff - 1.96 * se, diff + 1.96 * se], "z": float(z), "p_value": p}
