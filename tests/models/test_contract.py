"""The model contract: the decisions a run stores come from the forward pass `predict` runs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.transforms import Preprocessing
from chestxray.evaluation.metrics import binary_metrics
from chestxray.models.calibration import operating_points
from chestxray.models.predictor import Predictor


@pytest.fixture(scope="module")
def two_stage_run(tiny_run):
    """conftest's shared two-stage run (head, then fine-tuning, calibrated): read here, never written."""
    return tiny_run


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
    ckpt = torch.load(two_stage_run / "checkpoints" / "best.ckpt", weights_only=True)["contract"]
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


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_logits_follow_from_the_contract_features_exactly(name):
    """The head stage scores validation and test from the features it trained on; they must be predict's numbers."""
    from chestxray.data.labels import TaskScheme
    from chestxray.models.backbones import create_model, normalisation

    model, _ = create_model(name, 1, pretrained=False)
    torch.nn.init.normal_(model.get_classifier().weight, std=0.05)
    predictor = Predictor(model=model, scheme=TaskScheme.build("binary", ["normal", "pneumonia"]), preprocessing=Preprocessing(64, *normalisation(model)))
    images = np.random.default_rng(0).integers(0, 256, (70, 72, 72), dtype=np.uint8)  # two batches, the last one short
    logits, features = predictor.forward(images)
    assert torch.equal(predictor.logits_from_features(features), logits)


def test_logits_from_features_refused_where_the_head_is_more_than_the_classifier():
    from chestxray.data.labels import TaskScheme
    from chestxray.models.backbones import create_model, normalisation

    model, _ = create_model("efficientnet_lite0", 1, pretrained=False)
    scheme = TaskScheme.build("binary", ["normal", "pneumonia"])
    tta = Predictor(model=model, scheme=scheme, preprocessing=Preprocessing(64, *normalisation(model), tta="views"))
    assert not tta.head_on_features()
    with pytest.raises(ValueError):
        tta.logits_from_features(torch.zeros(2, 1280))


@pytest.mark.slow
def test_head_only_run_reuses_its_features_with_the_same_numbers(tiny_data, tmp_path):
    """A head-only run scores val/test and fits the OOD density on the features its head trained on: the stored
    figures and density equal what the contract's forward pass gives on those images."""
    from chestxray.data.sources import Sample
    from chestxray.models.ood import FeatureDensity

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(out), "--img-size", "64", "--stages", "head",
                                   "--epochs-head", "2", "--bootstrap", "0", "--no-audit", "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert "audit" not in m
    predictor = Predictor.load(out)
    split = pd.read_csv(out / "split.csv")
    rows = {k: split[split["split"] == k] for k in ("train", "val", "test")}
    decoded = {k: predictor.decode([Sample(p, lab) for p, lab in zip(v["path"], v["label"])]) for k, v in rows.items()}
    outputs = {k: predictor.forward(d.images) for k, d in decoded.items()}
    for k in ("val", "test"):
        y = (rows[k]["label"] != "normal").astype(int).to_numpy()
        p = predictor.scheme.p_infected(outputs[k][0]).numpy()
        assert binary_metrics(y, p, 0.5)["roc_auc"] == m["stages"]["head"][k]["roc_auc"]
    again = FeatureDensity.fit(outputs["train"][1].numpy(), outputs["val"][1].numpy(), predictor.ood.quantile)
    assert np.allclose(again.mean, predictor.ood.mean, atol=1e-6) and again.threshold == pytest.approx(predictor.ood.threshold, rel=1e-5)
