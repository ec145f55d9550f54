import numpy as np
import pytest

from chestxray.evaluation.metrics import binary_metrics, multiclass_metrics, multilabel_metrics
from chestxray.models.calibration import best_f1_threshold


def test_binary_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.4, 0.7])
    m = binary_metrics(y, p, 0.5)
    # pred: 1 1 0 0 1 0 0 1 -> tp=3 fn=1 fp=1 tn=3
    assert m["confusion_matrix"]["rows_true_cols_pred"] == [[3, 1], [1, 3]]
    assert m["sensitivity"] == 0.75 and m["specificity"] == 0.75 and m["precision"] == 0.75
    assert m["accuracy"] == 0.75 and m["f1_infected"] == pytest.approx(0.75)
    # AUC: pairs (pos > neg) out of 16: 0.9,0.8,0.7 beat all 4 negatives (12), 0.3 beats 0.2 and 0.1 (2)
    assert m["roc_auc"] == pytest.approx(14 / 16)


def test_single_class_gives_none_auc_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's 'Only one class is present' would reach a user's terminal
        m = binary_metrics(np.array([1, 1]), np.array([0.2, 0.9]))
        n = binary_metrics(np.array([0, 0, 0]), np.array([0.2, 0.9, 0.4]))
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["specificity"] is None
    assert n["roc_auc"] is None and n["pr_auc"] is None and n["sensitivity"] is None


def test_best_f1_threshold_separates():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    t = best_f1_threshold(y, p)
    assert 0.35 < t <= 0.4
    assert binary_metrics(y, p, t)["f1_infected"] == 1.0


def test_multiclass_report():
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 1]]
    m = multiclass_metrics(y, probs, ["covid", "normal", "pneumonia"])
    assert m["accuracy"] == 0.75 and m["per_class"]["pneumonia"]["recall"] == 0.5
    assert m["confusion_matrix"]["rows_true_cols_pred"][2] == [0, 1, 1]


def test_multilabel_samples_f1_and_jaccard():
    y = np.array([[1, 1], [0, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.1, 0.8], [0.1, 0.1]])
    m = multilabel_metrics(y, probs, ["covid", "pneumonia"])
    # rows: f1 = 2*1/(2+1)=2/3, 1, 1 (normal predicted normal); jaccard = 1/2, 1, 1
    assert m["samples_f1"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert m["jaccard_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)


@pytest.mark.parametrize("grouped", [False, True])
def test_the_auc_only_bootstrap_gives_the_full_bootstraps_interval(grouped):
    """The shortcut audit's intervals come from the AUC-only bootstrap: the same resamples, the same interval."""
    from chestxray.evaluation.intervals import bootstrap_auc_ci, bootstrap_ci

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 80), 0, 1)
    groups = [f"patient{i // 2}" for i in range(80)] if grouped else None
    full = bootstrap_ci(y, p, {"t": 0.5}, groups, 300, seed=11)["t"]["roc_auc"]
    assert bootstrap_auc_ci(y, p, groups, 300, seed=11) == full
    assert bootstrap_auc_ci(y, p, groups, 300, seed=12) != full  # the seed matters: the comparison could fail
