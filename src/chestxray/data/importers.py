"""Importers of public chest X-ray datasets in their native layouts: each reads a dataset as it is downloaded and
writes the project's manifest (`path,label,patient_id,source,view,split` and what else the dataset tells), with
patient ids prefixed by the dataset, and says what it read, how it mapped the dataset's findings to the project's
classes, and what it skipped and why.

    kermany            chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (Kermany et al. 2018, pediatric)
    covid-radiography  CLASS/images/*.png [CLASS/masks/] [CLASS.metadata.xlsx] (COVID-19 Radiography Database)
    cohen              metadata.csv + images/ (Cohen et al., covid-chestxray-dataset)
    nih                Data_Entry_2017*.csv + image folders [train_val_list.txt, test_list.txt] (NIH ChestX-ray14)
    rsna-pneumonia     stage_2_train_labels.csv [+ stage_2_detailed_class_info.csv] + stage_2_train_images/*.dcm
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..files import write_csv
from .io import IMAGE_SUFFIXES
from .sources import DataError

FORMATS: dict[str, Callable] = {}
COLUMNS = ["path", "label", "patient_id", "source", "view", "split"]  # the project's manifest, as every writer of one writes it
SKIP = "skip"  # a mapping to this leaves the class out
KERMANY_MIN_VAL = 100  # a validation folder smaller than this is too small to choose an epoch and a threshold on


@dataclass
class Imported:
    """What an importer made of a dataset: manifest rows, and what it read, mapped and skipped."""

    format: str
    root: Path
    rows: list[dict] = field(default_factory=list)
    read: int = 0  # entries (files or metadata rows) looked at
    mapping: dict[str, str] = field(default_factory=dict)  # the dataset's finding -> the project's class (or skip)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        out: dict[str, Counter] = {}
        for r in self.rows:
            out.setdefault(r.get("split") or "(none: carved at training)", Counter())[r["label"]] += 1
        return {k: dict(v) for k, v in sorted(out.items())}

    def write(self, out: Path) -> Path:
        """The manifest, atomically; columns COLUMNS first, then any the dataset added."""
        if not self.rows:
            raise DataError(f"{self.root}: nothing to import as {self.format} (read {self.read}; skipped "
                            f"{dict(self.skipped) or 'none'})")
        extra = sorted({k for r in self.rows for k in r} - set(COLUMNS))
        write_csv(out, self.rows, COLUMNS + extra)
        return out


def importer(name: str):
    def register(fn):
        FORMATS[name] = fn
        return fn
    return register


def import_dataset(fmt: str, root: str | Path, mapping: dict[str, str] | None = None) -> Imported:
    """Read the dataset at `root` in its native layout `fmt` (one of FORMATS); `mapping` overrides the default mapping of
    the dataset's findings or class folders to the project's classes (a value 'skip' leaves one out)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format '{fmt}'; one of: {', '.join(FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    return FORMATS[fmt](root.resolve(), dict(mapping or {}))


def parse_mapping(items: list[str]) -> dict[str, str]:
    """['Lung_Opacity=skip', 'COVID=covid'] -> a dict; refuses anything but NAME=CLASS."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise DataError(f"--map {item!r}: expected NAME=CLASS (CLASS 'skip' leaves NAME out)")
        out[name.strip()] = value.strip().lower()
    return out


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def _mapped(result: Imported, finding: str, default: str | None) -> str | None:
    """The class a finding maps to (the override, else the default), recorded in `result.mapping`; None: skipped."""
    label = result.mapping.get(finding, default)
    if label is None:
        return None
    result.mapping[finding] = label
    return None if label == SKIP else label


def _row(path: Path, label: str, patient: str, source: str, view: str = "", split: str = "", **extra) -> dict:
    return {"path": str(path), "label": label, "patient_id": patient, "source": source, "view": view, "split": split, **extra}


# --- Kermany -------------------------------------------------------------------------------------------------------

KERMANY_PATIENT = re.compile(r"^(person\d+|(?:NORMAL2-)?IM-\d+)", re.IGNORECASE)


@importer("kermany")
def import_kermany(root: Path, mapping: dict[str, str]) -> Imported:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}: patients from the file names (personN_bacteria_M, IM-NNNN-MMMM,
    NORMAL2-IM-NNNN-MMMM); every film is a pediatric AP. A validation folder too small to choose on (the download's
    has 16 images) goes to train, and validation is carved from train, patient-level, when training."""
    res = Imported("kermany", root, mapping=dict(mapping))
    base = next((b for b in (root, root / "chest_xray") if (b / "train").is_dir()), None)
    if base is None:
        raise DataError(f"{root}: not the Kermany layout (no train/ folder, nor chest_xray/train/)")
    defaults = {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}
    val_files = [p for c in defaults for p in _images(base / "val" / c)]
    small_val = 0 < len(val_files) < KERMANY_MIN_VAL
    if small_val:
        res.notes.append(f"{base / 'val'}: {len(val_files)} images, too few to choose an epoch and a threshold on; "
                         "imported as train, and validation is carved from train (patient-level) when training")
    for split in ("train", "val", "test"):
        for cls, default in defaults.items():
            for p in _images(base / split / cls):
                res.read += 1
                label = _mapped(res, cls, default)
                if label is None:
                    res.skip(f"class {cls} mapped to skip")
                    continue
                m = KERMANY_PATIENT.match(p.stem)
                if m is None:
                    res.skip("file name without a patient id")
                    continue
                out_split = "" if split == "val" and small_val else split
                res.rows.append(_row(p, label, f"kermany-{m.group(1)}", "kermany-guangzhou", "AP", out_split,
                                     finding=p.stem.split("_")[1] if "_" in p.stem else cls.lower()))
    return res


# --- COVID-19 Radiography Database ---------------------------------------------------------------------------------

COVID_RADIOGRAPHY_CLASSES = {"COVID": "covid", "Normal": "normal", "Viral Pneumonia": "pneumonia",
                             "Lung_Opacity": "pneumonia"}  # RSNA's 'Lung Opacity' class: opacities read as pneumonia


def _metadata_urls(sheet: Path, res: Imported) -> dict[str, str]:
    """FILE NAME -> URL of a class's metadata sheet (openpyxl), where it can be read."""
    try:
        import openpyxl

        wb = openpyxl.load_workbook(sheet, read_only=True)
        rows = list(wb.active.iter_rows(values_only=True))
    except Exception as e:  # a Git LFS pointer, a damaged sheet, openpyxl missing
        res.notes.append(f"{sheet}: not read ({type(e).__name__}: {e}); the class folder is taken as its source")
        return {}
    if not rows:
        return {}
    head = [str(c or "").strip().upper() for c in rows[0]]
    if "FILE NAME" not in head or "URL" not in head:
        res.notes.append(f"{sheet}: no FILE NAME and URL columns; the class folder is taken as its source")
        return {}
    i, j = head.index("FILE NAME"), head.index("URL")
    return {str(r[i]).strip().lower(): str(r[j] or "").strip() for r in rows[1:] if r and r[i]}


def url_source(url: str) -> str:
    """A short source name from an image's origin URL: its host without 'www.'."""
    host = re.sub(r"^[a-z]+://", "", url.strip().lower()).split("/")[0]
    return host.removeprefix("www.") or "unknown"


@importer("covid-radiography")
def import_covid_radiography(root: Path, mapping: dict[str, str]) -> Imported:
    """CLASS/images/*.png for COVID, Normal, Lung_Opacity and Viral Pneumonia. The database names no patients: each image
    is its own patient (two films of one patient can land in two splits; say so). Its classes come from different
    collections; each image's source is the host of its URL in CLASS.metadata.xlsx where that sheet is readable, else
    the class folder itself (so that `data check` sees which classes come from one collection only)."""
    res = Imported("covid-radiography", root, mapping=dict(mapping))
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and (d / "images").is_dir()]
    if not folders:
        raise DataError(f"{root}: not the COVID-19 Radiography Database layout (no CLASS/images/ folders)")
    for d in folders:
        sheet = next((s for s in (root / f"{d.name}.metadata.xlsx", d / f"{d.name}.metadata.xlsx") if s.exists()), None)
        urls = _metadata_urls(sheet, res) if sheet else {}
        masks = d / "masks"
        for p in _images(d / "images"):
            res.read += 1
            label = _mapped(res, d.name, COVID_RADIOGRAPHY_CLASSES.get(d.name))
            if label is None:
                res.skip(f"class folder {d.name} " + ("mapped to skip" if d.name in res.mapping else "not mapped (give --map)"))
                continue
            url = urls.get(p.stem.lower(), "") or urls.get(p.name.lower(), "")
            source = f"covid-radiography/{url_source(url)}" if url else f"covid-radiography/{d.name}"
            extra = {"url": url} if url else {}
            if (masks / p.name).exists():
                extra["mask"] = str(masks / p.name)
            res.rows.append(_row(p, label, f"covid-radiography-{p.stem}", source, "", "", **extra))
    res.notes.append("no patient ids in this database: each image is its own patient, so films of one patient may be "
                     "split apart")
    if not any(r.get("url") for r in res.rows):
        res.notes.append("no readable metadata sheet: each class folder is taken as its own source (the database's "
                         "classes come from different collections)")
    return res


# --- Cohen's covid-chestxray-dataset -------------------------------------------------------------------------------

FRONTAL = {"PA", "AP", "AP SUPINE", "AP SEMI ERECT", "AP ERECT"}


def cohen_class(finding: str) -> str | None:
    """Cohen's `finding` (e.g. Pneumonia/Viral/COVID-19, Pneumonia/Bacterial/Streptococcus, No Finding) -> a class."""
    f = finding.strip()
    if "covid-19" in f.lower():
        return "covid"
    if f.lower().startswith("pneumonia"):
        return "pneumonia"
    if f.lower() == "no finding":
        return "normal"
    return None


@importer("cohen")
def import_cohen(root: Path, mapping: dict[str, str]) -> Imported:
    """metadata.csv + images/: frontal X-rays only (PA and AP views; CT and lateral views skipped), `finding` mapped to a
    class (COVID-19 anywhere in it -> covid, other Pneumonia/... -> pneumonia, No Finding -> normal, else skipped),
    patients from `patientid`, the image's source URL and licence kept."""
    res = Imported("cohen", root, mapping=dict(mapping))
    meta = root / "metadata.csv"
    if not meta.exists():
        raise DataError(f"{root}: not Cohen's layout (no metadata.csv)")
    with open(meta, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    need = {"patientid", "finding", "view", "modality", "filename"}
    if rows and not need <= set(rows[0]):
        raise DataError(f"{meta}: missing columns {sorted(need - set(rows[0]))}")
    for r in rows:
        res.read += 1
        if r["modality"].strip().lower() not in ("x-ray", "xray", "cr", "dx"):
            res.skip(f"modality {r['modality'] or '(none)'}, not an X-ray")
            continue
        view = r["view"].strip()
        if view.upper() not in FRONTAL:
            res.skip(f"view {view or '(none)'}, not frontal")
            continue
        label = _mapped(res, r["finding"], cohen_class(r["finding"]))
        if label is None:
            res.skip(f"finding {r['finding'] or '(none)'} not mapped")
            continue
        p = root / (r.get("folder") or "images") / r["filename"]
        if not p.exists():
            res.skip("image file missing")
            continue
        res.rows.append(_row(p, label, f"cohen-{r['patientid']}", "cohen", view.split()[0].upper(), "",
                             url=r.get("url", ""), license=r.get("license", ""), finding=r["finding"]))
    return res


# --- NIH ChestX-ray14 ----------------------------------------------------------------------------------------------

@importer("nih")
def import_nih(root: Path, mapping: dict[str, str]) -> Imported:
    """Data_Entry_2017*.csv + image folders (images/, images_001/images/, ...): No Finding -> normal, any label list
    holding Pneumonia -> pneumonia, other findings skipped; patients from `Patient ID`, views from `View Position`; the
    official test_list.txt (where present) marks the test split."""
    res = Imported("nih", root, mapping=dict(mapping))
    entries = sorted(root.glob("Data_Entry_2017*.csv"))
    if not entries:
        raise DataError(f"{root}: not the NIH ChestX-ray14 layout (no Data_Entry_2017*.csv)")
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.lower().endswith(".png"):
                files.setdefault(n, Path(dirpath) / n)
    test = set((root / "test_list.txt").read_text().split()) if (root / "test_list.txt").exists() else set()
    with open(entries[0], newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        res.read += 1
        findings = [x.strip() for x in r["Finding Labels"].split("|")]
        key = "Pneumonia" if "Pneumonia" in findings else "No Finding" if findings == ["No Finding"] else "other findings"
        label = _mapped(res, key, {"Pneumonia": "pneumonia", "No Finding": "normal"}.get(key))
        if label is None:
            res.skip("findings without Pneumonia (not normal either)" if key == "other findings" else f"{key} mapped to skip")
            continue
        p = files.get(r["Image Index"])
        if p is None:
            res.skip("image file missing")
            continue
        res.rows.append(_row(p, label, f"nih-{int(r['Patient ID'])}", "nih-chestxray14", r["View Position"].strip(),
                             "test" if r["Image Index"] in test else "", finding=r["Finding Labels"]))
    if test:
        res.notes.append(f"test split: the {len(test)} images of test_list.txt; the rest train (validation carved from it)")
    return res


# --- RSNA Pneumonia Detection Challenge ----------------------------------------------------------------------------

RSNA_CLASSES = {"Lung Opacity": "pneumonia", "Normal": "normal", "No Lung Opacity / Not Normal": SKIP}


@importer("rsna-pneumonia")
def import_rsna(root: Path, mapping: dict[str, str]) -> Imported:
    """stage_2_train_labels.csv (one row per box; Target 1: lung opacity) + stage_2_train_images/*.dcm. With
    stage_2_detailed_class_info.csv: Lung Opacity -> pneumonia, Normal -> normal, 'No Lung Opacity / Not Normal' skipped
    (neither); without it, Target 0 mixes normal and abnormal films and is mapped to normal with a warning. One image
    per patientId; views (AP, PA) from the DICOM header."""
    import pydicom

    res = Imported("rsna-pneumonia", root, mapping=dict(mapping))
    labels = root / "stage_2_train_labels.csv"
    if not labels.exists():
        raise DataError(f"{root}: not the RSNA Pneumonia layout (no stage_2_train_labels.csv)")
    with open(labels, newline="", encoding="utf-8-sig") as f:
        targets = {}
        for r in csv.DictReader(f):
            targets[r["patientId"]] = max(targets.get(r["patientId"], 0), int(r["Target"]))
    info = root / "stage_2_detailed_class_info.csv"
    classes = {}
    if info.exists():
        with open(info, newline="", encoding="utf-8-sig") as f:
            classes = {r["patientId"]: r["class"] for r in csv.DictReader(f)}
    else:
        res.notes.append(f"{info.name} not found: Target 0 (no lung opacity) is mapped to normal, though it includes "
                         "abnormal films that are not pneumonia")
    images = root / "stage_2_train_images"
    for pid, target in sorted(targets.items()):
        res.read += 1
        finding = classes.get(pid) or ("Lung Opacity" if target else "Target 0")
        label = _mapped(res, finding, RSNA_CLASSES.get(finding, "normal"))
        if label is None:
            res.skip(f"{finding} mapped to skip")
            continue
        p = images / f"{pid}.dcm"
        if not p.exists():
            res.skip("image file missing")
            continue
        try:
            view = str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["ViewPosition"]).get("ViewPosition", ""))
        except Exception as e:
            res.skip(f"unreadable DICOM header ({type(e).__name__})")
            continue
        res.rows.append(_row(p, label, f"rsna-{pid}", "rsna-pneumonia", view.strip(), "", finding=finding))
    return res
