

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.evaluation.intervals import delong_test
from tests.helpers import invoke


@pytest.mark.slow
def test_delong_properties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    good = y + rng.normal(0, 0.6, 300)
    weak = y + rng.normal(0, 2.0, 300)
    r = delong_test(y, good, weak)
    assert r["auc_1"] == pytest.approx(roc_auc_score(y, good)) and r["auc_2"] == pytest.approx(roc_auc_score(y, weak))
    assert r["difference"] > 0 and r["p_value"] < 1e-3 and r["ci95"][0] > 0
    swapped = delong_test(y, weak, good)
    assert swapped["difference"] == pytest.approx(-r["difference"]) and swapped["p_value"] == pytest.approx(r["p_value"])
    same = delong_test(y, good, good)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    # the standard error agrees with a paired bootstrap of the AUC difference
    diffs = []
    for _ in range(400):
        i = rng.integers(0, 300, 300)
        diffs.append(roc_auc_score(y[i], good[i]) - roc_auc_score(y[i], weak[i]))
    assert r["se"] == pytest.approx(np.std(diffs), rel=0.25)


@pytest.mark.slow
def test_compare_cli(tiny_data, tmp_path):
    runner = CliRunner()
    runs = []
    for loss in ("ce", "focal"):
        out = tmp_path / loss
        res = runner.invoke(app, ["train", "--data", str(tiny_data / "manifest.csv"), "--out", str(out), "--loss", loss,
                                  "--stages", "head", "--img-size", "64", "--epochs-head", "2", "--quiet", "--bootstrap", "0"])
        assert res.exit_code == 0, res.output
        runs.append(str(out))
    res = runner.invoke(app, ["compare", *runs, "--out", str(tmp_path / "cmp"), "--bootstrap", "100"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [row["loss"] for row in r["runs"]] == ["ce", "focal"] and r["n"] == 10
    assert len(r["delong_vs_first"]) == 1
    test = r["delong_vs_first"][0]
    # DeLong's AUCs (midranks) are the table's AUCs (sklearn), and its test is of these two runs' predictions
    assert test["auc_1"] == pytest.approx(r["runs"][0]["roc_auc"]) and test["auc_2"] == pytest.approx(r["runs"][1]["roc_auc"])
    from chestxray.data.sources import load_samples
    from chestxray.models.predictor import Predictor

    samples = [s for s in load_samples(tiny_data)["test"]]
    ps = []
    for run in runs:
        predictor = Predictor.load(run)
        ps.append(predictor.p_infected(predictor.logits(predictor.decode(samples).images)))
    y = np.array([s.label != "normal" for s in samples]).astype(int)
    assert test["p_value"] == pytest.approx(delong_test(y, ps[0], ps[1])["p_value"])
    assert (tmp_path / "cmp" / "roc_compare.png").exists() and "DeLong" in res.output
    res = runner.invoke(app, ["compare", runs[0]])
    assert res.exit_code == 2 and "at least two runs" in res.output


def test_compare_from_another_directory(relative_runs, tmp_path, monkeypatch):
    home, runs = relative_runs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = invoke("compare", *runs, "--out", elsewhere / "cmp", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    r = json.loads((elsewhere / "cmp" / "compare.json").read_text())
    assert r["data"] == str((home / "phantoms" / "manifest.csv").resolve()) and r["split"] == "test" and r["n"] == 10
