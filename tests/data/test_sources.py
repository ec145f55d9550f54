

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chestxray.data.sources import DataError, Sample, carve_validation, load_samples
from tests.helpers import HEAD, invoke, manifest_rows, write_manifest


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


def _tree(root, splits=("train", "val", "test"), classes=("normal", "covid"), n=1):
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")


@pytest.mark.parametrize("style", ["absolute", "dotdot"])
def test_manifest_keeps_the_split_its_paths_name_wherever_they_are(tmp_path, style):
    data = tmp_path / "data"
    _tree(data)
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id"])
        for split in ("train", "val", "test"):
            for c in ("normal", "covid"):
                p = data / split / c / "0.png"
                w.writerow([str(p) if style == "absolute" else f"../data/{split}/{c}/0.png", c, f"{split}{c}"])
    splits = load_samples(manifest)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "val": 2, "test": 2}
    assert all("/test/" in s.path for s in splits["test"])


def test_manifest_with_some_paths_under_split_folders_is_refused(tmp_path):
    _tree(tmp_path, splits=("test",))
    (tmp_path / "normal").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "normal" / "a.png")
    (tmp_path / "m.csv").write_text("path,label\ntest/normal/0.png,normal\ntest/covid/0.png,covid\nnormal/a.png,normal\n")
    with pytest.raises(DataError, match="2 of 3 labelled rows lie under train/ val/ test/ folders.*'split' column"):
        load_samples(tmp_path / "m.csv")


def test_a_file_listed_twice_is_used_once_and_reported(tmp_path):
    from chestxray.data.sources import discover

    _tree(tmp_path, splits=("train",))
    (tmp_path / "m.csv").write_text("path,label\ntrain/normal/0.png,normal\ntrain/covid/0.png,covid\n"
                                    "./train/normal/0.png,normal\n")
    found = discover(tmp_path / "m.csv")
    assert len(found.splits["train"]) == 2
    assert any("line 4 repeats line 2" in n for n in found.notes)
    (tmp_path / "c.csv").write_text("path,label\ntrain/normal/0.png,normal\ntrain/normal/0.png,covid\n")
    with pytest.raises(DataError, match="line 3 lists train/normal/0.png as 'covid', line 2 as 'normal'"):
        discover(tmp_path / "c.csv")


@pytest.mark.parametrize("encoding,delimiter,name", [("utf-8-sig", ",", None), ("utf-8", ";", "semicolon"),
                                                     ("utf-8-sig", ";", "semicolon"), ("utf-8", "\t", "tab")])
def test_spreadsheet_csv_byte_order_mark_and_delimiters(tmp_path, encoding, delimiter, name):
    from chestxray.data.sources import discover

    _tree(tmp_path, splits=("train",))
    rows = [["path", "label", "patient_id"], ["train/normal/0.png", "Normal", "p1"], ["train/covid/0.png", "COVID", "p2"]]
    (tmp_path / "m.csv").write_text("\r\n".join(delimiter.join(r) for r in rows) + "\r\n", encoding=encoding)
    found = discover(tmp_path / "m.csv")
    assert [(s.label, s.patient_id) for s in found.splits["train"]] == [("normal", "p1"), ("covid", "p2")]
    assert any(f"read as {name}-separated" in n for n in found.notes) == (name is not None)


def test_a_run_directory_in_the_data_folder_is_not_a_class(tmp_path):
    from chestxray.data.sources import discover

    _tree(tmp_path, splits=(), classes=())
    for c in ("normal", "covid"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / c / "a.png")
    (tmp_path / "run1" / "plots").mkdir(parents=True)
    (tmp_path / "run1" / "config.yaml").write_text("data: {}\n")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "run1" / "plots" / "roc.png")
    found = discover(tmp_path)
    assert {s.label for s in found.splits["train"]} == {"normal", "covid"}
    assert any("run1: a chestxray run directory" in n for n in found.notes)


def test_every_readable_format_is_found_in_class_folders(tmp_path):
    """WebP and DICOM without a suffix are images for train and data check as they are for predict."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    (tmp_path / "normal").mkdir()
    (tmp_path / "covid").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "normal" / "a.webp")
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 1, 8, 8, 7
    ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
    ds.PixelData = np.zeros((16, 16), np.uint8).tobytes()
    ds.save_as(tmp_path / "covid" / "IM0001", enforce_file_format=True)
    (tmp_path / "covid" / "notes.txt").write_text("not an image")
    (tmp_path / "covid" / ".DS_Store").write_bytes(b"\0" * 200)
    splits = load_samples(tmp_path)
    assert sorted(Path(s.path).name for s in splits["train"]) == ["IM0001", "a.webp"]
    from chestxray.apps.predict import expand_paths

    assert sorted(Path(p).name for p in expand_paths([tmp_path])) == ["IM0001", "a.webp"]


def test_class_folders_in_any_case_are_one_class(tiny_data, tmp_path):
    from chestxray.data.sources import discover

    data = tmp_path / "d"
    shutil.copytree(tiny_data / "train", data / "train")
    shutil.copytree(tiny_data / "val", data / "val")
    (data / "val" / "normal").rename(data / "val" / "NORMAL")
    found = discover(data)
    assert {s.label for s in found.splits["val"]} == {"covid", "normal", "pneumonia"}
    assert found.label_spellings == {"normal": ["NORMAL", "normal"]}


@pytest.mark.parametrize("names", [("Train", "valid", "TEST"), ("training", "Validation", "test"), ("train", "VAL", "Test")])
def test_split_folder_spellings(tiny_data, tmp_path, names):
    from chestxray.data.sources import discover

    for split, name in zip(("train", "val", "test"), names):
        shutil.copytree(tiny_data / split, tmp_path / name)
    found = discover(tmp_path)
    assert set(found.splits) == {"train", "val", "test"} and found.has_splits
    assert {s.label for s in found.splits["train"]} == {"covid", "normal", "pneumonia"}
    assert len(found.splits["val"]) == len(list((tiny_data / "val").rglob("*.png")))


def test_two_folders_for_one_split_is_an_error(tiny_data, tmp_path):
    from chestxray.data.sources import DataError, discover

    for name in ("train", "val", "valid"):
        shutil.copytree(tiny_data / "val", tmp_path / name)
    with pytest.raises(DataError, match="val/ and valid/"):
        discover(tmp_path)


def test_manifest_split_values_in_any_spelling(tiny_data, tmp_path):
    from chestxray.data.sources import discover

    rows = manifest_rows(tiny_data)
    for r in rows:
        r["split"] = {"train": "Train", "val": "valid", "test": "TEST"}.get(r["split"], r["split"])
    found = discover(write_manifest(tmp_path / "m.csv", rows))
    assert {"train", "val", "test"} <= set(found.splits) and found.split_spellings["valid"] == "val"


@pytest.mark.slow
def test_carved_validation_is_said(tiny_data, tmp_path):
    data = tmp_path / "noval"
    shutil.copytree(tiny_data / "train", data / "Train")
    res = invoke("train", "--data", data, "--out", tmp_path / "r", *HEAD)
    assert res.exit_code == 0, res.output
    assert "has no val split: carved" in res.output and "has no test split: carved" in res.output
