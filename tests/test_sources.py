import csv

import pytest
from PIL import Image
import numpy as np

from chestxray.data.sources import DataError, Sample, carve_validation, load_samples


def test_folder_discovery(tiny_data):
    splits = load_samples(tiny_data)
    assert set(splits) == {"train", "val", "test"}
    assert {s.label for s in splits["train"]} == {"covid", "normal", "pneumonia"}
    assert all(s.source == "synthetic-phantom" for s in splits["train"])
    n = sum(len(v) for v in splits.values())
    assert n == 48


def test_manifest_with_unlabelled_rows(tiny_data):
    splits = load_samples(tiny_data / "manifest.csv")
    assert len(splits["unlabelled"]) == 4 and all(s.label is None for s in splits["unlabelled"])
    assert all(s.patient_id for s in splits["train"])
    assert len(splits["train"]) == len(load_samples(tiny_data)["train"])


def test_manifest_split_from_path_prefix(tmp_path):
    for split in ("train", "test"):
        for c in ("normal", "covid"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / split / c / "x.png")
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id"])
        for split in ("train", "test"):
            for c in ("normal", "covid"):
                w.writerow([f"{split}/{c}/x.png", c, f"p-{split}-{c}"])
    splits = load_samples(tmp_path / "labels.csv")
    assert set(splits) == {"train", "test"} and len(splits["train"]) == 2


def test_empty_class_folder_is_an_error(tmp_path):
    (tmp_path / "train" / "normal").mkdir(parents=True)
    (tmp_path / "train" / "covid").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "train" / "normal" / "a.png")
    with pytest.raises(DataError, match="covid: empty class folder"):
        load_samples(tmp_path)


def test_missing_path_and_bad_manifest(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_samples(tmp_path / "nope")
    (tmp_path / "m.csv").write_text("file,label\na.png,normal\n")
    with pytest.raises(DataError, match="'path' column"):
        load_samples(tmp_path / "m.csv")


def test_carve_validation_patient_level_and_stratified():
    samples = []
    for pid in range(60):
        label = ["normal", "covid", "pneumonia"][pid % 3]
        samples += [Sample(f"p{pid}_{k}.png", label, f"patient-{pid}") for k in range(1 + pid % 2)]
    tr, va = carve_validation(samples, 0.2, seed=3)
    assert len(tr) + len(va) == len(samples)
    assert not {s.patient_id for s in tr} & {s.patient_id for s in va}
    assert {s.label for s in va} == {"normal", "covid", "pneumonia"}
    assert 0.1 < len(va) / len(samples) < 0.3
    tr2, va2 = carve_validation(samples, 0.2, seed=3)
    assert va2 == va  # fixed seed, same split


def test_carve_validation_without_patients():
    samples = [Sample(f"{i}.png", "normal" if i % 2 else "covid") for i in range(40)]
    tr, va = carve_validation(samples, 0.25, seed=0)
    assert len(va) == 10 and sum(s.label == "covid" for s in va) == 5
