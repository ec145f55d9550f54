"""Command-line interface: parse, build a config, call one function.

A research tool, not a diagnostic device.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from .config import Config

app = typer.Typer(
    help="Infected-vs-Normal chest X-ray classification by two-stage transfer learning. "
    "Research tool, not a diagnostic device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
D = Config()  # defaults shown in --help


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, RuntimeError)


@app.command()
def train(
    data: Optional[str] = typer.Option(None, help="ImageFolder root (train/ val/ test/ with one folder per class) or CSV manifest."),
    out: Path = typer.Option(..., help="Run directory to create."),
    config: Optional[Path] = typer.Option(None, help="YAML file setting any option below; flags override it."),
    model: Optional[str] = typer.Option(None, help=f"Backbone: a registered name (see `chestxray models`) or any timm model. (default: {D.model.model})"),
    weights: Optional[Path] = typer.Option(None, help="ImageNet weights file (timm or torchvision format) for the backbone."),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="Start from random weights (explicit; never a silent fallback)."),
    task: Optional[str] = typer.Option(None, help=f"binary | multiclass | multilabel. (default: {D.data.task})"),
    normal_class: Optional[str] = typer.Option(None, help=f"Class name meaning Normal (any case); all others are Infected. (default: {D.data.normal_class})"),
    stages: Optional[str] = typer.Option(None, help=f"Stages to run. (default: {D.train.stages})"),
    img_size: Optional[int] = typer.Option(None, help=f"Input size in pixels. (default: {D.data.img_size})"),
    batch_size: Optional[int] = typer.Option(None, help=f"(default: {D.data.batch_size})"),
    epochs_head: Optional[int] = typer.Option(None, help=f"Head-stage epochs (backbone frozen, BN statistics too). (default: {D.train.epochs_head})"),
    epochs_finetune: Optional[int] = typer.Option(None, help=f"Finetune-stage epochs (from the best head checkpoint). (default: {D.train.epochs_finetune})"),
    lr: Optional[float] = typer.Option(None, help=f"Head-stage learning rate. (default: {D.train.lr})"),
    head_augment: Optional[bool] = typer.Option(None, "--head-augment/--no-head-augment", help=f"Augment images in the head stage (finetune always augments). (default: {D.train.head_augment})"),
    head_features: Optional[bool] = typer.Option(None, "--head-features/--no-head-features", help=f"Head stage on backbone features computed once and cached, instead of running the frozen backbone every epoch. (default: {D.train.head_features})"),
    feature_views: Optional[int] = typer.Option(None, help=f"Extra augmented views per training image in the feature cache. (default: {D.train.feature_views})"),
    lr_finetune: Optional[float] = typer.Option(None, help=f"Head learning rate in finetune; the backbone gets it x --backbone-lr-factor. (default: {D.train.lr_finetune})"),
    backbone_lr_factor: Optional[float] = typer.Option(None, help=f"(default: {D.train.backbone_lr_factor})"),
    optimizer: Optional[str] = typer.Option(None, help=f"adamw | sgd. (default: {D.train.optimizer})"),
    weight_decay: Optional[float] = typer.Option(None, help=f"(default: {D.train.weight_decay})"),
    warmup_epochs: Optional[float] = typer.Option(None, help=f"Linear warm-up before the cosine decay. (default: {D.train.warmup_epochs})"),
    loss: Optional[str] = typer.Option(None, help=f"ce | focal. (default: {D.train.loss})"),
    focal_gamma: Optional[float] = typer.Option(None, help=f"(default: {D.train.focal_gamma})"),
    focal_alpha: Optional[float] = typer.Option(None, help=f"Focal alpha for the positive class; < 0 disables it. (default: {D.train.focal_alpha})"),
    class_weights: Optional[bool] = typer.Option(None, "--class-weights/--no-class-weights", help=f"Balance classes in the loss. (default: {D.train.class_weights})"),
    unfreeze_last: Optional[int] = typer.Option(None, help=f"Finetune only the last N backbone blocks (0 = all). (default: {D.train.unfreeze_last})"),
    finetune_bn: Optional[str] = typer.Option(None, help=f"frozen | train: batch-norm statistics during finetune. (default: {D.train.finetune_bn})"),
    operating_point: Optional[str] = typer.Option(None, help=f"Threshold stored with the model and used by predict, chosen on validation: best_f1 | youden | sensitivity. (default: {D.train.operating_point})"),
    target_sensitivity: Optional[float] = typer.Option(None, help=f"Sensitivity the 'sensitivity' operating point must reach on validation. (default: {D.train.target_sensitivity})"),
    calibrate: Optional[bool] = typer.Option(None, "--calibrate/--no-calibrate", help=f"Temperature scaling fitted on validation; ECE reported before and after. (default: {D.train.calibrate})"),
    bootstrap: Optional[int] = typer.Option(None, help=f"Bootstrap resamples for 95% intervals (patient-level where ids exist; 0: none). (default: {D.train.bootstrap})"),
    monitor: Optional[str] = typer.Option(None, help=f"Validation metric for checkpoints and early stopping: val_auc | val_f1 | val_loss. (default: {D.train.monitor})"),
    patience: Optional[int] = typer.Option(None, help=f"Early-stopping patience in epochs. (default: {D.train.patience})"),
    val_fraction: Optional[float] = typer.Option(None, help=f"Fraction of train carved out as validation when there is no val split. (default: {D.data.val_fraction})"),
    seed: Optional[int] = typer.Option(None, help=f"(default: {D.train.seed})"),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic", help="Deterministic algorithms (slower)."),
    skip_bad: Optional[bool] = typer.Option(None, "--skip-bad/--no-skip-bad", help="Skip unreadable images (listed in RUN/skipped.csv) instead of stopping."),
    devices: Optional[str] = typer.Option(None, help=f"Lightning devices. (default: {D.train.devices})"),
    accelerator: Optional[str] = typer.Option(None, help=f"cpu | gpu | auto. (default: {D.train.accelerator})"),
    precision: Optional[str] = typer.Option(None, help=f"auto | 32-true | bf16-mixed | 16-mixed; auto uses bf16 where the hardware supports it. (default: {D.train.precision})"),
    num_nodes: Optional[int] = typer.Option(None, help=f"Lightning nodes (multi-node DDP). (default: {D.train.num_nodes})"),
    strategy: Optional[str] = typer.Option(None, help=f"Lightning strategy, e.g. ddp. (default: {D.train.strategy})"),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help=f"(default: {D.train.channels_last})"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help=f"torch.compile the model. (default: {D.train.compile})"),
    cache_dir: Optional[str] = typer.Option(None, help="Decoded-image and feature cache. (default: $CHESTXRAY_CACHE or ~/.cache/chestxray)"),
    workers: Optional[int] = typer.Option(None, help=f"DataLoader workers. (default: {D.data.workers})"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
):
    """Train a classifier: head stage on the frozen backbone, then fine-tuning; evaluate on test."""
    from .training.stages import train_run

    cfg = Config.load(config) if config else Config()
    flags = {k: v for k, v in locals().items() if k not in ("config", "out", "quiet", "cfg", "train_run", "no_pretrained") and v is not None}
    if "weights" in flags:
        flags["weights"] = str(flags["weights"])
    if no_pretrained:
        flags["pretrained"] = False
    cfg.update(flags)
    if not cfg.data.data:
        _fail(ValueError("no data: give --data or set data in --config"))
    try:
        metrics = train_run(cfg, out, progress=not quiet)
    except USER_ERRORS as e:
        _fail(e)
    if not metrics:  # another DDP process: rank zero reports
        return
    typer.echo("\n" + metrics["summary"])
    typer.echo(f"\nrun directory: {out}  (report: {out / 'report.html'}; metrics.json, plots/, checkpoints/best.ckpt)")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory (or checkpoints/best.ckpt)."),
    data: str = typer.Option(..., help="ImageFolder root or CSV manifest."),
    split: str = typer.Option("test", help="Split to evaluate."),
    out: Optional[Path] = typer.Option(None, help="Output folder. (default: RUN/eval/<data>-<split>)"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images instead of stopping."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for 95% intervals (0: none)."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
):
    """Metrics with 95% intervals at 0.5 and at each validation operating point, calibration, per source, plots."""
    from .evaluation.evaluate import evaluate_run
    from .evaluation.report import ci_line, summary_table

    try:
        metrics, outdir = evaluate_run(run, data, split, out, skip_bad, bootstrap, seed)
    except USER_ERRORS as e:
        _fail(e)
    if metrics["external"]:
        typer.echo(f"EXTERNAL evaluation: {data} was not the training data of this run.")
    if metrics["synthetic"]:
        typer.echo("*** SYNTHETIC phantom data: not chest X-rays ***")
    rows = {f"{split} @{k[3:]}": v for k, v in metrics["binary"].items()}
    rows.update({f"  {k}": v for k, v in metrics.get("per_source", {}).items()})
    typer.echo(summary_table(rows))
    typer.echo(ci_line(metrics))
    cal = metrics["calibration"]
    typer.echo(f"ECE {cal['ece']:.3f}" + (f" (temperature {cal['temperature']:.2f}; before scaling {cal['ece_uncalibrated']:.3f})" if "ece_uncalibrated" in cal else ""))
    typer.echo(f"\nwritten: {outdir}/metrics.json and {outdir}/plots/")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory (or checkpoints/best.ckpt)."),
    paths: Optional[list[Path]] = typer.Argument(None, help="Image files or folders."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="CSV manifest; every row is predicted (rows with an empty label are the unlabelled ones)."),
    unlabelled_only: bool = typer.Option(False, "--unlabelled-only", help="With --csv: only rows with an empty label."),
    out: Path = typer.Option(Path("predictions.csv"), help="Output CSV."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (reported) instead of stopping."),
):
    """Predict P(infected), the label at the run's validation threshold, and per-class probabilities."""
    from .data.sources import Sample, read_manifest
    from .inference.predict import expand_paths, load_model, predict_samples

    try:
        if bool(paths) == bool(csv):
            raise ValueError("give image PATHS or --csv MANIFEST (one of them)")
        if csv:
            splits = read_manifest(csv)
            samples = [s for k, v in splits.items() for s in v if not unlabelled_only or k == "unlabelled"]
        else:
            samples = [Sample(p, None) for p in expand_paths(paths)]
        if not samples:
            raise ValueError("nothing to predict")
        loaded = load_model(run)
        df, errors = predict_samples(loaded, samples, skip_bad)
    except USER_ERRORS as e:
        _fail(e)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    for e in errors:
        typer.echo(f"skipped: {e}", err=True)
    n_inf = int((df["predicted"] == "infected").sum())
    typer.echo(f"{len(df)} images: {n_inf} predicted infected, {len(df) - n_inf} normal (threshold {loaded.threshold:.3f})")
    typer.echo(f"written: {out}")


@app.command()
def explain(
    run: Path = typer.Argument(..., help="Run directory (or checkpoints/best.ckpt)."),
    paths: list[Path] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(Path("gradcam"), help="Output folder for overlays and explanations.csv."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images instead of stopping."),
):
    """Grad-CAM overlays for the predicted class (eval mode, batched), one PNG per image."""
    from .inference.explain import explain_paths
    from .inference.predict import expand_paths, load_model

    try:
        df = explain_paths(load_model(run), expand_paths(paths), out, skip_bad)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(f"{len(df)} Grad-CAM overlays -> {out} (explanations.csv lists them)")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more run directories."),
    data: Optional[str] = typer.Option(None, help="Data to compare on. (default: the first run's training data)"),
    split: str = typer.Option("test", help="Split to compare on."),
    out: Path = typer.Option(Path("compare"), help="Output folder (compare.json, roc_compare.png)."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the AUC intervals."),
):
    """One table and one ROC plot across runs on the same images, with DeLong tests against the first run."""
    from .evaluation.compare import compare_runs

    try:
        r = compare_runs(runs, data, split, out, bootstrap)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(f"{r['data']} split {r['split']}: {r['n']} images, {r['n_infected']} infected")
    typer.echo(f"{'run':32s} {'model':18s} {'loss':6s} {'ROC-AUC [95% CI]':>24s} {'acc':>7s} {'sens':>7s} {'spec':>7s} {'F1':>7s}")
    for row in r["runs"]:
        ci = row["roc_auc_ci95"]
        auc = f"{row['roc_auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else "")
        typer.echo(f"{Path(row['run']).name[:32]:32s} {str(row['model'])[:18]:18s} {str(row['loss'])[:6]:6s} {auc:>24s} "
                   f"{row['accuracy']:7.3f} {row['sensitivity']:7.3f} {row['specificity']:7.3f} {row['f1_infected']:7.3f}")
    for t in r["delong_vs_first"]:
        typer.echo(f"DeLong {Path(t['run_2']).name} - {Path(t['run_1']).name}: AUC difference {-t['difference']:+.3f} "
                   f"(95% CI [{-t['ci95'][1]:+.3f}, {-t['ci95'][0]:+.3f}]), p = {t['p_value']:.3g}")
    typer.echo(f"written: {out}/compare.json, {out}/roc_compare.png")


@app.command()
def models():
    """List supported models and whether their ImageNet weights are usable offline here."""
    from .models.backbones import REGISTRY, offline_weights_source

    typer.echo(f"{'model':20s} {'timm':24s} offline ImageNet weights")
    for name, spec in REGISTRY.items():
        src = offline_weights_source(name)
        typer.echo(f"{name:20s} {spec.timm_name:24s} {'yes (' + src + ')' if src else 'no: needs the hub, or --weights FILE'}")
    typer.echo("\nAny other timm model name also works, with hub weights, --weights FILE or --no-pretrained.")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its data and run."),
    data: Optional[str] = typer.Option(None, help="Run the same job on real data instead of the synthetic phantoms."),
    img_size: int = typer.Option(128, help="Demo input size (small, for a CPU)."),
    images: int = typer.Option(300, help="Number of labelled synthetic images to generate."),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """The whole job offline: synthetic phantoms (or --data), both stages, evaluation, predictions."""
    from .data.sources import load_samples
    from .data.synthetic import make_dataset
    from .inference.predict import load_model, predict_samples
    from .training.stages import train_run

    if data is None:
        data_dir = out / "synthetic-data"
        if not (data_dir / "manifest.csv").exists():
            typer.echo(f"generating SYNTHETIC chest phantoms (not X-rays) in {data_dir} ...")
            n = max(30, images)
            counts = {"covid": n * 4 // 15, "normal": n - 2 * (n * 4 // 15), "pneumonia": n * 4 // 15}
            make_dataset(data_dir, counts, n_unlabelled=12, seed=0)
        data = str(data_dir / "manifest.csv")
    cfg = Config()
    cfg.update({"data": data, "img_size": img_size, "epochs_head": 6, "epochs_finetune": 3, "lr": 3e-3, "lr_finetune": 1e-3})
    run = out / "run"
    try:
        metrics = train_run(cfg, run, progress=not quiet)
        typer.echo("\n" + metrics["summary"])
        splits = load_samples(data)
        name = "unlabelled" if splits.get("unlabelled") else "test"
        if splits.get(name):
            df, _ = predict_samples(load_model(run), splits[name])
            df.to_csv(run / "predictions.csv", index=False)
            typer.echo(f"\npredicted the {len(df)} {name} images -> {run / 'predictions.csv'}")
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(f"run directory: {run}  (report: {run / 'report.html'}; metrics.json, plots/, history.csv, checkpoints/best.ckpt)")


data_app = typer.Typer(help="Dataset checks and splits.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    data: str = typer.Argument(..., help="ImageFolder root or CSV manifest."),
    max_distance: int = typer.Option(4, help="Near duplicates: largest Hamming distance between 256-bit dHashes."),
    out: Optional[Path] = typer.Option(None, help="Also write the full report as JSON here."),
):
    """Counts, unreadable files, modes and sizes, duplicates and patients across splits. Exit 1 on leakage or unreadable files."""
    import json

    from .data.check import check_dataset

    try:
        r = check_dataset(data, max_distance)
    except USER_ERRORS as e:
        _fail(e)
    for split, info in r["splits"].items():
        typer.echo(f"{split:11s} {info['n']:6d} images  " + ", ".join(f"{k}: {v}" for k, v in sorted(info["classes"].items())))
    typer.echo("modes: " + ", ".join(f"{k}: {v}" for k, v in sorted(r["modes"].items())))
    for k, v in r["sizes"].items():
        typer.echo(f"{k}: min {v['min']}, median {v['median']}, max {v['max']}")
    for u in r["unreadable"]:
        typer.echo(f"UNREADABLE {u['reason']}")
    for d in r["duplicates_across_splits"]:
        typer.echo(f"LEAK {d['kind']}: {d['a']} ({d['split_a']}) ~ {d['b']} ({d['split_b']})")
    for pid, splits in r["patients_in_several_splits"].items():
        typer.echo(f"LEAK patient {pid} in {', '.join(splits)}")
    if out:
        out.write_text(json.dumps(r, indent=2))
    problems = []
    if r["leakage"]:
        problems.append(f"leakage: {len(r['duplicates_across_splits'])} duplicate pairs across splits, "
                        f"{len(r['patients_in_several_splits'])} patients in several splits")
    if r["unreadable"]:
        problems.append(f"{len(r['unreadable'])} unreadable files")
    if problems:
        typer.secho("FAIL: " + "; ".join(problems), fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo("OK: no leakage across splits, every file readable")


@data_app.command("split")
def data_split(
    manifest: Path = typer.Argument(..., help="CSV manifest with path,label[,patient_id,...]."),
    out: Optional[Path] = typer.Option(None, help="Output manifest. (default: MANIFEST-split.csv beside it)"),
    val: float = typer.Option(0.15, help="Validation fraction."),
    test: float = typer.Option(0.15, help="Test fraction."),
    seed: int = typer.Option(42),
):
    """A patient-level, label-stratified train/val/test split, written as a `split` column."""
    from .data.check import split_manifest

    out = out or manifest.with_name(f"{manifest.stem}-split.csv")
    try:
        counts = split_manifest(manifest, out, val, test, seed)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" images -> {out}")


def main() -> None:  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
