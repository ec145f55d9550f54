"""Merging manifests of several datasets: copies across datasets found and dropped by the stated rule, patient ids kept
apart, splits kept or made patient-level, and `data check` naming a class that one source alone holds."""

import numpy as np
import pytest
from PIL import Image

from chestxray.data.check import quick_check
from chestxray.data.merge import merge_manifests
from chestxray.data.sources import DataError, discover, read_manifest
from tests.helpers import invoke, write_manifest


def film(path, seed, size=96):
    """A smooth random grey image (distinct for each seed), saved as PNG or JPEG by the suffix."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    im = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **({"quality": 75} if path.suffix == ".jpg" else {}))
    return path


@pytest.fixture
def two_datasets(tmp_path):
    a, b = tmp_path / "site-a", tmp_path / "site-b"
    rows_a = [{"path": f"img{i}.png", "label": "normal" if i % 2 else "pneumonia", "patient_id": str(i),
               "split": "test" if i == 0 else "train"} for i in range(6)]
    for i in range(6):
        film(a / f"img{i}.png", i)
    film(b / "copy-of-a1.jpg", 1)  # the same film as site-a's img1 (normal), re-saved as JPEG
    film(b / "copy-of-a2.jpg", 2)  # site-a's img2 (pneumonia), labelled normal here
    (b / "bytes-of-a3.png").write_bytes((a / "img3.png").read_bytes())  # an exact copy, same label
    for i in range(10, 38):
        film(b / f"own{i}.png", i)
    rows_b = [{"path": "copy-of-a1.jpg", "label": "normal", "patient_id": "1"},
              {"path": "copy-of-a2.jpg", "label": "normal", "patient_id": "20"},
              {"path": "bytes-of-a3.png", "label": "normal", "patient_id": "21"}]
    rows_b += [{"path": f"own{i}.png", "label": "covid" if (i // 2) % 2 else "normal", "patient_id": str(100 + i // 2)}
               for i in range(10, 38)]  # 14 patients of two films each
    return write_manifest(tmp_path / "site-a.csv", [{**r, "path": str(a / r["path"])} for r in rows_a]), \
        write_manifest(b / "labels.csv", rows_b)


def test_copies_across_datasets_are_dropped_by_the_rule(two_datasets):
    r = merge_manifests(list(two_datasets))
    kept = {row["path"].split("/")[-1] for row in r.rows}
    assert "copy-of-a1.jpg" not in kept and "img1.png" in kept  # the dataset given first keeps its copy
    assert "copy-of-a2.jpg" not in kept and "img2.png" not in kept  # labels differ: both dropped
    assert "bytes-of-a3.png" not in kept and "img3.png" in kept
    assert r.dropped == {"copy of an image of an earlier dataset (site-a)": 2,
                         "copy across datasets with different labels (both dropped)": 2}
    kinds = {d["b"].split("/")[-1]: d["kind"] for d in r.duplicates}
    assert kinds["bytes-of-a3.png"] == "exact copy" and kinds["copy-of-a1.jpg"].startswith("near copy (pHash distance")
    assert len(r.rows) == 6 + 31 - 4
    assert {row["dataset"] for row in r.rows} == {"site-a", "site-b"}  # labels.csv: named by its folder
    assert all(row["source"] == row["dataset"] for row in r.rows)  # no source column: the dataset is the source


def test_patients_kept_apart_and_splits_made_where_missing(two_datasets, tmp_path):
    r = merge_manifests(list(two_datasets), seed=3)
    by = {row["path"].split("/")[-1]: row for row in r.rows}
    assert by["img1.png"]["patient_id"] == "site-a/1"  # id '1' in both datasets: two people
    assert by["img4.png"]["patient_id"] == "4"
    assert by["img0.png"]["split"] == "test" and by["img5.png"]["split"] == "train"  # given splits kept
    made = [row for row in r.rows if row["dataset"] == "site-b"]
    assert all(row["split"] in ("train", "val", "test") for row in made)
    for pid in {row["patient_id"] for row in made}:  # patient-level
        assert len({row["split"] for row in made if row["patient_id"] == pid}) == 1
    out = r.write(tmp_path / "merged.csv")
    assert read_manifest(out).splits and (tmp_path / "merged-duplicates.csv").read_text().count("\n") == 1 + len(r.duplicates)


def test_data_check_names_a_class_one_source_holds(two_datasets, tmp_path):
    out = merge_manifests(list(two_datasets)).write(tmp_path / "merged.csv")
    report = quick_check(discover(out))
    assert report["per_source"]["site-b"]["covid"] == 14 and "covid" not in report["per_source"]["site-a"]
    assert any(w.startswith("class 'covid' comes from one source only (site-b)") for w in report["warnings"])
    assert not any("class 'normal' comes from one source" in w for w in report["warnings"])
    res = invoke("data", "check", out)
    assert "source site-b: covid: 14" in res.output and "class 'covid' comes from one source only" in res.output


def test_the_merge_command(two_datasets, tmp_path):
    out = tmp_path / "m.csv"
    res = invoke("data", "merge", *two_datasets, "--out", out)
    assert res.exit_code == 0, res.output
    assert "dropped: 2 row(s): copy of an image of an earlier dataset (site-a)" in res.output
    assert invoke("data", "merge", *two_datasets, "--out", out).exit_code == 2  # exists: refused without --overwrite
    with pytest.raises(DataError, match="at least two manifests"):
        merge_manifests([two_datasets[0]])
    with pytest.raises(DataError, match="same name"):
        merge_manifests([two_datasets[0], two_datasets[0]])


def test_the_merge_and_check_api_give_the_commands_results(two_datasets, tmp_path):
    import json

    import pandas as pd

    import chestxray

    assert invoke("data", "merge", *two_datasets, "--out", tmp_path / "cli.csv").exit_code == 0
    df = chestxray.merge_datasets(two_datasets, tmp_path / "api.csv")
    cli = pd.read_csv(tmp_path / "cli.csv", keep_default_na=False, dtype=str)
    assert list(df.columns) == list(cli.columns) and df.fillna("").astype(str).values.tolist() == cli.values.tolist()
    assert (tmp_path / "api.csv").read_bytes() == (tmp_path / "cli.csv").read_bytes()
    assert len(df.attrs["duplicates"]) == 3 and df.attrs["dropped"] == {
        "copy of an image of an earlier dataset (site-a)": 2, "copy across datasets with different labels (both dropped)": 2}
    res = invoke("data", "check", tmp_path / "api.csv", "--out", tmp_path / "check.json")
    report = chestxray.check_data(tmp_path / "api.csv")
    assert json.loads(json.dumps(report)) == json.loads((tmp_path / "check.json").read_text())
    assert any("comes from one source only" in w for w in report["warnings"]) and res.exit_code == 0
