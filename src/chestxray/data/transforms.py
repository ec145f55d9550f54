"""Tensor transforms for grayscale X-rays: augment on uint8 tensors, then normalise as 3 channels.

`Preprocessing` is the part of the model contract that says how a decoded image becomes the input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2

from .cache import cache_size_for

RESIZE_RULE = (
    "grayscale uint8 (16-bit and DICOM scaled to the full range); bilinear resize to round(img_size * 8 / 7) "
    "square; antialiased resize to img_size square; replicated to 3 channels; (x / 255 - mean) / std"
)


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


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes the model's input."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = RESIZE_RULE

    @property
    def stored_side(self) -> int:
        """Side of the decoded images the input is resized from."""
        return cache_size_for(self.img_size)

    def eval_transform(self) -> v2.Compose:
        return eval_transform(self.img_size)

    def train_transform(self) -> v2.Compose:
        return train_transform(self.img_size)

    def model_input(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """A uint8 batch (B, 1, S, S) -> the normalised float batch the model takes."""
        return to_model_input(x, self.mean, self.std, channels_last)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(int(d["img_size"]), tuple(d["mean"]), tuple(d["std"]), d.get("resize", RESIZE_RULE))
