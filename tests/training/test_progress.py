"""Progress: a line per phase in a log, a bar that names the stage on a terminal."""

import pytest
import torch

from tests.helpers import HEAD, invoke


@pytest.mark.slow
def test_progress_lines_in_a_log(tiny_data, tmp_path):
    res = invoke("train", "--data", tiny_data, "--out", tmp_path / "r", *[a for a in HEAD if a != "--quiet"],
                 "--cache-dir", tmp_path / "cache")
    assert res.exit_code == 0, res.output
    assert "backbone features of train:" in res.output
    # after the last epoch every phase says what it does (issue 20, item 14), in order
    phases = ["scoring val and test", "fitting the out-of-distribution density", "metrics of", "shortcut audit, lung fields hidden",
              "plots, Grad-CAM examples and the report", "run directory:"]
    at = [res.output.find(p) for p in phases]
    assert -1 not in at and at == sorted(at), dict(zip(phases, at))
    for k in (1, 2):
        line = next(ln for ln in res.output.splitlines() if ln.startswith(f"head epoch {k}/2:"))
        assert "train_loss" in line and "val_auc" in line and "img/s" in line and "ETA" in line
    assert "v_num" not in res.output


def test_progress_bar_names_the_stage_and_counts_from_one():
    import lightning as L

    from chestxray.training.progress import StageProgressBar

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            loss = self.lin(batch[0]).pow(2).mean()
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    descriptions = []

    class Spy(StageProgressBar):
        def on_train_epoch_end(self, trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)
            descriptions.append((self.train_progress_bar.desc, dict(self.get_metrics(trainer, pl_module))))

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(max_epochs=3, callbacks=[Spy("finetune")], logger=L.pytorch.loggers.CSVLogger("/tmp/unused-logs"),
                        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    trainer.fit(Tiny(), loader)
    assert [d.rstrip(": ") for d, _ in descriptions] == ["finetune epoch 1/3", "finetune epoch 2/3", "finetune epoch 3/3"]
    assert all("v_num" not in m and "train_loss" in m for _, m in descriptions)
