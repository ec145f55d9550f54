"""Discover samples from an ImageFolder tree or a CSV manifest, and carve a validation split.

Split names and class names are matched case-insensitively: `Train/`, `valid/`, `Validation/` and
`TEST/` are the usual splits, and `Normal` and `normal` are one class, spelt `normal` from here on.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ChestXrayError
from ..rundir import RunDir
from .io import IMAGE_SUFFIXES, list_images
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
    notes: list[str] = field(default_factory=list)  # what was read in an unusual way or left out, for the user to see


def is_run_directory(folder: Path) -> bool:
    return any((folder / m).exists() for m in RunDir.MARKERS)


def _class_folders(split_dir: Path, skipped: list[str]) -> dict[str, list[Path]]:
    """Class name -> its image files; run directories found among the class folders are left out and named in `skipped`."""
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    out = {}
    for d in classes:
        if is_run_directory(d):
            skipped.append(f"{d}: a chestxray run directory (it has {' or '.join(RunDir.MARKERS)}), not a class folder; left out")
            continue
        files = list_images(d)
        if not files:
            raise DataError(f"{d}: empty class folder (no image files: suffixes {sorted(IMAGE_SUFFIXES)}, "
                            "or PNG, JPEG, TIFF, BMP, WebP or DICOM content)")
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
    notes: list[str] = []
    for split, d in split_dirs.items():
        folders = _class_folders(d, notes)
        if not folders:
            raise DataError(f"{d}: no class folders found (expected {d}/<class>/<image files>)")
        for name in folders:
            spellings.setdefault(canonical_label(name), set()).add(name)
        splits[split] = [Sample(str(f), canonical_label(cls), None, source) for cls, files in folders.items() for f in files]
    return Discovered(
        splits, has_splits, _several(spellings),
        {d.name: split for split, d in split_dirs.items() if has_splits and d.name != split}, notes,
    )


def _several(spellings: dict[str, set[str]]) -> dict[str, list[str]]:
    return {k: sorted(v) for k, v in sorted(spellings.items()) if len(v) > 1}


def split_from_path(path: str) -> str | None:
    """The split a manifest path's own folders name: its deepest folder spelt as a split (`train/`, `Val/`,
    `/data/xr/test/normal/1.png`, `../set/valid/covid/2.png`), or None."""
    for part in reversed(Path(path).parts[:-1]):
        if split_name(part):
            return part
    return None


def read_csv_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]], str]:
    """(columns, rows, delimiter) of a CSV as spreadsheets save it: a UTF-8 byte-order mark is dropped and
    the delimiter (comma, semicolon or tab) is sniffed from the header line."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path}: not UTF-8 text ({e.reason} at byte {e.start}); save the manifest as CSV UTF-8") from None
    header = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=header.count) if header else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    cols = [(c or "").strip() for c in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()} for r in reader]
    return cols, rows, delimiter


DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}


def read_manifest(csv_path: Path) -> Discovered:
    """CSV manifest: path,label[,patient_id,source,view][,split]; relative paths are relative to the CSV.

    Comma-, semicolon- or tab-separated, with or without a UTF-8 byte-order mark. An empty label marks an
    unlabelled row (split 'unlabelled'). Without a split column, each labelled row's split is the one its
    path's own folders name (`split_from_path`, absolute paths and `..` included) where every labelled row
    has one; where only some do, the manifest is refused (a guess would lose a split); where none do, all
    labelled rows are train. A file listed twice is kept once and reported.
    """
    base = csv_path.parent
    source_default = "synthetic-phantom" if (base / SYNTHETIC_MARKER).exists() else None
    cols, rows, delimiter = read_csv_rows(csv_path)
    if "path" not in cols:
        raise DataError(f"{csv_path}: manifest needs a 'path' column (found: {cols}; read as {DELIMITER_NAMES[delimiter]}-separated)")
    if not rows:
        raise DataError(f"{csv_path}: manifest has no rows")
    notes = [f"{csv_path}: read as {DELIMITER_NAMES[delimiter]}-separated"] if delimiter != "," else []
    has_split = "split" in cols
    if not has_split:
        labelled = [r for r in rows if r.get("label")]
        named = [split_from_path(r["path"]) for r in labelled]
        infer = bool(labelled) and all(named)
        if any(named) and not infer:
            n = sum(1 for x in named if x)
            raise DataError(f"{csv_path}: {n} of {len(labelled)} labelled rows lie under train/ val/ test/ folders and the "
                            f"others do not, so their split cannot be told; add a 'split' column (train, val or test) to every row")
    splits: dict[str, list[Sample]] = {}
    spellings: dict[str, set[str]] = {}
    split_spellings: dict[str, str] = {}
    seen: dict[str, int] = {}
    repeated: list[str] = []
    for i, r in enumerate(rows, start=2):
        if not r["path"]:
            raise DataError(f"{csv_path}: line {i}: empty path")
        p = Path(r["path"])
        p = p if p.is_absolute() else base / p
        key = os.path.normpath(os.path.abspath(p))
        label = r.get("label") or None
        if key in seen:
            first, first_label = seen[key]
            if canonical_label(first_label or "") != canonical_label(label or ""):
                raise DataError(f"{csv_path}: line {i} lists {r['path']} as '{label or ''}', line {first} as '{first_label or ''}'; "
                                "a file has one label: remove one of the rows")
            repeated.append(f"line {i} repeats line {first} ({r['path']})")
            continue
        seen[key] = (i, label)
        written = r.get("split", "") if has_split else (split_from_path(r["path"]) if infer and label else "")
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
    if repeated:
        notes.append(f"{csv_path}: {len(repeated)} row(s) list a file already listed; each file is used once: "
                     + "; ".join(repeated[:5]) + (" ..." if len(repeated) > 5 else ""))
    return Discovered(splits, has_split or infer, _several(spellings), split_spellings, notes)


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
