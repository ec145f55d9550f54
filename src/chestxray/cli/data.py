"""Commands about data and models before training: data check, data split, models."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import tables
from .app import _Command, app, data_app


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
    typer.echo(tables.data_check(r))
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


@data_app.command("import", cls=_Command)
def data_import(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="kermany, covid-radiography, cohen, nih or rsna-pneumonia."),
    root: Path = typer.Argument(..., metavar="ROOT", help="The dataset's folder, as downloaded."),
    out: Path = typer.Option(..., help="The manifest to write (CSV)."),
    map_: list[str] = typer.Option([], "--map", help="NAME=CLASS: map a finding or class folder of the dataset to a "
                                   "class of the project (CLASS 'skip' leaves it out); repeatable."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
):
    """Import a public dataset in its native layout as a manifest (path,label,patient_id,source,view,split,...):
    prints what was read, how findings were mapped, and what was skipped and why."""
    from ..data.importers import import_dataset, parse_mapping
    from ..errors import ChestXrayError

    if out.exists() and not overwrite:
        raise ChestXrayError(f"{out}: exists; give another --out, or --overwrite to replace it")
    r = import_dataset(fmt, root, parse_mapping(map_))
    r.write(out)
    typer.echo(tables.imported(r))
    typer.echo(f"written: {out} ({len(r.rows)} images)")


@data_app.command("merge", cls=_Command)
def data_merge(
    manifests: list[Path] = typer.Argument(..., metavar="MANIFEST...", help="Manifests to merge, first kept first: an "
                                           "image found in several keeps the copy of the one given first."),
    out: Path = typer.Option(..., help="The merged manifest (CSV); OUT-duplicates.csv lists every copy found."),
    max_distance: int = typer.Option(32, min=0, max=128, help="Near copies: largest distance between 256-bit pHashes "
                                     "(re-encoded copies measured within 20, distinct films beyond 56: docs/data.md)."),
    val: float = typer.Option(0.15, help="Validation fraction for rows without a split (patient-level)."),
    test: float = typer.Option(0.15, help="Test fraction for rows without a split (patient-level)."),
    seed: int = typer.Option(42, help="Random seed of that split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
):
    """Merge manifests of several datasets: source and dataset per row, copies of one image across datasets found
    (exact bytes or a perceptual hash) and dropped by a stated rule, patient ids kept apart, a patient-level split where
    none is given."""
    from ..data.merge import merge_manifests
    from ..errors import ChestXrayError

    if out.exists() and not overwrite:
        raise ChestXrayError(f"{out}: exists; give another --out, or --overwrite to replace it")
    r = merge_manifests(manifests, max_distance, val, test, seed)
    r.write(out)
    typer.echo(tables.merged(r))
    typer.echo(f"written: {out} ({len(r.rows)} images), {out.with_name(out.stem + '-duplicates.csv')} "
               f"({len(r.duplicates)} pairs); check it with: chestxray data check {out}")


@app.command(cls=_Command)
def models():
    """List supported models and whether their ImageNet weights are usable offline here."""
    from ..models.backbones import REGISTRY, offline_weights_source

    typer.echo(f"{'model':20s} {'timm':24s} offline ImageNet weights")
    for name, spec in REGISTRY.items():
        src = offline_weights_source(name)
        typer.echo(f"{name:20s} {spec.timm_name:24s} {'yes (' + src + ')' if src else 'no: needs the hub, or --weights FILE'}")
    typer.echo("\nAny other timm model name also works, with hub weights, --weights FILE or --no-pretrained.")
