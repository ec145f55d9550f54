"""Commands that measure a trained model: evaluate, compare, audit, adapt, card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import tables
from .app import _Command, app
from .options import (
    BOOTSTRAP_OPT,
    DATA_OPT,
    DEVICE_OPT,
    ENGINE_OPT,
    LUNG_MODEL_OPT,
    MODEL_ARG,
    NO_LUNGS_OPT,
    RULE_OPTS,
    RUN_ARG,
    SKIP_BAD_OPT,
    SPLIT_OPT,
    checked,
)


@app.command(cls=_Command)
def evaluate(
    run: Path = MODEL_ARG,
    data: str = DATA_OPT,
    split: Optional[str] = SPLIT_OPT,
    out: Optional[Path] = typer.Option(None, help="Output folder.  [default: RUN/eval/NAME]"),
    name: Optional[str] = typer.Option(None, help="Name of this evaluation's folder under RUN/eval/.  [default: <data>-<split>-<hash of the data's path>]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace another evaluation already in the output folder."),
    skip_bad: bool = SKIP_BAD_OPT,
    bootstrap: int = BOOTSTRAP_OPT,
    seed: Optional[int] = typer.Option(None, help="Bootstrap seed.  [default: the run's training seed, as training's own intervals]"),
    audit: bool = typer.Option(False, "--audit", help="Add the shortcut audit (three more passes over the images)."),
    engine: str = ENGINE_OPT,
    device: str = DEVICE_OPT,
    no_lungs: bool = NO_LUNGS_OPT,
    lung_model: Optional[Path] = LUNG_MODEL_OPT,
    attention: bool = typer.Option(False, "--attention", help="Grad-CAM of every image and the share of it inside the "
                                   "image's dilated lung fields, per class and source (one more pass with gradients)."),
):
    """Metrics with 95% intervals at 0.5 and at each validation operating point, calibration, per source, plots.
    Every evaluation is recorded in RUN/evaluations.json, where the model card finds it."""
    from ..apps.engines import load_on
    from ..evaluation.report import ood_line
    from ..jobs.evaluate import evaluate_run

    metrics, outdir = evaluate_run(run, data, split, out, skip_bad, bootstrap, seed, audit, name, overwrite, load_on(run, engine, device),
                                   not no_lungs, lung_model, attention)
    if metrics["split"] == "all":
        typer.echo(f"{data} has no train/val/test splits: evaluated all {metrics['binary']['at_0.5']['n']} labelled images.")
    if metrics["external"]:
        typer.echo(f"EXTERNAL evaluation: {data} was not the training data of this run.")
    flagged = metrics["image_quality"]["n_flagged"]
    if flagged:
        typer.echo(f"{flagged} image(s) without a radiograph's grey levels got no decision and are left out of the figures "
                   f"below: " + "; ".join(f"{f['path']}: {f['reason']}" for f in metrics["image_quality"]["flagged"][:3]))
    if metrics["synthetic"]:
        typer.echo("*** SYNTHETIC phantom data: not chest X-rays ***")
    typer.echo(tables.evaluation(metrics))
    if metrics.get("lungs") and metrics["lungs"]["n_not_found"]:
        typer.echo(f"{metrics['lungs']['n_not_found']} of {metrics['lungs']['n']} image(s): no plausible pair of lung fields "
                   "found (lungs_found in the predictions file)")
    if metrics.get("attention"):
        typer.echo(tables.attention(metrics["attention"]))
    if metrics.get("out_of_distribution"):
        typer.echo(ood_line(metrics["out_of_distribution"]))
    if metrics.get("audit"):
        typer.echo(tables.audit(metrics["audit"]))
    typer.echo(f"\nwritten: {outdir}/metrics.json, {outdir}/report.html and {outdir}/plots/")


@app.command(cls=_Command)
def audit(
    run: Path = MODEL_ARG,
    data: str = DATA_OPT,
    split: Optional[str] = SPLIT_OPT,
    out: Optional[Path] = typer.Option(None, help="Where audit.json goes.  [default: RUN/audit/<data>-<split>-<hash of the data's path>]"),
    bootstrap: int = BOOTSTRAP_OPT,
    skip_bad: bool = SKIP_BAD_OPT,
    masks: str = typer.Option("lungs", "--masks", help="Lung fields: each image's own, by the lung segmenter (lungs), "
                              "or a fixed pair of ellipses (ellipse)."),
    lung_model: Optional[Path] = LUNG_MODEL_OPT,
):
    """Shortcut audit: ROC-AUC with the lung fields hidden, with only the lungs kept, and with the borders hidden."""
    from ..errors import ChestXrayError
    from ..evaluation.audit import MASK_SOURCES
    from ..jobs.audit import audit_run

    if masks not in MASK_SOURCES:
        raise ChestXrayError(f"--masks must be one of {', '.join(MASK_SOURCES)}; got '{masks}'")
    result, out = audit_run(run, data, split, out, bootstrap, skip_bad, masks, lung_model)
    typer.echo(tables.audit(result))
    typer.echo(f"written: {out / 'audit.json'}")


@app.command(cls=_Command)
def adapt(
    run: Path = RUN_ARG,
    data: str = typer.Option(..., help="Labelled images of the new site (ImageFolder root or CSV manifest; every split is used)."),
    out: Path = typer.Option(..., help="Run directory to create for the adapted model."),
    n: str = typer.Option("100", "--n", help="Labelled images of the site used to recalibrate; the rest evaluate. "
                          "'all': recalibrate on every image, and report figures out of fold (each image scored by a model "
                          "adapted on the other folds)."),
    head: bool = typer.Option(False, "--head", help="Also retrain the classification layer on the site images' frozen features."),
    operating_point: Optional[str] = RULE_OPTS["operating_point"],
    target_sensitivity: Optional[float] = RULE_OPTS["target_sensitivity"],
    target_confidence: Optional[float] = RULE_OPTS["target_confidence"],
    seed: int = typer.Option(0, help="Seed of the patient-level, stratified choice of the n images."),
    bootstrap: int = BOOTSTRAP_OPT,
    skip_bad: bool = SKIP_BAD_OPT,
):
    """Recalibrate a model for a new site: temperature and threshold (and with --head the classifier) from n labelled
    images; the threshold rule is the run's own unless given (on the n images)."""
    from ..config import CalibrationConfig
    from ..jobs.adapt import adapt_run
    from ..models.calibration import ThresholdRule

    checked(CalibrationConfig, operating_point=operating_point, target_sensitivity=target_sensitivity,
            target_confidence=target_confidence)
    rule = ThresholdRule(operating_point, target_sensitivity, target_confidence)
    r = adapt_run(run, data, out, n, head, seed, bootstrap, skip_bad, rule)
    evaluated = ("figures out of fold: each image scored by a model adapted on the other folds" if r["all"]
                 else f"evaluated on the other {r['n_heldout']}")
    typer.echo(f"adapted on {r['n_adaptation']} images of {data}; {evaluated} "
               f"(threshold {r['threshold_before']:.3f} -> {r['threshold_after']:.3f}, temperature {r['temperature_after']:.2f})")
    typer.echo(tables.adaptation(r))
    typer.echo(f"run directory: {out}  (adapt.json, metrics.json, report.html, checkpoints/best.ckpt)")


@app.command(cls=_Command)
def compare(
    runs: list[Path] = typer.Argument(..., metavar="RUNS", help="Two or more run directories."),
    data: Optional[str] = typer.Option(None, help="Data to compare on.  [default: the first run's training data]"),
    split: Optional[str] = SPLIT_OPT,
    out: Path = typer.Option(Path("compare"), help="Output folder (compare.json, roc_compare.png)."),
    bootstrap: int = BOOTSTRAP_OPT,
):
    """One table and one ROC plot across runs on the same images, with DeLong tests against the first run."""
    from ..jobs.compare import compare_runs

    r = compare_runs(runs, data, split, out, bootstrap)
    typer.echo(tables.comparison(r))
    typer.echo(f"written: {out}/compare.json, {out}/roc_compare.png")


@app.command(cls=_Command)
def card(run: Path = RUN_ARG):
    """Write RUN/model_card.md again from the run's own files (training writes it; evaluations added since are included)."""
    from ..evaluation.model_card import write_model_card
    from ..models.predictor import Predictor, checkpoint_path, run_directory

    predictor = Predictor.load(run)
    path = write_model_card(predictor, run_directory(checkpoint_path(run)))
    typer.echo(f"written: {path}")
