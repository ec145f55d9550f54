"""A blank or almost constant image never gets a label: predict, evaluate, the service and Predictor.predict."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.quality import OK, image_quality
from chestxray.data.sources import Sample
from chestxray.models.predictor import Predictor
from tests.helpers import SHARED_DATA

runner = CliRunner()


def blanks(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"white.png": np.full((300, 260), 255, np.uint8), "black.png": np.zeros((300, 260), np.uint8),
              "grey-noise.png": np.clip(rng.normal(120, 2, (300, 260)), 0, 255).astype(np.uint8)}
    for name, a in arrays.items():
        Image.fromarray(a).save(folder / name)
    return [folder / n for n in arrays]


@pytest.mark.parametrize("kind", ["white", "black", "grey", "noise", "label on black"])
def test_blank_and_almost_constant_images_are_flagged(kind):
    rng = np.random.default_rng(1)
    image = {"white": np.full((64, 64), 255), "black": np.zeros((64, 64)), "grey": np.full((64, 64), 97),
             "noise": np.clip(rng.normal(200, 3, (64, 64)), 0, 255),
             "label on black": np.pad(np.full((4, 8), 255), ((0, 60), (0, 56)))}[kind].astype(np.uint8)
    assert image_quality(image) != OK


def test_real_films_are_not_flagged():
    from chestxray.data.cache import decode_resized

    films = sorted(SHARED_DATA.rglob("*.png"))[::40] if SHARED_DATA.exists() else []
    if not films:
        pytest.skip("no shared data")
    reasons = [image_quality(decode_resized(str(p), 256)) for p in films]
    assert reasons == [OK] * len(films)


def test_predict_gives_no_label_to_a_blank_image(tiny_run, tiny_data, tmp_path):
    paths = blanks(tmp_path / "blank")
    film = next((tiny_data / "test" / "covid").iterdir())
    res = runner.invoke(app, ["predict", str(tiny_run), *map(str, paths), str(film), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(df["predicted"][:3]) == ["", "", ""] and df["predicted"][3] in ("infected", "normal")
    assert df["image_quality"][0].startswith("blank") and df["image_quality"][2].startswith("almost constant")
    assert df["image_quality"][3] == "ok"
    assert "3 image(s) got no decision" in res.output
    # the Python API: the same table
    table, _ = Predictor.load(tiny_run).predict([Sample(str(p), None) for p in [*paths, film]])
    assert list(table["predicted"]) == list(df["predicted"]) and list(table["image_quality"]) == list(df["image_quality"])


def test_evaluate_counts_and_excludes_blank_images(tiny_run, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "test", data)
    before = runner.invoke(app, ["evaluate", str(tiny_run), "--data", str(data), "--out", str(tmp_path / "e0"), "--bootstrap", "0"])
    assert before.exit_code == 0, before.output
    for p in blanks(tmp_path / "b"):
        shutil.copy(p, data / "normal" / p.name)
    res = runner.invoke(app, ["evaluate", str(tiny_run), "--data", str(data), "--out", str(tmp_path / "e1"), "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    m0 = json.loads((tmp_path / "e0" / "metrics.json").read_text())
    m1 = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert m1["image_quality"]["n_flagged"] == 3 and m0["image_quality"]["n_flagged"] == 0
    assert m1["binary"]["at_val_threshold"] == m0["binary"]["at_val_threshold"]  # the same images counted
    assert "3 image(s) without a radiograph's grey levels got no decision" in res.output
    rows = pd.read_csv(tmp_path / "e1" / "predictions-all.csv", keep_default_na=False)
    assert len(rows) == m0["binary"]["at_0.5"]["n"] + 3 and (rows["predicted"] == "").sum() == 3


def test_the_service_refuses_a_blank_image_with_its_reason(tiny_run, tmp_path):
    from chestxray.apps.serve import create_app

    white = blanks(tmp_path)[0]
    with TestClient(create_app(tiny_run)) as client:
        res = client.post("/predict", files=[("files", ("white.png", white.read_bytes(), "image/png"))])
    assert res.status_code == 422 and "white.png: image quality: blank" in res.json()["error"]


def test_multiclass_class_never_contradicts_the_decision():
    """predicted_class is derived from predicted: normal where the threshold says normal, else the most probable
    infected class, even where normal is the arg-max (P(infected) = 1 - P(normal) above a low threshold)."""
    import torch

    from chestxray.data.labels import TaskScheme
    from chestxray.data.transforms import Preprocessing

    scheme = TaskScheme.build("multiclass", ["covid", "normal", "pneumonia"])
    p = Predictor(model=None, scheme=scheme, preprocessing=Preprocessing(64, (0.5,) * 3, (0.5,) * 3), threshold=0.3)
    probs = torch.tensor([[0.20, 0.60, 0.20], [0.05, 0.90, 0.05], [0.50, 0.10, 0.40], [0.10, 0.35, 0.55]])
    out = p.outputs(probs.log(), quality=np.array(["ok", "ok", "ok", "blank: no radiograph"], dtype=object))
    assert list(out["predicted"]) == ["infected", "normal", "infected", ""]
    assert list(out["predicted_class"]) == ["covid", "normal", "covid", ""]  # row 0: arg-max is normal, decision infected
    assert list(out["image_quality"]) == ["ok", "ok", "ok", "blank: no radiograph"]
