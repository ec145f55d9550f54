

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.evaluation.intervals import bootstrap_ci
from chestxray.evaluation.metrics import binary_metrics, expected_calibration_error
from chestxray.models.calibration import fit_temperature, into_gap, operating_points, sensitivity_threshold
from tests.helpers import invoke, manifest_rows, write_manifest


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    def data(n):
        y = rng.integers(0, 2, n)
        return y, np.clip(0.3 * y + rng.normal(0.35, 0.2, n), 0, 1)
    y, p = data(200)
    ci = bootstrap_ci(y, p, {"t": 0.5}, n_boot=500, seed=1)["t"]
    point = binary_metrics(y, p, 0.5)
    for k in ("roc_auc", "accuracy", "sensitivity", "specificity"):
        assert ci[k][0] <= point[k] <= ci[k][1]
    y2, p2 = data(2000)
    wide, narrow = ci["roc_auc"], bootstrap_ci(y2, p2, {"t": 0.5}, n_boot=500, seed=1)["t"]["roc_auc"]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 2
    assert bootstrap_ci(y, p, {"t": 0.5}, n_boot=200, seed=3) == bootstrap_ci(y, p, {"t": 0.5}, n_boot=200, seed=3)


def test_patient_level_bootstrap_is_wider_for_clustered_data():
    # 20 patients with 10 near-identical images each: image-level resampling overstates the evidence
    rng = np.random.default_rng(1)
    y = np.repeat(rng.integers(0, 2, 20), 10)
    p = np.clip(np.repeat(0.2 * y[::10] + rng.normal(0.4, 0.2, 20), 10) + rng.normal(0, 0.01, 200), 0, 1)
    groups = np.repeat(np.arange(20), 10)
    img = bootstrap_ci(y, p, {"t": 0.5}, None, 500, 0)["t"]["roc_auc"]
    pat = bootstrap_ci(y, p, {"t": 0.5}, list(groups), 500, 0)["t"]["roc_auc"]
    assert pat[1] - pat[0] > 2 * (img[1] - img[0])


def test_operating_points():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.15, 300), 0, 1)
    pts = operating_points(y, p, 0.95)
    assert binary_metrics(y, p, pts["sensitivity_0.95"])["sensitivity"] >= 0.95
    kept = p[p >= pts["sensitivity_0.95"]].min()  # the lowest score still called infected
    assert binary_metrics(y, p, kept + 1e-9)["sensitivity"] < 0.95  # the highest such threshold's gap
    for t in pts.values():  # every point in a gap between scores, where rounding cannot move a decision
        assert not np.any(np.abs(p - t) < 1e-9)
    j = lambda t: binary_metrics(y, p, t)["sensitivity"] + binary_metrics(y, p, t)["specificity"]  # noqa: E731
    assert all(j(pts["youden"]) >= j(t) - 1e-9 for t in np.linspace(0.05, 0.95, 19))
    f1 = lambda t: binary_metrics(y, p, t)["f1_infected"]  # noqa: E731
    assert all(f1(pts["best_f1"]) >= f1(t) - 1e-9 for t in np.linspace(0.05, 0.95, 19))


def test_sensitivity_with_confidence_holds_on_new_images():
    """The confidence rule's promise, checked by simulation: over many small calibration sets drawn from one
    score distribution, the threshold reaches the target sensitivity on the distribution itself in at least
    a share c of the draws; the plain rule (on the calibration images only) falls short about half the time."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    target, c, n_pos = 0.9, 0.9, 74
    met = {0.0: [], c: []}
    for _ in range(400):
        y = np.r_[np.ones(n_pos, int), np.zeros(30, int)]
        p = np.r_[rng.normal(1.0, 1.0, n_pos), rng.normal(-1.0, 1.0, 30)]
        for conf in met:
            t = sensitivity_threshold(y, p, target, conf)
            met[conf].append(norm.sf(t, loc=1.0) >= target)  # the true sensitivity at t
    assert np.mean(met[c]) >= c - 0.04
    assert np.mean(met[0.0]) < 0.6
    y = np.r_[np.ones(n_pos, int), np.zeros(30, int)]
    p = rng.random(len(y))
    assert sensitivity_threshold(y, p, target, c) <= sensitivity_threshold(y, p, target)
    points = operating_points(y, p, target, c)
    assert points["sensitivity_0.9_conf_0.9"] == into_gap(sensitivity_threshold(y, p, target, c), p)


def test_temperature_scaling_fixes_overconfidence():
    torch.manual_seed(0)
    true_logit = torch.randn(2000) * 1.5
    y = torch.bernoulli(torch.sigmoid(true_logit))
    overconfident = true_logit * 4
    t = fit_temperature(overconfident, y, "binary")
    assert t == pytest.approx(4.0, rel=0.15)
    before, _ = expected_calibration_error(y.numpy(), torch.sigmoid(overconfident).numpy())
    after, _ = expected_calibration_error(y.numpy(), torch.sigmoid(overconfident / t).numpy())
    assert after < before / 2


def test_ece_by_hand():
    ece, bins = expected_calibration_error(np.array([1, 0, 1, 1]), np.array([0.9, 0.9, 0.1, 0.1]), n_bins=10)
    # bin 0.9: mean p .9, frac .5 -> |.4| * .5 ; bin 0.1: mean p .1, frac 1 -> |.9| * .5
    assert ece == pytest.approx(0.65)
    assert [b["n"] for b in bins] == [2, 2]


@pytest.mark.slow
def test_cli_operating_point_calibration_and_intervals(tiny_data, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_data / "manifest.csv"), "--out", str(out),
                                   "--stages", "head", "--img-size", "64", "--epochs-head", "2", "--quiet",
                                   "--calibrate", "--operating-point", "sensitivity", "--target-sensitivity", "0.9",
                                   "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["bootstrap"] == {"resamples": 200, "seed": 42, "unit": "patient", "level": 0.95}
    assert {"at_0.5", "at_val_threshold", "at_best_f1", "at_youden", "at_sensitivity_0.9"} <= set(m["binary"])
    lo, hi = m["binary"]["at_val_threshold"]["ci95"]["accuracy"]
    assert lo <= m["binary"]["at_val_threshold"]["accuracy"] <= hi
    assert m["val_threshold"] == m["operating_points"]["sensitivity_0.9"]
    assert "ece_uncalibrated" in m["calibration"] and (out / "plots" / "reliability.png").exists()
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["contract"]
    assert ckpt["threshold"] == m["val_threshold"] and ckpt["temperature"] == m["calibration"]["temperature"]
    # predict uses the stored threshold and temperature
    res = CliRunner().invoke(app, ["predict", str(out), str(tiny_data / "test"), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "p.csv")
    assert (df["threshold"] == ckpt["threshold"]).all()
    assert ((df["p_infected"] >= ckpt["threshold"]) == (df["predicted"] == "infected")).all()


def test_per_source_rows_have_intervals():
    from chestxray.evaluation.intervals import per_source

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    p = np.clip(0.4 * y + rng.normal(0.3, 0.2, 120), 0, 1)
    sources = ["a"] * 60 + ["b"] * 60
    out = per_source(y, p, sources, 0.5, None, 200, 0)
    assert set(out) == {"a", "b"} and out["a"]["n"] == 60
    lo, hi = out["b"]["ci95"]["roc_auc"]
    assert lo <= out["b"]["roc_auc"] <= hi


def test_per_source_auc_needs_enough_images_of_each_class(relative_runs, tiny_data, tmp_path):
    _, runs = relative_runs
    rows = [r for r in manifest_rows(tiny_data) if r["label"]]
    lone = next(r for r in rows if r["split"] == "test" and r["label"] == "normal")
    lone["source"] = "another-hospital"
    for r in rows:  # enough of both classes in the big source
        r["split"] = "test"
    man = write_manifest(tmp_path / "m.csv", rows)
    res = invoke("evaluate", runs[0], "--data", man, "--out", tmp_path / "ev", "--bootstrap", "50")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    small, big = m["per_source"]["another-hospital"], m["per_source"]["synthetic-phantom"]
    assert small["roc_auc"] is None and small["ci95"]["roc_auc"] == [None, None]
    assert small["auc_note"].startswith("n/a (too few normal and infected images: 1 normal, 0 infected")
    assert big["roc_auc"] is not None and "auc_note" not in big
    assert "another-hospital: ROC-AUC and PR-AUC n/a (too few" in res.output
    assert "n/a (too few normal and infected images" in (tmp_path / "ev" / "report.html").read_text()


def test_too_few_note_thresholds():
    from chestxray.evaluation.intervals import per_source

    y = np.array([0] * 9 + [1] * 30 + [0] * 12 + [1] * 12)
    p = np.linspace(0, 1, len(y))
    rows = per_source(y, p, ["a"] * 39 + ["b"] * 24, 0.5)
    assert rows["a"]["roc_auc"] is None and "too few normal images: 9 normal" in rows["a"]["auc_note"]
    assert rows["b"]["roc_auc"] is not None


def test_temperature_fits_on_inference_mode_logits():
    from chestxray.models.calibration import fit_temperature

    with torch.inference_mode():
        logits = torch.linspace(-6, 6, 40).reshape(-1, 1)
        targets = (torch.rand(40, 1, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    t = fit_temperature(logits, targets, "binary")
    assert t > 1.0  # random targets: the overconfident logits are cooled


@pytest.mark.slow
@pytest.mark.parametrize("stages", ["head,finetune", "finetune"])
def test_calibrate_when_finetuning_gives_the_final_model(tiny_data, tmp_path, stages):
    out = tmp_path / "r"
    res = invoke("train", "--data", tiny_data / "manifest.csv", "--out", out, "--img-size", "64", "--batch-size", "16",
                 "--stages", stages, "--epochs-head", "2", "--epochs-finetune", "1", "--calibrate", "--bootstrap", "0", "--quiet")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    if stages == "finetune":
        assert m["final_stage"] == "finetune"
    assert "ece_uncalibrated" in m["calibration"] and (out / "report.html").exists()
    assert torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["contract"]["temperature"] == m["calibration"]["temperature"]


def test_into_gap_keeps_every_decision_and_leaves_no_image_on_the_threshold():
    p = np.array([0.1, 0.3, 0.3, 0.6, 0.9])
    assert into_gap(0.6, p) == pytest.approx(0.45) and into_gap(0.1, p) == pytest.approx(0.05)
    assert into_gap(0.5, p) == 0.5  # not at a score: unchanged
    for t in p:
        assert np.array_equal(p >= into_gap(t, p), p >= t)
