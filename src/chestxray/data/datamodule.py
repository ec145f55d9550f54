"""Datasets over decoded arrays, and the loaders for each split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .cache import ImageStore, cache_size_for, decode_all
from .io import XrayReadError
from .labels import TaskScheme
from .sources import Sample
from .transforms import Normalize3, eval_transform, train_transform


class DecodedDataset(Dataset):
    """Items: (image float (3, S, S), target, index into the split's samples)."""

    def __init__(self, images: np.ndarray, targets: list[torch.Tensor] | None, transform, normalize: Normalize3):
        self.images = images
        self.targets = targets
        self.transform = transform
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).unsqueeze(0)
        x = self.normalize(self.transform(x))
        y = self.targets[i] if self.targets is not None else torch.tensor(-1.0)
        return x, y, i


@dataclass
class DecodedSplit:
    samples: list[Sample]  # the samples that decoded, in order
    images: ImageStore
    errors: list[XrayReadError] = field(default_factory=list)


def decode_split(samples: list[Sample], img_size: int, skip_bad: bool, desc: str, cache_dir=None) -> DecodedSplit:
    images, kept, errors = decode_all([s.path for s in samples], cache_size_for(img_size), skip_bad, desc=desc, cache_dir=cache_dir)
    return DecodedSplit([samples[i] for i in kept], images, errors)


def make_dataset(split: DecodedSplit, scheme: TaskScheme | None, img_size: int, mean, std, train: bool) -> DecodedDataset:
    targets = [scheme.target(s.label) for s in split.samples] if scheme is not None else None
    tf = train_transform(img_size) if train else eval_transform(img_size)
    return DecodedDataset(split.images, targets, tf, Normalize3(mean, std))


def make_loader(dataset: Dataset, batch_size: int, train: bool, workers: int = 0, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=g,
    )
