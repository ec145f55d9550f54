"""Calibration of a model's outputs on validation: temperature scaling and the operating points (thresholds on
P(infected)) a run stores. Training chooses with these; evaluation reports at the thresholds they chose."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import CalibrationConfig

DEFAULT_TARGET_SENSITIVITY = CalibrationConfig.target_sensitivity  # the sensitivity point's target unless a run says otherwise

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


def into_gap(t: float, p: np.ndarray) -> float:
    """A threshold chosen at one of the scores `p`, moved to the middle of the gap below that score (to t / 2 below
    the lowest): each of these images is decided as at `t` (p >= the result exactly where p >= t), and none lies on
    the threshold itself, where another runtime's or device's last bits (about 1e-6) would decide it either way."""
    p = np.asarray(p, dtype=float)
    if not np.any(p == t):
        return t
    below = p[p < t]
    return float((t + below.max()) / 2 if below.size else t / 2)


def operating_points(y: np.ndarray, p: np.ndarray, target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY, confidence: float = 0.0) -> dict[str, float]:
    """Thresholds chosen on validation: best F1, Youden's J, and a target sensitivity (see sensitivity_threshold),
    each in the gap below the score it was chosen at (`into_gap`): the same decisions on these images, none on the
    threshold."""
    return {
        "best_f1": into_gap(best_f1_threshold(y, p), p),
        "youden": into_gap(youden_threshold(y, p), p),
        sensitivity_point_name(target_sensitivity, confidence): into_gap(
            sensitivity_threshold(y, p, target_sensitivity, confidence), p),
    }


@dataclass(frozen=True)
class ThresholdRule:
    """How the stored threshold is chosen: best_f1, youden, or sensitivity (a target, optionally with a
    confidence bound). A field left None is taken from another rule by `filled` (adapt: the run's own)."""

    name: str | None = None  # best_f1 | youden | sensitivity
    target_sensitivity: float | None = None
    confidence: float | None = None

    @classmethod
    def of_config(cls, calibration: CalibrationConfig) -> "ThresholdRule":
        """The rule a run was trained with, from the calibration section of its config."""
        return cls(calibration.operating_point, calibration.target_sensitivity, calibration.target_confidence)

    def filled(self, other: "ThresholdRule") -> "ThresholdRule":
        return ThresholdRule(*(a if a is not None else b for a, b in
                               ((self.name, other.name), (self.target_sensitivity, other.target_sensitivity),
                                (self.confidence, other.confidence))))

    def choose(self, y: np.ndarray, p: np.ndarray) -> tuple[str, dict[str, float]]:
        """(the chosen point's name, every operating point) on these labels and scores."""
        points = operating_points(y, p, self.target_sensitivity or DEFAULT_TARGET_SENSITIVITY, self.confidence or 0.0)
        name = self.name or "best_f1"
        return next(k for k in points if k == name or (name == "sensitivity" and k.startswith("sensitivity_"))), points


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
