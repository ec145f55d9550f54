"""Nothing lost: existing runs are not replaced silently, a killed run resumes to the same result, signals say
how to resume, checkpoints and caches cannot be half-written or silently corrupt, a NaN loss stops cleanly."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.files import DiskFullError, checksum_path
from chestxray.models.predictor import CheckpointError, Predictor
from chestxray.training.runstate import read_progress

pytestmark = pytest.mark.slow  # integration tests: every one trains, exports or drives a browser

FLAGS = ["--img-size", "64", "--batch-size", "16", "--epochs-head", "3", "--epochs-finetune", "2", "--patience", "10",
         "--bootstrap", "0", "--deterministic", "--precision", "32-true", "--no-audit", "--no-lung-check", "--quiet"]


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """The console script in a fresh process (a kill -9 must not take pytest with it)."""
    return subprocess.run([sys.executable, "-c", "from chestxray.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "straight"
    start = time.time()
    res = cli("train", "--data", tiny_data, "--out", out, *FLAGS)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Warning" not in res.stderr, res.stderr  # no library's warnings on the terminal (Lightning's, torch's)
    (out.parent / "wall.json").write_text(json.dumps({"seconds": time.time() - start}))
    return out


@pytest.mark.parametrize("kill_after", ["head:2", "finetune:1"])
def test_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, tiny_data, tmp_path, kill_after):
    out = tmp_path / "killed"
    res = cli("train", "--data", tiny_data, "--out", out, *FLAGS, env={"CHESTXRAY_KILL_AFTER": kill_after})
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    stage = kill_after.split(":")[0]
    assert (out / "checkpoints" / stage / "last.ckpt").exists() and not (out / "metrics.json").exists()
    done = json.loads((out / "progress.json").read_text())["done"] if (out / "progress.json").exists() else []
    assert stage not in done and (stage == "head" or done == ["head"])
    res = cli("train", "--resume", out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming the {stage} stage" in res.stderr
    assert "exists and is not empty" not in res.stderr  # the stage's own checkpoints: no warning about them
    assert "Warning" not in res.stderr, res.stderr  # nothing of the libraries' own noise on a user's terminal
    # the same model as the run never killed, itself trained in another process: training is deterministic
    assert metrics(out) == metrics(uninterrupted)
    assert "lungs" not in metrics(out) and "audit" not in metrics(out)  # --no-lung-check, --no-audit
    assert json.loads((out / "progress.json").read_text()) == {"done": ["head", "finetune"], "finished": True, "schema_version": 1}


def test_resume_refuses_another_config_and_a_finished_run(uninterrupted, tmp_path):
    res = CliRunner().invoke(app, ["train", "--resume", str(uninterrupted), "--lr", "0.5"])
    assert res.exit_code == 2 and "optim.lr" in res.output and "keeps its config" in res.output
    res = CliRunner().invoke(app, ["train", "--resume", str(uninterrupted)])
    assert res.exit_code == 2 and "finished" in res.output
    res = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert res.exit_code == 2 and "not a run directory to resume" in res.output


def test_resume_with_a_config_file_compares_only_what_it_sets(uninterrupted, tmp_path):
    """--config on resume: the options the file sets must match the run; those it leaves out are the run's, and
    `balance: auto` matches whatever auto became when the run started."""
    same = tmp_path / "same.yaml"
    same.write_text("img_size: 64\nbalance: auto\n")
    res = CliRunner().invoke(app, ["train", "--resume", str(uninterrupted), "--config", str(same)])
    assert res.exit_code == 2 and "finished" in res.output, res.output
    other = tmp_path / "other.yaml"
    other.write_text("train:\n  lr: 0.5\n")
    res = CliRunner().invoke(app, ["train", "--resume", str(uninterrupted), "--config", str(other)])
    assert res.exit_code == 2 and "optim.lr" in res.output and "keeps its config" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("img_size: huge\n")
    res = CliRunner().invoke(app, ["train", "--resume", str(uninterrupted), "--config", str(bad)])
    assert res.exit_code == 2 and str(bad) in res.output.replace("\n", "")


def test_an_existing_run_is_not_replaced_silently(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_data), "--out", str(out), "--img-size", "64", "--stages", "head", "--epochs-head", "1",
            "--bootstrap", "0", "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = CliRunner().invoke(app, [*args, "--lr", "0.01"])
    assert res.exit_code == 2 and str(out) in res.output and "--resume" in res.output and "--overwrite" in res.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    res = CliRunner().invoke(app, [*args, "--lr", "0.01", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "lr: 0.01" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_says_where_it_stopped_and_how_to_resume(tiny_data, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "from chestxray.cli import main; main()", "train", "--data", str(tiny_data),
                             "--out", str(out), "--img-size", "64", "--stages", "finetune", "--epochs-finetune", "200",
                             "--patience", "500", "--bootstrap", "0", "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "finetune" / "last.ckpt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert f"interrupted ({sig.name})" in lines[-1] and f"chestxray train --resume {out}" in lines[-1]
    assert "Traceback" not in err


def test_a_nan_loss_stops_the_run_naming_where(tiny_data, tmp_path, monkeypatch):
    from chestxray.training import losses

    calls = {"n": 0}
    original = losses.TaskLoss.forward

    def poisoned(self, logits, targets, index=None):
        loss = original(self, logits, targets, index)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 2:  # one batch an epoch here: the first batch of epoch 3
                return loss * float("nan")
        return loss

    monkeypatch.setattr(losses.TaskLoss, "forward", poisoned)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(out), "--img-size", "64", "--batch-size", "16",
                                   "--stages", "head", "--epochs-head", "5", "--no-head-features", "--bootstrap", "0", "--quiet"])
    assert res.exit_code == 2, res.output
    assert "head stage, epoch 3, batch 1:" in res.output and "the training loss is nan" in res.output
    best = out / "checkpoints" / "head" / "best.ckpt"
    assert best.exists() and torch.load(best, weights_only=True)["state_dict"]  # the best epoch so far, intact


def test_truncated_or_foreign_checkpoints_are_refused(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ckpt = run / "checkpoints" / "best.ckpt"
    assert checksum_path(ckpt).exists()
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Predictor.load(run)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        Predictor.load(run)
    checksum_path(ckpt).unlink()
    torch.save({"format": "chestxray-checkpoint", "evil": Path("x")}, ckpt)  # a pickled object, not a tensor
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        Predictor.load(run)


def test_disk_full_leaves_the_earlier_checkpoint_intact(tiny_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    predictor = Predictor.load(run)
    ckpt = run / "checkpoints" / "best.ckpt"
    before = ckpt.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError, match="best.ckpt: no space left"):
        predictor.save(ckpt)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before and not list(ckpt.parent.glob(".*.tmp"))
    Predictor.load(run)  # still verifies and loads


def test_corrupt_cache_shards_and_feature_files_are_rebuilt(tmp_path, tiny_data, caplog):
    import logging

    import numpy as np

    from chestxray.data.cache import decode_all
    from chestxray.data.sources import load_samples
    from chestxray.models.features import cached_features

    paths = [s.path for s in load_samples(tiny_data)["train"]][:8]
    images, _, _ = decode_all(paths, 32, cache_dir=tmp_path)
    first = np.stack([images[i] for i in range(len(paths))])
    shard = next((tmp_path / "decoded" / "32").glob("shard-*.npy"))
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # a pixel flipped on disk
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="chestxray"):
        images, _, _ = decode_all(paths, 32, cache_dir=tmp_path)
    assert "corrupt" in caplog.text and "decoded again" in caplog.text
    np.testing.assert_array_equal(np.stack([images[i] for i in range(len(paths))]), first)

    calls = []
    compute = lambda: calls.append(1) or torch.arange(6.0)  # noqa: E731
    cached_features(tmp_path, ["k"], compute)
    feature_file = next((tmp_path / "features").glob("*.pt"))
    feature_file.write_bytes(feature_file.read_bytes()[:-20])
    with caplog.at_level(logging.WARNING, logger="chestxray"):
        again = cached_features(tmp_path, ["k"], compute)
    assert len(calls) == 2 and torch.equal(again, torch.arange(6.0)) and "computing the features again" in caplog.text


def test_disk_full_while_building_the_cache(tmp_path, tiny_data, monkeypatch):
    import numpy as np

    from chestxray.data.cache import decode_all
    from chestxray.data.sources import load_samples

    paths = [s.path for s in load_samples(tiny_data)["train"]]
    images, _, _ = decode_all(paths[:4], 32, cache_dir=tmp_path)
    first = np.stack([images[i] for i in range(4)])
    shards = sorted((tmp_path / "decoded" / "32").iterdir())

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match="no space left for 4 decoded images"):
        decode_all(paths[4:8], 32, cache_dir=tmp_path)
    monkeypatch.undo()
    assert sorted((tmp_path / "decoded" / "32").iterdir()) == shards  # nothing half-written left behind
    images, _, _ = decode_all(paths[:4], 32, cache_dir=tmp_path)
    np.testing.assert_array_equal(np.stack([images[i] for i in range(4)]), first)


def test_resume_from_a_run_trained_on_a_relative_data_path(tiny_data, tmp_path, monkeypatch):
    """split.csv holds absolute paths, so a resumed run (and export's verification) finds the same images."""
    monkeypatch.chdir(tiny_data.parent)
    out = tmp_path / "rel"
    res = cli("train", "--data", tiny_data.name, "--out", out, "--img-size", "64", "--stages", "head", "--epochs-head", "3",
              "--bootstrap", "0", "--quiet", env={"CHESTXRAY_KILL_AFTER": "head:1"})
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    import pandas as pd

    assert all(Path(p).is_absolute() and Path(p).exists() for p in pd.read_csv(out / "split.csv")["path"])
    res = cli("train", "--resume", out)
    assert res.returncode == 0, res.stderr[-2000:]


def test_random_kills_always_resume_to_the_same_model(uninterrupted, tiny_data, tmp_path):
    """kill -9 at random moments (not only at epoch boundaries): each time the run resumes, and the model it
    ends with is the uninterrupted one."""
    import random

    rng = random.Random(20)
    out = tmp_path / "run"
    straight = json.loads((uninterrupted.parent / "wall.json").read_text())["seconds"]
    kills = 0
    while True:
        args = ["train", "--resume", out] if (out / "config.yaml").exists() else ["train", "--data", tiny_data, "--out", out, *FLAGS]
        proc = subprocess.Popen([sys.executable, "-c", "from chestxray.cli import main; main()", *map(str, args), "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kills < 4:
            try:  # within the first 45% of a whole run's time: a resumed run still has work left then
                proc.wait(timeout=rng.uniform(1.0, 0.45 * straight))
            except subprocess.TimeoutExpired:
                proc.kill()
        err = proc.communicate(timeout=600)[1]
        if proc.returncode == 0 or read_progress(out).finished:  # a kill after the run finished: nothing to resume
            break
        assert proc.returncode == -signal.SIGKILL, err[-3000:]  # resumable: the only way it ends is our kill
        kills += 1
    assert kills >= 2  # interruptions that left the run unfinished
    assert metrics(out) == metrics(uninterrupted)
    final = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    expected = torch.load(uninterrupted / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_run_directory_has_one_writer(tiny_data, tmp_path):
    """A second `train` into a folder being written (--overwrite included) is refused naming the writer's pid; the
    lock of a killed writer is taken over."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from chestxray.training.runstate import run_lock\n"
                               "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(600)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["train", "--data", str(tiny_data), "--out", str(out), "--img-size", "64", "--stages", "head",
                "--epochs-head", "1", "--bootstrap", "0", "--quiet"]
        for extra in ([], ["--overwrite"]):
            res = CliRunner().invoke(app, [*args, *extra])
            assert res.exit_code == 2 and f"(pid {holder.pid}) is writing this run directory" in res.output
        assert [p.name for p in out.iterdir()] == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"taking over the lock left by process {holder.pid}" in res.output
    assert (out / "metrics.json").exists() and not (out / ".lock").exists()


def test_a_run_inside_its_data_folder_is_refused(tiny_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(data / "run1"), "--img-size", "64",
                                   "--stages", "head", "--epochs-head", "1", "--quiet"])
    assert res.exit_code == 2 and "inside the data folder" in res.output
    assert not (data / "run1").exists()


def test_validation_with_one_class_is_refused(tiny_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data / "train", data / "train")
    shutil.copytree(tiny_data / "val" / "normal", data / "val" / "normal")
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--img-size", "64",
                                   "--stages", "head", "--epochs-head", "1", "--quiet"])
    assert res.exit_code == 2 and "val split holds only normal images" in res.output and "--val-fraction" in res.output
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--no-check", "--img-size", "64",
                                   "--stages", "head", "--epochs-head", "1", "--quiet"])
    assert res.exit_code == 2 and "val split holds only normal images" in res.output
    check = CliRunner().invoke(app, ["data", "check", str(data)])
    assert check.exit_code == 1 and "val split holds only normal images" in check.output
