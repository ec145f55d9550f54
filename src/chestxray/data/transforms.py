"""Tensor transforms for grayscale X-rays: augment on uint8 tensors, then normalise as 3 channels.

`Preprocessing` is the part of the model contract that says how a decoded image becomes the input.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .cache import cache_size_for

if TYPE_CHECKING:  # torchvision is imported where a transform needs it: its import takes about a second
    from torchvision.transforms import v2

RESIZE_RULE = (
    "grayscale uint8 (16-bit and DICOM scaled to the full range); bilinear resize to round(img_size * 8 / 7) "
    "square; antialiased resize to img_size square; replicated to 3 channels; (x / 255 - mean) / std"
)


class Standardise(torch.nn.Module):
    """Per-image intensity standardisation of a uint8 (1, H, W) tensor, the same at training and inference.

    equalize: global histogram equalisation; percentile: the 1st..99th percentile stretched to 0..255;
    clahe: contrast-limited adaptive histogram equalisation (OpenCV; 8 x 8 tiles, clip limit 2), which
    equalises locally. All remove much of the exposure and contrast that differ between devices and sites.
    """

    def __init__(self, method: str):
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "equalize":
            from torchvision.transforms import v2

            return v2.functional.equalize(x)
        if self.method == "clahe":
            import cv2

            clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
            return torch.from_numpy(np.stack([clahe.apply(np.ascontiguousarray(c)) for c in x.numpy()]))
        if self.method == "percentile":
            flat = x.float().flatten()
            lo, hi = torch.quantile(flat, torch.tensor([0.01, 0.99]))
            return ((x.float() - lo) * (255.0 / max(float(hi - lo), 1.0))).clamp_(0, 255).round_().to(torch.uint8)
        return x


class DeviceLook(torch.nn.Module):
    """Augmentations that mimic other devices and sites on a uint8 (1, H, W) tensor: gamma, blur or
    sharpening, noise, JPEG re-compression, and resolution loss, each with its own probability."""

    def __init__(self, p: float = 0.3):
        from torchvision.transforms import v2

        super().__init__()
        self.p = p
        self.blur = v2.GaussianBlur(5, sigma=(0.1, 1.5))
        self.sharpen = v2.RandomAdjustSharpness(2.0, p=1.0)
        self.jpeg = v2.JPEG((30, 90))

    def _maybe(self) -> bool:
        return bool(torch.rand(()) < self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        if self._maybe():
            x = v2.functional.adjust_gamma(x, float(torch.empty(()).uniform_(0.7, 1.5)))
        if self._maybe():
            x = self.blur(x) if torch.rand(()) < 0.5 else self.sharpen(x)
        if self._maybe():
            x = (x.float() + torch.randn_like(x, dtype=torch.float32) * float(torch.empty(()).uniform_(2, 10))).clamp_(0, 255).to(torch.uint8)
        if self._maybe():
            x = self.jpeg(x)
        if self._maybe():
            h, w = x.shape[-2:]
            f = float(torch.empty(()).uniform_(0.4, 0.8))
            x = v2.functional.resize(v2.functional.resize(x, [max(8, int(h * f)), max(8, int(w * f))], antialias=True), [h, w], antialias=True)
        return x


def train_transform(img_size: int, intensity: str = "none", augment: str = "basic") -> v2.Compose:
    from torchvision.transforms import v2

    # Geometry (mild, or wide with framing) and exposure changes. No horizontal flip: laterality (heart on the left) is anatomy.
    if augment == "framing":
        # How another site frames the film: half the time the image shrinks inside a black canvas up to 1.4x
        # its side, then a crop of 45-100% of the area at aspect 3:4 to 4:3 (a square film squashed or
        # stretched as other sites' copies are), so that neither the anatomy's scale nor its shape in the
        # frame says much about the class.
        geometry = [v2.RandomZoomOut(fill=0, side_range=(1.0, 1.4), p=0.5),
                    v2.RandomResizedCrop(img_size, scale=(0.45, 1.0), ratio=(0.75, 4 / 3), antialias=True)]
    else:
        geometry = [v2.RandomResizedCrop(img_size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True)]
    steps = [
        Standardise(intensity),
        *geometry,
        v2.RandomAffine(degrees=7, translate=(0.04, 0.04)),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ]
    if augment == "domain":
        steps.append(DeviceLook())
    return v2.Compose(steps)


class Resize(torch.nn.Module):
    """torchvision's `v2.Resize((side, side), antialias=True)` of a uint8 (C, H, W) tensor, without importing
    torchvision: the same call of `interpolate` (on the uint8 image itself where the CPU has AVX2 or is an Arm, else on
    floats, rounded), so the same pixels (tests/data/test_transforms.py compares them)."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[-3:]
        if (h, w) == (self.side, self.side) or x.numel() == 0:
            return x
        native = x.device.type == "cpu" and (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                                             or platform.machine() in ("aarch64", "arm64"))
        shape, dtype = x.shape, x.dtype
        y = x.reshape(-1, c, h, w)
        if y.is_contiguous(memory_format=torch.channels_last) and y.shape[0] == 1 and y.numel() != y.stride()[0]:
            strides = list(y.stride())
            strides[0] = y.numel()
            y = y.as_strided((1, c, h, w), strides)  # keeps channels_last, as torchvision does
        cast = not (dtype in (torch.float32, torch.float64) or (dtype == torch.uint8 and native))
        if cast:
            y = y.to(torch.float32)
        y = F.interpolate(y, size=[self.side, self.side], mode="bilinear", align_corners=False, antialias=True)
        if cast:
            if dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
                y = y.round_()
            y = y.to(dtype)
        return y.reshape(shape[:-3] + (c, self.side, self.side))


def eval_transform(img_size: int, intensity: str = "none") -> torch.nn.Sequential:
    # The whole image, resized: no centre crop, so nothing at the lung edges is cut away.
    return torch.nn.Sequential(Standardise(intensity), Resize(img_size))


def channel_stats(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's mean and std as (1, 3, 1, 1) float tensors on `device`."""
    return (torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))


def to_model_input(x: torch.Tensor, mean, std, channels_last: bool = True) -> torch.Tensor:
    """A uint8 batch (B, 1, H, W) -> float (B, 3, H, W) normalised with the backbone's own mean and std.

    Runs once per batch on the model's device (so a GPU receives uint8, a quarter of the bytes), and
    writes straight into channels_last memory when asked.
    """
    b, _, h, w = x.shape
    m, s = channel_stats(mean, std, x.device)
    if torch.jit.is_tracing():  # the ONNX export traces this: the same arithmetic, without `out=` (not traceable)
        return (x.float() / 255.0 - m) / s
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, 3, h, w), dtype=torch.float32, device=x.device, memory_format=fmt)
    torch.sub(x.float().div_(255.0), m, out=out)
    return out.div_(s)


# Test-time views as (zoom, gamma) of the resized image: zoom < 1 crops the centre and enlarges it, zoom > 1
# shrinks the image inside a black border; gamma bends the intensities. The first view is the plain image.
TTA_VIEWS = {
    "none": ((1.0, 1.0),),
    "views": ((1.0, 1.0), (0.9, 1.0), (0.8, 1.0), (1.1, 1.0), (1.0, 0.8), (1.0, 1.25)),
}


def test_time_view(x: torch.Tensor, zoom: float, gamma: float) -> torch.Tensor:
    """One view of a float batch (B, C, S, S) in [0, 1]; plain tensor arithmetic, so it exports to ONNX."""
    import torch.nn.functional as F

    if gamma != 1.0:
        x = x.clamp(min=0.0) ** gamma
    side = int(x.shape[-1])  # a plain int also under ONNX tracing (the input side is fixed: img_size)
    if zoom < 1.0:
        crop = int(round(side * zoom))
        start = (side - crop) // 2
        x = F.interpolate(x[..., start:start + crop, start:start + crop], size=(side, side), mode="bilinear", align_corners=False)
    elif zoom > 1.0:
        pad = int(round(side * (zoom - 1.0) / 2))
        x = F.interpolate(F.pad(x, (pad, pad, pad, pad)), size=(side, side), mode="bilinear", align_corners=False)
    return x


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes the model's input."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = RESIZE_RULE
    intensity: str = "none"  # per-image standardisation applied first (Standardise)
    tta: str = "none"  # test-time views whose logits are averaged (TTA_VIEWS)
    # the lung input (models.lungs.lung_input), on the decoded image before everything above: outside the dilated lung
    # fields set to a constant, and/or cropped to the lungs' box; `lung_segmenter` names the segmenter that finds them
    lung_mask: bool = False
    lung_crop: bool = False
    lung_segmenter: str = ""

    @property
    def lung_input(self) -> bool:
        return self.lung_mask or self.lung_crop

    def describe_lung_input(self) -> str:
        steps = [s for s, on in (("masked outside the dilated lung fields", self.lung_mask),
                                 ("cropped to the lungs' box", self.lung_crop)) if on]
        return " and ".join(steps) if steps else "the whole image"

    @property
    def stored_side(self) -> int:
        """Side of the decoded images the input is resized from."""
        return cache_size_for(self.img_size)

    def eval_transform(self) -> torch.nn.Sequential:
        return eval_transform(self.img_size, self.intensity)

    def train_transform(self, augment: str = "basic") -> v2.Compose:
        return train_transform(self.img_size, self.intensity, augment)

    def model_input(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """A uint8 batch (B, 1, S, S) -> the normalised float batch the model takes."""
        return to_model_input(x, self.mean, self.std, channels_last)

    def model_views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """A uint8 batch (B, 1, S, S) -> the normalised batch of each test-time view, the plain one first."""
        views = TTA_VIEWS[self.tta]
        if len(views) == 1:
            return [self.model_input(x)]
        mean, std = channel_stats(self.mean, self.std, x.device)
        x01 = x.float() / 255.0
        return [(test_time_view(x01, zoom, gamma) - mean) / std for zoom, gamma in views]

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(int(d["img_size"]), tuple(d["mean"]), tuple(d["std"]), d.get("resize", RESIZE_RULE), d.get("intensity", "none"),
                   d.get("tta", "none"), bool(d.get("lung_mask", False)), bool(d.get("lung_crop", False)),
                   d.get("lung_segmenter", ""))
