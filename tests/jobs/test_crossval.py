"""Leave-one-source-out and k-fold estimates (`chestxray crossval`) on phantoms from three made-up sources."""

import json

import pytest

from chestxray.data.sources import DataError, discover
from chestxray.jobs.crossval import plan_folds
from tests.helpers import invoke, write_manifest

FLAGS = ["--img-size", "32", "--stages", "head", "--epochs-head", "1", "--bootstrap", "50", "--no-audit",
         "--no-lung-check", "--no-calibrate", "--quiet"]


@pytest.fixture(scope="module")
def three_sites(tiny_data, tmp_path_factory):
    """The phantoms as a manifest of three sources: site-a and site-b hold normal and infected images, site-c only
    covid (a site that is its class)."""
    rows = []
    found = discover(tiny_data)
    for split in ("train", "val", "test"):
        for i, s in enumerate(found.splits[split]):
            site = "site-c" if s.label == "covid" and i % 3 == 0 else ("site-a" if i % 2 else "site-b")
            rows.append({"path": s.path, "label": s.label, "patient_id": f"p{split}{i}", "source": site, "split": split})
    return write_manifest(tmp_path_factory.mktemp("crossval") / "sites.csv", rows)


def test_the_folds_of_each_kind(three_sites):
    folds = plan_folds(three_sites, "source", 5, 0, "normal")
    assert [f["name"] for f in folds] == ["site-a", "site-b", "site-c"]
    for f in folds:  # every image is held out once, never trained on in its own fold
        assert {s.source for s, _ in f["held_out"]} == {f["name"]} and f["name"] not in {s.source for s, _ in f["train"]}
    assert [f["both_classes"] for f in folds] == [True, True, False]
    kfold = plan_folds(three_sites, "fold", 3, 0, "normal")
    held = [s.path for f in kfold for s, _ in f["held_out"]]
    assert len(held) == len(set(held)) == sum(len(v) for v in discover(three_sites).splits.values())
    with pytest.raises(DataError, match="at least two sources"):
        plan_folds(discover(three_sites).splits["train"][0].path.rsplit("/", 3)[0], "source", 5, 0, "normal")


@pytest.mark.slow
def test_leave_one_source_out_scores_each_held_out_site_and_resumes(three_sites, tmp_path):
    """Three folds trained two at a time, each in a process of its own (--parallel 2), then resumed in this one."""
    out = tmp_path / "cv"
    res = invoke("crossval", "--data", three_sites, "--out", out, "--by", "source", "--parallel", "2", *FLAGS)
    assert res.exit_code == 0, res.output
    for site in ("site-a", "site-b", "site-c"):
        assert "training" in (out / site / "log.txt").read_text()  # its messages in its own log
        assert str(out / site / "train.csv") in (out / site / "run" / "config.yaml").read_text()  # its own manifest
    r = json.loads((out / "crossval.json").read_text())
    by = {row["held_out"]: row for row in r["folds"]}
    assert by["site-a"]["scored_whole"] and by["site-a"]["roc_auc"] is not None
    assert by["site-c"]["roc_auc"] is None and by["site-c"]["specificity"] is None  # one class: sensitivity only
    assert by["site-c"]["sensitivity"] is not None and by["site-c"]["n"] == by["site-c"]["n_infected"]
    assert by["site-a"]["in_distribution_roc_auc"] is not None
    assert r["n_scored"] == 2 and r["mean_roc_auc"] == pytest.approx((by["site-a"]["roc_auc"] + by["site-b"]["roc_auc"]) / 2)
    assert "one class: n/a" in res.output and "mean ROC-AUC over the 2 part(s)" in res.output
    # trained on two sources: each one's validation ROC-AUC per epoch in the history (and the report's curves)
    history = (out / "site-c" / "run" / "history.csv").read_text().splitlines()[0]
    assert "val_auc_source/site-a" in history and "val_auc_source/site-b" in history
    card = (out / "site-c" / "run" / "model_card.md").read_text()
    assert "Sites (sources) trained on: site-a (" in card and "site-c" not in card.split("Sites (sources) trained on:")[1].split("\n")[0]
    # run again, one fold after another here: every fold is finished, nothing is trained again, the same table
    before = (out / "site-a" / "run" / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    res = invoke("crossval", "--data", three_sites, "--out", out, "--by", "source", "--parallel", "1", *FLAGS)
    assert res.exit_code == 0, res.output
    assert (out / "site-a" / "run" / "checkpoints" / "best.ckpt").stat().st_mtime_ns == before
    assert json.loads((out / "crossval.json").read_text())["folds"] == r["folds"]


def test_fold_slots_give_each_process_one_gpu_or_a_share_of_the_cores(monkeypatch):
    import torch

    from chestxray.jobs.crossval import fold_slots

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert fold_slots("auto") == [] and fold_slots(1) == []  # one after another, in this process
    two = fold_slots("2", cpus=8)
    assert two == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}] * 2
    assert fold_slots(3, cpus=2)[0]["OMP_NUM_THREADS"] == "1"
    for bad in ("0", "two", -1):
        with pytest.raises(DataError, match="--parallel must be auto or a count"):
            fold_slots(bad)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")  # the parent's own view of the GPUs is kept
    assert [s["CUDA_VISIBLE_DEVICES"] for s in fold_slots("auto")] == ["4", "5", "6"]
    assert [s["CUDA_VISIBLE_DEVICES"] for s in fold_slots(4)] == ["4", "5", "6", "4"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert fold_slots("auto") == [] and [s["CUDA_VISIBLE_DEVICES"] for s in fold_slots(2)] == ["0", "0"]


def test_tasks_run_at_once_in_their_slots_and_every_failure_is_named(tmp_path):
    import sys

    from chestxray.errors import ChestXrayError
    from chestxray.jobs.crossval import run_in_slots

    def task(name, code):  # writes its slot's variable, then waits for its sibling's file (so both must run at once)
        other = "b" if name == "a" else "a"
        script = (f"import os, pathlib, sys, time; d = pathlib.Path(r'{tmp_path}'); "
                  f"(d / '{name}.slot').write_text(os.environ['SLOT']); "
                  f"t = time.time()\nwhile not (d / '{other}.slot').exists() and time.time() - t < 20: time.sleep(0.05)\n"
                  f"print('last words of {name}'); sys.exit({code})")
        return name, [sys.executable, "-c", script], tmp_path / name / "log.txt"

    run_in_slots([task("a", 0), task("b", 0)], [{"SLOT": "1"}, {"SLOT": "2"}])
    assert sorted((tmp_path / f"{n}.slot").read_text() for n in "ab") == ["1", "2"]
    assert (tmp_path / "a" / "log.txt").read_text().strip() == "last words of a"
    for n in "ab":
        (tmp_path / f"{n}.slot").unlink()
    with pytest.raises(ChestXrayError) as e:
        run_in_slots([task("a", 3), task("b", 0)], [{"SLOT": "1"}, {"SLOT": "2"}])
    assert "a (exit 3;" in str(e.value) and "last words of a" in str(e.value) and "b (exit" not in str(e.value)
    assert (tmp_path / "b.slot").exists()  # the other task ran to its end
