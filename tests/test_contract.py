"""The model contract: the decisions a run stores come from the forward pass `predict` runs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.evaluation.metrics import binary_metrics, operating_points
from chestxray.data.transforms import Preprocessing
from chestxray.inference.predictor import Predictor


@pytest.fixture(scope="module")
def two_stage_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("contract") / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(out), "--img-size", "64", "--batch-size", "16",
                                   "--epochs-head", "2", "--epochs-finetune", "1", "--calibrate", "--bootstrap", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("stage", ["final", "head"])
def test_predict_on_validation_reproduces_the_stored_decisions(two_stage_run, tmp_path, stage):
    """predict on the validation images gives back the stored best-F1 threshold and validation ROC-AUC exactly."""
    m = json.loads((two_stage_run / "metrics.json").read_text())
    split = pd.read_csv(two_stage_run / "split.csv")
    val = split[split["split"] == "val"]
    ckpt = two_stage_run / "checkpoints" / "best.ckpt"
    if stage == "head":  # the other stage's scores came from the same path: check them through its weights too
        head = torch.load(ckpt, weights_only=True)
        lightning_head = torch.load(two_stage_run / "checkpoints" / "head" / "best.ckpt", weights_only=False)["state_dict"]
        head["state_dict"] = {k[len("model."):]: v for k, v in lightning_head.items() if k.startswith("model.")}
        ckpt = tmp_path / "head.ckpt"
        torch.save(head, ckpt)
        stage = "head"
    else:
        stage = m["final_stage"]
    res = CliRunner().invoke(app, ["predict", str(ckpt), *val["path"], "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    p = pd.read_csv(tmp_path / "p.csv")
    assert list(p["path"]) == list(val["path"])
    y = (val["label"] != "normal").astype(int).to_numpy()
    stored = m["stages"][stage]["val"]
    predictor = Predictor.load(ckpt)
    # the stored metrics are of the uncalibrated logits; the CSV holds calibrated probabilities (same order)
    assert binary_metrics(y, p["p_infected"].to_numpy())["roc_auc"] == stored["roc_auc"]
    if stage == m["final_stage"]:
        points = operating_points(y, p["p_infected"].to_numpy(), 0.95)
        assert points["best_f1"] == m["val_threshold"] == predictor.threshold
        assert points == predictor.thresholds


def test_the_predictor_owns_the_contract(two_stage_run, tiny_data):
    predictor = Predictor.load(two_stage_run)
    ckpt = torch.load(two_stage_run / "checkpoints" / "best.ckpt", weights_only=True)
    assert Preprocessing.from_dict(ckpt["preprocessing"]) == predictor.preprocessing
    assert predictor.preprocessing.img_size == 64 and predictor.preprocessing.mean == (0.5, 0.5, 0.5)
    assert predictor.temperature == ckpt["temperature"] != 1.0
    from chestxray.data.sources import load_samples

    samples = load_samples(tiny_data)["test"]
    split = predictor.decode(samples)
    logits = predictor.logits(split.images)
    p = predictor.p_infected(logits)
    assert np.allclose(p, torch.sigmoid(logits.reshape(-1) / predictor.temperature).numpy())
    assert (predictor.decide(p) == np.where(p >= predictor.threshold, "infected", "normal")).all()
    table, errors = predictor.predict(samples)
    assert not errors and np.array_equal(table["p_infected"].to_numpy(), p)
    # an older checkpoint, with the preprocessing at its top level, still loads
    old = dict(ckpt)
    pre = old.pop("preprocessing")
    old.update(img_size=pre["img_size"], mean=pre["mean"], std=pre["std"])
    assert Preprocessing.from_dict(old) == predictor.preprocessing
