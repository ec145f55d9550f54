"""Dataset checks before training: counts, unreadable files, modes and sizes, leakage across splits.

Leakage: the same image (exact bytes), a near-duplicate image (perceptual difference hash), or the
same patient in more than one split. Any of them inflates test figures.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from .io import XrayReadError, is_dicom, read_xray
from .sources import SPLITS, DataError, Sample, carve_validation, load_samples

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


def check_dataset(data: str | Path, max_distance: int = 4) -> dict:
    splits = load_samples(data)
    report: dict = {"data": str(data), "splits": {}, "unreadable": [], "modes": {}, "sizes": {}}
    hashes, md5s, items = [], [], []
    modes: Counter = Counter()
    widths, heights = [], []
    for split, samples in splits.items():
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
            md5s.append(hashlib.md5(Path(s.path).read_bytes()).hexdigest())
            hashes.append(dhash(arr))
            items.append((split, s))
    report["modes"] = dict(modes)
    if widths:
        report["sizes"] = {k: {"min": int(np.min(v)), "median": int(np.median(v)), "max": int(np.max(v))}
                           for k, v in (("width", widths), ("height", heights))}
    leaks = []
    by_md5: dict[str, list[int]] = {}
    for i, h in enumerate(md5s):
        by_md5.setdefault(h, []).append(i)
    for idx in by_md5.values():
        for a in idx:
            for b in idx:
                if a < b and items[a][0] != items[b][0]:
                    leaks.append({"kind": "exact duplicate", "a": items[a][1].path, "split_a": items[a][0],
                                  "b": items[b][1].path, "split_b": items[b][0]})
    exact = {(x["a"], x["b"]) for x in leaks}
    if hashes:
        h = np.stack(hashes)
        for i, j, d in hamming_pairs(h, h, max_distance):
            if i < j and items[i][0] != items[j][0] and (items[i][1].path, items[j][1].path) not in exact:
                leaks.append({"kind": f"near duplicate (dHash distance {d})", "a": items[i][1].path, "split_a": items[i][0],
                              "b": items[j][1].path, "split_b": items[j][0]})
    patients: dict[str, set[str]] = {}
    for split, samples in splits.items():
        for s in samples:
            if s.patient_id:
                patients.setdefault(s.patient_id, set()).add(split)
    report["patients_in_several_splits"] = {p: sorted(v) for p, v in sorted(patients.items()) if len(v) > 1}
    report["duplicates_across_splits"] = leaks
    report["near_duplicate_max_distance"] = max_distance
    report["leakage"] = bool(leaks or report["patients_in_several_splits"])
    return report


def split_manifest(manifest: Path, out: Path, val: float = 0.15, test: float = 0.15, seed: int = 42) -> dict[str, int]:
    """Write a copy of `manifest` with a patient-level, label-stratified train/val/test `split` column."""
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if "path" not in fields or "label" not in fields:
        raise DataError(f"{manifest}: a manifest needs 'path' and 'label' columns (found {fields})")
    labelled = [i for i, r in enumerate(rows) if r["label"].strip()]
    samples = [Sample(str(i), rows[i]["label"].strip(), (rows[i].get("patient_id") or "").strip() or None) for i in labelled]
    rest, test_part = carve_validation(samples, test, seed)
    train_part, val_part = carve_validation(rest, val / (1 - test), seed + 1)
    split_of = {int(s.path): name for name, part in (("train", train_part), ("val", val_part), ("test", test_part)) for s in part}
    if "split" not in fields:
        fields.append("split")
    import os

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


__all__ = ["check_dataset", "split_manifest", "dhash", "hamming_pairs", "SPLITS"]
