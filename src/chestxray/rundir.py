"""The run directory's declared format: one class that names every file of a run, and the dataclasses that write and
read its records (split.csv, skipped.csv, progress.json, the header of every metrics.json, evaluations.json).

Every record carries `schema_version`; a reader takes every version up to its own, and files written before records
were versioned (no `schema_version`) read as version 0 with the same fields.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

from .errors import ChestXrayError
from .files import atomic_path, file_lock, write_text

SCHEMA_VERSION = 1


class RunFileError(ChestXrayError):
    pass


class RunDir:
    """The files of one run directory (training, adaptation) by name. Nothing is read or made by naming them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    split = property(lambda self: self.root / "split.csv")
    skipped = property(lambda self: self.root / "skipped.csv")
    progress = property(lambda self: self.root / "progress.json")
    lock = property(lambda self: self.root / ".lock")
    metrics = property(lambda self: self.root / "metrics.json")
    history = property(lambda self: self.root / "history.csv")
    report = property(lambda self: self.root / "report.html")
    model_card = property(lambda self: self.root / "model_card.md")
    plots = property(lambda self: self.root / "plots")
    logs = property(lambda self: self.root / "logs")
    checkpoints = property(lambda self: self.root / "checkpoints")
    best_checkpoint = property(lambda self: self.root / "checkpoints" / "best.ckpt")
    best_onnx = property(lambda self: self.root / "checkpoints" / "best.onnx")
    evaluations = property(lambda self: self.root / "evaluations.json")
    eval_root = property(lambda self: self.root / "eval")
    adaptation = property(lambda self: self.root / "adapt.json")
    synthetic_marker = property(lambda self: self.root / "SYNTHETIC_DATA.txt")
    MARKERS = ("config.yaml", "progress.json")  # a folder holding one of these is a run directory, never a class

    def predictions(self, split: str | None) -> Path:
        return self.root / f"predictions-{split or 'all'}.csv"

    def stage_checkpoints(self, stage: str) -> Path:
        return self.checkpoints / stage

    def stage_log(self, stage: str) -> Path:
        return self.logs / stage / "version_0" / "metrics.csv"


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _check_version(what: Path | str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise RunFileError(f"{what}: written by a newer chestxray (schema {version}; this one reads up to "
                           f"{SCHEMA_VERSION}); update chestxray")


# --- split.csv -------------------------------------------------------------------------------------------------------

@dataclass
class SplitRow:
    """One image of a run's split.csv (a manifest that reads the same from anywhere: absolute paths)."""

    split: str
    path: str
    label: str = ""
    patient_id: str = ""
    source: str = ""
    view: str = ""

    @classmethod
    def of(cls, split: str, sample) -> "SplitRow":
        """From a `data.sources.Sample` (or anything with its attributes)."""
        return cls(split, str(Path(sample.path).resolve()), sample.label or "", getattr(sample, "patient_id", None) or "",
                   getattr(sample, "source", None) or "", getattr(sample, "view", None) or "")


SPLIT_COLUMNS = tuple(f.name for f in fields(SplitRow))


def write_split(path: Path, rows: Iterable[SplitRow]) -> None:
    """split.csv, atomically, with every column."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SPLIT_COLUMNS)
        w.writerows([getattr(r, c) for c in SPLIT_COLUMNS] for r in rows)


def split_rows(splits: dict[str, list]) -> list[SplitRow]:
    return [SplitRow.of(name, s) for name, samples in splits.items() for s in samples]


def read_split(path: Path) -> list[SplitRow]:
    """The rows of a split.csv (older files without the view column included)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"split", "path"} <= set(reader.fieldnames or ()):
            raise RunFileError(f"{path}: not a run's split.csv (columns {reader.fieldnames})")
        return [SplitRow(**{c: (r.get(c) or "") for c in SPLIT_COLUMNS}) for r in reader]


# --- skipped.csv -----------------------------------------------------------------------------------------------------

@dataclass
class SkippedFile:
    path: str
    reason: str


def write_skipped(path: Path, skipped: Iterable[SkippedFile]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows([s.path, s.reason] for s in skipped)


def read_skipped(path: Path) -> list[SkippedFile]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [SkippedFile(r["path"], r["reason"]) for r in csv.DictReader(f)]


# --- progress.json ---------------------------------------------------------------------------------------------------

@dataclass
class Progress:
    """Which stages of a run finished (`--resume` skips them) and whether the whole run did."""

    done: list[str] = field(default_factory=list)
    finished: bool = False
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def read(cls, path: Path) -> "Progress":
        if not path.exists():
            return cls()
        d = json.loads(path.read_text())
        _check_version(path, d.get("schema_version", 0))
        return cls(**{**_known(cls, d), "schema_version": SCHEMA_VERSION})

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(asdict(self), indent=2))


# --- metrics.json ----------------------------------------------------------------------------------------------------

@dataclass
class MetricsHeader:
    """What a metrics.json says about where its figures come from, before the figures themselves: written by training
    (`kind` 'train'), evaluation ('evaluation') and adaptation ('adaptation'). Fields left None are not written."""

    kind: str
    data: str
    split: str
    external: bool = False
    synthetic: bool = False
    model: str | None = None
    stage: str | None = None  # evaluation, adaptation: the model's stage
    final_stage: str | None = None  # training: the stage chosen on validation
    weights_origin: str | None = None
    data_resolved: str | None = None
    val_threshold: float | None = None
    val_threshold_rule: str | None = None
    class_counts: dict | None = None
    unreadable_skipped: list[str] | None = None
    stages: dict | None = None  # training: each stage's validation (and test) figures at 0.5
    adaptation: dict | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def of(cls, metrics: dict, path: Path | str = "metrics.json") -> "MetricsHeader":
        """The header of a metrics.json as read (files from before headers were versioned: kind inferred)."""
        _check_version(path, metrics.get("schema_version", 0))
        kind = metrics.get("kind") or ("adaptation" if "adaptation" in metrics else "train" if "stages" in metrics else "evaluation")
        return cls(**{**_known(cls, metrics), "kind": kind, "schema_version": SCHEMA_VERSION})

    @property
    def model_stage(self) -> str | None:
        return self.final_stage or self.stage


def write_json(path: Path, obj) -> None:
    """JSON with numpy scalars as numbers, atomically."""
    write_text(path, json.dumps(obj, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def write_metrics(path: Path, metrics: dict) -> None:
    """A metrics.json: a header (`MetricsHeader.to_dict()`, checked here) followed by the figures."""
    MetricsHeader.of(metrics, path)
    if "kind" not in metrics or "schema_version" not in metrics:
        raise RunFileError(f"{path}: a metrics.json needs its header (MetricsHeader)")
    write_json(path, metrics)


def read_metrics(path: Path) -> tuple[MetricsHeader, dict]:
    """(its header, the whole file) of a metrics.json."""
    try:
        metrics = json.loads(Path(path).read_text())
    except ValueError as e:
        raise RunFileError(f"{path}: not readable JSON ({e})") from e
    return MetricsHeader.of(metrics, path), metrics


def operating_points(metrics: dict) -> dict[str, dict]:
    """Every operating point a metrics.json reports figures at (`at_<name>`), by name, in the order written: the
    stored threshold, 0.5, and each point chosen on validation (whatever rule and target the run used)."""
    return {k[len("at_"):]: v for k, v in (metrics.get("binary") or {}).items() if k.startswith("at_")}


# --- evaluations.json ------------------------------------------------------------------------------------------------

@dataclass
class EvaluationRecord:
    """One evaluation of a run, wherever its files were written."""

    out: str
    data: str
    split: str
    external: bool
    data_resolved: str | None = None
    schema_version: int = SCHEMA_VERSION


def record_evaluation(run_dir: Path, entry: EvaluationRecord) -> None:
    """Add an evaluation to RUN/evaluations.json (one entry per output folder, the latest kept), under a lock."""
    path = RunDir(run_dir).evaluations
    with file_lock(run_dir / f".{path.name}.lock"):
        entries = [e for e in read_records(path) if e.out != entry.out] + [entry]
        write_text(path, json.dumps([asdict(e) for e in entries], indent=2))


def read_records(path: Path) -> list[EvaluationRecord]:
    try:
        raw = json.loads(path.read_text()) if path.exists() else []
    except ValueError:
        return []
    out = []
    for e in raw if isinstance(raw, list) else []:
        if isinstance(e, dict) and "out" in e:
            _check_version(path, e.get("schema_version", 0))
            out.append(EvaluationRecord(**{"data": "", "split": "", "external": False, **_known(EvaluationRecord, e),
                                           "schema_version": SCHEMA_VERSION}))
    return out


def read_evaluations(run_dir: Path) -> list[tuple[Path, dict]]:
    """(folder, metrics) of every evaluation of a run: those RUN/evaluations.json records, wherever they were
    written, and any RUN/eval/*/metrics.json from before the record existed."""
    run = RunDir(run_dir)
    folders = [Path(e.out) for e in read_records(run.evaluations)]
    folders += sorted(p.parent for p in run.eval_root.glob("*/metrics.json"))
    out, seen = [], set()
    for folder in folders:
        path = (folder / "metrics.json").resolve()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        try:
            out.append((folder, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return out
