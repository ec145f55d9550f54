"""The Lightning data module of a training stage (kept out of data/, so that reading and predicting never import
Lightning)."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data.datamodule import ShardSampler, make_loader


class StageData(L.LightningDataModule):
    """Train and validation loaders for one stage, sharded by hand across DDP processes."""

    def __init__(self, train_ds: Dataset, val_ds: Dataset, batch_size: int, workers: int = 0, seed: int = 0):
        super().__init__()
        self.train_ds, self.val_ds, self.bs, self.workers, self.seed = train_ds, val_ds, batch_size, workers, seed

    def _world(self) -> tuple[int, int]:
        return self.trainer.world_size, self.trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = None
        if world > 1:
            sampler = DistributedSampler(self.train_ds, world, rank, shuffle=True, seed=self.seed, drop_last=True)
        return make_loader(self.train_ds, self.bs, True, self.workers, self.seed, sampler)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = ShardSampler(len(self.val_ds), world, rank) if world > 1 else None
        return make_loader(self.val_ds, self.bs, False, self.workers, sampler=sampler)
