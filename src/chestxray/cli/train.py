"""`chestxray train` and `chestxray demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import tables
from .app import _Command, app
from .options import config_options


@app.command(cls=_Command)
@config_options()
def train(
    out: Optional[Path] = typer.Option(None, help="Run directory to create (required unless --resume)."),
    resume: Optional[Path] = typer.Option(None, help="Continue this interrupted run from its last complete epoch, with its own config."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out run directory (its files are deleted)."),
    config: Optional[Path] = typer.Option(None, help="YAML file setting any option below (flat, or nested in the sections below: data, model, optim, loss, augment, calibration, hardware); flags override it."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    overrides: dict = None,
):
    """Train a classifier: head stage on the frozen backbone, then fine-tuning; evaluate on test."""
    from ..jobs.train import run_config, train_run
    from ..training.runstate import Interrupted, interrupts_raise, read_progress

    try:
        cfg, out = run_config(out, resume, config, overrides, overwrite)
        with interrupts_raise():
            metrics = train_run(cfg, out, progress=not quiet, resume=bool(resume), overwrite=overwrite)
    except Interrupted as e:
        done = ", ".join(read_progress(out).done if out and out.exists() else []) or "none"
        typer.echo(f"\ninterrupted ({e}): stages finished: {done}; an unfinished stage goes on from its last complete epoch. "
                   f"Resume with: chestxray train --resume {out}", err=True)
        raise typer.Exit(e.exit_code)
    if not metrics:  # another DDP process: rank zero reports
        return
    typer.echo("\n" + metrics["summary"])
    typer.echo(f"\nrun directory: {out}  (report: {out / 'report.html'}; metrics.json, plots/, checkpoints/best.ckpt)")


@app.command(cls=_Command)
@config_options()
def crossval(
    out: Path = typer.Option(..., help="Folder for one run per fold, crossval.json and crossval.csv."),
    by: str = typer.Option("source", help="source: leave one source out (each held out once, trained on the others); "
                           "fold: patient-level k-fold."),
    folds: int = typer.Option(5, "--folds", min=2, help="k for --by fold."),
    parallel: str = typer.Option("auto", help="Folds trained at once, each in a process of its own: auto (one per "
                                 "GPU where there are two or more, else one after another here) or a count N (each "
                                 "sees one GPU, or 1/N of the CPU cores; its messages in OUT/FOLD/log.txt)."),
    config: Optional[Path] = typer.Option(None, help="YAML file of recipe options, as for train."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    overrides: dict = None,
):
    """Leave-one-site-out (or patient-level k-fold) estimates of a recipe: one run per fold, the held-out part's
    ROC-AUC, sensitivity and specificity with 95% intervals, their mean, and the in-distribution figures beside them.
    Run it again to resume."""
    from ..jobs.crossval import crossval as run_crossval
    from ..jobs.train import run_config

    cfg, out = run_config(out, None, config, overrides)
    r = run_crossval(cfg, out, by, folds, progress=not quiet, n_boot=cfg.calibration.bootstrap, parallel=parallel)
    typer.echo(tables.crossval(r))
    typer.echo(f"written: {out / 'crossval.json'}, {out / 'crossval.csv'}")


@app.command(cls=_Command)
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its data and run."),
    data: Optional[str] = typer.Option(None, help="Run the same job on real data instead of the synthetic phantoms."),
    img_size: int = typer.Option(128, min=32, help="Demo input size (small, for a CPU)."),
    images: int = typer.Option(300, min=30, help="Number of labelled synthetic images to generate."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
):
    """The whole job offline: synthetic phantoms (or --data), both stages, evaluation, predictions."""
    from ..jobs.demo import demo_run

    r = demo_run(out, data, img_size, images, progress=not quiet)
    typer.echo("\n" + r["metrics"]["summary"])
    if r["predicted"]:
        typer.echo(f"\npredicted the {r['predicted']} {r['predicted_split']} images -> {r['run'] / 'predictions.csv'}")
    run = r["run"]
    typer.echo(f"run directory: {run}  (report: {run / 'report.html'}; metrics.json, plots/, history.csv, checkpoints/best.ckpt)")
