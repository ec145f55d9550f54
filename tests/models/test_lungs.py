"""The lung segmenter: overlap measures, the training loop on generated masks, the packaged weights on real images,
and the lungs commands."""

import json

import numpy as np
import pytest
from PIL import Image

from chestxray.data.lung_masks import LungDataError, LungSample, read_lung_masks
from chestxray.models.lungs import PACKAGED, LungModel, LungModelError, dice_iou
from tests.helpers import SHARED_DATA, invoke

LUNG_MASKS = SHARED_DATA.parent / "lung-masks"


def test_dice_and_iou_by_hand():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[2:7] = True
    assert dice_iou(a, a) == (1.0, 1.0)
    assert dice_iou(a, ~a) == (0.0, 0.0)
    assert dice_iou(np.zeros_like(a), np.zeros_like(a)) == (1.0, 1.0)  # nothing to find, nothing found
    d, j = dice_iou(a, b)  # 30 shared of 50 + 50; union 70
    assert d == pytest.approx(0.6) and j == pytest.approx(30 / 70)
    ignore = np.zeros_like(a)
    ignore[5:7] = True  # the part of b outside a, left out
    assert dice_iou(a, b, ignore) == pytest.approx((60 / 80, 30 / 50))


def lung_phantoms(root, n=16, size=64, seed=0):
    """Generated 'radiographs': a bright body with two dark elliptic lung fields that move and change size, the
    lung-masks folder layout (labels.csv, images/, masks/)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size] / size
    rows = ["image,mask,source,patient_id,dataset_split"]
    for i in range(n):
        cy, dx, ry, rx = rng.uniform(0.42, 0.55), rng.uniform(0.18, 0.24), rng.uniform(0.22, 0.3), rng.uniform(0.1, 0.15)
        mask = np.zeros((size, size), bool)
        for cx in (0.5 - dx, 0.5 + dx):
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image = np.where(mask, 60, 190) + rng.normal(0, 12, (size, size))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"p{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"p{i}.png")
        split = "train" if i < n - 6 else "val" if i < n - 3 else "test"
        rows.append(f"images/p{i}.png,masks/p{i}.png,phantom,p{i},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_reading_a_lung_masks_folder(tmp_path):
    root = lung_phantoms(tmp_path / "lm", n=8)
    samples = read_lung_masks(root)
    assert len(samples) == 8 and samples[0].image == root / "images" / "p0.png" and samples[0].source == "phantom"
    with pytest.raises(LungDataError, match="no labels.csv"):
        read_lung_masks(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "p0.png")
    from chestxray.data.lung_masks import load_sample

    with pytest.raises(LungDataError, match="mask of 10x10 px for an image of 64x64"):
        load_sample(samples[0])
    assert isinstance(samples[0], LungSample)


@pytest.mark.slow
def test_the_training_loop_learns_generated_lung_fields(tmp_path):
    from chestxray.data.lung_masks import select
    from chestxray.training.lungs import fit_lungs

    samples = read_lung_masks(lung_phantoms(tmp_path / "lm", n=16))
    net, history = fit_lungs(select(samples, "train"), select(samples, "val"), tmp_path / "out", epochs=6, batch_size=4,
                             lr=5e-3, progress=False, size=64)
    assert history["best_val_dice"] > 0.8
    model = LungModel(net, img_size=64)
    from chestxray.data.lung_masks import load_sample

    image, mask, _ = load_sample(select(samples, "test")[0])
    assert dice_iou(model.masks([image])[0], mask)[0] > 0.8
    model.save(tmp_path / "m.pt")
    again = LungModel.load(tmp_path / "m.pt")  # fp16 on disk: the same masks
    assert dice_iou(again.masks([image])[0], model.masks([image])[0])[0] > 0.99


def test_a_damaged_segmenter_file_is_refused(tmp_path):
    bad = tmp_path / "lungs.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(LungModelError):
        LungModel.load(bad)
    with pytest.raises(LungModelError, match="no lung segmenter there"):
        LungModel.load(tmp_path / "missing.pt")


def test_the_packaged_segmenter_says_where_it_came_from():
    record = json.loads(PACKAGED.with_suffix(".json").read_text())
    assert record["trained_on"] == ["cohen-v7"] and "CC BY 4.0" in record["licence"] and "JSRT" in record["licence"]
    assert record["command"].startswith("chestxray lungs train") and PACKAGED.stat().st_size <= 8 * 2**20


@pytest.mark.slow
@pytest.mark.skipif(not LUNG_MASKS.exists(), reason=f"real lung masks not found at {LUNG_MASKS}")
def test_the_packaged_segmenter_on_real_test_images(tmp_path):
    """A handful of the shared test images of each source: V7/Cohen (trained on) and JSRT (an external test, whose
    masks leave out the lung behind the heart that V7's include)."""
    from chestxray.data.lung_masks import load_sample, select

    model = LungModel.load()
    samples = read_lung_masks(LUNG_MASKS)
    for source, floor in (("cohen-v7", 0.90), ("jsrt", 0.85)):
        dice = [dice_iou(model.masks([im])[0], m, ign)[0]
                for im, m, ign in map(load_sample, select(select(samples, "test"), sources=(source,))[:8])]
        assert np.mean(dice) >= floor, (source, dice)


@pytest.mark.slow
def test_lungs_commands_evaluate_and_predict(tmp_path):
    root = lung_phantoms(tmp_path / "lm", n=8)
    res = invoke("lungs", "evaluate", "--data", root, "--split", "test", "--out", tmp_path / "e.json", "--bootstrap", "50")
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "e.json").read_text())
    f = r["sources"]["phantom"]
    assert f["n"] == 3 and 0 <= f["dice"] <= 1 and len(r["images"]) == 3 and f["trained_on"] is False
    res = invoke("lungs", "predict", root / "images", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "p0-mask.png").exists() and (tmp_path / "p" / "p0-overlay.png").exists()
    mask = np.asarray(Image.open(tmp_path / "p" / "p0-mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    res = invoke("lungs", "evaluate", "--data", tmp_path)
    assert res.exit_code == 2 and "no labels.csv" in res.output


def fields(*boxes, size=100):
    m = np.zeros((size, size), bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_a_plausible_pair_of_lung_fields():
    from chestxray.models.lungs import lung_fields

    assert lung_fields(fields((25, 75, 15, 40), (25, 75, 60, 85))) == "ok"
    assert lung_fields(fields()) == "no lung field found"
    assert lung_fields(fields((25, 75, 15, 40))).startswith("one lung field only")
    assert lung_fields(fields((25, 75, 15, 40), (25, 75, 60, 61))).startswith("one lung field only")  # a sliver
    assert lung_fields(fields((20, 80, 5, 25), (20, 80, 27, 45))) == "both lung fields on one side of the image"
    assert lung_fields(fields((0, 100, 0, 45), (0, 100, 55, 100))).startswith("lung fields cover 90%")
    assert lung_fields(fields((0, 20, 15, 40), (0, 20, 60, 85))) == "lung fields outside the middle of the image"


@pytest.mark.slow
def test_predict_says_where_no_lungs_are_found(tiny_run, tmp_path):
    """predict's table, the API's and the service's carry lungs_found; a blank image and a text screenshot have none."""
    import chestxray

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((128, 128), 200, np.uint8)).save(blank)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128)).astype(np.uint8)).save(noise)
    res = invoke("predict", tiny_run, blank, noise, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    import pandas as pd

    df = pd.read_csv(tmp_path / "p.csv")
    assert not df["lungs_found"].any() and (df["lung_fields"] != "ok").all()
    assert "no plausible pair of lung fields" in res.output
    table = chestxray.load(tiny_run).predict([blank, noise])
    assert list(table["lungs_found"]) == [False, False]
    assert "lungs_found" not in chestxray.load(tiny_run).predict([blank], lungs=False)
    lungs = chestxray.segment_lungs([blank], out=tmp_path / "masks")
    assert list(lungs["lungs_found"]) == [False] and (tmp_path / "masks" / "blank-mask.png").exists()


def test_fields_keep_the_mask_and_the_verdict_of_every_image_across_batches():
    """A split keeps `LungFields` (boolean masks and the check's verdict), read from the probabilities a batch at a
    time: the same masks and verdicts as the probabilities themselves give, for more images than one batch holds."""
    from chestxray.models.lungs import BATCH, LungFields, fields_found, lung_fields

    class Given(LungModel):  # the segmenter's probabilities, stood in for: two plausible fields or noise, by turns
        def probabilities(self, images):
            self.calls.append(len(images))
            return [probs[int(im[0, 0])] for im in images]

    rng = np.random.default_rng(0)
    pair = fields((25, 75, 15, 40), (25, 75, 60, 85)).astype(np.float32) * 0.9 + 0.05
    probs = [pair, rng.random((100, 100)).astype(np.float32)] * (BATCH + 1)
    images = [np.full((100, 100), i, np.uint8) for i in range(len(probs))]
    model = Given(net=None)
    model.calls = []
    found = model.fields(images)
    assert model.calls == [BATCH, BATCH, 2]  # never more than a batch of float maps at once
    assert all(f.mask.dtype == bool for f in found)
    for f, p in zip(found, probs):
        assert (f.mask == (p >= 0.5)).all() and f.reason == lung_fields(p >= 0.5, p)
    ok, reasons = fields_found(found)
    assert ok.tolist() == [True, False] * (BATCH + 1) and reasons[1].startswith("no clear lung fields")
    assert LungFields.of(pair).found and not LungFields.of(probs[1]).found
