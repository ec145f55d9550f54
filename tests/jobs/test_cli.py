"""The CLI end to end on tiny synthetic phantoms."""

import json
import shutil

import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import FAST, invoke


@pytest.fixture(scope="module")
def trained_run(trained, tmp_path_factory):
    """A two-stage run (the factory's, copied: these tests write evaluations into it) and what its training printed."""
    shared = trained(*FAST)
    out = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(shared, out)
    return out, trained.output(shared)


def test_train_writes_the_run_directory(trained_run):
    out, output = trained_run
    for f in ["config.yaml", "split.csv", "history.csv", "metrics.json", "checkpoints/best.ckpt",
              "checkpoints/head/best.ckpt", "checkpoints/finetune/best.ckpt", "plots/roc.png", "plots/pr.png",
              "plots/confusion.png", "plots/learning_curves.png", "SYNTHETIC_DATA.txt"]:
        assert (out / f).exists(), f
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["stage"]) == ["head", "head", "finetune"]
    assert hist["val_auc"].notna().all() and hist["train_loss"].notna().all()
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["synthetic"] is True
    assert m["lungs"]["n"] == m["binary"]["at_0.5"]["n"]  # the lung check ran on the evaluated images (--lung-check)
    assert "lungs_found" in pd.read_csv(out / "predictions-test.csv").columns
    assert set(m["stages"]) == {"head", "finetune"} and m["final_stage"] in m["stages"]
    assert m["binary"]["at_0.5"]["n"] == 10
    assert 0 < m["val_threshold"] < 1
    assert "SYNTHETIC" in output and "head best: test" in output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["img_size"] == 64 and cfg["optim"]["epochs_head"] == 2


def test_final_model_chosen_on_validation_not_test(trained_run):
    out, _ = trained_run
    m = json.loads((out / "metrics.json").read_text())
    scores = {s: r["score"] for s, r in m["stages"].items()}
    assert m["final_stage"] == max(scores, key=scores.get)
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["contract"]
    assert ckpt["meta"]["stage"] == m["final_stage"] and ckpt["threshold"] == m["val_threshold"]


def test_evaluate(trained_run, tiny_data, tmp_path):
    out, _ = trained_run
    res = invoke("evaluate", out, "--data", tiny_data / "manifest.csv", "--split", "val", "--out", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["split"] == "val" and m["binary"]["at_0.5"]["n"] == 10
    assert "synthetic-phantom" in m["per_source"]
    for k in ("accuracy", "sensitivity", "specificity", "precision", "f1_infected", "macro_f1", "roc_auc", "pr_auc"):
        assert k in m["binary"]["at_val_threshold"]
    assert (tmp_path / "ev" / "plots" / "roc.png").exists()
    assert m["external"] is False  # the manifest of the training folder is the same data
    assert "EXTERNAL" not in res.output
    missing = invoke("evaluate", out, "--data", tiny_data / "manifest.csv", "--split", "holdout")
    assert missing.exit_code == 2 and "no 'holdout' split" in missing.output


def test_external_evaluation_is_labelled(trained_run, tmp_path):
    from chestxray.data.synthetic import make_dataset

    out, _ = trained_run
    other = make_dataset(tmp_path / "other", {"covid": 3, "normal": 4, "pneumonia": 3}, size=64, seed=9)
    res = invoke("evaluate", out, "--data", other, "--out", tmp_path / "ext")
    assert res.exit_code == 0, res.output
    assert "EXTERNAL evaluation" in res.output
    assert json.loads((tmp_path / "ext" / "metrics.json").read_text())["external"] is True


def test_predict_paths_and_unlabelled_manifest(trained_run, tiny_data, tmp_path):
    out, _ = trained_run
    res = invoke("predict", out, tiny_data / "test" / "covid", tiny_data / "test" / "normal" / "normal_0016.png",
                 "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "p.csv")
    assert len(df) == 4 and {"path", "p_infected", "predicted", "threshold"} <= set(df.columns)
    assert df["p_infected"].between(0, 1).all()
    assert (df["p_infected"] + df["p_normal"] - 1).abs().max() < 1e-5
    thr = df["threshold"].iloc[0]
    assert ((df["p_infected"] >= thr) == (df["predicted"] == "infected")).all()
    res = invoke("predict", out, "--csv", tiny_data / "manifest.csv", "--unlabelled-only", "--out", tmp_path / "u.csv")
    assert res.exit_code == 0, res.output
    u = pd.read_csv(tmp_path / "u.csv")
    assert len(u) == 4 and all("unlabelled" in p for p in u["path"])


def test_wrong_checkpoint_is_a_clear_error(tmp_path, tiny_data):
    bad = tmp_path / "bad.ckpt"
    torch.save({"something": torch.zeros(1)}, bad)
    res = invoke("predict", bad, tiny_data / "test" / "covid")
    assert res.exit_code == 2 and "not a chestxray checkpoint" in res.output
    res = invoke("evaluate", tmp_path, "--data", tiny_data)
    assert res.exit_code == 2 and "no checkpoint found" in res.output


@pytest.mark.slow
def test_corrupt_image_stops_or_is_skipped(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    bad = data / "train" / "covid" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    res = invoke("train", "--data", data, "--out", tmp_path / "r1", *FAST)
    assert res.exit_code == 2 and "broken.png" in res.output
    from tests.helpers import png_header_only

    bomb = data / "train" / "normal" / "bomb.png"  # a 45-byte PNG claiming 20000 x 20000 pixels
    bomb.write_bytes(png_header_only(20000, 20000))
    res = invoke("train", "--data", data, "--out", tmp_path / "r2", "--skip-bad", "--stages", "head", *FAST)
    assert res.exit_code == 0, res.output
    skipped = pd.read_csv(tmp_path / "r2" / "skipped.csv")
    assert sorted(skipped["path"]) == sorted([str(bad), str(bomb)])
    assert "larger than the 64,000,000-pixel limit" in skipped.set_index("path").loc[str(bomb), "reason"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_other_task_schemes_with_focal_loss(task, tiny_data, tmp_path):
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / task, "--task", task, "--loss", "focal",
                 "--stages", "head", *FAST)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / task / "metrics.json").read_text())
    assert "binary" in m and task in m
    if task == "multilabel":
        assert {"samples_f1", "jaccard_accuracy"} <= set(m["multilabel"])
    else:
        assert set(m["multiclass"]["per_class"]) == {"covid", "normal", "pneumonia"}


@pytest.mark.slow
def test_config_file_and_flag_override_and_carved_validation(tiny_data, tmp_path):
    data = tmp_path / "noval"
    shutil.copytree(tiny_data / "train", data / "train")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"img_size": 48, "batch_size": 8}, "train": {"epochs_head": 1, "lr": 0.01}}))
    out = tmp_path / "r"
    res = invoke("train", "--config", cfg, "--data", data, "--out", out, "--img-size", "64", "--stages", "head", "--quiet")
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["img_size"] == 64 and saved["data"]["batch_size"] == 8 and saved["optim"]["lr"] == 0.01
    assert "has no val split: carved" in res.output and "has no test split: carved" in res.output
    split = pd.read_csv(out / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"}
    assert set(split[split.split == "val"]["label"]) == {"covid", "normal", "pneumonia"}
    assert set(split[split.split == "test"]["label"]) == {"covid", "normal", "pneumonia"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test"  # never the validation images that chose the threshold
    assert "never on test" in (out / "model_card.md").read_text()
    # asked for no test split: the figures are validation's, and every output says they are optimistic
    res = invoke("train", "--config", cfg, "--data", data, "--out", tmp_path / "r0", "--test-fraction", "0", "--stages", "head", "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r0" / "metrics.json").read_text())["split"] == "val"
    assert "optimistic, not a test" in res.output and "optimistic figures, not a test" in (tmp_path / "r0" / "model_card.md").read_text()


def test_no_data_and_bad_options(tmp_path, tiny_data):
    res = invoke("train", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "no data" in res.output
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "y", "--stages", "warmup")
    assert res.exit_code == 2 and "--stages" in res.output


@pytest.mark.slow
def test_models_command_lists_offline_weights():
    res = invoke("models")
    assert res.exit_code == 0
    line = next(ln for ln in res.output.splitlines() if ln.startswith("efficientnet_lite0"))
    assert "yes (package" in line
    assert all(n in res.output for n in ("resnet18", "vgg16", "densenet121"))


@pytest.mark.slow
def test_demo_runs_the_whole_job_on_synthetic_data(tmp_path):
    res = invoke("demo", "--out", tmp_path / "demo", "--images", "60", "--img-size", "64", "--quiet")
    assert res.exit_code == 0, res.output
    run = tmp_path / "demo" / "run"
    assert "SYNTHETIC" in res.output and (run / "SYNTHETIC_DATA.txt").exists()
    pred = pd.read_csv(run / "predictions.csv")
    assert len(pred) == 12 and set(pred["source"]) == {"synthetic-phantom"}
    assert json.loads((run / "metrics.json").read_text())["synthetic"] is True


def test_report_is_one_self_contained_file(trained_run):
    out, _ = trained_run
    html = (out / "report.html").read_text()
    for text in ("Research tool, not a diagnostic device", "SYNTHETIC", "Caveats", "Grad-CAM", "Configuration",
                 "best_f1", "youden", "95% bootstrap intervals", 'alt="reliability"'):
        assert text in html, text
    ece = json.loads((out / "metrics.json").read_text())["calibration"]["ece"]
    assert f"Expected calibration error {ece:.3f}" in html  # the figure of metrics.json, not a placeholder
    assert html.count("data:image/png;base64,") >= 6  # curves, confusion, reliability, CAM grids, embedded
    assert 'src="http' not in html and "<script" not in html  # opens offline


def test_evaluations_of_two_sites_never_share_a_folder_and_the_card_finds_them_all(trained_run, tmp_path):
    from chestxray.data.synthetic import make_dataset

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    for earlier in ("evaluations.json", "eval"):  # other tests evaluate the shared run too
        shutil.rmtree(run / earlier, ignore_errors=True) if (run / earlier).is_dir() else (run / earlier).unlink(missing_ok=True)
    sites = []
    for i, name in enumerate(("site-a", "site-b")):
        root = make_dataset(tmp_path / name, {"covid": 3, "normal": 4, "pneumonia": 3}, size=64, seed=20 + i)
        rows = pd.read_csv(root / "manifest.csv")
        rows.to_csv(root / "labels.csv", index=False)  # both sites call their manifest labels.csv
        sites.append(root / "labels.csv")
    for site in sites:
        assert invoke("evaluate", run, "--data", site, "--bootstrap", "0").exit_code == 0
    folders = sorted(p.name for p in (run / "eval").iterdir())
    assert len(folders) == 2 and all(f.startswith("labels-test-") for f in folders), folders
    elsewhere = tmp_path / "elsewhere"
    res = invoke("evaluate", run, "--data", sites[0], "--bootstrap", "0", "--out", elsewhere)
    assert res.exit_code == 0, res.output
    # another site into a folder that holds an evaluation: refused, the first kept
    res = invoke("evaluate", run, "--data", sites[1], "--bootstrap", "0", "--out", elsewhere)
    assert res.exit_code == 2 and "holds another evaluation" in res.output
    assert json.loads((elsewhere / "metrics.json").read_text())["data"] == str(sites[0])
    named = invoke("evaluate", run, "--data", sites[1], "--bootstrap", "0", "--name", "site-b-second")
    assert named.exit_code == 0 and (run / "eval" / "site-b-second" / "metrics.json").exists()
    record = json.loads((run / "evaluations.json").read_text())
    assert len(record) == 4 and str(elsewhere.resolve()) in {e["out"] for e in record}
    assert invoke("card", run).exit_code == 0
    card = (run / "model_card.md").read_text()
    external = card.split("## External validation")[1].split("##")[0]
    assert external.count(str(sites[0])) == 2 and external.count(str(sites[1])) == 2


def test_evaluate_reports_the_intervals_training_reported(trained_run, tiny_data, tmp_path):
    """One bootstrap seed by default: the run's test split evaluated again gets training's own intervals."""
    out, _ = trained_run
    res = invoke("evaluate", out, "--data", tiny_data, "--out", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["binary"]["at_val_threshold"]
    trained = json.loads((out / "metrics.json").read_text())["binary"]["at_val_threshold"]
    assert again["ci95"] == trained["ci95"] and again["ci95"]["roc_auc"][0] is not None


def test_evaluate_an_external_folder_of_class_folders(relative_runs, tiny_data, tmp_path):
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
