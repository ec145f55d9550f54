"""Training progress: a bar per stage on a terminal, one line per epoch in a log file."""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta

from lightning.pytorch.callbacks import Callback, TQDMProgressBar

log = logging.getLogger("chestxray")


class StageProgressBar(TQDMProgressBar):
    """Lightning's bar, naming the stage and counting epochs from 1 to the stage's epoch count."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(epoch_name(self.stage, trainer))

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version number: always 0 here, and meaningless to a user
        return items


class EpochLines(Callback):
    """One log line per epoch: stage, epoch, losses, validation AUC, images per second and time left."""

    def __init__(self, stage: str, n_train: int):
        self.stage, self.n_train = stage, n_train
        self.started = self.epoch_start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        m = trainer.callback_metrics
        done = trainer.current_epoch + 1
        left = (now - self.started) / done * (trainer.max_epochs - done)
        values = " ".join(f"{k} {float(m[k]):.4f}" for k in ("train_loss", "val_loss", "val_auc") if k in m)
        rate = self.n_train / max(now - self.epoch_start, 1e-9)
        log.info("%s: %s, %.0f img/s, ETA %s", epoch_name(self.stage, trainer), values, rate,
                 timedelta(seconds=round(left)))


def epoch_name(stage: str, trainer) -> str:
    return f"{stage} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"


def progress_callbacks(stage: str, n_train: int, progress: bool) -> tuple[list[Callback], bool]:
    """(callbacks, whether Lightning's bar is on): a bar on a terminal, lines otherwise, nothing when quiet."""
    if not progress:
        return [], False
    if sys.stdout.isatty():
        return [StageProgressBar(stage)], True
    return [EpochLines(stage, n_train)], False
