"""Lung-cropped and lung-masked inputs (--lung-crop, --lung-mask): the step itself on constructed cases, and a model
trained with it on real images, whose every consumer (predict, the exported ONNX file, the service) applies it alike."""

import csv

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import chestxray
from chestxray.apps.serve import create_app
from chestxray.data.datamodule import decode_split
from chestxray.data.sources import Sample
from chestxray.data.transforms import Preprocessing
from chestxray.files import load_checked, save_checked
from chestxray.models.lungs import LUNG_MASK_FILL, LungFields, default_lung_model, dilated, lung_box, lung_input
from chestxray.models.predictor import CheckpointError, Predictor
from tests.helpers import SHARED_DATA, invoke


def two_fields(side=100):
    """An image with a gradient everywhere and P(lung) high in two boxes: rows 30-69, columns 20-44 and 55-79."""
    image = np.tile(np.linspace(20, 230, side).astype(np.uint8), (side, 1))
    prob = np.full((side, side), 0.02, np.float32)
    prob[30:70, 20:45] = prob[30:70, 55:80] = 0.98
    return image, prob


def test_the_lungs_box_grows_by_its_margin_within_the_image():
    _, prob = two_fields()
    assert lung_box(prob >= 0.5, 0.0) == (30, 70, 20, 80)
    assert lung_box(prob >= 0.5, 0.1) == (26, 74, 14, 86)  # 10% of 40 rows and of 60 columns on each side
    assert lung_box(prob >= 0.5, 1.0) == (0, 100, 0, 100)  # clipped to the image


def test_dilation_grows_by_a_disc_and_nothing_grows_in_from_the_border():
    from scipy import ndimage

    mask = np.zeros((60, 80), bool)
    mask[30, 40] = mask[0, 0] = True  # one pixel inside, one in the corner
    grown = dilated(mask, 0.05)  # a disc of radius 4 (5% of 80)
    yy, xx = np.mgrid[:60, :80]
    disc = ((yy - 30) ** 2 + (xx - 40) ** 2 <= 16) | (yy ** 2 + xx ** 2 <= 16)
    assert (grown == disc).all()
    rng = np.random.default_rng(0)  # the same pixels as scipy's binary dilation with that disc, on random masks
    for _ in range(20):
        m = rng.random((int(rng.integers(20, 120)), int(rng.integers(20, 120)))) < 0.01
        m[:, :2] = True
        r = max(1, round(0.05 * max(m.shape)))
        y, x = np.mgrid[-r:r + 1, -r:r + 1]
        assert (dilated(m) == ndimage.binary_dilation(m, structure=y ** 2 + x ** 2 <= r * r)).all()


def test_masking_keeps_the_dilated_lungs_and_blanks_the_rest():
    image, prob = two_fields()
    out = lung_input(image, LungFields.of(prob), crop=False, mask=True)
    keep = dilated(prob >= 0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[keep] == image[keep]).all() and (out[~keep] == LUNG_MASK_FILL).all()
    assert keep.sum() > (prob >= 0.5).sum()  # grown beyond the fields themselves


def test_cropping_resizes_the_lungs_box_to_the_whole_image():
    image, prob = two_fields()
    out = lung_input(image, LungFields.of(prob), crop=True, mask=False)
    top, bottom, left, right = lung_box(prob >= 0.5)
    assert out.shape == image.shape
    # the gradient runs along the columns: the crop's first and last columns are those of the box
    assert abs(int(out[50, 0]) - int(image[50, left])) <= 3 and abs(int(out[50, -1]) - int(image[50, right - 1])) <= 3
    both = lung_input(image, LungFields.of(prob), crop=True, mask=True)
    assert (both[:, 0] == LUNG_MASK_FILL).all() and both[50, 50] > LUNG_MASK_FILL  # masked first, then cropped


def test_an_image_without_a_plausible_pair_of_lungs_is_taken_whole():
    image, prob = two_fields()
    one = prob.copy()
    one[:, 50:] = 0.02  # one field only
    for p in (one, np.full_like(prob, 0.02)):
        assert (lung_input(image, LungFields.of(p), crop=True, mask=True) == image).all()


def test_the_lung_input_is_part_of_the_preprocessing_contract():
    prep = Preprocessing(64, (0.5,) * 3, (0.5,) * 3, lung_crop=True, lung_segmenter="lungs-v7.pt weights-sha256:ab")
    assert Preprocessing.from_dict(prep.to_dict()) == prep and prep.lung_input
    old = {k: v for k, v in prep.to_dict().items() if not k.startswith("lung")}  # a contract written before the option
    assert not Preprocessing.from_dict(old).lung_input


@pytest.fixture(scope="module")
def lung_run(tmp_path_factory):
    """Trained on 48 real chest X-rays with --lung-crop --lung-mask: head only, 64 px, one epoch."""
    if not (SHARED_DATA / "labels.csv").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("lung-input")
    with open(SHARED_DATA / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = []
    for split, per_class in (("train", 12), ("val", 6), ("test", 6)):
        for label in ("normal", "pneumonia"):
            chosen += [{"path": str(SHARED_DATA / r["path"]), "label": label, "patient_id": r["patient_id"], "split": split}
                       for r in rows if r["path"].startswith(f"{split}/") and r["label"] == label][:per_class]
    manifest = root / "labels.csv"
    pd.DataFrame(chosen).to_csv(manifest, index=False)
    out = root / "run"
    res = invoke("train", "--data", str(manifest), "--out", str(out), "--img-size", "64", "--stages", "head",
                 "--epochs-head", "1", "--lung-crop", "--lung-mask", "--no-audit", "--quiet")
    assert res.exit_code == 0, res.output
    return out, [c["path"] for c in chosen if c["split"] == "test"]


@pytest.mark.slow
def test_a_lung_input_model_applies_it_everywhere(lung_run, tmp_path):
    run, test_images = lung_run
    ckpt = load_checked(run / "checkpoints" / "best.ckpt", "checkpoint")
    prep = ckpt["contract"]["preprocessing"]
    assert prep["lung_crop"] and prep["lung_mask"] and prep["lung_segmenter"].startswith("lungs-v7.pt weights-sha256:")
    assert "segmenter" in ckpt  # the segmenter travels with the model
    assert "Lung input: each image masked outside the dilated lung fields and cropped" in (run / "model_card.md").read_text()

    # predict = decode, the packaged segmenter's crop and mask, the network; and the step changes the numbers
    predictor = Predictor.load(run)
    table, _ = predictor.predict([Sample(p, None) for p in test_images])
    raw = decode_split([Sample(p, None) for p in test_images], 64, False, "x")
    probs = default_lung_model().probabilities(raw.images)
    taken = np.stack([lung_input(raw.images[i], LungFields.of(p), True, True) for i, p in enumerate(probs)])
    by_hand = predictor.p_infected(predictor.logits(taken))
    assert np.abs(table["p_infected"].to_numpy() - by_hand).max() < 1e-6
    assert np.abs(predictor.p_infected(predictor.logits(raw.images)) - by_hand).max() > 1e-3
    assert table["lungs_found"].all()
    api = chestxray.load(run).predict(test_images)  # the Python API: the same step, the same numbers
    assert list(api["path"]) == list(table["path"]) and (api["p_infected"] == table["p_infected"]).all()

    # the exported file carries the segmenter and predicts the same table
    onnx_file = tmp_path / "lungs.onnx"
    res = invoke("export", str(run), "--out", str(onnx_file), *test_images[:6])
    assert res.exit_code == 0, res.output
    assert "largest difference in P(lung)" in res.output
    out = tmp_path / "onnx.csv"
    res = invoke("predict", str(onnx_file), *test_images, "--out", str(out))
    assert res.exit_code == 0, res.output
    exported = pd.read_csv(out)
    assert np.abs(exported["p_infected"].to_numpy() - table["p_infected"].to_numpy()).max() <= 1e-4
    assert (exported["lungs_found"] == table["lungs_found"]).all()

    # the service takes the raw upload and applies the same step
    with TestClient(create_app(run)) as client:
        files = [("files", (f"{i}.png", open(p, "rb").read(), "image/png")) for i, p in enumerate(test_images[:3])]
        body = client.post("/predict", files=files).json()
    assert [p["p_infected"] for p in body["predictions"]] == pytest.approx(table["p_infected"][:3].tolist(), abs=1e-6)


@pytest.mark.slow
def test_a_lung_input_checkpoint_without_its_segmenter_is_refused(lung_run, tmp_path):
    run, _ = lung_run
    ckpt = load_checked(run / "checkpoints" / "best.ckpt", "checkpoint")
    del ckpt["segmenter"]
    broken = tmp_path / "best.ckpt"
    save_checked(ckpt, broken)
    with pytest.raises(CheckpointError, match="holds no lung segmenter"):
        Predictor.load(broken)
    ckpt["segmenter"] = {"format": "something else"}
    save_checked(ckpt, broken)
    with pytest.raises(CheckpointError, match="not a chestxray lung segmenter"):
        Predictor.load(broken)
