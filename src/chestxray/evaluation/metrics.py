"""Metrics a clinician and a reviewer ask for, always including binary infected-vs-normal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    f1_score,
    jaccard_score,
    roc_auc_score,
)

from ..errors import ChestXrayError


def _safe(fn, *args, **kw) -> float | None:
    try:
        v = float(fn(*args, **kw))
        return v if np.isfinite(v) else None
    except ValueError:  # one class only
        return None


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    """y: 1 = infected; p: P(infected). Counts and rates at `threshold`, AUCs threshold-free."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())

    def div(a, b):
        return a / b if b else None

    return {
        "threshold": float(threshold),
        "n": int(len(y)),
        "n_infected": int(y.sum()),
        "n_normal": int(len(y) - y.sum()),
        "accuracy": div(tp + tn, len(y)),
        "sensitivity": div(tp, tp + fn),
        "specificity": div(tn, tn + fp),
        "precision": div(tp, tp + fp),
        "npv": div(tn, tn + fn),
        "f1_infected": _safe(f1_score, y, pred, pos_label=1, zero_division=0),
        "macro_f1": _safe(f1_score, y, pred, average="macro", zero_division=0),
        "roc_auc": _safe(roc_auc_score, y, p),
        "pr_auc": _safe(average_precision_score, y, p),
        "confusion_matrix": {"labels": ["normal", "infected"], "rows_true_cols_pred": [[tn, fp], [fn, tp]]},
    }


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold that maximises F1 of the infected class (chosen on validation, never test)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    if y.min() == y.max():
        return 0.5
    candidates = np.unique(p)
    best_t, best_f1 = 0.5, -1.0
    for t in candidates:
        pred = p >= t
        tp = np.sum(pred & (y == 1))
        f1 = 2 * tp / (pred.sum() + y.sum())
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t


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
        "per_label_roc_auc": {name: _safe(roc_auc_score, y[:, j], probs[:, j]) for j, name in enumerate(labels)},
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


# --- operating points, bootstrap intervals, calibration ------------------------------------------

SCALAR_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1_infected", "macro_f1", "roc_auc", "pr_auc")


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y).astype(int)
    if y.min() == y.max():
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    i = int(np.argmax(tpr - fpr))
    return float(min(1.0, thr[i]))


def sensitivity_threshold(y: np.ndarray, p: np.ndarray, target: float, confidence: float = 0.0) -> float:
    """The highest threshold whose sensitivity is at least `target`.

    `confidence` 0: on these images. `confidence` c > 0: on new images like these, with probability at least c.
    Under exchangeability the share of new positives scoring at or above the (k+1)-th lowest positive score is
    Beta(n - k, k + 1) distributed; the rule takes the largest k whose Beta tail above `target` is >= c (a
    tolerance bound, as in training-conditional conformal prediction). Few positives cost sensitivity margin.
    """
    pos = np.sort(np.asarray(p, dtype=float)[np.asarray(y).astype(int) == 1])
    if len(pos) == 0:
        return 0.5
    n = len(pos)
    k = int(np.floor((1 - target) * n + 1e-9))  # positives allowed below the threshold
    if confidence > 0:
        from scipy.stats import beta

        k = min(k, next((j for j in range(k, -1, -1) if beta.sf(target, n - j, j + 1) >= confidence), 0))
    return float(pos[min(k, n - 1)])


def sensitivity_point_name(target: float, confidence: float = 0.0) -> str:
    """The operating point's key: sensitivity_0.9, or sensitivity_0.9_conf_0.9 with a confidence bound."""
    return f"sensitivity_{target:g}" + (f"_conf_{confidence:g}" if confidence > 0 else "")


def operating_points(y: np.ndarray, p: np.ndarray, target_sensitivity: float = 0.95, confidence: float = 0.0) -> dict[str, float]:
    """Thresholds chosen on validation: best F1, Youden's J, and a target sensitivity (see sensitivity_threshold)."""
    return {
        "best_f1": best_f1_threshold(y, p),
        "youden": youden_threshold(y, p),
        sensitivity_point_name(target_sensitivity, confidence): sensitivity_threshold(y, p, target_sensitivity, confidence),
    }


@dataclass(frozen=True)
class ThresholdRule:
    """How the stored threshold is chosen: best_f1, youden, or sensitivity (a target, optionally with a
    confidence bound). A field left None is taken from another rule by `filled` (adapt: the run's own)."""

    name: str | None = None  # best_f1 | youden | sensitivity
    target_sensitivity: float | None = None
    confidence: float | None = None

    @classmethod
    def of_config(cls, train: dict) -> "ThresholdRule":
        """The rule a run was trained with, from the `train` section of its config."""
        return cls(train.get("operating_point", "best_f1"), train.get("target_sensitivity", 0.95),
                   train.get("target_confidence", 0.0))

    def filled(self, other: "ThresholdRule") -> "ThresholdRule":
        return ThresholdRule(*(a if a is not None else b for a, b in
                               ((self.name, other.name), (self.target_sensitivity, other.target_sensitivity),
                                (self.confidence, other.confidence))))

    def choose(self, y: np.ndarray, p: np.ndarray) -> tuple[str, dict[str, float]]:
        """(the chosen point's name, every operating point) on these labels and scores."""
        points = operating_points(y, p, self.target_sensitivity or 0.95, self.confidence or 0.0)
        name = self.name or "best_f1"
        return next(k for k in points if k == name or (name == "sensitivity" and k.startswith("sensitivity_"))), points


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
    pred = p >= t
    tp = float(np.sum(pred & (y == 1)))
    tn = float(np.sum(~pred & (y == 0)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))

    def div(a, b):
        return a / b if b else None

    f1_pos = div(2 * tp, 2 * tp + fp + fn) or 0.0
    f1_neg = div(2 * tn, 2 * tn + fn + fp) or 0.0
    return {
        "accuracy": div(tp + tn, len(y)),
        "sensitivity": div(tp, tp + fn),
        "specificity": div(tn, tn + fp),
        "precision": div(tp, tp + fp),
        "npv": div(tn, tn + fn),
        "f1_infected": f1_pos,
        "macro_f1": (f1_pos + f1_neg) / 2,
    }


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


def bootstrap_auc_ci(y: np.ndarray, p: np.ndarray, groups: list | None = None, n_boot: int = 1000, seed: int = 0,
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
    n_boot: int = 1000,
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


def fit_temperature(logits, targets, task: str) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising validation NLL of logits / T."""
    import torch
    import torch.nn.functional as F

    # a copy outside inference mode: logits computed under torch.inference_mode cannot enter autograd
    logits = logits.detach().float().clone()
    targets = targets.detach().clone()
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def nll():
        opt.zero_grad()
        z = logits / log_t.exp()
        if task == "multiclass":
            loss = F.cross_entropy(z, targets.long())
        else:
            loss = F.binary_cross_entropy_with_logits(z.reshape(targets.shape), targets.float())
        loss.backward()
        return loss

    opt.step(nll)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


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
