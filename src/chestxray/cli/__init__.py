"""Command-line interface: parse, build a config, call one function.

A research tool, not a diagnostic device.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperArgument, TyperCommand

from ..config import SECTIONS, Config, field_type, flag_name
from ..errors import ChestXrayError

app = typer.Typer(
    help="Infected-vs-Normal chest X-ray classification by two-stage transfer learning. "
    "Research tool, not a diagnostic device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: no type placeholders on flags
)
log = logging.getLogger("chestxray")


class _Command(TyperCommand):
    """Every command's error boundary: the project's errors, and a folder or file the user cannot write or read,
    end the command with one line and exit 2. Usage lines in the usual form: `chestxray predict [OPTIONS] RUN [PATHS]...`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ChestXrayError as e:
            _fail(e)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            where = e.filename or "a file"
            why = "read-only file system" if e.errno == errno.EROFS else "permission denied"
            _fail(f"{where}: {why} ({e.strerror}); give a folder you can write to, or change its permissions")

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                pieces.append((name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else ""))
        return pieces


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the message (a test runner may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: bool = False) -> None:
    """The project's messages on stderr: INFO and above, DEBUG with --verbose. Set once per command."""
    for h in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug messages.")):
    setup_logging(verbose)


def _fail(e: Exception | str) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def config_options(command):
    """Give a Typer command one --option per config field (help, allowed values and default from the
    field's declaration in config.py); the command receives those that were given as `overrides`."""
    hints = typing.get_type_hints(command)
    own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values() if p.name != "overrides"]
    generated = []
    for section in SECTIONS.values():
        for f in fields(section):
            kind = field_type(section, f.name)
            meta = f.metadata
            help_text = meta["help"]
            if meta.get("choices"):
                help_text += f" One of: {', '.join(meta['choices'])}."
            if f.default is not None and f.default != "" and "[default:" not in help_text:
                shown = str(f.default).lower() if kind is bool else f.default
                help_text += f"  [default: {shown}]"
            decls = [flag_name(f.name)]
            if kind is bool:
                decls = [f"{flag_name(f.name)}/--no-{f.name.replace('_', '-')}"]
            generated.append(inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                default=typer.Option(None, *decls, help=help_text, show_default=False),
            ))

    @functools.wraps(command)
    def wrapper(**kwargs):
        mine = {p.name: kwargs.pop(p.name) for p in own}
        return command(**mine, overrides={k: v for k, v in kwargs.items() if v is not None})

    wrapper.__signature__ = inspect.Signature(own + generated)
    wrapper.__annotations__ = {}
    return wrapper


@app.command(cls=_Command)
@config_options
def train(
    out: Optional[Path] = typer.Option(None, help="Run directory to create (required unless --resume)."),
    resume: Optional[Path] = typer.Option(None, help="Continue this interrupted run from its last complete epoch, with its own config."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out run directory (its files are deleted)."),
    config: Optional[Path] = typer.Option(None, help="YAML file setting any option below (nested data/model/train sections or flat); flags override it."),
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


RUN_ARG = typer.Argument(..., metavar="RUN", help="Run directory (or its checkpoints/best.ckpt).")
MODEL_ARG = typer.Argument(..., metavar="MODEL", help="Run directory, its checkpoints/best.ckpt, or a .onnx file from `chestxray export`.")
DATA_OPT = typer.Option(..., help="ImageFolder root or CSV manifest.")
SKIP_BAD_OPT = typer.Option(False, "--skip-bad", help="Skip unreadable images instead of stopping.")
BOOTSTRAP_OPT = typer.Option(1000, min=0, help="Bootstrap resamples for the 95% intervals (0: none).")
ENGINE_OPT = typer.Option("torch", "--engine", help="Run a run directory's model on torch, or on onnxruntime (onnx: through "
                          "checkpoints/best.onnx, exported and verified against PyTorch on first use; faster on a CPU, "
                          "P(infected) within 1e-4 of PyTorch's). An .onnx MODEL always runs on onnxruntime.")


@app.command(cls=_Command)
def evaluate(
    run: Path = MODEL_ARG,
    data: str = DATA_OPT,
    split: Optional[str] = typer.Option(None, help="Split to evaluate.  [default: test; all images where the data has no train/val/test splits]"),
    out: Optional[Path] = typer.Option(None, help="Output folder.  [default: RUN/eval/NAME]"),
    name: Optional[str] = typer.Option(None, help="Name of this evaluation's folder under RUN/eval/.  [default: <data>-<split>-<hash of the data's path>]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace another evaluation already in the output folder."),
    skip_bad: bool = SKIP_BAD_OPT,
    bootstrap: int = BOOTSTRAP_OPT,
    seed: Optional[int] = typer.Option(None, help="Bootstrap seed.  [default: the run's training seed, as training's own intervals]"),
    audit: bool = typer.Option(False, "--audit", help="Add the shortcut audit (three more passes over the images)."),
    engine: str = ENGINE_OPT,
):
    """Metrics with 95% intervals at 0.5 and at each validation operating point, calibration, per source, plots.
    Every evaluation is recorded in RUN/evaluations.json, where the model card finds it."""
    from ..apps.engines import load_on
    from ..evaluation.summary import ci_line, summary_table
    from ..jobs.evaluate import evaluate_run

    metrics, outdir = evaluate_run(run, data, split, out, skip_bad, bootstrap, seed, audit, name, overwrite, load_on(run, engine))
    split = metrics["split"]
    if split == "all":
        typer.echo(f"{data} has no train/val/test splits: evaluated all {metrics['binary']['at_0.5']['n']} labelled images.")
    if metrics["external"]:
        typer.echo(f"EXTERNAL evaluation: {data} was not the training data of this run.")
    flagged = metrics["image_quality"]["n_flagged"]
    if flagged:
        typer.echo(f"{flagged} image(s) without a radiograph's grey levels got no decision and are left out of the figures "
                   f"below: " + "; ".join(f"{f['path']}: {f['reason']}" for f in metrics["image_quality"]["flagged"][:3]))
    if metrics["synthetic"]:
        typer.echo("*** SYNTHETIC phantom data: not chest X-rays ***")
    rows = {f"{split} @{k[3:]}": v for k, v in metrics["binary"].items()}
    rows.update({f"  {k}": v for k, v in metrics.get("per_source", {}).items()})
    typer.echo(summary_table(rows))
    typer.echo(ci_line(metrics))
    cal = metrics["calibration"]
    typer.echo(f"ECE {cal['ece']:.3f}" + (f" (temperature {cal['temperature']:.2f}; before scaling {cal['ece_uncalibrated']:.3f})" if "ece_uncalibrated" in cal else ""))
    if metrics.get("out_of_distribution"):
        from ..evaluation.report import ood_line

        typer.echo(ood_line(metrics["out_of_distribution"]))
    if metrics.get("audit"):
        _print_audit(metrics["audit"])
    typer.echo(f"\nwritten: {outdir}/metrics.json, {outdir}/report.html and {outdir}/plots/")


def _print_audit(result: dict) -> None:
    typer.echo(f"\nshortcut audit ({result['n']} images, {result['n_infected']} infected):")
    for r in result["conditions"].values():
        ci = r["roc_auc_ci95"] or [None, None]
        auc = "n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}"
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else ""
        typer.echo(f"  {r['description']:52s} ROC-AUC {auc}{interval}")
    typer.echo(result["verdict"])


@app.command(cls=_Command)
def audit(
    run: Path = MODEL_ARG,
    data: str = DATA_OPT,
    split: Optional[str] = typer.Option(None, help="Split to audit.  [default: test; all images where the data has no splits]"),
    out: Optional[Path] = typer.Option(None, help="Where audit.json goes.  [default: RUN/audit/<data>-<split>-<hash of the data's path>]"),
    bootstrap: int = BOOTSTRAP_OPT,
    skip_bad: bool = SKIP_BAD_OPT,
):
    """Shortcut audit: ROC-AUC with the lung fields hidden, with only the lungs kept, and with the borders hidden."""
    import json

    from ..data.sources import evaluation_samples
    from ..evaluation.audit import audit as run_audit
    from ..files import write_text
    from ..jobs.evaluate import evaluation_folder
    from ..models.load import load_predictor
    from ..models.predictor import run_directory

    predictor = load_predictor(run)
    name, samples = evaluation_samples(data, split)
    result = run_audit(predictor, predictor.decode(samples, skip_bad), bootstrap)
    out = out or evaluation_folder(run_directory(run), data, name, None, under="audit")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "audit.json", json.dumps({"data": str(data), "split": name, **result}, indent=2))
    _print_audit(result)
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
    operating_point: Optional[str] = typer.Option(None, help="How the new threshold is chosen on the n images: best_f1, youden or sensitivity.  [default: the run's own]"),
    target_sensitivity: Optional[float] = typer.Option(None, help="Sensitivity the 'sensitivity' operating point must reach on the n images.  [default: the run's own]"),
    target_confidence: Optional[float] = typer.Option(None, help="With c > 0, reach --target-sensitivity on the site's other images with probability c (a tolerance bound over the n images' infected ones); 0: on the n images.  [default: the run's own]"),
    seed: int = typer.Option(0, help="Seed of the patient-level, stratified choice of the n images."),
    bootstrap: int = BOOTSTRAP_OPT,
    skip_bad: bool = SKIP_BAD_OPT,
):
    """Recalibrate a model for a new site: temperature and threshold (and with --head the classifier) from n labelled images."""
    from ..jobs.adapt import adapt_run
    from ..models.calibration import ThresholdRule

    if operating_point not in (None, "best_f1", "youden", "sensitivity"):
        raise ChestXrayError(f"--operating-point must be one of best_f1, youden, sensitivity; got '{operating_point}'")
    if target_sensitivity is not None and not 0 < target_sensitivity <= 1:
        raise ChestXrayError(f"--target-sensitivity must be in (0, 1]; got {target_sensitivity}")
    if target_confidence is not None and not 0 <= target_confidence < 1:
        raise ChestXrayError(f"--target-confidence must be in [0, 1); got {target_confidence}")
    rule = ThresholdRule(operating_point, target_sensitivity, target_confidence)
    r = adapt_run(run, data, out, n, head, seed, bootstrap, skip_bad, rule)
    evaluated = ("figures out of fold: each image scored by a model adapted on the other folds" if r["all"]
                 else f"evaluated on the other {r['n_heldout']}")
    typer.echo(f"adapted on {r['n_adaptation']} images of {data}; {evaluated} "
               f"(threshold {r['threshold_before']:.3f} -> {r['threshold_after']:.3f}, temperature {r['temperature_after']:.2f})")
    for name in ("before", "after"):
        m = r[name]
        ci = m.get("ci95") or {}

        def fmt(k):
            c = ci.get(k)
            return f"{m[k]:.3f}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if c and c[0] is not None else "") if m[k] is not None else "n/a"

        typer.echo(f"  {name:6s} ROC-AUC {fmt('roc_auc')}  sensitivity {fmt('sensitivity')}  specificity {fmt('specificity')}")
    typer.echo(f"run directory: {out}  (adapt.json, metrics.json, report.html, checkpoints/best.ckpt)")


SCREENFUL = 20  # predictions shown on the terminal; the file has them all


@app.command(cls=_Command)
def predict(
    run: Path = MODEL_ARG,
    paths: Optional[list[Path]] = typer.Argument(None, metavar="PATHS", help="Image files or folders."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="CSV manifest; every row is predicted (rows with an empty label are the unlabelled ones)."),
    unlabelled_only: bool = typer.Option(False, "--unlabelled-only", help="With --csv: only rows with an empty label."),
    out: Optional[str] = typer.Option(None, help="Output file, or - for stdout.  [default: predictions.csv, or predictions.json with --format json]"),
    format: str = typer.Option("csv", "--format", help="Output format: csv or json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even where it is not this run's predictions file."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (reported) instead of stopping."),
    engine: str = ENGINE_OPT,
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
    predictor = load_on(run, engine)
    df, errors = prediction_table(predictor, samples, skip_bad)
    if df.empty:
        raise ChestXrayError(f"none of the {len(samples)} image(s) could be read: " + "; ".join(map(str, errors[:3]))
                             + (" ..." if len(errors) > 3 else ""))
    text = write_predictions(df, out, format, str(predictor.checkpoint))
    to_stdout = out == "-"
    if to_stdout:
        typer.echo(text, nl=False)
    for e in errors:
        typer.echo(f"skipped: {e}", err=True)
    shown = df.head(SCREENFUL)
    width = min(60, max(len(p) for p in shown["path"]))
    ood = "out_of_distribution" in df
    lines = [f"{'P(infected)':>11s}  {'threshold':>9s}  {'predicted':9s}  {'unlike training' if ood else ''}  path"]
    lines += [f"{r.p_infected:11.3f}  {r.threshold:9.3f}  {r.predicted or '(none)':9s}  "
              f"{('YES' if r.out_of_distribution else 'no').ljust(15) if ood else ''}  {_tail(r.path, width)}" for r in shown.itertuples()]
    if len(df) > SCREENFUL:
        lines.append(f"... and {len(df) - SCREENFUL} more" + ("" if to_stdout else f" (all in {out})"))
    n_inf, n_normal = int((df["predicted"] == "infected").sum()), int((df["predicted"] == "normal").sum())
    lines.append(f"{len(df)} image{'s' if len(df) != 1 else ''}: {n_inf} predicted infected, {n_normal} normal (threshold {predictor.threshold:.3f}, "
                 f"{predictor.threshold_rule or 'chosen on validation'}). Research tool, not a diagnostic device.")
    unread = df[df["image_quality"] != "ok"]
    if len(unread):
        lines.append(f"{len(unread)} image(s) got no decision (image_quality): " + "; ".join(
            f"{_tail(r.path, 40)}: {r.image_quality}" for r in unread.head(3).itertuples()) + (" ..." if len(unread) > 3 else ""))
    if ood and df["out_of_distribution"].any():
        lines.append(f"{int(df['out_of_distribution'].sum())} image(s) are unlike the training data: the model's output "
                     "there is not supported by its validation figures.")
    if not to_stdout:
        lines.append(f"written: {out}")
    typer.echo("\n".join(lines), err=to_stdout)


def _tail(path: str, width: int) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]


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
    typer.echo(f"written: {r['path']} ({r['bytes'] / 1e6:.1f} MB, opset {r['opset']}, source sha256 {r['source_sha256'][:12]}...)")


@app.command(cls=_Command)
def card(run: Path = RUN_ARG):
    """Write RUN/model_card.md again from the run's own files (training writes it; evaluations added since are included)."""
    from ..evaluation.model_card import write_model_card
    from ..models.predictor import Predictor, checkpoint_path, run_directory

    predictor = Predictor.load(run)
    path = write_model_card(predictor, run_directory(checkpoint_path(run)))
    typer.echo(f"written: {path}")


@app.command(cls=_Command)
def serve(
    model: Path = MODEL_ARG,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default; anything else exposes the service)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    max_upload_mb: float = typer.Option(32, min=0.001, help="Largest request body, in MB."),
    max_files: int = typer.Option(16, min=1, help="Most images in one request."),
    max_batch: int = typer.Option(16, min=1, help="Most images grouped into one forward pass (1: no micro-batching)."),
    max_wait_ms: float = typer.Option(5.0, min=0, help="Under concurrent load, the longest wait for more requests to fill a batch, in ms (a lone request never waits)."),
    api_key: Optional[str] = typer.Option(None, envvar="CHESTXRAY_API_KEY", show_envvar=True,
                                          help="Require this key (header X-API-Key) on /predict, /model and /metrics."),
    engine: str = ENGINE_OPT,
):
    """HTTP service: POST /predict, GET /health, /ready, /model, /metrics, and a page at / to try an image."""
    from ..apps.serve import serve as run_server

    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logging.getLogger(__name__).warning("listening on %s without --api-key: anyone who can reach it can use it", host)
    run_server(model, host, port, max_upload_mb=max_upload_mb, max_files=max_files, api_key=api_key,
               max_batch=max_batch, max_wait_ms=max_wait_ms, engine=engine)


@app.command(cls=_Command)
def explain(
    run: Path = RUN_ARG,
    paths: list[Path] = typer.Argument(..., metavar="PATHS", help="Image files or folders."),
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
def compare(
    runs: list[Path] = typer.Argument(..., metavar="RUNS", help="Two or more run directories."),
    data: Optional[str] = typer.Option(None, help="Data to compare on.  [default: the first run's training data]"),
    split: Optional[str] = typer.Option(None, help="Split to compare on.  [default: test; all images where the data has no splits]"),
    out: Path = typer.Option(Path("compare"), help="Output folder (compare.json, roc_compare.png)."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the AUC intervals."),
):
    """One table and one ROC plot across runs on the same images, with DeLong tests against the first run."""
    from ..jobs.compare import compare_runs

    r = compare_runs(runs, data, split, out, bootstrap)
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


@app.command(cls=_Command)
def models():
    """List supported models and whether their ImageNet weights are usable offline here."""
    from ..models.backbones import REGISTRY, offline_weights_source

    typer.echo(f"{'model':20s} {'timm':24s} offline ImageNet weights")
    for name, spec in REGISTRY.items():
        src = offline_weights_source(name)
        typer.echo(f"{name:20s} {spec.timm_name:24s} {'yes (' + src + ')' if src else 'no: needs the hub, or --weights FILE'}")
    typer.echo("\nAny other timm model name also works, with hub weights, --weights FILE or --no-pretrained.")


@app.command(cls=_Command)
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its data and run."),
    data: Optional[str] = typer.Option(None, help="Run the same job on real data instead of the synthetic phantoms."),
    img_size: int = typer.Option(128, min=32, help="Demo input size (small, for a CPU)."),
    images: int = typer.Option(300, min=30, help="Number of labelled synthetic images to generate."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
):
    """The whole job offline: synthetic phantoms (or --data), both stages, evaluation, predictions."""
    from ..data.sources import load_samples
    from ..data.synthetic import make_dataset
    from ..jobs.train import train_run
    from ..models.predictor import Predictor

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
    metrics = train_run(cfg, run, progress=not quiet, overwrite=True)  # the demo's run is a scratch folder
    typer.echo("\n" + metrics["summary"])
    splits = load_samples(data)
    name = "unlabelled" if splits.get("unlabelled") else "test"
    if splits.get(name):
        df, _ = Predictor.load(run).predict(splits[name])
        df.to_csv(run / "predictions.csv", index=False)
        typer.echo(f"\npredicted the {len(df)} {name} images -> {run / 'predictions.csv'}")
    typer.echo(f"run directory: {run}  (report: {run / 'report.html'}; metrics.json, plots/, history.csv, checkpoints/best.ckpt)")


data_app = typer.Typer(help="Dataset checks and splits.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check", cls=_Command)
def data_check(
    data: str = typer.Argument(..., metavar="DATA", help="ImageFolder root or CSV manifest."),
    normal_class: str = typer.Option("normal", help="Class name meaning Normal (any case)."),
    max_distance: int = typer.Option(4, min=0, help="Near duplicates: largest Hamming distance between 256-bit dHashes."),
    out: Optional[Path] = typer.Option(None, help="Also write the full report as JSON here."),
):
    """Counts, unreadable files, modes and sizes, class and split spellings, duplicates (across splits, or with
    two labels in one split) and patients across splits. Exit 1 where training would fail or be wrong."""
    import json

    from ..data.check import check_dataset

    r = check_dataset(data, max_distance, normal_class)
    for split, info in r["splits"].items():
        typer.echo(f"{split:11s} {info['n']:6d} images  " + ", ".join(f"{k}: {v}" for k, v in sorted(info["classes"].items())))
    typer.echo("modes: " + ", ".join(f"{k}: {v}" for k, v in sorted(r["modes"].items())))
    for k, v in r["sizes"].items():
        typer.echo(f"{k}: min {v['min']}, median {v['median']}, max {v['max']}")
    for w in r["warnings"]:
        typer.echo(f"NOTE {w}")
    for u in r["unreadable"]:
        typer.echo(f"UNREADABLE {u['reason']}")
    for d in r["duplicates_across_splits"]:
        typer.echo(f"LEAK {d['kind']}: {d['a']} ({d['split_a']}) ~ {d['b']} ({d['split_b']})")
    for pid, splits in r["patients_in_several_splits"].items():
        typer.echo(f"LEAK patient {pid} in {', '.join(splits)}")
    for d in r["conflicting_labels"]:
        typer.echo(f"CONFLICT {d['kind']} with two labels in {d['split_a']}: {d['a']} ({d['label_a']}) ~ {d['b']} ({d['label_b']})")
    if out:
        out.write_text(json.dumps(r, indent=2))
    if r["problems"]:
        typer.secho("FAIL: " + "; ".join(r["problems"]), fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo("OK: no leakage across splits, no conflicting labels, every file readable")


@data_app.command("split", cls=_Command)
def data_split(
    manifest: Path = typer.Argument(..., metavar="MANIFEST", help="CSV manifest with path,label[,patient_id,...]."),
    out: Optional[Path] = typer.Option(None, help="Output manifest.  [default: MANIFEST-split.csv beside it]"),
    val: float = typer.Option(0.15, help="Validation fraction."),
    test: float = typer.Option(0.15, help="Test fraction."),
    seed: int = typer.Option(42, help="Random seed of the split."),
):
    """A patient-level, label-stratified train/val/test split, written as a `split` column."""
    from ..data.check import split_manifest

    out = out or manifest.with_name(f"{manifest.stem}-split.csv")
    counts = split_manifest(manifest, out, val, test, seed)
    typer.echo(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" images -> {out}")


BUG_REPORT = ("chestxray stopped on an error that is not about your input: a bug, or the machine. "
              "Please report it with the command line and the traceback above.")


def main() -> None:
    """The console script: the project's own errors exit 2 with one line (in each command); anything
    else is a bug, shown with its traceback, exit 1."""
    try:
        app()
    except Exception as e:  # noqa: BLE001 - the last line of defence
        import traceback

        traceback.print_exc()
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            typer.secho("out of memory: try a smaller --batch-size or --img-size", fg=typer.colors.RED, err=True)
        typer.secho(BUG_REPORT, fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
