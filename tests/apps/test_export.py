"""ONNX export: the contract travels in the file, verification refuses a wrong graph, predict runs on it."""

import json

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chestxray.apps import export as export_mod
from chestxray.apps.engines import load_on
from chestxray.cli import app
from chestxray.data.sources import load_samples
from chestxray.files import sha256
from chestxray.models.load import load_predictor
from chestxray.models.onnx_model import CONTRACT_KEY, OnnxPredictor, read_contract, read_export
from chestxray.models.predictor import CheckpointError, Predictor

pytestmark = pytest.mark.slow  # integration tests: every one trains, exports or drives a browser


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    res = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "verified on" in res.output and "written:" in res.output
    return out


def test_the_file_carries_the_contract(exported, tiny_run):
    torch_p = Predictor.load(tiny_run)
    c, info, card = read_export(exported)
    assert c == torch_p.contract()  # the checkpoint's contract and the file's are one dict
    assert c["scheme"] == torch_p.scheme.to_dict()
    assert c["preprocessing"] == torch_p.preprocessing.to_dict()
    assert c["temperature"] == torch_p.temperature != 1.0
    assert c["threshold"] == torch_p.threshold and c["thresholds"] == torch_p.thresholds
    assert c["threshold_rule"] == torch_p.threshold_rule and c["meta"]["stage"] == torch_p.meta["stage"]
    assert c["meta"]["data_resolved"] == torch_p.meta["data_resolved"]
    assert info["source_checkpoint"]["sha256"] == sha256(tiny_run / "checkpoints" / "best.ckpt")
    assert info["data_summary"]["class_counts"]["train"] and card.startswith("# Model card")
    assert c["ood"] and c["ood"]["threshold"] == torch_p.ood.threshold
    g = onnx.load(str(exported))
    assert [i.name for i in g.graph.input] == ["image"]
    assert g.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is dynamic
    assert any(o.domain in ("", "ai.onnx") and o.version <= 21 for o in g.opset_import)


def test_predict_on_onnx_gives_the_pytorch_table(exported, tiny_run, tiny_data, tmp_path):
    """`predict MODEL.onnx` and `predict RUN` on the same real images: the same labels, P(infected) within 1e-4."""
    paths = [s.path for s in load_samples(tiny_data)["test"]]
    tables = {}
    for name, model in (("torch", tiny_run), ("onnx", exported)):
        res = CliRunner().invoke(app, ["predict", str(model), *paths, "--out", str(tmp_path / f"{name}.csv")])
        assert res.exit_code == 0, res.output
        tables[name] = pd.read_csv(tmp_path / f"{name}.csv")
    a, b = tables["torch"], tables["onnx"]
    assert list(a.columns) == list(b.columns) and list(a["path"]) == list(b["path"])
    assert np.abs(a["p_infected"] - b["p_infected"]).max() <= 1e-4
    assert (a["threshold"] == b["threshold"]).all()
    near = (a["p_infected"] - a["threshold"]).abs() < 1e-4
    assert (a["predicted"][~near] == b["predicted"][~near]).all()
    assert np.allclose(a["ood_score"], b["ood_score"], rtol=1e-3)
    # --csv works on ONNX too
    res = CliRunner().invoke(app, ["predict", str(exported), "--csv", str(tiny_data / "manifest.csv"), "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "m.csv")) == len(pd.read_csv(tiny_data / "manifest.csv"))


def test_the_graph_outputs_alone_are_enough(exported, tiny_run, tiny_data):
    """A consumer outside Python: decoded uint8 image in, P(infected) out, threshold from the metadata."""
    import onnxruntime as ort

    torch_p = Predictor.load(tiny_run)
    split = torch_p.decode(load_samples(tiny_data)["val"])
    side = read_contract(exported)["preprocessing"]["img_size"]
    to_input = torch_p.preprocessing.eval_transform()  # the contract's resize rule, last step
    x = np.stack([to_input(torch.from_numpy(np.array(img))[None]).numpy() for img in split.images])
    assert x.shape[1:] == (1, side, side) and x.dtype == np.uint8
    p = ort.InferenceSession(str(exported)).run(["p_infected"], {"image": x})[0]
    assert np.abs(p - torch_p.p_infected(torch_p.logits(split.images))).max() <= 1e-4


def test_export_refuses_when_onnxruntime_disagrees(tiny_run, tmp_path, monkeypatch):
    """A graph that computes something else (here: the temperature left out) is not written."""
    original = export_mod.ContractGraph.__init__

    def wrong(self, predictor):
        original(self, predictor)
        self.temperature = 1.0

    monkeypatch.setattr(export_mod.ContractGraph, "__init__", wrong)
    out = tmp_path / "wrong.onnx"
    res = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(out)])
    assert res.exit_code == 2 and "not written" in res.output and "differ by" in res.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_errors_name_the_problem(tiny_run, exported, tmp_path):
    res = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(exported)])
    assert res.exit_code == 2 and "exists" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(tmp_path / "model.pt")])
    assert res.exit_code == 2 and "must end in .onnx" in res.output
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.onnx"):
        load_predictor(garbage)
    plain = tmp_path / "plain.onnx"  # a valid ONNX file that is not a chestxray export
    g = onnx.load(str(exported))
    del g.metadata_props[:]
    onnx.save(g, str(plain))
    image = pd.read_csv(tiny_run / "split.csv")["path"].iloc[0]
    res = CliRunner().invoke(app, ["predict", str(plain), image, "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 2 and "without a chestxray contract" in res.output
    res = CliRunner().invoke(app, ["explain", str(exported), image, "--out", str(tmp_path / "cams")])
    assert res.exit_code == 2 and "needs the PyTorch model" in res.output


def test_onnx_predictor_is_a_predictor(exported):
    p = load_predictor(exported)
    assert isinstance(p, OnnxPredictor) and p.model is None
    props = {e.key: e.value for e in onnx.load(str(exported)).metadata_props}
    assert json.loads(props[CONTRACT_KEY]) == read_contract(exported) == p.contract()
    assert CONTRACT_KEY == "chestxray.contract"


def test_model_card_from_the_runs_files(tiny_run, tiny_data, tmp_path):
    """Training writes model_card.md; an evaluation on other data appears in it once `card` rewrites it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    card = (run / "model_card.md").read_text()
    for section in ("## Model details", "## Intended use", "## Out-of-scope uses", "## Factors", "## Training and evaluation data",
                    "## Metrics", "### Per source", "### Calibration", "### Shortcut audit", "## External validation",
                    "## Caveats and recommendations"):
        assert section in card, section
    assert "SYNTHETIC" in card and "not a diagnostic device" in card and "None run." in card
    assert sha256(tiny_run / "checkpoints" / "best.ckpt") in card
    m = json.loads((run / "metrics.json").read_text())
    used = m["binary"]["at_val_threshold"]
    row = next(line for line in card.splitlines() if line.startswith("| stored threshold (in use) |"))
    assert f"| {used['threshold']:.4f} |" in row and row.endswith(f"| {used['roc_auc']:.3f} |")
    train = pd.read_csv(run / "split.csv").query("split == 'train'")
    n_covid = int((train["label"] == "covid").sum())
    assert f"| train | covid | synthetic-phantom | {n_covid} |" in card
    other = tmp_path / "other"
    shutil.copytree(tiny_data / "test", other)
    res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(other), "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["card", str(run)])
    assert res.exit_code == 0, res.output
    card = (run / "model_card.md").read_text()
    assert "None run." not in card and str(other) in card
    # the exported file carries the card of its run
    onnx_file = tmp_path / "m.onnx"
    assert CliRunner().invoke(app, ["export", str(run), "--out", str(onnx_file)]).exit_code == 0
    assert read_export(onnx_file)[2] == card


def test_evaluate_an_onnx_file(exported, tiny_run, tiny_data, tmp_path):
    """evaluate runs on the exported file and gives the PyTorch run's figures."""
    figures = {}
    for name, model in (("torch", tiny_run), ("onnx", exported)):
        res = CliRunner().invoke(app, ["evaluate", str(model), "--data", str(tiny_data), "--bootstrap", "0",
                                       "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        figures[name] = json.loads((tmp_path / name / "metrics.json").read_text())["binary"]["at_val_threshold"]
    assert figures["onnx"]["roc_auc"] == pytest.approx(figures["torch"]["roc_auc"], abs=1e-3)
    assert figures["onnx"]["confusion_matrix"] == figures["torch"]["confusion_matrix"]


def test_a_run_directory_on_onnxruntime(tiny_run, exported, tiny_data, tmp_path, monkeypatch):
    """--engine onnx: a run directory predicts and evaluates on onnxruntime through checkpoints/best.onnx, reused while
    the checkpoint it was exported from stays, exported again (and verified) when the checkpoint changes."""
    import shutil

    from chestxray.apps import engines

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # tests must not write into the shared run
    beside = run / "checkpoints" / "best.onnx"
    shutil.copy(exported, beside)  # the export of this very checkpoint, as a first --engine onnx would have made it
    made = beside.stat().st_mtime_ns
    paths = [s.path for s in load_samples(tiny_data)["test"]]
    tables = {}
    for engine in ("torch", "onnx"):
        res = CliRunner().invoke(app, ["predict", str(run), *paths, "--engine", engine, "--out", str(tmp_path / f"{engine}.csv")])
        assert res.exit_code == 0, res.output
        tables[engine] = pd.read_csv(tmp_path / f"{engine}.csv")
    a, b = tables["torch"], tables["onnx"]
    assert list(a["path"]) == list(b["path"]) and np.abs(a["p_infected"] - b["p_infected"]).max() <= 1e-4
    assert not np.array_equal(a["p_infected"], b["p_infected"])  # onnxruntime did run: not bit-identical to PyTorch
    res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(tiny_data), "--engine", "onnx", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "EXTERNAL" not in res.output and beside.stat().st_mtime_ns == made  # reused, and the run's own data
    from chestxray.apps.serve import Service

    assert isinstance(Service(run, engine="onnx").predictor, OnnxPredictor)  # `serve --engine onnx`
    predictor = Predictor.load(run)
    predictor.threshold = 0.25  # a changed checkpoint: its export no longer matches, and is made again
    predictor.save(run / "checkpoints" / "best.ckpt")
    calls = []

    def export(ckpt, out):
        calls.append((ckpt, out))
        shutil.copy(exported, out)
        return {"n_images": 0, "max_abs_diff_p_infected": 0.0}

    monkeypatch.setattr(engines, "export_onnx", export)
    load_on(run, "onnx")
    assert calls == [(run / "checkpoints" / "best.ckpt", beside)]  # (export_onnx itself is tested above)
    res = CliRunner().invoke(app, ["predict", str(run), *paths, "--engine", "tensorflow", "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "--engine must be one of torch, onnx" in res.output


def test_relative_data_evaluates_as_its_own_data(tiny_data, tmp_path, monkeypatch):
    """Trained with a relative --data, exported, and evaluated from another directory on the same data: the ONNX file
    carries the data path the run resolved (the contract), so this is not an external evaluation; nor for `compare`."""
    monkeypatch.chdir(tiny_data.parent)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", tiny_data.name, "--out", str(run), "--img-size", "32", "--stages", "head",
                                   "--epochs-head", "1", "--bootstrap", "0", "--no-audit", "--quiet"])
    assert res.exit_code == 0, res.output
    onnx_file = tmp_path / "m.onnx"
    assert CliRunner().invoke(app, ["export", str(run), "--out", str(onnx_file)]).exit_code == 0
    assert read_contract(onnx_file)["meta"]["data_resolved"] == str(tiny_data.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = CliRunner().invoke(app, ["evaluate", str(onnx_file), "--data", str(tiny_data), "--bootstrap", "0", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "EXTERNAL" not in res.output and json.loads((tmp_path / "ev" / "metrics.json").read_text())["external"] is False
    assert load_predictor(onnx_file).training_data == tiny_data.resolve()  # compare's default data


def test_checkpoints_and_exports_of_the_earlier_format_load(tiny_run, exported, tmp_path):
    """A checkpoint with the contract's fields at its top level (written before the contract was one dict) and an
    ONNX file of format chestxray-onnx-1 load into the same predictor as today's files."""
    from chestxray.files import load_checked, save_checked
    from chestxray.models.onnx_model import FORMAT_KEY, LEGACY_FORMAT

    now = Predictor.load(tiny_run)
    ckpt = load_checked(tiny_run / "checkpoints" / "best.ckpt", "checkpoint", CheckpointError)
    c = ckpt["contract"]
    ood = {k: torch.tensor(v, dtype=torch.float32) if isinstance(v, list) else v for k, v in c["ood"].items()}
    old = {"format": ckpt["format"], "state_dict": ckpt["state_dict"], **{k: c[k] for k in (
        "scheme", "preprocessing", "threshold", "threshold_rule", "thresholds", "temperature")}, "ood": ood, **c["meta"]}
    save_checked(old, tmp_path / "old.ckpt")
    before = Predictor.load(tmp_path / "old.ckpt")
    assert before.contract() == now.contract()
    # the ONNX file's one dict of the earlier format
    g = onnx.load(str(exported))
    contract, info, card = read_export(exported)
    legacy = {"format": LEGACY_FORMAT, **{k: v for k, v in contract.items() if k not in ("meta", "contract_version")},
              **{k: v for k, v in contract["meta"].items() if k != "data_resolved"}, "data": contract["meta"]["data_resolved"],
              **info, "model_card": card}
    del g.metadata_props[:]
    for key, value in ((FORMAT_KEY, LEGACY_FORMAT), (CONTRACT_KEY, json.dumps(legacy))):
        e = g.metadata_props.add()
        e.key, e.value = key, value
    onnx.save(g, str(tmp_path / "old.onnx"))
    old_onnx = OnnxPredictor.load(tmp_path / "old.onnx")
    assert old_onnx.contract() == now.contract() and old_onnx.export["source_checkpoint"] == info["source_checkpoint"]
    assert old_onnx.card == card and old_onnx.training_data == now.training_data


def test_onnxruntime_predicts_without_timm_or_torchvision(tiny_run, exported, tiny_data, tmp_path, monkeypatch):
    """--engine onnx: the lung check's segmenter runs on onnxruntime too (exported once into the cache and verified
    against PyTorch), and a prediction imports neither timm nor torchvision (about 2 s of a one-image start-up)."""
    import os
    import subprocess
    import sys

    from chestxray.apps import engines
    from chestxray.models.lungs import default_lung_model

    monkeypatch.setenv("CHESTXRAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engines, "_ONNX_LUNGS", {})
    images = [np.asarray(s) for s in load_predictor(tiny_run).decode(load_samples(tiny_data)["test"][:4]).images]
    ours = engines.onnx_lungs()
    cached = list((tmp_path / "cache" / "lungs").glob("*.onnx"))
    assert len(cached) == 1  # exported once, into the cache
    made = cached[0].stat().st_mtime_ns
    monkeypatch.setattr(engines, "_ONNX_LUNGS", {})
    assert engines.onnx_lungs().img_size == ours.img_size and cached[0].stat().st_mtime_ns == made  # reused
    cached[0].write_bytes(b"damaged")  # a damaged cache file is made again
    monkeypatch.setattr(engines, "_ONNX_LUNGS", {})
    ours = engines.onnx_lungs()
    assert cached[0].stat().st_size > 1000
    for a, b in zip(ours.probabilities(images), default_lung_model().probabilities(images)):
        assert np.abs(a - b).max() <= engines.LUNG_TOLERANCE

    image = str(load_samples(tiny_data)["test"][0].path)
    code = ("import sys\nfrom chestxray.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n    status = e.code\n"
            "print('IMPORTED', sorted(m for m in ('timm', 'torchvision', 'segmentation_models_pytorch') if m in sys.modules))\n"
            "sys.exit(status)")
    out = tmp_path / "onnx.csv"
    res = subprocess.run([sys.executable, "-c", code, "predict", str(exported), image, "--out", str(out)],
                         capture_output=True, text=True, env={**os.environ, "CHESTXRAY_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    assert "IMPORTED []" in res.stdout, res.stdout
    from chestxray.apps.predict import prediction_table
    from chestxray.data.sources import Sample

    a = pd.read_csv(out).iloc[0]
    b = prediction_table(load_on(tiny_run), [Sample(image, None)])[0].iloc[0]
    assert abs(a.p_infected - b.p_infected) <= 1e-4 and a.lungs_found == b.lungs_found and a.lung_fields == b.lung_fields
