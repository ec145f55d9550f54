"""Options and the error boundary: bad values stop at once in one line, help describes every option, a bug is
not reported as bad input."""

import pytest
import torch

from chestxray.cli import app
from chestxray.config import SECTIONS, flag_name
from tests.helpers import HEAD, invoke, runner, write_manifest


@pytest.mark.parametrize("flags, expected", [
    (["--img-size", "0"], "--img-size must be >= 32; got 0"),
    (["--img-size", "-5"], "--img-size must be >= 32; got -5"),
    (["--operating-point", "youdn"], "--operating-point must be one of best_f1, youden, sensitivity; got 'youdn'"),
    (["--finetune-bn", "frozn"], "--finetune-bn must be one of frozen, train; got 'frozn'"),
    (["--optimizer", "adam"], "--optimizer must be one of adamw, sgd"),
    (["--stages", "head,warmup"], "--stages must list head and/or finetune"),
    (["--val-fraction", "1.5"], "--val-fraction must be < 1.0"),
    (["--workers", "many"], "--workers must be a count (0, 1, ...) or auto; got 'many'"),
])
def test_bad_options_exit_2_at_once_and_make_nothing(tiny_data, tmp_path, flags, expected):
    out = tmp_path / "never"
    res = invoke("train", "--data", tiny_data, "--out", out, *flags)
    assert res.exit_code == 2, res.output
    assert expected in res.output and "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_without_one(tiny_data, tmp_path):
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--accelerator", "gpu")
    assert res.exit_code == 2 and "--accelerator gpu: no CUDA GPU is visible" in res.output


def test_workers_auto_is_none_on_a_cpu_and_the_cpus_per_gpu_process_on_gpus(monkeypatch):
    import os

    from chestxray.config import Config
    from chestxray.training.stages import loader_workers

    def workers(**options):
        cfg = Config()
        cfg._set(options)
        return loader_workers(cfg.validate())

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert workers() == 0 and workers(workers=3) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert workers(devices="1") == 8  # 15 CPUs to spare, at most 8
    assert workers() == 3 and workers(devices="0,1") == 7  # four processes: 4 CPUs each, one for the process itself
    assert workers(accelerator="cpu") == 0 and workers(workers="0") == 0


def test_config_files(tiny_data, tmp_path):
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--config", tmp_path / "missing.yaml")
    assert res.exit_code == 2 and "missing.yaml: config file not found" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {img_size: 64\n  oops: [")
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--config", bad)
    assert res.exit_code == 2 and "bad.yaml: not a readable YAML file" in res.output
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  epochs_heads: 3\n")
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--config", unknown)
    assert res.exit_code == 2 and "unknown.yaml: unknown option 'epochs_heads'" in res.output
    typed = tmp_path / "typed.yaml"
    typed.write_text("img_size: big\n")
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--config", typed)
    assert res.exit_code == 2 and "typed.yaml: option 'img_size' must be an integer; got 'big'" in res.output
    assert not (tmp_path / "r").exists()


def test_garbage_checkpoint_and_weights(tiny_data, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint at all")
    res = invoke("predict", junk, tiny_data / "test" / "covid")
    assert res.exit_code == 2 and "junk.ckpt: cannot be read as a chestxray checkpoint" in res.output
    assert "weights_only" not in res.output and "Traceback" not in res.output
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", "--weights", junk, *HEAD)
    assert res.exit_code == 2 and "junk.ckpt: cannot be read as a weights file (--weights)" in res.output
    assert "weights_only" not in res.output


def test_predict_out_is_a_folder_checked_before_any_work(relative_runs, tiny_data, tmp_path):
    _, runs = relative_runs
    res = invoke("predict", runs[0], tiny_data / "test", "--out", tmp_path)
    assert res.exit_code == 2 and "is a folder; --out takes a file name" in res.output
    assert "predicted infected" not in res.output


def test_help_describes_every_option_in_one_style():
    res = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = res.output
    assert "<bool>" not in text and "(default:" not in text
    lines = text.splitlines()
    for section in SECTIONS.values():
        for f in section.__dataclass_fields__.values():
            flag = flag_name(f.name)
            line = next((ln for ln in lines if ln.strip().startswith(flag + " ") or ln.strip().startswith(flag + "/")), None)
            assert line is not None, flag
            assert len(line.split(None, 2)) == 3 and f.metadata["help"][:20] in " ".join(text.split()), flag
    for command in ("evaluate", "predict", "explain", "compare"):
        usage = runner.invoke(app, [command, "--help"]).output.splitlines()[0]
        assert "{" not in usage and ("RUN" in usage or "MODEL" in usage), usage
        assert "(default:" not in runner.invoke(app, [command, "--help"]).output


def test_data_split_names_the_options_given(tmp_path):
    write_manifest(tmp_path / "m.csv", [{"path": "a.png", "label": "normal"}])
    res = invoke("data", "split", tmp_path / "m.csv", "--val", "0.6", "--test", "0.6")
    assert res.exit_code == 2 and "--val 0.6 and --test 0.6 leave nothing to train on" in res.output
    assert "1.49" not in res.output


def test_a_bug_is_not_reported_as_bad_input(monkeypatch, capsys, tiny_data, tmp_path):
    import sys

    from chestxray import cli
    from chestxray.jobs import train as stages

    def broken(*args, **kwargs):
        raise KeyError("a library bug")

    monkeypatch.setattr(stages, "train_run", broken)
    monkeypatch.setattr(sys, "argv", ["chestxray", "train", "--data", str(tiny_data), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "Traceback" in err and "KeyError: 'a library bug'" in err and "Please report it" in err
    assert "error: " not in err
    monkeypatch.undo()  # the real train_run: a bad option is the user's mistake
    monkeypatch.setattr(sys, "argv", ["chestxray", "train", "--data", str(tiny_data), "--out", str(tmp_path / "r"),
                                      "--img-size", "0"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: --img-size must be >= 32; got 0" in err and "Traceback" not in err
