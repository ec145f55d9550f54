"""`chestxray lungs train | evaluate | predict`: the lung segmenter."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import tables
from .app import _Command, app
from .options import BOOTSTRAP_OPT, LUNG_MODEL_OPT, PATHS_ARG

lungs_app = typer.Typer(help="The lung segmenter: train, evaluate, predict masks.", no_args_is_help=True)
app.add_typer(lungs_app, name="lungs")


@lungs_app.command("train", cls=_Command)
def lungs_train(
    data: Path = typer.Option(..., help="A lung-masks folder (labels.csv: image, mask, source, patient_id, dataset_split)."),
    out: Path = typer.Option(..., help="Folder for lungs.pt, metrics.json and the training logs."),
    sources: str = typer.Option("cohen-v7", help="Comma-separated sources to train on (the others are external tests)."),
    epochs: int = typer.Option(40, min=1, help="Epochs (the best validation Dice is kept)."),
    batch_size: int = typer.Option(8, min=1, help="Images per batch."),
    lr: float = typer.Option(1e-3, min=0, help="AdamW learning rate (cosine decay)."),
    seed: int = typer.Option(0, help="Random seed."),
    size: int = typer.Option(256, min=32, help="Side of the square the segmenter sees, in px (a multiple of 32)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Train the U-Net (EfficientNet-Lite0 encoder, ImageNet start) and evaluate it on every source's val and test."""
    from ..jobs.lungs import train_lungs

    r = train_lungs(data, out, tuple(s.strip() for s in sources.split(",") if s.strip()), epochs, batch_size, lr, seed, not quiet, size)
    for split, fig in r["figures"].items():
        typer.echo(tables.lung_overlap(fig["sources"], prefix=f"{split:5s} "))
    typer.echo(f"written: {out / 'lungs.pt'}, {out / 'metrics.json'}")


@lungs_app.command("evaluate", cls=_Command)
def lungs_evaluate(
    data: Path = typer.Option(..., help="A lung-masks folder (labels.csv)."),
    lung_model: Optional[Path] = LUNG_MODEL_OPT,
    split: str = typer.Option("test", help="Split to evaluate."),
    out: Optional[Path] = typer.Option(None, help="JSON file for the figures.  [default: lungs-<split>.json]"),
    bootstrap: int = BOOTSTRAP_OPT,
):
    """Dice and IoU per source with 95% patient-level intervals."""
    from ..jobs.lungs import evaluate_lungs
    from ..models.lungs import LungModel

    out = out or Path(f"lungs-{split}.json")
    r = evaluate_lungs(LungModel.load(lung_model), data, split, out, bootstrap)
    typer.echo(tables.lung_overlap(r["sources"]))
    typer.echo(f"written: {out}")


@lungs_app.command("predict", cls=_Command)
def lungs_predict(
    paths: list[Path] = PATHS_ARG,
    out: Path = typer.Option(Path("lungs"), help="Folder for masks, overlays and lungs.csv."),
    lung_model: Optional[Path] = LUNG_MODEL_OPT,
):
    """Lung masks and overlays, one pair of PNGs per image."""
    from ..apps.predict import expand_paths
    from ..jobs.lungs import predict_lungs
    from ..models.lungs import LungModel

    rows = predict_lungs(LungModel.load(lung_model), expand_paths(paths), out)
    typer.echo(f"{len(rows)} lung masks and overlays -> {out} (lungs.csv lists them)")

