"""Importers of public datasets in their native layouts, each built here in miniature; the shared sample of the COVID-19
Radiography Database read through its importer."""

import numpy as np
import pytest
from PIL import Image

import chestxray
from chestxray.data.importers import FORMATS, import_dataset, parse_mapping, url_source
from chestxray.data.sources import DataError, read_manifest
from tests.helpers import SHARED_DATA, invoke, write_dicom, write_manifest

COVID_SAMPLE = SHARED_DATA.parent / "covid-radiography-sample"


def png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


def kermany(root):
    base = root / "chest_xray"
    for split, n, first in (("train", 3, 0), ("test", 2, 10)):
        for i in range(n):
            png(base / split / "NORMAL" / f"IM-0{first + i:02d}5-0001.png")
            png(base / split / "PNEUMONIA" / f"person{first + i}_bacteria_{i}.png")
    png(base / "train" / "PNEUMONIA" / "person1_virus_7.png")  # a second film of person1
    png(base / "train" / "NORMAL" / "NORMAL2-IM-1427-0001.png")
    png(base / "val" / "NORMAL" / "NORMAL2-IM-1430-0001.png")
    png(base / "val" / "PNEUMONIA" / "person99_bacteria_1.png")
    png(base / "train" / "NORMAL" / "notes.png")  # no patient in its name
    return root


def test_kermany_patients_splits_and_its_tiny_validation_folder(tmp_path):
    r = import_dataset("kermany", kermany(tmp_path))
    rows = {row["path"].split("/")[-1]: row for row in r.rows}
    assert rows["person1_virus_7.png"]["patient_id"] == rows["person1_bacteria_1.png"]["patient_id"] == "kermany-person1"
    assert rows["person1_virus_7.png"]["finding"] == "virus" and rows["person1_bacteria_1.png"]["finding"] == "bacteria"
    assert rows["NORMAL2-IM-1427-0001.png"]["patient_id"] == "kermany-NORMAL2-IM-1427"
    assert rows["IM-0005-0001.png"]["label"] == "normal" and rows["IM-0005-0001.png"]["patient_id"] == "kermany-IM-0005"
    assert {row["view"] for row in r.rows} == {"AP"} and {row["source"] for row in r.rows} == {"kermany-guangzhou"}
    assert rows["person10_bacteria_0.png"]["split"] == "test" and rows["person1_virus_7.png"]["split"] == "train"
    # the two-image validation folder is too small: imported without a split (validation carved at training), said so
    assert rows["person99_bacteria_1.png"]["split"] == "" and any("too few" in n for n in r.notes)
    assert r.skipped == {"file name without a patient id": 1} and r.read == len(r.rows) + 1
    assert r.mapping == {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}


def test_a_written_manifest_is_read_as_the_project_reads_manifests(tmp_path):
    out = import_dataset("kermany", kermany(tmp_path / "k")).write(tmp_path / "k.csv")
    d = read_manifest(out)
    assert sorted(d.splits) == ["test", "train"] and len(d.splits["test"]) == 4
    s = d.splits["train"][0]
    assert s.patient_id.startswith("kermany-") and s.source == "kermany-guangzhou" and s.view == "AP"


def test_covid_radiography_mapping_sources_and_overrides(tmp_path):
    root = tmp_path / "crd"
    for cls in ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia"):
        for i in range(2):
            png(root / cls / "images" / f"{cls}-{i + 1}.png")
    png(root / "COVID" / "masks" / "COVID-1.png", 255)
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.append(["FILE NAME", "FORMAT", "SIZE", "URL"])
    wb.active.append(["COVID-1", "PNG", "256*256", "https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/"])
    wb.active.append(["COVID-2", "PNG", "256*256", "https://www.sirm.org/category/senza-categoria/covid-19/"])
    wb.save(root / "COVID.metadata.xlsx")
    r = import_dataset("covid-radiography", root)
    by = {row["path"].split("/")[-1]: row for row in r.rows}
    assert by["COVID-1.png"]["source"] == "covid-radiography/bimcv.cipf.es" and by["COVID-2.png"]["source"] == "covid-radiography/sirm.org"
    assert by["COVID-1.png"]["mask"].endswith("COVID/masks/COVID-1.png") and "mask" not in by["COVID-2.png"]
    assert by["Normal-1.png"]["source"] == "covid-radiography/Normal"  # no sheet: the class folder is its source
    assert by["Viral Pneumonia-1.png"]["label"] == by["Lung_Opacity-2.png"]["label"] == "pneumonia"
    assert by["Normal-2.png"]["patient_id"] == "covid-radiography-Normal-2" and any("own patient" in n for n in r.notes)
    r = import_dataset("covid-radiography", root, parse_mapping(["Lung_Opacity=skip", "Viral Pneumonia=viral"]))
    assert r.skipped == {"class folder Lung_Opacity mapped to skip": 2}
    assert {row["label"] for row in r.rows} == {"covid", "normal", "viral"} and r.mapping["Lung_Opacity"] == "skip"
    with pytest.raises(DataError, match="expected NAME=CLASS"):
        parse_mapping(["Lung_Opacity"])


def test_cohen_frontal_xrays_findings_and_urls(tmp_path):
    root = tmp_path / "cohen"
    rows = []
    for i, (finding, view, modality) in enumerate([
            ("Pneumonia/Viral/COVID-19", "PA", "X-ray"), ("Pneumonia/Bacterial/Streptococcus", "AP Supine", "X-ray"),
            ("No Finding", "AP", "X-ray"), ("Tuberculosis", "PA", "X-ray"), ("Pneumonia/Viral/COVID-19", "L", "X-ray"),
            ("Pneumonia/Viral/COVID-19", "Axial", "CT"), ("todo", "PA", "X-ray")]):
        png(root / "images" / f"{i}.png")
        rows.append({"patientid": str(i % 3), "offset": "", "finding": finding, "view": view, "modality": modality,
                     "folder": "images", "filename": f"{i}.png", "url": f"https://example.org/{i}", "license": "CC BY"})
    rows.append({**rows[0], "filename": "missing.png"})
    write_manifest(root / "metadata.csv", rows)
    r = import_dataset("cohen", root)
    assert [(row["label"], row["view"], row["patient_id"]) for row in r.rows] == [
        ("covid", "PA", "cohen-0"), ("pneumonia", "AP", "cohen-1"), ("normal", "AP", "cohen-2")]
    assert r.rows[0]["url"] == "https://example.org/0" and r.rows[0]["license"] == "CC BY"
    assert r.skipped == {"finding Tuberculosis not mapped": 1, "view L, not frontal": 1, "modality CT, not an X-ray": 1,
                         "finding todo not mapped": 1, "image file missing": 1}
    r = import_dataset("cohen", root, {"Tuberculosis": "tb"})
    assert "tb" in {row["label"] for row in r.rows}


def test_nih_pneumonia_against_no_finding_with_the_official_test_list(tmp_path):
    root = tmp_path / "nih"
    entries = [("00000001_000.png", "No Finding", "1", "PA"), ("00000001_001.png", "Pneumonia|Effusion", "1", "AP"),
               ("00000002_000.png", "Effusion", "2", "PA"), ("00000003_000.png", "Pneumonia", "3", "PA"),
               ("00000004_000.png", "No Finding", "4", "PA")]
    for name, *_ in entries[:4]:
        png(root / "images_001" / "images" / name)
    write_manifest(root / "Data_Entry_2017_v2020.csv", [{"Image Index": n, "Finding Labels": f, "Follow-up #": "0",
                                                     "Patient ID": p, "View Position": v} for n, f, p, v in entries])
    (root / "test_list.txt").write_text("00000003_000.png\n")
    r = import_dataset("nih", root)
    got = {row["path"].split("/")[-1]: (row["label"], row["patient_id"], row["view"], row["split"]) for row in r.rows}
    assert got == {"00000001_000.png": ("normal", "nih-1", "PA", ""), "00000001_001.png": ("pneumonia", "nih-1", "AP", ""),
                   "00000003_000.png": ("pneumonia", "nih-3", "PA", "test")}
    assert r.skipped == {"findings without Pneumonia (not normal either)": 1, "image file missing": 1}


def test_rsna_boxes_classes_and_views(tmp_path):
    root = tmp_path / "rsna"
    (root / "stage_2_train_images").mkdir(parents=True)
    for pid, view in (("a", "PA"), ("b", "AP"), ("c", "AP")):
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", np.zeros((4, 4)))
        import pydicom

        ds = pydicom.dcmread(root / "stage_2_train_images" / f"{pid}.dcm")
        ds.ViewPosition = view
        ds.save_as(root / "stage_2_train_images" / f"{pid}.dcm")
    write_manifest(root / "stage_2_train_labels.csv", [
        {"patientId": "a", "x": "1", "y": "1", "width": "2", "height": "2", "Target": "1"},
        {"patientId": "a", "x": "5", "y": "1", "width": "2", "height": "2", "Target": "1"},  # a second box, one image
        {"patientId": "b", "x": "", "y": "", "width": "", "height": "", "Target": "0"},
        {"patientId": "c", "x": "", "y": "", "width": "", "height": "", "Target": "0"},
        {"patientId": "d", "x": "", "y": "", "width": "", "height": "", "Target": "0"}])
    r = import_dataset("rsna-pneumonia", root)
    assert [(row["label"], row["view"]) for row in r.rows] == [("pneumonia", "PA"), ("normal", "AP"), ("normal", "AP")]
    assert any("Target 0" in n for n in r.notes) and r.skipped == {"image file missing": 1}
    write_manifest(root / "stage_2_detailed_class_info.csv", [{"patientId": "a", "class": "Lung Opacity"},
                                                         {"patientId": "b", "class": "No Lung Opacity / Not Normal"},
                                                         {"patientId": "c", "class": "Normal"}])
    r = import_dataset("rsna-pneumonia", root)
    assert [(row["patient_id"], row["label"]) for row in r.rows] == [("rsna-a", "pneumonia"), ("rsna-c", "normal")]
    assert r.skipped == {"No Lung Opacity / Not Normal mapped to skip": 1, "image file missing": 1}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_folder_in_another_layout_is_refused_by_name(tmp_path, fmt):
    png(tmp_path / "x.png")
    with pytest.raises(DataError, match=f"{tmp_path}: not"):
        import_dataset(fmt, tmp_path)


def test_unknown_format_missing_folder_and_nothing_to_write(tmp_path):
    with pytest.raises(DataError, match="unknown dataset format 'padchest'"):
        import_dataset("padchest", tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        import_dataset("kermany", tmp_path / "absent")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="nothing to import"):
        import_dataset("kermany", tmp_path).write(tmp_path / "m.csv")


def test_url_source():
    assert url_source("https://www.kaggle.com/c/rsna") == "kaggle.com" and url_source("") == "unknown"


@pytest.mark.skipif(not COVID_SAMPLE.exists(), reason=f"{COVID_SAMPLE} not found")
def test_the_shared_covid_radiography_sample_through_the_cli_and_the_api(tmp_path):
    out = tmp_path / "crs.csv"
    res = invoke("data", "import", "covid-radiography", COVID_SAMPLE, "--out", out)
    assert res.exit_code == 0, res.output
    assert "read 1200, imported 1200" in res.output and "COVID -> covid" in res.output
    d = read_manifest(out)
    labels = [s.label for s in d.splits["train"]]
    assert labels.count("covid") == 600 and labels.count("normal") == 600
    assert {s.source for s in d.splits["train"]} == {"covid-radiography/COVID", "covid-radiography/Normal"}
    res = invoke("data", "import", "covid-radiography", COVID_SAMPLE, "--out", out)
    assert res.exit_code == 2 and "exists" in res.output
    df = chestxray.import_dataset("covid-radiography", COVID_SAMPLE, mapping={"Normal": "skip"})
    assert len(df) == 600 and df.attrs["skipped"] == {"class folder Normal mapped to skip": 600}
