"""Mixup and weight averaging (EMA) in training."""

import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.config import LossConfig
from chestxray.data.labels import TaskScheme
from chestxray.models.backbones import create_model
from chestxray.models.load import load_predictor
from chestxray.training.module import ClassifierModule

SCHEME = TaskScheme.build("binary", ["covid", "normal"])


def _head_module(mixup: float):
    seen = []
    model, _ = create_model("efficientnet_lite0", 1, pretrained=False)

    def head_fn(x):
        seen.append(x.detach().clone())
        return model.classifier(x)

    return ClassifierModule(model, SCHEME, "head", loss=LossConfig(mixup=mixup), head_fn=head_fn), seen


def test_mixup_mixes_pairs_of_inputs_and_their_losses_alike():
    torch.manual_seed(3)
    x = torch.eye(8, 1280)  # one-hot rows: a mixed row shows its two sources and their weights
    y = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0]).float()
    module, seen = _head_module(mixup=0.4)
    loss = module.training_loss(x, y)
    mixed = seen[-1]
    assert not torch.equal(mixed, x)
    partner = []
    for i, row in enumerate(mixed):
        nz = row.nonzero().flatten().tolist()
        assert i in nz and len(nz) <= 2 and torch.isclose(row.sum(), torch.tensor(1.0))
        partner.append(next((j for j in nz if j != i), i))
    assert sorted(partner) == list(range(8)), "the partners are a permutation of the batch"
    i = next(i for i in range(8) if partner[i] != i)
    lam = float(mixed[i, i])
    assert 0 < lam < 1
    logits = module.model.classifier(mixed)
    expected = lam * module.criterion(logits, y) + (1 - lam) * module.criterion(logits, y[partner])
    assert torch.isclose(loss, expected, atol=1e-6)

    plain, seen = _head_module(mixup=0.0)
    plain.training_loss(x, y)
    assert torch.equal(seen[-1], x)


@pytest.mark.slow
def test_ema_keeps_the_averaged_weights(tiny_data, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(out), "--img-size", "64", "--batch-size", "8",
                                   "--stages", "finetune", "--epochs-finetune", "2", "--lr-finetune", "0.01",
                                   "--backbone-lr-factor", "1", "--ema-decay", "0.5", "--bootstrap", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    ckpt = torch.load(out / "checkpoints" / "finetune" / "best.ckpt", map_location="cpu", weights_only=False)
    average, current = ckpt["state_dict"], ckpt["current_model_state"]
    moved = [k for k in average if k.startswith("model.") and average[k].is_floating_point() and not torch.equal(average[k], current[k])]
    assert moved, "the averaged weights differ from the weights as trained"
    kept = load_predictor(out).model.state_dict()
    for k in moved:
        assert torch.allclose(kept[k[len("model."):]].float(), average[k].float()), k


@pytest.mark.slow
def test_a_killed_ema_run_resumes_to_the_uninterrupted_result(tiny_data, tmp_path):
    """The average lives in last.ckpt beside the weights as trained; resuming restores both."""
    import json
    import signal

    from tests.training.test_resume import FLAGS, cli

    flags = [*FLAGS, "--stages", "finetune", "--ema-decay", "0.5", "--lr-finetune", "0.01"]  # the average is fine-tuning's
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_data), "--out", str(straight), *flags])  # here: one start-up fewer
    assert res.exit_code == 0, res.output
    res = cli("train", "--data", tiny_data, "--out", killed, *flags, env={"CHESTXRAY_KILL_AFTER": "finetune:1"})
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    last = torch.load(killed / "checkpoints" / "finetune" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "current_model_state" in last and "averaging_state" in last
    res = cli("train", "--resume", killed)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((killed / "metrics.json").read_text()) == json.loads((straight / "metrics.json").read_text())
