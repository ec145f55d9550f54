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


def to_model_input(x: torch.Tensor, mean, std, channels_last: bool = True) -> torch.Tensor:
    """A uint8 batch (B, 1, H, W) -> float (B, 3, H, W) normalised with the backbone's own mean and std.

    Runs once per batch on the model's device (so a GPU receives uint8, a quarter of the bytes), and
    writes straight into channels_last memory when asked.
    """
    b, _, h, w = x.shape
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, 3, h, w), dtype=torch.float32, device=x.device, memory_format=fmt)
    torch.sub(x.float().div_(255.0), m, out=out)
    return out.div_(s)
