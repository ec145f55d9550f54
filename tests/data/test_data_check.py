import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.cli import app
from chestxray.data.check import dhash, hamming_pairs
from tests.helpers import HEAD, invoke, runner


def test_dhash_near_and_far():
    rng = np.random.default_rng(0)
    a = (rng.random((64, 64)) * 255).astype(np.uint8)
    noisy = np.clip(a.astype(int) + rng.integers(-2, 3, a.shape), 0, 255).astype(np.uint8)
    other = (rng.random((64, 64)) * 255).astype(np.uint8)
    h = np.stack([dhash(a), dhash(noisy), dhash(other)])
    pairs = {(i, j) for i, j, _ in hamming_pairs(h, h, 20) if i < j}
    assert (0, 1) in pairs and (0, 2) not in pairs and (1, 2) not in pairs


def test_clean_data_passes(tiny_data):
    res = runner.invoke(app, ["data", "check", str(tiny_data / "manifest.csv")])
    assert res.exit_code == 0, res.output
    assert "OK: no leakage" in res.output and "unlabelled" in res.output


def test_leakage_is_found_and_fails(tiny_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    src = data / "train" / "covid" / "covid_0000.png"
    shutil.copy(src, data / "test" / "covid" / "copy.png")  # exact duplicate across splits
    arr = np.asarray(Image.open(data / "train" / "normal" / "normal_0000.png")).astype(int)
    Image.fromarray(np.clip(arr + 1, 0, 255).astype(np.uint8)).save(data / "val" / "normal" / "brighter.png")
    (data / "test" / "normal" / "broken.png").write_bytes(b"garbage")
    res = runner.invoke(app, ["data", "check", str(data), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 1
    assert "LEAK exact duplicate" in res.output and "copy.png" in res.output
    assert "LEAK near duplicate" in res.output and "brighter.png" in res.output
    assert "UNREADABLE" in res.output and "broken.png" in res.output
    # a patient in two splits, through the manifest
    rows = list(csv.DictReader(open(tiny_data / "manifest.csv")))
    rows[-5]["patient_id"] = rows[0]["patient_id"]
    assert rows[-5]["split"] != rows[0]["split"]
    man = tiny_data / "leaky.csv"
    with open(man, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = runner.invoke(app, ["data", "check", str(man)])
    man.unlink()
    assert res.exit_code == 1 and f"LEAK patient {rows[0]['patient_id']}" in res.output


def test_split_is_patient_level_and_stratified(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    rows = []
    for pid in range(90):
        label = ["normal", "covid", "pneumonia"][pid % 3]
        for k in range(1 + pid % 3):
            name = f"p{pid}_{k}.png"
            Image.fromarray(np.full((16, 16), (pid * 7 + k) % 255, np.uint8)).save(img / name)
            rows.append({"path": f"img/{name}", "label": label, "patient_id": f"P{pid}"})
    rows.append({"path": "img/p0_0.png", "label": "", "patient_id": "U1"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "sub" / "m-split.csv"
    out.parent.mkdir()
    res = runner.invoke(app, ["data", "split", str(tmp_path / "m.csv"), "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out, keep_default_na=False)
    assert (df["path"].str.startswith("../img/")).all()  # still valid from the new location
    lab = df[df.label != ""]
    assert set(lab.split) == {"train", "val", "test"}
    assert lab.groupby("patient_id")["split"].nunique().max() == 1
    for split in ("val", "test"):
        part = lab[lab.split == split]
        assert set(part.label) == {"normal", "covid", "pneumonia"}
        assert 0.08 < len(part) / len(lab) < 0.25
    assert df[df.label == ""]["split"].tolist() == [""]


def test_data_check_reports_label_and_split_problems(tiny_data, tmp_path):
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


def test_single_class_and_conflicting_labels(tiny_data, tmp_path):
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


@pytest.mark.slow
def test_train_checks_before_decoding_and_no_check_skips(tiny_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    shutil.copy(next((data / "train" / "covid").iterdir()), data / "test" / "covid" / "leaked.png")
    cache = tmp_path / "cache"
    res = invoke("train", "--data", data, "--out", tmp_path / "r", "--cache-dir", cache, *HEAD)
    assert res.exit_code == 2 and "1 exact duplicate pairs across splits" in res.output and "leaked.png" in res.output
    assert "--no-check" in res.output and not (cache / "decoded").exists() and not (tmp_path / "r").exists()
    res = invoke("train", "--data", data, "--out", tmp_path / "r", "--cache-dir", cache, "--no-check", *HEAD)
    assert res.exit_code == 0, res.output
