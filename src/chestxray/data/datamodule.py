"""Datasets over decoded arrays, and the loaders for each split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .cache import ImageStore, cache_size_for, decode_all
from .io import XrayReadError
from .labels import TaskScheme
from .sources import Sample
from .transforms import Preprocessing


class DecodedDataset(Dataset):
    """Items: (image uint8 (1, S, S), target, index into the split's samples).

    Normalisation happens per batch on the device (transforms.to_model_input), not per item.
    """

    def __init__(self, images, targets: list[torch.Tensor] | None, transform):
        self.images = images
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.array(self.images[i])).unsqueeze(0)  # a writable copy of the memory-mapped row
        x = self.transform(x)
        y = self.targets[i] if self.targets is not None else torch.tensor(-1.0)
        return x, y, i


@dataclass
class DecodedSplit:
    samples: list[Sample]  # the samples that decoded, in order
    images: ImageStore
    errors: list[XrayReadError] = field(default_factory=list)
    # the lung segmenter's fields (models.lungs.LungFields) of each image as it was decoded, where a model's lung input
    # found them (`images` then holds what the network takes: cropped to or masked by the lungs)
    lung_fields: list | None = None

    def subset(self, indices) -> "DecodedSplit":
        """The images at `indices`, in that order (the same decoded arrays, nothing read again)."""
        images = self.images
        kept = ImageStore([images.refs[i] for i in indices], images.side) if isinstance(images, ImageStore) \
            else [images[i] for i in indices]
        fields = [self.lung_fields[i] for i in indices] if self.lung_fields is not None else None
        return DecodedSplit([self.samples[i] for i in indices], kept, list(self.errors), fields)


def decode_split(samples: list[Sample], img_size: int, skip_bad: bool, desc: str, cache_dir=None) -> DecodedSplit:
    images, kept, errors = decode_all([s.path for s in samples], cache_size_for(img_size), skip_bad, desc=desc, cache_dir=cache_dir)
    return DecodedSplit([samples[i] for i in kept], images, errors)


def make_dataset(split: DecodedSplit, scheme: TaskScheme | None, prep: Preprocessing, train: bool,
                 augment: str = "basic") -> DecodedDataset:
    targets = [scheme.target(s.label) for s in split.samples] if scheme is not None else None
    tf = prep.train_transform(augment) if train else prep.eval_transform()
    return DecodedDataset(split.images, targets, tf)


class EpochShuffle(Sampler):
    """A fresh permutation each epoch, drawn from (seed, epoch) alone: Lightning calls set_epoch, so a stage
    resumed at epoch k shuffles exactly as an uninterrupted one does at epoch k."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def make_loader(
    dataset: Dataset, batch_size: int, train: bool, workers: int = 0, seed: int = 0, sampler: Sampler | None = None
) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    if train and sampler is None:
        sampler = EpochShuffle(len(dataset), seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=g,
    )


class ShardSampler(Sampler):
    """Rank r of w gets indices r, r + w, ...: every item exactly once across ranks, no padding.

    DistributedSampler pads the last batch with repeated items, which would bias validation metrics.
    """

    def __init__(self, n: int, world: int, rank: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
