"""The public Python API gives the CLI's numbers: load/predict, train, evaluate, export."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import chestxray
from chestxray.cli import app
from chestxray.data.sources import load_samples
from chestxray.models.onnx_model import read_contract

OPTIONS = {"img_size": 32, "stages": "head", "epochs_head": 2, "bootstrap": 0, "audit": False}
FLAGS = ["--img-size", "32", "--stages", "head", "--epochs-head", "2", "--bootstrap", "0", "--no-audit", "--quiet"]


def test_import_is_cheap_and_names_the_api():
    import subprocess
    import sys

    code = "import sys, chestxray; print('torch' in sys.modules, sorted(n for n in dir(chestxray) if not n.startswith('_')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and all(n in out for n in ("load", "train", "evaluate", "export", "Model"))
    with pytest.raises(AttributeError):
        chestxray.no_such_thing  # noqa: B018


def test_predict_gives_the_cli_table(tiny_run, tiny_data, tmp_path):
    paths = [s.path for s in load_samples(tiny_data)["test"]][:6]
    res = CliRunner().invoke(app, ["predict", str(tiny_run), *paths, "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    cli = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    model = chestxray.load(tiny_run)
    api = model.predict(paths)
    assert list(api.columns) == list(cli.columns)
    assert (api["p_infected"].to_numpy() == cli["p_infected"].to_numpy()).all()  # float64 through the CSV: exact
    assert list(api["predicted"]) == list(cli["predicted"]) and list(api["path"]) == list(cli["path"])
    assert model.threshold == cli["threshold"].iloc[0] and model.classes == ["covid", "normal", "pneumonia"]
    folder = model.predict(tiny_data / "unlabelled")  # a folder, as the CLI takes
    assert len(folder) == 4 and "chestxray.Model(" in repr(model)


def test_predict_names_an_unreadable_file_or_skips_it(tiny_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    model = chestxray.load(tiny_run)
    with pytest.raises(chestxray.api.ChestXrayError, match="bad.png"):
        model.predict([bad])
    table = model.predict([bad], skip_bad=True)  # nothing readable left: an empty table, not a crash
    assert len(table) == 0 and "bad.png" in table.attrs["skipped"][0]
    res = CliRunner().invoke(app, ["predict", str(tiny_run), str(bad), "--skip-bad", "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 2 and "none of the 1 image(s) could be read" in res.output and "bad.png" in res.output


@pytest.mark.slow
def test_train_and_evaluate_give_the_cli_numbers(tiny_data, tmp_path):
    m_api = chestxray.train(tiny_data, tmp_path / "api", **OPTIONS)
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "cli"), *FLAGS])
    assert res.exit_code == 0, res.output
    m_cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert m_api["binary"] == m_cli["binary"] and m_api["val_threshold"] == m_cli["val_threshold"]
    a = torch.load(tmp_path / "api" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cli" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ev_api, folder = chestxray.evaluate(tmp_path / "api", tiny_data, bootstrap=50, out=tmp_path / "ev-api")
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "cli"), "--data", str(tiny_data), "--bootstrap", "50",
                                   "--out", str(tmp_path / "ev-cli")])
    assert res.exit_code == 0, res.output
    ev_cli = json.loads((tmp_path / "ev-cli" / "metrics.json").read_text())
    assert folder == tmp_path / "ev-api" and ev_api["binary"] == ev_cli["binary"]
    with pytest.raises(chestxray.api.ChestXrayError, match="unknown option 'img_sise'"):
        chestxray.train(tiny_data, tmp_path / "typo", img_sise=32)


def test_export_writes_the_contract_of_the_run(tiny_run, tmp_path):
    r = chestxray.export(tiny_run, tmp_path / "m.onnx", limit=16)
    assert r["n_images"] > 0 and r["max_abs_diff_p_infected"] <= r["tolerance"]
    onnx_model = chestxray.load(tmp_path / "m.onnx")
    assert read_contract(tmp_path / "m.onnx") == chestxray.load(tiny_run).contract() == onnx_model.contract()
    assert onnx_model.threshold == chestxray.load(tiny_run).threshold and onnx_model.predictor.model is None


def test_audit_gives_the_cli_figures(tiny_run, tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["audit", str(tiny_run), "--data", str(tiny_data), "--split", "test", "--masks",
                                   "ellipse", "--bootstrap", "20", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    result, folder = chestxray.audit(tiny_run, tiny_data, split="test", masks="ellipse", bootstrap=20, out=tmp_path / "api")
    assert folder == tmp_path / "api" and result["mask_source"] == "ellipse"
    cli = json.loads((tmp_path / "cli" / "audit.json").read_text())
    assert json.loads((folder / "audit.json").read_text()) == cli
    with pytest.raises(chestxray.errors.ChestXrayError, match="masks must be one of"):
        chestxray.audit(tiny_run, tiny_data, masks="circle")


@pytest.mark.slow
def test_the_lung_segmenter_trains_and_evaluates_from_python(tmp_path):
    from tests.models.test_lungs import lung_phantoms

    root = lung_phantoms(tmp_path / "lm", n=8)
    r = chestxray.train_lungs(root, tmp_path / "seg", sources=["phantom"], epochs=1, batch_size=4, size=64)
    from chestxray.models.lungs import LungModel

    assert LungModel.load(tmp_path / "seg" / "lungs.pt").img_size == 64  # trained and stored at its own side
    with pytest.raises(chestxray.errors.ChestXrayError, match="multiple of 32"):
        chestxray.train_lungs(root, tmp_path / "bad", sources=["phantom"], size=100)
    assert (tmp_path / "seg" / "lungs.pt").exists()
    assert json.loads((tmp_path / "seg" / "metrics.json").read_text())["figures"] == json.loads(json.dumps(r["figures"]))
    again = chestxray.evaluate_lungs(root, lung_model=tmp_path / "seg" / "lungs.pt", split="test", bootstrap=50,
                                     out=tmp_path / "e.json")
    res = CliRunner().invoke(app, ["lungs", "evaluate", "--data", str(root), "--lung-model", str(tmp_path / "seg" / "lungs.pt"),
                                   "--bootstrap", "50", "--out", str(tmp_path / "cli.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli.json").read_text()) == json.loads((tmp_path / "e.json").read_text())
    assert again["sources"]["phantom"]["dice"] == pytest.approx(r["figures"]["test"]["sources"]["phantom"]["dice"], abs=1e-3)
