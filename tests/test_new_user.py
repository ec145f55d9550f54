"""What a new user hit: silent errors, crashes after training, tracebacks instead of messages.

Each test names the item of the report it covers. Runs are tiny (64 px, head stage) to stay fast.
"""

import csv
import json
import shutil
import struct
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.config import SECTIONS, flag_name

runner = CliRunner()
HEAD = ["--img-size", "64", "--batch-size", "16", "--stages", "head", "--epochs-head", "2", "--bootstrap", "0", "--quiet"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def png_header_only(width: int, height: int) -> bytes:
    """A 45-byte PNG: signature, an IHDR claiming width x height, IEND, and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def manifest_rows(tiny_data: Path) -> list[dict]:
    rows = list(csv.DictReader(open(tiny_data / "manifest.csv")))
    for r in rows:
        r["path"] = str(tiny_data / r["path"])
    return rows


@pytest.fixture(scope="module")
def relative_runs(tiny_data, tmp_path_factory):
    """Two head-stage runs trained from a directory with a *relative* --data path."""
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(tiny_data, home / "phantoms")
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        for loss in ("ce", "focal"):
            res = invoke("train", "--data", "phantoms/manifest.csv", "--out", home / loss, "--loss", loss, *HEAD)
            assert res.exit_code == 0, res.output
            runs.append(home / loss)
    return home, runs


# --- 1. a label's case -------------------------------------------------------------------------------

def test_1_label_case_does_not_change_the_normal_class(tiny_data, tmp_path):
    rows = manifest_rows(tiny_data)
    first_normal = next(r for r in rows if r["label"] == "normal" and r["split"] == "train")
    first_normal["label"] = "Normal"
    man = write_manifest(tmp_path / "m.csv", rows)
    res = invoke("train", "--data", man, "--out", tmp_path / "r", *HEAD)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    n_normal_test = sum(r["label"].lower() == "normal" and r["split"] == "test" for r in rows)
    assert m["binary"]["at_0.5"]["n_normal"] == n_normal_test == 4
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "best.ckpt", weights_only=True)["contract"]
    assert ckpt["scheme"]["classes"] == ["covid", "normal", "pneumonia"] and ckpt["scheme"]["normal_class"] == "normal"
    assert "class 'normal' is spelt 'Normal' and 'normal'" in res.output
    assert set(pd.read_csv(tmp_path / "r" / "split.csv")["label"]) == {"covid", "normal", "pneumonia"}


def test_1_class_folders_in_any_case_are_one_class(tiny_data, tmp_path):
    from chestxray.data.sources import discover

    data = tmp_path / "d"
    shutil.copytree(tiny_data / "train", data / "train")
    shutil.copytree(tiny_data / "val", data / "val")
    (data / "val" / "normal").rename(data / "val" / "NORMAL")
    found = discover(data)
    assert {s.label for s in found.splits["val"]} == {"covid", "normal", "pneumonia"}
    assert found.label_spellings == {"normal": ["NORMAL", "normal"]}


# --- 2. results independent of the feature cache -----------------------------------------------------

def test_2_same_result_with_a_cold_or_a_warm_feature_cache(tiny_data, tmp_path):
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


# --- 3. split folders spelt otherwise; carving said on the terminal -----------------------------------

@pytest.mark.parametrize("names", [("Train", "valid", "TEST"), ("training", "Validation", "test"), ("train", "VAL", "Test")])
def test_3_split_folder_spellings(tiny_data, tmp_path, names):
    from chestxray.data.sources import discover

    for split, name in zip(("train", "val", "test"), names):
        shutil.copytree(tiny_data / split, tmp_path / name)
    found = discover(tmp_path)
    assert set(found.splits) == {"train", "val", "test"} and found.has_splits
    assert {s.label for s in found.splits["train"]} == {"covid", "normal", "pneumonia"}
    assert len(found.splits["val"]) == len(list((tiny_data / "val").rglob("*.png")))


def test_3_two_folders_for_one_split_is_an_error(tiny_data, tmp_path):
    from chestxray.data.sources import DataError, discover

    for name in ("train", "val", "valid"):
        shutil.copytree(tiny_data / "val", tmp_path / name)
    with pytest.raises(DataError, match="val/ and valid/"):
        discover(tmp_path)


def test_3_manifest_split_values_in_any_spelling(tiny_data, tmp_path):
    from chestxray.data.sources import discover

    rows = manifest_rows(tiny_data)
    for r in rows:
        r["split"] = {"train": "Train", "val": "valid", "test": "TEST"}.get(r["split"], r["split"])
    found = discover(write_manifest(tmp_path / "m.csv", rows))
    assert {"train", "val", "test"} <= set(found.splits) and found.split_spellings["valid"] == "val"


def test_3_carved_validation_is_said(tiny_data, tmp_path):
    data = tmp_path / "noval"
    shutil.copytree(tiny_data / "train", data / "Train")
    res = invoke("train", "--data", data, "--out", tmp_path / "r", *HEAD)
    assert res.exit_code == 0, res.output
    assert "has no val split: carved" in res.output and "has no test split: carved" in res.output


# --- 4. compare resolves the training data as evaluate does --------------------------------------------

def test_4_compare_from_another_directory(relative_runs, tmp_path, monkeypatch):
    home, runs = relative_runs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = invoke("compare", *runs, "--out", elsewhere / "cmp", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    r = json.loads((elsewhere / "cmp" / "compare.json").read_text())
    assert r["data"] == str((home / "phantoms" / "manifest.csv").resolve()) and r["split"] == "test" and r["n"] == 10


# --- 5. evaluate data without splits ------------------------------------------------------------------

def test_5_evaluate_an_external_folder_of_class_folders(relative_runs, tiny_data, tmp_path):
    _, runs = relative_runs
    ext = tmp_path / "OTHER_HOSPITAL"
    shutil.copytree(tiny_data / "test" / "normal", ext / "normal")
    shutil.copytree(tiny_data / "test" / "pneumonia", ext / "Pneumonia")
    res = invoke("evaluate", runs[0], "--data", ext, "--out", tmp_path / "ev", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    n = len(list(ext.rglob("*.png")))
    assert f"has no train/val/test splits: evaluated all {n} labelled images" in res.output
    assert "EXTERNAL evaluation" in res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["split"] == "all" and m["binary"]["at_0.5"]["n"] == n
    res = invoke("evaluate", runs[0], "--data", ext, "--split", "test")
    assert res.exit_code == 2 and "omit --split" in res.output


# --- 6. per-source AUC on too few images --------------------------------------------------------------

def test_6_per_source_auc_needs_enough_images_of_each_class(relative_runs, tiny_data, tmp_path):
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


def test_6_too_few_note_thresholds():
    from chestxray.evaluation.intervals import per_source

    y = np.array([0] * 9 + [1] * 30 + [0] * 12 + [1] * 12)
    p = np.linspace(0, 1, len(y))
    rows = per_source(y, p, ["a"] * 39 + ["b"] * 24, 0.5)
    assert rows["a"]["roc_auc"] is None and "too few normal images: 9 normal" in rows["a"]["auc_note"]
    assert rows["b"]["roc_auc"] is not None


# --- 7. --calibrate with fine-tuning -----------------------------------------------------------------

def test_7_temperature_fits_on_inference_mode_logits():
    from chestxray.models.calibration import fit_temperature

    with torch.inference_mode():
        logits = torch.linspace(-6, 6, 40).reshape(-1, 1)
        targets = (torch.rand(40, 1, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    t = fit_temperature(logits, targets, "binary")
    assert t > 1.0  # random targets: the overconfident logits are cooled


@pytest.mark.parametrize("stages", ["head,finetune", "finetune"])
def test_7_calibrate_when_finetuning_gives_the_final_model(tiny_data, tmp_path, stages):
    out = tmp_path / "r"
    res = invoke("train", "--data", tiny_data / "manifest.csv", "--out", out, "--img-size", "64", "--batch-size", "16",
                 "--stages", stages, "--epochs-head", "2", "--epochs-finetune", "1", "--calibrate", "--bootstrap", "0", "--quiet")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    if stages == "finetune":
        assert m["final_stage"] == "finetune"
    assert "ece_uncalibrated" in m["calibration"] and (out / "report.html").exists()
    assert torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["contract"]["temperature"] == m["calibration"]["temperature"]


# --- 8. huge images ----------------------------------------------------------------------------------

def test_8_huge_png_header_is_a_read_error(tmp_path):
    from chestxray.data.io import XrayReadError, read_xray

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(20000, 20000))
    assert bomb.stat().st_size == 45
    with pytest.raises(XrayReadError, match=r"bomb\.png: image of 400,000,000 pixels is larger than the 64,000,000-pixel limit"):
        read_xray(bomb)
    mid = tmp_path / "mid.png"
    mid.write_bytes(png_header_only(9000, 9000))  # above our limit, below Pillow's error threshold
    with pytest.raises(XrayReadError, match=r"mid\.png: image of 9000 x 9000 pixels is larger"):
        read_xray(mid)


def test_8_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    from chestxray.data import io
    from tests.test_io import write_dicom

    Image.fromarray(np.zeros((100, 120), np.uint8)).save(tmp_path / "a.png")
    write_dicom(tmp_path / "a.dcm", np.zeros((100, 120), np.uint16))
    monkeypatch.setattr(io, "MAX_PIXELS", 100 * 120 - 1)
    for name in ("a.png", "a.dcm"):
        with pytest.raises(io.XrayReadError, match=f"{name}: image of 120 x 100 pixels is larger"):
            io.read_xray(tmp_path / name)
    monkeypatch.setattr(io, "MAX_PIXELS", 100 * 120)
    assert io.read_xray(tmp_path / "a.png").shape == (100, 120)


def test_8_huge_image_in_predict_and_data_check(relative_runs, tiny_data, tmp_path):
    _, runs = relative_runs
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(tiny_data / "test" / "covid" / next(p.name for p in (tiny_data / "test" / "covid").iterdir()), folder / "ok.png")
    (folder / "bomb.png").write_bytes(png_header_only(20000, 20000))
    res = invoke("predict", runs[0], folder, "--out", tmp_path / "p.csv")
    assert res.exit_code == 2 and "bomb.png" in res.output and "Traceback" not in res.output
    res = invoke("predict", runs[0], folder, "--out", tmp_path / "p.csv", "--skip-bad")
    assert res.exit_code == 0, res.output
    assert "skipped:" in res.output and "bomb.png" in res.output and len(pd.read_csv(tmp_path / "p.csv")) == 1
    data = tmp_path / "d"
    shutil.copytree(tiny_data / "train", data / "train")
    (data / "train" / "normal" / "bomb.png").write_bytes(png_header_only(20000, 20000))
    res = invoke("data", "check", data)
    assert res.exit_code == 1 and "UNREADABLE" in res.output and "bomb.png: image of 400,000,000 pixels" in res.output


# --- 9. one line instead of a traceback ---------------------------------------------------------------

@pytest.mark.parametrize("flags, expected", [
    (["--img-size", "0"], "--img-size must be >= 32; got 0"),
    (["--img-size", "-5"], "--img-size must be >= 32; got -5"),
    (["--operating-point", "youdn"], "--operating-point must be one of best_f1, youden, sensitivity; got 'youdn'"),
    (["--finetune-bn", "frozn"], "--finetune-bn must be one of frozen, train; got 'frozn'"),
    (["--optimizer", "adam"], "--optimizer must be one of adamw, sgd"),
    (["--stages", "head,warmup"], "--stages must list head and/or finetune"),
    (["--val-fraction", "1.5"], "--val-fraction must be < 1.0"),
])
def test_9_bad_options_exit_2_at_once_and_make_nothing(tiny_data, tmp_path, flags, expected):
    out = tmp_path / "never"
    res = invoke("train", "--data", tiny_data, "--out", out, *flags)
    assert res.exit_code == 2, res.output
    assert expected in res.output and "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_9_gpu_without_one(tiny_data, tmp_path):
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--accelerator", "gpu")
    assert res.exit_code == 2 and "--accelerator gpu: no CUDA GPU is visible" in res.output


def test_9_config_files(tiny_data, tmp_path):
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--config", tmp_path / "missing.yaml")
    assert res.exit_code == 2 and "missing.yaml: config file not found" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {img_size: 64\n  oops: [")
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--config", bad)
    assert res.exit_code == 2 and "bad.yaml: not a readable YAML file" in res.output
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  epochs_heads: 3\n")
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--config", unknown)
    assert res.exit_code == 2 and "unknown.yaml: unknown option 'epochs_heads'" in res.output
    typed = tmp_path / "typed.yaml"
    typed.write_text("img_size: big\n")
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--config", typed)
    assert res.exit_code == 2 and "typed.yaml: option 'img_size' must be an integer; got 'big'" in res.output
    assert not (tmp_path / "r").exists()


def test_9_garbage_checkpoint_and_weights(tiny_data, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint at all")
    res = invoke("predict", junk, tiny_data / "test" / "covid")
    assert res.exit_code == 2 and "junk.ckpt: cannot be read as a chestxray checkpoint" in res.output
    assert "weights_only" not in res.output and "Traceback" not in res.output
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--weights", junk, *HEAD)
    assert res.exit_code == 2 and "junk.ckpt: cannot be read as a weights file (--weights)" in res.output
    assert "weights_only" not in res.output


def test_9_predict_out_is_a_folder_checked_before_any_work(relative_runs, tiny_data, tmp_path):
    _, runs = relative_runs
    res = invoke("predict", runs[0], tiny_data / "test", "--out", tmp_path)
    assert res.exit_code == 2 and "is a folder; --out takes a file name" in res.output
    assert "predicted infected" not in res.output


# --- 10. data check finds what training trips on; train checks first ----------------------------------

def test_10_data_check_reports_label_and_split_problems(tiny_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(tiny_data / "train", data / "Train")
    shutil.copytree(tiny_data / "val", data / "val")
    shutil.copytree(tiny_data / "test", data / "test")
    (data / "val" / "normal").rename(data / "val" / "Normal")
    res = invoke("data", "check", data)
    assert res.exit_code == 0, res.output  # spellings are read as one: reported, not a failure
    assert "NOTE class 'normal' is spelt 'Normal' and 'normal'" in res.output and "NOTE split 'Train' read as 'train'" in res.output

    (data / "test" / "tuberculosis").mkdir()
    shutil.copy(next((data / "test" / "covid").iterdir()), data / "test" / "tuberculosis" / "tb.png")
    res = invoke("data", "check", data)
    assert res.exit_code == 1 and "split 'test' has labels ['tuberculosis'] that train lacks" in res.output


def test_10_single_class_and_conflicting_labels(tiny_data, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(tiny_data / "train" / "normal", one / "normal")
    res = invoke("data", "check", one)
    assert res.exit_code == 1 and "train has a single class ['normal']" in res.output
    data = tmp_path / "d"
    shutil.copytree(tiny_data / "train", data / "train")
    src = next((data / "train" / "covid").iterdir())
    shutil.copy(src, data / "train" / "normal" / "same_as_covid.png")  # the same image, labelled twice
    arr = np.asarray(Image.open(next((data / "train" / "pneumonia").iterdir()))).astype(int)
    Image.fromarray(np.clip(arr + 1, 0, 255).astype(np.uint8)).save(data / "train" / "normal" / "near_pneumonia.png")
    res = invoke("data", "check", data, "--out", tmp_path / "r.json")
    assert res.exit_code == 1
    assert "CONFLICT exact duplicate with two labels in train" in res.output and "same_as_covid.png (normal)" in res.output
    assert "CONFLICT near duplicate" in res.output and "near_pneumonia.png (normal)" in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["conflicting_labels"]) == 2 and not report["leakage"]


def test_10_train_checks_before_decoding_and_no_check_skips(tiny_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    shutil.copy(next((data / "train" / "covid").iterdir()), data / "test" / "covid" / "leaked.png")
    cache = tmp_path / "cache"
    res = invoke("train", "--data", data, "--out", tmp_path / "r", "--cache-dir", cache, *HEAD)
    assert res.exit_code == 2 and "1 exact duplicate pairs across splits" in res.output and "leaked.png" in res.output
    assert "--no-check" in res.output and not (cache / "decoded").exists() and not (tmp_path / "r").exists()
    res = invoke("train", "--data", data, "--out", tmp_path / "r", "--cache-dir", cache, "--no-check", *HEAD)
    assert res.exit_code == 0, res.output


# --- 11. progress ------------------------------------------------------------------------------------

def test_11_progress_lines_in_a_log(tiny_data, tmp_path):
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", *[a for a in HEAD if a != "--quiet"],
                 "--cache-dir", tmp_path / "cache")
    assert res.exit_code == 0, res.output
    assert "backbone features of train:" in res.output
    # after the last epoch every phase says what it does (issue 20, item 14), in order
    phases = ["scoring val and test", "fitting the out-of-distribution density", "metrics of", "shortcut audit, lung fields hidden",
              "plots, Grad-CAM examples and the report", "run directory:"]
    at = [res.output.find(p) for p in phases]
    assert -1 not in at and at == sorted(at), dict(zip(phases, at))
    for k in (1, 2):
        line = next(ln for ln in res.output.splitlines() if ln.startswith(f"head epoch {k}/2:"))
        assert "train_loss" in line and "val_auc" in line and "img/s" in line and "ETA" in line
    assert "v_num" not in res.output


def test_11_progress_bar_names_the_stage_and_counts_from_one():
    import lightning as L

    from chestxray.training.progress import StageProgressBar

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            loss = self.lin(batch[0]).pow(2).mean()
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    descriptions = []

    class Spy(StageProgressBar):
        def on_train_epoch_end(self, trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)
            descriptions.append((self.train_progress_bar.desc, dict(self.get_metrics(trainer, pl_module))))

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(max_epochs=3, callbacks=[Spy("finetune")], logger=L.pytorch.loggers.CSVLogger("/tmp/unused-logs"),
                        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    trainer.fit(Tiny(), loader)
    assert [d.rstrip(": ") for d, _ in descriptions] == ["finetune epoch 1/3", "finetune epoch 2/3", "finetune epoch 3/3"]
    assert all("v_num" not in m and "train_loss" in m for _, m in descriptions)


# --- 12. predict output ------------------------------------------------------------------------------

def test_12_predict_prints_each_image_and_writes_json_to_stdout(relative_runs, tiny_data, tmp_path):
    _, runs = relative_runs
    image = next((tiny_data / "test" / "covid").iterdir())
    res = invoke("predict", runs[0], image, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    line = next(ln for ln in res.output.splitlines() if ln.endswith(image.name))
    assert f"{row.p_infected:.3f}" in line and f"{row.threshold:.3f}" in line and row.predicted in line
    res = runner.invoke(app, ["predict", str(runs[0]), str(tiny_data / "test"), "--format", "json", "--out", "-"])
    assert res.exit_code == 0, res.output
    assert not Path("-").exists()
    text = res.stdout
    doc = json.loads(text)
    assert len(doc["predictions"]) == 10 and doc["run"].endswith("best.ckpt") and "not a diagnostic device" in doc["note"]
    assert {"path", "p_infected", "predicted", "threshold"} <= set(doc["predictions"][0])


def test_12_predict_does_not_overwrite_another_runs_file(relative_runs, tiny_data, tmp_path):
    _, (run_a, run_b) = relative_runs
    out = tmp_path / "p.csv"
    images = tiny_data / "test" / "normal"
    assert invoke("predict", run_a, images, "--out", out).exit_code == 0
    assert invoke("predict", run_a, images, "--out", out).exit_code == 0  # its own file: replaced
    res = invoke("predict", run_b, images, "--out", out)
    assert res.exit_code == 2 and "holds predictions of another run" in res.output and str(run_a.name) in res.output
    assert pd.read_csv(out)["run"].iloc[0].startswith(str(run_a.resolve()))
    res = invoke("predict", run_b, images, "--out", out, "--overwrite")
    assert res.exit_code == 0 and pd.read_csv(out)["run"].iloc[0].startswith(str(run_b.resolve()))
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n1,2\n")
    res = invoke("predict", run_a, images, "--out", other)
    assert res.exit_code == 2 and "something other than predictions" in res.output


# --- 13. --help --------------------------------------------------------------------------------------

def test_13_help_describes_every_option_in_one_style():
    res = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = res.output
    assert "<bool>" not in text and "(default:" not in text
    lines = text.splitlines()
    for section in SECTIONS.values():
        for f in section.__dataclass_fields__.values():
            flag = flag_name(f.name)
            line = next((ln for ln in lines if ln.strip().startswith(flag + " ") or ln.strip().startswith(flag + "/")), None)
            assert line is not None, flag
            assert len(line.split(None, 2)) == 3 and f.metadata["help"][:20] in " ".join(text.split()), flag
    for command in ("evaluate", "predict", "explain", "compare"):
        usage = runner.invoke(app, [command, "--help"]).output.splitlines()[0]
        assert "{" not in usage and ("RUN" in usage or "MODEL" in usage), usage
        assert "(default:" not in runner.invoke(app, [command, "--help"]).output


def test_13_data_split_names_the_options_given(tmp_path):
    write_manifest(tmp_path / "m.csv", [{"path": "a.png", "label": "normal"}])
    res = invoke("data", "split", tmp_path / "m.csv", "--val", "0.6", "--test", "0.6")
    assert res.exit_code == 2 and "--val 0.6 and --test 0.6 leave nothing to train on" in res.output
    assert "1.49" not in res.output


# --- 14. the report, packaging -----------------------------------------------------------------------

def test_14_confusion_numbers_readable_and_captions_complete():
    from chestxray.evaluation.plots import count_colour
    from chestxray.evaluation.explain import cam_caption

    assert count_colour(90, 100) == "white" and count_colour(10, 100) == "black" and count_colour(0, 0) == "black"
    caption = cam_caption("x.png", "normal", 0.71, 0.62)
    assert "predicted infected" in caption and "threshold 0.62" in caption and "P(inf) 0.71" in caption


def test_14_synthetic_report_has_no_nih_caveat(relative_runs):
    _, runs = relative_runs
    import re

    html = re.sub(r"data:image/png;base64,[^\"]+", "", (runs[0] / "report.html").read_text())  # text only
    assert "SYNTHETIC" in html and "Labels mined from reports" not in html and "NIH" not in html


def test_14_license_is_an_spdx_string():
    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0"


# --- the error boundary (issue 8): the user's mistakes exit 2 in one line, bugs exit 1 with a traceback --

def test_a_bug_is_not_reported_as_bad_input(monkeypatch, capsys, tiny_data, tmp_path):
    import sys

    from chestxray import cli
    from chestxray.jobs import train as stages

    def broken(*args, **kwargs):
        raise KeyError("a library bug")

    monkeypatch.setattr(stages, "train_run", broken)
    monkeypatch.setattr(sys, "argv", ["chestxray", "train", "--data", str(tiny_data), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "Traceback" in err and "KeyError: 'a library bug'" in err and "Please report it" in err
    assert "error: " not in err
    monkeypatch.undo()  # the real train_run: a bad option is the user's mistake
    monkeypatch.setattr(sys, "argv", ["chestxray", "train", "--data", str(tiny_data), "--out", str(tmp_path / "r"),
                                      "--img-size", "0"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: --img-size must be >= 32; got 0" in err and "Traceback" not in err
