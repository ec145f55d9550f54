"""The LightningModule: one model, one stage (head or finetune), validation metrics synced across processes."""

from __future__ import annotations

import math

import lightning as L
import torch
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score

from ..config import HardwareConfig, LossConfig, OptimConfig
from ..data.labels import TaskScheme
from ..data.transforms import Preprocessing
from ..models.freezing import freeze_batchnorm, param_groups, set_trainable
from .losses import TaskLoss


def infected_target(scheme: TaskScheme, y: torch.Tensor) -> torch.Tensor:
    """Binary infected-vs-normal target from a task target."""
    if scheme.task == "binary":
        return y.reshape(-1).long()
    if scheme.task == "multiclass":
        return (y.long() != scheme.classes.index(scheme.normal_class)).long()
    return (y.reshape(len(y), -1).max(dim=1).values > 0).long()


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        scheme: TaskScheme,
        stage: str,
        optim: OptimConfig | None = None,
        loss: LossConfig | None = None,
        hardware: HardwareConfig | None = None,
        criterion: TaskLoss | None = None,
        head_fn=None,
        preprocessing: Preprocessing | None = None,
        val_sources: list[str | None] | None = None,
    ):
        super().__init__()
        self.model, self.scheme, self.stage = model, scheme, stage
        # the config sections it uses
        self.optim, self.loss_cfg, self.hardware = optim or OptimConfig(), loss or LossConfig(), hardware or HardwareConfig()
        self.head_fn = head_fn  # set: inputs are cached features, only the head runs
        self.preprocessing = preprocessing  # None: batches arrive as model-ready floats
        # not a registered submodule: checkpoints hold `model.*` once, compiled or not
        self.__dict__["_net"] = torch.compile(model) if self.hardware.compile and head_fn is None else model
        set_trainable(model, stage, self.optim.unfreeze_last)
        # the run's loss (class and image weights); without one, the configured loss unweighted
        self.criterion = criterion if criterion is not None else TaskLoss(scheme.task, self.loss_cfg.loss, self.loss_cfg.focal_gamma,
                                                                         self.loss_cfg.focal_alpha)
        self.val_auc, self.val_f1, self.val_acc = BinaryAUROC(), BinaryF1Score(), BinaryAccuracy()
        # per-source validation ROC-AUC (`val_auc_source/<source>` in the history), where the validation images come from
        # several sources: val_sources[i] is the source of validation image i, None where its source is not scored
        names = sorted({v for v in (val_sources or []) if v is not None})
        self.source_names = names if len(names) > 1 else []
        ids = [names.index(v) if v in self.source_names else -1 for v in (val_sources or [])]
        self.__dict__["_val_source_ids"] = torch.tensor(ids, dtype=torch.long)
        self.source_auc = torch.nn.ModuleList([BinaryAUROC() for _ in self.source_names])

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the network takes: cached features as they are, image batches normalised on the device."""
        if self.head_fn is not None:
            return x
        if x.dtype == torch.uint8:
            return self.preprocessing.model_input(x, self.hardware.channels_last)
        if self.hardware.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch that is already model input."""
        return self.head_fn(x) if self.head_fn is not None else self._net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.model_input(x))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of a training batch (`index`: its images' positions in the training split, for per-image
        weights); with --mixup, of the batch mixed with a shuffled copy of itself."""
        if self.loss_cfg.mixup <= 0:
            return self.criterion(self(x), y, index)
        a = torch.tensor(float(self.loss_cfg.mixup))
        lam = float(torch.distributions.Beta(a, a).sample())
        perm = torch.randperm(len(x), device=x.device)
        x = self.model_input(x)
        logits = self.network(lam * x + (1 - lam) * x[perm])
        return lam * self.criterion(logits, y, index) + (1 - lam) * self.criterion(logits, y[perm], None if index is None else index[perm])

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            # head: every backbone BN is frozen, so stays in eval; finetune: as configured
            all_bn = self.stage == "finetune" and self.optim.finetune_bn == "frozen"
            freeze_batchnorm(self.model, only_frozen=not all_bn)
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning keeps whatever mode the modules are in; set it here so frozen BN stays in eval.
        self.train()

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        loss = self.training_loss(x, y, index)
        if not torch.isfinite(loss):
            from .runstate import NonFiniteLoss

            raise NonFiniteLoss(
                f"{self.stage} stage, epoch {self.current_epoch + 1}, batch {batch_idx + 1}: the training loss is "
                f"{float(loss.detach())}; training stopped. The best epoch so far is kept in checkpoints/{self.stage}/best.ckpt. "
                "Try a lower --lr / --lr-finetune, or --precision 32-true")
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, index = batch
        logits = self(x)
        self.log("val_loss", self.criterion(logits, y), on_epoch=True, prog_bar=True, sync_dist=True)
        p = self.scheme.p_infected(logits)
        t = infected_target(self.scheme, y)
        for metric in (self.val_auc, self.val_f1, self.val_acc):
            metric.update(p, t)
        # torchmetrics objects reduce their state across processes when computed
        self.log("val_auc", self.val_auc, on_epoch=True, prog_bar=True)
        self.log("val_f1", self.val_f1, on_epoch=True)
        self.log("val_acc", self.val_acc, on_epoch=True)
        if self.source_names:
            ids = self._val_source_ids[index.cpu()].to(p.device)
            for k, (name, metric) in enumerate(zip(self.source_names, self.source_auc)):
                mask = ids == k
                if mask.any():
                    metric.update(p[mask], t[mask])
                    self.log(f"val_auc_source/{name}", metric, on_epoch=True)

    def configure_optimizers(self):
        head_lr = self.optim.lr if self.stage == "head" else self.optim.lr_finetune
        groups = param_groups(self.model, head_lr, head_lr * self.optim.backbone_lr_factor, self.optim.weight_decay)
        if self.optim.optimizer == "adamw":
            opt = torch.optim.AdamW(groups)
        elif self.optim.optimizer == "sgd":
            opt = torch.optim.SGD(groups, momentum=0.9, nesterov=True)
        else:
            raise ValueError(f"unknown optimizer '{self.optim.optimizer}': choose adamw or sgd")
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = int(round(self.optim.warmup_epochs * total / epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
