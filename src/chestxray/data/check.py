"""Dataset checks before training: counts, unreadable files, modes and sizes, leakage across splits.

Leakage: the same image (exact bytes), a near-duplicate image (perceptual difference hash), or the
same patient in more than one split. Any of them inflates test figures.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from .io import XrayReadError, is_dicom, read_xray
from .labels import canonical_label
from .sources import SPLITS, DataError, Discovered, Sample, carve_validation, discover

HASH_SIDE = 16  # dHash of 16 x 16 = 256 bits


def dhash(arr: np.ndarray, side: int = HASH_SIDE) -> np.ndarray:
    """Difference hash: is each pixel brighter than its right neighbour, on a (side, side + 1) thumbnail."""
    small = np.asarray(Image.fromarray(arr).resize((side + 1, side), Image.BILINEAR), dtype=np.int16)
    return np.packbits((small[:, 1:] > small[:, :-1]).ravel())


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def hamming_pairs(a: np.ndarray, b: np.ndarray, max_distance: int, chunk: int = 128):
    """Index pairs (i, j) with Hamming distance <= max_distance between packed hashes a[i] and b[j]."""
    out = []
    for s in range(0, len(a), chunk):
        d = _POPCOUNT[np.bitwise_xor(a[s : s + chunk, None, :], b[None, :, :])].sum(-1)
        for i, j in zip(*np.nonzero(d <= max_distance)):
            out.append((s + int(i), int(j), int(d[i, j])))
    return out


def _describe(path: str) -> tuple[str, tuple[int, int] | None]:
    p = Path(path)
    if is_dicom(p):
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True)
        return f"DICOM {getattr(ds, 'PhotometricInterpretation', '?')}", (int(ds.Columns), int(ds.Rows))
    with Image.open(p) as im:
        return im.mode, im.size


def _md5(path: str) -> str | None:
    try:
        return hashlib.md5(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _pairs(items: list[tuple[str, Sample]], groups) -> tuple[list[dict], list[dict]]:
    """From groups of item indices that hold the same image: pairs across splits (leaks), and pairs in
    one split with different labels (conflicts)."""
    leaks, conflicts = [], []
    for kind, idx in groups:
        for a in idx:
            for b in idx:
                if a >= b:
                    continue
                (sa, x), (sb, y) = items[a], items[b]
                pair = {"kind": kind, "a": x.path, "split_a": sa, "b": y.path, "split_b": sb}
                if sa != sb:
                    leaks.append(pair)
                elif x.label != y.label:
                    conflicts.append({**pair, "label_a": x.label, "label_b": y.label})
    return leaks, conflicts


def one_class_validation(val: list[Sample], normal_class: str) -> str | None:
    """Why a validation split cannot choose anything (it holds only Normal or only Infected images), or None."""
    kinds = {canonical_label(s.label) != canonical_label(normal_class) for s in val if s.label}
    if len(kinds) != 1:
        return None
    return (f"the val split holds only {'infected' if kinds == {True} else 'normal'} images ({len(val)}): it cannot choose "
            "the best epoch, the final stage or a threshold; move its images into train and let --val-fraction carve a "
            "stratified validation split from train")


def quick_check(found: Discovered, normal_class: str | None = None) -> dict:
    """The checks that need no decoding, cheap enough to run before every training run.

    Problems (training would fail or be wrong): fewer than two classes in train, no Normal class, labels
    in val/test that train lacks, the same file (exact bytes) in two splits or with two labels in one.
    Warnings: classes or splits spelt in several ways (read as one).
    """
    splits = {k: v for k, v in found.splits.items() if k in SPLITS}
    problems, warnings = [], []
    for canonical, spelt in found.label_spellings.items():
        warnings.append(f"class '{canonical}' is spelt {' and '.join(repr(x) for x in spelt)}: read as one class, '{canonical}'")
    for written, split in found.split_spellings.items():
        warnings.append(f"split '{written}' read as '{split}'")
    warnings += found.notes
    train_classes = sorted({s.label for s in splits.get("train", [])})
    if not any(s.label for s in splits.get("train", [])):
        problems.append("no training split (a train/ folder, class folders at the top, or labelled manifest rows "
                        "in train or without a split)")
    if "train" in splits and len(train_classes) < 2:
        problems.append(f"train has a single class {train_classes}: need Normal and at least one infected class")
    one_class = one_class_validation(splits.get("val", []), normal_class or "normal")
    if one_class:
        problems.append(one_class)
    if normal_class is not None and train_classes and canonical_label(normal_class) not in train_classes:
        problems.append(f"no class named '{normal_class}' (any case) in train {train_classes}: set --normal-class")
    missing = {}
    for name in ("val", "test"):
        unknown = sorted({s.label for s in splits.get(name, []) if s.label} - set(train_classes))
        if unknown and "train" in splits:
            missing[name] = unknown
            problems.append(f"split '{name}' has labels {unknown} that train lacks {train_classes}")
    items = [(split, s) for split, samples in splits.items() for s in samples if s.label]
    per_source, single = source_classes([s for _, s in items])
    warnings += single
    by_md5: dict[str, list[int]] = {}
    for i, (_, s) in enumerate(items):
        h = _md5(s.path)
        if h is not None:
            by_md5.setdefault(h, []).append(i)
    leaks, conflicts = _pairs(items, [("exact duplicate", idx) for idx in by_md5.values() if len(idx) > 1])
    if leaks:
        problems.append(f"{len(leaks)} exact duplicate pairs across splits")
    if conflicts:
        problems.append(f"{len(conflicts)} exact duplicate pairs with different labels in one split")
    return {
        "label_spellings": found.label_spellings,
        "split_spellings": found.split_spellings,
        "train_classes": train_classes,
        "labels_missing_from_train": missing,
        "duplicates_across_splits": leaks,
        "conflicting_labels": conflicts,
        "per_source": per_source,
        "problems": problems,
        "warnings": warnings,
    }


def source_classes(samples: list[Sample]) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Images per source and class, and a warning for each class that only one source holds where the data have
    several sources: the site-is-the-label trap (a model can tell such a class by its source's device, framing and
    population instead of the lungs)."""
    counts: dict[str, Counter] = {}
    for s in samples:
        counts.setdefault(s.source or "(no source)", Counter())[s.label] += 1
    per_source = {k: dict(sorted(v.items())) for k, v in sorted(counts.items())}
    if len(per_source) < 2:
        return per_source, []
    warnings = []
    for label in sorted({s.label for s in samples}):
        holders = [src for src, c in per_source.items() if c.get(label)]
        if len(holders) == 1:
            warnings.append(f"class '{label}' comes from one source only ({holders[0]}): a model can tell it by the source "
                            "(site, device, population, framing) rather than by the lungs; add its images from other "
                            "sources, and read its figures as that source's")
    return per_source, warnings


def check_dataset(data: str | Path, max_distance: int = 4, normal_class: str | None = None) -> dict:
    """quick_check, plus what needs every image decoded: unreadable files, modes and sizes, near
    duplicates (across splits, or with different labels in one split), patients in several splits."""
    found = discover(data)
    report: dict = {"data": str(data), "splits": {}, "unreadable": [], "modes": {}, "sizes": {},
                    **quick_check(found, normal_class)}
    hashes, items = [], []
    modes: Counter = Counter()
    widths, heights = [], []
    for split, samples in found.splits.items():
        report["splits"][split] = {"n": len(samples), "classes": dict(Counter(s.label or "(unlabelled)" for s in samples))}
        for s in samples:
            try:
                arr = read_xray(s.path)
                mode, size = _describe(s.path)
            except (XrayReadError, OSError, ValueError) as e:
                report["unreadable"].append({"path": s.path, "split": split, "reason": str(e)})
                continue
            modes[mode] += 1
            widths.append(size[0])
            heights.append(size[1])
            if split in SPLITS and s.label:
                hashes.append(dhash(arr))
                items.append((split, s))
    report["modes"] = dict(modes)
    if widths:
        report["sizes"] = {k: {"min": int(np.min(v)), "median": int(np.median(v)), "max": int(np.max(v))}
                           for k, v in (("width", widths), ("height", heights))}
    exact = {(x["a"], x["b"]) for x in report["duplicates_across_splits"] + report["conflicting_labels"]}
    near = []
    if hashes:
        h = np.stack(hashes)
        near = [(f"near duplicate (dHash distance {d})", [i, j]) for i, j, d in hamming_pairs(h, h, max_distance)
                if i < j and (items[i][1].path, items[j][1].path) not in exact]
    leaks, conflicts = _pairs(items, near)
    report["duplicates_across_splits"] += leaks
    report["conflicting_labels"] += conflicts
    if leaks:
        report["problems"].append(f"{len(leaks)} near duplicate pairs across splits")
    if conflicts:
        report["problems"].append(f"{len(conflicts)} near duplicate pairs with different labels in one split")
    patients: dict[str, set[str]] = {}
    for split, samples in found.splits.items():
        for s in samples:
            if s.patient_id and split in SPLITS:
                patients.setdefault(s.patient_id, set()).add(split)
    report["patients_in_several_splits"] = {p: sorted(v) for p, v in sorted(patients.items()) if len(v) > 1}
    if report["patients_in_several_splits"]:
        report["problems"].append(f"{len(report['patients_in_several_splits'])} patients in several splits")
    if report["unreadable"]:
        report["problems"].append(f"{len(report['unreadable'])} unreadable files")
    report["near_duplicate_max_distance"] = max_distance
    report["leakage"] = bool(report["duplicates_across_splits"] or report["patients_in_several_splits"])
    return report


def split_manifest(manifest: Path, out: Path, val: float = 0.15, test: float = 0.15, seed: int = 42) -> dict[str, int]:
    """Write a copy of `manifest` with a patient-level, label-stratified train/val/test `split` column."""
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if "path" not in fields or "label" not in fields:
        raise DataError(f"{manifest}: a manifest needs 'path' and 'label' columns (found {fields})")
    for name, value in (("--val", val), ("--test", test)):
        if not 0 < value < 1:
            raise DataError(f"{name} must be a fraction between 0 and 1, got {value}")
    if val + test >= 1:
        raise DataError(f"--val {val} and --test {test} leave nothing to train on: their sum must be below 1")
    labelled = [i for i, r in enumerate(rows) if r["label"].strip()]
    samples = [Sample(str(i), rows[i]["label"].strip(), (rows[i].get("patient_id") or "").strip() or None) for i in labelled]
    rest, test_part = carve_validation(samples, test, seed)
    train_part, val_part = carve_validation(rest, val / (1 - test), seed + 1)
    split_of = {int(s.path): name for name, part in (("train", train_part), ("val", val_part), ("test", test_part)) for s in part}
    if "split" not in fields:
        fields.append("split")
    for i, r in enumerate(rows):
        r["split"] = split_of.get(i, "")
        p = Path(r["path"])
        if not p.is_absolute() and out.resolve().parent != manifest.resolve().parent:
            r["path"] = os.path.relpath(manifest.resolve().parent / p, out.resolve().parent)  # still valid from `out`
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return dict(Counter(split_of.values()))


__all__ = ["check_dataset", "quick_check", "split_manifest", "dhash", "hamming_pairs", "SPLITS"]
