"""The head stage on cached features: split a model into its frozen part and its head, extract once.

For most backbones the head is the classifier alone, so the frozen part ends with global pooling and
the features are vectors. Where the head includes more layers (VGG's pre_logits FC layers), the frozen
part ends at forward_features and the head runs timm's forward_head.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.datamodule import DecodedDataset, make_loader
from ..data.transforms import Preprocessing
from ..errors import ChestXrayError
from ..files import load_checked, save_checked
from .backbones import head_prefixes, is_head_param

log = logging.getLogger("chestxray")


def head_split(model: nn.Module) -> tuple[Callable, Callable]:
    """(frozen part: images -> features, head: features -> logits), matching model(x) exactly."""
    if "pre_logits" in head_prefixes(model):
        return model.forward_features, model.forward_head

    def frozen(x):
        return model.forward_head(model.forward_features(x), pre_logits=True)

    def head(f):
        drop = getattr(model, "drop_rate", 0.0) or 0.0
        if drop > 0:
            f = F.dropout(f, p=drop, training=model.training)
        return model.get_classifier()(f)

    return frozen, head


def autocast_for(precision: str, device: torch.device):
    bf16 = precision.startswith("bf16")
    fp16 = precision.startswith("16")
    enabled = bf16 or (fp16 and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16 if bf16 else torch.float16, enabled=enabled)


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    images,
    prep: Preprocessing,
    views: int = 0,
    seed: int = 0,
    batch_size: int = 64,
    precision: str = "32-true",
    channels_last: bool = True,
    augment: str = "basic",
) -> torch.Tensor:
    """Features of the frozen part, shape (1 + views, N, ...): the plain view, then `views` augmented ones.

    The augmented views draw from their own seeded random state; the caller's random state is left as
    it was, so training after a cache miss and after a cache hit proceeds identically.
    """
    frozen, _ = head_split(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    n_batches = (len(images) + batch_size - 1) // batch_size
    with torch.random.fork_rng(devices=[]), tqdm(total=n_batches * (1 + views), desc="backbone features", unit="batch",
                                                   leave=False, disable=None) as bar:
        log.info("extracting backbone features of %d images (%d view%s)", len(images), 1 + views, "s" if views else "")
        for v in range(1 + views):
            tf = prep.eval_transform() if v == 0 else prep.train_transform(augment)
            torch.manual_seed(seed + v)
            ds = DecodedDataset(images, None, tf)
            parts = []
            for x, _, _ in make_loader(ds, batch_size, train=False):
                x = prep.model_input(x.to(device), channels_last)
                with autocast_for(precision, device):
                    parts.append(frozen(x).float().cpu())
                bar.update()
            out.append(torch.cat(parts) if parts else torch.zeros(0))
    model.train(was_training)
    return torch.stack(out)


def state_fingerprint(model: nn.Module) -> str:
    """A hash of the frozen weights and buffers (the classifier excluded)."""
    h = hashlib.sha1()
    prefixes = head_prefixes(model)
    for name, t in model.state_dict().items():
        if is_head_param(name, prefixes):
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureDataset(torch.utils.data.Dataset):
    """Items (features of one random view, target, index); views are drawn anew every epoch."""

    def __init__(self, feats: torch.Tensor, targets: list[torch.Tensor]):
        self.feats, self.targets = feats, targets

    def __len__(self) -> int:
        return self.feats.shape[1]

    def __getitem__(self, i: int):
        v = int(np.random.randint(self.feats.shape[0])) if self.feats.shape[0] > 1 else 0
        return self.feats[v, i], self.targets[i], i


def cached_features(cache_dir: Path, key_parts: list[str], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Load features stored under a key made of `key_parts`, or compute and store them (under a lock)."""
    from ..files import file_lock

    key = hashlib.sha1("\n".join(key_parts).encode()).hexdigest()[:20]
    path = cache_dir / "features" / f"{key}.pt"
    with file_lock(cache_dir / "features" / ".lock"):
        if path.exists():
            try:
                return load_checked(path, "feature cache")
            except ChestXrayError as e:  # truncated or corrupt: computed again, never used
                log.warning("%s; computing the features again", e)
        feats = compute()
        save_checked(feats, path)
    return feats
