"""Beyond the training hospital: the out-of-distribution flag, the shortcut audit, site recalibration."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.sources import Sample
from chestxray.models.ood import FeatureDensity

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory):
    """A head-stage run (the factory's, copied: tests here write into it)."""
    out = tmp_path_factory.mktemp("gen") / "run"
    shutil.copytree(trained("--img-size", "64", "--batch-size", "16", "--stages", "head", "--epochs-head", "3",
                            "--bootstrap", "50", "--quiet"), out)
    return out


@pytest.fixture(scope="module")
def foreign_data(tiny_data, tmp_path_factory):
    """The test images of another 'site': inverted and blurred phantoms, labels kept."""
    root = tmp_path_factory.mktemp("foreign")
    for src in (tiny_data / "test").rglob("*.png"):
        dst = root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        arr = 255 - np.asarray(Image.open(src))
        Image.fromarray(arr).resize((48, 48)).resize((96, 96)).save(dst)
    return root


def test_density_flags_shifted_features():
    rng = np.random.default_rng(0)
    cov = np.diag(np.linspace(3, 0.1, 40))
    train = rng.multivariate_normal(np.zeros(40), cov, 500)
    val = rng.multivariate_normal(np.zeros(40), cov, 300)
    density = FeatureDensity.fit(train, val, quantile=0.95, max_components=16)
    same = rng.multivariate_normal(np.zeros(40), cov, 1000)
    shifted = rng.multivariate_normal(np.full(40, 1.5), cov, 1000)
    assert 0.01 < density.flag(density.score(same)).mean() < 0.12  # about 5% by construction
    assert density.flag(density.score(shifted)).mean() > 0.9
    back = FeatureDensity.from_dict(density.to_dict())
    assert np.allclose(back.score(shifted[:5]), density.score(shifted[:5]), rtol=1e-4) and back.threshold == density.threshold


def test_ood_is_stored_and_reported(run, tiny_data, foreign_data, tmp_path):
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["contract"]
    assert ckpt["ood"]["threshold"] > 0 and ckpt["ood"]["quantile"] == 0.95
    m = json.loads((run / "metrics.json").read_text())
    own = m["out_of_distribution"]
    res = invoke("evaluate", run, "--data", foreign_data, "--out", tmp_path / "ev", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    other = json.loads((tmp_path / "ev" / "metrics.json").read_text())["out_of_distribution"]
    assert other["fraction_flagged"] >= 0.8 and other["fraction_flagged"] > own["fraction_flagged"] + 0.5
    assert "are unlike the training data" in res.output
    assert "Images unlike the training data" in (tmp_path / "ev" / "report.html").read_text()
    res = invoke("predict", run, foreign_data / "normal", tiny_data / "test" / "normal", "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    p = pd.read_csv(tmp_path / "p.csv")
    assert {"ood_score", "out_of_distribution"} <= set(p.columns)
    foreign = p["path"].str.startswith(str(foreign_data))
    assert p.loc[foreign, "out_of_distribution"].mean() > p.loc[~foreign, "out_of_distribution"].mean()
    assert (p["out_of_distribution"] == (p["ood_score"] > ckpt["ood"]["threshold"])).all()


def test_masks_cover_the_lungs_and_the_borders():
    from chestxray.evaluation.audit import border_mask, lung_mask, masked

    lungs, border = lung_mask(100), border_mask(100)
    assert lungs[47, 30] and lungs[47, 70] and not lungs[47, 50] and not lungs[5, 5]  # two fields, mediastinum between
    assert 0.2 < lungs.mean() < 0.4 and not (lungs & border).any()
    images = np.stack([np.full((100, 100), 7, np.uint8), np.arange(10000).reshape(100, 100).astype(np.uint8)])
    images[0, :60] = 200  # median 200 for the first image
    out = masked(images, border)
    assert (out[0][border] == np.median(images[0])).all() and (out[1][~border] == images[1][~border]).all()


@pytest.fixture(scope="module")
def marked_data(tiny_data, tmp_path_factory):
    """Phantoms whose infected images carry a bright marker in a corner: a shortcut outside the lungs."""
    root = tmp_path_factory.mktemp("marked")
    shutil.copytree(tiny_data, root / "d")
    for path in (root / "d").rglob("*.png"):
        if path.parent.name in ("covid", "pneumonia"):
            arr = np.asarray(Image.open(path)).copy()
            arr[:12, :12] = 255
            Image.fromarray(arr).save(path)
    return root / "d"


def test_audit_finds_a_corner_marker_shortcut(marked_data, run, tiny_data, tmp_path):
    res = invoke("train", "--data", marked_data, "--out", tmp_path / "marked", "--img-size", "64", "--batch-size", "16",
                 "--stages", "head", "--epochs-head", "3", "--bootstrap", "0", "--quiet")
    assert res.exit_code == 0, res.output
    report = (tmp_path / "marked" / "report.html").read_text()
    assert "Shortcut audit" in report
    marked = json.loads((tmp_path / "marked" / "metrics.json").read_text())["audit"]
    assert marked["shortcut_suspected"] and "Shortcut suspected" in marked["verdict"]
    assert marked["conditions"]["lungs_hidden"]["roc_auc"] >= 0.9
    assert marked["conditions"]["borders_hidden"]["roc_auc"] < marked["conditions"]["original"]["roc_auc"]
    # the clean and the marked model side by side on their training images (28, against the test split's 10,
    # which are too few to tell AUCs apart): only the marked one separates the classes with the lungs hidden
    audits = {}
    for name, model, data in (("clean", run, tiny_data), ("marked", tmp_path / "marked", marked_data)):
        res = invoke("audit", model, "--data", data, "--split", "train", "--out", tmp_path / f"{name}-train", "--bootstrap", "50")
        assert res.exit_code == 0, res.output
        audits[name] = json.loads((tmp_path / f"{name}-train" / "audit.json").read_text())["conditions"]
    assert set(audits["clean"]) == {"original", "lungs_hidden", "lungs_only", "borders_hidden"}
    assert audits["clean"]["lungs_hidden"]["roc_auc"] < 0.75 < audits["marked"]["lungs_hidden"]["roc_auc"]
    assert "lung fields hidden" in res.output and "ROC-AUC" in res.output


@pytest.fixture(scope="module")
def foreign_site(tiny_data, tmp_path_factory):
    """All labelled phantoms as another site would take them: inverted and blurred, in class folders only."""
    root = tmp_path_factory.mktemp("site")
    for src in tiny_data.glob("*/*/*.png"):
        if src.parts[-3] in ("train", "val", "test"):
            dst = root / src.parent.name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(255 - np.asarray(Image.open(src))).resize((48, 48)).resize((96, 96)).save(dst)
    return root


@pytest.mark.parametrize("head", [False, True])
def test_adapt_makes_a_complete_run_recalibrated_on_the_site(run, foreign_site, tmp_path, head):
    from chestxray.models.calibration import operating_points
    from chestxray.models.predictor import Predictor

    out = tmp_path / "adapted"
    res = invoke("adapt", run, "--data", foreign_site, "--out", out, "--n", "20", "--bootstrap", "50", *(["--head"] if head else []))
    assert res.exit_code == 0, res.output
    assert "before ROC-AUC" in res.output and "after  ROC-AUC" in res.output
    r = json.loads((out / "adapt.json").read_text())
    assert r["n_adaptation"] + r["n_heldout"] == 48 and r["before"]["n"] == r["after"]["n"] == r["n_heldout"]
    for f in ("checkpoints/best.ckpt", "metrics.json", "report.html", "split.csv", "config.yaml"):
        assert (out / f).exists(), f
    split = pd.read_csv(out / "split.csv")
    adapt_rows, held_rows = split[split.split == "adaptation"], split[split.split == "heldout"]
    assert len(adapt_rows) == 20 and not set(adapt_rows.path) & set(held_rows.path)
    old, new = Predictor.load(run), Predictor.load(out)
    assert new.meta["adaptation"]["n"] == 20 and new.meta["adapted_from"].endswith("best.ckpt")
    assert torch.equal(old.model.get_classifier().weight, new.model.get_classifier().weight) != head
    if head:  # threshold and temperature from out-of-fold logits: a head never sets them on images it was fitted to
        assert new.threshold_rule.endswith("(out-of-fold)")
    else:  # the new threshold is the old rule (best F1) on the adaptation images, through predict's forward pass
        table, _ = new.predict([Sample(p, lab) for p, lab in zip(adapt_rows.path, adapt_rows.label)])
        y = (table["label"] != "normal").astype(int).to_numpy()
        assert operating_points(y, table["p_infected"].to_numpy())["best_f1"] == pytest.approx(new.threshold, abs=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "heldout" and metrics["binary"]["at_0.5"]["n"] == r["n_heldout"]


def test_adapt_needs_enough_images(run, foreign_site, tmp_path):
    res = invoke("adapt", run, "--data", foreign_site, "--out", tmp_path / "x", "--n", "48")
    assert res.exit_code == 2 and "--n 48" in res.output
    res = invoke("adapt", run, "--data", foreign_site, "--out", tmp_path / "x", "--operating-point", "youdn")
    assert res.exit_code == 2 and "--operating-point must be one of" in res.output and not (tmp_path / "x").exists()


def test_adapt_to_a_target_sensitivity(run, foreign_site, tmp_path):
    res = invoke("adapt", run, "--data", foreign_site, "--out", tmp_path / "s", "--n", "24", "--bootstrap", "0",
                 "--operating-point", "sensitivity", "--target-sensitivity", "0.9")
    assert res.exit_code == 0, res.output
    ckpt = torch.load(tmp_path / "s" / "checkpoints" / "best.ckpt", weights_only=True)["contract"]
    assert ckpt["threshold_rule"].startswith("sensitivity_0.9, chosen on 24 images of the new site")
    assert ckpt["threshold"] == ckpt["thresholds"]["sensitivity_0.9"]
    res = invoke("adapt", run, "--data", foreign_site, "--out", tmp_path / "c", "--n", "24", "--bootstrap", "0",
                 "--operating-point", "sensitivity", "--target-sensitivity", "0.9", "--target-confidence", "0.9")
    assert res.exit_code == 0, res.output
    conf = torch.load(tmp_path / "c" / "checkpoints" / "best.ckpt", weights_only=True)["contract"]
    assert conf["threshold_rule"].startswith("sensitivity_0.9_conf_0.9, chosen on 24 images")
    assert conf["threshold"] <= ckpt["threshold"]  # a margin for the images it was not chosen on


@pytest.mark.parametrize("method", ["equalize", "percentile"])
def test_intensity_standardisation_removes_exposure(method):
    from chestxray.data.transforms import Standardise

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 64, 64)).astype(np.float64)
    dark = torch.from_numpy((base * 0.3 + 20).astype(np.uint8))  # the same image, underexposed
    bright = torch.from_numpy((base * 0.6 + 90).astype(np.uint8))  # and overexposed
    a, b = Standardise(method)(dark), Standardise(method)(bright)
    assert a.dtype == torch.uint8 and int(a.max()) >= 250 and int(a.min()) <= 5
    assert (a.float() - b.float()).abs().mean() < 6  # the exposures agree after standardisation
    assert (dark.float() - bright.float()).abs().mean() > 50
    assert torch.equal(Standardise("none")(dark), dark)


def test_clahe_evens_out_exposure_and_lifts_local_contrast():
    from chestxray.data.transforms import Standardise

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 64, 64)).astype(np.float64)
    dark = torch.from_numpy((base * 0.3 + 20).astype(np.uint8))
    bright = torch.from_numpy((base * 0.6 + 90).astype(np.uint8))
    a, b = Standardise("clahe")(dark), Standardise("clahe")(bright)
    assert a.dtype == torch.uint8 and a.shape == dark.shape
    assert (a.float() - b.float()).abs().mean() < 0.35 * (dark.float() - bright.float()).abs().mean()
    # a faint texture in one dark corner is stretched there, whatever the rest of the image holds
    img = np.full((1, 128, 128), 200, np.uint8)
    img[0, :32, :32] = 30 + rng.integers(0, 6, (32, 32))
    out = Standardise("clahe")(torch.from_numpy(img))
    assert out[0, :32, :32].float().std() > 2 * torch.from_numpy(img)[0, :32, :32].float().std()


def test_device_look_keeps_shape_and_type_and_changes_pixels():
    from chestxray.data.transforms import DeviceLook

    torch.manual_seed(0)
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 80, 80)).astype(np.uint8))
    outs = [DeviceLook(p=1.0)(x) for _ in range(4)]
    assert all(o.dtype == torch.uint8 and o.shape == x.shape for o in outs)
    assert all(not torch.equal(o, x) for o in outs)
    assert torch.equal(DeviceLook(p=0.0)(x), x)


def test_framing_augmentation_moves_the_frame_further_than_basic():
    from chestxray.data.transforms import train_transform

    # A white square on a bright film: how much of the output is the black canvas, and how the square's
    # width compares with its height, say how far the frame moved.
    x = torch.full((1, 96, 96), 180, dtype=torch.uint8)
    x[0, 32:64, 32:64] = 255

    def draws(augment):
        torch.manual_seed(0)
        outs = [train_transform(64, "none", augment)(x) for _ in range(60)]
        black = [float((o == 0).float().mean()) for o in outs]
        aspect = []
        for o in outs:
            rows, cols = torch.nonzero(o[0] > 230, as_tuple=True)
            if len(rows):
                aspect.append(float((cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1)))
        return outs, black, aspect

    outs, black, aspect = draws("framing")
    assert all(o.shape == (1, 64, 64) and o.dtype == torch.uint8 for o in outs)
    _, black_basic, aspect_basic = draws("basic")
    assert max(black) > 0.3 > max(black_basic)  # zoomed out onto a black canvas
    spread = max(aspect) / min(aspect)
    assert spread > 1.5 and spread > max(aspect_basic) / min(aspect_basic) + 0.2  # squashed and stretched

@pytest.mark.slow
def test_intensity_is_part_of_the_model_contract(tiny_data, tmp_path):
    from chestxray.data.sources import load_samples
    from chestxray.data.transforms import Standardise
    from chestxray.models.predictor import Predictor

    out = tmp_path / "eq"
    res = invoke("train", "--data", tiny_data, "--out", out, "--img-size", "64", "--batch-size", "16", "--stages", "head",
                 "--epochs-head", "2", "--bootstrap", "0", "--intensity", "equalize", "--augment", "domain", "--quiet")
    assert res.exit_code == 0, res.output
    predictor = Predictor.load(out)
    assert predictor.preprocessing.intensity == "equalize"
    split = predictor.decode(load_samples(tiny_data)["test"])
    logits = predictor.logits(split.images)
    # by hand: equalise, resize, normalise, forward
    x = torch.stack([Standardise("equalize")(torch.from_numpy(np.array(split.images[i]))[None]) for i in range(len(split.images))])
    x = torch.nn.functional.interpolate(x.float(), size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    x = ((x.round() / 255 - 0.5) / 0.5).repeat(1, 3, 1, 1)
    with torch.no_grad():
        by_hand = predictor.model.eval()(x)
    assert torch.allclose(logits, by_hand, atol=0.05)


@pytest.mark.slow
def test_test_time_views_are_part_of_the_model_contract(tiny_data, tmp_path):
    """--tta views: every prediction averages the logits of the six views (checked by hand), the stored
    threshold comes from those averaged logits, and the ONNX export computes the same."""
    import copy
    import dataclasses

    import torch.nn.functional as F

    from chestxray.data.sources import load_samples
    from chestxray.models.calibration import best_f1_threshold, into_gap
    from chestxray.models.onnx_model import OnnxPredictor
    from chestxray.models.predictor import Predictor

    out = tmp_path / "tta"
    res = invoke("train", "--data", tiny_data, "--out", out, "--img-size", "64", "--batch-size", "16", "--stages", "head",
                 "--epochs-head", "2", "--bootstrap", "0", "--tta", "views", "--no-audit", "--quiet")
    assert res.exit_code == 0, res.output
    predictor = Predictor.load(out)
    assert predictor.preprocessing.tta == "views"
    split = predictor.decode(load_samples(tiny_data)["test"])
    logits, features = predictor.forward(split.images)
    # the plain view as the contract resizes it (the same transform predict uses), then the views by hand
    resize = predictor.preprocessing.eval_transform()
    x = torch.stack([resize(torch.from_numpy(np.array(i))[None]) for i in split.images]).float() / 255
    views = [x, F.interpolate(x[..., 3:61, 3:61], size=(64, 64), mode="bilinear"),  # 90% centre (58 px)
             F.interpolate(x[..., 6:57, 6:57], size=(64, 64), mode="bilinear"),  # 80% centre (51 px)
             F.interpolate(F.pad(x, (3, 3, 3, 3)), size=(64, 64), mode="bilinear"), x ** 0.8, x ** 1.25]
    model = predictor.model.eval()
    with torch.no_grad():
        each = torch.stack([model(((v - 0.5) / 0.5).repeat(1, 3, 1, 1)) for v in views])
    assert torch.allclose(logits, each.mean(0), atol=0.05)
    assert not torch.allclose(logits, each[0], atol=1e-4)  # the views do change the logits
    plain = copy.copy(predictor)
    plain.preprocessing = dataclasses.replace(predictor.preprocessing, tta="none")
    plain_logits, exact_features = plain.forward(split.images)
    assert torch.equal(features, exact_features)  # the out-of-distribution score sees the plain view
    assert torch.allclose(each[0], plain_logits, atol=0.05)
    val = predictor.decode([s for s in load_samples(out / "split.csv")["val"]])
    y = np.array([predictor.scheme.is_infected(s.label) for s in val.samples])
    p_val = predictor.p_infected(predictor.logits(val.images))
    assert predictor.thresholds["best_f1"] == pytest.approx(into_gap(best_f1_threshold(y, p_val), p_val))
    onnx_file = tmp_path / "tta.onnx"
    res = invoke("export", out, "--out", onnx_file)
    assert res.exit_code == 0, res.output
    onnx_logits, _ = OnnxPredictor.load(onnx_file).forward(split.images)
    assert torch.allclose(onnx_logits, logits, atol=1e-4)
    # adapt --head refits the classifier on the plain view's features, so the adapted model predicts from them
    res = invoke("adapt", out, "--data", tiny_data, "--out", tmp_path / "adapted", "--n", "12", "--head", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    adapted = Predictor.load(tmp_path / "adapted")
    assert adapted.preprocessing.tta == "none"
    adapted_logits, adapted_features = adapted.forward(split.images)
    with torch.no_grad():
        assert torch.allclose(adapted_logits, adapted.model.eval().get_classifier()(adapted_features), atol=1e-5)


def test_product_of_experts_probe_discounts_the_bias_expert(monkeypatch):
    """benchmarks/feature_probe.py --debias: a shortcut the bias expert sees is learned less by the main probe."""
    import importlib.util
    from pathlib import Path

    from sklearn.metrics import roc_auc_score

    bench = Path(__file__).parents[2] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))  # a benchmark imports its neighbour _common, as when run as a script
    spec = importlib.util.spec_from_file_location("feature_probe", bench / "feature_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    rng = np.random.default_rng(0)

    def site(n, shortcut_sign):
        y = rng.integers(0, 2, n)
        signal = (2 * y - 1) * 0.8 + rng.normal(size=n)  # carries over
        shortcut = shortcut_sign * (2 * y - 1) * 1.0 + rng.normal(size=n)  # stronger, flips at the other site
        noise = rng.normal(size=(n, 6))
        return np.column_stack([signal, shortcut, noise]), shortcut[:, None], y

    x, bias, y = site(600, 1.0)
    x_away, _, y_away = site(600, -1.0)
    groups = [f"p{i // 2}" for i in range(len(y))]
    plain = probe.debiased_probe(x, np.zeros_like(bias), y, groups, {"away": x_away, "home": x}, 1.0)
    debiased = probe.debiased_probe(x, bias, y, groups, {"away": x_away, "home": x}, 1.0)
    assert roc_auc_score(y_away, plain["away"]) < 0.45  # the plain probe follows the shortcut and inverts away
    assert roc_auc_score(y_away, debiased["away"]) > roc_auc_score(y_away, plain["away"]) + 0.2
    assert roc_auc_score(y, debiased["home"]) > 0.8  # and still separates the classes at home


@pytest.fixture(scope="module")
def view_manifest(tiny_data, tmp_path_factory):
    """tiny_data's manifest with a view column confounded with the class (normal mostly AP)."""
    t = pd.read_csv(tiny_data / "manifest.csv", keep_default_na=False)
    rng = np.random.default_rng(0)
    ap = np.where(t["label"] == "normal", 0.8, 0.3)
    t["view"] = np.where(t["label"] == "", "", np.where(rng.random(len(t)) < ap, "AP", "PA"))
    t["path"] = [str(tiny_data / p) for p in t["path"]]
    path = tmp_path_factory.mktemp("views") / "manifest.csv"
    t.to_csv(path, index=False)
    return path


def test_balance_view_weights_the_training_loss(view_manifest, tmp_path):
    from chestxray.config import Config
    from chestxray.training.losses import balance_weights
    from chestxray.training.stages import prepare_run, stage_inputs

    cfg = Config()
    cfg.update({"data": {"data": str(view_manifest), "img_size": 64, "batch_size": 16},
                "train": {"balance": "view", "bootstrap": 0, "stages": "head"}})
    run = prepare_run(cfg, tmp_path / "run")
    train = run.decoded["train"].samples
    assert {s.view for s in train} == {"AP", "PA"}
    assert torch.allclose(run.sample_weights, balance_weights(train, "view"))
    assert run.sample_weights.std() > 0.1  # the views were confounded, so the weights differ
    module, _ = stage_inputs(run, "head")
    assert torch.equal(module.criterion.sample_weights, run.sample_weights)
    assert "view" in pd.read_csv(tmp_path / "run" / "split.csv").columns


@pytest.mark.slow
def test_balance_view_trains_from_the_cli_and_needs_views(view_manifest, tiny_data, tmp_path):
    res = invoke("train", "--data", view_manifest, "--out", tmp_path / "run", "--img-size", "64", "--batch-size", "16",
                 "--epochs-head", "2", "--epochs-finetune", "1", "--balance", "view", "--bootstrap", "0", "--quiet")
    assert res.exit_code == 0, res.output
    assert "balance: view" in (tmp_path / "run" / "config.yaml").read_text()
    assert "`--balance view`" in (tmp_path / "run" / "model_card.md").read_text()
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "noview", "--img-size", "64", "--stages", "head",
                 "--balance", "view", "--quiet")
    assert res.exit_code != 0
    assert "view" in res.output and str(tiny_data) in res.output.replace("\n", "")


def test_balance_auto_is_view_where_the_images_have_views(view_manifest, tiny_data):
    from chestxray.config import Config
    from chestxray.data.sources import discover
    from chestxray.training.stages import with_balance_resolved

    cfg = Config()
    assert cfg.loss.balance == "auto"
    assert with_balance_resolved(cfg, discover(view_manifest).splits["train"]).loss.balance == "view"
    assert with_balance_resolved(cfg, discover(tiny_data).splits["train"]).loss.balance == "none"
    assert cfg.loss.balance == "auto"  # the caller's config is left as it was


def test_a_run_made_before_balance_existed_resumes_unweighted(view_manifest, tmp_path):
    """config.yaml of a run made before --balance existed has no `balance`: that run trained unweighted, and
    resumed it must go on so, not take today's default (auto, i.e. view on this data)."""
    import yaml

    from chestxray.config import Config
    from chestxray.training.stages import prepare_run

    cfg = Config()
    cfg.update({"data": {"data": str(view_manifest), "img_size": 64, "batch_size": 16},
                "train": {"bootstrap": 0, "stages": "head"}})
    now = cfg.to_dict()  # written as such runs wrote it: every training option in one `train` section
    old = {"data": now["data"], "model": now["model"], "train": {
        k: v for s in ("optim", "loss", "augment", "calibration", "hardware") for k, v in now[s].items() if k != "balance"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert Config.load(tmp_path / "config.yaml").loss.balance == "auto"  # as a user's config file: the default
    resumed = Config.load_run(tmp_path / "config.yaml")
    assert resumed.loss.balance == "none"
    then = resumed.to_dict()
    assert then["loss"].pop("balance") == "none" and now["loss"].pop("balance") == "auto"
    assert then == now  # nothing else changed
    assert prepare_run(resumed, tmp_path / "run").sample_weights is None
    assert prepare_run(cfg, tmp_path / "run-now").sample_weights is not None


def test_adapt_on_every_image_reports_out_of_fold_figures(run, foreign_site, tmp_path):
    from chestxray.jobs.adapt import adapted_predictor, cross_fitted, load_site, run_rule
    from chestxray.models.calibration import operating_points
    from chestxray.models.predictor import Predictor

    out = tmp_path / "all"
    res = invoke("adapt", run, "--data", foreign_site, "--out", out, "--n", "all", "--bootstrap", "20")
    assert res.exit_code == 0, res.output
    assert "adapted on 48 images" in res.output and "out of fold" in res.output
    r = json.loads((out / "adapt.json").read_text())
    assert r["all"] and r["n_adaptation"] == 48 and r["n_heldout"] == 0 and r["before"]["n"] == r["after"]["n"] == 48
    assert json.loads((out / "metrics.json").read_text())["split"] == "out-of-fold"
    assert "On the out-of-fold split (48 images" in (out / "model_card.md").read_text()
    new = Predictor.load(out)  # the model itself is fitted on all 48
    old = Predictor.load(run)
    site = load_site(old, foreign_site)
    y = np.array([old.scheme.is_infected(s.label) for s in site.samples])
    assert operating_points(y, new.p_infected(site.logits))["best_f1"] == pytest.approx(new.threshold, abs=1e-6)
    # each fold is scored by a model that never saw it
    fold_of, score = cross_fitted(old, site, False, run_rule(old), seed=0)
    assert len(set(fold_of)) >= 2
    k = fold_of[0]
    model, logits = adapted_predictor(old, site, np.flatnonzero(fold_of != k), False, run_rule(old))
    held = np.flatnonzero(fold_of == k)
    assert np.allclose(score[held], model.p_infected(logits[held]) - model.threshold + 0.5)
    assert r["after"]["sensitivity"] == pytest.approx(((score >= 0.5) & (y == 1)).sum() / (y == 1).sum())
