

import json

import pandas as pd
import pytest
import torch

from chestxray.data.labels import TaskScheme
from tests.helpers import HEAD, invoke, manifest_rows, write_manifest


def test_binary_scheme_normal_any_case():
    s = TaskScheme.build("binary", ["COVID", "Normal", "pneumonia", "normal"])
    assert s.classes == ("covid", "normal", "pneumonia")  # one canonical spelling per class
    assert s.normal_class == "normal" and s.num_outputs == 1
    assert s.target("COVID").item() == 1.0 and s.target("Normal").item() == 0.0 and s.target("NORMAL").item() == 0.0
    # a checkpoint written with other spellings reads back canonical
    old = TaskScheme.from_dict({"task": "binary", "classes": ["NORMAL", "PNEUMONIA"], "normal_class": "NORMAL"})
    assert old.is_infected("normal") == 0 and old.is_infected("Pneumonia") == 1
    assert torch.allclose(s.p_infected(torch.tensor([[0.0], [100.0]])), torch.tensor([0.5, 1.0]))


def test_multiclass_scheme():
    s = TaskScheme.build("multiclass", ["covid", "normal", "pneumonia"])
    assert s.output_names == ("covid", "normal", "pneumonia")
    assert s.target("pneumonia").item() == 2
    logits = torch.tensor([[0.0, 0.0, 0.0], [-10.0, 10.0, -10.0]])
    p = s.p_infected(logits)
    assert torch.allclose(p[0], torch.tensor(2 / 3)) and p[1] < 1e-4


def test_multilabel_covid_counts_as_pneumonia():
    s = TaskScheme.build("multilabel", ["covid", "normal", "pneumonia"])
    assert s.output_names == ("covid", "pneumonia")
    assert s.target("covid").tolist() == [1.0, 1.0]
    assert s.target("pneumonia").tolist() == [0.0, 1.0]
    assert s.target("normal").tolist() == [0.0, 0.0]
    assert s.is_infected("covid") == 1 and s.is_infected("normal") == 0


def test_custom_normal_class_and_errors():
    s = TaskScheme.build("binary", ["healthy", "sick"], normal_class="Healthy")
    assert s.infected_classes == ("sick",)
    with pytest.raises(ValueError, match="no class named 'normal'"):
        TaskScheme.build("binary", ["a", "b"])
    with pytest.raises(ValueError, match="unknown task"):
        TaskScheme.build("regression", ["normal", "b"])
    with pytest.raises(ValueError, match="not one of the training classes"):
        s.target("other")


@pytest.mark.slow
def test_label_case_does_not_change_the_normal_class(tiny_data, tmp_path):
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
