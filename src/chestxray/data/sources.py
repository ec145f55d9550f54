"""Discover samples from an ImageFolder tree or a CSV manifest, and carve a validation split.

Split names and class names are matched case-insensitively: `Train/`, `valid/`, `Validation/` and
`TEST/` are the usual splits, and `Normal` and `normal` are one class, spelt `normal` from here on.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ChestXrayError
from .io import IMAGE_SUFFIXES
from .labels import canonical_label

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
UNLABELLED = "unlabelled"
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # a dataset root holding this file is synthetic, and says so in every output


class DataError(ChestXrayError):
    """A dataset that cannot be used as given (missing split, empty class folder, bad manifest...)."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: str | None  # None: unlabelled, to be predicted
    patient_id: str | None = None
    source: str | None = None
    view: str | None = None  # projection (PA, AP, ...), from a manifest's `view` column: what --balance view uses


def split_name(name: str) -> str | None:
    """The split a folder name or manifest value means (any case), or None."""
    return SPLIT_ALIASES.get(name.strip().lower())


@dataclass
class Discovered:
    """What a data path holds, and how it was spelt."""

    splits: dict[str, list[Sample]]  # 'train', 'val', 'test', 'unlabelled'
    has_splits: bool  # False: no train/val/test structure; every labelled image is under 'train'
    label_spellings: dict[str, list[str]] = field(default_factory=dict)  # class -> every spelling seen, where > 1
    split_spellings: dict[str, str] = field(default_factory=dict)  # a split as written -> its name, where they differ


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


def discover_folder(root: Path) -> Discovered:
    """ImageFolder discovery: root/{train,val,test}/<class>/*, or root/<class>/* (all train).

    Split folders may be spelt as in SPLIT_ALIASES, in any case; two folders for one split are an error.
    """
    source = "synthetic-phantom" if (root / SYNTHETIC_MARKER).exists() else None
    split_dirs: dict[str, Path] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        split = split_name(d.name)
        if split is None:
            continue
        if split in split_dirs:
            raise DataError(f"{root}: both {split_dirs[split].name}/ and {d.name}/ would be the '{split}' split; keep one")
        split_dirs[split] = d
    has_splits = bool(split_dirs)
    if not has_splits:
        split_dirs = {"train": root}
    splits: dict[str, list[Sample]] = {}
    spellings: dict[str, set[str]] = {}
    for split, d in split_dirs.items():
        folders = _class_folders(d)
        if not folders:
            raise DataError(f"{d}: no class folders found (expected {d}/<class>/<image files>)")
        for name in folders:
            spellings.setdefault(canonical_label(name), set()).add(name)
        splits[split] = [Sample(str(f), canonical_label(cls), None, source) for cls, files in folders.items() for f in files]
    return Discovered(
        splits, has_splits, _several(spellings),
        {d.name: split for split, d in split_dirs.items() if has_splits and d.name != split},
    )


def _several(spellings: dict[str, set[str]]) -> dict[str, list[str]]:
    return {k: sorted(v) for k, v in sorted(spellings.items()) if len(v) > 1}


def read_manifest(csv_path: Path) -> Discovered:
    """CSV manifest: path,label[,patient_id,source,view][,split]; paths relative to the CSV.

    An empty label marks an unlabelled row (split 'unlabelled'). Without a split column, the split is
    taken from a leading train/ val/ test/ path component (any spelling in SPLIT_ALIASES) where every
    labelled row has one; otherwise all labelled rows are train.
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
        infer = bool(labelled) and all(split_name(p) for p in first)
    splits: dict[str, list[Sample]] = {}
    spellings: dict[str, set[str]] = {}
    split_spellings: dict[str, str] = {}
    for i, r in enumerate(rows, start=2):
        if not r["path"]:
            raise DataError(f"{csv_path}: line {i}: empty path")
        p = Path(r["path"])
        p = p if p.is_absolute() else base / p
        label = r.get("label") or None
        written = r.get("split", "") if has_split else (Path(r["path"]).parts[0] if infer and label else "")
        if label is None:
            split = UNLABELLED
        elif written:
            split = split_name(written)
            if split is None:
                raise DataError(f"{csv_path}: line {i}: split '{written}' is not one of {SPLITS} (or {sorted(SPLIT_ALIASES)})")
            if written != split:
                split_spellings[written] = split
        else:
            split = "train"
        if label is not None:
            spellings.setdefault(canonical_label(label), set()).add(label)
            label = canonical_label(label)
        splits.setdefault(split, []).append(
            Sample(str(p), label, r.get("patient_id") or None, r.get("source") or source_default, r.get("view") or None)
        )
    return Discovered(splits, has_split or infer, _several(spellings), split_spellings)


def discover(data: str | Path) -> Discovered:
    """The samples of a folder or a CSV manifest, per split, with how their splits and classes were spelt."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: data path not found")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DataError(f"{data}: expected a folder or a .csv manifest")
        return read_manifest(data)
    return discover_folder(data)


def load_samples(data: str | Path) -> dict[str, list[Sample]]:
    """Samples per split ('train', 'val', 'test', 'unlabelled') from a folder or a CSV manifest."""
    return discover(data).splits


def evaluation_samples(data: str | Path, split: str | None) -> tuple[str, list[Sample]]:
    """The labelled samples to evaluate on, and the name of what they are.

    `split` None: the test split where the data has splits, else every labelled image ('all').
    """
    found = discover(data)
    if split is None:
        if found.has_splits:
            split = "test"
        else:
            return "all", [s for v in found.splits.values() for s in v if s.label is not None]
    canonical = split_name(split) or split
    if canonical not in found.splits:
        have = sorted(found.splits) if found.has_splits else "none: omit --split to use all of it"
        raise DataError(f"{data}: no '{split}' split (splits found: {have})")
    samples = [s for s in found.splits[canonical] if s.label is not None]
    if not samples:
        raise DataError(f"{data}: split '{split}' has no labelled images to evaluate (use `chestxray predict`)")
    return canonical, samples


def patient_groups(samples: list[Sample]) -> list[str] | None:
    """Bootstrap units: each image's patient (images without one stand alone), or None where no image has one."""
    if not any(s.patient_id for s in samples):
        return None
    return [s.patient_id or f"__image{i}" for i, s in enumerate(samples)]


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
    """Every image with its split, as a manifest that reads the same from anywhere (absolute paths)."""
    from ..files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label", "patient_id", "source", "view"])
        for split, samples in splits.items():
            for s in samples:
                w.writerow([split, str(Path(s.path).resolve()), s.label or "", s.patient_id or "", s.source or "", s.view or ""])
