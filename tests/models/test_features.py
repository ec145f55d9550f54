

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.transforms import Preprocessing
from chestxray.models.backbones import REGISTRY, create_model, head_prefixes
from chestxray.models.features import extract_features, head_split
from tests.helpers import invoke

COMMON = ["--stages", "head", "--img-size", "64", "--batch-size", "8", "--epochs-head", "3", "--quiet",
          "--precision", "32-true", "--seed", "5"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_head_split_reproduces_the_model(name):
    model, _ = create_model(name, 2, pretrained=name == "efficientnet_lite0")
    torch.nn.init.normal_(model.get_classifier().weight, std=0.01)
    model.eval()
    frozen, head = head_split(model)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(head(frozen(x)), model(x), atol=1e-5)
    assert head_prefixes(model)[1:] == list(REGISTRY[name].head_extra)  # the head stage trains what the registry says


def test_feature_views():
    model, _ = create_model("efficientnet_lite0", 1)
    images = torch.randint(0, 255, (4, 72, 72), dtype=torch.uint8).numpy()
    prep = Preprocessing(64, (0.5,) * 3, (0.5,) * 3)
    f = extract_features(model, images, prep, views=2, channels_last=False)
    assert f.shape == (3, 4, 1280)
    assert not torch.allclose(f[0], f[1])  # augmented views differ from the plain one
    again = extract_features(model, images, prep, views=0, channels_last=True)
    assert torch.allclose(again[0], f[0], atol=1e-4)


@pytest.mark.slow
def test_head_on_cached_features_matches_the_frozen_backbone(tiny_data, tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "nodrop.yaml"
    cfg.write_text("model:\n  dropout: 0.0\n")  # without dropout masks the two paths are the same computation
    outs = {}
    for mode in ("--head-features", "--no-head-features"):
        out = tmp_path / mode.strip("-")
        res = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(tiny_data), "--out", str(out), mode, *COMMON])
        assert res.exit_code == 0, res.output
        outs[mode] = json.loads((out / "metrics.json").read_text())
        outs[mode]["ckpt"] = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    a, b = outs["--head-features"], outs["--no-head-features"]
    for split in ("val", "test"):
        assert a["stages"]["head"][split]["roc_auc"] == pytest.approx(b["stages"]["head"][split]["roc_auc"], abs=0.02)
        assert a["stages"]["head"][split]["accuracy"] == pytest.approx(b["stages"]["head"][split]["accuracy"], abs=0.15)
    assert a["stages"]["head"]["val_loss"] == pytest.approx(b["stages"]["head"]["val_loss"], rel=0.1)
    # the same training, so the same classifier up to float noise
    assert torch.allclose(a["ckpt"]["classifier.weight"], b["ckpt"]["classifier.weight"], atol=1e-4)


@pytest.mark.slow
def test_same_result_with_a_cold_or_a_warm_feature_cache(tiny_data, tmp_path):
    cache = tmp_path / "cache"
    args = ["--data", tiny_data, "--cache-dir", cache, "--deterministic", "--precision", "32-true", "--seed", "7",
            "--img-size", "64", "--batch-size", "16", "--stages", "head", "--epochs-head", "3", "--bootstrap", "0", "--quiet"]
    results, extracted = [], []
    for name in ("cold", "warm"):
        res = invoke("train", "--out", tmp_path / name, *args)
        assert res.exit_code == 0, res.output
        extracted.append(res.output.count("backbone features of"))
        results.append((json.loads((tmp_path / name / "metrics.json").read_text()),
                        pd.read_csv(tmp_path / name / "history.csv")))
    (m1, h1), (m2, h2) = results
    assert h1["train_loss"].tolist() == h2["train_loss"].tolist()
    assert h1["val_loss"].tolist() == h2["val_loss"].tolist()
    assert m1["val_threshold"] == m2["val_threshold"]
    assert extracted == [3, 0]  # train, val and test computed once; the second run read them from the cache
