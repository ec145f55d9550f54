"""Discover samples from an ImageFolder tree or a CSV manifest, and carve a validation split."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")
UNLABELLED = "unlabelled"
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # a dataset root holding this file is synthetic, and says so in every output


class DataError(ValueError):
    """A dataset that cannot be used as given (missing split, empty class folder, bad manifest...)."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: str | None  # None: unlabelled, to be predicted
    patient_id: str | None = None
    source: str | None = None


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    out = {}
    for d in classes:
        files = _list_images(d)
        if not files:
            raise DataError(f"{d}: empty class folder (no image files with suffix {sorted(IMAGE_SUFFIXES)})")
        out[d.name] = files
    return out


def is_synthetic(data: str | Path) -> bool:
    p = Path(data)
    root = p.parent if p.is_file() else p
    return (root / SYNTHETIC_MARKER).exists()


def discover_folder(root: Path) -> dict[str, list[Sample]]:
    """ImageFolder discovery: root/{train,val,test}/<class>/*, or root/<class>/* (all train)."""
    source = "synthetic-phantom" if (root / SYNTHETIC_MARKER).exists() else None
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not split_dirs:
        split_dirs = {"train": root}
    splits: dict[str, list[Sample]] = {}
    for split, d in split_dirs.items():
        folders = _class_folders(d)
        if not folders:
            raise DataError(f"{d}: no class folders found (expected {d}/<class>/<image files>)")
        splits[split] = [Sample(str(f), cls, None, source) for cls, files in folders.items() for f in files]
    if "train" not in splits and "test" not in splits and "val" not in splits:
        raise DataError(f"{root}: no train/, val/ or test/ folder")
    return splits


def read_manifest(csv_path: Path) -> dict[str, list[Sample]]:
    """CSV manifest: path,label[,patient_id,source][,split]; paths relative to the CSV.

    An empty label marks an unlabelled row (split 'unlabelled'). Without a split column, the split is
    taken from a leading train/ val/ test/ path component where every labelled row has one; otherwise
    all labelled rows are train.
    """
    base = csv_path.parent
    source_default = "synthetic-phantom" if (base / SYNTHETIC_MARKER).exists() else None
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols:
            raise DataError(f"{csv_path}: manifest needs a 'path' column (found: {cols})")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    if not rows:
        raise DataError(f"{csv_path}: manifest has no rows")
    has_split = "split" in cols
    if not has_split:
        labelled = [r for r in rows if r.get("label")]
        first = [Path(r["path"]).parts[0] if Path(r["path"]).parts else "" for r in labelled]
        infer = bool(labelled) and all(p in SPLITS for p in first)
    splits: dict[str, list[Sample]] = {}
    for i, r in enumerate(rows, start=2):
        if not r["path"]:
            raise DataError(f"{csv_path}: line {i}: empty path")
        p = Path(r["path"])
        p = p if p.is_absolute() else base / p
        label = r.get("label") or None
        if label is None:
            split = UNLABELLED
        elif has_split:
            split = r["split"] or "train"
            if split not in SPLITS:
                raise DataError(f"{csv_path}: line {i}: split '{split}' is not one of {SPLITS}")
        elif infer:
            split = Path(r["path"]).parts[0]
        else:
            split = "train"
        splits.setdefault(split, []).append(
            Sample(str(p), label, r.get("patient_id") or None, r.get("source") or source_default)
        )
    return splits


def load_samples(data: str | Path) -> dict[str, list[Sample]]:
    """Samples per split ('train', 'val', 'test', 'unlabelled') from a folder or a CSV manifest."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: data path not found")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DataError(f"{data}: expected a folder or a .csv manifest")
        return read_manifest(data)
    return discover_folder(data)


def class_counts(samples: list[Sample]) -> dict[str, int]:
    return dict(sorted(Counter(s.label for s in samples if s.label is not None).items()))


def carve_validation(
    train: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split train into (train, val): stratified by label, grouped by patient when ids exist."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    labels = np.array([s.label for s in train])
    counts = Counter(labels)
    if min(counts.values()) < 2:
        raise DataError(f"cannot carve a stratified validation split: class counts {dict(counts)}")
    idx = np.arange(len(train))
    if any(s.patient_id for s in train):
        groups = np.array([s.patient_id or f"__row{i}" for i, s in enumerate(train)])
        n_splits = max(2, round(1 / fraction))
        skf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        tr_idx, va_idx = next(skf.split(idx, labels, groups))
    else:
        sss = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        tr_idx, va_idx = next(sss.split(idx, labels))
    return [train[i] for i in sorted(tr_idx)], [train[i] for i in sorted(va_idx)]


def write_split_csv(path: Path, splits: dict[str, list[Sample]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label", "patient_id", "source"])
        for split, samples in splits.items():
            for s in samples:
                w.writerow([split, s.path, s.label or "", s.patient_id or "", s.source or ""])
