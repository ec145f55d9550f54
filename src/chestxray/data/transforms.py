"""Tensor transforms for grayscale X-rays: augment on uint8 tensors, then normalise as 3 channels."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def train_transform(img_size: int) -> v2.Compose:
    # Mild geometry and exposure changes. No horizontal flip: laterality (heart on the left) is anatomy.
    return v2.Compose(
        [
            v2.RandomResizedCrop(img_size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomAffine(degrees=7, translate=(0.04, 0.04)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    )


def eval_transform(img_size: int) -> v2.Compose:
    # The whole image, resized: no centre crop, so nothing at the lung edges is cut away.
    return v2.Compose([v2.Resize((img_size, img_size), antialias=True)])


class Normalize3:
    """uint8 (1, H, W) -> float (3, H, W) with the backbone's own mean and std."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0).expand(3, -1, -1)
        return (x - self.mean) / self.std
