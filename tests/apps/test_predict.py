"""predict's output: the table on the terminal and as JSON on stdout; another run's file is never overwritten."""

import json
from pathlib import Path

import pandas as pd

from chestxray.cli import app
from tests.helpers import invoke, runner


def test_predict_prints_each_image_and_writes_json_to_stdout(relative_runs, tiny_data, tmp_path):
    _, runs = relative_runs
    image = next((tiny_data / "test" / "covid").iterdir())
    res = invoke("predict", runs[0], image, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    line = next(ln for ln in res.output.splitlines() if ln.endswith(image.name))
    assert f"{row.p_infected:.3f}" in line and f"{row.threshold:.3f}" in line and row.predicted in line
    res = runner.invoke(app, ["predict", str(runs[0]), str(tiny_data / "test"), "--format", "json", "--out", "-"])
    assert res.exit_code == 0, res.output
    assert not Path("-").exists()
    text = res.stdout
    doc = json.loads(text)
    assert len(doc["predictions"]) == 10 and doc["run"].endswith("best.ckpt") and "not a diagnostic device" in doc["note"]
    assert {"path", "p_infected", "predicted", "threshold"} <= set(doc["predictions"][0])


def test_predict_does_not_overwrite_another_runs_file(relative_runs, tiny_data, tmp_path):
    _, (run_a, run_b) = relative_runs
    out = tmp_path / "p.csv"
    images = tiny_data / "test" / "normal"
    assert invoke("predict", run_a, images, "--out", out).exit_code == 0
    assert invoke("predict", run_a, images, "--out", out).exit_code == 0  # its own file: replaced
    res = invoke("predict", run_b, images, "--out", out)
    assert res.exit_code == 2 and "holds predictions of another run" in res.output and str(run_a.name) in res.output
    assert pd.read_csv(out)["run"].iloc[0].startswith(str(run_a.resolve()))
    res = invoke("predict", run_b, images, "--out", out, "--overwrite")
    assert res.exit_code == 0 and pd.read_csv(out)["run"].iloc[0].startswith(str(run_b.resolve()))
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n1,2\n")
    res = invoke("predict", run_a, images, "--out", other)
    assert res.exit_code == 2 and "something other than predictions" in res.output


def test_device_option_names_what_is_wrong(relative_runs, tiny_data, tmp_path, monkeypatch):
    """--device: auto is the CPU where no GPU is visible (the same figures); a GPU that is not there, a word that is no
    device and onnxruntime on a GPU are refused with a line naming the option."""
    import torch

    from chestxray.apps.engines import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    _, runs = relative_runs
    image = next((tiny_data / "test" / "covid").iterdir())
    tables = []
    for device in ("cpu", "auto"):
        res = invoke("predict", runs[0], image, "--device", device, "--out", tmp_path / f"{device}.csv")
        assert res.exit_code == 0, res.output
        tables.append(pd.read_csv(tmp_path / f"{device}.csv"))
    assert tables[0]["p_infected"].tolist() == tables[1]["p_infected"].tolist()
    for device, words in (("cuda", "no such CUDA GPU"), ("cuda:3", "no such CUDA GPU"), ("gpu0", "not a device")):
        res = invoke("predict", runs[0], image, "--device", device, "--out", tmp_path / "x.csv")
        assert res.exit_code == 2 and words in res.output, res.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    res = invoke("predict", runs[0], image, "--engine", "onnx", "--device", "cuda", "--out", tmp_path / "x.csv")
    assert res.exit_code == 2 and "onnxruntime runs on the CPU" in res.output, res.output


def test_no_tf32_turns_tf32_off_and_restores_it():
    """The context of the contract's passes (Predictor.forward): fp32 means fp32 on a GPU, where TF32 moved P(infected)
    by 7e-4 against the CPU on an H200 (benchmarks/gpu.py); what was set before comes back."""
    import torch

    from chestxray.models.predictor import no_tf32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with no_tf32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
