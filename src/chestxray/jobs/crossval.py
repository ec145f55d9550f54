"""`chestxray crossval`: how a recipe does on a site it never saw (leave one source out), or patient-level k-fold.

`by="source"`: for each source of the data, the recipe trains on every other source (their own train / val / test
splits, so each fold reports in-distribution figures too) and is evaluated on all of the held-out source. A source
holding both classes is scored whole (ROC-AUC, sensitivity, specificity, 95% patient-level intervals); a source of one
class can only be scored by the sensitivity (infected) or specificity (normal) at the stored threshold. The mean
ROC-AUC over the sources scored whole is the leave-one-site-out estimate.

`by="fold"`: patient-level, label-stratified k-fold over all labelled images; each fold is the test split of a run
trained on the others (validation carved from them).

Each fold is a run directory under OUT; an interrupted crossval resumes fold by fold (finished folds are kept,
an interrupted training goes on from its last epoch). Folds run one after another, each on the configured devices.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.importers import COLUMNS
from ..data.sources import DataError, Sample, discover
from ..files import write_csv
from ..rundir import RunDir, write_json
from ..training.runstate import read_progress
from .evaluate import evaluate_run
from .train import train_run

log = logging.getLogger("chestxray")
BY = ("source", "fold")


def _write(path: Path, rows: list[tuple[Sample, str]]) -> Path:
    """A fold's samples with their splits, as a manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, [{"path": s.path, "label": s.label, "patient_id": s.patient_id or "", "source": s.source or "",
                      "view": s.view or "", "split": split} for s, split in rows], COLUMNS)
    return path


def plan_folds(data: str | Path, by: str, k: int, seed: int, normal_class: str) -> list[dict]:
    """The folds: name, training manifest rows, held-out rows, and whether the held-out part has both classes."""
    if by not in BY:
        raise DataError(f"--by must be one of {BY}, got '{by}'")
    found = discover(data)
    labelled = [(s, split) for split, ss in found.splits.items() for s in ss if s.label is not None]
    if not labelled:
        raise DataError(f"{data}: no labelled images")
    folds = []
    if by == "source":
        sources = sorted({s.source or "(no source)" for s, _ in labelled})
        if len(sources) < 2:
            raise DataError(f"{data}: --by source needs at least two sources (a 'source' column); found {sources}")
        for src in sources:
            held = [(s, "test") for s, _ in labelled if (s.source or "(no source)") == src]
            rest = [(s, sp) for s, sp in labelled if (s.source or "(no source)") != src]
            folds.append({"name": src, "train": rest, "held_out": held})
    else:
        from sklearn.model_selection import StratifiedGroupKFold

        y = [s.label for s, _ in labelled]
        groups = [s.patient_id or s.path for s, _ in labelled]
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        for i, (_, test_idx) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
            held = set(test_idx.tolist())
            rows = [(s, "test" if j in held else "train") for j, (s, _) in enumerate(labelled)]
            folds.append({"name": f"fold-{i + 1}", "train": rows, "held_out": [r for r in rows if r[1] == "test"]})
    for f in folds:
        classes = {s.label for s, _ in f["held_out"]}
        f["both_classes"] = normal_class in classes and len(classes) > 1
        f["held_out_classes"] = sorted(classes)
    return folds


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def crossval(cfg: Config, out: Path, by: str = "source", k: int = 5, progress: bool = True, n_boot: int = 1000) -> dict:
    """Train and score every fold (resuming where a fold's run or evaluation exists); write OUT/crossval.json and
    OUT/crossval.csv; return the summary."""
    out = Path(out)
    cfg.validate()
    if not cfg.data.data:
        raise DataError("no data: give --data (a manifest with a 'source' column for --by source)")
    normal = cfg.data.normal_class.lower()
    folds = plan_folds(cfg.data.data, by, k, cfg.optim.seed, normal)
    rows = []
    for f in folds:
        folder = out / _folder_name(f["name"])
        run_dir = folder / "run"
        manifest = _write(folder / "train.csv", f["train"])
        files = RunDir(run_dir)
        finished = files.config.exists() and read_progress(run_dir).finished
        if not finished:
            fold_cfg = Config.from_dict(cfg.to_dict())
            fold_cfg.data.data = str(manifest)
            resume = files.config.exists()
            log.info("crossval %s: %s (%d training images)", f["name"], "resuming" if resume else "training",
                     len(f["train"]))
            train_run(fold_cfg, run_dir, progress=progress, resume=resume, overwrite=False)
        own = json.loads(files.metrics.read_text())
        if by == "source":
            held = _write(folder / "held-out.csv", f["held_out"])
            ext_dir = folder / "held-out-eval"
            if (ext_dir / "metrics.json").exists():
                ext = json.loads((ext_dir / "metrics.json").read_text())
            else:
                ext, _ = evaluate_run(run_dir, held, "test", ext_dir, n_boot=n_boot, overwrite=True)
        else:
            ext = own
        rows.append(_row(f, ext, own if by == "source" else None))
    scored = [r["roc_auc"] for r in rows if r["roc_auc"] is not None]
    summary = {"by": by, "k": k if by == "fold" else None, "data": cfg.data.data, "folds": rows,
               "mean_roc_auc": float(np.mean(scored)) if scored else None, "n_scored": len(scored),
               "note": "Research figures only; each held-out part is one site (or fold) with its own age, device and "
                       "label quality."}
    write_json(out / "crossval.json", summary)
    write_csv(out / "crossval.csv", rows, [c for c in rows[0] if not isinstance(rows[0][c], (list, dict))])
    return summary


def _row(f: dict, m: dict, own: dict | None) -> dict:
    b = m["binary"]["at_val_threshold"]
    ci = b.get("ci95") or {}
    row = {"held_out": f["name"], "n": b["n"], "n_infected": b["n_infected"], "classes": f["held_out_classes"],
           "scored_whole": f["both_classes"], "roc_auc": b["roc_auc"] if f["both_classes"] else None,
           "roc_auc_ci95": ci.get("roc_auc") if f["both_classes"] else None,
           "sensitivity": b["sensitivity"], "sensitivity_ci95": ci.get("sensitivity"),
           "specificity": b["specificity"], "specificity_ci95": ci.get("specificity"), "threshold": b["threshold"]}
    if own is not None:
        o = own["binary"]["at_val_threshold"]
        row["in_distribution_roc_auc"] = o["roc_auc"]
        row["in_distribution_roc_auc_ci95"] = (o.get("ci95") or {}).get("roc_auc")
    return row
