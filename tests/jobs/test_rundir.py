"""The run directory's declared format: records written and read through dataclasses with a schema version; runs
written before the records were versioned still read; the model card lists what the run holds."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.rundir import (
    SCHEMA_VERSION,
    MetricsHeader,
    Progress,
    RunDir,
    RunFileError,
    SplitRow,
    operating_points,
    read_metrics,
    read_split,
    write_split,
)


def test_split_rows_round_trip_and_old_files_without_view_read(tmp_path):
    rows = [SplitRow("train", str(tmp_path / "a.png"), "normal", "p1", "site", "PA"),
            SplitRow("val", str(tmp_path / "b.png"), "covid")]
    write_split(tmp_path / "split.csv", rows)
    assert read_split(tmp_path / "split.csv") == rows
    (tmp_path / "old.csv").write_text("split,path,label,patient_id,source\nadaptation,x.png,normal,,\n")
    assert read_split(tmp_path / "old.csv") == [SplitRow("adaptation", "x.png", "normal")]
    (tmp_path / "bad.csv").write_text("path,label\nx.png,normal\n")
    with pytest.raises(RunFileError, match="not a run's split.csv"):
        read_split(tmp_path / "bad.csv")


def test_progress_and_headers_carry_a_schema_version_and_refuse_newer(tmp_path):
    p = Progress(done=["head"])
    p.write(tmp_path / "progress.json")
    assert json.loads((tmp_path / "progress.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert Progress.read(tmp_path / "progress.json") == p
    (tmp_path / "old.json").write_text('{"done": ["head", "finetune"], "finished": true}')  # before versions
    assert Progress.read(tmp_path / "old.json") == Progress(["head", "finetune"], True)
    (tmp_path / "new.json").write_text(json.dumps({"done": [], "finished": False, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(RunFileError, match="newer chestxray"):
        Progress.read(tmp_path / "new.json")
    old_train = {"data": "d", "split": "test", "final_stage": "head", "stages": {"head": {}}, "binary": {}}
    assert MetricsHeader.of(old_train).kind == "train" and MetricsHeader.of(old_train).model_stage == "head"
    assert MetricsHeader.of({"data": "d", "split": "all", "stage": "finetune"}).kind == "evaluation"


@pytest.fixture(scope="module")
def sensitivity_run(trained):
    """A head-stage run trained for sensitivity 0.9 (the factory's: read here, copied before anything is written)."""
    return trained("--img-size", "32", "--stages", "head", "--epochs-head", "1", "--bootstrap", "0", "--no-audit", "--quiet",
                   "--operating-point", "sensitivity", "--target-sensitivity", "0.9")


def test_the_card_lists_the_runs_own_operating_points(sensitivity_run):
    """A run trained for sensitivity 0.9: its card reports that operating point (it read a fixed list of keys)."""
    header, m = read_metrics(RunDir(sensitivity_run).metrics)
    assert header.kind == "train" and header.schema_version == SCHEMA_VERSION and header.val_threshold_rule == "sensitivity_0.9"
    points = operating_points(m)
    assert "sensitivity_0.9" in points and "sensitivity_0.95" not in points
    card = RunDir(sensitivity_run).model_card.read_text()
    row = next(line for line in card.splitlines() if line.startswith("| sensitivity 0.9 on validation |"))
    assert f"| {points['sensitivity_0.9']['threshold']:.4f} |" in row
    assert points["val_threshold"]["threshold"] == points["sensitivity_0.9"]["threshold"]  # the rule in use
    for name in points:
        assert name in ("val_threshold", "0.5", "best_f1", "youden", "sensitivity_0.9")


def test_a_run_written_before_versioned_records_still_reads(sensitivity_run, tmp_path):
    """The same run with its records as earlier versions wrote them (no schema_version, no kind, split.csv without a
    view column): card, evaluate and resume's reading of progress all work, and give the same card."""
    run = tmp_path / "old"
    shutil.copytree(sensitivity_run, run)
    files = RunDir(run)
    m = json.loads(files.metrics.read_text())
    for key in ("schema_version", "kind", "data_resolved"):
        m.pop(key)
    files.metrics.write_text(json.dumps(m))
    files.progress.write_text(json.dumps({"done": ["head"], "finished": True}))
    rows = files.split.read_text().splitlines()
    files.split.write_text("\n".join(",".join(r.split(",")[:5]) for r in rows) + "\n")
    before = files.model_card.read_text()
    res = CliRunner().invoke(app, ["card", str(run)])
    assert res.exit_code == 0, res.output
    strip = lambda text: [line for line in text.splitlines() if str(run) not in line and str(sensitivity_run) not in line]  # noqa: E731
    assert strip(files.model_card.read_text()) == strip(before)
    assert Progress.read(files.progress).finished
    res = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 2 and "this run finished" in res.output
