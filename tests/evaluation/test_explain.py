"""Grad-CAM: overlays from the CLI, and heat where the synthetic lesions were drawn."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.sources import Sample
from chestxray.data.synthetic import phantom
from chestxray.evaluation.explain import cam_target_layer, gradcam
from chestxray.models.backbones import REGISTRY, create_model
from chestxray.models.predictor import Predictor


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cam")
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--images", "150", "--img-size", "128", "--quiet"])
    assert res.exit_code == 0, res.output
    return out / "run"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_target_layer_is_spatial(name):
    import torch

    model, _ = create_model(name, 1, pretrained=False)
    model.eval()
    seen = {}
    layer = cam_target_layer(model)
    def hook(module, inputs, output):
        seen["shape"] = output.shape

    layer.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    assert len(seen["shape"]) == 4 and seen["shape"][-1] >= 2  # a feature map, not pooled


def test_explain_cli(phantom_run, tmp_path):
    data = phantom_run.parent / "synthetic-data" / "test" / "covid"
    res = CliRunner().invoke(app, ["explain", str(phantom_run), str(data), "--out", str(tmp_path / "cams")])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "cams" / "explanations.csv")
    assert len(df) == len(list(data.glob("*.png")))
    img = np.asarray(Image.open(df["overlay"][0]))
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] == 128


def test_heat_concentrates_on_the_lesions(phantom_run, tmp_path):
    loaded = Predictor.load(phantom_run)
    rng = np.random.default_rng(123)
    paths, masks = [], []
    for i in range(30):
        img, mask = phantom(rng, ["covid", "pneumonia"][i % 2], 256)
        p = tmp_path / f"{i}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
        masks.append(mask)
    split = loaded.decode([Sample(p, None) for p in paths])
    cams, _, _ = gradcam(loaded, split.images)
    hits = 0
    for cam, mask in zip(cams, masks):
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(cam.shape[::-1], Image.BILINEAR)) > 127
        share = cam[m].sum() / max(cam.sum(), 1e-9)
        hits += share > m.mean()  # chance: heat spread evenly puts the lesion's area share on it
    assert hits >= 20, f"heat on the lesion beyond its area share in only {hits}/30 images"
