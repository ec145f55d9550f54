"""`chestxray crossval`: how a recipe does on a site it never saw (leave one source out), or patient-level k-fold.

`by="source"`: for each source of the data, the recipe trains on every other source (their own train / val / test
splits, so each fold reports in-distribution figures too) and is evaluated on all of the held-out source. A source
holding both classes is scored whole (ROC-AUC, sensitivity, specificity, 95% patient-level intervals); a source of one
class can only be scored by the sensitivity (infected) or specificity (normal) at the stored threshold. The mean
ROC-AUC over the sources scored whole is the leave-one-site-out estimate.

`by="fold"`: patient-level, label-stratified k-fold over all labelled images; each fold is the test split of a run
trained on the others (validation carved from them).

Each fold is a run directory under OUT; an interrupted crossval resumes fold by fold (finished folds are kept,
an interrupted training goes on from its last epoch). By default folds run one after another in this process, each
on the configured devices; where several GPUs are visible (or with `parallel=N`), N folds run at once, each in a
process of its own that sees one GPU (or, without GPUs, 1/N of the CPU cores), its messages in FOLD/log.txt.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.importers import COLUMNS
from ..data.sources import DataError, Sample, discover
from ..errors import ChestXrayError
from ..files import write_csv
from ..logs import setup_logging
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


def fold_slots(parallel: str | int, cpus: int | None = None) -> list[dict[str, str]]:
    """The environment of each process that trains folds at once, or [] to train them one after another here.

    `parallel`: "auto" (one process per visible GPU where there are two or more; otherwise none) or a count N: N
    processes, each seeing one GPU (round robin over the visible ones) or, without GPUs, cpus // N CPU threads."""
    import torch

    if str(parallel) != "auto":
        try:
            n = int(parallel)
        except ValueError:
            n = 0
        if n < 1:
            raise DataError(f"--parallel must be auto or a count of at least 1, got '{parallel}'")
    gpus = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i.strip() for i in visible.split(",") if i.strip()] if visible else [str(i) for i in range(gpus)]
    ids = ids[:gpus]
    if str(parallel) == "auto":
        n = len(ids) if len(ids) > 1 else 1
    if n == 1:
        return []
    if ids:
        return [{"CUDA_VISIBLE_DEVICES": ids[i % len(ids)]} for i in range(n)]
    threads = str(max(1, (cpus or os.cpu_count() or 1) // n))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}] * n


def run_in_slots(tasks: list[tuple[str, list[str], Path]], slots: list[dict[str, str]]) -> None:
    """Run each task (name, command, log file) in a process of its own, as many at once as there are `slots` (each
    task gets a free slot's environment added to this one's); every task runs even where another fails, then a
    failure is raised naming each failed task and its log's last lines."""
    pending = list(tasks)
    lock = threading.Lock()
    failed: list[str] = []

    def worker(env: dict[str, str]) -> None:
        while True:
            with lock:
                if not pending:
                    return
                name, cmd, log_file = pending.pop(0)
            where = ", ".join(f"{k}={v}" for k, v in env.items() if k == "CUDA_VISIBLE_DEVICES" and v) or "CPU"
            log.info("crossval %s: started on %s (log: %s)", name, where, log_file)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "w") as fh:
                code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env}).returncode
            if code:
                tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
                with lock:
                    failed.append(f"{name} (exit {code}; {log_file}): " + " | ".join(tail))
            log.info("crossval %s: %s", name, "failed" if code else "done")

    threads = [threading.Thread(target=worker, args=(env,), daemon=True) for env in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise ChestXrayError("crossval: fold(s) failed: " + "; ".join(failed))


def _trained(run_dir: Path) -> bool:
    return RunDir(run_dir).config.exists() and read_progress(run_dir).finished


def _fold_done(folder: Path, by: str) -> bool:
    return _trained(folder / "run") and (by != "source" or (folder / "held-out-eval" / "metrics.json").exists())


def run_fold(cfg: Config, folder: Path, by: str, n_boot: int, progress: bool, name: str = "") -> None:
    """Train one fold's run in FOLDER/run (resuming one begun) and, leaving a source out, evaluate it on
    FOLDER/held-out.csv into FOLDER/held-out-eval; what is already finished is kept."""
    run_dir = folder / "run"
    if not _trained(run_dir):
        fold_cfg = Config.from_dict(cfg.to_dict())
        fold_cfg.data.data = str(folder / "train.csv")
        resume = RunDir(run_dir).config.exists()
        log.info("crossval %s: %s", name or folder.name, "resuming" if resume else "training")
        train_run(fold_cfg, run_dir, progress=progress, resume=resume, overwrite=False)
    if by == "source" and not (folder / "held-out-eval" / "metrics.json").exists():
        evaluate_run(run_dir, folder / "held-out.csv", "test", folder / "held-out-eval", n_boot=n_boot, overwrite=True)


def crossval(cfg: Config, out: Path, by: str = "source", k: int = 5, progress: bool = True, n_boot: int = 1000,
             parallel: str | int = "auto") -> dict:
    """Train and score every fold (resuming where a fold's run or evaluation exists); write OUT/crossval.json and
    OUT/crossval.csv; return the summary. `parallel`: see `fold_slots`."""
    out = Path(out)
    cfg.validate()
    if not cfg.data.data:
        raise DataError("no data: give --data (a manifest with a 'source' column for --by source)")
    normal = cfg.data.normal_class.lower()
    folds = plan_folds(cfg.data.data, by, k, cfg.optim.seed, normal)
    slots = fold_slots(parallel)
    if slots and str(cfg.hardware.devices) not in ("auto", "1"):
        raise DataError(f"--parallel trains each fold on one device; --devices {cfg.hardware.devices} asks for more: "
                        "leave --devices auto, or give --parallel 1 to train each fold on those devices in turn")
    tasks = []
    for f in folds:
        folder = out / _folder_name(f["name"])
        _write(folder / "train.csv", f["train"])
        if by == "source":
            _write(folder / "held-out.csv", f["held_out"])
        if _fold_done(folder, by):
            continue
        log.info("crossval %s: %d training images", f["name"], len(f["train"]))
        if not slots:
            run_fold(cfg, folder, by, n_boot, progress, f["name"])
            continue
        write_json(folder / "fold.json", {"config": cfg.to_dict(), "by": by, "n_boot": n_boot, "name": f["name"]})
        tasks.append((f["name"], [sys.executable, "-m", "chestxray.jobs.crossval", str(folder)], folder / "log.txt"))
    if tasks:
        run_in_slots(tasks, slots)
    rows = []
    for f in folds:
        folder = out / _folder_name(f["name"])
        own = json.loads(RunDir(folder / "run").metrics.read_text())
        ext = json.loads((folder / "held-out-eval" / "metrics.json").read_text()) if by == "source" else own
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


def _fold_process(folder: Path) -> None:
    """One fold in a process of its own (`run_in_slots`): FOLDER/fold.json says what; messages go to stderr."""
    setup_logging()
    spec = json.loads((folder / "fold.json").read_text())
    try:
        run_fold(Config.from_dict(spec["config"]), folder, spec["by"], spec["n_boot"], False, spec["name"])
    except ChestXrayError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    _fold_process(Path(sys.argv[1]))
