"""The train job: prepare the run, fit each stage, choose the final model on validation, write the run's results.

Every decision (final stage, temperature, thresholds) and every figure in metrics.json is taken from the Predictor's
forward pass, the one `chestxray predict` runs; test never chooses anything.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pandas as pd

from ..config import Config
from ..data.sources import class_counts
from ..errors import ChestXrayError
from ..evaluation.metrics import binary_metrics
from ..evaluation.model_card import write_model_card
from ..evaluation.summary import ci_line, summary_table
from ..files import write_text
from ..models.backbones import get_spec
from ..models.calibration import ThresholdRule, fit_temperature
from ..models.lungs import default_lung_model
from ..models.ood import FeatureDensity
from ..notices import SYNTHETIC_NOTE
from ..rundir import MetricsHeader, RunDir
from ..training.runstate import config_differences, mark_progress, run_lock
from ..training.stages import (
    Run,
    contract_features,
    fit_stage,
    launched_as_global_zero,
    parse_stages,
    prepare_run,
    uses_contract_features,
)
from .evaluate import write_run_outputs

log = logging.getLogger("chestxray")


def run_config(out: Path | None, resume: Path | None, config: Path | None, overrides: dict, overwrite: bool = False
               ) -> tuple[Config, Path]:
    """(the config to train with, the run directory) for a new run (`out`: defaults, then the `config` file, then
    `overrides`) or for continuing `resume` in place (its own config.yaml; what is given again must match it)."""
    if resume:
        resume = Path(resume)
        if out and Path(out).resolve() != resume.resolve():
            raise ChestXrayError(f"--resume {resume} continues that run in place; leave out --out (or give the same folder)")
        if overwrite:
            raise ChestXrayError("--resume and --overwrite contradict each other: give one")
        files = RunDir(resume)
        if not files.config.exists():
            raise ChestXrayError(f"{resume}: not a run directory to resume (no config.yaml)")
        cfg = Config.load_run(files.config)
        given = Config.load_run(files.config)  # what is given again must match; what is left out is kept
        if config:
            given.update(Config.read_mapping(config), config)
        given.update(overrides)
        if given.loss.balance == "auto":  # resolved when the run started; config.yaml holds what auto became
            given.loss.balance = cfg.loss.balance
        differ = config_differences(cfg.to_dict(), given.to_dict())
        if differ:
            raise ChestXrayError(f"{resume}: a resumed run keeps its config, and these differ: {'; '.join(differ)}. "
                                 "Leave them out, or start a new run with --out")
        return cfg, resume
    if out is None:
        raise ChestXrayError("give --out RUN_DIR for a new run, or --resume RUN_DIR to continue one")
    cfg = Config.load(config) if config else Config()
    cfg.update(overrides)
    return cfg, Path(out)


def train_run(cfg: Config, out: str | Path, progress: bool = True, resume: bool = False, overwrite: bool = False) -> dict:
    """Train the configured stages into run directory `out`; evaluate the chosen model; return its metrics.

    `resume`: `out` is an interrupted run of this same config: finished stages are not trained again, an
    interrupted one continues from its last complete epoch. `overwrite`: an existing `out` is replaced.
    """
    out = Path(out)
    with run_lock(out) if launched_as_global_zero() else contextlib.nullcontext():
        return _train_run(cfg, out, progress, resume, overwrite)


def _train_run(cfg: Config, out: Path, progress: bool, resume: bool, overwrite: bool) -> dict:
    run = prepare_run(cfg, out, resume, overwrite)
    results = {}
    for stage in parse_stages(cfg.optim.stages):
        if (cfg.optim.epochs_head if stage == "head" else cfg.optim.epochs_finetune) > 0:
            fitted = fit_stage(run, stage, progress)
            if run.writer:
                results[stage] = score_stage(run, stage, fitted)
    if not run.writer:
        return {}  # other DDP processes only train; the writer reports
    choose_final_model(run, results)
    metrics = finalise_run(run, results)
    mark_progress(run.out, finished=True)
    return metrics


def score_stage(run: Run, stage: str, fitted: dict) -> dict:
    """A fitted stage's figures at 0.5 on validation (and test, reported only) and its validation score (higher is
    better), from the logits `fit_stage` left in the run."""
    val_m = binary_metrics(run.infected("val"), run.scheme.p_infected(run.logits[stage]["val"]).numpy(), 0.5)
    res = {"val": val_m, "val_loss": fitted["val_loss"], "score": _score(run.cfg.optim.monitor, val_m, fitted["val_loss"]),
           "epochs_run": fitted["epochs_run"]}
    if run.eval_split == "test":
        res["test"] = binary_metrics(run.infected("test"), run.scheme.p_infected(run.logits[stage]["test"]).numpy(), 0.5)
    return res


def _score(monitor: str, val_metrics: dict, val_loss: float) -> float:
    """Higher is better."""
    if monitor == "val_loss":
        return -val_loss
    return val_metrics["roc_auc" if monitor == "val_auc" else "f1_infected"] or 0.0


def choose_final_model(run: Run, results: dict) -> None:
    """The stage with the best validation score; temperature and operating points on its validation logits."""
    cfg, predictor = run.cfg, run.predictor
    final = max(results, key=lambda s: results[s]["score"])  # test never chooses anything
    predictor.model.load_state_dict(run.states[final])
    val_logits = run.logits[final]["val"]
    predictor.temperature = fit_temperature(val_logits, run.targets("val"), run.scheme.task) if cfg.calibration.calibrate else 1.0
    rule = ThresholdRule.of_config(cfg.calibration)
    chosen, points = rule.choose(run.infected("val"), predictor.p_infected(val_logits))
    predictor.threshold, predictor.thresholds = points[chosen], points
    predictor.threshold_rule = f"{chosen}, chosen on validation"
    if final == "head" and uses_contract_features(run):
        train_features = contract_features(run)["train"]  # the frozen backbone's, computed once for the head stage
    else:
        train_features = predictor.forward(run.decoded["train"].images, desc="features of the training images")[1]
    log.info("fitting the out-of-distribution density on %d training images' features", len(train_features))
    predictor.ood = FeatureDensity.fit(train_features.numpy(), run.features[final]["val"].numpy(), cfg.calibration.ood_quantile)
    predictor.meta = {
        "model_name": cfg.model.model,
        "timm_name": get_spec(cfg.model.model).timm_name,
        "stage": final,
        "weights_origin": run.origin,
        "config": cfg.to_dict(),
        "synthetic": run.synthetic,
        "data_resolved": str(Path(cfg.data.data).resolve()),
    }


def finalise_run(run: Run, results: dict) -> dict:
    """The final checkpoint, history.csv, and metrics, plots and report of the evaluation split."""
    predictor, final, split = run.predictor, run.predictor.meta["stage"], run.eval_split
    files = RunDir(run.out)
    predictor.save(files.best_checkpoint)
    history = pd.concat(run.histories, ignore_index=True) if run.histories else pd.DataFrame()
    write_text(files.history, history.to_csv(index=False))
    header = MetricsHeader(
        kind="train", data=run.cfg.data.data, data_resolved=predictor.meta["data_resolved"], split=split, external=False,
        synthetic=run.synthetic, model=run.cfg.model.model, weights_origin=run.origin, final_stage=final,
        val_threshold=predictor.threshold, val_threshold_rule=predictor.threshold_rule.split(",")[0],
        class_counts={k: class_counts(d.samples) for k, d in run.decoded.items()},
        unreadable_skipped=[str(e) for d in run.decoded.values() for e in d.errors], stages=results)
    metrics = write_run_outputs(
        run.out, predictor, run.decoded[split], run.logits[final][split], header, history,
        run.cfg.calibration.bootstrap, run.cfg.optim.seed, lambda m: summarise(results, m, final, split, run.synthetic),
        run.features[final][split], with_audit=run.cfg.calibration.audit,
        lungs=default_lung_model() if run.cfg.calibration.lung_check else None,
    )
    write_model_card(predictor, run.out)
    return metrics


def summarise(results: dict, metrics: dict, final_stage: str, split: str, synthetic: bool) -> str:
    rows = {}
    for stage, r in results.items():
        rows[f"{stage} best: val @0.5"] = r["val"]
        if "test" in r:
            rows[f"{stage} best: test @0.5"] = r["test"]
    rows[f"final ({final_stage}) {split} @val-thr"] = metrics["binary"]["at_val_threshold"]
    text = summary_table(rows) + "\n" + ci_line(metrics)
    if split == "val":
        text += ("\nNo test split (--test-fraction 0): the final figures are on the validation images that chose the epoch, "
                 "the stage and the threshold; optimistic, not a test.")
    if synthetic:
        text = f"*** {SYNTHETIC_NOTE} ***\n" + text
    return text

