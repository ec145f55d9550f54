"""Commands that use a trained model: predict, explain, export, serve."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ChestXrayError
from . import tables
from .app import _Command, app
from .options import (
    DEVICE_OPT,
    ENGINE_OPT,
    LUNG_MODEL_OPT,
    MODEL_ARG,
    NO_LUNGS_OPT,
    PATHS_ARG,
    RUN_ARG,
    SKIP_BAD_OPT,
    config_options,
)


@app.command(cls=_Command)
def predict(
    run: Path = MODEL_ARG,
    paths: Optional[list[Path]] = typer.Argument(None, metavar="PATHS", help="Image files or folders."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="CSV manifest; every row is predicted (rows with an empty label are the unlabelled ones)."),
    unlabelled_only: bool = typer.Option(False, "--unlabelled-only", help="With --csv: only rows with an empty label."),
    out: Optional[str] = typer.Option(None, help="Output file, or - for stdout.  [default: predictions.csv, or predictions.json with --format json]"),
    format: str = typer.Option("csv", "--format", help="Output format: csv or json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even where it is not this run's predictions file."),
    skip_bad: bool = SKIP_BAD_OPT,
    engine: str = ENGINE_OPT,
    device: str = DEVICE_OPT,
    no_lungs: bool = NO_LUNGS_OPT,
    lung_model: Optional[Path] = LUNG_MODEL_OPT,
):
    """Predict P(infected), the label at the run's validation threshold, and per-class probabilities."""
    from ..apps.engines import load_on
    from ..apps.predict import check_predictions_out, expand_paths, prediction_table, write_predictions
    from ..data.sources import Sample, read_manifest
    from ..models.predictor import checkpoint_path

    if format not in ("csv", "json"):
        raise ChestXrayError(f"--format must be csv or json, got '{format}'")
    out = out or f"predictions.{format}"
    if bool(paths) == bool(csv):
        raise ChestXrayError("give image PATHS or --csv MANIFEST (one of them)")
    check_predictions_out(out, str(checkpoint_path(run).resolve()), overwrite)
    if csv:
        splits = read_manifest(csv).splits
        samples = [s for k, v in splits.items() for s in v if not unlabelled_only or k == "unlabelled"]
    else:
        samples = [Sample(p, None) for p in expand_paths(paths)]
    if not samples:
        raise ChestXrayError("nothing to predict")
    predictor = load_on(run, engine, device)
    df, errors = prediction_table(predictor, samples, skip_bad, not no_lungs, lung_model)
    if df.empty:
        raise ChestXrayError(f"none of the {len(samples)} image(s) could be read: " + "; ".join(map(str, errors[:3]))
                             + (" ..." if len(errors) > 3 else ""))
    text = write_predictions(df, out, format, str(predictor.checkpoint))
    to_stdout = out == "-"
    if to_stdout:
        typer.echo(text, nl=False)
    for e in errors:
        typer.echo(f"skipped: {e}", err=True)
    typer.echo(tables.predictions(df, predictor.threshold, predictor.threshold_rule, out, to_stdout), err=to_stdout)


@app.command(cls=_Command)
def explain(
    run: Path = RUN_ARG,
    paths: list[Path] = PATHS_ARG,
    out: Path = typer.Option(Path("gradcam"), help="Output folder for overlays and explanations.csv."),
    skip_bad: bool = SKIP_BAD_OPT,
):
    """Grad-CAM overlays for the predicted class (eval mode, batched), one PNG per image."""
    from ..apps.predict import expand_paths
    from ..evaluation.explain import explain_paths
    from ..models.load import load_predictor

    df = explain_paths(load_predictor(run), expand_paths(paths), out, skip_bad)
    typer.echo(f"{len(df)} Grad-CAM overlays -> {out} (explanations.csv lists them)")


@app.command(cls=_Command)
def export(
    run: Path = RUN_ARG,
    out: Path = typer.Option(..., help="The .onnx file to write."),
    paths: Optional[list[Path]] = typer.Argument(None, metavar="[PATHS]...", help="Images or folders to verify on.  [default: the run's validation split]"),
    tolerance: float = typer.Option(1e-4, min=0, help="Largest accepted difference in P(infected) between PyTorch and onnxruntime."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable verification images instead of stopping."),
):
    """ONNX export with the whole contract in its metadata, verified against PyTorch on real images."""
    from ..apps.export import export_onnx
    from ..apps.predict import expand_paths

    if out.exists() and not overwrite:
        raise ChestXrayError(f"{out}: exists; give another --out, or --overwrite to replace it")
    r = export_onnx(run, out, expand_paths(paths) if paths else None, tolerance, skip_bad=skip_bad)
    for e in r["skipped"]:
        typer.echo(f"skipped: {e}", err=True)
    typer.echo(f"verified on {r['n_images']} images: largest difference in P(infected) between PyTorch and onnxruntime "
               f"{r['max_abs_diff_p_infected']:.2e} (tolerance {r['tolerance']:.0e}); decisions differing: {r['decisions_differing']}")
    if r["max_abs_diff_lung_probability"] is not None:
        typer.echo(f"the lung segmenter in the file (each runtime's own, before its crop or mask): largest difference in "
                   f"P(lung) {r['max_abs_diff_lung_probability']:.2e}")
    typer.echo(f"written: {r['path']} ({r['bytes'] / 1e6:.1f} MB, opset {r['opset']}, source sha256 {r['source_sha256'][:12]}...)")


@app.command(cls=_Command)
@config_options("serve")
def serve(
    model: Path = MODEL_ARG,
    api_key: Optional[str] = typer.Option(None, envvar="CHESTXRAY_API_KEY", show_envvar=True,
                                          help="Require this key (header X-API-Key) on /predict, /model and /metrics."),
    engine: str = ENGINE_OPT,
    device: str = DEVICE_OPT,
    overrides: dict = None,
):
    """HTTP service: POST /predict, GET /health, /ready, /model, /metrics, and a page at / to try an image."""
    import logging

    from ..apps.serve import serve as run_server
    from ..config import ServeConfig, check_option

    limits = ServeConfig(**overrides)
    for name, value in overrides.items():
        check_option(ServeConfig, name, value)
    if limits.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logging.getLogger("chestxray").warning("listening on %s without --api-key: anyone who can reach it can use it", limits.host)
    run_server(model, limits.host, limits.port, max_upload_mb=limits.max_upload_mb, max_files=limits.max_files,
               api_key=api_key, max_batch=limits.max_batch, max_wait_ms=limits.max_wait_ms, engine=engine,
               device=device)
