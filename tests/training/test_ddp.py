"""Two-process DDP training on CPU (gloo), launched as a user would: `chestxray train --devices 2 --strategy ddp`."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # integration tests: every one trains, exports or drives a browser


def test_ddp_two_processes_on_cpu(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "chestxray.cli", "train", "--data", str(tiny_data), "--out", str(out),
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--precision", "32-true",
           "--img-size", "64", "--batch-size", "8", "--epochs-head", "2", "--epochs-finetune", "1", "--no-audit",
           "--no-lung-check", "--quiet"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # one process wrote the run directory and printed the summary
    assert res.stdout.count("head best: val") == 1, res.stdout
    assert sorted(p.name for p in (out / "checkpoints" / "head").iterdir()) == ["best.ckpt", "best.ckpt.sha256", "last.ckpt", "last.ckpt.sha256"]
    assert sorted(p.name for p in (out / "logs" / "head").iterdir()) == ["version_0"]
    m = json.loads((out / "metrics.json").read_text())
    hist = pd.read_csv(out / "history.csv")
    # validation metrics logged during DDP training (reduced across both processes) equal those that
    # rank zero computes afterwards on the whole validation set with each stage's best checkpoint
    for stage in ("head", "finetune"):
        logged = hist[hist.stage == stage]["val_auc"].max()
        assert logged == pytest.approx(m["stages"][stage]["val"]["roc_auc"], abs=1e-4), stage
