"""Merging manifests of several datasets without leaks: one manifest with each row's source and dataset, the same image
found across datasets (exact bytes, or a perceptual hash within NEAR_DISTANCE bits) and dropped by a stated rule, patient
ids kept apart between datasets, and a patient-level split where a row has none.

The rule for an image found in several datasets: the copy of the dataset given first is kept and the others dropped;
where the copies carry different labels, every copy is dropped (which label is right cannot be told here). Copies within
one dataset are reported, not dropped (`data check` says whether they cross its splits).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import write_csv
from .check import hamming_pairs
from .importers import COLUMNS
from .io import XrayReadError, read_xray
from .labels import canonical_label
from .sources import DataError, Sample, carve_validation, read_csv_rows, split_from_path, split_name

# perceptual hash (imagehash.phash, 16 x 16 = 256 bits) of the decoded grey image. Measured by
# benchmarks/near_duplicates.py on 900 shared films: copies re-saved as JPEG (q75), resized, converted to RGB or given
# gamma 0.8 move by at most 20 bits, while no film came closer than 56 bits to another; a copy cropped by 3% moves by
# up to 90 and is not caught.
NEAR_DISTANCE = 32
HASH_SIZE = 16


def perceptual_hash(path: str) -> np.ndarray:
    """The 256-bit pHash (imagehash) of an X-ray file as the project reads it (grey, 8-bit), packed into 32 bytes."""
    import imagehash
    from PIL import Image

    return np.packbits(np.asarray(imagehash.phash(Image.fromarray(read_xray(path)), hash_size=HASH_SIZE).hash, bool))


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


@dataclass
class Merged:
    rows: list[dict] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)  # pairs: a, b, datasets, distance, kind, action
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    per_dataset: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)

    def write(self, out: Path) -> Path:
        """The merged manifest at `out`, and every copy found in OUT-duplicates.csv."""
        write_csv(out, self.rows, self.columns)
        write_csv(out.with_name(f"{out.stem}-duplicates.csv"), self.duplicates,
                  ["kind", "distance", "action", "a", "dataset_a", "label_a", "b", "dataset_b", "label_b"])
        return out


def merge_manifests(manifests: list[str | Path], max_distance: int = NEAR_DISTANCE, val: float = 0.15,
                    test: float = 0.15, seed: int = 42) -> Merged:
    """The manifests as one (see the module's rule); each row gets `dataset` (its manifest's name) and a `source`
    (its own, else the dataset)."""
    if len(manifests) < 2:
        raise DataError("data merge needs at least two manifests")
    res = Merged()
    columns = [*COLUMNS, "dataset"]
    names = [dataset_name(Path(m)) for m in manifests]
    if len(set(names)) < len(names):
        raise DataError(f"manifests with the same name {sorted(n for n, c in Counter(names).items() if c > 1)}: each "
                        "dataset is named by its manifest's file name; rename one")
    for m, name in zip(manifests, names):
        m = Path(m)
        if not m.is_file():
            raise DataError(f"{m}: no such manifest")
        cols, rows, _ = read_csv_rows(m)
        if "path" not in cols or "label" not in cols:
            raise DataError(f"{m}: a manifest needs 'path' and 'label' columns (found {cols})")
        columns += [c for c in cols if c not in columns]
        # without a split column, the splits its paths' folders name (train/ val/ test/), as `read_manifest` reads them
        by_path = "split" not in cols and all(split_from_path(r["path"]) for r in rows if r.get("label"))
        for r in rows:
            p = Path(r["path"])
            r = {**r, "path": os.path.normpath(p if p.is_absolute() else m.resolve().parent / p), "dataset": name,
                 "source": r.get("source") or name, "label": canonical_label(r["label"]) if r.get("label") else ""}
            if by_path:
                r["split"] = split_from_path(str(p)) or ""
            res.rows.append(r)
    res.columns = columns
    _keep_patients_apart(res)
    _drop_copies(res, names, max_distance)
    res.per_dataset = {n: dict(sorted(Counter(r["label"] for r in res.rows if r["dataset"] == n).items())) for n in names}
    _split_where_missing(res, val, test, seed)
    return res


def dataset_name(manifest: Path) -> str:
    """A dataset's name: its manifest's file name, or its folder's where the file has a generic name (labels.csv)."""
    generic = {"labels", "manifest", "metadata", "data", "index"}
    return manifest.resolve().parent.name if manifest.stem.lower() in generic else manifest.stem


def _keep_patients_apart(res: Merged) -> None:
    """A patient id used by two datasets means two people: such ids are prefixed by their dataset."""
    owners: dict[str, set[str]] = {}
    for r in res.rows:
        if r.get("patient_id"):
            owners.setdefault(r["patient_id"], set()).add(r["dataset"])
    shared = {p for p, d in owners.items() if len(d) > 1}
    for r in res.rows:
        if r.get("patient_id") in shared:
            r["patient_id"] = f"{r['dataset']}/{r['patient_id']}"
    if shared:
        res.notes.append(f"{len(shared)} patient id(s) used by several datasets were prefixed by their dataset "
                         f"(e.g. {sorted(shared)[0]})")


def _drop_copies(res: Merged, order: list[str], max_distance: int) -> None:
    rank = {n: i for i, n in enumerate(order)}
    readable, hashes, md5s = [], [], []
    for i, r in enumerate(res.rows):
        try:
            hashes.append(perceptual_hash(r["path"]))
            md5s.append(_md5(r["path"]))
            readable.append(i)
        except (XrayReadError, OSError, ValueError) as e:
            res.notes.append(f"{r['path']}: not hashed ({e}); kept, unchecked for copies")
    pairs = []
    by_md5: dict[str, list[int]] = {}
    for k, h in enumerate(md5s):
        by_md5.setdefault(h, []).append(k)
    exact = {(a, b) for group in by_md5.values() for a in group for b in group if a < b}
    if hashes:
        h = np.stack(hashes)
        pairs = [(a, b, d) for a, b, d in hamming_pairs(h, h, max_distance) if a < b]
    found = {(a, b) for a, b, _ in pairs}
    pairs += [(a, b, 0) for a, b in exact if (a, b) not in found]
    drop: dict[int, str] = {}
    for a, b, d in sorted(pairs):
        ra, rb = res.rows[readable[a]], res.rows[readable[b]]
        kind = "exact copy" if (a, b) in exact else f"near copy (pHash distance {d} of 256)"
        same_dataset = ra["dataset"] == rb["dataset"]
        if same_dataset:
            action = "reported (same dataset)"
        elif ra["label"] != rb["label"]:
            drop[readable[a]] = drop[readable[b]] = "copy across datasets with different labels (both dropped)"
            action = "both dropped (labels differ)"
        else:
            first, later = (a, b) if rank[ra["dataset"]] <= rank[rb["dataset"]] else (b, a)
            drop.setdefault(readable[later], f"copy of an image of an earlier dataset ({res.rows[readable[first]]['dataset']})")
            action = f"kept in {res.rows[readable[first]]['dataset']}, dropped from {res.rows[readable[later]]['dataset']}"
        res.duplicates.append({"kind": kind, "distance": int(d), "action": action, "a": ra["path"], "dataset_a": ra["dataset"],
                               "label_a": ra["label"], "b": rb["path"], "dataset_b": rb["dataset"], "label_b": rb["label"]})
    res.dropped = Counter(drop.values())
    res.rows = [r for i, r in enumerate(res.rows) if i not in drop]


def _split_where_missing(res: Merged, val: float, test: float, seed: int) -> None:
    """Rows without a split get a patient-level, label-stratified train/val/test split among themselves."""
    for r in res.rows:
        written = (r.get("split") or "").strip()
        r["split"] = (split_name(written) or written) if written else ""
    todo = [i for i, r in enumerate(res.rows) if not r["split"] and r["label"]]
    if todo:
        samples = [Sample(str(i), res.rows[i]["label"], res.rows[i].get("patient_id") or None) for i in todo]
        rest, test_part = carve_validation(samples, test, seed)
        train_part, val_part = carve_validation(rest, val / (1 - test), seed + 1)
        for name, part in (("train", train_part), ("val", val_part), ("test", test_part)):
            for s in part:
                res.rows[int(s.path)]["split"] = name
        res.notes.append(f"{len(todo)} rows without a split were split patient-level (val {val}, test {test}, seed {seed})")
    res.splits = dict(Counter(r["split"] or "(unlabelled)" for r in res.rows))
