"""Chest X-rays with lung masks, as `../shared/data/lung-masks` holds them: a labels.csv naming each image, its mask
(0 background, 255 lung), an optional region to leave out of the loss and the scores ('ignore': devices, text), its
source, patient and split. Paths in labels.csv are relative to its folder."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ChestXrayError
from .io import read_xray


class LungDataError(ChestXrayError):
    pass


@dataclass(frozen=True)
class LungSample:
    image: Path
    mask: Path
    source: str
    patient_id: str
    split: str
    ignore: Path | None = None


def read_lung_masks(data: str | Path) -> list[LungSample]:
    """The rows of DATA/labels.csv (or of a labels.csv given itself)."""
    data = Path(data)
    csv_path = data if data.suffix.lower() == ".csv" else data / "labels.csv"
    if not csv_path.exists():
        raise LungDataError(f"{data}: no labels.csv (image, mask, source, patient_id, dataset_split columns) there")
    root = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"image", "mask", "source", "dataset_split"}
        if not need <= set(reader.fieldnames or ()):
            raise LungDataError(f"{csv_path}: needs the columns {sorted(need)} (found {reader.fieldnames})")
        rows = list(reader)
    if not rows:
        raise LungDataError(f"{csv_path}: no rows")
    return [LungSample(root / r["image"], root / r["mask"], r["source"], r.get("patient_id") or r["image"],
                       r["dataset_split"], root / r["ignore"] if r.get("ignore") else None) for r in rows]


def select(samples: list[LungSample], split: str | None = None, sources: tuple[str, ...] | None = None) -> list[LungSample]:
    out = [s for s in samples if (split is None or s.split == split) and (not sources or s.source in sources)]
    return out


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A 0/255 mask as booleans, checked to have its image's size."""
    try:
        m = np.asarray(Image.open(path).convert("L")) > 127
    except (OSError, ValueError) as e:
        raise LungDataError(f"{path}: not a readable mask ({e})") from e
    if m.shape != shape:
        raise LungDataError(f"{path}: mask of {m.shape[1]}x{m.shape[0]} px for an image of {shape[1]}x{shape[0]}")
    return m


def load_sample(s: LungSample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the image as uint8 grayscale, its lung mask, its ignore region) at the image's own size."""
    image = read_xray(s.image)
    mask = read_mask(s.mask, image.shape)
    ignore = read_mask(s.ignore, image.shape) if s.ignore else np.zeros_like(mask)
    return image, mask, ignore
