"""Evaluate a model on a split: metrics with intervals, plots, report.html; the same writer for train and evaluate."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..config import BOOTSTRAP_RESAMPLES, Config
from ..data.datamodule import DecodedSplit
from ..data.quality import OK
from ..data.sources import DataError, Sample, evaluation_samples, is_synthetic, patient_groups
from ..errors import ChestXrayError
from ..evaluation import plots
from ..evaluation.audit import audit
from ..evaluation.explain import attention_in_lungs, attention_summary, cam_examples
from ..evaluation.intervals import bootstrap_ci, per_source
from ..evaluation.metrics import binary_metrics, expected_calibration_error, multiclass_metrics, multilabel_metrics
from ..evaluation.report import write_report
from ..files import write_text
from ..models.load import load_predictor
from ..models.lungs import LungModel, default_lung_model
from ..models.predictor import Predictor, run_directory
from ..notices import RESEARCH_NOTE, SYNTHETIC_NOTE
from ..rundir import EvaluationRecord, MetricsHeader, RunDir, read_metrics, record_evaluation, write_metrics

log = logging.getLogger("chestxray")


def evaluate_logits(predictor: Predictor, logits: torch.Tensor, samples: list[Sample], n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """All metrics of one split from raw logits; the predictor applies its temperature and thresholds.

    Every binary metric comes with a 95% bootstrap interval (patient-level where patient ids exist).
    """
    scheme = predictor.scheme
    labels = [s.label for s in samples]
    y = np.array([scheme.is_infected(lab) for lab in labels])
    p = predictor.p_infected(logits)
    points = {"0.5": 0.5, "val_threshold": predictor.threshold, **predictor.thresholds}
    groups = patient_groups(samples)
    cis = bootstrap_ci(y, p, points, groups, n_boot, seed) if n_boot > 0 else {}
    binary = {f"at_{name}": {**binary_metrics(y, p, t), "ci95": cis.get(name, {})} for name, t in points.items()}
    ece, bins = expected_calibration_error(y, p)
    calibration = {"temperature": predictor.temperature, "ece": ece, "bins": bins}
    if predictor.temperature != 1.0:
        raw_p = scheme.p_infected(logits).numpy()
        calibration["ece_uncalibrated"], calibration["bins_uncalibrated"] = expected_calibration_error(y, raw_p)
    out = {
        "task": scheme.task,
        "binary": binary,
        "operating_points": points,
        "bootstrap": {"resamples": n_boot, "seed": seed, "unit": "patient" if groups else "image", "level": 0.95},
        "calibration": calibration,
    }
    probs = predictor.probabilities(logits).numpy()
    if scheme.task == "multiclass":
        y_idx = np.array([scheme.class_index(lab) for lab in labels])
        out["multiclass"] = multiclass_metrics(y_idx, probs, list(scheme.classes))
    elif scheme.task == "multilabel":
        y_ml = torch.stack([scheme.target(lab) for lab in labels]).numpy()
        out["multilabel"] = multilabel_metrics(y_ml, probs, list(scheme.output_names))
    sources = [s.source for s in samples]
    if any(sources):
        out["per_source"] = per_source(y, p, sources, predictor.threshold, groups, n_boot, seed)
    return out


def ood_summary(predictor: Predictor, y: np.ndarray, p: np.ndarray, features: torch.Tensor) -> dict:
    """How many images are unlike the training data, and the metrics of the rest."""
    scores = predictor.ood_scores(features)
    flagged = predictor.ood.flag(scores)
    keep = ~flagged
    return {
        "method": "Mahalanobis distance of pooled backbone features to the training images",
        "threshold": predictor.ood.threshold,
        "quantile_of_validation": predictor.ood.quantile,
        "n": int(len(flagged)),
        "n_flagged": int(flagged.sum()),
        "fraction_flagged": float(flagged.mean()) if len(flagged) else 0.0,
        "median_score": float(np.median(scores)) if len(scores) else None,
        "in_distribution": binary_metrics(y[keep], p[keep], predictor.threshold) if keep.any() else None,
    }


def write_run_outputs(
    outdir: Path,
    predictor: Predictor,
    split: DecodedSplit,
    logits: torch.Tensor,
    header: MetricsHeader,
    history: pd.DataFrame | None = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    summarise: Callable[[dict], str] | None = None,
    features: torch.Tensor | None = None,
    with_audit: bool = False,
    lungs: LungModel | None = None,
    attention: bool = False,
) -> dict:
    """metrics.json, predictions-SPLIT.csv, plots/ and report.html of one split under `outdir`; return the metrics.

    `logits` and `features` are the predictor's outputs on `split` (computed once by the caller);
    `summarise`, when given, adds the terminal summary to the metrics.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    plot_dir = outdir / "plots"
    plot_dir.mkdir(exist_ok=True)
    synthetic = header.synthetic
    note = "SYNTHETIC DATA" if synthetic else None
    # the segmenter runs once per image: its lung fields serve the lung check and the audit's own-lung masks (a model
    # with a lung input found them on the images as decoded; its audit masks the images it takes, segmented anew)
    lung_fields = predictor.lung_check_fields(split, lungs)
    table = predictor.table(split, logits, features, lung_fields)  # every image, flagged ones with an empty decision
    quality = table["image_quality"].to_numpy()
    flagged = np.flatnonzero(quality != OK)
    if len(flagged):  # no label, so no place in the figures: counted, named, excluded
        log.warning("%d image(s) without a radiograph's grey levels get no decision and are left out of the metrics "
                    "(image_quality in predictions-%s.csv)", len(flagged), header.split or "all")
        keep = np.flatnonzero(quality == OK)
        split, logits = split.subset(keep), logits[keep]
        features = features[keep] if features is not None else None
        lung_fields = [lung_fields[i] for i in keep] if lung_fields is not None else None
    log.info("metrics of %d %s images with 95%% intervals (%d bootstrap resamples)", len(split.samples),
             header.split or "", n_boot)
    metrics = {**header.to_dict(), "notes": [RESEARCH_NOTE] + ([SYNTHETIC_NOTE] if synthetic else []),
               "image_quality": {"n_flagged": int(len(flagged)), "excluded_from_metrics": True,
                                 "flagged": [{"path": table["path"].iloc[i], "reason": quality[i]} for i in flagged]},
               **evaluate_logits(predictor, logits, split.samples, n_boot, seed)}
    if lungs is not None:
        metrics["lungs"] = lungs_summary(table)
    if attention and lungs is not None and predictor.model is not None:
        log.info("Grad-CAM of %d images and the share of each inside its lung fields", len(split.images))
        share = attention_in_lungs(predictor, split.images, lungs)
        metrics["attention"] = attention_summary(share, [s.label for s in split.samples], [s.source for s in split.samples])
        table["attention_in_lungs"] = np.nan
        table.loc[table["path"].isin([s.path for s in split.samples]), "attention_in_lungs"] = share
    y = np.array([predictor.scheme.is_infected(s.label) for s in split.samples])
    p = predictor.p_infected(logits)
    if features is not None and predictor.ood is not None:
        metrics["out_of_distribution"] = ood_summary(predictor, y, p, features)
    if with_audit:
        own = None if predictor.preprocessing.lung_input else lung_fields
        metrics["audit"] = audit(predictor, split, n_boot, seed, original=logits, lungs=lungs, lung_fields=own)
    log.info("plots, Grad-CAM examples and the report")
    plots.reliability(metrics["calibration"], plot_dir / "reliability.png", note)
    plots.roc_pr(y, p, plot_dir, f"{header.split} AUC={metrics['binary']['at_0.5']['roc_auc'] or float('nan'):.3f}", note)
    cm = metrics["binary"]["at_val_threshold"]["confusion_matrix"]
    plots.confusion(cm["rows_true_cols_pred"], cm["labels"], plot_dir / "confusion.png", f"threshold {predictor.threshold:.3f}")
    if "multiclass" in metrics:
        cm = metrics["multiclass"]["confusion_matrix"]
        plots.confusion(cm["rows_true_cols_pred"], cm["labels"], plot_dir / "confusion_multiclass.png", "argmax")
    if history is not None and len(history):
        plots.learning_curves(history, plot_dir / "learning_curves.png", note)
    if summarise is not None:
        metrics["summary"] = summarise(metrics)
    write_metrics(RunDir(outdir).metrics, metrics)
    write_text(RunDir(outdir).predictions(header.split), table.to_csv(index=False))
    write_report(outdir, metrics, predictor.meta.get("config"), cam_examples(predictor, split.images, split.samples, logits) if predictor.model is not None else [])  # Grad-CAM needs PyTorch
    return metrics


def lungs_summary(table: pd.DataFrame) -> dict:
    """How many images the segmenter found no plausible pair of lung fields in, by label, and which (kept in the
    figures: like the feature-density flag, it says the model's output there is not supported)."""
    missing = table[~table["lungs_found"]]
    by_label = ({str(k): int(v) for k, v in missing["label"].value_counts().items()} if "label" in table else {})
    return {"n": int(len(table)), "n_not_found": int(len(missing)), "fraction_not_found": float(len(missing) / max(1, len(table))),
            "not_found_by_label": by_label, "excluded_from_metrics": False,
            "not_found": [{"path": r.path, "reason": r.lung_fields} for r in missing.itertuples()][:100]}


def evaluation_folder(run_dir: Path, data: str | Path, split: str, name: str | None, under: str = "eval") -> Path:
    """RUN/eval/NAME, or RUN/eval/<data stem>-<split>-<8 hex of the data's absolute path>: two sites' labels.csv
    never share a folder (`under`: 'audit' for the shortcut audit's folders)."""
    if name:
        if Path(name).name != name or name in (".", ".."):
            raise DataError(f"--name {name!r}: a plain folder name, without / or ..")
        return run_dir / under / name
    digest = hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:8]
    return run_dir / under / f"{Path(data).stem}-{split}-{digest}"


def claim_evaluation_folder(out: Path, data: str | Path, split: str, overwrite: bool) -> None:
    """An evaluation folder holds one evaluation: the same data and split again replaces it (and says so);
    another evaluation's folder is replaced only with `overwrite`."""
    earlier = RunDir(out).metrics
    if not earlier.exists():
        return
    try:
        header = read_metrics(earlier)[0]
        same = header.data_resolved == str(Path(data).resolve()) and header.split == split
    except (OSError, ValueError, ChestXrayError):
        same = False
    if not (same or overwrite):
        raise DataError(f"{out}: holds another evaluation ({earlier}); give --name or another --out, or --overwrite to replace it")
    log.warning("replacing the earlier evaluation in %s", out)


def evaluate_run(
    run: str | Path, data: str | Path, split: str | None = None, out: str | Path | None = None, skip_bad: bool = False,
    n_boot: int = BOOTSTRAP_RESAMPLES, seed: int | None = None, with_audit: bool = False, name: str | None = None, overwrite: bool = False,
    predictor: Predictor | None = None, lungs: bool = True, lung_model: str | Path | None = None, attention: bool = False,
) -> tuple[dict, Path]:
    """Evaluate a trained run on `split` of `data` (the training data or another dataset).

    `split` None: the test split, or all of `data` where it has no train/val/test splits (split 'all').
    `out` None: `evaluation_folder` (RUN/eval/NAME with `name`). `seed` None: the run's own training seed, so that
    the run's test split gets the intervals training reported. Every evaluation is recorded in RUN/evaluations.json.
    `predictor`: the run's model as already loaded (`apps.engines.load_on` runs a run directory on onnxruntime);
    None: loaded from `run`.
    """
    predictor = predictor or load_predictor(run)
    split, samples = evaluation_samples(data, split)
    unknown = sorted({s.label for s in samples} - set(predictor.scheme.classes))
    if unknown:
        raise DataError(f"{data}: labels {unknown} in split '{split}' are not among the model's classes {list(predictor.scheme.classes)}")
    run_dir = run_directory(run)
    out = Path(out) if out else evaluation_folder(run_dir, data, split, name)
    claim_evaluation_folder(out, data, split, overwrite)
    if seed is None:
        seed = Config.of_run(predictor.meta["config"]).optim.seed if predictor.meta.get("config") else 0
    decoded = predictor.decode(samples, skip_bad, desc=f"reading {split}")
    logits, features = predictor.forward(decoded.images, desc=f"scoring {split}")
    # the same files in another form (folder vs its manifest) still count as the training data
    roots = {p if p.is_dir() else p.parent for p in (predictor.training_data, Path(data).resolve())}
    history_path = RunDir(run_dir).history
    header = MetricsHeader(
        kind="evaluation", data=str(data), data_resolved=str(Path(data).resolve()), split=split, external=len(roots) != 1,
        synthetic=is_synthetic(data), model=predictor.meta.get("model_name"), stage=predictor.meta.get("stage"),
        val_threshold=predictor.threshold, unreadable_skipped=[str(e) for e in decoded.errors])
    history = pd.read_csv(history_path) if history_path.exists() else None
    metrics = write_run_outputs(out, predictor, decoded, logits, header, history, n_boot, seed, features=features,
                                with_audit=with_audit, lungs=default_lung_model(lung_model) if lungs or attention else None,
                                attention=attention)
    record_evaluation(run_dir, EvaluationRecord(str(out.resolve()), str(data), split, header.external, header.data_resolved))
    return metrics, out
