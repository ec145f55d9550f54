"""One run on the real cxr-nih-cohen chest X-rays (../shared/data), asserting a quality floor.

Head stage only, small input, few epochs, so that it fits the test budget on a 2-core CPU. The full
recipe's figures come from benchmarks/quality.py.
"""

import json

import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from tests.helpers import SHARED_DATA

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "labels.csv").exists(), reason=f"real data not found at {SHARED_DATA}"
)


def test_head_stage_on_real_data_beats_the_floor(tmp_path):
    out = tmp_path / "real"
    res = CliRunner().invoke(app, ["train", "--data", str(SHARED_DATA / "labels.csv"), "--out", str(out),
                                   "--stages", "head", "--img-size", "128", "--epochs-head", "3", "--no-audit", "--no-lung-check",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["synthetic"] is False and m["split"] == "test"
    assert m["binary"]["at_0.5"]["n"] == 218 and m["binary"]["at_0.5"]["n_infected"] == 136
    test = m["binary"]["at_val_threshold"]
    # floor: well above chance on the held-out, patient-level test split
    assert test["roc_auc"] >= 0.90, test
    assert test["accuracy"] >= 0.80, test
    sources = set(m["per_source"])
    assert "cohen-covid-chestxray-dataset" in sources and any(s.startswith("nih-chestxray8") for s in sources)
    # the same run exported to ONNX (verified on its real validation images) predicts the same table on real test images
    import pandas as pd

    onnx_file = tmp_path / "real.onnx"
    res = CliRunner().invoke(app, ["export", str(out), "--out", str(onnx_file)])
    assert res.exit_code == 0, res.output
    split = pd.read_csv(out / "split.csv")
    images = split[split["split"] == "test"]["path"].tolist()[::10]
    tables = []
    for model in (out, onnx_file):
        res = CliRunner().invoke(app, ["predict", str(model), *images, "--out", str(tmp_path / f"{model.name}.csv"), "--no-lungs"])
        assert res.exit_code == 0, res.output
        tables.append(pd.read_csv(tmp_path / f"{model.name}.csv"))
    a, b = tables
    assert list(a["path"]) == list(b["path"]) and len(a) == len(images)
    assert (a["p_infected"] - b["p_infected"]).abs().max() <= 1e-4
    assert ((a["predicted"] == b["predicted"]) | ((a["p_infected"] - a["threshold"]).abs() < 1e-4)).all()
