"""Training the lung segmenter: images and masks decoded once at the segmenter's size, augmented on the fly (the same
random affine warp for image, mask and ignore region; brightness, contrast and gamma on the image), BCE plus soft Dice
with the ignore region left out, the epoch with the best validation Dice kept."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from ..data.lung_masks import LungSample, load_sample
from ..models.lungs import LUNG_SIZE, MEAN, STD, build_unet


def decode_pairs(samples: list[LungSample], size: int = LUNG_SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 1, size, size) images in [0, 1], lung masks and ignore regions (0/1 floats), each image resized whole."""
    images, masks, ignores = [], [], []
    for s in samples:
        image, mask, ignore = load_sample(s)
        images.append(F.interpolate(torch.from_numpy(np.array(image, np.float32))[None, None] / 255, size=(size, size), mode="bilinear",
                                    align_corners=False, antialias=True)[0])
        for src, dst in ((mask, masks), (ignore, ignores)):
            dst.append(F.interpolate(torch.from_numpy(src.astype(np.float32))[None, None], size=(size, size), mode="nearest")[0])
    return torch.stack(images), torch.stack(masks), torch.stack(ignores)


class PairDataset(Dataset):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor, ignores: torch.Tensor, augment: bool, seed: int = 0):
        self.images, self.masks, self.ignores, self.augment = images, masks, ignores, augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x, m, ign = self.images[i], self.masks[i], self.ignores[i]
        if self.augment:
            x, m, ign = augment_pair(x, m, ign, self.rng)
        return ((x - MEAN) / STD).expand(3, -1, -1), m, ign


def augment_pair(x: torch.Tensor, m: torch.Tensor, ign: torch.Tensor, rng: np.random.Generator):
    """One random affine warp (rotation up to 10 degrees, scale 0.85-1.15, shift up to 8%) for the three, then
    brightness, contrast and gamma on the image."""
    angle = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.85, 1.15)
    tx, ty = rng.uniform(-0.08, 0.08, 2)
    theta = torch.tensor([[math.cos(angle) / scale, -math.sin(angle) / scale, tx],
                          [math.sin(angle) / scale, math.cos(angle) / scale, ty]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, (1, 1, *x.shape[-2:]), align_corners=False)
    x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    m = F.grid_sample(m[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    ign = F.grid_sample(ign[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    x = ((x - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)).clamp(0, 1)
    x = x ** rng.uniform(0.8, 1.25)
    return x, m, ign


def masked_loss(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice over the pixels outside the ignore region."""
    keep = 1 - ignore
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * keep).sum() / keep.sum().clamp(min=1)
    p = torch.sigmoid(logits) * keep
    t = target * keep
    dice = 1 - (2 * (p * t).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + t.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


class LungModule(L.LightningModule):
    def __init__(self, net: torch.nn.Module, lr: float = 1e-3, epochs: int = 40):
        super().__init__()
        self.net, self.lr, self.epochs = net, lr, epochs
        self.val_dice: list[torch.Tensor] = []

    def training_step(self, batch, _):
        x, m, ign = batch
        loss = masked_loss(self.net(x).float(), m, ign)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False, batch_size=len(x))
        return loss

    def validation_step(self, batch, _):
        x, m, ign = batch
        logits = self.net(x).float()
        self.log("val_loss", masked_loss(logits, m, ign), prog_bar=True, on_epoch=True, batch_size=len(x))
        keep = 1 - ign
        p = (logits > 0).float() * keep
        t = m * keep
        total = p.sum((1, 2, 3)) + t.sum((1, 2, 3))
        self.val_dice.append(torch.where(total > 0, 2 * (p * t).sum((1, 2, 3)) / total.clamp(min=1), torch.ones_like(total)))

    def on_validation_epoch_end(self):
        self.log("val_dice", torch.cat(self.val_dice).mean(), prog_bar=True)
        self.val_dice.clear()

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=1e-4)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.epochs))}


def fit_lungs(train: list[LungSample], val: list[LungSample], out: Path, epochs: int = 40, batch_size: int = 8,
              lr: float = 1e-3, seed: int = 0, pretrained: bool = True, progress: bool = True,
              size: int = LUNG_SIZE) -> tuple[torch.nn.Module, dict]:
    """Train a U-Net on `train`, keep the epoch with the best validation Dice; (the network, its history)."""
    L.seed_everything(seed, workers=True, verbose=False)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # device banners and tips, as training's
    net = build_unet(pretrained)
    data = {k: decode_pairs(v, size) for k, v in (("train", train), ("val", val))}
    loaders = {k: DataLoader(PairDataset(*data[k], augment=k == "train", seed=seed), batch_size=batch_size,
                             shuffle=k == "train", num_workers=0) for k in data}
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_dice", mode="max", save_weights_only=True)
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, callbacks=[ckpt],
                        logger=CSVLogger(out, name="logs", version=0), enable_progress_bar=progress,
                        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=out)
    module = LungModule(net, lr, epochs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*treespec.*")  # Lightning's own use of a deprecated torch name
        trainer.fit(module, loaders["train"], loaders["val"])
    best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(best)
    return module.net.cpu().eval(), {"best_val_dice": float(ckpt.best_model_score), "epochs_run": int(trainer.current_epoch)}
