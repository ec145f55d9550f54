"""Grad-CAM measured against the lung fields: the share of the attention inside them."""

import json

import numpy as np
import pytest

from chestxray.evaluation.explain import attention_inside, attention_summary
from chestxray.models.lungs import dilated
from tests.helpers import invoke


def test_the_share_inside_the_lungs_on_constructed_cases():
    mask = np.zeros((100, 100), bool)
    mask[30:70, 10:40] = True
    inside = np.zeros((100, 100))
    inside[40:60, 20:30] = 1.0
    outside = np.zeros((100, 100))
    outside[0:10, 80:100] = 1.0  # far from the lung, beyond the dilation
    half = inside + np.roll(outside, 0) * (inside.sum() / outside.sum())
    share = attention_inside(np.stack([inside, outside, half, np.zeros((100, 100))]), [mask] * 4)
    assert share[0] == 1.0 and share[1] == 0.0 and share[2] == pytest.approx(0.5) and np.isnan(share[3])
    grown = dilated(mask, 0.05)
    assert grown[30:70, 10:40].all() and grown.sum() > mask.sum() and not grown[0:10, 80:100].any()


def test_the_summary_by_class_and_source():
    s = attention_summary(np.array([0.9, 0.8, 0.2, np.nan]), ["normal", "normal", "covid", "covid"], ["a", "b", "a", None])
    assert s["overall"]["n"] == 3 and s["overall"]["n_zero_cam"] == 1 and s["overall"]["mostly_outside"] == pytest.approx(1 / 3)
    assert s["per_class"]["normal"]["median"] == pytest.approx(0.85) and s["per_class"]["covid"]["n"] == 1
    assert set(s["per_source"]) == {"a", "b"}


@pytest.mark.slow
def test_evaluate_with_attention(tiny_run, tiny_data, tmp_path):
    res = invoke("evaluate", tiny_run, "--data", tiny_data, "--bootstrap", "0", "--attention", "--out", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    a = m["attention"]
    assert a["overall"]["n"] + a["overall"]["n_zero_cam"] == m["binary"]["at_0.5"]["n"]
    assert a["overall"]["n"] > 0 and set(a["per_class"]) <= {"covid", "normal", "pneumonia"}
    assert 0 <= a["overall"]["median"] <= 1 and "Grad-CAM inside the dilated lung fields" in res.output
    assert "lungs" in m and m["lungs"]["n"] == m["binary"]["at_0.5"]["n"]
    assert "Grad-CAM inside the lungs" in (tmp_path / "ev" / "report.html").read_text()
